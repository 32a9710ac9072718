"""The legacy Node SOAP endpoint an EC calls: FR list and fetch, RPT and cart, RPT status, RT copy, RT push.

One POST route, ``/nodo/nodoPerPa`` (alias ``/nodo-auth/node-for-pa/v1``, the service address of
``wsdl/nodeForPa.wsdl``), answers every operation, chosen by the body element (SOAPAction is optional).
Requests are validated against the WSDL schemas (``wsdl/xsd/nodeForPa.xsd`` for the FR operations, the
schemas inside ``gad/wsdl/NodoPerPa.wsdl`` for the RPT ones, headers included) and every RPT against
``gad/xsd/PagInf_RPT_RT_6_2_0.xsd``; faults are answered inside the response element with HTTP 200, as the
Node does. Malformed envelopes get a SOAP Fault (HTTP 500).

Control routes: ``POST /sandbox/rpt/pay`` (the debtor pays a session or one RPT: the RT is built, added to
the transfer ledger and pushed to the station's ``legacy_url`` with retries), ``POST /sandbox/rpt/redeliver``,
``POST /sandbox/rpt/script`` (refuse an IUV's RPT or lose its RT), ``GET /sandbox/rpt/wallet`` (the redirect
target handed to the EC).

Scenario IUVs (by prefix): ``9901…`` refused at ``nodoInviaRPT``/``nodoInviaCarrelloRPT`` with
``PPT_SEMANTICA``; ``9902…`` accepted, but the RT is "lost" when paid (never pushed; the state becomes
``RT_ESITO_SCONOSCIUTO_PA``) and must be recovered with ``nodoChiediCopiaRT``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from models.settings import get_settings
from rules.xmlsafe import MalformedXMLError, UnsafeXMLError, parse_xml
from sandbox.soap import (
    NodeFault,
    check_station,
    envelope,
    fault_element,
    parse_envelope,
    register_response,
    soap_fault_envelope,
    sub,
    text,
    validate,
)
from sandbox.state import CreditorConfig, PaidTransfer, SandboxState, StationConfig, get_state

logger = logging.getLogger(__name__)

router = APIRouter()

NODO_PATH = "/nodo/nodoPerPa"
NODO_PATH_ALIAS = "/nodo-auth/node-for-pa/v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PPT_NS = "http://ws.pagamenti.telematici.gov/"
PPTHEAD_NS = "http://ws.pagamenti.telematici.gov/ppthead"
PAY_NS = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
NODE_FOR_PA_XSD = "wsdl/xsd/nodeForPa.xsd"

SCENARIO_REFUSE_PREFIX = "9901"
SCENARIO_LOST_RT_PREFIX = "9902"
RT_PUSH_TIMEOUT = 15.0
FR_WINDOW_DAYS = 30

FR_OPERATIONS = ("nodoChiediElencoFlussiRendicontazione", "nodoChiediFlussoRendicontazione")
RPT_OPERATIONS = ("nodoInviaRPT", "nodoInviaCarrelloRPT", "nodoChiediStatoRPT", "nodoChiediCopiaRT")


# ----------------------------------------------------------------------------------------------------
# Schemas (compiled once per process from the official files)


def _wsdl_schemas(relative: str) -> dict[str, etree.XMLSchema]:
    """The schemas embedded in a WSDL, compiled one by one and keyed by target namespace."""
    path = get_settings().spec_path(relative)
    root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    compiled: dict[str, etree.XMLSchema] = {}
    for schema in root.findall(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema"):
        # The inline schema borrows namespace prefixes from wsdl:definitions: re-root it with its full nsmap
        # and the WSDL's base URL so relative imports (../xsd/envelope.xsd) still resolve.
        standalone = etree.Element(schema.tag, nsmap=dict(schema.nsmap), attrib=dict(schema.attrib))
        for node in schema:
            standalone.append(copy.deepcopy(node))
        doc = etree.fromstring(etree.tostring(standalone), base_url=str(path))
        compiled[schema.get("targetNamespace", "")] = etree.XMLSchema(doc)
    return compiled


@lru_cache(maxsize=1)
def nodo_per_pa_schemas() -> dict[str, etree.XMLSchema]:
    """Schemas of gad/wsdl/NodoPerPa.wsdl (headers and bodies of the RPT operations), by namespace."""
    return _wsdl_schemas("gad/wsdl/NodoPerPa.wsdl")


@lru_cache(maxsize=1)
def pa_per_nodo_schemas() -> dict[str, etree.XMLSchema]:
    """Schemas of gad/wsdl/PaPerNodo.wsdl (paaInviaRT as the EC receives it), by namespace."""
    return _wsdl_schemas("gad/wsdl/PaPerNodo.wsdl")


@lru_cache(maxsize=1)
def rpt_rt_schema() -> etree.XMLSchema:
    """Schema of RPT and RT (gad/xsd/PagInf_RPT_RT_6_2_0.xsd)."""
    return etree.XMLSchema(file=str(get_settings().spec_path("gad/xsd/PagInf_RPT_RT_6_2_0.xsd")))


def _validate_inline(schema: etree.XMLSchema, element: etree._Element, what: str) -> None:
    if not schema.validate(element):
        first = next(iter(schema.error_log), None)
        raise NodeFault("PPT_SINTASSI_XSD", f"{what}: {first.message if first else 'invalid'}")


# ----------------------------------------------------------------------------------------------------
# State


@dataclass
class RtDelivery:
    """One attempt to push an RT to the EC."""

    at: datetime
    outcome: str
    detail: str


@dataclass
class RptRecord:
    """One RPT the Node accepted, and what became of it."""

    ec: str
    iuv: str
    ccp: str
    id_station: str
    id_broker: str
    session_id: str
    cart_id: str | None
    rpt_xml: bytes
    message_id: str
    request_date: date
    amount: Decimal
    transfers: list[tuple[Decimal, str, str]]  # (amount, causaleVersamento, datiSpecificiRiscossione)
    psp_id: str
    status: str = "RPT_ACCETTATA_NODO"
    history: list[tuple[datetime, str, str]] = field(default_factory=list)
    rt_xml: bytes | None = None
    rt_id: str | None = None
    deliveries: list[RtDelivery] = field(default_factory=list)


@dataclass
class LegacyState:
    """The legacy RPT/RT state of the sandbox (``SandboxState.legacy``)."""

    rpts: dict[tuple[str, str, str], RptRecord] = field(default_factory=dict)
    sessions: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    carts: set[str] = field(default_factory=set)
    refuse_iuvs: dict[str, str] = field(default_factory=dict)  # iuv -> fault code
    lose_rt_iuvs: set[str] = field(default_factory=set)
    checkout_carts: dict[str, Any] = field(default_factory=dict)  # sandbox.checkout's carts, by cart id


def legacy_state(state: SandboxState) -> LegacyState:
    """The legacy part of the state, created on first use (reset clears it)."""
    with state.lock:
        if state.legacy is None:
            state.legacy = LegacyState()
        return state.legacy


def _set_status(record: RptRecord, status: str, description: str) -> None:
    record.status = status
    record.history.append((datetime.now(UTC), status, description))


# ----------------------------------------------------------------------------------------------------
# Wire format


def _response(operation: str) -> etree._Element:
    return etree.Element(f"{{{PPT_NS}}}{operation}Risposta", nsmap={"ppt": PPT_NS})


def ko_element(operation: str, fault: NodeFault, *, serial: int | None = None) -> etree._Element:
    """The answer of an operation that failed with ``fault`` (mandatory fields of the answer filled)."""
    resp = _response(operation)
    node = fault_element(resp, fault)
    if serial is not None:
        sub(node, "serial", str(serial))
    if operation == "nodoInviaRPT":
        sub(resp, "esito", "KO")
    elif operation == "nodoInviaCarrelloRPT":
        sub(resp, "esitoComplessivoOperazione", "KO")
    elif operation == "nodoChiediStatoRPT":
        # esito is mandatory in this answer even with a fault; the state is left empty.
        sub(sub(resp, "esito"), "stato", "")
    return resp


def _ko_builder(operation: str) -> Callable[[NodeFault], etree._Element]:
    def build(fault: NodeFault) -> etree._Element:
        return ko_element(operation, fault)

    return build


for _operation in FR_OPERATIONS + RPT_OPERATIONS:
    # Lets core's fault injection answer a well-formed KO (PPT_SYSTEM_ERROR) for these operations too.
    register_response(
        _operation,
        namespace=PPT_NS,
        element=f"{_operation}Risposta",
        outcome=False,
        builder=_ko_builder(_operation),
    )


def _xml_response(content: bytes, status_code: int = 200) -> Response:
    return Response(content=content, status_code=status_code, media_type="text/xml; charset=utf-8")


# ----------------------------------------------------------------------------------------------------
# Authentication and lookup


def _authenticate(state: SandboxState, element: etree._Element, password: str | None) -> StationConfig:
    return check_station(
        state,
        id_pa=None,
        id_broker=text(element, "identificativoIntermediarioPA") or "",
        id_station=text(element, "identificativoStazioneIntermediarioPA") or "",
        password=password,
    )


def _creditor(
    state: SandboxState, ec: str | None, station: StationConfig, *, same_station: bool
) -> CreditorConfig:
    creditor = state.creditors.get(ec or "")
    if creditor is None:
        raise NodeFault("PPT_DOMINIO_SCONOSCIUTO", f"creditor {ec} unknown")
    if creditor.id_broker != station.id_broker or (
        same_station and creditor.id_station != station.id_station
    ):
        raise NodeFault("PPT_AUTORIZZAZIONE", f"station {station.id_station} does not serve {ec}")
    return creditor


def _fr_scope(state: SandboxState, body: etree._Element) -> tuple[set[str], str | None]:
    """The ECs and PSP an FR request may see (the broker's ECs, or the one named)."""
    from sandbox.settlement import reporting_state

    station = _authenticate(state, body, text(body, "password"))
    ec = text(body, "identificativoDominio")
    psp = text(body, "identificativoPSP")
    if ec:
        ecs = {_creditor(state, ec, station, same_station=False).fiscal_code}
    else:
        ecs = {c.fiscal_code for c in state.creditors.values() if c.id_broker == station.id_broker}
    if psp and psp not in {p.psp_id for p in state.psps} and not reporting_state(state).knows_psp(psp):
        raise NodeFault("PPT_PSP_SCONOSCIUTO", f"PSP {psp} unknown")
    return ecs, psp


# ----------------------------------------------------------------------------------------------------
# FR operations


def _fr_elenco(state: SandboxState, body: etree._Element) -> etree._Element:
    from sandbox.settlement import reporting_state

    ecs, psp = _fr_scope(state, body)
    since = datetime.now(UTC) - timedelta(days=FR_WINDOW_DAYS)
    with state.lock:
        flows = [
            f
            for f in reporting_state(state).latest_flows(ecs=ecs, psp_id=psp)
            if f.published is not None and f.published >= since
        ]
    resp = _response("nodoChiediElencoFlussiRendicontazione")
    elenco = sub(resp, "elencoFlussiRendicontazione")
    sub(elenco, "totRestituiti", str(len(flows)))
    for flow in flows:
        item = sub(elenco, "idRendicontazione")
        sub(item, "identificativoFlusso", flow.id_flusso)
        sub(
            item,
            "dataOraFlusso",
            flow.flow_date.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        )
    return resp


def _fr_flusso(state: SandboxState, body: etree._Element) -> etree._Element:
    from sandbox.settlement import reporting_state

    ecs, psp = _fr_scope(state, body)
    id_flusso = text(body, "identificativoFlusso") or ""
    with state.lock:
        found = [
            f for f in reporting_state(state).latest_flows(ecs=ecs, psp_id=psp) if f.id_flusso == id_flusso
        ]
    if not found:
        raise NodeFault("PPT_ID_FLUSSO_SCONOSCIUTO", f"flow {id_flusso} unknown")
    resp = _response("nodoChiediFlussoRendicontazione")
    sub(resp, "xmlRendicontazione", base64.b64encode(found[0].xml).decode("ascii"))
    return resp


# ----------------------------------------------------------------------------------------------------
# RPT operations


@dataclass
class _ParsedRpt:
    ec: str
    iuv: str
    ccp: str
    message_id: str
    request_date: date
    amount: Decimal
    transfers: list[tuple[Decimal, str, str]]
    xml: bytes


def _parse_rpt(encoded: str | None) -> _ParsedRpt:
    try:
        raw = base64.b64decode((encoded or "").encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", f"RPT is not base64: {exc}") from exc
    try:
        root = parse_xml(raw)
    except (MalformedXMLError, UnsafeXMLError) as exc:
        raise NodeFault("PPT_SINTASSI_EXTRAXSD", f"RPT unreadable: {exc}") from exc
    if root.tag != f"{{{PAY_NS}}}RPT":
        raise NodeFault("PPT_SINTASSI_XSD", f"RPT root element is {root.tag}")
    _validate_inline(rpt_rt_schema(), root, "RPT")
    ns = {"p": PAY_NS}
    dv = root.find("p:datiVersamento", ns)
    transfers = [
        (
            Decimal(single.findtext("p:importoSingoloVersamento", namespaces=ns)),
            single.findtext("p:causaleVersamento", namespaces=ns),
            single.findtext("p:datiSpecificiRiscossione", namespaces=ns),
        )
        for single in dv.findall("p:datiSingoloVersamento", ns)
    ]
    stamp = root.findtext("p:dataOraMessaggioRichiesta", namespaces=ns)
    try:
        request_date = datetime.fromisoformat(stamp).date()
    except ValueError:
        request_date = datetime.now(UTC).date()
    return _ParsedRpt(
        ec=root.findtext("p:dominio/p:identificativoDominio", namespaces=ns),
        iuv=dv.findtext("p:identificativoUnivocoVersamento", namespaces=ns),
        ccp=dv.findtext("p:codiceContestoPagamento", namespaces=ns),
        message_id=root.findtext("p:identificativoMessaggioRichiesta", namespaces=ns),
        request_date=request_date,
        amount=Decimal(dv.findtext("p:importoTotaleDaVersare", namespaces=ns)),
        transfers=transfers,
        xml=raw,
    )


def _check_rpt(
    legacy: LegacyState, rpt: _ParsedRpt, *, ec: str | None, iuv: str | None, ccp: str | None
) -> None:
    """The Node's semantic checks of one RPT against its envelope and the RPTs already received."""
    if (rpt.ec, rpt.iuv, rpt.ccp) != (ec, iuv, ccp):
        raise NodeFault("PPT_SEMANTICA", "idDominio, IUV or CCP of the RPT differ from the request's")
    if sum((t[0] for t in rpt.transfers), Decimal("0")) != rpt.amount:
        raise NodeFault("PPT_SEMANTICA", "importoTotaleDaVersare differs from the sum of the transfers")
    scripted = legacy.refuse_iuvs.get(rpt.iuv)
    if scripted or rpt.iuv.startswith(SCENARIO_REFUSE_PREFIX):
        raise NodeFault(scripted or "PPT_SEMANTICA", f"RPT refused (scenario IUV {rpt.iuv})")
    if (rpt.ec, rpt.iuv, rpt.ccp) in legacy.rpts:
        raise NodeFault("PPT_RPT_DUPLICATA", f"RPT {rpt.ec}/{rpt.iuv}/{rpt.ccp} already received")


def _new_session_id(state: SandboxState) -> str:
    # Drawn from the seeded generator so that a seeded run hands out the same sessions.
    with state.lock:
        return str(uuid.UUID(int=state.rng.getrandbits(128), version=4))


def _wallet_url(request: Request, session_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/sandbox/rpt/wallet?idSession={session_id}"


def _pick_psp(state: SandboxState, psp_id: str | None) -> str:
    # The Node (WISP/Checkout) lets the debtor choose; an unknown PSP in the RPT request is not refused.
    known = [p.psp_id for p in state.psps]
    if psp_id and psp_id in known:
        return psp_id
    return known[0] if known else (psp_id or "SANDBOXPSP")


def _store_rpt(
    state: SandboxState,
    legacy: LegacyState,
    rpt: _ParsedRpt,
    *,
    station: StationConfig,
    session_id: str,
    cart_id: str | None,
    psp_id: str,
) -> None:
    # The RT goes to the station of the RPT's own EC (another beneficiary of a cart may have its own).
    creditor = state.creditors.get(rpt.ec)
    own = state.stations.get(creditor.id_station) if creditor else None
    target = own or station
    record = RptRecord(
        ec=rpt.ec,
        iuv=rpt.iuv,
        ccp=rpt.ccp,
        id_station=target.id_station,
        id_broker=target.id_broker,
        session_id=session_id,
        cart_id=cart_id,
        rpt_xml=rpt.xml,
        message_id=rpt.message_id,
        request_date=rpt.request_date,
        amount=rpt.amount,
        transfers=rpt.transfers,
        psp_id=psp_id,
    )
    _set_status(record, "RPT_RICEVUTA_NODO", "RPT ricevuta")
    _set_status(record, "RPT_ACCETTATA_NODO", "RPT accettata")
    legacy.rpts[(rpt.ec, rpt.iuv, rpt.ccp)] = record
    legacy.sessions.setdefault(session_id, []).append((rpt.ec, rpt.iuv, rpt.ccp))


def _header(envelope_root: etree._Element, name: str) -> etree._Element:
    header = envelope_root.find(f"{{{SOAP_ENV}}}Header/{{{PPTHEAD_NS}}}{name}")
    if header is None:
        raise NodeFault("PPT_SINTASSI_XSD", f"SOAP header {name} missing")
    _validate_inline(nodo_per_pa_schemas()[PPTHEAD_NS], header, name)
    return header


def _invia_rpt(
    state: SandboxState, request: Request, envelope_root: etree._Element, body: etree._Element
) -> etree._Element:
    head = _header(envelope_root, "intestazionePPT")
    station = _authenticate(state, head, text(body, "password"))
    ec, iuv, ccp = (
        text(head, "identificativoDominio"),
        text(head, "identificativoUnivocoVersamento"),
        text(head, "codiceContestoPagamento"),
    )
    _creditor(state, ec, station, same_station=True)
    rpt = _parse_rpt(text(body, "rpt"))
    legacy = legacy_state(state)
    with state.lock:
        _check_rpt(legacy, rpt, ec=ec, iuv=iuv, ccp=ccp)
        session_id = _new_session_id(state)
        _store_rpt(
            state,
            legacy,
            rpt,
            station=station,
            session_id=session_id,
            cart_id=None,
            psp_id=_pick_psp(state, text(body, "identificativoPSP")),
        )
    resp = _response("nodoInviaRPT")
    sub(resp, "esito", "OK")
    sub(resp, "redirect", "1")
    sub(resp, "url", _wallet_url(request, session_id))
    return resp


def _invia_carrello(
    state: SandboxState, request: Request, envelope_root: etree._Element, body: etree._Element
) -> etree._Element:
    head = _header(envelope_root, "intestazioneCarrelloPPT")
    station = _authenticate(state, head, text(body, "password"))
    cart_id = text(head, "identificativoCarrello") or ""
    legacy = legacy_state(state)
    lista = next((c for c in body if isinstance(c.tag, str) and etree.QName(c).localname == "listaRPT"), None)
    elements = [] if lista is None else [c for c in lista if isinstance(c.tag, str)]
    parsed: list[_ParsedRpt] = []
    errors: list[tuple[int, NodeFault]] = []
    with state.lock:
        if cart_id in legacy.carts:
            raise NodeFault("PPT_ID_CARRELLO_DUPLICATO", f"cart {cart_id} already received")
        seen: set[tuple[str, str, str]] = set()
        for serial, element in enumerate(elements, start=1):
            ec, iuv, ccp = (
                text(element, "identificativoDominio"),
                text(element, "identificativoUnivocoVersamento"),
                text(element, "codiceContestoPagamento"),
            )
            try:
                if ec not in state.creditors:
                    raise NodeFault("PPT_DOMINIO_SCONOSCIUTO", f"creditor {ec} unknown")
                if serial == 1:
                    # The cart belongs to the station of its first EC; later ones may be other beneficiaries.
                    _creditor(state, ec, station, same_station=True)
                rpt = _parse_rpt(text(element, "rpt"))
                _check_rpt(legacy, rpt, ec=ec, iuv=iuv, ccp=ccp)
                if (rpt.ec, rpt.iuv, rpt.ccp) in seen:
                    raise NodeFault("PPT_RPT_DUPLICATA", f"RPT {ec}/{iuv}/{ccp} twice in the cart")
                seen.add((rpt.ec, rpt.iuv, rpt.ccp))
                parsed.append(rpt)
            except NodeFault as fault:
                errors.append((serial, fault))
        resp = _response("nodoInviaCarrelloRPT")
        if errors:
            first_serial, first = errors[0]
            node = fault_element(resp, first)
            sub(node, "serial", str(first_serial))
            sub(resp, "esitoComplessivoOperazione", "KO")
            lista_errori = sub(resp, "listaErroriRPT")
            for serial, error in errors:
                sub(fault_element(lista_errori, error), "serial", str(serial))
            return resp
        session_id = _new_session_id(state)
        psp_id = _pick_psp(state, text(body, "identificativoPSP"))
        legacy.carts.add(cart_id)
        for rpt in parsed:
            _store_rpt(
                state, legacy, rpt, station=station, session_id=session_id, cart_id=cart_id, psp_id=psp_id
            )
    sub(resp, "esitoComplessivoOperazione", "OK")
    sub(resp, "url", _wallet_url(request, session_id))
    return resp


def _lookup_rpt(state: SandboxState, body: etree._Element) -> RptRecord:
    station = _authenticate(state, body, text(body, "password"))
    ec = text(body, "identificativoDominio")
    _creditor(state, ec, station, same_station=False)
    key = (
        ec or "",
        text(body, "identificativoUnivocoVersamento") or "",
        text(body, "codiceContestoPagamento") or "",
    )
    with state.lock:
        record = legacy_state(state).rpts.get(key)
    if record is None:
        raise NodeFault("PPT_RPT_SCONOSCIUTA", f"RPT {key[0]}/{key[1]}/{key[2]} unknown")
    return record


def _stato_rpt(state: SandboxState, request: Request, body: etree._Element) -> etree._Element:
    record = _lookup_rpt(state, body)
    resp = _response("nodoChiediStatoRPT")
    esito = sub(resp, "esito")
    with state.lock:
        sub(esito, "stato", record.status)
        if record.rt_xml is None:
            sub(esito, "redirect", "1")
            sub(esito, "url", _wallet_url(request, record.session_id))
        for at, status, description in record.history:
            item = sub(esito, "elementoStoricoRPT")
            sub(item, "data", at.replace(tzinfo=None).isoformat(timespec="seconds"))
            sub(item, "stato", status)
            sub(item, "descrizione", description)
    return resp


def _copia_rt(state: SandboxState, body: etree._Element) -> etree._Element:
    record = _lookup_rpt(state, body)
    if record.rt_xml is None:
        raise NodeFault("PPT_RT_NONDISPONIBILE", f"no RT yet for {record.iuv}/{record.ccp}")
    resp = _response("nodoChiediCopiaRT")
    sub(resp, "tipoFirma", "")
    sub(resp, "rt", base64.b64encode(record.rt_xml).decode("ascii"))
    return resp


# ----------------------------------------------------------------------------------------------------
# The route


def _dispatch(
    state: SandboxState, request: Request, envelope_root: etree._Element, body: etree._Element, operation: str
) -> etree._Element:
    if operation in FR_OPERATIONS:
        validate(body, NODE_FOR_PA_XSD)
    else:
        _validate_inline(nodo_per_pa_schemas()[PPT_NS], body, operation)
    if operation == "nodoChiediElencoFlussiRendicontazione":
        return _fr_elenco(state, body)
    if operation == "nodoChiediFlussoRendicontazione":
        return _fr_flusso(state, body)
    if operation == "nodoInviaRPT":
        return _invia_rpt(state, request, envelope_root, body)
    if operation == "nodoInviaCarrelloRPT":
        return _invia_carrello(state, request, envelope_root, body)
    if operation == "nodoChiediStatoRPT":
        return _stato_rpt(state, request, body)
    return _copia_rt(state, body)


def _answer(state: SandboxState, request: Request, raw: bytes) -> tuple[bytes, int, str, str]:
    """(response bytes, HTTP status, operation, outcome) for one request body."""
    try:
        body = parse_envelope(raw)
    except NodeFault as fault:
        return (
            soap_fault_envelope(faultcode="soapenv:Client", faultstring=fault.code, detail=fault.description),
            500,
            "?",
            f"KO {fault.code}",
        )
    operation = etree.QName(body).localname
    if operation not in FR_OPERATIONS + RPT_OPERATIONS or etree.QName(body).namespace != PPT_NS:
        return (
            soap_fault_envelope(
                faultcode="soapenv:Client",
                faultstring="PPT_SINTASSI_EXTRAXSD",
                detail=f"operation {operation} not served here",
            ),
            500,
            operation,
            "KO",
        )
    envelope_root = body.getparent().getparent()
    try:
        answer = _dispatch(state, request, envelope_root, body, operation)
    except NodeFault as fault:
        logger.debug("nodo %s fault %s: %s", operation, fault.code, fault.description)
        answer = ko_element(operation, fault)
    code = answer.findtext("fault/faultCode")
    return envelope(answer), 200, operation, f"KO {code}" if code else "OK"


@router.post(NODO_PATH, summary="Legacy Node SOAP for ECs (nodeForPa FR operations, NodoPerPa RPT/RT)")
@router.post(NODO_PATH_ALIAS, include_in_schema=False)
async def nodo_per_pa(request: Request) -> Response:
    """Dispatch one legacy Node SOAP request by its body element."""
    state = get_state(request)
    raw = await request.body()
    # Handlers read shared state under the lock and may validate big documents: keep them off the event loop.
    content, status, operation, outcome = await run_in_threadpool(_answer, state, request, raw)
    # The app's exchange journal records the request and answer; the log line adds the business outcome.
    logger.info("nodo %s -> %s", operation, outcome)
    return _xml_response(content, status)


# ----------------------------------------------------------------------------------------------------
# Paying an RPT: the RT, the ledger and the push


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):.2f}"


def build_rt(
    record: RptRecord,
    *,
    paid: bool,
    psp_id: str,
    psp_name: str,
    iur: str,
    rt_id: str,
    pay_date: date,
    now: datetime,
) -> bytes:
    """The RT of one RPT (PagInf_RPT_RT_6_2_0.xsd), copying beneficiary, payer and versante from the RPT."""
    p = f"{{{PAY_NS}}}"
    rpt = parse_xml(record.rpt_xml)
    rt = etree.Element(f"{p}RT", nsmap={"pay_i": PAY_NS})

    def add(parent: etree._Element, name: str, value: str | None = None) -> etree._Element:
        el = etree.SubElement(parent, f"{p}{name}")
        if value is not None:
            el.text = value
        return el

    add(rt, "versioneOggetto", "6.2.0")
    dominio = add(rt, "dominio")
    add(dominio, "identificativoDominio", record.ec)
    add(dominio, "identificativoStazioneRichiedente", record.id_station)
    add(rt, "identificativoMessaggioRicevuta", rt_id)
    add(rt, "dataOraMessaggioRicevuta", now.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat())
    add(rt, "riferimentoMessaggioRichiesta", record.message_id)
    add(rt, "riferimentoDataRichiesta", record.request_date.isoformat())
    attestante = add(rt, "istitutoAttestante")
    ident = add(attestante, "identificativoUnivocoAttestante")
    add(ident, "tipoIdentificativoUnivoco", "G")
    add(ident, "codiceIdentificativoUnivoco", psp_id[:16].ljust(2, "0"))
    add(attestante, "denominazioneAttestante", (psp_name or psp_id)[:70])
    for name in ("enteBeneficiario", "soggettoVersante", "soggettoPagatore"):
        part = rpt.find(f"{p}{name}")
        if part is not None:
            rt.append(copy.deepcopy(part))
    dati = add(rt, "datiPagamento")
    add(dati, "codiceEsitoPagamento", "0" if paid else "1")
    add(dati, "importoTotalePagato", _money(record.amount if paid else Decimal("0")))
    add(dati, "identificativoUnivocoVersamento", record.iuv)
    add(dati, "CodiceContestoPagamento", record.ccp)
    for amount, causale, specifici in record.transfers:
        single = add(dati, "datiSingoloPagamento")
        add(single, "singoloImportoPagato", _money(amount if paid else Decimal("0")))
        add(single, "esitoSingoloPagamento", "ESEGUITO" if paid else "NON_ESEGUITO")
        add(single, "dataEsitoSingoloPagamento", pay_date.isoformat())
        add(single, "identificativoUnivocoRiscossione", iur if paid else "n/a")
        add(single, "causaleVersamento", causale)
        add(single, "datiSpecificiRiscossione", specifici)
    return etree.tostring(rt, xml_declaration=True, encoding="UTF-8")


def paa_invia_rt_envelope(record: RptRecord) -> bytes:
    """The paaInviaRT request the Node sends to the EC (gad/wsdl/PaPerNodo.wsdl), header included."""
    env = etree.Element(
        f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV, "ppt": PPT_NS, "ppthead": PPTHEAD_NS}
    )
    head = etree.SubElement(
        etree.SubElement(env, f"{{{SOAP_ENV}}}Header"), f"{{{PPTHEAD_NS}}}intestazionePPT"
    )
    sub(head, "identificativoIntermediarioPA", record.id_broker)
    sub(head, "identificativoStazioneIntermediarioPA", record.id_station)
    sub(head, "identificativoDominio", record.ec)
    sub(head, "identificativoUnivocoVersamento", record.iuv)
    sub(head, "codiceContestoPagamento", record.ccp)
    body = etree.SubElement(etree.SubElement(env, f"{{{SOAP_ENV}}}Body"), f"{{{PPT_NS}}}paaInviaRT")
    sub(body, "tipoFirma", "")
    sub(body, "rt", base64.b64encode(record.rt_xml or b"").decode("ascii"))
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _classify_rt_answer(answer: httpx.Response) -> tuple[str, str]:
    if answer.status_code >= 500 or answer.status_code == 429:
        return "FAIL", f"HTTP {answer.status_code}"
    try:
        payload = parse_envelope(answer.content)
    except NodeFault as fault:
        return "FAIL", f"HTTP {answer.status_code}: {fault.description}"
    inner = next((c for c in payload if isinstance(c.tag, str)), None)
    esito = text(inner, "esito")
    fault_code = text(inner, "fault", "faultCode")
    if esito == "OK" or fault_code == "PAA_RT_DUPLICATA":
        return "OK", fault_code or "OK"
    if esito == "KO" or fault_code:
        return "KO", fault_code or "KO"
    return "FAIL", f"HTTP {answer.status_code}: no esito in {etree.QName(payload).localname}"


