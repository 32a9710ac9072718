"""Test helpers for the operator console: a two-EC scenario in the database and a signed-in HTTP client."""

from __future__ import annotations

import itertools
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlmodel import Session, select

from models import db as models_db
from models.bulk import BulkFile, BulkState
from models.journal import Event
from models.payments import Collection, Receipt, ReceiptSource
from models.positions import Position
from models.reconciliation import MatchSuggestion
from models.reporting import ReportingFlow, ReportingLine
from models.settings import get_settings
from models.treasury import TreasuryMovement
from rules.positions import PendenzaPut, validate_position
from rules.receipts import ReceiptIn, ReceiptTransfer
from rules.remittance import parse_remittance
from store.bulk import register_bulk_file, set_state
from store.payments import accept_receipt
from store.positions import load_caller, load_registry_view, upsert_positions
from store.reconciliation import reconcile_ec
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.live_server import live_server

COMUNE, SCUOLA = "01234567897", "80001234568"
IBANS = {COMUNE: "IT21X0306909606000000123456", SCUOLA: "IT65X0306909606000000654321"}
APPS = {COMUNE: ("A2A-TRIBUTI", "TARI"), SCUOLA: ("A2A-SCUOLA", "MENSA")}
ADMIN = ("admin", "demo-operator-password")
COMUNE_OPERATOR = ("operatore.comune", "demo-comune-password")
SCUOLA_READER = ("lettore.scuola", "demo-lettore-password")
HOSTILE_NAME = '<script>alert("debitore")</script> Rossi & Figli'
HOSTILE_REMITTANCE = '"><img src=x onerror=alert(1)> BONIFICO {{7*7}}'
_seq = itertools.count(1)


@dataclass
class EcData:
    """The objects of one EC the tests refer to."""

    unpaid: Position  # not paid: can be annulled
    paid: Position  # paid, and reported in ``flow``, whose money is ``movement``
    receipt: Receipt
    flow: ReportingFlow
    movement: TreasuryMovement  # a credit with no usable remittance, matching ``flow`` by amount
    suggestion: MatchSuggestion
    event: Event
    bulk: BulkFile


@dataclass
class Scenario:
    """Both ECs' objects."""

    comune: EcData
    scuola: EcData

    def of(self, id_dominio: str) -> EcData:
        """The objects of an EC."""
        return self.comune if id_dominio == COMUNE else self.scuola


def make_position(
    s: Session,
    *,
    id_dominio: str,
    amount: str = "25.00",
    debtor_name: str = "Mario Rossi",
    causale: str | None = None,
) -> Position:
    """A position of an EC of the example registry, created as its application would."""
    n = next(_seq)
    id_a2a, debt_type = APPS[id_dominio]
    body = PendenzaPut.model_validate(
        {
            "idTipoPendenza": debt_type,
            "idDominio": id_dominio,
            "causale": causale or f"Console {n}",
            "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": debtor_name},
            "importo": amount,
            "dataScadenza": (date.today() + timedelta(days=30)).isoformat(),
            "voci": [
                {
                    "idVocePendenza": "V1",
                    "importo": amount,
                    "descrizione": "Quota",
                    "ibanAccredito": IBANS[id_dominio],
                    "tipoContabilita": "CAPITOLO",
                    "codiceContabilita": "1010",
                }
            ],
        }
    )
    caller = load_caller(s, id_a2a=id_a2a)
    assert caller is not None
    data = validate_position(
        body, id_a2a=id_a2a, id_pendenza=f"CONSOLE-{n}", caller=caller, registry=load_registry_view(s)
    )
    (result,) = upsert_positions(s, batch=[data])
    assert result.position is not None, result.error
    return result.position


