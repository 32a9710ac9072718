"""SOAP wire format of the Node: envelopes, XSD validation, faults, station authentication, station calls.

Shared by every SOAP surface of the sandbox (nodeForPsp here, nodeForPa/legacy in sandbox-reporting):
  * ``parse_envelope(bytes)`` → the body's payload element, or ``NodeFault(PPT_SINTASSI_EXTRAXSD)``;
  * ``validate(element, "wsdl/xsd/…xsd")`` → ``NodeFault(PPT_SINTASSI_XSD)`` naming the first error;
  * ``check_station(state, …)`` → the StationConfig, or PPT_STAZIONE_INT_PA_SCONOSCIUTA /
    PPT_INTERMEDIARIO_PA_SCONOSCIUTO / PPT_AUTENTICAZIONE / PPT_DOMINIO_SCONOSCIUTO;
  * ``ko_payload(operation, fault)`` → the KO answer element of a registered operation;
  * ``envelope(payload)`` → the bytes to send; ``soap_response(payload)`` → a FastAPI Response.
Schemas are read from the configured specs folder (``models.settings``) and cached per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpx
from lxml import etree

from models.settings import get_settings
from rules.xmlsafe import MalformedXMLError, UnsafeXMLError, local_name, parse_xml

if TYPE_CHECKING:
    from fastapi import Response

    from sandbox.state import SandboxState, StationConfig

logger = logging.getLogger(__name__)

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PA_FOR_NODE_NS = "http://pagopa-api.pagopa.gov.it/pa/paForNode.xsd"
NODE_FOR_PSP_NS = "http://pagopa-api.pagopa.gov.it/node/nodeForPsp.xsd"
PPT_NS = "http://ws.pagamenti.telematici.gov/"
PA_FOR_NODE_XSD = "wsdl/xsd/paForNode.xsd"
NODE_FOR_PSP_XSD = "wsdl/xsd/nodeForPsp.xsd"
NODE_FAULT_ID = "NodoDeiPagamentiSPC"

FAULT_STRINGS: dict[str, str] = {
    "PPT_SINTASSI_XSD": "Errore di sintassi XSD.",
    "PPT_SINTASSI_EXTRAXSD": "Errore di sintassi extra XSD.",
    "PPT_AUTENTICAZIONE": "Errore di autenticazione.",
    "PPT_AUTORIZZAZIONE": "Il richiedente non ha i diritti per l'operazione.",
    "PPT_DOMINIO_SCONOSCIUTO": "Identificativo dominio sconosciuto.",
    "PPT_DOMINIO_DISABILITATO": "Dominio disabilitato.",
    "PPT_INTERMEDIARIO_PA_SCONOSCIUTO": "Identificativo intermediario PA sconosciuto.",
    "PPT_STAZIONE_INT_PA_SCONOSCIUTA": "Identificativo stazione intermediario PA sconosciuto.",
    "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE": "Stazione intermediario PA irraggiungibile.",
    "PPT_STAZIONE_INT_PA_TIMEOUT": "Timeout risposta dalla stazione intermediario PA.",
    "PPT_STAZIONE_INT_PA_ERRORE_RESPONSE": "Errore nella risposta della stazione intermediario PA.",
    "PPT_ERRORE_EMESSO_DA_PAA": "Errore restituito dalla PAA.",
    "PPT_PSP_SCONOSCIUTO": "Identificativo PSP sconosciuto.",
    "PPT_INTERMEDIARIO_PSP_SCONOSCIUTO": "Identificativo intermediario PSP sconosciuto.",
    "PPT_CANALE_SCONOSCIUTO": "Identificativo canale sconosciuto.",
    "PPT_PAGAMENTO_SCONOSCIUTO": "Pagamento sconosciuto.",
    "PPT_PAGAMENTO_DUPLICATO": "Pagamento duplicato.",
    "PPT_TOKEN_SCADUTO": "Token scaduto.",
    "PPT_TOKEN_SCONOSCIUTO": "Token sconosciuto.",
    "PPT_SEMANTICA": "Errore semantico.",
    "PPT_SYSTEM_ERROR": "Errore generico.",
}


class NodeFault(Exception):
    """A fault the Node answers with; ``original_*`` carry a station's own PAA_ fault through."""

    def __init__(
        self,
        code: str,
        description: str | None = None,
        *,
        fault_id: str = NODE_FAULT_ID,
        original_code: str | None = None,
        original_string: str | None = None,
        original_description: str | None = None,
    ) -> None:
        self.code = code
        self.fault_string = FAULT_STRINGS.get(code, code)
        self.description = description or self.fault_string
        self.fault_id = fault_id
        self.original_code = original_code
        self.original_string = original_string
        self.original_description = original_description
        super().__init__(f"{code}: {self.description}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (used by the /sandbox/pay answer)."""
        return {
            "faultCode": self.code,
            "faultString": self.fault_string,
            "description": self.description,
            "id": self.fault_id,
            "originalFaultCode": self.original_code,
            "originalFaultString": self.original_string,
            "originalDescription": self.original_description,
        }


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@lru_cache(maxsize=16)
def load_schema(relative: str) -> etree.XMLSchema:
    """The official XSD at ``<specs>/pagopa-api/<relative>`` (imports resolved from its folder)."""
    path = get_settings().spec_path(relative)
    return etree.XMLSchema(etree.parse(str(path), _safe_parser()))


def schema_errors(element: etree._Element, relative: str) -> list[str]:
    """Every XSD error of ``element`` validated as a document root against ``relative``."""
    schema = load_schema(relative)
    # a copy makes the element the root of its own document, which is what the schema describes
    document = etree.fromstring(etree.tostring(element), _safe_parser())
    if schema.validate(document):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]  # type: ignore[attr-defined]