def _push_once(state: SandboxState, record: RptRecord, station: StationConfig) -> tuple[str, str]:
    """One paaInviaRT call: ("OK" | "KO" | "FAIL", detail)."""
    payload = paa_invia_rt_envelope(record)
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "paaInviaRT", **station.headers}
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=RT_PUSH_TIMEOUT) as client:
            answer = client.post(station.legacy_url or "", content=payload, headers=headers)
    except httpx.HTTPError as exc:
        state.record(
            direction="out",
            endpoint=station.legacy_url or "",
            operation="paaInviaRT",
            status="unreachable",
            request=payload.decode(),
            response=repr(exc),
        )
        return "FAIL", f"{type(exc).__name__}: {exc}"
    outcome, detail = _classify_rt_answer(answer)
    logger.info(
        "paaInviaRT %s/%s -> %s (%s, %.0f ms)",
        record.ec,
        record.iuv,
        outcome,
        detail,
        (time.perf_counter() - started) * 1000,
    )
    state.record(
        direction="out",
        endpoint=station.legacy_url or "",
        operation="paaInviaRT",
        status=outcome,
        request=payload.decode(),
        response=answer.text,
    )
    return outcome, detail


def push_rt(state: SandboxState, record: RptRecord, *, attempts: int = 3, retry_delay: float = 0.2) -> bool:
    """Send the RT to the EC's paaInviaRT, retrying technical failures; True when the EC took it."""
    station = state.stations.get(record.id_station)
    if station is None or not station.legacy_url:
        _set_status(record, "RT_ESITO_SCONOSCIUTO_PA", "station without a paaInviaRT endpoint")
        return False
    for attempt in range(1, attempts + 1):
        outcome, detail = _push_once(state, record, station)
        record.deliveries.append(RtDelivery(datetime.now(UTC), outcome, detail))
        if outcome == "OK":
            _set_status(record, "RT_ACCETTATA_PA", "RT accettata dalla PA")
            return True
        if outcome == "KO":
            _set_status(record, "RT_RIFIUTATA_PA", f"RT rifiutata dalla PA: {detail}")
            return False
        if attempt < attempts:
            time.sleep(retry_delay * (2 ** (attempt - 1)))
    _set_status(record, "RT_ESITO_SCONOSCIUTO_PA", "RT not delivered")
    return False


