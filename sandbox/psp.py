"""The Node paying notices on behalf of a PSP: verify, activate, receipt, delivery to the EC's station.

Three ways a notice gets paid (``mode`` in the answers):
  * ``station`` — the Node calls the creditor's station: ``paVerifyPaymentNotice``, ``paGetPaymentV2``
    (``paGetPayment`` for version-1 stations) and, once the PSP confirms, ``paSendRTV2`` (``paSendRT``);
  * ``gpd`` — the creditor is ``gpd_hosted`` (GPD asynchronous mode): the Node answers from the GPD
    copy without calling the station; the receipt is still pushed to the station when it has a URL;
  * ``standin`` — the station is unreachable (or timed out, with ``standin_on_timeout``) and a
    GPD/ACA copy with ``payStandIn`` exists: the Node pays from it, the receipt says ``standIn`` true and
    its transfers are reported with outcome 4; delivery is retried later (``/sandbox/retry-receipts``).

Station failures become the Node's faults: PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE, _TIMEOUT, _ERRORE_RESPONSE
(invalid against paForNode.xsd), and an EC's own KO becomes PPT_ERRORE_EMESSO_DA_PAA carrying the PAA_
code as ``originalFaultCode``. The receiptId is the paymentToken; the IUR (what the PSP reports in FdR) is
a separate seeded id.

Scenario notice numbers (IUV starting ``99``, i.e. NAV ``399CC…`` for aux digit 3): see ``SCENARIOS``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from lxml import etree

from sandbox import gpd, soap
from sandbox.rest import problem, read_json
from sandbox.soap import NODE_FOR_PSP_NS, NODE_FOR_PSP_XSD, PA_FOR_NODE_NS, NodeFault, sub, text
from sandbox.state import (
    CreditorConfig,
    PaidTransfer,
    PaymentData,
    PaymentToken,
    PspConfig,
    Receipt,
    ReceiptDelivery,
    ReceiptTransfer,
    SandboxState,
    StationConfig,
    get_state,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sandbox PSP"])
node_for_psp_router = APIRouter(tags=["nodeForPsp"])
NODE_FOR_PSP_PATH = "/nodo/node-for-psp/v1"

DEFAULT_PSP = PspConfig(psp_id="BCITITMM", name="Banca Sandbox S.p.A.", bic="BCITITMM", channel="BCITITMM_01")

SCENARIOS: dict[str, str] = {
    "01": "station_unreachable",  # as if the station refused the connection (Stand-In if a copy exists)
    "02": "station_timeout",  # as if the station timed out (no wait)
    "03": "unknown_notice",  # PPT_ERRORE_EMESSO_DA_PAA / PAA_PAGAMENTO_SCONOSCIUTO, station not called
    "04": "receipt_undeliverable",  # paid; every paSendRT attempt fails (left pending for retry-receipts)
    "05": "token_expired",  # verify and activation succeed, the outcome comes after expiry
    "06": "paid_twice",  # two PSPs pay the same notice (as times: 2)
}
OUTCOME_EXECUTED = 0
OUTCOME_STANDIN = 4
RETRIABLE_PAA = frozenset({"PAA_SYSTEM_ERROR"})
FINAL_DELIVERY = frozenset({"delivered", "rejected", "not_sent"})


def iuv_from_nav(nav: str) -> str:
    """The IUV inside a notice number (aux digit 0 drops 3 characters, 1/2/3 drop 1)."""
    return nav[3:] if nav.startswith("0") else nav[1:]


def scenario_of(nav: str) -> str | None:
    """The forced behaviour of a scenario notice number, or None."""
    iuv = iuv_from_nav(nav)
    if len(iuv) >= 4 and iuv.startswith("99"):
        return SCENARIOS.get(iuv[2:4])
    return None


def _now() -> datetime:
    return datetime.now(UTC)


def _paa_fault(answer: soap.StationAnswer, fiscal_code: str) -> NodeFault:
    return NodeFault(
        "PPT_ERRORE_EMESSO_DA_PAA",
        answer.fault_description or answer.fault_code,
        fault_id=fiscal_code,
        original_code=answer.fault_code,
        original_string=answer.fault_string,
        original_description=answer.fault_description,
    )


def _gpd_fault(code: str, fiscal_code: str) -> NodeFault:
    return NodeFault(
        "PPT_ERRORE_EMESSO_DA_PAA", code, fault_id=fiscal_code, original_code=code, original_string=code
    )


def _clip(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    value = value.strip()
    return value[:limit] if value else None


# --- debtor and transfers: between the wire (ctSubject, ctTransferPA*) and plain dicts -------------------

_SUBJECT_FIELDS = (
    ("streetName", "streetName", 70),
    ("civicNumber", "civicNumber", 16),
    ("postalCode", "postalCode", 16),
    ("city", "city", 35),
    ("province", "stateProvinceRegion", 35),
)


def debtor_from_subject(element: etree._Element | None) -> dict[str, str]:
    """A debtor dict (GPD field names) from a ctSubject element."""
    if element is None:
        return {}
    data = {
        "type": text(element, "uniqueIdentifier", "entityUniqueIdentifierType") or "F",
        "fiscalCode": text(element, "uniqueIdentifier", "entityUniqueIdentifierValue") or "ANONIMO",
        "fullName": text(element, "fullName") or "ANONIMO",
    }
    for key, wire, _ in _SUBJECT_FIELDS:
        value = text(element, wire)
        if value:
            data[key] = value
    for key, wire in (("country", "country"), ("email", "e-mail")):
        value = text(element, wire)
        if value:
            data[key] = value
    return data


def subject_element(parent: etree._Element, name: str, debtor: dict[str, str]) -> None:
    """Append a ctSubject built from a debtor dict, dropping what the XSD would reject."""
    node = sub(parent, name)
    uid = sub(node, "uniqueIdentifier")
    kind = debtor.get("type") if debtor.get("type") in ("F", "G") else "F"
    value = (debtor.get("fiscalCode") or "").strip()
    sub(uid, "entityUniqueIdentifierType", kind)
    sub(uid, "entityUniqueIdentifierValue", value if 2 <= len(value) <= 16 else "ANONIMO")
    sub(node, "fullName", _clip(debtor.get("fullName"), 70) or "ANONIMO")
    for key, wire, limit in _SUBJECT_FIELDS:
        clipped = _clip(debtor.get(key), limit)
        if clipped:
            sub(node, wire, clipped)
    country = (debtor.get("country") or "").strip()
    if re.fullmatch(r"[A-Z]{2}", country):
        sub(node, "country", country)
    email = (debtor.get("email") or "").strip()
    if (
        email
        and len(email) <= 256
        and re.fullmatch(r"[a-zA-Z0-9_\.\+\-]+@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)*", email)
    ):
        sub(node, "e-mail", email)


def _decimal(value: str | None) -> Decimal:
    try:
        return Decimal(value or "0").quantize(Decimal("0.01"))
    except InvalidOperation:
        return Decimal("0.00")


def transfers_from_list(element: etree._Element | None) -> list[ReceiptTransfer]:
    """Transfers from a ctTransferListPA(V2) element."""
    if element is None:
        return []
    transfers = []
    for item in element:
        if not isinstance(item.tag, str):
            continue
        transfers.append(
            ReceiptTransfer(
                id_transfer=int(text(item, "idTransfer") or "1"),
                amount=_decimal(text(item, "transferAmount")),
                fiscal_code_pa=text(item, "fiscalCodePA") or "",
                iban=text(item, "IBAN"),
                stamp=soap.child(item, "richiestaMarcaDaBollo") is not None,
                remittance_information=text(item, "remittanceInformation") or "",
                transfer_category=text(item, "transferCategory") or "",
                company_name=text(item, "companyName"),
            )
        )
    return transfers


# --- messages the Node sends ---------------------------------------------------------------------------


def _header(element: etree._Element, *, fiscal_code: str, station: StationConfig) -> None:
    sub(element, "idPA", fiscal_code)
    sub(element, "idBrokerPA", station.id_broker)
    sub(element, "idStation", station.id_station)


def _qr(element: etree._Element, *, fiscal_code: str, nav: str) -> None:
    qr = sub(element, "qrCode")
    sub(qr, "fiscalCode", fiscal_code)
    sub(qr, "noticeNumber", nav)


def build_verify(*, fiscal_code: str, nav: str, station: StationConfig) -> etree._Element:
    """paVerifyPaymentNoticeReq."""
    element = etree.Element(f"{{{PA_FOR_NODE_NS}}}paVerifyPaymentNoticeReq", nsmap={"pafn": PA_FOR_NODE_NS})
    _header(element, fiscal_code=fiscal_code, station=station)
    _qr(element, fiscal_code=fiscal_code, nav=nav)
    return element


def build_get_payment(
    *, fiscal_code: str, nav: str, station: StationConfig, amount: Decimal, payment_note: str | None = None
) -> etree._Element:
    """paGetPaymentV2Request (paGetPaymentReq for version-1 stations)."""
    name = "paGetPaymentV2Request" if station.version >= 2 else "paGetPaymentReq"
    element = etree.Element(f"{{{PA_FOR_NODE_NS}}}{name}", nsmap={"pafn": PA_FOR_NODE_NS})
    _header(element, fiscal_code=fiscal_code, station=station)
    _qr(element, fiscal_code=fiscal_code, nav=nav)
    sub(element, "amount", soap.amount(amount))
    if payment_note:
        sub(element, "paymentNote", payment_note[:210])
    return element


def mbd_attachment(transfer: ReceiptTransfer, receipt_id: str) -> str:
    """The base64 MBDAttachment of a stamp transfer (a placeholder MarcaDaBollo document)."""
    # a stand-in for the PSP's signed MarcaDaBollo document: only its base64 envelope matters here
    doc = (
        f"<marcaDaBollo><importo>16.00</importo><iuv>{receipt_id}</iuv>"
        f"<idTransfer>{transfer.id_transfer}</idTransfer></marcaDaBollo>"
    )
    return base64.b64encode(doc.encode()).decode()


@dataclass
class ReceiptFacts:
    """What a receipt says beyond the payment data."""

    receipt_id: str
    psp: PspConfig
    channel: str
    paid_at: datetime
    pay_date: date
    standin: bool
    fee: Decimal | None = None
    payment_note: str | None = None


def build_receipt_request(
    *,
    data: PaymentData,
    facts: ReceiptFacts,
    to_fiscal_code: str,
    station: StationConfig | None,
    version: int,
    fallback_iban: str | None,
) -> etree._Element:
    """paSendRTV2Request (paSendRTReq for version 1) addressed to ``to_fiscal_code``'s station."""
    v2 = version >= 2
    name = "paSendRTV2Request" if v2 else "paSendRTReq"
    element = etree.Element(f"{{{PA_FOR_NODE_NS}}}{name}", nsmap={"pafn": PA_FOR_NODE_NS})
    sub(element, "idPA", to_fiscal_code)
    sub(element, "idBrokerPA", station.id_broker if station else to_fiscal_code)
    sub(element, "idStation", station.id_station if station else f"{to_fiscal_code}_01")
    receipt = sub(element, "receipt")
    sub(receipt, "receiptId", facts.receipt_id)
    sub(receipt, "noticeNumber", data.nav)
    sub(receipt, "fiscalCode", data.ec_fiscal_code)
    sub(receipt, "outcome", "OK")
    sub(receipt, "creditorReferenceId", data.iuv)
    sub(receipt, "paymentAmount", soap.amount(data.amount))
    sub(receipt, "description", _clip(data.description, 140) or data.iuv)
    sub(receipt, "companyName", _clip(data.company_name, 140) or data.ec_fiscal_code)
    office = _clip(data.office_name, 140)
    if office:
        sub(receipt, "officeName", office)
    subject_element(receipt, "debtor", data.debtor)
    transfer_list = sub(receipt, "transferList")
    for transfer in data.transfers:
        item = sub(transfer_list, "transfer")
        sub(item, "idTransfer", str(transfer.id_transfer))
        sub(item, "transferAmount", soap.amount(transfer.amount))
        sub(item, "fiscalCodePA", transfer.fiscal_code_pa)
        if v2:
            transfer_company = _clip(transfer.company_name, 140)
            if transfer_company:
                sub(item, "companyName", transfer_company)
            if transfer.stamp:
                sub(item, "MBDAttachment", mbd_attachment(transfer, facts.receipt_id))
            else:
                sub(item, "IBAN", transfer.iban or fallback_iban or "IT00A0000000000000000000000")
        else:
            sub(item, "IBAN", transfer.iban or fallback_iban or "IT00A0000000000000000000000")
        sub(item, "remittanceInformation", _clip(transfer.remittance_information, 140) or data.iuv)
        sub(item, "transferCategory", _clip(transfer.transfer_category, 140) or "9/0101108TS/")
    sub(receipt, "idPSP", facts.psp.psp_id)
    sub(receipt, "PSPCompanyName", _clip(facts.psp.name, 70))
    sub(receipt, "idChannel", facts.channel)
    sub(receipt, "channelDescription", "app")
    subject_element(receipt, "payer", data.debtor)
    sub(receipt, "paymentMethod", "creditCard")
    if v2 and facts.payment_note:
        sub(receipt, "paymentNote", facts.payment_note[:210])
    if facts.fee is not None:
        sub(receipt, "fee", soap.amount(facts.fee))
    sub(receipt, "paymentDateTime", facts.paid_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    sub(receipt, "applicationDate", facts.pay_date.isoformat())
    sub(receipt, "transferDate", facts.pay_date.isoformat())
    sub(receipt, "standIn", "true" if facts.standin else "false")
    return element


# --- the Node --------------------------------------------------------------------------------------------


@dataclass
class VerifyInfo:
    """What verify learned: the amount to pay and how the Node will serve the notice."""

    amount: Decimal
    description: str
    company_name: str
    mode: str
    due_date: date | None = None
    office_name: str | None = None


@dataclass
class Attempt:
    """One payment attempt (one PSP paying once) and what became of it."""

    outcome: str = "KO"
    mode: str | None = None
    stage: str | None = None
    fault: NodeFault | None = None
    token: PaymentToken | None = None
    receipt: Receipt | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        data: dict[str, Any] = {"outcome": self.outcome, "mode": self.mode, "stage": self.stage}
        if self.token is not None:
            data["paymentToken"] = self.token.token
        if self.receipt is not None:
            data.update(
                receiptId=self.receipt.receipt_id,
                iur=self.receipt.iur,
                amount=soap.amount(self.receipt.amount),
                standIn=self.receipt.standin,
                version=self.receipt.version,
                delivery={ec: d.status for ec, d in self.receipt.deliveries.items()},
                deliveryFaults={
                    ec: d.last_fault for ec, d in self.receipt.deliveries.items() if d.last_fault
                },
            )
        if self.fault is not None:
            data.update(self.fault.as_dict())
        return data


class Node:
    """The Node's payment machinery over one SandboxState and one outgoing HTTP client."""

    def __init__(self, state: SandboxState, client: httpx.AsyncClient) -> None:
        self.state = state
        self.client = client
        self._background: set[asyncio.Future[Any]] = set()  # receipts being sent after the answer

    # lookups

    def creditor(self, fiscal_code: str) -> CreditorConfig:
        """The configured creditor or PPT_DOMINIO_SCONOSCIUTO."""
        with self.state.lock:
            creditor = self.state.creditors.get(fiscal_code)
        if creditor is None:
            raise NodeFault("PPT_DOMINIO_SCONOSCIUTO", f"creditor {fiscal_code} unknown")
        return creditor

    def station(self, creditor: CreditorConfig) -> StationConfig:
        """The creditor's station or PPT_STAZIONE_INT_PA_SCONOSCIUTA."""
        with self.state.lock:
            station = self.state.stations.get(creditor.id_station)
        if station is None:
            raise NodeFault("PPT_STAZIONE_INT_PA_SCONOSCIUTA", f"station {creditor.id_station} unknown")
        return station

    def psp(self, psp_id: str | None) -> PspConfig:
        """The configured PSP (the first one, or the built-in one, when not named)."""
        with self.state.lock:
            psps = list(self.state.psps)
        if psp_id is None:
            return psps[0] if psps else DEFAULT_PSP
        for psp in psps:
            if psp.psp_id == psp_id:
                return psp
        if psp_id == DEFAULT_PSP.psp_id and not psps:
            return DEFAULT_PSP
        raise NodeFault("PPT_PSP_SCONOSCIUTO", f"PSP {psp_id} unknown")

    def _gpd_copy(self, fiscal_code: str, nav: str) -> tuple[Any, Any] | None:
        with self.state.lock:
            found = gpd.find_option(self.state, fiscal_code=fiscal_code, iuv=iuv_from_nav(nav))
            if found is None or found[1].nav != nav:
                return None
            return found

    def _standin_copy(self, fiscal_code: str, nav: str) -> tuple[Any, Any] | None:
        found = self._gpd_copy(fiscal_code, nav)
        if found is None:
            return None
        position, option = found
        if not position.pay_stand_in or gpd.payability_fault(position, option) is not None:
            return None
        return found

    def _gpd_data(self, fiscal_code: str, nav: str, *, mode: str, check: bool = True) -> PaymentData:
        found = self._gpd_copy(fiscal_code, nav)
        if found is None:
            raise _gpd_fault("PAA_PAGAMENTO_SCONOSCIUTO", fiscal_code)
        position, option = found
        with self.state.lock:
            fault = gpd.payability_fault(position, option) if check else None
            if fault:
                raise _gpd_fault(fault, fiscal_code)
            return PaymentData(
                ec_fiscal_code=fiscal_code,
                nav=nav,
                iuv=option.iuv,
                amount=gpd.euro(option.amount_cents),
                description=option.description or option.iuv,
                company_name=position.company_name,
                office_name=position.office_name,
                debtor=dict(position.debtor),
                due_date=option.due_date.date(),
                source=mode,
                transfers=[
                    ReceiptTransfer(
                        id_transfer=t.id_transfer,
                        amount=gpd.euro(t.amount_cents),
                        fiscal_code_pa=t.organization_fiscal_code,
                        iban=t.iban,
                        stamp=t.stamp is not None,
                        remittance_information=t.remittance_information,
                        transfer_category=t.category,
                        company_name=t.company_name,
                    )
                    for t in option.transfers
                ],
            )

    def _fallback(self, fault: NodeFault, fiscal_code: str, nav: str) -> bool:
        """Whether ``fault`` from the station lets the Node pay from a GPD/ACA copy (Stand-In)."""
        if fault.code == "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE" or (
            fault.code == "PPT_STAZIONE_INT_PA_TIMEOUT" and self.state.node.standin_on_timeout
        ):
            return self._standin_copy(fiscal_code, nav) is not None
        return False

    async def _station_call(
        self,
        *,
        station: StationConfig,
        operation: str,
        payload: etree._Element,
        timeout: float,
        response_element: str,
        scenario: str | None,
    ) -> soap.StationAnswer:
        if scenario == "station_unreachable":
            raise NodeFault("PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE", "scenario notice: station unreachable")
        if scenario == "station_timeout":
            raise NodeFault("PPT_STAZIONE_INT_PA_TIMEOUT", "scenario notice: station timeout")
        return await soap.call_station(
            self.client,
            state=self.state,
            station=station,
            operation=operation,
            payload=payload,
            timeout=timeout,
            response_element=response_element,
        )

    # the three steps

    async def verify(self, *, fiscal_code: str, nav: str) -> VerifyInfo:
        """paVerifyPaymentNotice as the Node does it (station, GPD, or Stand-In)."""
        creditor = self.creditor(fiscal_code)
        scenario = scenario_of(nav)
        if scenario == "unknown_notice":
            raise _gpd_fault("PAA_PAGAMENTO_SCONOSCIUTO", fiscal_code)
        if creditor.gpd_hosted:
            data = self._gpd_data(fiscal_code, nav, mode="gpd")
            return VerifyInfo(
                amount=data.amount,
                description=data.description,
                mode="gpd",
                company_name=data.company_name,
                due_date=data.due_date,
                office_name=data.office_name,
            )
        station = self.station(creditor)
        try:
            answer = await self._station_call(
                station=station,
                operation="paVerifyPaymentNotice",
                payload=build_verify(fiscal_code=fiscal_code, nav=nav, station=station),
                timeout=self.state.node.verify_timeout,
                response_element="paVerifyPaymentNoticeRes",
                scenario=scenario,
            )
        except NodeFault as fault:
            if self._fallback(fault, fiscal_code, nav):
                data = self._gpd_data(fiscal_code, nav, mode="standin")
                return VerifyInfo(
                    amount=data.amount,
                    description=data.description,
                    mode="standin",
                    company_name=data.company_name,
                    due_date=data.due_date,
                    office_name=data.office_name,
                )
            raise
        if answer.outcome != "OK":
            raise _paa_fault(answer, fiscal_code)
        option = (
            soap.child(soap.child(answer.payload, "paymentList"), "paymentOptionDescription")
            if soap.child(answer.payload, "paymentList") is not None
            else None
        )
        if option is None:
            raise NodeFault("PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", "verify OK without paymentList")
        due = text(option, "dueDate")
        return VerifyInfo(
            amount=_decimal(text(option, "amount")),
            mode="station",
            description=text(answer.payload, "paymentDescription") or text(option, "detailDescription") or "",
            company_name=text(answer.payload, "companyName") or creditor.name,
            office_name=text(answer.payload, "officeName"),
            due_date=date.fromisoformat(due[:10]) if due else None,
        )

    async def activate(
        self,
        *,
        fiscal_code: str,
        nav: str,
        amount: Decimal,
        psp: PspConfig,
        channel: str,
        mode: str,
        payment_note: str | None = None,
    ) -> PaymentToken:
        """paGetPaymentV2 (or GPD / Stand-In data) and a new payment token."""
        creditor = self.creditor(fiscal_code)
        if mode == "station":
            station = self.station(creditor)
            operation = "paGetPaymentV2" if station.version >= 2 else "paGetPayment"
            response_element = "paGetPaymentV2Response" if station.version >= 2 else "paGetPaymentRes"
            try:
                answer = await self._station_call(
                    station=station,
                    operation=operation,
                    payload=build_get_payment(
                        fiscal_code=fiscal_code,
                        nav=nav,
                        station=station,
                        amount=amount,
                        payment_note=payment_note,
                    ),
                    timeout=self.state.node.get_payment_timeout,
                    response_element=response_element,
                    scenario=scenario_of(nav),
                )
            except NodeFault as fault:
                if self._fallback(fault, fiscal_code, nav):
                    data = self._gpd_data(fiscal_code, nav, mode="standin")
                    return self._new_token(data=data, psp=psp, channel=channel, standin=True)
                raise
            if answer.outcome != "OK":
                raise _paa_fault(answer, fiscal_code)
            data = self._payment_data(answer.payload, fiscal_code=fiscal_code, nav=nav, creditor=creditor)
        else:
            data = self._gpd_data(fiscal_code, nav, mode=mode)
        if data.amount != amount:
            raise NodeFault(
                "PPT_SEMANTICA", f"amount {soap.amount(amount)} differs from {soap.amount(data.amount)}"
            )
        with self.state.lock:
            self.state.payment_data[(fiscal_code, nav)] = data
        return self._new_token(data=data, psp=psp, channel=channel, standin=mode == "standin")

    def _payment_data(
        self, payload: etree._Element, *, fiscal_code: str, nav: str, creditor: CreditorConfig
    ) -> PaymentData:
        data_el = soap.child(payload, "data")
        if data_el is None:
            raise NodeFault("PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", "paGetPayment OK without data")
        transfers = transfers_from_list(soap.child(data_el, "transferList"))
        amount = _decimal(text(data_el, "paymentAmount"))
        iuv = text(data_el, "creditorReferenceId") or ""
        if sum((t.amount for t in transfers), Decimal("0.00")) != amount:
            raise NodeFault("PPT_STAZIONE_INT_PA_ERRORE_RESPONSE", "paymentAmount differs from the transfers")
        if iuv != iuv_from_nav(nav):
            raise NodeFault(
                "PPT_STAZIONE_INT_PA_ERRORE_RESPONSE",
                f"creditorReferenceId {iuv} does not match notice {nav}",
            )
        due = text(data_el, "dueDate")
        return PaymentData(
            ec_fiscal_code=fiscal_code,
            nav=nav,
            iuv=iuv,
            amount=amount,
            description=text(data_el, "description") or iuv,
            company_name=text(data_el, "companyName") or creditor.name,
            office_name=text(data_el, "officeName"),
            debtor=debtor_from_subject(soap.child(data_el, "debtor")),
            transfers=transfers,
            due_date=date.fromisoformat(due[:10]) if due else None,
            source="station",
        )

    def _new_token(self, *, data: PaymentData, psp: PspConfig, channel: str, standin: bool) -> PaymentToken:
        now = _now()
        token = PaymentToken(
            token=self.state.next_hex(128),
            ec_fiscal_code=data.ec_fiscal_code,
            nav=data.nav,
            created_at=now,
            expires_at=now + timedelta(seconds=self.state.node.token_expiry_seconds),
            psp_id=psp.psp_id,
            channel=channel,
            data=data,
            standin=standin,
        )
        with self.state.lock:
            self.state.tokens[token.token] = token
        return token

    def forced_token(self, *, fiscal_code: str, nav: str, psp: PspConfig, channel: str) -> PaymentToken:
        """A token for paying again a notice already seen, without asking the station (double payment)."""
        with self.state.lock:
            data = self.state.payment_data.get((fiscal_code, nav))
        if data is None:
            try:
                data = self._gpd_data(fiscal_code, nav, mode="gpd", check=False)
            except NodeFault as exc:
                raise NodeFault(
                    "PPT_PAGAMENTO_SCONOSCIUTO", f"notice {nav} was never paid nor held at GPD"
                ) from exc
        return self._new_token(data=data, psp=psp, channel=channel, standin=False)

    def _new_iur(self) -> str:
        with self.state.lock:
            while True:
                iur = self.state.next_hex(64).upper()
                if iur not in self.state.iurs:
                    self.state.iurs.add(iur)
                    return iur

    async def close(
        self,
        *,
        token: PaymentToken,
        psp: PspConfig,
        pay_date: date | None = None,
        fee: Decimal | None = None,
        payment_note: str | None = None,
        wait_delivery: bool = True,
    ) -> Receipt:
        """The PSP's positive outcome: issue the receipt, book the transfers, deliver to the ECs.

        With ``wait_delivery`` False the receipt is sent in the background, as the real Node does after
        answering the PSP; the deliveries then read ``sending`` until they end.
        """
        now = _now()
        with self.state.lock:
            if token.closed:
                raise NodeFault("PPT_TOKEN_SCONOSCIUTO", f"token {token.token} already used")
            if now > token.expires_at or scenario_of(token.nav) == "token_expired":
                token.closed = True
                raise NodeFault(
                    "PPT_TOKEN_SCADUTO", f"token {token.token} expired at {token.expires_at:%H:%M:%S}"
                )
            token.closed = True
        data = token.data
        creditor = self.creditor(data.ec_fiscal_code)
        with self.state.lock:
            station = self.state.stations.get(creditor.id_station)
        version = station.version if station else 2
        facts = ReceiptFacts(
            receipt_id=token.token,
            psp=psp,
            channel=token.channel,
            paid_at=now,
            pay_date=pay_date or now.date(),
            standin=token.standin,
            fee=fee,
            payment_note=payment_note,
        )
        xml_el = build_receipt_request(
            data=data,
            facts=facts,
            to_fiscal_code=data.ec_fiscal_code,
            station=station,
            version=version,
            fallback_iban=creditor.iban,
        )
        receipt = Receipt(
            receipt_id=token.token,
            ec_fiscal_code=data.ec_fiscal_code,
            iuv=data.iuv,
            nav=data.nav,
            iur=self._new_iur(),
            amount=data.amount,
            transfers=list(data.transfers),
            xml=etree.tostring(xml_el, xml_declaration=True, encoding="UTF-8"),
            version=version,
            standin=token.standin,
            psp_id=psp.psp_id,
            channel=token.channel,
            payment_date_time=now,
            description=data.description,
            company_name=data.company_name,
            debtor=dict(data.debtor),
            office_name=data.office_name,
            fee=fee,
            pay_date=facts.pay_date,
            payment_note=payment_note,
        )
        outcome = OUTCOME_STANDIN if token.standin else OUTCOME_EXECUTED
        targets = [data.ec_fiscal_code] + sorted(
            {t.fiscal_code_pa for t in data.transfers} - {data.ec_fiscal_code}
        )
        with self.state.lock:
            for ec in targets:
                target = self.state.creditors.get(ec)
                target_station = self.state.stations.get(target.id_station) if target else None
                status = (
                    "pending"
                    if target is not None
                    and target_station is not None
                    and (target_station.url or not target.gpd_hosted)
                    else "not_sent"
                )
                receipt.deliveries[ec] = ReceiptDelivery(
                    ec_fiscal_code=ec,
                    id_station=target_station.id_station if target_station else None,
                    status=status,
                )
            self.state.receipts[receipt.receipt_id] = receipt
            self.state.transfers.extend(
                PaidTransfer(
                    ec_fiscal_code=t.fiscal_code_pa,
                    iuv=data.iuv,
                    iur=receipt.iur,
                    transfer_index=t.id_transfer,
                    amount=t.amount,
                    outcome=outcome,
                    pay_date=facts.pay_date,
                    psp_id=psp.psp_id,
                    receipt_id=receipt.receipt_id,
                )
                for t in data.transfers
            )
            self.state.tokens.pop(token.token, None)
        gpd.mark_paid(
            self.state,
            fiscal_code=data.ec_fiscal_code,
            iuv=data.iuv,
            receipt_id=receipt.receipt_id,
            psp_company=psp.name,
            paid_at=now,
        )
        logger.info(
            "paid ec=%s iuv=%s receipt=%s mode=%s",
            data.ec_fiscal_code,
            data.iuv,
            receipt.receipt_id,
            data.source,
        )
        sends = asyncio.gather(
            *(
                self.deliver(receipt, ec, attempts=self.state.node.send_rt_attempts)
                for ec, d in receipt.deliveries.items()
                if d.status == "pending"
            )
        )
        if wait_delivery:
            await sends
        else:
            for delivery in receipt.deliveries.values():
                if delivery.status == "pending":
                    delivery.status = "sending"
            self._background.add(sends)
            sends.add_done_callback(self._background.discard)
        return receipt

    async def deliver(self, receipt: Receipt, ec_fiscal_code: str, *, attempts: int) -> str:
        """Send the receipt to one EC's station, retrying transient failures; returns the delivery status."""
        delivery = receipt.deliveries[ec_fiscal_code]
        with self.state.lock:
            creditor = self.state.creditors.get(ec_fiscal_code)
            station = self.state.stations.get(creditor.id_station) if creditor else None
        if creditor is None or station is None:
            delivery.status = "not_sent"
            return delivery.status
        version = station.version
        operation = "paSendRTV2" if version >= 2 else "paSendRT"
        response_element = "paSendRTV2Response" if version >= 2 else "paSendRTRes"
        payload = self._receipt_for(receipt, ec_fiscal_code=ec_fiscal_code, station=station)
        scenario = scenario_of(receipt.nav)
        delivery.status = "sending"  # so retry-receipts leaves an attempt in flight alone
        for attempt in range(1, max(1, attempts) + 1):
            delivery.attempts += 1
            delivery.last_attempt_at = _now()
            try:
                if scenario == "receipt_undeliverable":
                    raise NodeFault(
                        "PPT_STAZIONE_INT_PA_IRRAGGIUNGIBILE", "scenario notice: receipt undeliverable"
                    )
                answer = await soap.call_station(
                    self.client,
                    state=self.state,
                    station=station,
                    operation=operation,
                    payload=payload,
                    timeout=self.state.node.send_rt_timeout,
                    response_element=response_element,
                )
            except NodeFault as fault:
                delivery.last_fault = fault.code
            else:
                if answer.outcome == "OK":
                    delivery.status, delivery.last_fault = "delivered", None
                    return delivery.status
                delivery.last_fault = answer.fault_code
                if answer.fault_code not in RETRIABLE_PAA:
                    delivery.status = "rejected"
                    return delivery.status
            if attempt < attempts:
                await asyncio.sleep(self.state.node.send_rt_backoff * (2 ** (attempt - 1)))
        delivery.status = "pending"
        return delivery.status

    def _receipt_for(
        self, receipt: Receipt, *, ec_fiscal_code: str, station: StationConfig
    ) -> etree._Element:
        """The receipt request addressed to one EC's station (same receipt, that EC's header)."""
        if station.version == receipt.version:
            payload = etree.fromstring(receipt.xml)
            for name, value in (
                ("idPA", ec_fiscal_code),
                ("idBrokerPA", station.id_broker),
                ("idStation", station.id_station),
            ):
                node = soap.child(payload, name)
                if node is not None:
                    node.text = value
            return payload
        data = PaymentData(
            ec_fiscal_code=receipt.ec_fiscal_code,
            nav=receipt.nav,
            iuv=receipt.iuv,
            amount=receipt.amount,
            description=receipt.description,
            company_name=receipt.company_name,
            debtor=receipt.debtor,
            transfers=receipt.transfers,
            office_name=receipt.office_name,
        )
        facts = ReceiptFacts(
            receipt_id=receipt.receipt_id,
            psp=self.psp_or_default(receipt.psp_id),
            channel=receipt.channel,
            paid_at=receipt.payment_date_time,
            pay_date=receipt.pay_date or receipt.payment_date_time.date(),
            standin=receipt.standin,
            fee=receipt.fee,
            payment_note=receipt.payment_note,
        )
        primary = self.state.creditors.get(receipt.ec_fiscal_code)
        return build_receipt_request(
            data=data,
            facts=facts,
            to_fiscal_code=ec_fiscal_code,
            station=station,
            version=station.version,
            fallback_iban=primary.iban if primary else None,
        )

    def psp_or_default(self, psp_id: str) -> PspConfig:
        """The PSP by id, tolerating one removed from the configuration since."""
        try:
            return self.psp(psp_id)
        except NodeFault:
            return PspConfig(psp_id=psp_id, name=psp_id, bic=psp_id, channel=f"{psp_id}_01")

    async def retry_pending(self) -> dict[str, int]:
        """One more delivery attempt for every pending receipt delivery."""
        with self.state.lock:
            pending = [
                (r, ec)
                for r in self.state.receipts.values()
                for ec, d in r.deliveries.items()
                if d.status == "pending"
            ]
        statuses = await asyncio.gather(*(self.deliver(r, ec, attempts=1) for r, ec in pending))
        summary = {"retried": len(pending)}
        for status in statuses:
            summary[status] = summary.get(status, 0) + 1
        return summary

    # the whole payment, as /sandbox/pay runs it

    async def pay(self, request: PayRequest) -> dict[str, Any]:
        """Pay a notice ``times`` times (activations first, then outcomes: concurrent PSPs)."""
        try:
            psp = self.psp(request.psp_id)
        except NodeFault as fault:
            return _answer(request, [Attempt(stage="psp", fault=fault)])
        channel = request.channel or psp.channel
        times = (
            2 if scenario_of(request.notice_number) == "paid_twice" and request.times == 1 else request.times
        )
        attempts = [Attempt() for _ in range(times)]
        for attempt in attempts:
            try:
                if request.force:
                    attempt.stage, attempt.mode = "activate", "forced"
                    attempt.token = self.forced_token(
                        fiscal_code=request.fiscal_code, nav=request.notice_number, psp=psp, channel=channel
                    )
                else:
                    attempt.stage = "verify"
                    info = await self.verify(fiscal_code=request.fiscal_code, nav=request.notice_number)
                    attempt.mode = info.mode
                    amount = request.amount if request.amount is not None else info.amount
                    attempt.stage = "activate"
                    attempt.token = await self.activate(
                        fiscal_code=request.fiscal_code,
                        nav=request.notice_number,
                        amount=amount,
                        psp=psp,
                        channel=channel,
                        mode=info.mode,
                        payment_note=request.payment_note,
                    )
                    if attempt.token.standin:
                        attempt.mode = "standin"
            except NodeFault as fault:
                attempt.fault = fault
        if request.outcome_delay > 0:
            await asyncio.sleep(request.outcome_delay)
        for attempt in attempts:
            if attempt.fault is not None or attempt.token is None:
                continue
            try:
                attempt.stage = "outcome"
                attempt.receipt = await self.close(
                    token=attempt.token,
                    psp=psp,
                    pay_date=request.pay_date,
                    fee=request.fee,
                    payment_note=request.payment_note,
                    wait_delivery=request.wait_delivery,
                )
                attempt.outcome = "OK"
            except NodeFault as fault:
                attempt.fault = fault
        return _answer(request, attempts)


@dataclass
class PayRequest:
    """A ``/sandbox/pay`` request."""

    notice_number: str
    fiscal_code: str
    amount: Decimal | None = None
    channel: str | None = None
    psp_id: str | None = None
    times: int = 1
    force: bool = False
    pay_date: date | None = None
    fee: Decimal | None = None
    payment_note: str | None = None
    outcome_delay: float = 0.0
    wait_delivery: bool = True


def parse_pay_request(raw: Any) -> PayRequest:
    """Validate a /sandbox/pay body (camelCase) into a PayRequest, or raise a 400 problem."""
    if not isinstance(raw, dict):
        raise problem(400, "Bad Request", "the body must be a JSON object")
    nav, fc = raw.get("noticeNumber"), raw.get("fiscalCode")
    if not isinstance(nav, str) or not nav.isdigit() or len(nav) != 18:
        raise problem(400, "Bad Request", "noticeNumber: 18 digits required")
    if not isinstance(fc, str) or not fc.isdigit() or len(fc) != 11:
        raise problem(400, "Bad Request", "fiscalCode: 11 digits required")
    try:
        amount = (
            Decimal(str(raw["amount"])).quantize(Decimal("0.01")) if raw.get("amount") is not None else None
        )
        fee = Decimal(str(raw["fee"])).quantize(Decimal("0.01")) if raw.get("fee") is not None else None
    except InvalidOperation as exc:
        raise problem(400, "Bad Request", "amount/fee: decimal euro amounts required") from exc
    times = raw.get("times", 1)
    if not isinstance(times, int) or not 1 <= times <= 5:
        raise problem(400, "Bad Request", "times: an integer 1..5")
    pay_date = None
    if raw.get("payDate"):
        try:
            pay_date = date.fromisoformat(raw["payDate"])
        except (TypeError, ValueError) as exc:
            raise problem(400, "Bad Request", "payDate: YYYY-MM-DD") from exc
    delay = raw.get("outcomeDelay", 0)
    if not isinstance(delay, int | float) or delay < 0 or delay > 60:
        raise problem(400, "Bad Request", "outcomeDelay: seconds, 0..60")
    return PayRequest(
        notice_number=nav,
        fiscal_code=fc,
        amount=amount,
        channel=raw.get("channel"),
        psp_id=raw.get("psp"),
        times=times,
        force=bool(raw.get("force", False)),
        pay_date=pay_date,
        fee=fee,
        payment_note=raw.get("paymentNote"),
        outcome_delay=float(delay),
        wait_delivery=raw.get("waitDelivery", True) is not False,
    )


def _answer(request: PayRequest, attempts: list[Attempt]) -> dict[str, Any]:
    payments = [attempt.as_dict() for attempt in attempts]
    first = payments[0]
    answer = {
        "noticeNumber": request.notice_number,
        "fiscalCode": request.fiscal_code,
        "iuv": iuv_from_nav(request.notice_number),
        "outcome": "OK" if all(a.outcome == "OK" for a in attempts) else "KO",
        **{k: v for k, v in first.items() if k != "outcome"},
        "payments": payments,
    }
    return answer


def get_node(request: Request) -> Node:
    """The Node of the running app (its HTTP client is created on first use, inside the server's loop)."""
    app = request.app
    node = getattr(app.state, "node", None)
    if node is None:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        node = Node(app.state.sandbox, client)
        app.state.node = node
    return node


# --- routes --------------------------------------------------------------------------------------------


@router.post("/sandbox/pay", operation_id="sandboxPay")
async def pay(request: Request) -> Response:
    """A PSP pays a notice: see the module docstring for what happens; the answer says what did."""
    from sandbox.rest import json_response

    pay_request = parse_pay_request(await read_json(request))
    return json_response(await get_node(request).pay(pay_request))


@router.post("/sandbox/pay-batch", operation_id="sandboxPayBatch")
async def pay_batch(request: Request) -> Response:
    """Pay many notices at once: ``{payments: [<pay body>...], concurrency: 8}``."""
    from sandbox.rest import json_response

    raw = await read_json(request)
    if not isinstance(raw, dict) or not isinstance(raw.get("payments"), list):
        raise problem(400, "Bad Request", "payments: a list of /sandbox/pay bodies is required")
    requests = [parse_pay_request(item) for item in raw["payments"]]
    concurrency = raw.get("concurrency", 8)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 256:
        raise problem(400, "Bad Request", "concurrency: an integer 1..256")
    node = get_node(request)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: PayRequest) -> dict[str, Any]:
        async with gate:
            return await node.pay(item)

    results = await asyncio.gather(*(one(item) for item in requests))
    ok = sum(1 for r in results if r["outcome"] == "OK")
    return json_response({"total": len(results), "ok": ok, "ko": len(results) - ok, "results": results})