def validate(element: etree._Element, relative: str, *, code: str = "PPT_SINTASSI_XSD") -> None:
    """Raise ``NodeFault(code)`` naming the first XSD error of ``element``."""
    errors = schema_errors(element, relative)
    if errors:
        raise NodeFault(code, errors[0])


def parse_envelope(data: bytes) -> etree._Element:
    """The first element of the SOAP 1.1 Body of ``data``; malformed input → PPT_SINTASSI_EXTRAXSD."""
    try:
        root = parse_xml(data)
    except (MalformedXMLError, UnsafeXMLError) as exc:
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", str(exc)) from exc
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", "the document is not a SOAP 1.1 Envelope")
    body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    if body is None:
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", "the SOAP Envelope has no Body")
    children = [child for child in body if isinstance(child.tag, str)]
    if not children:
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", "the SOAP Body is empty")
    return children[0]


def envelope(payload: etree._Element) -> bytes:
    """A SOAP 1.1 envelope around ``payload``, UTF-8 with an XML declaration."""
    env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"soapenv": SOAP_ENV_NS})
    etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Header")
    body = etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body")
    body.append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def soap_fault_envelope(*, faultcode: str, faultstring: str, detail: str | None = None) -> bytes:
    """A bare SOAP 1.1 Fault (for transport-level failures that have no business answer)."""
    env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"soapenv": SOAP_ENV_NS})
    body = etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = faultcode
    etree.SubElement(fault, "faultstring").text = faultstring
    if detail:
        # <detail> is element-only in the SOAP 1.1 envelope.xsd: the text goes in a child element.
        etree.SubElement(etree.SubElement(fault, "detail"), "description").text = detail
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    """Append an unqualified child (the pagoPA schemas use unqualified local elements)."""
    child = etree.SubElement(parent, name)
    if text is not None:
        child.text = text
    return child


def child(element: etree._Element, name: str) -> etree._Element | None:
    """The first child whose local name is ``name``."""
    for item in element:
        if isinstance(item.tag, str) and local_name(item) == name:
            return item
    return None


def text(element: etree._Element | None, *path: str) -> str | None:
    """Stripped text at a path of local names below ``element``, or None."""
    node = element
    for name in path:
        if node is None:
            return None
        node = child(node, name)
    if node is None or node.text is None:
        return None
    return node.text.strip()


def amount(value: Decimal) -> str:
    """A euro amount with exactly two decimals, as the XSDs want (``\\d+\\.\\d{2}``)."""
    return f"{value.quantize(Decimal('0.01')):.2f}"


def fault_element(parent: etree._Element, fault: NodeFault) -> etree._Element:
    """Append a ctFaultBean ``<fault>`` for ``fault``."""
    node = sub(parent, "fault")
    sub(node, "faultCode", fault.code)
    sub(node, "faultString", fault.fault_string)
    sub(node, "id", fault.fault_id)
    sub(node, "description", fault.description)
    if fault.original_code:
        sub(node, "originalFaultCode", fault.original_code)
        sub(node, "originalFaultString", fault.original_string or fault.original_code)
        if fault.original_description:
            sub(node, "originalDescription", fault.original_description)
    return node


