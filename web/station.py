"""The station pagoPA calls (paForNode, Modello Unico): verify, getPayment(V2), sendRT(V2)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from lxml import etree
from sqlmodel import Session, select

from connectors.journal import EventJournal
from connectors.secrets import SecretNotFoundError, resolve_secret
from models.db import get_engine
from models.journal import Outcome, Role
from models.payments import ReceiptSource
from models.positions import Position, PositionItem
from models.registry import Broker, Creditor, DebtType, Station
from models.settings import get_settings
from rules.positions import italian_today
from rules.receipts import receipt_from_xml
from rules.station import (
    FAR_DUE_DATE,
    StationFault,
    TransferOut,
    payability_fault,
    remittance_for,
    transfer_category,
)
from store.payments import accept_receipt, record_attempt
from web import soap

log = logging.getLogger(__name__)

RESPONSES = {
    "paVerifyPaymentNoticeReq": ("paVerifyPaymentNotice", "paVerifyPaymentNoticeRes"),
    "paGetPaymentReq": ("paGetPayment", "paGetPaymentRes"),
    "paGetPaymentV2Request": ("paGetPaymentV2", "paGetPaymentV2Response"),
    "paSendRTReq": ("paSendRT", "paSendRTRes"),
    "paSendRTV2Request": ("paSendRTV2", "paSendRTV2Response"),
}


@dataclass(frozen=True)
class _Registry:
    broker: str | None
    stations: dict[str, Station]
    creditors: dict[str, Creditor]
    loaded: float


class _RegistryCache:
    """The part of the registry the station needs, reloaded every few seconds (it changes rarely)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: _Registry | None = None
        self._secrets: dict[str, str | None] = {}

    def get(self) -> _Registry:
        ttl = get_settings().registry_cache_seconds
        with self._lock:
            if self._value is None or time.monotonic() - self._value.loaded > ttl:
                # a session of its own, detached afterwards: request sessions roll back and would expire these
                with Session(get_engine(), expire_on_commit=False) as session:
                    broker = session.exec(select(Broker)).first()
                    stations = list(session.exec(select(Station)).all())
                    creditors = list(session.exec(select(Creditor)).all())
                    session.expunge_all()
                self._value = _Registry(
                    broker=broker.id_intermediario if broker else None,
                    stations={s.id_stazione: s for s in stations},
                    creditors={c.id_dominio: c for c in creditors}, loaded=time.monotonic())
                self._secrets.clear()
            return self._value

    def secret(self, ref: str | None) -> str | None:
        if not ref:
            return None
        with self._lock:
            if ref not in self._secrets:
                try:
                    value = resolve_secret(ref)
                except SecretNotFoundError:
                    log.error("station authentication secret %s is not available", ref)
                    value = None
                self._secrets[ref] = value.get_secret_value() if value else None
            return self._secrets[ref]

    def clear(self) -> None:
        with self._lock:
            self._value = None
            self._secrets.clear()


registry_cache = _RegistryCache()


