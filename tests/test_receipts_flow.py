"""Receipts recovery: the pull mappings, the client's error handling, the receipts flow with the sandbox."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lxml import etree
from sqlmodel import Session, func, select

from connectors.journal import EventJournal
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaNotFoundError, PagopaRetriableError, PagopaSchemaError
from connectors.pagopa.receipts import ReceiptsClient, receipt_from_biz_event, receipt_from_rt_xml
from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, PaymentAttempt, Receipt
from models.positions import Position
from models.reporting import ReportingFlow, ReportingLine
from rules.receipts import receipt_from_xml
from sandbox.psp import ReceiptFacts, build_receipt_request
from sandbox.receipts import BIZ_EVENTS_BASE, GPD_RECEIPTS_BASE, receipt_json
from sandbox.state import PaymentData, PspConfig, StationConfig
from sandbox.state import Receipt as SandboxReceipt
from sandbox.state import ReceiptTransfer as SandboxTransfer
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_payments import COMUNE, IBAN, renumber, scenario_notice
from tests.platform_env import STATION_KEY, PlatformEnv, platform_and_sandbox
from tests.test_station import make_position
from web import soap

PROVINCIA = "00987654324"
PAID_AT = datetime(2026, 7, 1, 9, 30, 5, tzinfo=UTC)


# --- pure mappings --------------------------------------------------------------------------------


def _sandbox_receipt() -> SandboxReceipt:
    transfers = [
        SandboxTransfer(
            id_transfer=1,
            amount=Decimal("20.00"),
            fiscal_code_pa=COMUNE,
            iban=IBAN,
            remittance_information="/RFB/01000000000000144/20.00/TXT/TARI",
            transfer_category="9/0101108TS/",
        ),
        SandboxTransfer(
            id_transfer=2,
            amount=Decimal("5.50"),
            fiscal_code_pa=PROVINCIA,
            iban="IT58X0103014200000000111222",
            remittance_information="/RFB/01000000000000144/5.50",
            transfer_category="9/0101108TS/",
        ),
    ]
    debtor = {"type": "F", "fiscalCode": "RSSMRA80A01H501U", "fullName": "Mario Rossi"}
    data = PaymentData(
        ec_fiscal_code=COMUNE,
        nav="301000000000000144",
        iuv="01000000000000144",
        amount=Decimal("25.50"),
        description="TARI 2026",
        company_name="Comune di Esempio",
        debtor=debtor,
        transfers=transfers,
    )
    psp = PspConfig(psp_id="BCITITMM", name="Banca Sandbox", bic="BCITITMM", channel="BCITITMM_01")
    facts = ReceiptFacts(
        receipt_id="a1b2c3d4e5f6",
        psp=psp,
        channel="BCITITMM_01",
        paid_at=PAID_AT,
        pay_date=date(2026, 7, 1),
        standin=True,
        fee=Decimal("1.20"),
    )
    station = StationConfig(id_station="77777777777_01", id_broker="77777777777", password="x")
    xml = etree.tostring(
        build_receipt_request(
            data=data, facts=facts, to_fiscal_code=COMUNE, station=station, version=2, fallback_iban=None
        ),
        encoding="UTF-8",
    )
    return SandboxReceipt(
        receipt_id="a1b2c3d4e5f6",
        ec_fiscal_code=COMUNE,
        iuv=data.iuv,
        nav=data.nav,
        iur="IUR0001",
        amount=data.amount,
        transfers=transfers,
        xml=xml,
        version=2,
        standin=True,
        psp_id="BCITITMM",
        channel="BCITITMM_01",
        payment_date_time=PAID_AT,
        description=data.description,
        company_name=data.company_name,
        debtor=debtor,
        fee=Decimal("1.20"),
        pay_date=date(2026, 7, 1),
    )


def _comparable(receipt: Any) -> Any:
    return dataclasses.replace(
        receipt,
        payload=None,
        payload_format=None,
        application_date=None,
        transfer_date=None,
        psp_name=None,
        payment_note=None,
    )


def test_pulled_receipts_map_like_the_pushed_one() -> None:
    sandbox = _sandbox_receipt()
    pushed = receipt_from_xml(etree.fromstring(sandbox.xml), id_pa=PROVINCIA, raw=sandbox.xml)
    from_gpd = receipt_from_rt_xml(sandbox.xml, id_pa=PROVINCIA)
    body = json.loads(json.dumps(receipt_json(sandbox, psp_name="Banca Sandbox")), parse_float=Decimal)
    from_biz = receipt_from_biz_event(body, id_pa=PROVINCIA)
    assert _comparable(from_gpd) == _comparable(pushed)
    assert _comparable(from_biz) == _comparable(pushed)
    # what the receipt says, read from JSON numbers without binary floats
    assert from_biz.amount == Decimal("25.50") and from_biz.fee == Decimal("1.20")
    assert [(t.id_transfer, t.amount, t.fiscal_code) for t in from_biz.transfers] == [
        (1, Decimal("20.00"), COMUNE),
        (2, Decimal("5.50"), PROVINCIA),
    ]
    assert from_biz.own_transfers() == (
        from_biz.transfers[1],
    )  # addressed to the Provincia: its transfer only
    assert from_biz.payment_at == PAID_AT and from_biz.standin is True
    assert from_biz.application_date == date(2026, 7, 1)
    assert (from_biz.payload_format, from_gpd.payload_format) == ("JSON", "XML")
    assert from_biz.problems() == [] and from_gpd.problems() == []


def test_biz_event_mapping_edges() -> None:
    body: dict[str, Any] = {
        "receiptId": "tok-1",
        "noticeNumber": "301000000000000144",
        "fiscalCode": COMUNE,
        "outcome": "OK",
        "creditorReferenceId": "01000000000000144",
        "paymentAmount": 16,
        "description": "Bollo",
        "companyName": "Comune",
        "idPSP": "P",
        "pspCompanyName": "PSP",
        "idChannel": "C",
        "debtor": {
            "entityUniqueIdentifierType": "F",
            "entityUniqueIdentifierValue": "ANONIMO",
            "fullName": "X",
        },
        "transferList": [
            {
                "transferAmount": 16,
                "fiscalCodePA": COMUNE,
                "iban": "",
                "mbdAttachment": "PGE+",
                "remittanceInformation": "bollo",
                "transferCategory": "9/0101108TS/",
            }
        ],
        # no offset: Italian local time (summer: UTC+2)
        "paymentDateTime": "2026-07-01T12:00:00",
    }
    receipt = receipt_from_biz_event(body, id_pa=COMUNE)
    assert receipt.amount == Decimal("16.00") and receipt.payment_at == datetime(2026, 7, 1, 10, tzinfo=UTC)
    (transfer,) = receipt.transfers
    assert (transfer.id_transfer, transfer.iban, transfer.stamp) == (1, None, True)
    assert receipt.standin is False and receipt.payer_id is None
    with pytest.raises(ValueError, match="CtReceiptModelResponse"):
        receipt_from_biz_event({k: v for k, v in body.items() if k != "transferList"}, id_pa=COMUNE)
    with pytest.raises(ValueError, match="paSendRTV2Request"):
        receipt_from_rt_xml(b"<paVerifyPaymentNoticeReq/>", id_pa=COMUNE)


# --- the client over an injected transport --------------------------------------------------------


class _Script:
    """A stateful fake of both receipt APIs: answers in order, records the requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)