@dataclass(frozen=True)
class ResponseShape:
    """How a SOAP operation's answer looks: element name, namespace, and whether it carries ``outcome``."""

    namespace: str
    element: str
    outcome: bool = True


_RESPONSES: dict[str, ResponseShape] = {
    "verifyPaymentNotice": ResponseShape(NODE_FOR_PSP_NS, "verifyPaymentNoticeRes"),
    "activatePaymentNotice": ResponseShape(NODE_FOR_PSP_NS, "activatePaymentNoticeRes"),
    "activatePaymentNoticeV2": ResponseShape(NODE_FOR_PSP_NS, "activatePaymentNoticeV2Response"),
    "sendPaymentOutcome": ResponseShape(NODE_FOR_PSP_NS, "sendPaymentOutcomeRes"),
    "sendPaymentOutcomeV2": ResponseShape(NODE_FOR_PSP_NS, "sendPaymentOutcomeV2Response"),
    "paVerifyPaymentNotice": ResponseShape(PA_FOR_NODE_NS, "paVerifyPaymentNoticeRes"),
    "paGetPayment": ResponseShape(PA_FOR_NODE_NS, "paGetPaymentRes"),
    "paGetPaymentV2": ResponseShape(PA_FOR_NODE_NS, "paGetPaymentV2Response"),
    "paSendRT": ResponseShape(PA_FOR_NODE_NS, "paSendRTRes"),
    "paSendRTV2": ResponseShape(PA_FOR_NODE_NS, "paSendRTV2Response"),
    "nodoChiediElencoFlussiRendicontazione": ResponseShape(
        PPT_NS, "nodoChiediElencoFlussiRendicontazioneRisposta", outcome=False
    ),
    "nodoChiediFlussoRendicontazione": ResponseShape(
        PPT_NS, "nodoChiediFlussoRendicontazioneRisposta", outcome=False
    ),
}
_CUSTOM_KO: dict[str, Callable[[NodeFault], etree._Element]] = {}


def register_response(
    operation: str,
    *,
    namespace: str,
    element: str,
    outcome: bool = True,
    builder: Callable[[NodeFault], etree._Element] | None = None,
) -> None:
    """Teach ``ko_payload`` (and fault injection) the answer shape of another SOAP operation."""
    _RESPONSES[operation] = ResponseShape(namespace, element, outcome)
    if builder is not None:
        _CUSTOM_KO[operation] = builder


def ko_payload(operation: str, fault: NodeFault) -> etree._Element | None:
    """The KO answer element of ``operation`` carrying ``fault``, or None for an unknown operation."""
    if operation in _CUSTOM_KO:
        return _CUSTOM_KO[operation](fault)
    shape = _RESPONSES.get(operation)
    if shape is None:
        return None
    element = etree.Element(f"{{{shape.namespace}}}{shape.element}", nsmap={"ns": shape.namespace})
    if shape.outcome:
        sub(element, "outcome", "KO")
    fault_element(element, fault)
    return element


def system_error_response(operation: str | None) -> tuple[bytes, int]:
    """Body and status of an injected PPT_SYSTEM_ERROR for ``operation`` (SOAP Fault if unknown)."""
    fault = NodeFault("PPT_SYSTEM_ERROR", "fault injected by the sandbox")
    payload = ko_payload(operation, fault) if operation else None
    if payload is None:
        return soap_fault_envelope(
            faultcode="soapenv:Server", faultstring="PPT_SYSTEM_ERROR", detail=fault.description
        ), 500
    return envelope(payload), 200


def soap_response(payload: etree._Element | bytes, *, status_code: int = 200) -> Response:
    """A text/xml FastAPI Response with ``payload`` wrapped in an envelope (bytes are sent as they are)."""
    from fastapi import Response

    body = payload if isinstance(payload, bytes) else envelope(payload)
    return Response(content=body, status_code=status_code, media_type="text/xml; charset=utf-8")


