"""The sandbox's ANSWERS against the official specs, over real HTTP on loopback.

The other sandbox tests check what clients send and the documents inside answers; here the answers
themselves are validated: the SOAP bodies of the legacy Node (``wsdl/nodeForPa.wsdl`` FR operations,
``gad/wsdl/NodoPerPa.wsdl`` RPT operations) against the XSDs that define them, and the JSON answers of
FdR, GPD and ACA against the response their OpenAPI document declares for the operation and HTTP status
(``jsonschema``, ``$ref`` resolved inside the document). The sandbox, its configuration and the request
builders are those of ``test_sandbox_legacy``, ``test_sandbox_reporting`` and ``test_sandbox_core``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import httpx
from jsonschema import Draft4Validator, Draft202012Validator, FormatChecker
from lxml import etree

from rules.xmlsafe import parse_xml
from sandbox import soap as wire
from sandbox.fdr import FDR_SPEC
from sandbox.nodo_soap import NODE_FOR_PA_XSD, nodo_per_pa_schemas
from sandbox.openapi import ACA_SPEC, GPD_SPEC, load_spec
from sandbox.state import SandboxState
from tests import test_sandbox_legacy as legacy
from tests.test_sandbox_core import aca_body, position
from tests.test_sandbox_legacy import (
    EC1,
    PPT,
    PSP,
    WRONG_PASSWORD,
    RecordingEc,
    ask,
    invia_carrello,
    invia_rpt,
    make_rpt,
    pay,
)
from tests.test_sandbox_reporting import SHORT_PASSWORD, add_transfers, settle
from tests.test_sandbox_reporting import soap as fr_call

# The fixtures of test_sandbox_legacy, reused as they are: the sandbox, the EC's paaInviaRT endpoint, the
# configured state (broker 77777777777, station _01, ECs 77777777777 and 01234567890, PSP PPAYITR1XXX).
sandbox, recorder, state, client, ec = legacy.sandbox, legacy.recorder, legacy.state, legacy.client, legacy.ec

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENV_XSD = "xsd-common/envelope.xsd"
KEY = {"Ocp-Apim-Subscription-Key": "key"}  # the subscription key of test_sandbox_legacy's state
FDR = f"/fdr-org/service/v1/organizations/{EC1}/fdrs"
GPD = f"/gpd/debt-positions-service/v1/organizations/{EC1}/debtpositions"
ACA = "/aca/v1/paCreatePosition"


# --- SOAP: the body of an answer against the XSD that defines it ---------------------------------------


def soap_errors(payload: etree._Element, schema: etree.XMLSchema | str) -> list[str]:
    """XSD errors of an answer's body element, and of its envelope against the SOAP 1.1 envelope.xsd."""
    envelope = payload.getroottree().getroot()
    errors = [f"envelope: {e}" for e in wire.schema_errors(envelope, SOAP_ENV_XSD)]
    if isinstance(schema, str):
        return errors + wire.schema_errors(payload, schema)
    if not schema.validate(payload):
        errors += [f"line {e.line}: {e.message}" for e in schema.error_log]  # type: ignore[attr-defined]
    return errors


def nodo_per_pa() -> etree.XMLSchema:
    """The ``ppt`` schema inside gad/wsdl/NodoPerPa.wsdl (it defines the FR answers too)."""
    return nodo_per_pa_schemas()[PPT]


def assert_fr_answer(payload: etree._Element, operation: str) -> None:
    assert payload.tag == f"{{{PPT}}}{operation}Risposta"
    assert soap_errors(payload, NODE_FOR_PA_XSD) == []
    assert soap_errors(payload, nodo_per_pa()) == []


def assert_rpt_answer(payload: etree._Element, operation: str) -> None:
    assert payload.tag == f"{{{PPT}}}{operation}Risposta"
    assert soap_errors(payload, nodo_per_pa()) == []