def _client(script: _Script, db: Database, waits: list[float]) -> ReceiptsClient:
    from pydantic import SecretStr

    return ReceiptsClient(
        bizevents_url="http://pagopa.test" + BIZ_EVENTS_BASE,
        gpd_receipts_url="http://pagopa.test" + GPD_RECEIPTS_BASE,
        subscription_key=SecretStr("sub-key"),
        transport=httpx.MockTransport(script),
        journal=EventJournal(session_factory=lambda: Session(db.engine)),
        attempts=3,
        backoff=0.5,
        max_retry_after=10,
        sleep=waits.append,
    )


def test_client_honours_retry_after_stops_on_404_and_checks_the_schema(sqlite_db: Database) -> None:
    sandbox = _sandbox_receipt()
    xml = httpx.Response(200, content=sandbox.xml, headers={"Content-Type": "application/xml"})
    script = _Script(
        httpx.Response(429, headers={"Retry-After": "3"}, json={"title": "Too many"}),
        httpx.Response(503),
        xml,
        httpx.Response(404, json={"title": "Not Found", "status": 404}),
        httpx.Response(
            200,
            content=b"<pafn:paSendRTV2Request xmlns:pafn="
            b"'http://pagopa-api.pagopa.gov.it/pa/paForNode.xsd'/>",
        ),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(504),
    )
    waits: list[float] = []
    with _client(script, sqlite_db, waits) as client:
        receipt = client.get_gpd_receipt(fiscal_code=COMUNE, iuv=sandbox.iuv)
        assert receipt.receipt_id == sandbox.receipt_id and waits == [3.0, 1.0]  # Retry-After, then backoff
        with pytest.raises(PagopaNotFoundError):
            client.get_biz_event_receipt(fiscal_code=COMUNE, iur="IUR0001", iuv=sandbox.iuv)
        assert len(script.requests) == 4  # a 404 is not retried
        with pytest.raises(PagopaSchemaError, match="paForNode.xsd"):
            client.get_gpd_receipt(fiscal_code=COMUNE, iuv=sandbox.iuv)
        with pytest.raises(PagopaRetriableError):
            client.get_gpd_receipt(fiscal_code=COMUNE, iuv=sandbox.iuv)
    assert script.requests[0].url.path == f"{GPD_RECEIPTS_BASE}/payments/{COMUNE}/receipts/{sandbox.iuv}"
    assert script.requests[3].url.path == (
        f"{BIZ_EVENTS_BASE}/organizations/{COMUNE}/receipts/IUR0001/paymentoptions/{sandbox.iuv}"
    )
    assert all(r.headers["Ocp-Apim-Subscription-Key"] == "sub-key" for r in script.requests)
    with Session(sqlite_db.engine) as s:
        events = s.exec(select(Event).where(Event.component == "receipts").order_by(Event.id)).all()
    assert [(e.http_status, e.outcome) for e in events] == [
        (429, "FAIL"),
        (503, "FAIL"),
        (200, "OK"),
        (404, "KO"),
        (200, "KO"),
        (500, "FAIL"),
        (502, "FAIL"),
        (504, "FAIL"),
    ]
    assert events[2].receipt_id == sandbox.receipt_id and events[3].keys["iur"] == "IUR0001"