@router.post("/sandbox/retry-receipts", operation_id="sandboxRetryReceipts")
async def retry_receipts(request: Request) -> Response:
    """Try once more to deliver every receipt still pending (after a station outage)."""
    from sandbox.rest import json_response

    return json_response(await get_node(request).retry_pending())


# --- nodeForPsp SOAP: a PSP asking the Node (verifyPaymentNotice) ---------------------------------------


def _check_psp(
    state: SandboxState, *, id_psp: str, id_broker: str, id_channel: str, password: str
) -> PspConfig:
    with state.lock:
        psps = list(state.psps) or [DEFAULT_PSP]
    psp = next((p for p in psps if p.psp_id == id_psp), None)
    if psp is None:
        raise NodeFault("PPT_PSP_SCONOSCIUTO", f"PSP {id_psp} unknown")
    if id_broker != (psp.broker_id or psp.psp_id):
        raise NodeFault("PPT_INTERMEDIARIO_PSP_SCONOSCIUTO", f"PSP broker {id_broker} unknown")
    if id_channel != psp.channel:
        raise NodeFault("PPT_CANALE_SCONOSCIUTO", f"channel {id_channel} unknown")
    if psp.password is not None and password != psp.password:
        raise NodeFault("PPT_AUTENTICAZIONE", "wrong password")
    return psp


