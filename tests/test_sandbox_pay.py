"""Contract tests of the sandbox's paying PSP against a real paForNode station on loopback.

Round trip with every message validated, station faults mapped to PPT codes, Stand-In, retries, double
payment, token expiry, GPD-hosted creditors, receipts pull, scenario notice numbers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox_station import StationTransfer, TestStation

from rules.xmlsafe import parse_xml
from sandbox import soap
from sandbox.openapi import BIZ_EVENTS_SPEC, GPD_SPEC, schema_errors
from sandbox.psp import DEFAULT_PSP, ReceiptFacts, build_receipt_request
from sandbox.server import RunningSandbox, start_in_thread
from sandbox.state import PaymentData, ReceiptTransfer, SandboxState, StationConfig

EC = "77777777777"
EC2 = "01234567890"
STATION = f"{EC}_01"
KEY = "pay-key"
H = {"Ocp-Apim-Subscription-Key": KEY}
IBAN = "IT60X0542811101000000123456"
GPD = f"/gpd/debt-positions-service/v1/organizations/{EC}/debtpositions"
NAV = "301000000000000144"
IUV = "01000000000000144"


@pytest.fixture(scope="module")
def station() -> Iterator[TestStation]:
    running = TestStation(fiscal_codes=(EC, EC2)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    running = start_in_thread(state=SandboxState(seed=5))
    try:
        yield running
    finally:
        running.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/paForNode"


def configure(
    client: httpx.Client, *, url: str | None, version: int = 2, gpd_hosted: bool = False, **node: Any
) -> None:
    client.put(
        "/sandbox/config",
        json={
            "replace": True,
            "stations": [
                {
                    "idStation": STATION,
                    "idBroker": EC,
                    "password": "password01",
                    "url": url,
                    "version": version,
                }
            ],
            "creditors": [
                {
                    "fiscalCode": EC,
                    "name": "Comune di Sandbox",
                    "idStation": STATION,
                    "iban": IBAN,
                    "gpdHosted": gpd_hosted,
                },
                {
                    "fiscalCode": EC2,
                    "name": "Provincia di Sandbox",
                    "idStation": STATION,
                    "iban": "IT02A0306909606100000000002",
                },
            ],
            "psps": [
                {"pspId": "BCITITMM", "name": "Banca Sandbox", "bic": "BCITITMM", "channel": "BCITITMM_01"}
            ],
            "subscriptionKeys": [KEY],
            "node": {
                "verifyTimeout": 0.3,
                "getPaymentTimeout": 0.3,
                "sendRtTimeout": 0.3,
                "sendRtAttempts": 2,
                "sendRtBackoff": 0.01,
                **node,
            },
        },
    ).raise_for_status()


@pytest.fixture
def client(sandbox: RunningSandbox, station: TestStation) -> Iterator[httpx.Client]:
    with station.lock:
        station.notices.clear()
        station.behaviour.clear()
        station.received.clear()
        station.request_errors.clear()
        station.answer_errors.clear()
    with httpx.Client(base_url=sandbox.url, timeout=20) as c:
        c.post("/sandbox/reset").raise_for_status()
        configure(c, url=station.url)
        yield c
    assert station.request_errors == [], "the sandbox sent the station an XSD-invalid message"
    assert station.answer_errors == [], "the test station answered XSD-invalid XML unasked"


def pay(client: httpx.Client, nav: str = NAV, **extra: Any) -> dict[str, Any]:
    response = client.post("/sandbox/pay", json={"noticeNumber": nav, "fiscalCode": EC, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def assert_exchanges_valid(client: httpx.Client) -> int:
    """Every SOAP message the sandbox sent or received from stations validates against paForNode.xsd."""
    checked = 0
    for exchange in client.get("/sandbox/exchanges", params={"direction": "out"}).json():
        for raw in (exchange["request"], exchange["response"]):
            payload = soap.parse_envelope(raw.encode())
            assert soap.schema_errors(payload, soap.PA_FOR_NODE_XSD) == [], exchange["operation"]
            checked += 1
    return checked


def iso_in(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


def gpd_position(iupd: str, iuv: str, amount: int, *, partial: bool = False, **extra: Any) -> dict[str, Any]:
    option = {
        "iuv": iuv,
        "amount": amount,
        "description": "Rata",
        "isPartialPayment": partial,
        "dueDate": iso_in(10),
        "paymentOptionMetadata": [],
        "transfer": [
            {
                "idTransfer": "1",
                "amount": amount,
                "remittanceInformation": "rata",
                "category": "9/0101108TS/",
                "iban": IBAN,
                "transferMetadata": [],
            }
        ],
    }
    body = {
        "iupd": iupd,
        "type": "F",
        "fiscalCode": "RSSMRA80A01H501U",
        "fullName": "Mario Rossi",
        "companyName": "Comune di Sandbox",
        "switchToExpired": False,
        "paymentOption": [option],
    }
    body.update(extra)
    return body


# --- round trip -------------------------------------------------------------------------------------


def test_pay_round_trip_every_message_valid(
    client: httpx.Client, sandbox: RunningSandbox, station: TestStation
) -> None:
    station.add_notice(
        nav=NAV,
        amount="30.00",
        transfers=[
            StationTransfer(amount=Decimal("20.00")),
            StationTransfer(amount=Decimal("10.00"), fiscal_code_pa=EC2, iban="IT02A0306909606100000000002"),
        ],
    )
    answer = pay(client)
    assert answer["outcome"] == "OK" and answer["mode"] == "station"
    assert answer["delivery"] == {EC: "delivered", EC2: "delivered"}
    assert station.received_operations() == [
        "paVerifyPaymentNotice",
        "paGetPaymentV2",
        "paSendRTV2",
        "paSendRTV2",
    ]
    assert assert_exchanges_valid(client) == 8

    sent = [raw for op, raw in station.received if op == "paSendRTV2"]
    receipts = [soap.parse_envelope(raw) for raw in sent]
    assert {soap.text(r, "idPA") for r in receipts} == {EC, EC2}
    receipt = receipts[0]
    assert soap.text(receipt, "receipt", "receiptId") == answer["receiptId"]
    assert soap.text(receipt, "receipt", "paymentAmount") == "30.00"
    assert soap.text(receipt, "receipt", "creditorReferenceId") == IUV
    assert soap.text(receipt, "receipt", "standIn") == "false"

    ledger = sandbox.state.transfers
    assert [(t.ec_fiscal_code, t.transfer_index, t.amount, t.outcome) for t in ledger] == [
        (EC, 1, Decimal("20.00"), 0),
        (EC2, 2, Decimal("10.00"), 0),
    ]
    assert {t.iur for t in ledger} == {answer["iur"]} and answer["iur"] != answer["receiptId"]
    assert all(t.receipt_id == answer["receiptId"] and t.psp_id == "BCITITMM" for t in ledger)


def test_pay_version_1_station(client: httpx.Client, station: TestStation) -> None:
    configure(client, url=station.url, version=1)
    station.add_notice(nav=NAV, amount="15.00")
    answer = pay(client)
    assert answer["outcome"] == "OK" and answer["version"] == 1
    assert station.received_operations() == ["paVerifyPaymentNotice", "paGetPayment", "paSendRT"]
    assert assert_exchanges_valid(client) == 6


def test_pay_stamp_transfer_becomes_mbd_attachment(client: httpx.Client, station: TestStation) -> None:
    station.add_notice(
        nav=NAV, amount="16.00", transfers=[StationTransfer(amount=Decimal("16.00"), stamp=True)]
    )
    assert pay(client)["outcome"] == "OK"
    receipt = soap.parse_envelope(station.received[-1][1])
    transfer = soap.child(soap.child(soap.child(receipt, "receipt"), "transferList"), "transfer")
    assert soap.child(transfer, "MBDAttachment") is not None and soap.child(transfer, "IBAN") is None


# --- station faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation,stage", [("paVerifyPaymentNotice", "verify"), ("paGetPaymentV2", "activate")]
)
def test_station_paa_fault_passes_through(
    client: httpx.Client, station: TestStation, operation: str, stage: str
) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    station.fail(operation, fault="PAA_PAGAMENTO_SCADUTO", times=1)
    answer = pay(client)
    assert answer["outcome"] == "KO" and answer["stage"] == stage
    assert answer["faultCode"] == "PPT_ERRORE_EMESSO_DA_PAA"
    assert answer["originalFaultCode"] == "PAA_PAGAMENTO_SCADUTO" and answer["id"] == EC
    assert "receiptId" not in answer
    unknown = pay(client, "301000000000000241")
    assert unknown["originalFaultCode"] == "PAA_PAGAMENTO_SCONOSCIUTO"


@pytest.mark.parametrize("behaviour", [{"invalid": True}, {"malformed": True}, {"http_status": 500}])
def test_station_bad_answer_is_errore_response(
    client: httpx.Client, station: TestStation, behaviour: dict[str, Any]
) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    station.fail("paGetPaymentV2", **behaviour)
    answer = pay(client)
    assert answer["outcome"] == "KO" and answer["stage"] == "activate"
    assert answer["faultCode"] == "PPT_STAZIONE_INT_PA_ERRORE_RESPONSE"
    assert client.get("/sandbox/state").json()["receipts"]["total"] == 0


def test_station_timeout(client: httpx.Client, station: TestStation) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    station.fail("paVerifyPaymentNotice", delay=1.0, times=1)
    started = time.perf_counter()
    answer = pay(client)
    assert answer["faultCode"] == "PPT_STAZIONE_INT_PA_TIMEOUT"
    assert time.perf_counter() - started < 0.9


def test_station_unreachable(client: httpx.Client) -> None:
    configure(client, url=closed_port_url())
    answer = pay(client)
    assert answer["outcome"] == "KO" and answer["faultCode"] == "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE"
    assert client.get("/sandbox/exchanges", params={"direction": "out"}).json()[0]["status"] == "unreachable"


def test_unknown_creditor(client: httpx.Client) -> None:
    answer = client.post("/sandbox/pay", json={"noticeNumber": NAV, "fiscalCode": "99999999999"}).json()
    assert answer["faultCode"] == "PPT_DOMINIO_SCONOSCIUTO"
    assert client.post("/sandbox/pay", json={"noticeNumber": "12", "fiscalCode": EC}).status_code == 400


# --- Stand-In and receipt delivery ---------------------------------------------------------------------


def test_standin_when_station_down_then_retry_receipts(
    client: httpx.Client, sandbox: RunningSandbox, station: TestStation
) -> None:
    aca = {
        "paFiscalCode": EC,
        "entityType": "F",
        "entityFiscalCode": "RSSMRA80A01H501U",
        "entityFullName": "Mario Rossi",
        "iuv": IUV,
        "amount": 4200,
        "description": "Multa",
        "expirationDate": iso_in(5),
        "iban": IBAN,
    }
    assert client.post("/aca/v1/paCreatePosition", json=aca, headers=H).status_code == 200
    configure(client, url=closed_port_url())
    answer = pay(client)
    assert answer["outcome"] == "OK" and answer["mode"] == "standin" and answer["standIn"] is True
    assert answer["delivery"] == {EC: "pending"}
    assert [t.outcome for t in sandbox.state.transfers] == [4]
    assert client.get(f"{GPD}/ACA_{EC}_{IUV}", headers=H).json()["status"] == "PAID"
    xml = client.get(f"/gpd/payments-receipts-service/v1/payments/{EC}/receipts/{IUV}", headers=H)
    assert soap.text(parse_xml(xml.content), "receipt", "standIn") == "true"

    configure(client, url=station.url)
    station.add_notice(nav=NAV, amount="42.00")
    retried = client.post("/sandbox/retry-receipts").json()
    assert retried == {"retried": 1, "delivered": 1}
    assert station.received_operations() == ["paSendRTV2"]
    assert soap.text(soap.parse_envelope(station.received[0][1]), "receipt", "standIn") == "true"
    assert client.post("/sandbox/retry-receipts").json() == {"retried": 0}


def test_no_standin_without_a_copy(client: httpx.Client) -> None:
    configure(client, url=closed_port_url())
    assert pay(client)["faultCode"] == "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE"


def test_send_rt_is_retried(client: httpx.Client, station: TestStation) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    station.fail("paSendRTV2", http_status=503, times=1)
    answer = pay(client)
    assert answer["outcome"] == "OK" and answer["delivery"] == {EC: "delivered"}
    assert station.received_operations().count("paSendRTV2") == 2


def test_receipt_sent_after_the_answer(client: httpx.Client, station: TestStation) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    station.fail("paSendRTV2", delay=0.2, times=1)
    answer = pay(client, waitDelivery=False)
    assert answer["outcome"] == "OK" and answer["delivery"] == {EC: "sending"}
    assert client.post("/sandbox/retry-receipts").json() == {"retried": 0}  # in flight: left alone
    deadline = time.monotonic() + 5
    while client.get("/sandbox/state").json()["receipts"]["deliveries"] != {"delivered": 1}:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- double payment, expiry, batch, GPD-hosted -----------------------------------------------------------


def test_double_payment(client: httpx.Client, sandbox: RunningSandbox, station: TestStation) -> None:
    station.add_notice(nav=NAV, amount="10.00")
    answer = pay(client, times=2)
    assert answer["outcome"] == "OK" and len(answer["payments"]) == 2
    first, second = answer["payments"]
    assert first["delivery"] == {EC: "delivered"}
    assert second["delivery"] == {EC: "rejected"} and second["deliveryFaults"] == {
        EC: "PAA_RECEIPT_DUPLICATA"
    }
    assert first["iur"] != second["iur"] and first["receiptId"] != second["receiptId"]
    assert len(sandbox.state.transfers) == 2

    forced = pay(client, force=True)
    assert forced["outcome"] == "OK" and forced["mode"] == "forced"
    assert len({t.iur for t in sandbox.state.transfers}) == 3
    assert station.received_operations().count("paGetPaymentV2") == 2  # forced: no new activation


def test_token_expiry(client: httpx.Client, station: TestStation) -> None:
    configure(client, url=station.url, tokenExpirySeconds=0.1)
    station.add_notice(nav=NAV, amount="10.00")
    answer = pay(client, outcomeDelay=0.3)
    assert answer["outcome"] == "KO" and answer["faultCode"] == "PPT_TOKEN_SCADUTO"
    assert "paSendRTV2" not in station.received_operations()
    assert client.get("/sandbox/state").json()["receipts"]["total"] == 0


def test_pay_batch(client: httpx.Client, station: TestStation) -> None:
    navs = [f"30100000000000{n:04d}" for n in range(1, 21)]
    for nav in navs:
        station.add_notice(nav=nav, amount="5.00")
    result = client.post(
        "/sandbox/pay-batch",
        json={"concurrency": 8, "payments": [{"noticeNumber": nav, "fiscalCode": EC} for nav in navs]},
    ).json()
    assert result["total"] == 20 and result["ok"] == 20
    assert len({r["iur"] for r in result["results"]}) == 20


def test_gpd_hosted_pays_without_the_station(client: httpx.Client, station: TestStation) -> None:
    configure(client, url=station.url, gpd_hosted=True)
    station.add_notice(nav=NAV, amount="10.00")  # so the pushed receipt finds the notice
    plan = gpd_position("PLAN-1", IUV, 1000, partial=True)
    plan["paymentOption"].append({**plan["paymentOption"][0], "iuv": "01000000000000241"})
    assert client.post(f"{GPD}?toPublish=true", json=plan, headers=H).status_code == 201
    answer = pay(client)
    assert answer["outcome"] == "OK" and answer["mode"] == "gpd"
    assert station.received_operations() == ["paSendRTV2"]
    body = client.get(f"{GPD}/PLAN-1", headers=H).json()
    assert body["status"] == "PARTIALLY_PAID"
    assert schema_errors(GPD_SPEC, "PaymentPositionModelBaseResponse", body) == []
    assert body["paymentOption"][0]["status"] == "PO_PAID"
    assert body["paymentOption"][0]["idReceipt"] == answer["receiptId"]
    again = pay(client)
    assert again["outcome"] == "KO" and again["originalFaultCode"] == "PAA_PAGAMENTO_DUPLICATO"
    assert pay(client, "301000000000000241")["outcome"] == "OK"
    assert client.get(f"{GPD}/PLAN-1", headers=H).json()["status"] == "PAID"
    assert client.delete(f"{GPD}/PLAN-1", headers=H).status_code == 409


def test_settlement_moves_the_gpd_copy_to_reported(client: httpx.Client, station: TestStation) -> None:
    configure(client, url=station.url, gpd_hosted=True)
    station.add_notice(nav=NAV, amount="10.00")
    assert client.post(f"{GPD}?toPublish=true", json=gpd_position("REP-1", IUV, 1000), headers=H).status_code == 201
    assert pay(client)["outcome"] == "OK"
    assert client.get(f"{GPD}/REP-1", headers=H).json()["status"] == "PAID"
    settled = client.post("/sandbox/settle", json={"date": date.today().isoformat()}).json()
    assert len(settled["flows"]) == 1
    body = client.get(f"{GPD}/REP-1", headers=H).json()
    assert body["status"] == "REPORTED" and body["paymentOption"][0]["status"] == "PO_REPORTED"


# --- receipts pull ------------------------------------------------------------------------------------


def test_receipts_pull(client: httpx.Client, station: TestStation) -> None:
    station.add_notice(nav=NAV, amount="12.34")
    answer = pay(client)
    base = f"/bizevents/service/v1/organizations/{EC}/receipts"
    for key in (answer["iur"], answer["receiptId"]):
        got = client.get(f"{base}/{key}/paymentoptions/{IUV}", headers=H)
        assert got.status_code == 200
        assert schema_errors(BIZ_EVENTS_SPEC, "CtReceiptModelResponse", got.json()) == []
        assert got.json()["receiptId"] == answer["receiptId"] and got.json()["paymentAmount"] == 12.34
    assert (
        client.get(f"{base}/{answer['iur']}/paymentoptions/01000000000000241", headers=H).status_code == 404
    )
    assert client.get(f"{base}/{answer['iur']}", headers=H).status_code == 200

    xml = client.get(f"/gpd/payments-receipts-service/v1/payments/{EC}/receipts/{IUV}", headers=H)
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    root = parse_xml(xml.content)
    assert soap.schema_errors(root, soap.PA_FOR_NODE_XSD) == []
    assert soap.text(root, "receipt", "receiptId") == answer["receiptId"]
    listing = client.get(f"/gpd/payments-receipts-service/v1/payments/{EC}/receipts", headers=H).json()
    assert listing["length"] == 1 and listing["results"][0]["iuv"] == IUV


# --- scenario notice numbers ---------------------------------------------------------------------------


def test_scenario_notice_numbers(client: httpx.Client, station: TestStation) -> None:
    unreachable = pay(client, "399010000000000123")
    assert unreachable["faultCode"] == "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE"
    assert pay(client, "399020000000000123")["faultCode"] == "PPT_STAZIONE_INT_PA_TIMEOUT"
    assert pay(client, "399030000000000123")["originalFaultCode"] == "PAA_PAGAMENTO_SCONOSCIUTO"
    assert station.received_operations() == []
    station.add_notice(nav="399040000000000123", amount="1.00")
    undeliverable = pay(client, "399040000000000123")
    assert undeliverable["outcome"] == "OK" and undeliverable["delivery"] == {EC: "pending"}
    station.add_notice(nav="399050000000000123", amount="1.00")
    assert pay(client, "399050000000000123")["faultCode"] == "PPT_TOKEN_SCADUTO"
    station.add_notice(nav="399060000000000123", amount="1.00")
    assert len(pay(client, "399060000000000123")["payments"]) == 2


# --- what the Node writes is valid whatever the position holds ------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=200)


@settings(max_examples=80, deadline=None)
@given(
    debtor=st.fixed_dictionaries(
        {},
        optional={
            key: _TEXT | st.sampled_from(["F", "G", "IT", "RM", "a@b.it"])
            for key in (
                "type",
                "fiscalCode",
                "fullName",
                "streetName",
                "civicNumber",
                "postalCode",
                "city",
                "province",
                "country",
                "email",
            )
        },
    ),
    description=_TEXT,
    company=_TEXT,
    remittance=_TEXT,
    version=st.sampled_from([1, 2]),
    stamp=st.booleans(),
)
def test_receipts_are_valid_whatever_the_data(
    debtor: dict[str, str], description: str, company: str, remittance: str, version: int, stamp: bool
) -> None:
    data = PaymentData(
        ec_fiscal_code=EC,
        nav=NAV,
        iuv=IUV,
        amount=Decimal("10.00"),
        description=description,
        company_name=company,
        debtor=debtor,
        office_name=company or None,
        transfers=[
            ReceiptTransfer(
                id_transfer=1,
                amount=Decimal("10.00"),
                fiscal_code_pa=EC,
                iban=None,
                stamp=stamp,
                remittance_information=remittance,
                transfer_category="",
                company_name=company or None,
            )
        ],
    )
    facts = ReceiptFacts(
        receipt_id="r" * 32,
        psp=DEFAULT_PSP,
        channel="BCITITMM_01",
        paid_at=datetime.now(UTC),
        pay_date=datetime.now(UTC).date(),
        standin=stamp,
        fee=Decimal("1.00"),
        payment_note=description or None,
    )
    station = StationConfig(id_station=STATION, id_broker=EC, password="password01", version=version)  # noqa: S106
    element = build_receipt_request(
        data=data, facts=facts, to_fiscal_code=EC, station=station, version=version, fallback_iban=IBAN
    )
    assert soap.schema_errors(element, soap.PA_FOR_NODE_XSD) == []