def pay(s: Session, position: Position, *, receipt_id: str) -> Receipt:
    """Accept a receipt paying the position in full, as the station would."""
    ec = position.id_dominio
    receipt = ReceiptIn(
        receipt_id=receipt_id,
        id_pa=ec,
        fiscal_code=ec,
        notice_number=position.nav or "",
        iuv=position.iuv or "",
        outcome="OK",
        amount=position.amount,
        transfers=(ReceiptTransfer(1, position.amount, ec, IBANS[ec], None, None),),
        psp_id="BCITITMM",
        psp_name="Banca di test",
        payment_at=datetime.now(UTC),
        payload="<paSendRTV2Request/>",
        payload_format="XML",
    )
    accept_receipt(s, receipt=receipt, source=ReceiptSource.PUSH)
    return s.exec(select(Receipt).where(Receipt.id_dominio == ec, Receipt.receipt_id == receipt_id)).one()


def reporting_flow(s: Session, *, position: Position, id_flusso: str) -> ReportingFlow:
    """A reporting flow of the position's EC with one line reporting it (linked to its collection)."""
    row = ReportingFlow(
        id_dominio=position.id_dominio,
        id_flusso=id_flusso,
        id_flusso_lower=id_flusso.lower(),
        psp_id="BCITITMM",
        psp_name="Banca di test",
        settlement_date=date.today(),
        settlement_ref=f"SR{id_flusso[-6:]}",
        total_count=1,
        total_amount=position.amount,
        flow_at=datetime.now(UTC),
        state="ACCETTATA",
    )
    s.add(row)
    s.flush()
    collection = s.exec(
        select(Collection).where(Collection.id_dominio == position.id_dominio, Collection.iuv == position.iuv)
    ).one()
    line = ReportingLine(
        flow_id=row.id or 0,
        line_index=1,
        iuv=position.iuv or "",
        iur=f"IUR{row.id}",
        amount=position.amount,
        pay_date=date.today(),
        position_id=position.id,
        collection_id=collection.id,
        state="LINKED",
    )
    s.add(line)
    s.flush()
    collection.flow_line_id, collection.iur = line.id, line.iur
    s.add(collection)
    return row


def credit(s: Session, *, id_dominio: str, amount: Decimal, remittance: str) -> TreasuryMovement:
    """A credit on the EC's treasury account."""
    n = next(_seq)
    ref = parse_remittance(remittance)
    row = TreasuryMovement(
        id_dominio=id_dominio,
        account=IBANS[id_dominio],
        dedupe_key=f"C{n}",
        amount=amount,
        value_date=date.today(),
        booking_date=date.today(),
        remittance=remittance,
        ordering_party="BANCA DI TEST",
        bank_movement_id=f"B{n}",
        reference_kind=ref.kind,
        reference=ref.reference,
        reference_lower=ref.reference.lower() if ref.reference else None,
    )
    s.add(row)
    s.flush()
    return row


