"""The operator console in a real browser (Debian's chromium, headless, driven by Playwright): the journeys
a new operator would try, plus the screenshots of the main pages for docs/console.md.

Screenshots go to a temporary folder; PAGOFLOW_CONSOLE_SCREENSHOTS=docs/console refreshes the documentation's.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.reconciliation import MatchSuggestion
from models.treasury import TreasuryMovement
from store.reconciliation import reconcile_ec
from tests.conftest import Database
from tests.console_env import (
    ADMIN,
    COMUNE,
    COMUNE_OPERATOR,
    SCUOLA,
    ConsoleServer,
    Scenario,
    build_scenario,
    console_server,
)

pytestmark = pytest.mark.prefect
CHROMIUM = os.environ.get("PAGOFLOW_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent

if not Path(
    CHROMIUM
).exists():  # CI installs it (apt-get install chromium); say so rather than fail obscurely
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@dataclass
class Site:
    """The web process on a database holding the two-EC scenario, its work dir, and the browser."""

    server: ConsoleServer
    scenario: Scenario
    db: Database
    work: Path
    browser: Browser
    shots: Path

    @property
    def url(self) -> str:
        """The console's base URL."""
        return self.server.url + "/console"


@pytest.fixture(scope="module")
def site(
    _databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> Iterator[Site]:
    database = _databases["sqlite"]
    database.truncate()
    work = tmp_path_factory.mktemp("console-browser")
    scenario = build_scenario(database, work)
    shots = Path(os.environ.get("PAGOFLOW_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    if not shots.is_absolute():
        shots = ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    from prefect.settings import PREFECT_API_URL

    with pytest.MonkeyPatch.context() as monkeypatch, console_server(database, monkeypatch, work) as server:
        # the console reads the last runs of the stages from the Prefect server it is pointed at
        monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                yield Site(server, scenario, database, work, browser, shots)
            finally:
                browser.close()


@pytest.fixture
def page(site: Site) -> Iterator[Page]:
    """A fresh browser profile (no session) with a laptop-sized window."""
    context = site.browser.new_context(
        viewport={"width": 1366, "height": 768}, accept_downloads=True, locale="it-IT"
    )
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


def sign_in(page: Page, site: Site, credentials: tuple[str, str]) -> None:
    """Open the console, get sent to the login page, sign in with the keyboard."""
    page.goto(site.url + "/")
    expect(page.get_by_role("heading", name="Accesso")).to_be_visible()
    page.get_by_label("Utente").fill(credentials[0])
    page.get_by_label("Password").fill(credentials[1])
    page.get_by_label("Password").press("Enter")
    expect(page.get_by_role("button", name="Esci")).to_be_visible()


def shoot(page: Page, site: Site, name: str) -> None:
    """A full-page screenshot for the docs."""
    page.screenshot(path=str(site.shots / f"{name}.png"), full_page=True)


def test_a_new_operator_finds_a_position_by_notice_number_and_annuls_it(page: Page, site: Site) -> None:
    position = site.scenario.comune.unpaid
    sign_in(page, site, COMUNE_OPERATOR)
    # one EC: the home page is its dashboard
    expect(page.get_by_role("heading", name="Cruscotto")).to_be_visible()
    expect(page.locator("#labels")).to_contain_text("TES_NO_MATCH")
    shoot(page, site, "dashboard")
    page.get_by_role("link", name="Posizioni", exact=True).click()
    page.get_by_label("Numero avviso").fill(position.nav or "")
    page.get_by_label("Numero avviso").press("Enter")
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(1)
    results.get_by_role("link", name=position.nav or "").click()
    expect(page.locator("#nav")).to_have_text(position.nav or "")
    # the hostile debtor name is text, not markup (no dialog opened, no element injected)
    expect(page.locator("#debtor")).to_contain_text('<script>alert("debitore")</script>')
    # no reason: the browser does not even send the form
    page.get_by_role("button", name="Annulla", exact=True).click()
    expect(page.get_by_label("Motivo (obbligatorio)")).to_have_js_property("validity.valueMissing", True)
    page.get_by_label("Motivo (obbligatorio)").fill("Doppia emissione: sostituita da altra posizione")
    page.get_by_role("button", name="Annulla", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Posizione annullata")
    expect(page.locator(".sub .badge")).to_have_text("ANNULLATA")
    expect(page.locator("#state-reason")).to_have_text("Doppia emissione: sostituita da altra posizione")
    expect(page.locator('#timeline tr[data-kind="operator"]')).to_contain_text("operatore.comune")
    shoot(page, site, "position")


def _tracciato(path: Path) -> Path:
    header = [
        "idA2A",
        "idPendenza",
        "idDominio",
        "tipoPendenza",
        "causale",
        "importo",
        "identificativoPagatore",
        "anagraficaPagatore",
        "dataScadenza",
        "idVoce1",
        "importoVoce1",
        "descrizioneVoce1",
        "tipoEntrata1",
    ]
    rows = [
        [
            "A2A-TRIBUTI",
            "WEB-1",
            COMUNE,
            "TARI",
            "TARI 2026 acconto",
            "80,00",
            "RSSMRA80A01H501U",
            "Mario Rossi",
            "2030-12-31",
            "V1",
            "80,00",
            "Quota",
            "TARI",
        ],
        [
            "A2A-TRIBUTI",
            "WEB-2",
            COMUNE,
            "TARI",
            "TARI 2026 saldo",
            "70,00",
            "VRDLGU70B02F205X",
            "Luigi Verdi",
            "2030-12-31",
            "V1",
            "70,00",
            "Quota",
            "TARI",
        ],
        [
            "A2A-TRIBUTI",
            "WEB-3",
            COMUNE,
            "TARI",
            "TARI importo errato",
            "70,00",
            "VRDLGU70B02F205X",
            "Luigi Verdi",
            "2030-12-31",
            "V1",
            "60,00",
            "Quota",
            "TARI",
        ],
    ]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_upload_a_bulk_file_follow_it_and_download_its_outcome(
    page: Page, site: Site, tmp_path: Path
) -> None:
    sign_in(page, site, COMUNE_OPERATOR)
    page.get_by_role("link", name="Caricamenti").click()
    page.get_by_label("Ente").select_option(COMUNE)
    page.get_by_label("Applicazione").select_option("A2A-TRIBUTI")
    page.get_by_label("File (CSV o JSON)").set_input_files(str(_tracciato(tmp_path / "tari-2026.csv")))
    page.get_by_role("button", name="Carica").click()
    expect(page.get_by_role("status").first).to_have_text("Caricamento avviato")
    # the page refreshes itself while the load-positions flow runs in the web process
    expect(page.locator("#bulk-state")).to_have_text("DONE", timeout=120_000)
    expect(page.locator("#bulk-progress")).to_have_attribute("value", "100")
    expect(page.locator("#counts")).to_contain_text("ADDED")
    shoot(page, site, "upload")
    with page.expect_download() as outcome:
        page.locator("#download-outcome").click()
    rows = list(
        csv.DictReader(Path(outcome.value.path()).read_text(encoding="utf-8").splitlines(), delimiter=";")
    )
    assert [(r["idPendenza"], r["esito"]) for r in rows] == [
        ("WEB-1", "ADDED"),
        ("WEB-2", "ADDED"),
        ("WEB-3", "REJECTED"),
    ]
    assert rows[0]["numeroAvviso"].startswith("301") and "VER_002" in rows[2]["descrizione"]
    with page.expect_download() as notices:
        page.locator("#download-notices").click()
    with zipfile.ZipFile(notices.value.path()) as archive:
        pdfs = [n for n in archive.namelist() if n.endswith(".pdf")]
        assert len(pdfs) == 2 and all(archive.read(n).startswith(b"%PDF") for n in pdfs)


def test_confirm_a_suggested_match(page: Page, site: Site) -> None:
    data = site.scenario.comune
    sign_in(page, site, COMUNE_OPERATOR)
    page.get_by_role("link", name="Movimenti").click()
    page.get_by_label("Solo con suggerimenti").check()
    page.get_by_role("button", name="Cerca").click()
    page.locator("#movements tbody tr").first.get_by_role("link").first.click()
    expect(page.locator("#remittance")).to_contain_text("<img src=x onerror=alert(1)>")
    row = page.locator(f'#suggestions tr[data-suggestion="{data.suggestion.id}"]')
    expect(row).to_contain_text(data.flow.id_flusso)
    shoot(page, site, "movement")
    row.get_by_role("button", name="Conferma").click()
    expect(page.get_by_role("status")).to_contain_text("Abbinamento confermato")
    expect(row).to_contain_text("CONFIRMED")
    expect(row).to_contain_text("Deciso da operatore.comune")
    expect(page.locator("#actions")).to_contain_text("confirm_match")
    # the confirmation is an input of reconciliation: the next run cashes the flow with this money
    with site.db.session() as s:
        assert s.get(MatchSuggestion, data.suggestion.id).decided_by == "operatore.comune"
        reconcile_ec(s, id_dominio=COMUNE)
        s.commit()
        assert s.get(TreasuryMovement, data.movement.id).match_state == "MATCHED"
    page.reload()
    expect(page.locator("#match-state")).to_have_text("MATCHED")


def test_an_operator_is_refused_a_page_of_another_ec(page: Page, site: Site) -> None:
    other = site.scenario.scuola
    sign_in(page, site, COMUNE_OPERATOR)
    for path in (f"/positions/{other.unpaid.id}", f"/ec/{SCUOLA}", f"/movements/{other.movement.id}"):
        answer = page.goto(site.url + path)
        assert answer is not None and answer.status == 403, path
        expect(page.get_by_role("heading", name="Accesso negato")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("non e' abilitato al dominio 80001234568")
    # nor does it appear in its searches
    page.goto(site.url + f"/positions?avviso={other.unpaid.nav}")
    expect(page.locator("#results")).to_contain_text("Nessun risultato")


def test_a_failed_stage_links_to_its_run_in_the_prefect_ui(page: Page, site: Site) -> None:
    from flows.load_positions import load_positions
    from web.console.stages import clear_cache

    state = load_positions(path=str(site.work / "non-esiste.csv"), return_state=True)
    assert state.is_failed()
    clear_cache()
    sign_in(page, site, ADMIN)
    row = page.locator('#stages tr[data-stage="load-positions"]')
    expect(row).to_have_class("failed")
    link = row.get_by_role("link")
    expect(link).to_have_attribute(
        "href",
        f"{os.environ['PREFECT_API_URL'].removesuffix('/api')}/runs/flow-run/"
        f"{state.state_details.flow_run_id}",
    )
    shoot(page, site, "home")


def test_screenshots_of_the_main_pages_in_both_languages(page: Page, site: Site) -> None:
    data = site.scenario.comune
    page.goto(site.url + "/login")
    shoot(page, site, "login")
    sign_in(page, site, ADMIN)
    for name, path in (
        ("positions", "/positions"),
        ("flow", f"/flows/{data.flow.id}"),
        ("journal", f"/journal?avviso={data.unpaid.nav}"),
        ("event", f"/journal/{data.event.id}"),
        ("registry", "/registry/creditors/1"),
    ):
        answer = page.goto(site.url + path)
        assert answer is not None and answer.status == 200, path
        shoot(page, site, name)
    # keyboard: the skip link is the first stop and leads to the content
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("button", name="Italiano")).to_be_visible()
    page.goto(site.url + f"/ec/{COMUNE}")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_text("Reported, not cashed")).to_be_visible()
    shoot(page, site, "dashboard-en")
    assert {p.name for p in site.shots.glob("*.png")} >= {
        f"{n}.png" for n in ("login", "positions", "flow", "journal", "event", "registry", "dashboard-en")
    }


def test_screenshots_land_in_the_docs_when_asked(site: Site) -> None:
    """The docs reference the screenshots this module takes (refreshed with PAGOFLOW_CONSOLE_SCREENSHOTS)."""
    guide = (ROOT / "docs" / "console.md").read_text(encoding="utf-8")
    for name in (
        "login",
        "home",
        "dashboard",
        "dashboard-en",
        "position",
        "flow",
        "movement",
        "upload",
        "journal",
        "registry",
    ):
        assert f"console/{name}.png" in guide, name
        assert (ROOT / "docs" / "console" / f"{name}.png").is_file(), name