def address_allowed(client_host: str | None, allowed_ips: str | None) -> bool:
    """Whether the caller's address is one of the allowed addresses or networks (CIDR), compared as addresses.

    ``client_host`` is the peer uvicorn reports: X-Forwarded-For counts only from its trusted proxies
    (FORWARDED_ALLOW_IPS). An IPv4-mapped IPv6 peer counts as its IPv4 address; a malformed entry matches
    nobody.
    """
    try:
        address = ipaddress.ip_address(client_host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for entry in (allowed_ips or "").split(","):
        try:
            if address in ipaddress.ip_network(entry.strip()):  # "10.0.0.5/24" is ambiguous: nobody
                return True
        except ValueError:
            continue
    return False


def authenticated(station: Station, headers: dict[str, str], client_host: str | None) -> bool:
    """Whether the caller passes the station's inbound authentication (subscription key, cert header, IP)."""
    method = station.auth_method
    if method == "IP_ALLOW_LIST":
        return address_allowed(client_host, station.allowed_ips)
    expected = registry_cache.secret(station.auth_secret_ref)
    if not expected:
        return False
    header = "ocp-apim-subscription-key" if method == "SUBSCRIPTION_KEY" else "x-client-cert-fingerprint"
    given = headers.get(header, "")
    return hmac.compare_digest(given.encode(), expected.encode())


def _response(name: str, *, fault: StationFault | None = None) -> etree._Element:
    element = soap.new(name)
    soap.sub(element, "outcome", "KO" if fault else "OK")
    if fault:
        f = soap.sub(element, "fault")
        soap.sub(f, "faultCode", fault.code)
        soap.sub(f, "faultString", fault.fault_string)
        soap.sub(f, "id", fault.id_dominio)
        soap.sub(f, "description", fault.description[:1000])
    return element


def _subject(parent: etree._Element, name: str, *, kind: str, identifier: str, full_name: str,
             email: str | None = None) -> None:
    s = soap.sub(parent, name)
    uid = soap.sub(s, "uniqueIdentifier")
    soap.sub(uid, "entityUniqueIdentifierType", kind if kind in ("F", "G") else "F")
    soap.sub(uid, "entityUniqueIdentifierValue", identifier[:16] if len(identifier) >= 2 else "ANONIMO")
    soap.sub(s, "fullName", full_name[:70] or "ANONIMO")
    if email:
        soap.sub(s, "e-mail", email)


class _Call:
    """One station request: parsed, checked and answered, with its journal record."""

    def __init__(self, session: Session, payload: etree._Element, request_name: str) -> None:
        self.session = session
        self.payload = payload
        self.operation, self.response_name = RESPONSES[request_name]
        self.id_pa = soap.text(payload, "idPA") or ""
        self.keys: dict[str, str | None] = {"id_dominio": self.id_pa or None,
                                            "nav": soap.text(payload, "qrCode", "noticeNumber")
                                            or soap.text(payload, "receipt", "noticeNumber")}

    def check_ids(self, registry: _Registry) -> Creditor:
        station_id = soap.text(self.payload, "idStation")
        if soap.text(self.payload, "idBrokerPA") != registry.broker:
            raise StationFault("PAA_ID_INTERMEDIARIO_ERRATO", id_dominio=self.id_pa)
        creditor = registry.creditors.get(self.id_pa)
        if creditor is None or not creditor.enabled:
            raise StationFault("PAA_ID_DOMINIO_ERRATO", id_dominio=self.id_pa)
        station = registry.stations.get(station_id or "")
        if station is None or not station.enabled or creditor.id_stazione != station_id:
            raise StationFault("PAA_STAZIONE_INT_ERRATA", id_dominio=self.id_pa)
        return creditor

    def _payable(self, creditor: Creditor) -> Position:
        nav = soap.text(self.payload, "qrCode", "noticeNumber") or ""
        if soap.text(self.payload, "qrCode", "fiscalCode") != creditor.id_dominio:
            raise StationFault("PAA_ID_DOMINIO_ERRATO", id_dominio=self.id_pa,
                               description="qrCode.fiscalCode differs from idPA")
        position = self.session.exec(select(Position).where(Position.id_dominio == creditor.id_dominio,
                                                            Position.nav == nav)).first()
        fault = payability_fault(state=position.state if position else None,
                                 due_date=position.due_date if position else None, today=italian_today())
        if fault:
            raise StationFault(fault, id_dominio=self.id_pa)
        assert position is not None
        self.keys["iuv"] = position.iuv
        return position

    def verify(self, creditor: Creditor) -> etree._Element:
        position = self._payable(creditor)
        items = self._items(position)
        out = _response(self.response_name)
        option = soap.sub(soap.sub(out, "paymentList"), "paymentOptionDescription")
        soap.sub(option, "amount", soap.amount(position.amount))
        soap.sub(option, "options", "EQ")
        soap.sub(option, "dueDate", (position.due_date or FAR_DUE_DATE).isoformat())
        soap.sub(option, "detailDescription", position.causale[:140])
        soap.sub(option, "allCCP", "true" if items and all(i.postal for i in items) else "false")
        soap.sub(out, "paymentDescription", position.causale[:140])
        soap.sub(out, "fiscalCodePA", creditor.id_dominio)
        soap.sub(out, "companyName", creditor.name[:140])
        if creditor.sector:
            soap.sub(out, "officeName", creditor.sector[:140])
        return out

    def _items(self, position: Position) -> list[PositionItem]:
        return list(self.session.exec(select(PositionItem).where(PositionItem.position_id == position.id)
                                      .order_by(PositionItem.item_index)).all())

    def get_payment(self, creditor: Creditor, registry: _Registry, *, v2: bool) -> etree._Element:
        position = self._payable(creditor)
        items = self._items(position)
        requested = soap.text(self.payload, "amount")
        if requested is not None and Decimal(requested) != position.amount:
            raise StationFault(
                "PAA_SEMANTICA", id_dominio=self.id_pa,
                description=f"amount {requested} differs from the amount due {position.amount}")
        debt_type = self.session.exec(select(DebtType).where(DebtType.id_dominio == position.id_dominio,
                                                             DebtType.code == position.debt_type)).first()
        transfers = [
            TransferOut(id_transfer=i.item_index, amount=i.amount, fiscal_code=i.id_dominio,
                        company_name=registry.creditors[i.id_dominio].name
                        if i.id_dominio in registry.creditors else None, iban=i.iban,
                        remittance=remittance_for(iuv=position.iuv or "", amount=i.amount,
                                                  description=i.description),
                        category=transfer_category(item_taxonomy=None,
                                                   position_taxonomy=position.taxonomy or
                                                   (debt_type.taxonomy if debt_type else None)),
                        stamp=(i.stamp_hash or "", i.stamp_type or "", i.stamp_province or "")
                        if i.kind == "STAMP" else None)
            for i in items
        ]
        if not v2 and any(t.stamp for t in transfers):
            raise StationFault("PAA_SEMANTICA", id_dominio=self.id_pa,
                               description="a digital stamp needs paGetPaymentV2")
        record_attempt(self.session, position=position, payment_note=soap.text(self.payload, "paymentNote"))
        out = _response(self.response_name)
        data = soap.sub(out, "data")
        soap.sub(data, "creditorReferenceId", position.iuv)
        soap.sub(data, "paymentAmount", soap.amount(position.amount))
        soap.sub(data, "dueDate", (position.due_date or FAR_DUE_DATE).isoformat())
        soap.sub(data, "description", position.causale[:140])
        soap.sub(data, "companyName", creditor.name[:140])
        if creditor.sector:
            soap.sub(data, "officeName", creditor.sector[:140])
        _subject(data, "debtor", kind=position.debtor_type, identifier=position.debtor_id,
                 full_name=position.debtor_name, email=position.debtor_email)
        transfer_list = soap.sub(data, "transferList")
        for t in transfers:
            el = soap.sub(transfer_list, "transfer")
            soap.sub(el, "idTransfer", t.id_transfer)
            soap.sub(el, "transferAmount", soap.amount(t.amount))
            soap.sub(el, "fiscalCodePA", t.fiscal_code)
            if v2 and t.company_name:
                soap.sub(el, "companyName", t.company_name[:140])
            if t.stamp:
                stamp = soap.sub(el, "richiestaMarcaDaBollo")
                soap.sub(stamp, "hashDocumento", t.stamp[0])
                soap.sub(stamp, "tipoBollo", t.stamp[1])
                soap.sub(stamp, "provinciaResidenza", t.stamp[2])
            else:
                soap.sub(el, "IBAN", t.iban)
            soap.sub(el, "remittanceInformation", t.remittance)
            soap.sub(el, "transferCategory", t.category)
        return out

    def send_rt(self, creditor: Creditor, raw: bytes) -> etree._Element:
        try:
            receipt = receipt_from_xml(self.payload, id_pa=self.id_pa, raw=raw)
        except ValueError as exc:  # schema-valid yet unusable: blank ids, a time beyond the calendar
            raise StationFault("PAA_SEMANTICA", id_dominio=self.id_pa, description=str(exc)[:500]) from exc
        self.keys |= {"receipt_id": receipt.receipt_id, "iuv": receipt.iuv}
        problems = receipt.problems()
        if problems:
            raise StationFault("PAA_SEMANTICA", id_dominio=self.id_pa, description="; ".join(problems))
        outcome = accept_receipt(self.session, receipt=receipt, source=ReceiptSource.PUSH)
        # a refused receipt is kept too (paid twice, or for an unknown notice): money arrived, nothing is lost
        self.session.commit()
        if outcome.status == "DUPLICATE":
            raise StationFault("PAA_RECEIPT_DUPLICATA", id_dominio=self.id_pa,
                               description=f"the notice {receipt.notice_number} was already paid")
        if outcome.status == "UNKNOWN":
            raise StationFault("PAA_PAGAMENTO_SCONOSCIUTO", id_dominio=self.id_pa)
        return _response(self.response_name)


def _finish(call: _Call | None, out: etree._Element) -> bytes:
    errors = soap.schema_errors(out)
    if errors and call is not None:
        log.error("station built an invalid %s: %s", call.response_name, errors[0])
        out = _response(call.response_name, fault=StationFault("PAA_SYSTEM_ERROR", id_dominio=call.id_pa))
    return soap.envelope(out)


def handle(raw: bytes, headers: dict[str, str], client_host: str | None,
           journal: EventJournal | None = None) -> tuple[int, bytes]:
    """Answer one SOAP request: (HTTP status, body). Business faults are KO answers with HTTP 200."""
    journal = journal or EventJournal()
    started = time.perf_counter()
    call: _Call | None = None
    outcome, fault_code, status = Outcome.OK, None, 200
    try:
        payload = soap.body_payload(raw)
        name = soap.payload_name(payload)
        if name not in RESPONSES:
            raise soap.SoapSyntaxError(f"unknown operation {name}")
        with Session(get_engine(), expire_on_commit=False) as session:
            call = _Call(session, payload, name)
            registry = registry_cache.get()
            station = registry.stations.get(soap.text(payload, "idStation") or "")
            callers = [station] if station is not None else list(registry.stations.values())
            if not any(authenticated(s, headers, client_host) for s in callers):
                outcome, status = Outcome.FAIL, 401
                return 401, soap.soap_fault(code="Client", message="caller not authenticated")
            try:
                errors = soap.schema_errors(payload)
                if errors:
                    raise StationFault("PAA_SINTASSI_XSD", id_dominio=call.id_pa or "",
                                       description=errors[0][:500])
                creditor = call.check_ids(registry)
                if call.operation == "paVerifyPaymentNotice":
                    out = call.verify(creditor)
                elif call.operation in ("paGetPayment", "paGetPaymentV2"):
                    out = call.get_payment(creditor, registry, v2=call.operation == "paGetPaymentV2")
                else:
                    out = call.send_rt(creditor, raw)
                session.commit()
            except StationFault as fault:
                session.rollback()
                outcome, fault_code = Outcome.KO, fault.code
                out = _response(call.response_name, fault=fault)
            body = _finish(call, out)
            return 200, body
    except soap.SoapSyntaxError as exc:
        outcome, fault_code, status = Outcome.KO, "PAA_SINTASSI_XSD", 400
        return 400, soap.soap_fault(code="Client", message=str(exc)[:500])
    except Exception:
        log.exception("station failure")
        outcome, status = Outcome.FAIL, 500
        if call is not None:
            return 200, soap.envelope(_response(call.response_name, fault=StationFault(
                "PAA_SYSTEM_ERROR", id_dominio=call.id_pa)))
        return 500, soap.soap_fault(code="Server", message="internal error")
    finally:
        journal.record(component="station", operation=call.operation if call else "unknown", role=Role.SERVER,
                       outcome=outcome, duration_ms=int((time.perf_counter() - started) * 1000),
                       keys=call.keys if call else {}, request=raw, http_status=status, fault_code=fault_code)


router = APIRouter()


@router.post("", summary="paForNode SOAP station")
async def station_endpoint(request: Request) -> Response:
    """The SOAP endpoint pagoPA calls (SOAPAction = operation name)."""
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    host = request.client.host if request.client else None
    status, body = await run_in_threadpool(handle, raw, headers, host)
    return Response(body, status_code=status, media_type="text/xml; charset=utf-8")