def check_station(
    state: SandboxState, *, id_pa: str | None, id_broker: str, id_station: str, password: str | None
) -> StationConfig:
    """Authenticate an EC's request to the Node by broker, station and password."""
    with state.lock:
        station = state.stations.get(id_station)
        brokers = {s.id_broker for s in state.stations.values()}
        creditor = state.creditors.get(id_pa) if id_pa else None
    if id_broker not in brokers:
        raise NodeFault("PPT_INTERMEDIARIO_PA_SCONOSCIUTO", f"broker {id_broker} unknown")
    if station is None or station.id_broker != id_broker:
        raise NodeFault("PPT_STAZIONE_INT_PA_SCONOSCIUTA", f"station {id_station} unknown")
    if password != station.password:
        raise NodeFault("PPT_AUTENTICAZIONE", "wrong password")
    if id_pa is not None:
        if creditor is None:
            raise NodeFault("PPT_DOMINIO_SCONOSCIUTO", f"creditor {id_pa} unknown")
        if creditor.id_station != id_station:
            raise NodeFault("PPT_AUTORIZZAZIONE", f"station {id_station} does not serve {id_pa}")
    return station


@dataclass
class StationAnswer:
    """A station's answer, already checked: the payload element, its outcome, the fault when KO."""

    payload: etree._Element
    outcome: str
    raw: bytes
    fault_code: str | None = None
    fault_string: str | None = None
    fault_description: str | None = None


async def call_station(
    client: httpx.AsyncClient,
    *,
    state: SandboxState,
    station: StationConfig,
    operation: str,
    payload: etree._Element,
    timeout: float,
    response_element: str,
) -> StationAnswer:
    """Send ``payload`` to the station (validated first) and classify what comes back.

    Raises NodeFault with PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE (no URL, connection refused/reset),
    PPT_STAZIONE_INT_PA_TIMEOUT (no answer within ``timeout``) or PPT_STAZIONE_INT_PA_ERRORE_RESPONSE
    (HTTP error without a SOAP answer, malformed XML, wrong element, invalid against paForNode.xsd).
    A KO answer is returned, not raised: the caller decides (PPT_ERRORE_EMESSO_DA_PAA, retry, …).
    """
    # a message the Node sends must be valid; an invalid one is a sandbox bug, not a station fault
    errors = schema_errors(payload, PA_FOR_NODE_XSD)
    if errors:
        raise AssertionError(f"sandbox built an invalid {operation}: {errors[0]}")
    body = envelope(payload)
    endpoint = station.url or f"station:{station.id_station}"
    if not station.url:
        state.record(
            direction="out",
            endpoint=endpoint,
            operation=operation,
            status="unreachable",
            request=body.decode(),
        )
        raise NodeFault("PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE", f"station {station.id_station} has no URL")
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": operation, **station.headers}
    started = time.perf_counter()
    try:
        response = await client.post(station.url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        state.record(
            direction="out",
            endpoint=endpoint,
            operation=operation,
            status="timeout",
            request=body.decode(),
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        raise NodeFault("PPT_STAZIONE_INT_PA_TIMEOUT", f"no answer within {timeout:g}s") from exc
    except httpx.TransportError as exc:
        state.record(
            direction="out",
            endpoint=endpoint,
            operation=operation,
            status="unreachable",
            request=body.decode(),
            response=repr(exc),
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        raise NodeFault("PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE", f"{type(exc).__name__}: {exc}") from exc
    raw = response.content
    duration = (time.perf_counter() - started) * 1000
    state.record(
        direction="out",
        endpoint=endpoint,
        operation=operation,
        status=str(response.status_code),
        request=body.decode(),
        response=raw.decode("utf-8", "replace"),
        duration_ms=duration,
    )
    try:
        answer = parse_envelope(raw)
    except NodeFault as exc:
        raise NodeFault(
            "PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", f"HTTP {response.status_code}: {exc.description}"
        ) from exc
    if answer.tag != f"{{{PA_FOR_NODE_NS}}}{response_element}":
        raise NodeFault(
            "PPT_STAZIONE_INT_PA_ERRORE_RESPONSE",
            f"HTTP {response.status_code}: expected {response_element}, got {local_name(answer)}",
        )
    errors = schema_errors(answer, PA_FOR_NODE_XSD)
    if errors:
        raise NodeFault("PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", f"invalid {response_element}: {errors[0]}")
    outcome = text(answer, "outcome") or "KO"
    fault = child(answer, "fault")
    if outcome == "KO" and fault is None:
        raise NodeFault("PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", f"{response_element} KO without a fault")
    return StationAnswer(
        payload=answer,
        outcome=outcome,
        raw=raw,
        fault_code=text(fault, "faultCode") if fault is not None else None,
        fault_string=text(fault, "faultString") if fault is not None else None,
        fault_description=text(fault, "description") if fault is not None else None,
    )