# --- the flow against the platform and the sandbox ------------------------------------------------


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformEnv]:
    with db.session() as s:
        load_example_registry(s)
    with platform_and_sandbox(db, monkeypatch) as platform:
        monkeypatch.setenv("PAGOFLOW_PAGOPA_BIZEVENTS_URL", platform.sandbox_url + BIZ_EVENTS_BASE)
        monkeypatch.setenv("PAGOFLOW_PAGOPA_GPD_RECEIPTS_URL", platform.sandbox_url + GPD_RECEIPTS_BASE)
        monkeypatch.setenv("PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS", "0")
        monkeypatch.setenv("PAGOFLOW_PAGOPA_MAX_RETRY_AFTER_SECONDS", "0.05")
        get_endpoints.cache_clear()
        yield platform
        get_endpoints.cache_clear()


def _asked(env: PlatformEnv, operation: str) -> list[dict[str, Any]]:
    exchanges = httpx.get(f"{env.sandbox_url}/sandbox/exchanges", params={"operation": operation}).json()
    return [e for e in exchanges if e["direction"] == "in"]


def _undelivered_payment(
    env: PlatformEnv, db: Database, name: str, serial: int
) -> tuple[Position, dict[str, Any]]:
    """A notice paid at pagoPA whose receipt never reaches the station (sandbox scenario 04)."""
    iuv, nav = scenario_notice("04", serial)
    position = renumber(db, make_position(db, name), iuv=iuv, nav=nav)
    answer = env.pay(nav, COMUNE)
    assert answer["outcome"] == "OK" and answer["delivery"] == {COMUNE: "pending"}, answer
    return position, answer