class RptPayRequest(BaseModel):
    """The debtor pays a whole session (one RPT or a cart) or one RPT by IUV (and CCP)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id_sessione: str | None = Field(default=None, alias="idSessione")
    id_dominio: str | None = Field(default=None, alias="idDominio")
    iuv: str | None = None
    ccp: str | None = None
    outcome: str = Field(default="OK", pattern="^(OK|KO)$")
    psp: str | None = None
    pay_date: date | None = Field(default=None, alias="payDate")
    lost_rt: bool = Field(default=False, alias="lostRt")
    attempts: int = Field(default=3, ge=1, le=10)
    retry_delay: float = Field(default=0.2, ge=0, le=5, alias="retryDelay")


def _select(
    legacy: LegacyState, *, session: str | None, ec: str | None, iuv: str | None, ccp: str | None
) -> list[RptRecord]:
    if session:
        return [legacy.rpts[k] for k in legacy.sessions.get(session, [])]
    if not iuv:
        return []
    return [
        r
        for r in legacy.rpts.values()
        if r.iuv == iuv and (ccp is None or r.ccp == ccp) and (ec is None or r.ec == ec)
    ]


@router.post("/sandbox/rpt/pay", tags=["sandbox control"])
def pay_rpt(body: RptPayRequest, request: Request) -> JSONResponse:
    """Simulate the debtor paying: build the RTs, add paid transfers to the ledger, push the RTs to the EC."""
    state = get_state(request)
    legacy = legacy_state(state)
    with state.lock:
        records = _select(legacy, session=body.id_sessione, ec=body.id_dominio, iuv=body.iuv, ccp=body.ccp)
        if not records:
            return JSONResponse({"error": "RPT_NOT_FOUND", "detail": "no RPT matches"}, status_code=404)
        if any(r.rt_xml is not None for r in records):
            return JSONResponse({"error": "ALREADY_PAID", "detail": "an RT exists already"}, status_code=409)
        now = datetime.now(UTC)
        pay_date = body.pay_date or now.date()
        paid = body.outcome == "OK"
        for record in records:
            psp_id = _pick_psp(state, body.psp or record.psp_id)
            psp = next((p for p in state.psps if p.psp_id == psp_id), None)
            rt_id = f"RT{state.rng.getrandbits(56):017d}"
            iur = f"{state.rng.getrandbits(48):015d}"
            record.psp_id = psp_id
            record.rt_id = rt_id
            record.rt_xml = build_rt(
                record,
                paid=paid,
                psp_id=psp_id,
                psp_name=psp.name if psp else psp_id,
                iur=iur,
                rt_id=rt_id,
                pay_date=pay_date,
                now=now,
            )
            _set_status(record, "RT_GENERATA_NODO", "RT generata" if paid else "RT negativa generata")
            if paid:
                for index, (amount, _causale, _specifici) in enumerate(record.transfers, start=1):
                    state.transfers.append(
                        PaidTransfer(
                            ec_fiscal_code=record.ec,
                            iuv=record.iuv,
                            iur=iur,
                            transfer_index=index,
                            amount=amount,
                            outcome=0,
                            pay_date=pay_date,
                            psp_id=psp_id,
                            receipt_id=rt_id,
                        )
                    )
    results = []
    for record in records:
        lost = (
            body.lost_rt
            or record.iuv in legacy.lose_rt_iuvs
            or record.iuv.startswith(SCENARIO_LOST_RT_PREFIX)
        )
        if lost:
            # The Node "sent" it and never heard back: only nodoChiediCopiaRT recovers it.
            _set_status(record, "RT_ESITO_SCONOSCIUTO_PA", "RT inviata, esito sconosciuto")
            delivered = False
        else:
            delivered = push_rt(state, record, attempts=body.attempts, retry_delay=body.retry_delay)
        results.append(
            {
                "idDominio": record.ec,
                "iuv": record.iuv,
                "ccp": record.ccp,
                "rtId": record.rt_id,
                "stato": record.status,
                "delivered": delivered,
                "lost": lost,
                "attempts": len(record.deliveries),
            }
        )
    return JSONResponse({"outcome": body.outcome, "rts": results})


class RptSelect(BaseModel):
    """A session, or one RPT by IUV (and CCP), and how hard to try."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id_sessione: str | None = Field(default=None, alias="idSessione")
    id_dominio: str | None = Field(default=None, alias="idDominio")
    iuv: str | None = None
    ccp: str | None = None
    attempts: int = Field(default=3, ge=1, le=10)
    retry_delay: float = Field(default=0.2, ge=0, le=5, alias="retryDelay")


