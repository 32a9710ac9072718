"""paaInviaRT (``gad/wsdl/PaPerNodo.wsdl``): the Node delivers the RT of an RPT we sent; stored idempotently.

The request (SOAP header ``intestazionePPT`` and body) is checked against the schemas inside the WSDL and
the RT against ``PagInf_RPT_RT_6_2_0.xsd``; the caller is authenticated like the station (``web.station``).
The RT becomes a receipt through ``store.rpt.apply_rt`` → ``accept_receipt``, exactly as a receipt pushed
to the station: position, collections, notification. Faults are answered inside ``paaInviaRTRisposta``
(HTTP 200): ``PAA_RPT_SCONOSCIUTA`` for an RPT we never sent, ``PAA_RT_DUPLICATA`` for a different RT of an
attempt that has one; the same RT again is answered OK.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import time
from functools import lru_cache

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from lxml import etree
from sqlmodel import Session

from connectors.journal import EventJournal
from connectors.pagopa.nodo_rpt import rpt_rt_errors
from models.db import get_engine
from models.journal import Outcome, Role
from models.payments import ReceiptSource
from models.settings import get_settings
from rules.rpt import RptError, parse_rt, rt_problems
from rules.xmlsafe import local_name, parse_xml
from store.rpt import RT_DUPLICATE, RT_UNEXPECTED, apply_rt, find_rpt_attempt
from web import soap
from web.station import authenticated, registry_cache

log = logging.getLogger(__name__)

WSDL = "gad/wsdl/PaPerNodo.wsdl"
PPT_NS = "http://ws.pagamenti.telematici.gov/"
PPTHEAD_NS = "http://ws.pagamenti.telematici.gov/ppthead"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
OPERATION = "paaInviaRT"

FAULT_STRINGS = {
    "PAA_SINTASSI_EXTRAXSD": "Errore di sintassi extra XSD",
    "PAA_SINTASSI_XSD": "Errore di sintassi XSD",
    "PAA_ID_DOMINIO_ERRATO": "La PAA non corrisponde al Dominio indicato",
    "PAA_ID_INTERMEDIARIO_ERRATO": "Identificativo intermediario non corrispondente",
    "PAA_STAZIONE_INT_ERRATA": "Stazione intermediario non corrispondente",
    "PAA_RPT_SCONOSCIUTA": "La RT si riferisce a una RPT sconosciuta",
    "PAA_RT_DUPLICATA": "La RT e' gia' stata ricevuta",
    "PAA_TIPOFIRMA_SCONOSCIUTO": "Il tipo firma richiesto non e' supportato",
    "PAA_SEMANTICA": "Errore semantico",
    "PAA_SYSTEM_ERROR": "Errore generico",
}


class RtFault(Exception):
    """A fault paaInviaRT answers with (esito KO)."""

    def __init__(self, code: str, *, id_dominio: str, description: str | None = None) -> None:
        self.code, self.id_dominio = code, id_dominio
        self.description = description or FAULT_STRINGS.get(code, code)
        super().__init__(f"{code}: {self.description}")


@lru_cache(maxsize=1)
def pa_per_nodo_schemas() -> dict[str, etree.XMLSchema]:
    """The schemas inside PaPerNodo.wsdl (header and body of paaInviaRT), by target namespace."""
    path = get_settings().spec_path(WSDL)
    root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    out: dict[str, etree.XMLSchema] = {}
    for schema in root.findall(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema"):
        # an inline schema borrows prefixes from wsdl:definitions: re-root it with its full namespace map
        standalone = etree.Element(schema.tag, nsmap=dict(schema.nsmap), attrib=dict(schema.attrib))
        for node in schema:
            standalone.append(copy.deepcopy(node))
        out[schema.get("targetNamespace", "")] = etree.XMLSchema(
            etree.fromstring(etree.tostring(standalone), base_url=str(path))
        )
    return out


def _invalid(schema: etree.XMLSchema, element: etree._Element) -> str | None:
    if schema.validate(etree.ElementTree(copy.deepcopy(element))):
        return None
    first = next(iter(schema.error_log), None)
    return first.message if first is not None else "invalid"


def answer(*, fault: RtFault | None = None) -> etree._Element:
    """The paaInviaRTRisposta element: esito OK, or KO with its fault."""
    outer = etree.Element(f"{{{PPT_NS}}}paaInviaRTRisposta", nsmap={"ppt": PPT_NS})
    inner = soap.sub(outer, "paaInviaRTRisposta")
    if fault is not None:
        f = soap.sub(inner, "fault")
        soap.sub(f, "faultCode", fault.code)
        soap.sub(f, "faultString", FAULT_STRINGS.get(fault.code, fault.code))
        soap.sub(f, "id", fault.id_dominio or "-")
        soap.sub(f, "description", fault.description[:1000])
    soap.sub(inner, "esito", "KO" if fault else "OK")
    return outer


class _Request:
    """One paaInviaRT request, parsed: its header fields and its body element."""

    def __init__(self, raw: bytes) -> None:
        try:
            root = parse_xml(raw)
        except ValueError as exc:
            raise soap.SoapSyntaxError(str(exc)) from exc
        if root.tag != f"{{{soap.SOAP_NS}}}Envelope":
            raise soap.SoapSyntaxError("the root element is not a SOAP 1.1 Envelope")
        self.header = root.find(f"{{{soap.SOAP_NS}}}Header/{{{PPTHEAD_NS}}}intestazionePPT")
        body = root.find(f"{{{soap.SOAP_NS}}}Body")
        children = [c for c in (body if body is not None else []) if isinstance(c.tag, str)]
        if len(children) != 1:
            raise soap.SoapSyntaxError("the SOAP Body must hold one element")
        self.body = children[0]
        if self.body.tag != f"{{{PPT_NS}}}{OPERATION}":
            raise soap.SoapSyntaxError(f"unknown operation {local_name(self.body)}")
        self.id_dominio = soap.text(self.header, "identificativoDominio") or ""
        self.iuv = soap.text(self.header, "identificativoUnivocoVersamento") or ""
        self.ccp = soap.text(self.header, "codiceContestoPagamento") or ""
        self.broker = soap.text(self.header, "identificativoIntermediarioPA")
        self.station = soap.text(self.header, "identificativoStazioneIntermediarioPA") or ""

    def check_syntax(self) -> None:
        if self.header is None:
            raise RtFault(
                "PAA_SINTASSI_XSD", id_dominio="", description="SOAP header intestazionePPT missing"
            )
        schemas = pa_per_nodo_schemas()
        for schema_ns, element in ((PPTHEAD_NS, self.header), (PPT_NS, self.body)):
            problem = _invalid(schemas[schema_ns], element)
            if problem:
                raise RtFault("PAA_SINTASSI_XSD", id_dominio=self.id_dominio, description=problem[:500])

    def check_ids(self) -> None:
        registry = registry_cache.get()
        if self.broker != registry.broker:
            raise RtFault("PAA_ID_INTERMEDIARIO_ERRATO", id_dominio=self.id_dominio)
        creditor = registry.creditors.get(self.id_dominio)
        if creditor is None or not creditor.enabled:
            raise RtFault("PAA_ID_DOMINIO_ERRATO", id_dominio=self.id_dominio)
        station = registry.stations.get(self.station)
        if station is None or not station.enabled or creditor.id_stazione != self.station:
            raise RtFault("PAA_STAZIONE_INT_ERRATA", id_dominio=self.id_dominio)

    def rt_xml(self) -> bytes:
        tipo_firma = soap.text(self.body, "tipoFirma")
        if tipo_firma not in (None, "0"):
            raise RtFault(
                "PAA_TIPOFIRMA_SCONOSCIUTO",
                id_dominio=self.id_dominio,
                description=f"tipoFirma {tipo_firma} non supportato",
            )
        try:
            xml = base64.b64decode((soap.text(self.body, "rt") or "").encode("ascii"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RtFault(
                "PAA_SINTASSI_EXTRAXSD", id_dominio=self.id_dominio, description=f"rt is not base64: {exc}"
            ) from exc
        try:
            errors = rpt_rt_errors(xml)
        except ValueError as exc:
            raise RtFault(
                "PAA_SINTASSI_EXTRAXSD",
                id_dominio=self.id_dominio,
                description=f"rt is not readable XML: {exc}"[:500],
            ) from exc
        if errors:
            raise RtFault(
                "PAA_SINTASSI_XSD", id_dominio=self.id_dominio, description=f"RT: {errors[0]}"[:500]
            )
        return xml


def _apply(session: Session, request: _Request, xml: bytes, keys: dict[str, str | None]) -> None:
    try:
        rt = parse_rt(xml)
    except (RptError, ValueError) as exc:
        raise RtFault(
            "PAA_SINTASSI_EXTRAXSD", id_dominio=request.id_dominio, description=str(exc)[:500]
        ) from exc
    keys["receipt_id"] = rt.message_id
    attempt = find_rpt_attempt(session, id_dominio=request.id_dominio, iuv=request.iuv, ccp=request.ccp)
    if attempt is None:
        raise RtFault(
            "PAA_RPT_SCONOSCIUTA",
            id_dominio=request.id_dominio,
            description=f"nessuna RPT {request.id_dominio}/{request.iuv}/{request.ccp}",
        )
    keys["nav"] = attempt.nav
    problems = rt_problems(
        rt, id_dominio=request.id_dominio, iuv=request.iuv, ccp=request.ccp, amount=attempt.amount
    )
    if problems:
        raise RtFault("PAA_SEMANTICA", id_dominio=request.id_dominio, description="; ".join(problems)[:1000])
    applied = apply_rt(session, attempt=attempt, rt=rt, rt_xml=xml, source=ReceiptSource.RT)
    if applied.status == RT_DUPLICATE:
        raise RtFault(
            "PAA_RT_DUPLICATA",
            id_dominio=request.id_dominio,
            description=f"la RPT {request.iuv}/{request.ccp} ha gia' una RT diversa",
        )
    if applied.status == RT_UNEXPECTED:
        raise RtFault(
            "PAA_SEMANTICA",
            id_dominio=request.id_dominio,
            description=f"la RPT {request.iuv}/{request.ccp} e' nello stato {attempt.state}",
        )


def handle(
    raw: bytes, headers: dict[str, str], client_host: str | None, journal: EventJournal | None = None
) -> tuple[int, bytes]:
    """Answer one paaInviaRT request: (HTTP status, body). Faults are KO answers with HTTP 200."""
    journal = journal or EventJournal()
    started = time.perf_counter()
    keys: dict[str, str | None] = {}
    outcome, fault_code, status = Outcome.OK, None, 200
    try:
        request = _Request(raw)
        keys |= {
            "id_dominio": request.id_dominio or None,
            "iuv": request.iuv or None,
            "ccp": request.ccp or None,
        }
        registry = registry_cache.get()
        station = registry.stations.get(request.station)
        callers = [station] if station is not None else list(registry.stations.values())
        if not any(authenticated(s, headers, client_host) for s in callers):
            outcome, status = Outcome.FAIL, 401
            return 401, soap.soap_fault(code="Client", message="caller not authenticated")
        with Session(get_engine(), expire_on_commit=False) as session:
            try:
                request.check_syntax()
                request.check_ids()
                _apply(session, request, request.rt_xml(), keys)
                session.commit()
                out = answer()
            except RtFault as fault:
                session.rollback()
                outcome, fault_code = Outcome.KO, fault.code
                out = answer(fault=fault)
        problem = _invalid(pa_per_nodo_schemas()[PPT_NS], out)
        if problem:  # our own answer: a bug, never sent as it is
            log.error("paaInviaRT built an invalid answer: %s", problem)
            out = answer(fault=RtFault("PAA_SYSTEM_ERROR", id_dominio=request.id_dominio))
        return 200, soap.envelope(out)
    except soap.SoapSyntaxError as exc:
        outcome, fault_code, status = Outcome.KO, "PAA_SINTASSI_EXTRAXSD", 400
        return 400, soap.soap_fault(code="Client", message=str(exc)[:500])
    except Exception:
        log.exception("paaInviaRT failure")
        outcome, status = Outcome.FAIL, 200
        return 200, soap.envelope(
            answer(fault=RtFault("PAA_SYSTEM_ERROR", id_dominio=str(keys.get("id_dominio") or "")))
        )
    finally:
        journal.record(
            component="rt_legacy",
            operation=OPERATION,
            role=Role.SERVER,
            outcome=outcome,
            duration_ms=int((time.perf_counter() - started) * 1000),
            keys=keys,
            request=raw,
            http_status=status,
            fault_code=fault_code,
        )


router = APIRouter()


@router.post("", summary="paaInviaRT (PaPerNodo SOAP)")
async def paa_invia_rt(request: Request) -> Response:
    """The SOAP endpoint the Node delivers RTs to (SOAPAction paaInviaRT)."""
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    status, body = await run_in_threadpool(
        handle, raw, headers, request.client.host if request.client else None
    )
    return Response(body, status_code=status, media_type="text/xml; charset=utf-8")