def test_the_schemas_refuse_a_wrong_answer() -> None:
    """The checks below can fail: a fault without faultString, or a list without its count, is refused."""
    answer = etree.fromstring(
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body>'
        f'<ppt:nodoChiediStatoRPTRisposta xmlns:ppt="{PPT}"><fault><faultCode>PPT_SEMANTICA</faultCode>'
        f"<id>NodoDeiPagamentiSPC</id></fault></ppt:nodoChiediStatoRPTRisposta></s:Body></s:Envelope>".encode()
    )[0][0]
    assert any("faultString" in e for e in soap_errors(answer, nodo_per_pa()))
    elenco = etree.fromstring(
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body>'
        f'<ppt:nodoChiediElencoFlussiRendicontazioneRisposta xmlns:ppt="{PPT}"><elencoFlussiRendicontazione>'
        "<idRendicontazione><identificativoFlusso>x</identificativoFlusso><dataOraFlusso>ieri</dataOraFlusso>"
        "</idRendicontazione></elencoFlussiRendicontazione></ppt:nodoChiediElencoFlussiRendicontazioneRisposta>"
        "</s:Body></s:Envelope>".encode()
    )[0][0]
    assert any("totRestituiti" in e for e in soap_errors(elenco, NODE_FOR_PA_XSD))
    text_detail = etree.fromstring(
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault><faultcode>s:Client</faultcode>'
        "<faultstring>PPT_SINTASSI_EXTRAXSD</faultstring><detail>text</detail></s:Fault></s:Body></s:Envelope>"
    )
    assert any("detail" in e for e in wire.schema_errors(text_detail, SOAP_ENV_XSD))


def test_fr_answers_follow_node_for_pa(state: SandboxState, client: httpx.Client) -> None:
    empty = fr_call(client, "nodoChiediElencoFlussiRendicontazione")
    assert_fr_answer(empty, "nodoChiediElencoFlussiRendicontazione")
    assert empty.findtext("elencoFlussiRendicontazione/totRestituiti") == "0"

    add_transfers(state, count=4)
    [flow] = settle(client)["flows"]
    elenco = fr_call(client, "nodoChiediElencoFlussiRendicontazione", identificativoDominio=EC1)
    assert_fr_answer(elenco, "nodoChiediElencoFlussiRendicontazione")
    listed = elenco.findtext("elencoFlussiRendicontazione/idRendicontazione/identificativoFlusso")
    assert listed == flow["idFlusso"]
    flusso = fr_call(
        client,
        "nodoChiediFlussoRendicontazione",
        identificativoDominio=EC1,
        identificativoFlusso=flow["idFlusso"],
    )
    assert_fr_answer(flusso, "nodoChiediFlussoRendicontazione")
    assert flusso.find("fault") is None
    assert parse_xml(base64.b64decode(flusso.findtext("xmlRendicontazione"))).tag.endswith(
        "FlussoRiversamento"
    )

    faults = {
        "PPT_ID_FLUSSO_SCONOSCIUTO": fr_call(
            client,
            "nodoChiediFlussoRendicontazione",
            identificativoDominio=EC1,
            identificativoFlusso="2024-07-26NOPE-1",
        ),
        "PPT_AUTENTICAZIONE": fr_call(
            client, "nodoChiediFlussoRendicontazione", password=WRONG_PASSWORD, identificativoFlusso="x"
        ),
        "PPT_SINTASSI_XSD": fr_call(client, "nodoChiediElencoFlussiRendicontazione", password=SHORT_PASSWORD),
        "PPT_DOMINIO_SCONOSCIUTO": fr_call(
            client, "nodoChiediElencoFlussiRendicontazione", identificativoDominio="99999999999"
        ),
    }
    for code, answer in faults.items():
        assert answer.findtext("fault/faultCode") == code
        assert (
            answer.find("xmlRendicontazione") is None and answer.find("elencoFlussiRendicontazione") is None
        )
        assert_fr_answer(answer, etree.QName(answer).localname.removesuffix("Risposta"))

    rule = {"path": "/nodo/nodoPerPa", "operation": "nodoChiediFlussoRendicontazione", "errorRate": 1.0}
    client.put(
        "/sandbox/faults", json={"rules": [rule | {"error": "soap_fault", "times": 1}]}
    ).raise_for_status()
    injected = fr_call(client, "nodoChiediFlussoRendicontazione", identificativoFlusso=flow["idFlusso"])
    assert injected.findtext("fault/faultCode") == "PPT_SYSTEM_ERROR"
    assert_fr_answer(injected, "nodoChiediFlussoRendicontazione")


