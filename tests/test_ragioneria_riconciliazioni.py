"""API Ragioneria v3 over HTTP: riconciliazioni submitted, processed by the next run, read back; reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from sqlmodel import select

from models import db as models_db
from models.reporting import ReportingLine
from models.settings import get_settings
from models.treasury import TreasuryMovement
from store.reconciliation import reconcile_ec
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_reconciliation import EC, IBAN, flow, money, paid_position
from tests.live_server import live_server
from web.ragioneria import get_ragioneria_settings

BASE = "/api/ragioneria/v3"
ADMIN = ("admin", "demo-operator-password")
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
SCUOLA = ("gestionale-scuola", "demo-scuola-password")
SCUOLA_EC, SCUOLA_IBAN = "80001234568", "IT65X0306909606000000654321"
FLOW_ID = "2026-11-26BCITITMM-S0000001"


@pytest.fixture
def api(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Database]]:
    with db.session() as s:
        load_example_registry(s)
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.delenv("PAGOFLOW_RAGIONERIA_BASE_PATH", raising=False)
    get_settings.cache_clear()
    get_ragioneria_settings.cache_clear()
    models_db.get_engine.cache_clear()
    from web.app import create_app

    with live_server(create_app()) as url:
        yield url, db
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()


def client(url: str, auth: tuple[str, str] | None = TRIBUTI) -> httpx.Client:
    return httpx.Client(base_url=url + BASE, auth=auth, timeout=30)


def body(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "importo": 25.50,
        "dataValuta": date.today().isoformat(),
        "dataContabile": date.today().isoformat(),
        "contoAccredito": IBAN,
        "sct": "TRN000000000001",
        "causale": f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}",
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def reconcile(db: Database) -> None:
    """The next run of the reconcile flow, for the example Comune."""
    with db.session() as s:
        reconcile_ec(s, id_dominio=EC)
        s.commit()


def test_submission_is_async_idempotent_and_ends_acquisito_with_its_collections(
    api: tuple[str, Database],
) -> None:
    url, db = api
    with db.session() as s:
        a, b = paid_position(s, amount="10.00"), paid_position(s, amount="15.50")
        f = flow(s, id_flusso=FLOW_ID, positions=[a, b], extra_lines=[("99000000000000001", "3.25", 0, 1)])
        other = s.exec(
            select(ReportingLine).where(ReportingLine.flow_id == f.id, ReportingLine.line_index == 3)
        ).one()
        other.state = "ALTRO_INTERMEDIARIO"
        s.add(other)
        s.commit()
    with client(url) as c:
        first = c.put(f"/riconciliazioni/{EC}/R-0001", json=body(importo=28.75))
        assert first.status_code == 202, first.text
        got = first.json()
        assert (got["stato"], got["codiceEsito"], got["riscossioni"]) == ("IN_ELABORAZIONE", None, [])
        assert got["idFlusso"] == FLOW_ID and got["importo"] == 28.75 and got["contoAccredito"] == IBAN
        # the same body again, keys reordered and padded with blanks: the same submission
        shuffled = {k: (f"  {v} " if k == "sct" else v) for k, v in reversed(body(importo=28.75).items())}
        again = c.put(f"/riconciliazioni/{EC}/R-0001", json=shuffled)
        assert again.status_code == 200 and again.json()["stato"] == "IN_ELABORAZIONE"
        changed = c.put(f"/riconciliazioni/{EC}/R-0001", json=body(importo=28.70))
        assert changed.status_code == 422 and changed.json()["codice"] == "021409"

        reconcile(db)

        detail = c.get(f"/riconciliazioni/{EC}/R-0001").json()
        assert detail["stato"] == "ACQUISITO" and detail["codiceEsito"] is None
        ours = sorted(
            (r["iuv"], r["importo"], r["indice"], r["stato"], r["tipo"], r["pendenza"]["idPendenza"])
            for r in detail["riscossioni"]
            if r["tipo"] == "ENTRATA"
        )
        assert ours == sorted(
            [
                (a.iuv, 10.0, 1, "INCASSATA", "ENTRATA", a.id_pendenza),
                (b.iuv, 15.5, 1, "INCASSATA", "ENTRATA", b.id_pendenza),
            ]
        )
        assert all(
            r["iur"].startswith("IUR") and r["idRiconciliazione"] == "R-0001" for r in detail["riscossioni"]
        )
        assert [
            (r["iuv"], r["importo"]) for r in detail["riscossioni"] if r["tipo"] == "ALTRO_INTERMEDIARIO"
        ] == [("99000000000000001", 3.25)]
        resubmitted = c.put(f"/riconciliazioni/{EC}/R-0001", json=body(importo=28.75))
        assert resubmitted.status_code == 200 and resubmitted.json()["stato"] == "ACQUISITO"

        listed = c.get("/riconciliazioni", params={"idDominio": EC, "stato": "ACQUISITO"}).json()
        assert listed["numRisultati"] == 1 and listed["risultati"][0]["id"] == "R-0001"
        assert "riscossioni" not in listed["risultati"][0]
        assert (
            c.get("/riconciliazioni", params={"idDominio": EC, "stato": "ERRORE"}).json()["numRisultati"] == 0
        )

        cashed = c.get(
            "/riscossioni", params={"idDominio": EC, "stato": "INCASSATA", "tipo": "ENTRATA"}
        ).json()
        assert cashed["numRisultati"] == 2
        assert all(
            r["ricevuta"]["esito"] == "OK"
            and r["ricevuta"]["idRicevuta"].startswith("RCPT")
            and r["pendenza"]["numeroAvviso"]
            for r in cashed["risultati"]
        )
        page = c.get("/riscossioni", params={"idDominio": EC, "risultatiPerPagina": 2, "pagina": 2}).json()
        assert page["numRisultati"] == 3 and [r["tipo"] for r in page["risultati"]] == ["ALTRO_INTERMEDIARIO"]
        assert page["risultati"][0]["stato"] == "INCASSATA"
        assert (
            c.get("/riscossioni", params={"idDominio": EC, "stato": "RISCOSSA"}).json()["numRisultati"] == 0
        )

        receipts = c.get("/ricevute", params={"idDominio": EC, "dataDa": date.today().isoformat()}).json()
        assert receipts["numRisultati"] == 2
        assert {r["pendenza"]["idPendenza"] for r in receipts["risultati"]} == {a.id_pendenza, b.id_pendenza}
        assert (
            c.get("/ricevute", params={"idDominio": EC, "iuv": a.iuv}).json()["risultati"][0]["importo"]
            == 10.0
        )


def test_outcome_codes(api: tuple[str, Database]) -> None:
    url, db = api
    with db.session() as s:
        a = paid_position(s, amount="10.00")
        b = paid_position(s, amount="20.00")
        flow(s, id_flusso=FLOW_ID, positions=[a])
        flow(s, id_flusso="2026-11-26BCITITMM-S0000002", positions=[b], state="ANOMALA")
    with client(url, ADMIN) as c:

        def put(rid: str, payload: Any, ec: str = EC) -> httpx.Response:
            return c.put(f"/riconciliazioni/{ec}/{rid}", json=payload)

        syntax = [
            c.put(
                f"/riconciliazioni/{EC}/S-1",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            put("S-2", body(sct=None)),
            put("S-3", body(importo=10.001)),
            put("S-4", body(importo=-5)),
            put("S-5", body(causale=None)),
            put("S-6", body(contoAccredito="IT00X123")),
            put("S-7", body(idFlusso="not a flow id!")),
            put("S-8", body(), ec="123"),
            put("TES-12", body()),
        ]
        assert [(r.status_code, r.json()["codice"]) for r in syntax] == [(400, "021408")] * len(syntax)
        assert "sct" in syntax[1].json()["dettaglio"] and "importo" in syntax[2].json()["dettaglio"]
        unknown_ec = put("U-1", body(), ec="11111111111")
        assert (unknown_ec.status_code, unknown_ec.json()["codice"]) == (422, "021410")
        wrong_iban = put("U-2", body(contoAccredito=SCUOLA_IBAN))
        assert (wrong_iban.status_code, wrong_iban.json()["codice"]) == (422, "021412")

        # decided at submission: a causale naming neither a flow nor an IUV
        garbage = put("C-1", body(causale="BONIFICO DA ROSSI MARIO AFFITTO", importo=500))
        assert garbage.status_code == 202
        assert (garbage.json()["stato"], garbage.json()["codiceEsito"]) == ("ERRORE", "021401")
        # decided by the next run
        assert (
            put(
                "C-2",
                body(causale="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-26BCITITMM-S9999999", importo=7, sct="T2"),
            ).status_code
            == 202
        )
        assert put("C-3", body(causale=None, idFlusso=FLOW_ID, importo=12, sct="T3")).status_code == 202
        assert (
            put(
                "C-4", body(causale=None, idFlusso="2026-11-26BCITITMM-S0000002", importo=20, sct="T4")
            ).status_code
            == 202
        )
        assert put("C-5", body(causale=None, iuv="01999999999999999", importo=3, sct="T5")).status_code == 202
        assert (
            put(
                "C-6",
                body(causale=None, iuv=b.iuv, importo=20, sct="T6"),
            ).json()["stato"]
            == "IN_ELABORAZIONE"
        )
        # contoAccredito is optional: the EC's treasury account
        assert (
            put(
                "C-7",
                body(
                    contoAccredito=None,
                    sct="T7",
                    importo=1,
                    causale="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-26BCITITMM-S9999999",
                ),
            ).json()["contoAccredito"]
            == IBAN
        )

        reconcile(db)

        outcome = {
            rid: (d["stato"], d["codiceEsito"])
            for rid in ("C-1", "C-2", "C-3", "C-4", "C-5", "C-6")
            for d in [c.get(f"/riconciliazioni/{EC}/{rid}").json()]
        }
        assert outcome == {
            "C-1": ("ERRORE", "021401"),
            "C-2": ("IN_ELABORAZIONE", "021405"),
            "C-3": ("ERRORE", "021407"),
            "C-4": ("ERRORE", "021404"),
            "C-5": ("IN_ELABORAZIONE", "021402"),
            "C-6": ("ACQUISITO", None),
        }
        c6 = c.get(f"/riconciliazioni/{EC}/C-6").json()
        assert [(r["iuv"], r["stato"]) for r in c6["riscossioni"]] == [(b.iuv, "INCASSATA")]
        assert c.get(f"/riconciliazioni/{EC}/NOPE").status_code == 404
        errors = c.get("/riconciliazioni", params={"stato": "ERRORE", "risultatiPerPagina": 1}).json()
        assert errors["numRisultati"] == 3 and errors["numPagine"] == 3 and errors["prossimiRisultati"]


def test_authorisation_per_ec(api: tuple[str, Database]) -> None:
    url, _ = api
    with client(url, TRIBUTI) as c:
        assert c.put(f"/riconciliazioni/{EC}/A-1", json=body()).status_code == 202
    with client(url, SCUOLA) as c:
        denied = c.put(f"/riconciliazioni/{EC}/A-2", json=body())
        assert denied.status_code == 403 and denied.json()["codice"] == "403000"
        assert c.get(f"/riconciliazioni/{EC}/A-1").status_code == 403
        assert c.get("/riconciliazioni", params={"idDominio": EC}).status_code == 403
        assert c.get("/riscossioni", params={"idDominio": EC}).status_code == 403
        assert c.get("/ricevute", params={"idDominio": EC}).status_code == 403
        assert c.get("/riconciliazioni").json()["numRisultati"] == 0
        own = c.put(f"/riconciliazioni/{SCUOLA_EC}/A-3", json=body(contoAccredito=SCUOLA_IBAN))
        assert own.status_code == 202, own.text
        assert [r["id"] for r in c.get("/riconciliazioni").json()["risultati"]] == ["A-3"]
    with client(url, ADMIN) as c:
        assert {r["id"] for r in c.get("/riconciliazioni").json()["risultati"]} == {"A-1", "A-3"}
    with client(url, None) as c:
        assert c.get("/riconciliazioni").status_code == 401
        assert c.put(f"/riconciliazioni/{EC}/A-4", json=body()).status_code == 401


def test_a_movement_already_in_the_journal_is_adopted_not_counted_twice(api: tuple[str, Database]) -> None:
    url, db = api
    with db.session() as s:
        a = paid_position(s, amount="40.00")
        flow(s, id_flusso=FLOW_ID, positions=[a])
        journal = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="40.00")
        journal.bank_reference = "TRN-JOURNAL-1"
        s.add(journal)
        s.commit()
    reconcile(db)
    with client(url) as c:
        adopted = c.put(f"/riconciliazioni/{EC}/J-1", json=body(importo=40, sct="TRN-JOURNAL-1"))
        assert adopted.status_code == 202 and adopted.json()["stato"] == "ACQUISITO"
        assert adopted.json()["origine"] == "API" and len(adopted.json()["riscossioni"]) == 1
        claimed = c.put(f"/riconciliazioni/{EC}/J-2", json=body(importo=40, sct="TRN-JOURNAL-1"))
        assert (claimed.status_code, claimed.json()["codice"]) == (422, "021411")
        reconcile(db)
        assert c.get(f"/riconciliazioni/{EC}/J-1").json()["stato"] == "ACQUISITO"
        assert c.get("/riconciliazioni", params={"idDominio": EC}).json()["numRisultati"] == 1
    with db.session() as s:
        assert len(s.exec(select(TreasuryMovement)).all()) == 1


@pytest.mark.xfail(strict=True, reason="store.reconciliation sums both copies of money that reached us twice "
                   "(API first, then the treasury journal): the flow is refused with 021407; see the report")
def test_money_submitted_then_read_from_the_journal_is_counted_once(api: tuple[str, Database]) -> None:
    url, db = api
    with db.session() as s:
        a = paid_position(s, amount="40.00")
        flow(s, id_flusso=FLOW_ID, positions=[a])
    with client(url) as c:
        assert c.put(f"/riconciliazioni/{EC}/J-1", json=body(importo=40, sct="TRN-JOURNAL-1")).status_code == 202
    with db.session() as s:  # the same credit, read later from the treasury journal
        journal = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="40.00")
        journal.bank_reference = "TRN-JOURNAL-1"
        s.add(journal)
        s.commit()
    reconcile(db)
    with client(url) as c:
        assert c.get(f"/riconciliazioni/{EC}/J-1").json()["stato"] == "ACQUISITO"