@router.post("/sandbox/rpt/redeliver", tags=["sandbox control"])
def redeliver_rt(body: RptSelect, request: Request) -> JSONResponse:
    """Push again the RTs the EC has not acknowledged."""
    state = get_state(request)
    legacy = legacy_state(state)
    with state.lock:
        records = [
            r
            for r in _select(legacy, session=body.id_sessione, ec=body.id_dominio, iuv=body.iuv, ccp=body.ccp)
            if r.rt_xml is not None
        ]
    results = []
    for record in records:
        delivered = record.status == "RT_ACCETTATA_PA" or push_rt(
            state, record, attempts=body.attempts, retry_delay=body.retry_delay
        )
        results.append({"iuv": record.iuv, "ccp": record.ccp, "stato": record.status, "delivered": delivered})
    return JSONResponse({"rts": results})


class RptScript(BaseModel):
    """How the Node treats an IUV from now on: refuse its RPT with a fault, lose its RT, or back to normal."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    iuv: str
    action: str = Field(pattern="^(refuse|lose_rt|clear)$")
    fault_code: str = Field(default="PPT_SEMANTICA", alias="faultCode")


@router.post("/sandbox/rpt/script", tags=["sandbox control"])
def script_rpt(body: RptScript, request: Request) -> JSONResponse:
    """Script the Node's behaviour for one IUV."""
    state = get_state(request)
    legacy = legacy_state(state)
    with state.lock:
        legacy.refuse_iuvs.pop(body.iuv, None)
        legacy.lose_rt_iuvs.discard(body.iuv)
        if body.action == "refuse":
            legacy.refuse_iuvs[body.iuv] = body.fault_code
        elif body.action == "lose_rt":
            legacy.lose_rt_iuvs.add(body.iuv)
    return JSONResponse({"iuv": body.iuv, "action": body.action})