def test_soap_faults_follow_the_envelope_xsd(state: SandboxState, client: httpx.Client) -> None:
    """What the Node cannot answer in the operation's own terms gets a SOAP 1.1 Fault (HTTP 500)."""
    unknown_operation = (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:ppt="{PPT}"><s:Body><ppt:nodoChiediInformativaPSP>'
        "<password>Password01</password></ppt:nodoChiediInformativaPSP></s:Body></s:Envelope>"
    ).encode()
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>'
    for raw in (b"<soapenv:Envelope", unknown_operation, doctype):
        answer = client.post("/nodo/nodoPerPa", content=raw, headers={"Content-Type": "text/xml"})
        assert answer.status_code == 500, raw
        envelope = parse_xml(answer.content)
        assert wire.schema_errors(envelope, SOAP_ENV_XSD) == [], raw
        fault = envelope.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
        assert fault is not None and fault.findtext("faultcode") == "soapenv:Client"
        assert fault.findtext("faultstring") == "PPT_SINTASSI_EXTRAXSD"


def test_rpt_answers_follow_nodo_per_pa(state: SandboxState, client: httpx.Client, ec: RecordingEc) -> None:
    iuv = "01000000000000144"
    accepted = invia_rpt(client, make_rpt(iuv=iuv, amounts=("10.00", "2.50")), iuv=iuv)
    assert accepted.findtext("esito") == "OK"
    assert_rpt_answer(accepted, "nodoInviaRPT")
    for refused, code in (
        (invia_rpt(client, make_rpt(iuv="99010000000000001"), iuv="99010000000000001"), "PPT_SEMANTICA"),
        (invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv), "PPT_RPT_DUPLICATA"),
        (invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv, password=WRONG_PASSWORD), "PPT_AUTENTICAZIONE"),
        (invia_rpt(client, b"<RPT><not-closed>", iuv=iuv), "PPT_SINTASSI_EXTRAXSD"),
    ):
        assert (refused.findtext("esito"), refused.findtext("fault/faultCode")) == ("KO", code)
        assert_rpt_answer(refused, "nodoInviaRPT")

    pending = ask(client, "nodoChiediStatoRPT", iuv=iuv)
    assert pending.findtext("esito/stato") == "RPT_ACCETTATA_NODO" and pending.findtext("esito/url")
    assert_rpt_answer(pending, "nodoChiediStatoRPT")
    no_rt = ask(client, "nodoChiediCopiaRT", iuv=iuv)
    assert no_rt.findtext("fault/faultCode") == "PPT_RT_NONDISPONIBILE" and no_rt.find("rt") is None
    assert_rpt_answer(no_rt, "nodoChiediCopiaRT")

    pay(client, iuv=iuv)
    assert [r["errors"] for r in ec.received] == [[]]
    paid = ask(client, "nodoChiediStatoRPT", iuv=iuv)
    assert paid.findtext("esito/stato") == "RT_ACCETTATA_PA"
    assert_rpt_answer(paid, "nodoChiediStatoRPT")
    rt_copy = ask(client, "nodoChiediCopiaRT", iuv=iuv)
    assert base64.b64decode(rt_copy.findtext("rt")) == ec.received[0]["rt"]
    assert_rpt_answer(rt_copy, "nodoChiediCopiaRT")
    for operation in ("nodoChiediStatoRPT", "nodoChiediCopiaRT"):
        unknown = ask(client, operation, iuv="01000000000009999")
        assert unknown.findtext("fault/faultCode") == "PPT_RPT_SCONOSCIUTA"
        assert_rpt_answer(unknown, operation)
        wrong = ask(client, operation, iuv=iuv, password=WRONG_PASSWORD)
        assert wrong.findtext("fault/faultCode") == "PPT_AUTENTICAZIONE"
        assert_rpt_answer(wrong, operation)

    first, second = "01000000000001053", "01000000000001154"
    cart = invia_carrello(
        client, f"{EC1}CART0001", [(EC1, first, make_rpt(iuv=first)), (EC1, second, make_rpt(iuv=second))]
    )
    assert cart.findtext("esitoComplessivoOperazione") == "OK" and cart.findtext("url")
    assert_rpt_answer(cart, "nodoInviaCarrelloRPT")
    duplicate = invia_carrello(
        client, f"{EC1}CART0001", [(EC1, "01000000000001255", make_rpt(iuv="01000000000001255"))]
    )
    assert duplicate.findtext("fault/faultCode") == "PPT_ID_CARRELLO_DUPLICATO"
    assert_rpt_answer(duplicate, "nodoInviaCarrelloRPT")
    bad_item = "01000000000001457"
    with_errors = invia_carrello(
        client,
        f"{EC1}CART0002",
        [
            (EC1, "01000000000001356", make_rpt(iuv="01000000000001356")),
            (EC1, bad_item, make_rpt(iuv=bad_item).replace(b"N/A", b"BAD")),
        ],
    )
    assert [f.findtext("serial") for f in with_errors.iterfind("listaErroriRPT/fault")] == ["2"]
    assert_rpt_answer(with_errors, "nodoInviaCarrelloRPT")