def build_ec(s: Session, *, id_dominio: str, work_dir: Path, debtor_name: str, remittance: str) -> EcData:
    """One EC's objects: an unpaid and a paid position, receipt, flow, loose money with a suggestion,
    a journal event with payloads, a finished bulk file with its outcome file."""
    tag = "C" if id_dominio == COMUNE else "S"
    unpaid = make_position(s, id_dominio=id_dominio, debtor_name=debtor_name)
    paid = make_position(s, id_dominio=id_dominio, amount="40.00")
    receipt = pay(s, paid, receipt_id=f"RCPT-{tag}-{next(_seq)}")
    flow = reporting_flow(
        s, position=paid, id_flusso=f"{date.today().isoformat()}BCITITMM-{tag}{next(_seq):05d}"
    )
    movement = credit(s, id_dominio=id_dominio, amount=paid.amount, remittance=remittance)
    event = Event(
        component="station",
        operation="paVerifyPaymentNotice",
        role="SERVER",
        outcome="OK",
        duration_ms=12,
        id_dominio=id_dominio,
        iuv=unpaid.iuv,
        nav=unpaid.nav,
        request_payload=f"<qrCode><noticeNumber>{unpaid.nav}</noticeNumber></qrCode>",
        response_payload="<outcome>OK</outcome>",
    )
    s.add(event)
    s.flush()
    reconcile_ec(s, id_dominio=id_dominio)
    suggestion = s.exec(select(MatchSuggestion).where(MatchSuggestion.movement_id == movement.id)).one()
    bulk, _ = register_bulk_file(
        s,
        name=f"tracciato-{tag}.csv",
        sha256=f"{tag}" * 64,
        fmt="csv",
        id_a2a=APPS[id_dominio][0],
        id_dominio=id_dominio,
        debt_type=None,
        total_rows=0,
    )
    outcome = work_dir / "bulk" / f"{bulk.id}-tracciato-{tag}.esito.csv"
    outcome.parent.mkdir(parents=True, exist_ok=True)
    outcome.write_text(
        "numeroRiga;idA2A;idPendenza;idDominio;numeroAvviso;esito;descrizione\n", encoding="utf-8"
    )
    notices = outcome.with_name(f"{bulk.id}-tracciato-{tag}.avvisi.zip")
    with zipfile.ZipFile(notices, "w") as archive:
        archive.writestr("LEGGIMI.txt", "nessun avviso")
    bulk = set_state(
        s,
        bulk_file_id=bulk.id or 0,
        state=BulkState.DONE,
        outcome_path=str(outcome),
        notices_path=str(notices),
    )
    return EcData(
        unpaid=unpaid,
        paid=paid,
        receipt=receipt,
        flow=flow,
        movement=movement,
        suggestion=suggestion,
        event=event,
        bulk=bulk,
    )


def build_scenario(db: Database, work_dir: Path) -> Scenario:
    """The example registry and both ECs' objects, committed."""
    with db.session() as s:
        load_example_registry(s)
        comune = build_ec(
            s, id_dominio=COMUNE, work_dir=work_dir, debtor_name=HOSTILE_NAME, remittance=HOSTILE_REMITTANCE
        )
        scuola = build_ec(
            s, id_dominio=SCUOLA, work_dir=work_dir, debtor_name="Anna Bianchi", remittance="ACCREDITO VARIO"
        )
        s.commit()
        for data in (comune, scuola):  # loaded now: reconciliation's bulk updates expired some attributes
            for obj in vars(data).values():
                s.refresh(obj)
    return Scenario(comune=comune, scuola=scuola)


@dataclass
class ConsoleServer:
    """The running web process: its base URL and the console's ASGI app (for its routes)."""

    url: str
    console: Any


@contextmanager
def console_server(db: Database, monkeypatch: pytest.MonkeyPatch, work_dir: Path) -> Iterator[ConsoleServer]:
    """The web process (API and console) on ``db`` with its work dir, over real HTTP."""
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(work_dir))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    from web.app import create_app

    app = create_app()
    console = next(r.app for r in app.routes if getattr(r, "name", None) == "console")
    try:
        with live_server(app) as url:
            yield ConsoleServer(url=url, console=console)
    finally:
        get_settings.cache_clear()
        models_db.get_engine.cache_clear()


def api_routes(app: Any) -> list[APIRoute]:
    """Every APIRoute of an app, looking inside included routers (FastAPI keeps them nested)."""
    out: list[APIRoute] = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out.extend(api_routes(route.original_router))
    return out


_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(response: httpx.Response) -> str:
    """The CSRF token in a console page."""
    match = _TOKEN.search(response.text)
    assert match, "no CSRF token in the page"
    return match.group(1)


def client(base_url: str) -> httpx.Client:
    """An HTTP client of the test server (plain HTTP on loopback: no TLS context to build)."""
    return httpx.Client(base_url=base_url, timeout=30, verify=False)  # noqa: S501


@contextmanager
def login(base_url: str, credentials: tuple[str, str]) -> Iterator[httpx.Client]:
    """A client signed in to the console as ``credentials`` (closed afterwards)."""
    with client(base_url + "/console") as http:
        page = http.get("/login")
        answer = http.post(
            "/login",
            data={"username": credentials[0], "password": credentials[1], "csrf_token": csrf_of(page)},
        )
        assert answer.status_code == 303, answer.text[:500]
        yield http