@router.get("/sandbox/rpt/wallet", tags=["sandbox control"])
def wallet(idSession: str, request: Request) -> JSONResponse:  # noqa: N803 - the Node's own parameter name
    """What the debtor sees after the redirect: the RPTs of the session and how to pay them."""
    state = get_state(request)
    legacy = legacy_state(state)
    with state.lock:
        records = _select(legacy, session=idSession, ec=None, iuv=None, ccp=None)
        if not records:
            return JSONResponse({"error": "SESSION_NOT_FOUND"}, status_code=404)
        return JSONResponse(
            {
                "idSessione": idSession,
                "rpts": [
                    {
                        "idDominio": r.ec,
                        "iuv": r.iuv,
                        "ccp": r.ccp,
                        "importo": _money(r.amount),
                        "stato": r.status,
                    }
                    for r in records
                ],
                "pay": {"method": "POST", "path": "/sandbox/rpt/pay", "body": {"idSessione": idSession}},
            }
        )


__all__ = [
    "LegacyState",
    "NODO_PATH",
    "NODO_PATH_ALIAS",
    "RptRecord",
    "build_rt",
    "ko_element",
    "legacy_state",
    "nodo_per_pa_schemas",
    "pa_per_nodo_schemas",
    "paa_invia_rt_envelope",
    "push_rt",
    "router",
    "rpt_rt_schema",
]