@pytest.mark.prefect
def test_undelivered_receipt_is_recovered_once_after_the_attempt_expires(
    env: PlatformEnv, db: Database, prefect_harness: None
) -> None:
    from flows.receipts import receipts

    position, answer = _undelivered_payment(env, db, "LOST-RT", 1)
    with db.session() as s:
        (attempt,) = s.exec(select(PaymentAttempt).where(PaymentAttempt.position_id == position.id)).all()
        assert attempt.state == "PENDING" and s.get(Position, position.id).state == "NON_ESEGUITA"  # type: ignore[union-attr]
    started = attempt.requested_at

    early = receipts(now=started + timedelta(minutes=29))
    assert (early["expired"], early["asked"]) == (0, 0)

    # pagoPA is busy once: the client waits (Retry-After, capped in tests) and asks again
    httpx.put(
        f"{env.sandbox_url}/sandbox/faults",
        json={
            "rules": [
                {"path": GPD_RECEIPTS_BASE, "errorRate": 1, "error": "http_429", "retryAfter": 1, "times": 1}
            ]
        },
    ).raise_for_status()
    late = receipts(now=started + timedelta(minutes=31))
    assert late["expired"] == 1 and late["by_status"] == {"RECOVERED": 1}, late
    with db.session() as s:
        stored = s.get(Position, position.id)
        assert stored is not None and stored.state == "ESEGUITA"
        (receipt,) = s.exec(select(Receipt).where(Receipt.iuv == position.iuv)).all()
        assert (receipt.receipt_id, receipt.source, receipt.state) == (
            answer["receiptId"],
            "PULL",
            "ACCEPTED",
        )
        assert receipt.payload_format == "XML" and receipt.amount == Decimal("25.00")
        assert (
            s.exec(
                select(func.count()).select_from(Collection).where(Collection.receipt_pk == receipt.id)
            ).one()
            == 1
        )
        (note,) = s.exec(select(Notification).where(Notification.receipt_pk == receipt.id)).all()
        assert (note.state, note.id_a2a) == ("PENDING", "A2A-TRIBUTI")
        attempt = s.get(PaymentAttempt, attempt.id)
        assert attempt is not None and (attempt.state, attempt.recovery_attempts) == ("COMPLETED", 1)
        calls = s.exec(
            select(Event).where(Event.component == "receipts", Event.iuv == position.iuv).order_by(Event.id)
        ).all()
        assert [(e.operation, e.http_status, e.outcome) for e in calls] == [
            ("getReceiptByIUV", 429, "FAIL"),
            ("getReceiptByIUV", 200, "OK"),
        ]

    again = receipts(now=started + timedelta(hours=2))
    assert again["asked"] == 0
    # the Node finally delivers the same receipt: accepted as already known, nothing changes twice
    sent = env.sandbox.state.receipts[answer["receiptId"]].xml
    pushed = httpx.post(
        env.station_url,
        content=soap.envelope(etree.fromstring(sent)),
        timeout=30,
        headers={"SOAPAction": "paSendRTV2", "Ocp-Apim-Subscription-Key": STATION_KEY},
    )
    assert soap.text(soap.body_payload(pushed.content), "outcome") == "OK"
    with db.session() as s:
        assert s.exec(select(func.count()).select_from(Receipt).where(Receipt.iuv == position.iuv)).one() == 1
        assert (
            s.exec(
                select(func.count()).select_from(Notification).where(Notification.iuv == position.iuv)
            ).one()
            == 1
        )
        assert s.get(Position, position.id).state == "ESEGUITA"  # type: ignore[union-attr]