# --- JSON: the answer against the response the OpenAPI document declares ---------------------------------

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
LOCAL_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?")
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 ``date-time``: with a time-zone offset."""
    return not isinstance(value, str) or (
        RFC3339.fullmatch(value) is not None
        and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
    )


@FORMATS.checks("local-date-time", raises=ValueError)
def _local_date_time(value: object) -> bool:
    """The specs' ``local-date-time`` (a Java LocalDateTime): no offset."""
    return not isinstance(value, str) or (
        LOCAL_DATE_TIME.fullmatch(value) is not None and datetime.fromisoformat(value) is not None
    )


@FORMATS.checks("date", raises=ValueError)
def _date(value: object) -> bool:
    """``date``: YYYY-MM-DD."""
    return not isinstance(value, str) or (len(value) == 10 and date.fromisoformat(value) is not None)


@lru_cache(maxsize=64)
def _answer_validator(spec_relative: str, operation_id: str, status: int) -> Any:
    """The validator of the JSON an operation answers with ``status``; None when no body is declared."""
    spec = load_spec(spec_relative)
    operations = [
        op
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and op.get("operationId") == operation_id
    ]
    assert len(operations) == 1, f"{operation_id} is not one operation of {spec_relative}"
    declared = operations[0]["responses"].get(str(status))
    if declared is None:
        return f"HTTP {status} is not an answer {spec_relative} declares for {operation_id}"
    while "$ref" in declared:
        declared = spec["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    schema = (declared.get("content") or {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    # OpenAPI 3.1 schemas are JSON Schema 2020-12; 3.0 is the draft-4 dialect (boolean exclusiveMaximum).
    validator = Draft202012Validator if spec["openapi"].startswith("3.1") else Draft4Validator
    return validator({**schema, "components": _closed_components(spec_relative)}, format_checker=FORMATS)


@lru_cache(maxsize=8)
def _closed_components(spec_relative: str) -> dict[str, Any]:
    """The spec's components with every object schema closed: an answer may not carry undeclared fields.

    Sound only without schema composition, which these documents do not use (checked).
    """
    components = copy.deepcopy(load_spec(spec_relative)["components"])
    text = json.dumps(components)
    assert not any(f'"{word}"' in text for word in ("allOf", "oneOf", "anyOf", "additionalProperties"))

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "$ref" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(components)
    return components


def answer_errors(spec_relative: str, operation_id: str, response: httpx.Response) -> list[str]:
    """Every way ``response`` differs from what the spec declares for the operation and its status.

    The body must validate against the declared schema and carry no field the schema does not declare.
    """
    validator = _answer_validator(spec_relative, operation_id, response.status_code)
    if isinstance(validator, str):
        return [validator]
    if validator is None:
        return []
    if not response.headers.get("content-type", "").startswith("application/json"):
        return [f"content-type {response.headers.get('content-type')!r} is not application/json"]
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(response.json())]


