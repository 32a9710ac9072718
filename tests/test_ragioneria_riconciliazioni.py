"""API Ragioneria v3 over HTTP: riconciliazioni submitted, processed by the next run, read back; reads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from models import db as models_db
from models.payments import Collection
from models.registry import Operator, OperatorGrant
from models.reporting import ReportingLine
from models.settings import get_settings
from models.treasury import TreasuryMovement
from rules.credentials import hash_secret
from sandbox.builders.treasury import Credit, JournalFormat, build_journal
from store.movement_dedupe import link_api_movements
from store.reconciliation import reconcile_ec
from tasks.treasury import FetchedFile, FileOutcome, process_file
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


def serve(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Database]]:
    """The web process over the example registry in ``db``, on a loopback port."""
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


@pytest.fixture
def api(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Database]]:
    yield from serve(db, monkeypatch)


@pytest.fixture
def sqlite_api(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Database]]:
    yield from serve(sqlite_db, monkeypatch)


def add_operator(db: Database, *, username: str, role: str, creditors: list[str]) -> tuple[str, str]:
    """An operator of some ECs with a password; returns its Basic credentials."""
    password = f"{username}-password"
    with db.session() as s:
        s.add(Operator(username=username, full_name=username, password_hash=hash_secret(password), role=role))
        s.flush()
        s.add_all(OperatorGrant(username=username, id_dominio=ec) for ec in creditors)
        s.commit()
    return username, password


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
    """What the next run of the reconcile flow does for the example Comune: its join, then its reconcile."""
    with db.session() as s:
        link_api_movements(s, id_dominio=EC)
        s.commit()
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
        # another transfer for the IUV C-6 cashed (another TRN): refused, nothing stored
        twice = put("C-8", body(causale=None, iuv=b.iuv, importo=20, sct="T8"))
        assert (twice.status_code, twice.json()["codice"]) == (422, "021406")
        assert c.get(f"/riconciliazioni/{EC}/C-8").status_code == 404
        assert c.get(f"/riconciliazioni/{EC}/NOPE").status_code == 404
        errors = c.get("/riconciliazioni", params={"stato": "ERRORE", "risultatiPerPagina": 1}).json()
        assert errors["numRisultati"] == 3 and errors["numPagine"] == 3 and errors["prossimiRisultati"]


def test_authorisation_per_ec(api: tuple[str, Database]) -> None:
    url, db = api
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
        assert c.get("/riconciliazioni", params={"pagina": 0}).status_code == 401  # who before what
    # operators: a read-only one reads its EC and submits nothing; an operator of the Scuola only its own
    with client(url, add_operator(db, username="lettore.comune", role="READONLY", creditors=[EC])) as c:
        assert c.get(f"/riconciliazioni/{EC}/A-1").json()["id"] == "A-1"
        assert [r["id"] for r in c.get("/riconciliazioni").json()["risultati"]] == ["A-1"]
        refused = c.put(f"/riconciliazioni/{EC}/A-5", json=body(sct="T-5"))
        assert (refused.status_code, refused.json()["codice"]) == (403, "403000")
        assert c.get(f"/riconciliazioni/{SCUOLA_EC}/A-3").status_code == 403
    scuola_operator = add_operator(db, username="operatore.scuola", role="OPERATOR", creditors=[SCUOLA_EC])
    with client(url, scuola_operator) as c:
        assert c.put(f"/riconciliazioni/{EC}/A-6", json=body(sct="T-6")).status_code == 403
        assert c.get(f"/riconciliazioni/{EC}/A-1").status_code == 403
        assert c.get("/riscossioni", params={"idDominio": EC}).status_code == 403
        own = c.put(f"/riconciliazioni/{SCUOLA_EC}/A-7", json=body(contoAccredito=SCUOLA_IBAN, sct="T-7"))
        assert own.status_code == 202 and own.json()["origine"] == "API"
        assert sorted(r["id"] for r in c.get("/riconciliazioni").json()["risultati"]) == ["A-3", "A-7"]


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


def test_money_submitted_then_read_from_the_journal_is_counted_once(api: tuple[str, Database]) -> None:
    url, db = api
    with db.session() as s:
        a = paid_position(s, amount="40.00")
        flow(s, id_flusso=FLOW_ID, positions=[a])
    with client(url) as c:
        posted = c.put(f"/riconciliazioni/{EC}/J-1", json=body(importo=40, sct="TRN-JOURNAL-1"))
        assert posted.status_code == 202
    # The same credit, read later from the treasury journal by a worker that stored it while the API's copy
    # was being written (so ingestion's own join did not see it): the reconcile run joins the two first.
    with db.session() as s:
        journal = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="40.00")
        journal.bank_reference = "TRN-JOURNAL-1"
        s.add(journal)
        s.commit()
    reconcile(db)
    with client(url) as c:
        got = c.get(f"/riconciliazioni/{EC}/J-1").json()
        assert (got["stato"], got["codiceEsito"], got["origine"]) == ("ACQUISITO", None, "API")
        assert [(r["iuv"], r["stato"]) for r in got["riscossioni"]] == [(a.iuv, "INCASSATA")]
        assert c.get("/riconciliazioni", params={"idDominio": EC}).json()["numRisultati"] == 1
    with db.session() as s:
        assert [m.id for m in s.exec(select(TreasuryMovement))] == [journal.id]


def journal_file(db: Database, tmp_path: Path, credits: list[Credit]) -> FileOutcome:
    """The Comune's OPI journal of today, stored by the ingestion's file step as after an SFTP download."""
    data = build_journal(
        fmt=JournalFormat.OPI_1_8,
        account_iban=IBAN,
        ec_fiscal_code=EC,
        ec_name="Comune di Esempio",
        day=date.today(),
        sequence=1,
        credits=credits,
    )
    path = tmp_path / "GDC_1.xml"
    path.write_bytes(data)
    fetched = FetchedFile(
        source="comune-tesoreria",  # the example registry's source for the Comune's account
        name=path.name,
        path=str(path),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return process_file(fetched=fetched, engine=db.engine, work_dir=tmp_path)


def credit(n: int, amount: str, remittance: str) -> Credit:
    return Credit(
        amount=Decimal(amount),
        value_date=date.today(),
        booking_date=date.today(),
        remittance=remittance,
        ordering_party="BANCA DI TEST SPA",
        end_to_end_id=f"E2E-{n}",
        bank_reference=f"TRN-{n}",
        bank_movement_id=f"BT{n:06d}",
    )


def test_the_same_money_from_the_api_and_from_the_journal_file_is_one_movement_either_order(
    api: tuple[str, Database], tmp_path: Path
) -> None:
    url, db = api
    flows = [f"2026-11-26BCITITMM-S000000{n}" for n in range(1, 5)]
    amounts = ["11.00", "12.00", "13.00", "14.00"]
    with db.session() as s:
        positions = [paid_position(s, amount=amount) for amount in amounts]
        for flow_id, position in zip(flows, positions, strict=True):
            flow(s, id_flusso=flow_id, positions=[position])
    uri = "/PUR/LGPE-RIVERSAMENTO/URI/"
    with client(url) as c:
        # API first: the EC names the flow; or the EC's causale names nothing, the bank's will
        r1_body = body(importo=11, sct="TRN-1", causale=uri + flows[0])
        r1 = c.put(f"/riconciliazioni/{EC}/R-1", json=r1_body)
        r2 = c.put(f"/riconciliazioni/{EC}/R-2", json=body(importo=12, sct="TRN-2", causale="PAGOPA 26/11"))
        assert (r1.status_code, r1.json()["stato"]) == (202, "IN_ELABORAZIONE")
        assert (r2.status_code, r2.json()["stato"], r2.json()["codiceEsito"]) == (202, "ERRORE", "021401")
        reconcile(db)  # an hourly run before the journal comes: the EC's word is enough to cash F1
        assert c.get(f"/riconciliazioni/{EC}/R-1").json()["stato"] == "ACQUISITO"

        stored = journal_file(
            db,
            tmp_path,
            [
                credit(1, "11.00", uri + flows[0]),
                credit(2, "12.00", uri + flows[1]),
                credit(3, "13.00", uri + flows[2]),
                credit(4, "14.00", uri),  # the bank cut the flow id off
            ],
        )
        assert (stored.state, stored.movements, stored.linked) == ("PROCESSED", 4, 2)
        assert c.get(f"/riconciliazioni/{EC}/R-2").json()["stato"] == "IN_ELABORAZIONE"  # now it names F2

        # journal first: the submission adopts the journal's movement (and names the flow the bank cut)
        r3 = c.put(f"/riconciliazioni/{EC}/R-3", json=body(importo=13, sct="TRN-3", causale=uri + flows[2]))
        r4 = c.put(
            f"/riconciliazioni/{EC}/R-4", json=body(importo=14, sct="TRN-4", causale=None, idFlusso=flows[3])
        )
        assert [(r.status_code, r.json()["stato"], r.json()["origine"]) for r in (r3, r4)] == [
            (202, "IN_ELABORAZIONE", "API")
        ] * 2
        # the same transfer under another id
        again = c.put(f"/riconciliazioni/{EC}/R-5", json=body(importo=11, sct="TRN-1", causale=uri))
        assert (again.status_code, again.json()["codice"]) == (422, "021411")

        reconcile(db)

        for n, (position, flow_id) in enumerate(zip(positions, flows, strict=True), start=1):
            got = c.get(f"/riconciliazioni/{EC}/R-{n}").json()
            assert (got["stato"], got["codiceEsito"], got["idFlusso"], got["sct"]) == (
                "ACQUISITO",
                None,
                flow_id,
                f"TRN-{n}",
            ), n
            assert [(r["iuv"], r["stato"]) for r in got["riscossioni"]] == [(position.iuv, "INCASSATA")]
        # the same submission again, after its money was joined to the journal's: the same riconciliazione
        resent = c.put(f"/riconciliazioni/{EC}/R-1", json=r1_body)
        assert (resent.status_code, resent.json()["stato"]) == (200, "ACQUISITO")
        # another transfer (another TRN) for a flow already cashed: refused, nothing stored
        late = c.put(f"/riconciliazioni/{EC}/R-6", json=body(importo=12, sct="TRN-9", idFlusso=flows[1]))
        assert (late.status_code, late.json()["codice"]) == (422, "021413")
        listed = c.get("/riconciliazioni", params={"idDominio": EC}).json()
        assert sorted(r["id"] for r in listed["risultati"]) == ["R-1", "R-2", "R-3", "R-4"]  # no TES-<id>
        assert all(r["causale"].startswith(uri) for r in listed["risultati"])  # the bank's
    with db.session() as s:
        movements = s.exec(select(TreasuryMovement)).all()
        assert len(movements) == 4 and {m.file_id for m in movements} == {stored.file_id}
        assert sum(m.amount for m in movements) == Decimal("50.00")
        cashed = s.exec(select(Collection.movement_id, Collection.state)).all()
        assert sorted(cashed) == sorted((m.id, "INCASSATA") for m in movements)



BAD_QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("/flussiRendicontazione", {"idDominio": "123"}, "idDominio"),
    ("/flussiRendicontazione", {"dataDa": "2026-13-01"}, "dataDa"),
    ("/flussiRendicontazione", {"stato": "CHIUSA"}, "stato"),
    ("/flussiRendicontazione", {"escludiObsoleti": "forse"}, "escludiObsoleti"),
    ("/flussiRendicontazione", {"iuv": "1" * 36}, "iuv"),
    ("/flussiRendicontazione", {"pagina": 0}, "pagina"),
    ("/flussiRendicontazione", {"dataDa": "2026-11-27", "dataA": "2026-11-26"}, "dataA"),
    (f"/flussiRendicontazione/123/{FLOW_ID}", {}, "idDominio"),
    (f"/flussiRendicontazione/{EC}/{FLOW_ID}", {"revisione": 0}, "revisione"),
    ("/riconciliazioni", {"idDominio": "0123456789X"}, "idDominio"),
    ("/riconciliazioni", {"dataA": "ieri"}, "dataA"),
    ("/riconciliazioni", {"stato": "CHIUSA"}, "stato"),
    ("/riconciliazioni", {"idFlusso": "F" * 36}, "idFlusso"),
    ("/riconciliazioni", {"sct": "T" * 71}, "sct"),
    ("/riconciliazioni", {"risultatiPerPagina": 501}, "risultatiPerPagina"),
    ("/riconciliazioni", {"dataDa": "2026-11-27", "dataA": "2026-11-01"}, "dataA"),
    ("/riconciliazioni/1234/R-1", {}, "idDominio"),
    ("/riscossioni", {"stato": "PAGATA"}, "stato"),
    ("/riscossioni", {"tipo": "ALTRO"}, "tipo"),
    ("/riscossioni", {"pagina": "due"}, "pagina"),
    ("/riscossioni", {"dataDa": "2026-11-27", "dataA": "2026-11-26"}, "dataA"),
    ("/ricevute", {"esito": "FORSE"}, "esito"),
    ("/ricevute", {"idRicevuta": "R" * 36}, "idRicevuta"),
    ("/ricevute", {"dataDa": "27/11/2026"}, "dataDa"),
    ("/ricevute", {"risultatiPerPagina": 0}, "risultatiPerPagina"),
]


def test_every_get_answers_a_bad_parameter_with_021408_naming_it(sqlite_api: tuple[str, Database]) -> None:
    url, _ = sqlite_api
    with client(url, ADMIN) as c:
        for path, params, name in BAD_QUERIES:
            got = c.get(path, params=params)
            assert got.status_code == 400, (path, params, got.text)
            answer = got.json()
            assert (answer["categoria"], answer["codice"], answer["descrizione"]) == (
                "RICHIESTA",
                "021408",
                "Richiesta non valida",
            ), (path, params)
            assert answer["dettaglio"].startswith(f"{name}: "), (path, params, answer["dettaglio"])
        # the same endpoints with good values answer
        good = [
            ("/flussiRendicontazione", {"idDominio": EC, "dataDa": "2026-11-26", "dataA": "2026-11-26"}),
            ("/riconciliazioni", {"stato": "ERRORE", "risultatiPerPagina": 500}),
            ("/riscossioni", {"tipo": "MBT", "pagina": 2}),
            ("/ricevute", {"esito": "KO"}),
        ]
        assert [c.get(path, params=params).status_code for path, params in good] == [200] * len(good)
        assert c.get(f"/flussiRendicontazione/{EC}/{FLOW_ID}").status_code == 404
        assert c.get(f"/riconciliazioni/{EC}/R-1").status_code == 404
        # the API Pendenze keeps its own syntax code
        pendenze = httpx.get(f"{url}/api/pendenze/v2/pendenze", params={"pagina": 0}, auth=ADMIN, timeout=30)
        assert (pendenze.status_code, pendenze.json()["codice"]) == (400, "SINTASSI")


def test_a_second_journal_transfer_for_money_already_cashed_is_refused(
    sqlite_api: tuple[str, Database], tmp_path: Path
) -> None:
    url, db = sqlite_api
    with db.session() as s:
        a, b = paid_position(s, amount="40.00"), paid_position(s, amount="7.00")
        flow(s, id_flusso=FLOW_ID, positions=[a])
    uri = f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}"
    single = f"/RFB/{b.iuv}/7.00"
    journal_file(
        db,
        tmp_path,
        [credit(1, "40.00", uri), credit(2, "7.00", single)]
        + [credit(3, "40.00", uri), credit(4, "7.00", single)],
    )
    reconcile(db)
    with client(url, ADMIN) as c:
        listed = c.get("/riconciliazioni", params={"idDominio": EC}).json()["risultati"]
    assert {r["sct"]: (r["stato"], r["codiceEsito"]) for r in listed} == {
        "TRN-1": ("ACQUISITO", None),
        "TRN-2": ("ACQUISITO", None),
        "TRN-3": ("ERRORE", "021413"),
        "TRN-4": ("ERRORE", "021406"),
    }


def test_the_same_transfer_naming_another_flow_in_the_journal_is_one_credit_the_banks(
    api: tuple[str, Database], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, db = api
    named, paid = "2026-11-26BCITITMM-S0000011", "2026-11-26BCITITMM-S0000012"
    with db.session() as s:
        a, b = paid_position(s, amount="30.00"), paid_position(s, amount="30.00")
        flow(s, id_flusso=named, positions=[a])
        flow(s, id_flusso=paid, positions=[b])
    uri = "/PUR/LGPE-RIVERSAMENTO/URI/"
    with client(url) as c:
        # the EC's accounting says TRN-7 is the money of one flow, and the next run cashes it on its word
        sent = c.put(f"/riconciliazioni/{EC}/R-7", json=body(importo=30, sct="TRN-7", causale=uri + named))
        assert sent.status_code == 202
        reconcile(db)
        assert c.get(f"/riconciliazioni/{EC}/R-7").json()["stato"] == "ACQUISITO"
        # the bank's journal: the same transfer (TRN-7, account, amount) names the other flow
        with caplog.at_level("WARNING", logger="store.movement_dedupe"):
            stored = journal_file(db, tmp_path, [credit(7, "30.00", uri + paid)])
        assert (stored.movements, stored.linked) == (1, 1)
        assert any("the bank's stands" in r.getMessage() and paid in r.getMessage() for r in caplog.records)
        reconcile(db)
        got = c.get(f"/riconciliazioni/{EC}/R-7").json()
        assert (got["stato"], got["idFlusso"], got["sct"]) == ("ACQUISITO", paid, "TRN-7")
    with db.session() as s:
        movements = s.exec(select(TreasuryMovement)).all()
        assert [m.amount for m in movements] == [Decimal("30.00")]  # counted once, not 60.00
        states = dict(s.exec(select(Collection.position_id, Collection.state)).all())
    # the flow the bank names is cashed; the one the EC named has no money after all
    assert (states[b.id], states[a.id]) == ("INCASSATA", "RISCOSSA")
