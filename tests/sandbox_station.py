"""A small, correct paForNode station for tests and benchmarks (not the platform's station).

It answers paVerifyPaymentNotice, paGetPayment(V2) and paSendRT(V2) from an in-memory dict of notices,
validates every request it receives and every answer it sends against ``wsdl/xsd/paForNode.xsd``, and
can be told to misbehave per operation: answer a PAA_ fault, wait, answer XSD-invalid XML, answer
malformed XML, or answer an HTTP error. Tests read what it received in ``received``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request, Response
from lxml import etree

from sandbox import soap
from sandbox.server import RunningServer, start_app_in_thread
from sandbox.soap import PA_FOR_NODE_NS, PA_FOR_NODE_XSD, sub, text

RESPONSES = {
    "paVerifyPaymentNoticeReq": "paVerifyPaymentNoticeRes",
    "paGetPaymentReq": "paGetPaymentRes",
    "paGetPaymentV2Request": "paGetPaymentV2Response",
    "paSendRTReq": "paSendRTRes",
    "paSendRTV2Request": "paSendRTV2Response",
}
OPERATIONS = {
    "paVerifyPaymentNoticeReq": "paVerifyPaymentNotice",
    "paGetPaymentReq": "paGetPayment",
    "paGetPaymentV2Request": "paGetPaymentV2",
    "paSendRTReq": "paSendRT",
    "paSendRTV2Request": "paSendRTV2",
}


@dataclass
class StationTransfer:
    """A transfer of a notice as the station hands it out."""

    amount: Decimal
    iban: str | None = "IT60X0542811101000000123456"
    fiscal_code_pa: str | None = None
    stamp: bool = False
    remittance: str = "/RFB/00000000000000000/10.00/TXT/test"
    category: str = "9/0101108TS/"


@dataclass
class Notice:
    """A notice the station can be asked about."""

    fiscal_code: str
    nav: str
    amount: Decimal
    transfers: list[StationTransfer]
    description: str = "Tassa rifiuti"
    due_date: date = field(default_factory=lambda: date.today() + timedelta(days=30))
    status: str = "unpaid"  # unpaid | paid | annulled | expired
    receipts: list[str] = field(default_factory=list)

    @property
    def iuv(self) -> str:
        """The IUV of the notice."""
        return self.nav[3:] if self.nav.startswith("0") else self.nav[1:]


@dataclass
class Behaviour:
    """How the station answers one operation (the next ``times`` calls, or always)."""

    fault: str | None = None
    delay: float = 0.0
    invalid: bool = False
    malformed: bool = False
    http_status: int | None = None
    times: int | None = None


class TestStation:
    """The station: ``app`` (FastAPI), ``notices``, ``received``, ``fail(...)``, ``start()``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        fiscal_codes: tuple[str, ...] = ("77777777777",),
        id_broker: str = "77777777777",
        id_station: str = "77777777777_01",
        company_name: str = "Comune di Sandbox",
    ) -> None:
        self.fiscal_codes = set(fiscal_codes)
        self.id_broker = id_broker
        self.id_station = id_station
        self.company_name = company_name
        self.notices: dict[tuple[str, str], Notice] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.received: list[tuple[str, bytes]] = []
        self.request_errors: list[str] = []
        self.answer_errors: list[str] = []
        self.lock = threading.Lock()
        self.app = self._build_app()
        self.running: RunningServer | None = None

    # set-up

    def add_notice(
        self,
        *,
        nav: str,
        amount: str | Decimal,
        fiscal_code: str = "77777777777",
        transfers: list[StationTransfer] | None = None,
        **kwargs: Any,
    ) -> Notice:
        """Register a payable notice (one IBAN transfer for the whole amount by default)."""
        value = Decimal(str(amount)).quantize(Decimal("0.01"))
        notice = Notice(
            fiscal_code=fiscal_code,
            nav=nav,
            amount=value,
            transfers=transfers or [StationTransfer(amount=value)],
            **kwargs,
        )
        with self.lock:
            self.notices[(fiscal_code, nav)] = notice
        return notice

    def fail(self, operation: str, **kwargs: Any) -> None:
        """Make ``operation`` misbehave (see Behaviour); ``fail(op)`` with no argument restores it."""
        with self.lock:
            if kwargs:
                self.behaviour[operation] = Behaviour(**kwargs)
            else:
                self.behaviour.pop(operation, None)

    def received_operations(self) -> list[str]:
        """The operations received so far, in order."""
        with self.lock:
            return [operation for operation, _ in self.received]

    def start(self) -> TestStation:
        """Serve the station on a free loopback port."""
        self.running = start_app_in_thread(self.app)
        return self

    @property
    def url(self) -> str:
        """The station's paForNode endpoint."""
        assert self.running is not None
        return f"{self.running.url}/paForNode"

    def stop(self) -> None:
        """Stop serving."""
        if self.running is not None:
            self.running.stop()

    # answers

    def _response(self, request_name: str) -> etree._Element:
        return etree.Element(f"{{{PA_FOR_NODE_NS}}}{RESPONSES[request_name]}", nsmap={"paf": PA_FOR_NODE_NS})

    def _ko(
        self, request_name: str, code: str, fiscal_code: str, description: str | None = None
    ) -> etree._Element:
        element = self._response(request_name)
        sub(element, "outcome", "KO")
        fault = sub(element, "fault")
        sub(fault, "faultCode", code)
        sub(fault, "faultString", code)
        sub(fault, "id", fiscal_code or "77777777777")
        sub(fault, "description", description or code)
        return element

    def _notice_fault(self, notice: Notice | None) -> str | None:
        if notice is None:
            return "PAA_PAGAMENTO_SCONOSCIUTO"
        return {
            "paid": "PAA_PAGAMENTO_DUPLICATO",
            "annulled": "PAA_PAGAMENTO_ANNULLATO",
            "expired": "PAA_PAGAMENTO_SCADUTO",
        }.get(notice.status)

    def _verify(self, name: str, notice: Notice) -> etree._Element:
        element = self._response(name)
        sub(element, "outcome", "OK")
        option = sub(sub(element, "paymentList"), "paymentOptionDescription")
        sub(option, "amount", soap.amount(notice.amount))
        sub(option, "options", "EQ")
        sub(option, "dueDate", notice.due_date.isoformat())
        sub(option, "allCCP", "false")
        sub(element, "paymentDescription", notice.description)
        sub(element, "fiscalCodePA", notice.fiscal_code)
        sub(element, "companyName", self.company_name)
        return element

    def _get(self, name: str, notice: Notice) -> etree._Element:
        v2 = name == "paGetPaymentV2Request"
        element = self._response(name)
        sub(element, "outcome", "OK")
        data = sub(element, "data")
        sub(data, "creditorReferenceId", notice.iuv)
        sub(data, "paymentAmount", soap.amount(notice.amount))
        sub(data, "dueDate", notice.due_date.isoformat())
        sub(data, "description", notice.description)
        sub(data, "companyName", self.company_name)
        debtor = sub(data, "debtor")
        uid = sub(debtor, "uniqueIdentifier")
        sub(uid, "entityUniqueIdentifierType", "F")
        sub(uid, "entityUniqueIdentifierValue", "RSSMRA80A01H501U")
        sub(debtor, "fullName", "Mario Rossi")
        sub(debtor, "e-mail", "mario.rossi@example.org")
        transfers = sub(data, "transferList")
        for index, transfer in enumerate(notice.transfers, start=1):
            item = sub(transfers, "transfer")
            sub(item, "idTransfer", str(index))
            sub(item, "transferAmount", soap.amount(transfer.amount))
            sub(item, "fiscalCodePA", transfer.fiscal_code_pa or notice.fiscal_code)
            if v2 and transfer.stamp:
                stamp = sub(item, "richiestaMarcaDaBollo")
                sub(stamp, "hashDocumento", "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo0NTY3ODkwMTI=")
                sub(stamp, "tipoBollo", "01")
                sub(stamp, "provinciaResidenza", "RM")
            else:
                sub(item, "IBAN", transfer.iban or "IT60X0542811101000000123456")
            sub(item, "remittanceInformation", transfer.remittance)
            sub(item, "transferCategory", transfer.category)
        return element

    def _send_rt(self, name: str, payload: etree._Element, notice: Notice | None) -> etree._Element:
        fiscal_code = text(payload, "idPA") or ""
        receipt_id = text(payload, "receipt", "receiptId") or ""
        if notice is None:
            return self._ko(name, "PAA_PAGAMENTO_SCONOSCIUTO", fiscal_code)
        with self.lock:
            if receipt_id in notice.receipts:
                pass  # the same receipt again: idempotent OK
            elif notice.receipts:
                notice.receipts.append(receipt_id)
                return self._ko(name, "PAA_RECEIPT_DUPLICATA", fiscal_code, "notice already paid")
            else:
                notice.receipts.append(receipt_id)
                notice.status = "paid"
        element = self._response(name)
        sub(element, "outcome", "OK")
        return element

    def _answer(self, name: str, payload: etree._Element) -> etree._Element:
        fiscal_code = text(payload, "idPA") or ""
        if fiscal_code not in self.fiscal_codes:
            return self._ko(name, "PAA_ID_DOMINIO_ERRATO", fiscal_code)
        if text(payload, "idBrokerPA") != self.id_broker:
            return self._ko(name, "PAA_ID_INTERMEDIARIO_ERRATO", fiscal_code)
        if text(payload, "idStation") != self.id_station:
            return self._ko(name, "PAA_STAZIONE_INT_ERRATA", fiscal_code)
        if name in ("paSendRTReq", "paSendRTV2Request"):
            key = (
                text(payload, "receipt", "fiscalCode") or "",
                text(payload, "receipt", "noticeNumber") or "",
            )
            return self._send_rt(name, payload, self.notices.get(key))
        key = (text(payload, "qrCode", "fiscalCode") or "", text(payload, "qrCode", "noticeNumber") or "")
        notice = self.notices.get(key)
        fault = self._notice_fault(notice)
        if fault:
            return self._ko(name, fault, fiscal_code)
        assert notice is not None
        return self._verify(name, notice) if name == "paVerifyPaymentNoticeReq" else self._get(name, notice)

    def _take_behaviour(self, operation: str) -> Behaviour | None:
        with self.lock:
            behaviour = self.behaviour.get(operation)
            if behaviour is None:
                return None
            if behaviour.times is not None:
                behaviour.times -= 1
                if behaviour.times <= 0:
                    self.behaviour.pop(operation, None)
            return behaviour

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/paForNode")
        async def pa_for_node(request: Request) -> Response:
            raw = await request.body()
            try:
                payload = soap.parse_envelope(raw)
            except soap.NodeFault as exc:
                return Response(content=f"not a SOAP request: {exc}", status_code=400)
            name = etree.QName(payload).localname
            operation = OPERATIONS.get(name, name)
            with self.lock:
                self.received.append((operation, raw))
            if name not in RESPONSES:
                return Response(
                    content=soap.soap_fault_envelope(
                        faultcode="soapenv:Client", faultstring="unknown operation"
                    ),
                    status_code=500,
                    media_type="text/xml",
                )
            errors = soap.schema_errors(payload, PA_FOR_NODE_XSD)
            soap_action = (request.headers.get("SOAPAction") or "").strip('"')
            if soap_action != operation:
                errors.append(f"SOAPAction {soap_action!r} is not {operation!r}")
            if errors:
                with self.lock:
                    self.request_errors.extend(errors)
                answer = self._ko(name, "PAA_SINTASSI_XSD", text(payload, "idPA") or "", errors[0][:200])
            else:
                answer = self._answer(name, payload)
            behaviour = self._take_behaviour(operation)
            if behaviour is not None:
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                if behaviour.http_status:
                    return Response(content="station error", status_code=behaviour.http_status)
                if behaviour.malformed:
                    return Response(content=b"<soapenv:Envelope><soapenv:Body><broken", media_type="text/xml")
                if behaviour.invalid:
                    bad = self._response(name)
                    sub(bad, "outcome", "MAYBE")
                    return Response(content=soap.envelope(bad), media_type="text/xml")
                if behaviour.fault:
                    answer = self._ko(name, behaviour.fault, text(payload, "idPA") or "")
            answer_errors = soap.schema_errors(answer, PA_FOR_NODE_XSD)
            if answer_errors:
                with self.lock:
                    self.answer_errors.extend(answer_errors)
            return Response(content=soap.envelope(answer), media_type="text/xml; charset=utf-8")

        return app