def test_the_openapi_check_refuses_a_wrong_answer() -> None:
    """The checks below can fail: a wrong type, a missing required field, a bad date or status all show."""

    def errors(operation: str, status: int, body: Any, spec: str = FDR_SPEC) -> list[str]:
        response = httpx.Response(status, json=body)
        return answer_errors(spec, operation, response)

    page = {"metadata": {"pageSize": 1, "pageNumber": 1, "totPage": 1}, "count": 1, "data": [{}]}
    page["data"][0] = {
        "index": 1,
        "iuv": "1",
        "iur": "1",
        "idTransfer": 6,
        "pay": 1.5,
        "payDate": "2024-07-26",
    }
    found = errors("IOrganizationsController_getPaymentsFromPublishedFlow", 200, page)
    assert any("payStatus" in e for e in found)
    assert any("idTransfer" in e for e in found)
    assert any("payDate" in e for e in found)
    assert errors("IOrganizationsController_getAllPublishedFlows", 200, {"count": "1"}) != []
    assert errors("IOrganizationsController_getAllPublishedFlows", 418, {}) != []
    assert any("paid" in e for e in errors("IOrganizationsController_getAllPublishedFlows", 200, {"paid": 1}))
    assert errors("createPosition", 201, position("I", "1") | {"status": "BOH"}, GPD_SPEC) != []
    expiring = {"iuv": "1", "expirationDate": "2024-07-26T10:00:00Z"}
    assert errors("newDebtPosition", 200, expiring, ACA_SPEC) != []
    assert (
        errors("newDebtPosition", 200, expiring | {"expirationDate": "2024-07-26T10:00:00"}, ACA_SPEC) == []
    )


def test_fdr_answers_follow_fdr_organization(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, count=12)
    [flow] = settle(client)["flows"]

    def get(operation: str, path: str, **params: Any) -> httpx.Response:
        response = client.get(path, params=params, headers=KEY)
        assert answer_errors(FDR_SPEC, operation, response) == [], (path, params)
        return response

    listed = get("IOrganizationsController_getAllPublishedFlows", FDR).json()
    assert [d["fdr"] for d in listed["data"]] == [flow["idFlusso"]]
    base = f"{FDR}/{flow['idFlusso']}/revisions/1/psps/{PSP}"
    header = get("IOrganizationsController_getSinglePublishedFlow", base).json()
    assert header["totPayments"] == flow["count"] == 16
    payments = get(
        "IOrganizationsController_getPaymentsFromPublishedFlow", f"{base}/payments", page=2, size=10
    )
    assert payments.json()["count"] == 6 and payments.json()["metadata"]["totPage"] == 2

    for operation, path, params, status in (
        ("IOrganizationsController_getAllPublishedFlows", FDR, {"size": 0}, 400),
        ("IOrganizationsController_getAllPublishedFlows", FDR, {"pspId": "NOPSP"}, 400),
        (
            "IOrganizationsController_getSinglePublishedFlow",
            f"{FDR}/2024-07-26{PSP}-S999/revisions/1/psps/{PSP}",
            {},
            404,
        ),
        ("IOrganizationsController_getPaymentsFromPublishedFlow", f"{base}/payments", {"page": "x"}, 400),
        (
            "IOrganizationsController_getPaymentsFromPublishedFlow",
            f"{FDR}/{flow['idFlusso']}/revisions/2/psps/{PSP}/payments",
            {},
            404,
        ),
    ):
        assert get(operation, path, **params).status_code == status, (path, params)


