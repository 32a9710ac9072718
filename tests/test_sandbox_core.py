"""Contract tests of the sandbox core over real HTTP on loopback: GPD, ACA, receipts 404, nodeForPsp
validation, fault injection and the control API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from lxml import etree

from sandbox import soap
from sandbox.openapi import ACA_SPEC, GPD_SPEC, schema_errors
from sandbox.server import RunningSandbox, start_in_thread
from sandbox.state import CreditorConfig, SandboxState, StationConfig

EC = "77777777777"
OTHER_EC = "01234567890"
KEY = "core-key"
H = {"Ocp-Apim-Subscription-Key": KEY}
GPD = f"/gpd/debt-positions-service/v1/organizations/{EC}/debtpositions"
ACA = "/aca/v1/paCreatePosition"
IBAN = "IT60X0542811101000000123456"
NFP = "/nodo/node-for-psp/v1"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    running = start_in_thread(state=SandboxState(seed=11))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as c:
        c.post("/sandbox/reset").raise_for_status()
        c.put(
            "/sandbox/config",
            json={
                "stations": [
                    {"idStation": f"{EC}_01", "idBroker": EC, "password": "password01", "url": None}
                ],
                "creditors": [
                    {
                        "fiscalCode": EC,
                        "name": "Comune di Sandbox",
                        "idStation": f"{EC}_01",
                        "iban": IBAN,
                        "gpdHosted": True,
                    }
                ],
                "psps": [
                    {
                        "pspId": "BCITITMM",
                        "name": "Banca Sandbox",
                        "bic": "BCITITMM",
                        "channel": "BCITITMM_01",
                        "password": "pspPass001",
                    }
                ],
                "subscriptionKeys": [KEY],
            },
        ).raise_for_status()
        yield c


def iso_in(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


def position(
    iupd: str, iuv: str, *, amount: int = 10050, options: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """A valid PaymentPositionModel body with one option and one transfer by default."""
    body = {
        "iupd": iupd,
        "type": "F",
        "fiscalCode": "RSSMRA80A01H501U",
        "fullName": "Mario Rossi",
        "companyName": "Comune di Sandbox",
        "switchToExpired": False,
        "paymentOption": options
        or [
            {
                "iuv": iuv,
                "amount": amount,
                "description": "TARI 2024",
                "isPartialPayment": False,
                "dueDate": iso_in(30),
                "paymentOptionMetadata": [],
                "transfer": [
                    {
                        "idTransfer": "1",
                        "amount": amount,
                        "remittanceInformation": "TARI",
                        "category": "9/0101108TS/",
                        "iban": IBAN,
                        "transferMetadata": [],
                    }
                ],
            }
        ],
    }
    body.update(extra)
    return body


# --- GPD ------------------------------------------------------------------------------------------


def test_gpd_create_get_and_conflicts(client: httpx.Client) -> None:
    created = client.post(f"{GPD}?toPublish=true", json=position("IUPD-1", "01000000000000144"), headers=H)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "VALID"
    assert created.json()["paymentOption"][0]["nav"] == "301000000000000144"
    assert schema_errors(GPD_SPEC, "PaymentPositionModel", created.json()) == []

    got = client.get(f"{GPD}/IUPD-1", headers=H)
    assert got.status_code == 200
    body = got.json()
    assert schema_errors(GPD_SPEC, "PaymentPositionModelBaseResponse", body) == []
    assert body["organizationFiscalCode"] == EC and body["status"] == "VALID"
    option = body["paymentOption"][0]
    assert option["amount"] == 10050 and option["status"] == "PO_UNPAID"
    assert option["transfer"][0]["status"] == "T_UNREPORTED"

    again = client.post(f"{GPD}?toPublish=true", json=position("IUPD-1", "01000000000000241"), headers=H)
    assert again.status_code == 409
    same_iuv = client.post(f"{GPD}?toPublish=true", json=position("IUPD-2", "01000000000000144"), headers=H)
    assert same_iuv.status_code == 409 and "01000000000000144" in same_iuv.json()["detail"]


def test_gpd_state_machine(client: httpx.Client) -> None:
    assert client.post(GPD, json=position("SM-1", "01000000000000338"), headers=H).json()["status"] == "DRAFT"
    updated = client.put(f"{GPD}/SM-1", json=position("SM-1", "01000000000000338", amount=2000), headers=H)
    assert updated.status_code == 200 and updated.json()["status"] == "DRAFT"
    assert client.get(f"{GPD}/SM-1", headers=H).json()["paymentOption"][0]["amount"] == 2000
    assert (
        client.post(f"{GPD}/SM-1/invalidate", headers=H).status_code == 409
    )  # a draft is deleted, not invalidated
    published = client.post(f"{GPD}/SM-1/publish", headers=H)
    assert published.status_code == 200 and published.json()["status"] == "VALID"
    assert client.post(f"{GPD}/SM-1/publish", headers=H).status_code == 409
    assert client.post(f"{GPD}/SM-1/invalidate", headers=H).json()["status"] == "INVALID"
    # INVALID is terminal: no invalidate, update, delete, publish, and the IUPD stays taken
    assert client.post(f"{GPD}/SM-1/invalidate", headers=H).status_code == 409
    assert client.put(f"{GPD}/SM-1", json=position("SM-1", "01000000000000338"), headers=H).status_code == 409
    assert client.delete(f"{GPD}/SM-1", headers=H).status_code == 409
    assert client.post(f"{GPD}/SM-1/publish", headers=H).status_code == 409
    assert client.post(GPD, json=position("SM-1", "01000000000000435"), headers=H).status_code == 409


def test_gpd_update_to_publish_and_delete(client: httpx.Client) -> None:
    future = position("DEL-1", "01000000000000532", validityDate=iso_in(1))
    assert client.post(f"{GPD}?toPublish=true", json=future, headers=H).json()["status"] == "PUBLISHED"
    put = client.put(f"{GPD}/DEL-1?toPublish=true", json=position("DEL-1", "01000000000000532"), headers=H)
    assert put.status_code == 200 and put.json()["status"] == "VALID"
    assert client.delete(f"{GPD}/DEL-1", headers=H).status_code == 200
    assert client.get(f"{GPD}/DEL-1", headers=H).status_code == 404
    # deleting frees the IUPD and the IUV
    assert client.post(GPD, json=position("DEL-1", "01000000000000532"), headers=H).status_code == 201


@pytest.mark.parametrize(
    "method,suffix", [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/publish"), ("POST", "/invalidate")]
)
def test_gpd_unknown_position_is_404(client: httpx.Client, method: str, suffix: str) -> None:
    body = position("NOPE", "01000000000000629") if method == "PUT" else None
    response = client.request(method, f"{GPD}/NOPE{suffix}", json=body, headers=H)
    assert response.status_code == 404
    assert response.json()["status"] == 404


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda b: b.pop("companyName"), "companyName"),
        (lambda b: b["paymentOption"][0].update(amount="100"), "paymentOption[0].amount"),
        (lambda b: b["paymentOption"][0]["transfer"][0].pop("category"), "category"),
        (lambda b: b["paymentOption"][0]["transfer"][0].update(amount=1), "sum of its transfers"),
        (lambda b: b["paymentOption"][0].update(dueDate="2001-01-01T00:00:00Z"), "dueDate"),
        (lambda b: b.update(type="X"), "type"),
        (lambda b: b["paymentOption"][0]["transfer"][0].update(idTransfer="6"), "idTransfer"),
        (lambda b: b["paymentOption"][0]["transfer"][0].pop("iban"), "iban and stamp"),
        (
            lambda b: b["paymentOption"][0]["transfer"][0].update(organizationFiscalCode="ABC"),
            "organizationFiscalCode",
        ),
        (lambda b: b["paymentOption"][0].update(iuv="0" * 36), "iuv"),
    ],
)
def test_gpd_invalid_body_is_400_naming_the_field(client: httpx.Client, mutate: Any, field: str) -> None:
    body = position("BAD-1", "01000000000000726")
    mutate(body)
    response = client.post(GPD, json=body, headers=H)
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]
    assert client.get(f"{GPD}/BAD-1", headers=H).status_code == 404


def test_gpd_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(GPD, content=b'{"iupd": ', headers={**H, "Content-Type": "application/json"})
    assert response.status_code == 400


def test_gpd_authentication(client: httpx.Client) -> None:
    body = position("AUTH-1", "01000000000000823")
    assert client.post(GPD, json=body).status_code == 401
    assert client.post(GPD, json=body, headers={"Ocp-Apim-Subscription-Key": "wrong"}).status_code == 401
    other = f"/gpd/debt-positions-service/v1/organizations/{OTHER_EC}/debtpositions"
    forbidden = client.post(other, json=body, headers=H)
    assert forbidden.status_code == 403 and forbidden.json()["statusCode"] == 403
    assert client.get(f"{GPD}/AUTH-1", headers=H).status_code == 404


def test_gpd_list_pages(client: httpx.Client) -> None:
    for n in range(3):
        iuv = f"0100000000000{n}9{n}0"[:17]
        assert (
            client.post(f"{GPD}?toPublish=true", json=position(f"L-{n}", iuv), headers=H).status_code == 201
        )
    page = client.get(f"{GPD}?limit=2&page=1", headers=H).json()
    assert schema_errors(GPD_SPEC, "PaymentPositionsInfo", page) == []
    assert page["page_info"]["total_pages"] == 2 and len(page["payment_position_list"]) == 1


# --- ACA ------------------------------------------------------------------------------------------


def aca_body(iuv: str, amount: int = 5000, **extra: Any) -> dict[str, Any]:
    body = {
        "paFiscalCode": EC,
        "entityType": "F",
        "entityFiscalCode": "RSSMRA80A01H501U",
        "entityFullName": "Mario Rossi",
        "iuv": iuv,
        "amount": amount,
        "description": "Multa",
        "expirationDate": iso_in(20),
        "iban": IBAN,
        "payStandIn": True,
    }
    body.update(extra)
    return body


def test_aca_is_idempotent_and_invalidates(client: httpx.Client) -> None:
    body = aca_body("11000000000000123")
    first = client.post(ACA, json=body, headers=H)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "VALID" and first.json()["nav"] == "311000000000000123"
    again = client.post(ACA, json=body, headers=H)
    assert again.status_code == 200 and again.json() == first.json()
    assert len(client.get(f"{GPD}?limit=50", headers=H).json()["payment_position_list"]) == 1
    gpd_view = client.get(f"{GPD}/ACA_{EC}_11000000000000123", headers=H).json()
    assert gpd_view["paymentOption"][0]["amount"] == 5000

    updated = client.post(ACA, json=aca_body("11000000000000123", amount=7000), headers=H)
    assert updated.status_code == 200 and updated.json()["amount"] == 7000
    gone = client.post(ACA, json=aca_body("11000000000000123", amount=0), headers=H)
    assert gone.status_code == 200 and gone.json()["status"] == "INVALID"
    assert (
        client.post(ACA, json=aca_body("11000000000000123", amount=0), headers=H).json()["status"]
        == "INVALID"
    )
    assert client.post(ACA, json=aca_body("11000000000000123"), headers=H).status_code == 422


def test_aca_errors(client: httpx.Client) -> None:
    assert client.post(ACA, json=aca_body("11000000000000999", amount=0), headers=H).status_code == 404
    assert (
        client.post(f"{GPD}?toPublish=true", json=position("G-1", "11000000000000888"), headers=H).status_code
        == 201
    )
    conflict = client.post(ACA, json=aca_body("11000000000000888"), headers=H)
    assert conflict.status_code == 409 and "Unauthorized" in conflict.json()["title"]
    missing = aca_body("11000000000000777")
    del missing["expirationDate"]
    bad = client.post(ACA, json=missing, headers=H)
    assert bad.status_code == 400 and "expirationDate" in bad.json()["detail"]
    assert (
        client.post(ACA, json=aca_body("11000000000000777", paFiscalCode=OTHER_EC), headers=H).status_code
        == 403
    )
    assert client.post(ACA, json=aca_body("11000000000000777")).status_code == 401
    assert schema_errors(ACA_SPEC, "NewDebtPositionRequest", aca_body("1")) == []


# --- receipts pull: unknown --------------------------------------------------------------------------


def test_receipts_pull_unknown_is_404(client: httpx.Client) -> None:
    biz = client.get(
        f"/bizevents/service/v1/organizations/{EC}/receipts/NOPE/paymentoptions/01000000000000144", headers=H
    )
    assert biz.status_code == 404 and biz.json()["status"] == 404
    gpd_r = client.get(
        f"/gpd/payments-receipts-service/v1/payments/{EC}/receipts/01000000000000144", headers=H
    )
    assert gpd_r.status_code == 404
    assert client.get(f"/gpd/payments-receipts-service/v1/payments/{EC}/receipts/0100").status_code == 401


# --- nodeForPsp: what a PSP client sends is validated --------------------------------------------------


def verify_request(
    *,
    password: str = "pspPass001",  # noqa: S107 - the sandbox PSP of the fixture
    nav: str = "301000000000000144",
    psp: str = "BCITITMM",
    drop: str | None = None,
) -> bytes:
    ns = soap.NODE_FOR_PSP_NS
    req = etree.Element(f"{{{ns}}}verifyPaymentNoticeReq", nsmap={"nfp": ns})
    for name, value in (
        ("idPSP", psp),
        ("idBrokerPSP", psp),
        ("idChannel", "BCITITMM_01"),
        ("password", password),
    ):
        if name != drop:
            soap.sub(req, name, value)
    qr = soap.sub(req, "qrCode")
    soap.sub(qr, "fiscalCode", EC)
    soap.sub(qr, "noticeNumber", nav)
    return soap.envelope(req)


def call_nfp(client: httpx.Client, body: bytes) -> etree._Element:
    response = client.post(
        NFP, content=body, headers={"SOAPAction": "verifyPaymentNotice", "Content-Type": "text/xml"}
    )
    assert response.status_code == 200
    payload = soap.parse_envelope(response.content)
    assert soap.schema_errors(payload, soap.NODE_FOR_PSP_XSD) == []
    return payload


def test_node_for_psp_validates_what_it_receives(client: httpx.Client) -> None:
    invalid = call_nfp(client, verify_request(drop="password"))
    assert soap.text(invalid, "outcome") == "KO"
    assert soap.text(invalid, "fault", "faultCode") == "PPT_SINTASSI_XSD"
    assert "password" in soap.text(invalid, "fault", "description")
    malformed = call_nfp(client, b"<soapenv:Envelope><broken")
    assert soap.text(malformed, "fault", "faultCode") == "PPT_SINTASSI_EXTRAXSD"
    doctype = call_nfp(client, b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>')
    assert soap.text(doctype, "fault", "faultCode") == "PPT_SINTASSI_EXTRAXSD"
    wrong_password = call_nfp(client, verify_request(password="wrongPass01"))  # noqa: S106
    assert soap.text(wrong_password, "fault", "faultCode") == "PPT_AUTENTICAZIONE"
    unknown_psp = call_nfp(client, verify_request(psp="NOPSP"))
    assert soap.text(unknown_psp, "fault", "faultCode") == "PPT_PSP_SCONOSCIUTO"


def test_node_for_psp_verify_answers_from_gpd(client: httpx.Client) -> None:
    assert (
        client.post(
            f"{GPD}?toPublish=true", json=position("V-1", "01000000000000144", amount=1234), headers=H
        ).status_code
        == 201
    )
    ok = call_nfp(client, verify_request())
    assert soap.text(ok, "outcome") == "OK"
    assert soap.text(ok, "paymentList", "paymentOptionDescription", "amount") == "12.34"
    unknown = call_nfp(client, verify_request(nav="301000000000000241"))
    assert soap.text(unknown, "fault", "faultCode") == "PPT_ERRORE_EMESSO_DA_PAA"
    assert soap.text(unknown, "fault", "originalFaultCode") == "PAA_PAGAMENTO_SCONOSCIUTO"


# --- fault injection --------------------------------------------------------------------------------


def statuses(client: httpx.Client, n: int) -> list[int]:
    return [client.get(f"{GPD}/ANY", headers=H).status_code for _ in range(n)]


def test_faults_error_rate_is_reproducible_with_a_seed(client: httpx.Client) -> None:
    rule = {"path": "/gpd/", "errorRate": 0.5, "error": "http_503"}
    client.put("/sandbox/faults", json={"seed": 42, "rules": [rule]}).raise_for_status()
    first = statuses(client, 30)
    client.put("/sandbox/faults", json={"seed": 42, "rules": [rule]}).raise_for_status()
    second = statuses(client, 30)
    client.put("/sandbox/faults", json={"seed": 43, "rules": [rule]}).raise_for_status()
    third = statuses(client, 30)
    assert first == second
    assert set(first) == {404, 503}
    assert third != first
    # other endpoints are untouched, and so is the control API
    assert client.post(ACA, json=aca_body("12000000000000123"), headers=H).status_code == 200
    assert client.get("/sandbox/state").status_code == 200
    assert client.delete("/sandbox/faults").status_code == 200
    assert set(statuses(client, 10)) == {404}


def test_faults_429_with_retry_after_and_times(client: httpx.Client) -> None:
    client.put(
        "/sandbox/faults",
        json={
            "rules": [
                {
                    "path": "/gpd/",
                    "method": "GET",
                    "errorRate": 1.0,
                    "error": "http_429",
                    "retryAfter": 7,
                    "times": 2,
                }
            ]
        },
    )
    first = client.get(f"{GPD}/ANY", headers=H)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    assert statuses(client, 2) == [429, 404]


def test_faults_drop_connection(client: httpx.Client, sandbox: RunningSandbox) -> None:
    client.put("/sandbox/faults", json={"rules": [{"path": "/gpd/", "dropRate": 1.0, "times": 1}]})
    with (
        httpx.Client(base_url=sandbox.url, timeout=5) as fresh,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        fresh.get(f"{GPD}/ANY", headers=H)
    assert client.get(f"{GPD}/ANY", headers=H).status_code == 404
    time.sleep(0.05)  # the server journals the dropped request after its socket is gone
    seen = sorted(e["status"] for e in client.get("/sandbox/exchanges", params={"endpoint": GPD}).json())
    assert seen == ["404", "dropped (drop)"]


def test_faults_malformed_body_and_latency(client: httpx.Client) -> None:
    assert (
        client.post(f"{GPD}?toPublish=true", json=position("M-1", "01000000000000144"), headers=H).status_code
        == 201
    )
    client.put(
        "/sandbox/faults",
        json={"rules": [{"path": "/gpd/", "malformedRate": 1.0, "latencyMs": 150, "jitterMs": 50}]},
    )
    started = time.perf_counter()
    response = client.get(f"{GPD}/M-1", headers=H)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and elapsed >= 0.15
    with pytest.raises(ValueError):
        response.json()
    assert response.text and '"iupd"' in response.text[:40]


def test_faults_soap_system_error(client: httpx.Client) -> None:
    client.put(
        "/sandbox/faults",
        json={
            "rules": [
                {"path": NFP, "operation": "verifyPaymentNotice", "errorRate": 1.0, "error": "soap_fault"}
            ]
        },
    )
    answer = call_nfp(client, verify_request())
    assert soap.text(answer, "fault", "faultCode") == "PPT_SYSTEM_ERROR"


def test_faults_reject_bad_rules(client: httpx.Client) -> None:
    assert client.put("/sandbox/faults", json={"rules": [{"path": "/", "errorRate": 2}]}).status_code == 400
    assert client.put("/sandbox/faults", json={"rules": [{"path": "/", "error": "boom"}]}).status_code == 400
    assert client.put("/sandbox/faults", json={"rules": [{"nope": 1}]}).status_code == 400


# --- control ----------------------------------------------------------------------------------------


def test_control_state_exchanges_and_reset(client: httpx.Client) -> None:
    client.post(f"{GPD}?toPublish=true", json=position("C-1", "01000000000000144"), headers=H)
    client.post(GPD, json=position("C-2", "01000000000000241"), headers=H)
    client.get(f"{GPD}/C-1", headers=H)
    state = client.get("/sandbox/state").json()
    assert state["positions"] == {"total": 2, "byStatus": {"VALID": 1, "DRAFT": 1}}
    creates = client.get("/sandbox/exchanges", params={"operation": "createPosition"}).json()
    assert [e["status"] for e in creates] == ["201", "201"]
    assert '"iupd":"C-1"' in creates[0]["request"].replace(" ", "")
    assert all(e["direction"] == "in" for e in creates)
    assert len(client.get("/sandbox/exchanges", params={"endpoint": "/aca/"}).json()) == 0
    assert client.put("/sandbox/config", json={"creditors": [{"fiscalCode": "123"}]}).status_code == 400
    assert client.put("/sandbox/config", json={"node": {"verifyTimeout": "x"}}).status_code == 400
    config = client.put(
        "/sandbox/config", json={"node": {"verifyTimeout": 0.3}, "tokenExpirySeconds": 60}
    ).json()
    assert config["node"]["verify_timeout"] == 0.3 and config["node"]["token_expiry_seconds"] == 60
    assert config["stations"][0]["password"] == "***"  # noqa: S105 - masked
    client.post("/sandbox/reset").raise_for_status()
    after = client.get("/sandbox/state").json()
    assert after["positions"]["total"] == 0 and after["config"] == {"stations": 0, "creditors": 0, "psps": 0}
    assert client.get("/sandbox/exchanges").json() == []


def test_check_station_faults() -> None:
    state = SandboxState()
    state.stations["S_01"] = StationConfig(id_station="S_01", id_broker=EC, password="password01")  # noqa: S106
    state.creditors[EC] = CreditorConfig(fiscal_code=EC, name="C", id_station="S_01", id_broker=EC, iban=IBAN)

    def code(**overrides: str | None) -> str | None:
        args: dict[str, str | None] = {
            "id_pa": EC,
            "id_broker": EC,
            "id_station": "S_01",
            "password": "password01",
            **overrides,
        }
        try:
            soap.check_station(state, **args)  # type: ignore[arg-type]
        except soap.NodeFault as fault:
            return fault.code
        return None

    assert code() is None
    assert code(id_station="S_02") == "PPT_STAZIONE_INT_PA_SCONOSCIUTA"
    assert code(id_broker="99999999999") == "PPT_INTERMEDIARIO_PA_SCONOSCIUTO"
    assert code(password="wrongPass01") == "PPT_AUTENTICAZIONE"  # noqa: S106
    assert code(id_pa=OTHER_EC) == "PPT_DOMINIO_SCONOSCIUTO"
