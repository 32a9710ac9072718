"""The API Pendenze over HTTP: every rule and error code, authorisation, idempotency, states, lists, notices."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from models import db as models_db
from models.settings import get_settings
from rules.positions import italian_today
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.live_server import live_server

BASE = "/api/pendenze/v2"
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
SCUOLA = ("gestionale-scuola", "demo-scuola-password")
ADMIN = ("admin", "demo-operator-password")
COMUNE, SCUOLA_EC, PROVINCIA = "01234567897", "80001234568", "00987654324"
TREASURY_IBAN = "IT21X0306909606000000123456"


@pytest.fixture
def api(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with db.session() as s:
        load_example_registry(s)
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    from web.app import create_app

    with live_server(create_app()) as url:
        yield url
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()


def pendenza(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idTipoPendenza": "TARI", "idDominio": COMUNE, "causale": "TARI 2026 rata unica",
        "soggettoPagatore": {"tipo": "F", "identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi",
                             "email": "mario@example.org"},
        "importo": 150.50, "dataScadenza": (italian_today() + timedelta(days=30)).isoformat(),
        "voci": [
            {"idVocePendenza": "V1", "importo": 100.00, "descrizione": "Quota fissa", "ibanAccredito": TREASURY_IBAN,
             "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"},
            {"idVocePendenza": "V2", "importo": 50.50, "descrizione": "Quota variabile", "codEntrata": "TARI"},
        ],
    }
    body.update(overrides)
    return body


def client(url: str, auth: tuple[str, str] | None = TRIBUTI) -> httpx.Client:
    return httpx.Client(base_url=url + BASE, auth=auth, timeout=30)


def test_put_creates_then_is_idempotent_then_updates(api: str) -> None:
    with client(api) as c:
        first = c.put("/pendenze/A2A-TRIBUTI/P-1", json=pendenza())
        assert first.status_code == 201, first.text
        nav = first.json()["numeroAvviso"]
        assert first.json()["idDominio"] == COMUNE and nav.startswith("301") and len(nav) == 18
        again = c.put("/pendenze/A2A-TRIBUTI/P-1", json=pendenza())
        assert again.status_code == 200 and again.json()["numeroAvviso"] == nav
        assert "X-Pagoflow-Outcome" not in again.headers
        changed = c.put("/pendenze/A2A-TRIBUTI/P-1", json=pendenza(causale="TARI 2026 rettificata"))
        assert changed.status_code == 200 and changed.headers["X-Pagoflow-Outcome"] == "UPDATED"
        got = c.get("/pendenze/A2A-TRIBUTI/P-1").json()
        assert got["causale"] == "TARI 2026 rettificata" and got["numeroAvviso"] == nav
        assert got["stato"] == "NON_ESEGUITA" and got["importo"] == 150.5
        assert [v["idVocePendenza"] for v in got["voci"]] == ["V1", "V2"]
        assert got["voci"][1]["ibanAccredito"] == TREASURY_IBAN and got["voci"][1]["codEntrata"] == "TARI"
        assert got["dominio"]["ragioneSociale"] == "Comune di Esempio" and got["rpp"] == []
        second = c.put("/pendenze/A2A-TRIBUTI/P-2", json=pendenza())
        assert second.json()["numeroAvviso"] != nav


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (pendenza(importo=150.00), "VER_002", "importo"),
        (pendenza(voci=[pendenza()["voci"][0] | {"importo": 75.25}, pendenza()["voci"][0] | {"importo": 75.25}],),
         "VER_001", "voci[1].idVocePendenza"),
        (pendenza(idDominio="11111111111"), "DOM_001", "idDominio"),
        (pendenza(idTipoPendenza="NOPE"), "TVR_001", "idTipoPendenza"),
        (pendenza(idUnitaOperativa="UO-NOPE"), "UOP_001", "idUnitaOperativa"),
        (pendenza(voci=[pendenza()["voci"][0] | {"importo": 150.50, "codEntrata": None, "ibanAccredito": None,
                                                  "tipoBollo": None} | {"codEntrata": "NOPE"}]),
         "TRB_001", "voci[0].codEntrata"),
        (pendenza(voci=[pendenza()["voci"][0] | {"importo": 150.50, "ibanAccredito": "IT65X0306909606000000654321"}]),
         "TRB_002", "voci[0].ibanAccredito"),
        (pendenza(numeroAvviso="301000000000000144"), "VER_010", "numeroAvviso"),
    ],
)
def test_business_rules_answer_422_with_govpay_codes(api: str, body: dict[str, Any], code: str, field: str) -> None:
    with client(api) as c:
        r = c.put("/pendenze/A2A-TRIBUTI/P-X", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["codice"] == code and r.json()["categoria"] == "RICHIESTA"
    assert r.json()["dettaglio"].startswith(field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (pendenza(importo="cento"), "importo"),
        (pendenza(importo=10.001, voci=[pendenza()["voci"][0] | {"importo": 10.001}]), "importo"),
        (pendenza(voci=[]), "voci"),
        (pendenza(soggettoPagatore={"tipo": "X", "identificativo": "A", "anagrafica": "B"}), "soggettoPagatore.tipo"),
        (pendenza(idDominio="123"), "idDominio"),
        (pendenza(voci=[pendenza()["voci"][0] | {"ibanAccredito": "IT00X123"}]), "voci[0].ibanAccredito"),
        (pendenza(causale="x" * 141), "causale"),
    ],
)
def test_syntax_errors_answer_400_naming_the_field(api: str, body: dict[str, Any], field: str) -> None:
    with client(api) as c:
        r = c.put("/pendenze/A2A-TRIBUTI/P-S", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["codice"] == "SINTASSI"
    assert field in r.json()["dettaglio"]


def test_forbidden_changes_on_update(api: str) -> None:
    with client(api) as c:
        assert c.put("/pendenze/A2A-TRIBUTI/P-U", json=pendenza()).status_code == 201
        one_voce = pendenza(importo=100.00, voci=[pendenza()["voci"][0]])
        assert c.put("/pendenze/A2A-TRIBUTI/P-U", json=one_voce).json()["codice"] == "VER_004"
        renamed = pendenza(voci=[pendenza()["voci"][0] | {"idVocePendenza": "V9"}, pendenza()["voci"][1]])
        assert c.put("/pendenze/A2A-TRIBUTI/P-U", json=renamed).json()["codice"] == "VER_005"
        other_ec = pendenza(voci=[pendenza()["voci"][0], pendenza()["voci"][1] | {
            "idDominio": PROVINCIA, "codEntrata": None, "ibanAccredito": "IT58X0103014200000000111222",
            "tipoContabilita": "ALTRO", "codiceContabilita": "TEFA"}])
        assert c.put("/pendenze/A2A-TRIBUTI/P-U", json=other_ec).json()["codice"] == "VER_006"
        stamp = pendenza(voci=[pendenza()["voci"][0], {"idVocePendenza": "V2", "importo": 50.50, "descrizione": "Bollo",
                                                       "tipoBollo": "01", "hashDocumento": "abc",
                                                       "provinciaResidenza": "RM"}])
        assert c.put("/pendenze/A2A-TRIBUTI/P-U", json=stamp).json()["codice"] == "VER_007"


def test_annul_then_restore_and_annul_of_paid(api: str, db: Database) -> None:
    with client(api) as c:
        c.put("/pendenze/A2A-TRIBUTI/P-A", json=pendenza())
        patch = [{"op": "REPLACE", "path": "/stato", "value": "ANNULLATA"},
                 {"op": "REPLACE", "path": "/descrizioneStato", "value": "Richiesta del contribuente"}]
        r = c.patch("/pendenze/A2A-TRIBUTI/P-A", json=patch)
        assert r.status_code == 200 and r.json()["stato"] == "ANNULLATA"
        assert r.json()["descrizioneStato"] == "Richiesta del contribuente"
        r = c.patch("/pendenze/A2A-TRIBUTI/P-A", json=[{"op": "REPLACE", "path": "/stato", "value": "NON_ESEGUITA"}])
        assert r.json()["stato"] == "NON_ESEGUITA"
        assert c.put("/pendenze/A2A-TRIBUTI/P-PAID", json=pendenza()).status_code == 201
    from sqlmodel import select

    from models.positions import Position
    with db.session() as s:
        paid = s.exec(select(Position).where(Position.id_pendenza == "P-PAID")).one()
        paid.state = "ESEGUITA"
        s.add(paid)
        s.commit()
    with client(api) as c:
        r = c.patch("/pendenze/A2A-TRIBUTI/P-PAID", json=[{"op": "REPLACE", "path": "/stato", "value": "ANNULLATA"}])
        assert r.status_code == 422 and r.json()["codice"] == "VER_009"
        r = c.put("/pendenze/A2A-TRIBUTI/P-PAID", json=pendenza(causale="changed"))
        assert r.status_code == 422 and r.json()["codice"] == "VER_003"


def test_expired_position_reads_as_scaduta(api: str) -> None:
    with client(api) as c:
        yesterday = (italian_today() - timedelta(days=1)).isoformat()
        c.put("/pendenze/A2A-TRIBUTI/P-OLD", json=pendenza(dataScadenza=yesterday))
        c.put("/pendenze/A2A-TRIBUTI/P-NEW", json=pendenza())
        assert c.get("/pendenze/A2A-TRIBUTI/P-OLD").json()["stato"] == "SCADUTA"
        listed = c.get("/pendenze", params={"stato": "SCADUTA"}).json()
        assert [p["idPendenza"] for p in listed["risultati"]] == ["P-OLD"]
        listed = c.get("/pendenze", params={"stato": "NON_ESEGUITA"}).json()
        assert [p["idPendenza"] for p in listed["risultati"]] == ["P-NEW"]


def test_authentication_and_authorisation_matrix(api: str) -> None:
    with client(api) as c:
        c.put("/pendenze/A2A-TRIBUTI/P-M", json=pendenza())
    with client(api, auth=None) as anon:
        r = anon.get("/pendenze/A2A-TRIBUTI/P-M")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    with client(api, auth=("gestionale-tributi", "wrong")) as bad:
        assert bad.get("/pendenze/A2A-TRIBUTI/P-M").status_code == 401
    with httpx.Client(base_url=api + BASE, headers={"X-Api-Id": "gestionale-tributi",
                                                   "X-Api-Key": "demo-tributi-apikey"}) as by_key:
        assert by_key.get("/pendenze/A2A-TRIBUTI/P-M").status_code == 200
    with client(api, auth=SCUOLA) as scuola:
        assert scuola.get("/pendenze/A2A-TRIBUTI/P-M").status_code == 403
        assert scuola.put("/pendenze/A2A-TRIBUTI/P-Z", json=pendenza()).status_code == 403
        assert scuola.put("/pendenze/A2A-SCUOLA/P-Z", json=pendenza()).status_code == 403  # EC not granted
        nav = scuola.get(f"/pendenze/byAvviso/{COMUNE}/000000000000000000")
        assert nav.status_code == 404
        assert scuola.get("/pendenze").json()["numRisultati"] == 0
    with client(api) as tributi:
        tefa_wrong_type = pendenza(idDominio=PROVINCIA, idTipoPendenza="TEFA",
                                   voci=[pendenza()["voci"][0] | {"importo": 150.50,
                                                                  "ibanAccredito": "IT58X0103014200000000111222"}])
        assert tributi.put("/pendenze/A2A-TRIBUTI/P-T", json=tefa_wrong_type).status_code == 201
    with client(api, auth=ADMIN) as admin:
        assert admin.get("/pendenze/A2A-TRIBUTI/P-M").status_code == 200
        assert admin.put("/pendenze/A2A-TRIBUTI/P-Y", json=pendenza()).status_code == 403


def test_application_brings_its_own_notice_number(api: str) -> None:
    body = {"idTipoPendenza": "MENSA", "idDominio": SCUOLA_EC, "causale": "Mensa ottobre",
            "soggettoPagatore": {"identificativo": "VRDLGU10A01H501X", "anagrafica": "Luigi Verdi"},
            "importo": 42.00, "numeroAvviso": "302999000000000100",
            "voci": [{"idVocePendenza": "M1", "importo": 42.00, "descrizione": "Mensa",
                      "ibanAccredito": "IT65X0306909606000000654321", "tipoContabilita": "ALTRO",
                      "codiceContabilita": "MENSA"}]}
    from rules.identifiers import check_digits
    base = "302999000000000100"[:16]
    body["numeroAvviso"] = base + check_digits(base)
    with client(api, auth=SCUOLA) as c:
        r = c.put("/pendenze/A2A-SCUOLA/M-1", json=body)
        assert r.status_code == 201 and r.json()["numeroAvviso"] == body["numeroAvviso"]
        dup = c.put("/pendenze/A2A-SCUOLA/M-2", json=body)
        assert dup.status_code == 422 and dup.json()["codice"] == "VER_014"
        wrong = c.put("/pendenze/A2A-SCUOLA/M-3", json=body | {"numeroAvviso": base + "00"})
        assert wrong.status_code == 422 and wrong.json()["codice"] == "VER_011"


def test_list_filters_and_paging(api: str) -> None:
    with client(api) as c:
        for i in range(7):
            payer = {"identificativo": "RSSMRA80A01H501U" if i % 2 else "BNCLRA85B41F205X", "anagrafica": "X"}
            c.put(f"/pendenze/A2A-TRIBUTI/L-{i}", json=pendenza(soggettoPagatore=payer, direzione=f"D{i % 3}"))
        page = c.get("/pendenze", params={"risultatiPerPagina": 3, "pagina": 2}).json()
        assert (page["numRisultati"], page["numPagine"], page["pagina"], len(page["risultati"])) == (7, 3, 2, 3)
        assert page["prossimiRisultati"] is not None
        last = c.get("/pendenze", params={"risultatiPerPagina": 3, "pagina": 3}).json()
        assert len(last["risultati"]) == 1 and last["prossimiRisultati"] is None
        by_debtor = c.get("/pendenze", params={"idDebitore": "rssmra80a01h501u"}).json()
        assert by_debtor["numRisultati"] == 3
        by_dir = c.get("/pendenze", params={"direzione": "D0", "idDominio": COMUNE}).json()
        assert {p["idPendenza"] for p in by_dir["risultati"]} == {"L-0", "L-3", "L-6"}
        today = italian_today().isoformat()
        assert c.get("/pendenze", params={"dataDa": today, "dataA": today}).json()["numRisultati"] == 7
        assert c.get("/pendenze", params={"stato": "BOH"}).status_code == 400


def test_notice_pdf_and_json(api: str) -> None:
    with client(api) as c:
        r = c.put("/pendenze/A2A-TRIBUTI/P-PDF", params={"stampaAvviso": "true"}, json=pendenza())
        nav = r.json()["numeroAvviso"]
        assert r.json()["pdf"]
        pdf = c.get(f"/avvisi/{COMUNE}/{nav}", headers={"Accept": "application/pdf"})
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
        assert "Comune di Esempio" in text and "Mario Rossi" in text and "150,50" in text
        assert " ".join([nav[i:i + 4] for i in range(0, 18, 4)]) in text
        data = c.get(f"/avvisi/{COMUNE}/{nav}").json()
        assert data["qrcode"] == f"PAGOPA|002|{nav}|{COMUNE}|15050"
        for rata in (1, 2):
            c.put(f"/pendenze/A2A-TRIBUTI/DOC-{rata}", json=pendenza(
                importo=75.25, voci=[pendenza()["voci"][0] | {"importo": 75.25}],
                documento={"identificativo": "DOC-2026", "descrizione": "TARI 2026 in due rate", "rata": rata}))
        doc = c.get(f"/documenti/{COMUNE}/DOC-2026/avvisi")
        assert doc.status_code == 200 and len(PdfReader(io.BytesIO(doc.content)).pages) == 2


def test_openapi_is_published(api: str) -> None:
    spec = httpx.get(api + "/openapi.json").json()
    assert f"{BASE}/pendenze/{{idA2A}}/{{idPendenza}}" in spec["paths"]