def test_gpd_answers_follow_gpd(state: SandboxState, client: httpx.Client) -> None:
    def call(operation: str, method: str, path: str, status: int, body: Any = None) -> dict[str, Any]:
        response = client.request(method, path, json=body, headers=KEY)
        assert response.status_code == status, response.text
        assert answer_errors(GPD_SPEC, operation, response) == [], (operation, status)
        return response.json()

    draft = call("createPosition", "POST", GPD, 201, position("ANS-1", "01000000000000144"))
    assert draft["status"] == "DRAFT"
    updated = call(
        "updatePosition", "PUT", f"{GPD}/ANS-1", 200, position("ANS-1", "01000000000000144", amount=2000)
    )
    assert updated["paymentOption"][0]["amount"] == 2000
    assert call("publishPosition", "POST", f"{GPD}/ANS-1/publish", 200)["status"] == "VALID"
    assert call("getOrganizationDebtPositionByIUPD", "GET", f"{GPD}/ANS-1", 200)["status"] == "VALID"
    assert (
        call("getOrganizationDebtPositions", "GET", f"{GPD}?limit=5&page=0", 200)["page_info"]["total_pages"]
        == 1
    )
    assert call("invalidatePosition", "POST", f"{GPD}/ANS-1/invalidate", 200)["status"] == "INVALID"
    call("createPosition", "POST", f"{GPD}?toPublish=true", 201, position("ANS-2", "01000000000000241"))
    assert call("deletePosition", "DELETE", f"{GPD}/ANS-2", 200) == "OK"

    assert (
        "ANS-1" in call("createPosition", "POST", GPD, 409, position("ANS-1", "01000000000000338"))["detail"]
    )
    assert call("createPosition", "POST", GPD, 400, position("ANS-3", "1") | {"type": "X"})["status"] == 400
    invalid_update = call(
        "updatePosition", "PUT", f"{GPD}/ANS-1", 409, position("ANS-1", "01000000000000144")
    )
    assert invalid_update["status"] == 409
    for operation, method, suffix in (
        ("getOrganizationDebtPositionByIUPD", "GET", ""),
        ("publishPosition", "POST", "/publish"),
        ("invalidatePosition", "POST", "/invalidate"),
        ("deletePosition", "DELETE", ""),
    ):
        assert call(operation, method, f"{GPD}/NOPE{suffix}", 404)["status"] == 404
    assert call("publishPosition", "POST", f"{GPD}/ANS-1/publish", 409)["status"] == 409


def test_aca_answers_follow_pa_create_position(state: SandboxState, client: httpx.Client) -> None:
    def call(status: int, body: Any) -> dict[str, Any]:
        response = client.post(ACA, json=body, headers=KEY)
        assert response.status_code == status, response.text
        assert answer_errors(ACA_SPEC, "newDebtPosition", response) == [], status
        return response.json()

    assert aca_body("1")["paFiscalCode"] == EC1  # test_sandbox_core's EC is served by this state too
    created = call(200, aca_body("11000000000000123"))
    assert (created["status"], created["nav"], created["amount"]) == ("VALID", "311000000000000123", 5000)
    assert call(200, aca_body("11000000000000123", amount=7000))["amount"] == 7000
    assert call(200, aca_body("11000000000000123", amount=0))["status"] == "INVALID"
    assert call(422, aca_body("11000000000000123"))["status"] == 422
    assert call(404, aca_body("11000000000000999", amount=0))["status"] == 404
    client.post(
        f"{GPD}?toPublish=true", json=position("G-1", "11000000000000888"), headers=KEY
    ).raise_for_status()
    assert call(409, aca_body("11000000000000888"))["status"] == 409
    missing = aca_body("11000000000000777")
    del missing["expirationDate"]
    assert "expirationDate" in call(400, missing)["detail"]
