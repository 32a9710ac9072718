"""Reconciliation reports rendered for real: HTML (lxml), CSV, PDF (pypdf), SVG parsed; the CLI."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from lxml import etree, html
from pypdf import PdfReader
from sqlmodel import Session, select

from models.positions import Position
from models.reconciliation import Reconciliation
from models.treasury import TreasuryMovement
from reports.reconciliation import (
    LABEL_ACTIONS,
    prospetto_context,
    reconciliation_context,
    render_csv,
    render_html,
    render_pdf,
    render_prospetto_csv,
    render_prospetto_pdf,
    render_svg,
    write_report_files,
)
from rules.riconciliazioni import RiconciliazionePut
from store.reconciliation import reconcile_ec
from store.report_data import collections_summary, reconciliation_data
from store.riconciliazioni import submit_riconciliazione
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_reconciliation import EC, flow, money, paid_position

ROOT = Path(__file__).resolve().parent.parent
CASHED_FLOW, OPEN_FLOW = "2026-11-26BCITITMM-S0000001", "2026-11-26BCITITMM-S0000002"
HOSTILE_DEBTOR = '<b>Bold</b> & "Rossi" <script>alert(1)</script>'
HOSTILE_REMITTANCE = "<img src=x onerror=alert(2)> AFFITTO & ]]> NOVEMBRE"
FORMULA_REMITTANCE = '=HYPERLINK("http://evil","x")'
TODAY = datetime.now(ZoneInfo("Europe/Rome")).date()


@dataclass
class Scenario:
    cashed: list[Position]
    reported: Position
    unreported: Position


def build(s: Session, *, reconcile: bool = True) -> Scenario:
    """Two cashed payments, one reported without money, one not reported, loose money of three kinds."""
    a, b = paid_position(s, amount="10.00"), paid_position(s, amount="15.50")
    c, d = paid_position(s, amount="7.25"), paid_position(s, amount="61.20")
    c.debtor_name = HOSTILE_DEBTOR
    s.add(c)
    s.commit()
    flow(s, id_flusso=CASHED_FLOW, positions=[a, b])
    flow(s, id_flusso=OPEN_FLOW, positions=[d])
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{CASHED_FLOW}", amount="25.50")
    money(s, remittance=HOSTILE_REMITTANCE, amount="500.00", party="ROSSI MARIO")
    money(s, remittance=FORMULA_REMITTANCE, amount="1.00")
    money(s, remittance="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-20UNKNOWNPSP-S9", amount="33.00")
    money(
        s,
        remittance="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-26BCITITMM-S00",
        amount="61.20",
        party="BANCA DI TEST",
    )
    if reconcile:
        reconcile_ec(s, id_dominio=EC)
        s.commit()
    return Scenario(cashed=[a, b], reported=d, unreported=c)


@pytest.fixture
def s(db: Database):  # type: ignore[no-untyped-def]
    with db.session() as session:
        load_example_registry(session)
        yield session


def test_daily_report_in_html_csv_pdf_and_svg(s: Session, tmp_path: Path) -> None:
    sc = build(s)
    ctx = reconciliation_context(reconciliation_data(s, id_dominio=EC, report_date=TODAY, window_days=7))

    page = render_html(ctx)
    doc = html.fromstring(page)
    totals = {
        el.get("id"): (int(el.get("data-count")), Decimal(el.get("data-amount")))
        for el in doc.xpath("//div[@class='total']")
    }
    assert totals == {
        "total-cashed": (2, Decimal("25.50")),
        "total-reported": (1, Decimal("61.20")),
        "total-paid": (1, Decimal("7.25")),
        "total-unexplained": (4, Decimal("595.20")),
    }
    assert "25,50 €" in doc.get_element_by_id("total-cashed").text_content()
    sections = {el.get("id") for el in doc.xpath("//section[@id]")}
    assert {
        "RT_NO_IUF",
        "IUF_NO_TES",
        "TES_NO_MATCH",
        "TES_NO_IUF_OR_IUV",
        "unexplained",
        "suggestions",
    } <= sections
    assert "IUV_NO_RT" not in sections and "RT_IUF_TES" not in sections
    no_iuf = doc.get_element_by_id("RT_NO_IUF")
    assert LABEL_ACTIONS["RT_NO_IUF"] in no_iuf.text_content() and sc.unreported.iuv in no_iuf.text_content()
    # hostile texts are shown as text, never as markup
    text = doc.text_content()
    assert HOSTILE_DEBTOR in text and HOSTILE_REMITTANCE in text
    assert not doc.xpath("//script | //img | //b")
    assert "<script>" not in page and "<img" not in page
    # one suggestion for the truncated remittance, naming the open flow
    suggestion_rows = doc.get_element_by_id("suggestions").xpath(".//tbody/tr")
    assert len(suggestion_rows) == 1 and OPEN_FLOW in suggestion_rows[0].text_content()

    # the chart: inline SVG, no JavaScript, well-formed XML, with today's money stacked by state
    (svg,) = doc.xpath("//*[local-name()='svg']")
    parsed = etree.fromstring(render_svg(ctx.chart).encode())
    assert parsed.tag == "{http://www.w3.org/2000/svg}svg"
    bars = parsed.findall("{http://www.w3.org/2000/svg}rect")
    titles = [r.findtext("{http://www.w3.org/2000/svg}title") for r in bars]
    today = TODAY.strftime("%d/%m/%Y")
    assert f"{today}: incassato 25,50 €" in titles and f"{today}: rendicontato 61,20 €" in titles
    assert f"{today}: pagato, non rendicontato 7,25 €" in titles
    assert len(svg.xpath(".//*[local-name()='rect']")) == len(bars)
    assert not doc.xpath("//*[local-name()='script']") and "javascript" not in page.lower()

    rows = list(csv.DictReader(io.StringIO(render_csv(ctx).decode("utf-8"))))
    by = {(r["sezione"], r["etichetta"]): r for r in rows}
    assert by[("TOTALE", "cashed")]["importo"] == "25.50"
    assert [r["iuv"] for r in rows if r["etichetta"] == "RT_NO_IUF"] == [sc.unreported.iuv]
    flows = [r for r in rows if r["etichetta"] == "IUF_NO_TES"]
    assert [(f["id_flusso"], f["importo"]) for f in flows] == [(OPEN_FLOW, "61.20")]
    loose = [r for r in rows if r["sezione"] == "NON_SPIEGATO"]
    assert sorted(r["importo"] for r in loose) == ["1.00", "33.00", "500.00", "61.20"]
    assert HOSTILE_REMITTANCE in {r["descrizione"] for r in loose}
    assert "'" + FORMULA_REMITTANCE in {r["descrizione"] for r in loose}  # no spreadsheet formula
    assert len([r for r in rows if r["sezione"] == "SUGGERIMENTO"]) == 1

    pdf = PdfReader(io.BytesIO(render_pdf(ctx)))
    pdf_text = "\n".join(p.extract_text() for p in pdf.pages)
    assert "Riconciliazione del" in pdf_text and "Comune di Esempio" in pdf_text
    for needle in ("RT_NO_IUF", "IUF_NO_TES", "TES_NO_MATCH", "25,50", "61,20", "<b>Bold</b>", OPEN_FLOW):
        assert needle in pdf_text, needle

    written = write_report_files(work_dir=tmp_path, id_dominio=EC, report_date=TODAY, files={"r.html": page})
    assert written["r.html"] == (tmp_path / "reports" / EC / TODAY.isoformat() / "r.html").resolve()
    assert written["r.html"].read_text(encoding="utf-8") == page


def test_prospetto_riscossioni_by_code_and_period(s: Session) -> None:
    build(s)
    daily = prospetto_context(collections_summary(s, id_dominio=EC, start=TODAY.replace(day=1), end=TODAY))
    rows = list(csv.DictReader(io.StringIO(render_prospetto_csv(daily).decode("utf-8"))))
    assert [
        (r["periodo"], r["codice_contabilita"], r["riscossioni"], r["importo"], r["incassato"]) for r in rows
    ] == [(TODAY.isoformat(), "1010", "4", "93.95", "25.50")]
    monthly = prospetto_context(
        collections_summary(s, id_dominio=EC, start=date(TODAY.year, 1, 1), end=TODAY, period="month")
    )
    rows = list(csv.DictReader(io.StringIO(render_prospetto_csv(monthly).decode("utf-8"))))
    assert [(r["periodo"], r["importo"]) for r in rows] == [(TODAY.isoformat()[:7], "93.95")]
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(render_prospetto_pdf(monthly))).pages)
    assert "Prospetto riscossioni" in text and "1010" in text and "93,95" in text and "25,50" in text
    empty = collections_summary(s, id_dominio=EC, start=date(2020, 1, 1), end=date(2020, 1, 31))
    assert empty.rows == ()


def test_cli_prints_the_path_of_the_written_report(sqlite_db: Database, tmp_path: Path) -> None:
    with sqlite_db.session() as session:
        load_example_registry(session)
        build(session)
    env = {**os.environ, "PAGOFLOW_DATABASE_URL": sqlite_db.url, "PAGOFLOW_WORK_DIR": str(tmp_path)}
    for fmt in ("html", "pdf"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "report",
                "reconciliation",
                "--dominio",
                EC,
                "--date",
                TODAY.isoformat(),
                "--format",
                fmt,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        path = Path(done.stdout.strip())
        assert path.is_file() and path.suffix == f".{fmt}" and path.is_relative_to(tmp_path / "reports" / EC)
    assert b"<svg" in path.with_suffix(".html").read_bytes() and path.read_bytes().startswith(b"%PDF")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "report",
            "riscossioni",
            "--dominio",
            EC,
            "--period",
            "month",
            "--format",
            "csv",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1010" in Path(done.stdout.strip()).read_text(encoding="utf-8")
    unknown = subprocess.run(
        [sys.executable, "-m", "cli", "report", "reconciliation", "--dominio", "11111111111"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "unknown EC" in unknown.stderr


@pytest.mark.prefect
def test_publish_task_writes_files_and_artifacts(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from prefect import flow as prefect_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from models import db as models_db
    from models.settings import get_settings
    from tasks.reports import publish_reconciliation_report

    with sqlite_db.session() as session:
        load_example_registry(session)
        build(session)
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path))
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()

    @prefect_flow(name="publish-report-test")
    def run() -> dict:  # type: ignore[type-arg]
        return publish_reconciliation_report(EC, TODAY)

    try:
        out = run()
    finally:
        get_settings.cache_clear()
        models_db.get_engine.cache_clear()
    assert {Path(p).suffix for p in out["files"].values()} == {".html", ".csv", ".pdf"}
    assert all(Path(p).is_file() for p in out["files"].values()) and len(out["files"]) == 5
    assert out["anomalies"]["TES_NO_MATCH"] == 2 and out["totals"]["cashed"]["amount"] == "25.50"

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=[
                            f"reconciliation-daily-{EC}",
                            f"reconciliation-anomalies-{EC}",
                            f"prospetto-riscossioni-{EC}",
                        ]
                    )
                ),
                sort=ArtifactSort.CREATED_DESC,
            )
            # Newest first: other tests of this Prefect session may have written the same keys.
            newest: dict[str, str] = {}
            for a in found:
                newest.setdefault(a.key or "", str(a.data))
            return newest

    import asyncio

    published = asyncio.run(artifacts())
    assert set(published) == {
        f"reconciliation-daily-{EC}",
        f"reconciliation-anomalies-{EC}",
        f"prospetto-riscossioni-{EC}",
    }
    assert (
        out["files"][next(n for n in out["files"] if n.endswith(".html"))]
        in published[f"reconciliation-daily-{EC}"]
    )
    assert "TES_NO_MATCH" in published[f"reconciliation-anomalies-{EC}"]


@pytest.mark.prefect
def test_the_reconcile_flow_joins_the_api_copy_reconciles_and_publishes_the_reports(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.reconcile import reconcile
    from models import db as models_db
    from models.settings import get_settings

    with sqlite_db.session() as session:
        load_example_registry(session)
        # The EC's accounting posts the cashed flow's credit first; the journal's copy of it is then stored
        # by a worker that raced the API (so ingestion did not join them): two movements for one credit.
        submit_riconciliazione(
            session,
            id_dominio=EC,
            id_riconciliazione="R-CASHED",
            body=RiconciliazionePut(importo=Decimal("25.50"), sct="CRO-1", idFlusso=CASHED_FLOW),
        )
        session.commit()
        build(session, reconcile=False)
        assert len(session.exec(select(TreasuryMovement)).all()) == 6
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path))
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    try:
        (first,) = reconcile(id_dominio=EC, report_date=TODAY)
        (second,) = reconcile(id_dominio=EC, report_date=TODAY)
    finally:
        get_settings.cache_clear()
        models_db.get_engine.cache_clear()

    assert (first["joined"], first["flows_cashed"], first["flows_in_error"]) == (1, 1, 0)
    assert (second["joined"], second["flows_cashed"], second["collections_cashed"]) == (0, 1, 0)
    reports = first["reports"]
    directory = tmp_path / "reports" / EC / TODAY.isoformat()
    assert Path(reports["directory"]) == directory.resolve() and reports["report_date"] == TODAY.isoformat()
    assert {Path(p).parent for p in reports["files"].values()} == {directory.resolve()}
    suffixes = sorted(Path(p).suffix for p in reports["files"].values())
    assert suffixes == [".csv", ".csv", ".html", ".pdf", ".pdf"]
    # the files say what the day was: the credit counted once and cashed, the rest as in the daily report
    html_file = Path(reports["files"][f"riconciliazione-{EC}-{TODAY.isoformat()}.html"])
    doc = html.fromstring(html_file.read_text(encoding="utf-8"))
    totals = {
        el.get("id"): (int(el.get("data-count")), Decimal(el.get("data-amount")))
        for el in doc.xpath("//div[@class='total']")
    }
    assert totals == {
        "total-cashed": (2, Decimal("25.50")),
        "total-reported": (1, Decimal("61.20")),
        "total-paid": (1, Decimal("7.25")),
        "total-unexplained": (4, Decimal("595.20")),
    }
    csv_file = Path(reports["files"][f"riconciliazione-{EC}-{TODAY.isoformat()}.csv"])
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8"))))
    assert {r["etichetta"]: r["importo"] for r in rows if r["sezione"] == "TOTALE"}["cashed"] == "25.50"
    assert reports["totals"]["cashed"] == {"count": 2, "amount": "25.50"}
    assert second["reports"]["totals"] == reports["totals"]
    with sqlite_db.session() as session:
        movements = session.exec(select(TreasuryMovement)).all()
        posted = session.exec(select(Reconciliation).where(Reconciliation.external_id == "R-CASHED")).one()
    assert len(movements) == 5 and not any(m.dedupe_key.startswith("ragioneria:") for m in movements)
    assert posted.state == "ACQUISITO" and posted.movement_id in {m.id for m in movements}

    async def newest(keys: list[str]) -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                sort=ArtifactSort.CREATED_DESC,
            )
        out: dict[str, str] = {}
        for artifact in found:  # other tests of this Prefect session write the same keys: newest first
            out.setdefault(artifact.key or "", str(artifact.data))
        return out

    import asyncio

    published = asyncio.run(newest(["reconciliation-report", f"reconciliation-daily-{EC}"]))
    assert str(directory.resolve()) in published["reconciliation-report"]
    assert str(html_file) in published[f"reconciliation-daily-{EC}"]