@pytest.mark.prefect
def test_reporting_lines_are_recovered_and_linked_and_a_404_stops_the_asking(
    env: PlatformEnv, db: Database, prefect_harness: None
) -> None:
    from flows.receipts import receipts

    reported, answer = _undelivered_payment(env, db, "FR-LINE", 2)
    ghost = make_position(db, "FR-GHOST")  # reported by a PSP, never paid at pagoPA
    abandoned_iuv, abandoned_nav = scenario_notice("05", 3)  # verified and activated, then the token expired
    abandoned = renumber(db, make_position(db, "ABANDONED"), iuv=abandoned_iuv, nav=abandoned_nav)
    assert env.pay(abandoned_nav, COMUNE)["faultCode"] == "PPT_TOKEN_SCADUTO"
    with db.session() as s:
        flow = ReportingFlow(
            id_dominio=COMUNE,
            id_flusso="2026-07-02BCITITMM-S0001",
            id_flusso_lower="2026-07-02bcititmm-s0001",
            psp_id="BCITITMM",
            total_count=2,
            total_amount=Decimal("50.00"),
        )
        s.add(flow)
        s.flush()
        s.add_all(
            [
                ReportingLine(
                    flow_id=flow.id or 0,
                    line_index=1,
                    iuv=reported.iuv or "",
                    iur=answer["iur"],
                    amount=Decimal("25.00"),
                    state="NO_RECEIPT",
                    position_id=reported.id,
                ),
                ReportingLine(
                    flow_id=flow.id or 0,
                    line_index=2,
                    iuv=ghost.iuv or "",
                    iur="GHOSTIUR",
                    amount=Decimal("25.00"),
                    state="NO_RECEIPT",
                    position_id=ghost.id,
                ),
            ]
        )
        s.commit()
        expires = s.exec(
            select(PaymentAttempt.expires_at).where(PaymentAttempt.position_id == abandoned.id)
        ).one()
    now = (expires or datetime.now(UTC)) + timedelta(minutes=1)

    first = receipts(now=now)
    statuses = {(r["kind"], r["iuv"]): r["status"] for r in first["results"]}
    assert statuses == {
        ("LINE", reported.iuv): "RECOVERED",
        ("LINE", ghost.iuv): "NOT_FOUND",
        ("ATTEMPT", abandoned.iuv): "NOT_FOUND",
    }, first
    with db.session() as s:
        lines = {ln.line_index: ln for ln in s.exec(select(ReportingLine)).all()}
        assert (lines[1].state, lines[2].state) == ("LINKED", "NO_RECEIPT")
        collection = s.get(Collection, lines[1].collection_id)
        assert collection is not None and (collection.iur, collection.flow_line_id) == (
            answer["iur"],
            lines[1].id,
        )
        assert s.get(Position, reported.id).state == "ESEGUITA"  # type: ignore[union-attr]
        (attempt,) = s.exec(select(PaymentAttempt).where(PaymentAttempt.position_id == abandoned.id)).all()
        assert (attempt.state, attempt.recovery_attempts, attempt.next_recovery_at) == ("EXPIRED", 1, None)
        assert "not found" in (attempt.last_error or "")
    # the line was found through Biz-Events by its IUR; the ghost asked Biz-Events, then GPD, once each
    assert len(_asked(env, "getOrganizationReceiptIuvIur")) == 2
    by_iuv_before = len(_asked(env, "getReceiptByIUV"))
    assert by_iuv_before == 2  # the ghost line and the abandoned attempt

    second = receipts(now=now + timedelta(days=1))
    # the abandoned attempt is never asked again; the ghost line (no recovery columns yet) once per run
    assert [(r["kind"], r["iuv"]) for r in second["results"]] == [("LINE", ghost.iuv)]
    assert len(_asked(env, "getReceiptByIUV")) == by_iuv_before + 1