def verify_answer(info: VerifyInfo, *, fiscal_code: str) -> etree._Element:
    """verifyPaymentNoticeRes OK."""
    element = etree.Element(f"{{{NODE_FOR_PSP_NS}}}verifyPaymentNoticeRes", nsmap={"nfp": NODE_FOR_PSP_NS})
    sub(element, "outcome", "OK")
    options = sub(element, "paymentList")
    option = sub(options, "paymentOptionDescription")
    sub(option, "amount", soap.amount(info.amount))
    sub(option, "options", "EQ")
    if info.due_date:
        sub(option, "dueDate", info.due_date.isoformat())
    description = _clip(info.description, 210)
    if description:
        sub(element, "paymentDescription", description)
    sub(element, "fiscalCodePA", fiscal_code)
    sub(element, "companyName", _clip(info.company_name, 140) or fiscal_code)
    office = _clip(info.office_name, 140)
    if office:
        sub(element, "officeName", office)
    sub(element, "standin", "true" if info.mode == "standin" else "false")
    return element


@node_for_psp_router.post(NODE_FOR_PSP_PATH, operation_id="nodeForPsp")
async def node_for_psp(request: Request) -> Response:
    """nodeForPsp SOAP endpoint: ``verifyPaymentNotice`` (other operations answer PPT_SYSTEM_ERROR)."""
    state = get_state(request)
    operation = (request.headers.get("SOAPAction") or "").strip('"') or "verifyPaymentNotice"
    try:
        payload = soap.parse_envelope(await request.body())
        operation = etree.QName(payload).localname.removesuffix("Req")
        if operation != "verifyPaymentNotice":
            raise NodeFault("PPT_SYSTEM_ERROR", f"operation {operation} is not served by the sandbox")
        soap.validate(payload, NODE_FOR_PSP_XSD)
        _check_psp(
            state,
            id_psp=text(payload, "idPSP") or "",
            id_broker=text(payload, "idBrokerPSP") or "",
            id_channel=text(payload, "idChannel") or "",
            password=text(payload, "password") or "",
        )
        fiscal_code = text(payload, "qrCode", "fiscalCode") or ""
        nav = text(payload, "qrCode", "noticeNumber") or ""
        info = await get_node(request).verify(fiscal_code=fiscal_code, nav=nav)
        return soap.soap_response(verify_answer(info, fiscal_code=fiscal_code))
    except NodeFault as fault:
        answer = soap.ko_payload(
            "verifyPaymentNotice" if operation.startswith("verify") else operation, fault
        )
        if answer is None:
            answer = soap.ko_payload("verifyPaymentNotice", fault)
        return soap.soap_response(answer)  # type: ignore[arg-type]
