"""Receipts pulled from pagoPA: Biz-Events (``openapi/biz_events.json``) and GPD receipts.

* Biz-Events ``GET /organizations/{fc}/receipts/{iur}/paymentoptions/{iuv}`` answers
  ``CtReceiptModelResponse`` JSON; its ``{iur}`` is documented as the payment token (the receiptId); the
  sandbox accepts the FdR IUR too.
* GPD receipts (``openapi/gpd_payments.json``) ``GET /payments/{fc}/receipts/{iuv}`` answers the
  ``paSendRTV2Request`` (``paSendRTReq`` for V1 stations) XML of the first receipt issued for the IUV, as
  ``application/xml``; it is checked against ``paForNode.xsd`` before use.

Both become a :class:`rules.receipts.ReceiptIn` addressed to the EC that asked (``id_pa``), so a pulled
receipt is processed exactly like a pushed one. One method per operation, all through ``_call``, which
times and journals every attempt, retries retriable faults a few times (honouring ``Retry-After`` on
429/503) and classifies errors once: 404 is :class:`PagopaNotFoundError` (stop asking), 429/5xx/timeouts
are retriable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import httpx
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.journal import EventJournal, Exchange
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaError, PagopaRetriableError, PagopaSchemaError
from connectors.pagopa.fdr import SUBSCRIPTION_KEY_HEADER, classify_response
from connectors.secrets import resolve_secret
from models.journal import Outcome, Role
from models.settings import get_settings
from rules.receipts import ReceiptIn, ReceiptTransfer, parse_pagopa_datetime
from rules.redaction import register_secret
from rules.xmlsafe import local_name, parse_xml

log = logging.getLogger(__name__)

COMPONENT = "receipts"
BIZ_EVENTS_OPERATION = "getOrganizationReceiptIuvIur"
GPD_RECEIPT_OPERATION = "getReceiptByIUV"
PA_FOR_NODE_XSD = "wsdl/xsd/paForNode.xsd"
RT_ELEMENTS = frozenset({"paSendRTV2Request", "paSendRTReq"})
_CENT = Decimal("0.01")


# --- Biz-Events: CtReceiptModelResponse --------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class _Subject(_Wire):
    value: str | None = Field(default=None, alias="entityUniqueIdentifierValue")
    full_name: str | None = Field(default=None, alias="fullName")


class _MapEntry(_Wire):
    key: str
    value: str | None = None


class _BizTransfer(_Wire):
    id_transfer: int | None = Field(default=None, alias="idTransfer", ge=1, le=5)
    amount: Decimal = Field(alias="transferAmount")
    fiscal_code: str = Field(alias="fiscalCodePA", min_length=1)
    iban: str | None = None
    mbd_attachment: str | None = Field(default=None, alias="mbdAttachment")
    remittance: str | None = Field(default=None, alias="remittanceInformation")
    category: str | None = Field(default=None, alias="transferCategory")


class _BizReceipt(_Wire):
    receipt_id: str = Field(alias="receiptId", min_length=1, max_length=35)
    notice_number: str = Field(alias="noticeNumber", min_length=1)
    fiscal_code: str = Field(alias="fiscalCode", min_length=1)
    outcome: str
    iuv: str = Field(alias="creditorReferenceId", min_length=1)
    amount: Decimal = Field(alias="paymentAmount")
    description: str | None = None
    company_name: str | None = Field(default=None, alias="companyName")
    debtor: _Subject | None = None
    transfers: list[_BizTransfer] = Field(alias="transferList")
    psp_id: str | None = Field(default=None, alias="idPSP")
    psp_name: str | None = Field(default=None, alias="pspCompanyName")
    channel_id: str | None = Field(default=None, alias="idChannel")
    payer: _Subject | None = None
    payment_method: str | None = Field(default=None, alias="paymentMethod")
    fee: Decimal | None = None
    payment_date_time: str | None = Field(default=None, alias="paymentDateTime")
    payment_date_time_formatted: str | None = Field(default=None, alias="paymentDateTimeFormatted")
    application_date: str | None = Field(default=None, alias="applicationDate")
    transfer_date: str | None = Field(default=None, alias="transferDate")
    metadata: list[_MapEntry] = Field(default_factory=list)

    @field_validator("amount", "fee")
    @classmethod
    def _cents(cls, value: Decimal | None) -> Decimal | None:
        return value.quantize(_CENT) if value is not None else None


def _day(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def _paid_at(formatted: str | None, plain: str | None) -> datetime | None:
    # paymentDateTimeFormatted carries an offset; paymentDateTime is Italian local time without one
    for value in (formatted, plain):
        if value:
            try:
                return parse_pagopa_datetime(value)
            except ValueError:
                continue
    return None


def receipt_from_biz_event(body: Mapping[str, Any], *, id_pa: str, raw: str | None = None) -> ReceiptIn:
    """A Biz-Events ``CtReceiptModelResponse`` as the receipt addressed to ``id_pa`` (ValueError if bad)."""
    try:
        wire = _BizReceipt.model_validate(body)
    except ValidationError as exc:
        raise ValueError(f"not a CtReceiptModelResponse: {exc.errors()[0]}") from exc
    transfers = tuple(
        ReceiptTransfer(
            id_transfer=t.id_transfer or index,
            amount=t.amount.quantize(_CENT),
            fiscal_code=t.fiscal_code,
            iban=t.iban or None,
            remittance=t.remittance or None,
            category=t.category or None,
            stamp=bool(t.mbd_attachment),
        )
        for index, t in enumerate(wire.transfers, start=1)
    )
    meta = {m.key.lower(): (m.value or "") for m in wire.metadata}
    return ReceiptIn(
        receipt_id=wire.receipt_id,
        id_pa=id_pa,
        fiscal_code=wire.fiscal_code,
        notice_number=wire.notice_number,
        iuv=wire.iuv,
        outcome=wire.outcome.upper(),
        amount=wire.amount,
        transfers=transfers,
        description=wire.description,
        company_name=wire.company_name,
        debtor_id=wire.debtor.value if wire.debtor else None,
        debtor_name=wire.debtor.full_name if wire.debtor else None,
        payer_id=wire.payer.value if wire.payer else None,
        payer_name=wire.payer.full_name if wire.payer else None,
        psp_id=wire.psp_id,
        psp_name=wire.psp_name,
        channel_id=wire.channel_id,
        payment_method=wire.payment_method,
        fee=wire.fee,
        payment_at=_paid_at(wire.payment_date_time_formatted, wire.payment_date_time),
        application_date=_day(wire.application_date),
        transfer_date=_day(wire.transfer_date),
        standin=meta.get("standin", "false").lower() == "true",
        payload=raw if raw is not None else json.dumps(body, default=str),
        payload_format="JSON",
    )


# --- GPD receipts: paSendRTV2Request / paSendRTReq XML -----------------------------------------------------


def _child(element: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if element is None:
            return None
        element = next((c for c in element if isinstance(c.tag, str) and local_name(c) == name), None)
    return element


def _text(element: etree._Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def _money(value: str | None, *, name: str) -> Decimal:
    try:
        return Decimal(value or "").quantize(_CENT)
    except InvalidOperation as exc:
        raise ValueError(f"{name} is not an amount: {value!r}") from exc


def receipt_from_rt_xml(xml: bytes | str, *, id_pa: str) -> ReceiptIn:
    """A ``paSendRTV2Request``/``paSendRTReq`` (or its SOAP envelope) as the receipt for ``id_pa``."""
    root = parse_xml(xml)
    if local_name(root) == "Envelope":
        body = _child(root, "Body")
        root = next((c for c in body if isinstance(c.tag, str)), root) if body is not None else root
    if local_name(root) not in RT_ELEMENTS:
        raise ValueError(f"expected paSendRTV2Request or paSendRTReq, got {local_name(root)}")
    r = _child(root, "receipt")
    if r is None:
        raise ValueError("no receipt element")
    transfers = []
    transfer_list = _child(r, "transferList")
    elements = [c for c in transfer_list if isinstance(c.tag, str)] if transfer_list is not None else []
    for index, t in enumerate(elements, start=1):
        transfers.append(
            ReceiptTransfer(
                id_transfer=int(_text(t, "idTransfer") or index),
                amount=_money(_text(t, "transferAmount"), name="transferAmount"),
                fiscal_code=_text(t, "fiscalCodePA") or "",
                iban=_text(t, "IBAN"),
                remittance=_text(t, "remittanceInformation"),
                category=_text(t, "transferCategory"),
                stamp=_child(t, "MBDAttachment") is not None,
            )
        )
    paid_at = _text(r, "paymentDateTime")
    fee = _text(r, "fee")
    receipt_id, nav, iuv = _text(r, "receiptId"), _text(r, "noticeNumber"), _text(r, "creditorReferenceId")
    if not (receipt_id and nav and iuv):
        raise ValueError("receiptId, noticeNumber and creditorReferenceId are required")
    raw = xml.decode("utf-8", errors="replace") if isinstance(xml, bytes) else xml
    return ReceiptIn(
        receipt_id=receipt_id,
        id_pa=id_pa,
        fiscal_code=_text(r, "fiscalCode") or "",
        notice_number=nav,
        iuv=iuv,
        outcome=(_text(r, "outcome") or "KO").upper(),
        amount=_money(_text(r, "paymentAmount"), name="paymentAmount"),
        transfers=tuple(transfers),
        description=_text(r, "description"),
        company_name=_text(r, "companyName"),
        debtor_id=_text(r, "debtor", "uniqueIdentifier", "entityUniqueIdentifierValue"),
        debtor_name=_text(r, "debtor", "fullName"),
        payer_id=_text(r, "payer", "uniqueIdentifier", "entityUniqueIdentifierValue"),
        payer_name=_text(r, "payer", "fullName"),
        psp_id=_text(r, "idPSP"),
        psp_name=_text(r, "PSPCompanyName"),
        channel_id=_text(r, "idChannel"),
        payment_method=_text(r, "paymentMethod"),
        payment_note=_text(r, "paymentNote"),
        fee=_money(fee, name="fee") if fee else None,
        payment_at=parse_pagopa_datetime(paid_at) if paid_at else None,
        application_date=_day(_text(r, "applicationDate")),
        transfer_date=_day(_text(r, "transferDate")),
        standin=(_text(r, "standIn") or "false") == "true",
        payload=raw,
        payload_format="XML",
    )


@lru_cache(maxsize=1)
def _rt_schema() -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(get_settings().spec_path(PA_FOR_NODE_XSD)), parser))


def rt_schema_errors(xml: bytes) -> list[str]:
    """Violations of ``paForNode.xsd`` by a receipt request element (empty when valid)."""
    root = parse_xml(xml)
    schema = _rt_schema()
    if schema.validate(etree.ElementTree(root)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


# --- the client --------------------------------------------------------------------------------------------


class ReceiptsClient:
    """Biz-Events and GPD receipts with one subscription key; the httpx transport is injected (or built)."""

    def __init__(
        self,
        *,
        bizevents_url: str,
        gpd_receipts_url: str,
        subscription_key: SecretStr | None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Accept": "application/json, application/xml"}
        if subscription_key is not None:
            register_secret(subscription_key.get_secret_value())
            headers[SUBSCRIPTION_KEY_HEADER] = subscription_key.get_secret_value()
        self._bizevents_url = bizevents_url.rstrip("/")
        self._gpd_receipts_url = gpd_receipts_url.rstrip("/")
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self._journal = journal or EventJournal()
        self._attempts, self._backoff, self._max_retry_after = max(1, attempts), backoff, max_retry_after
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls, *, transport: httpx.BaseTransport | None = None, journal: EventJournal | None = None
    ) -> ReceiptsClient:
        """A client for the configured endpoints (``PAGOFLOW_PAGOPA_*``) and subscription key."""
        cfg = get_endpoints()
        return cls(
            bizevents_url=cfg.bizevents_url,
            gpd_receipts_url=cfg.gpd_receipts_url,
            subscription_key=resolve_secret(cfg.subscription_key_ref),
            timeout=cfg.timeout_seconds,
            transport=transport,
            journal=journal,
            attempts=cfg.call_attempts,
            backoff=cfg.retry_backoff_seconds,
            max_retry_after=cfg.max_retry_after_seconds,
        )

    def __enter__(self) -> ReceiptsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- operations ----------------------------------------------------------------------------------

    def get_biz_event_receipt(self, *, fiscal_code: str, iur: str, iuv: str) -> ReceiptIn:
        """The receipt of (EC, IUR or receiptId, IUV) from Biz-Events, addressed to ``fiscal_code``."""
        url = f"{self._bizevents_url}/organizations/{fiscal_code}/receipts/{iur}/paymentoptions/{iuv}"

        def parse(response: httpx.Response) -> ReceiptIn:
            try:
                body = json.loads(response.content, parse_float=Decimal)
            except ValueError as exc:  # a cut or garbled body: asking again usually gives the whole answer
                raise PagopaRetriableError(
                    f"answer is not JSON ({exc})", operation=BIZ_EVENTS_OPERATION, status=response.status_code
                ) from exc
            if not isinstance(body, dict):
                raise PagopaSchemaError("answer is not a JSON object", operation=BIZ_EVENTS_OPERATION)
            try:
                receipt = receipt_from_biz_event(body, id_pa=fiscal_code, raw=response.text)
            except ValueError as exc:
                raise PagopaSchemaError(str(exc), operation=BIZ_EVENTS_OPERATION) from exc
            return _same_iuv(receipt, iuv=iuv, operation=BIZ_EVENTS_OPERATION)

        return self._call(
            BIZ_EVENTS_OPERATION, url, parse, keys={"id_dominio": fiscal_code, "iuv": iuv, "iur": iur}
        )

    def get_gpd_receipt(self, *, fiscal_code: str, iuv: str) -> ReceiptIn:
        """The first receipt of (EC, IUV) from GPD receipts, checked against paForNode.xsd."""
        url = f"{self._gpd_receipts_url}/payments/{fiscal_code}/receipts/{iuv}"

        def parse(response: httpx.Response) -> ReceiptIn:
            try:
                errors = rt_schema_errors(response.content)
            except ValueError as exc:  # not well-formed: most likely a cut answer
                raise PagopaRetriableError(
                    f"answer is not XML ({exc})", operation=GPD_RECEIPT_OPERATION, status=response.status_code
                ) from exc
            if errors:
                raise PagopaSchemaError(
                    f"receipt invalid against paForNode.xsd: {errors[0]}", operation=GPD_RECEIPT_OPERATION
                )
            try:
                receipt = receipt_from_rt_xml(response.content, id_pa=fiscal_code)
            except ValueError as exc:
                raise PagopaSchemaError(str(exc), operation=GPD_RECEIPT_OPERATION) from exc
            return _same_iuv(receipt, iuv=iuv, operation=GPD_RECEIPT_OPERATION)

        return self._call(GPD_RECEIPT_OPERATION, url, parse, keys={"id_dominio": fiscal_code, "iuv": iuv})

    # --- the one call path ---------------------------------------------------------------------------

    def _call(
        self, operation: str, url: str, parse: Callable[[httpx.Response], ReceiptIn], *, keys: dict[str, Any]
    ) -> ReceiptIn:
        """GET ``url``: journaled per attempt, retried when retriable (Retry-After honoured), classified."""
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._attempt(operation, url, parse, keys=keys | {"attempt": attempt})
            except PagopaError as exc:
                if not exc.retriable or attempt == self._attempts:
                    raise
                wait = delay if exc.retry_after is None else min(exc.retry_after, self._max_retry_after)
                log.info(
                    "receipts %s attempt %d failed (%s), again in %.1fs", operation, attempt, exc.reason, wait
                )
                self._sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _attempt(
        self, operation: str, url: str, parse: Callable[[httpx.Response], ReceiptIn], *, keys: dict[str, Any]
    ) -> ReceiptIn:
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            ex.request = f"GET {url}"
            try:
                response = self._http.get(url)
            except httpx.TimeoutException as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except httpx.TransportError as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = response.status_code
            ex.response = response.content
            error = classify_response(response, operation=operation)
            if error is not None:
                _mark(ex, error, status=response.status_code)
                raise error
            try:
                receipt = parse(response)
            except PagopaError as exc:
                _mark(ex, exc, status=response.status_code)
                raise
            ex.keys |= {"receipt_id": receipt.receipt_id, "nav": receipt.notice_number}
            return receipt


def _mark(ex: Exchange, error: PagopaError, *, status: int) -> None:
    code = error.code or (f"HTTP_{status}" if status >= 300 else type(error).__name__)
    if error.retriable:
        ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, error.reason
    else:
        ex.ko(fault_code=code, error=error.reason)


def _same_iuv(receipt: ReceiptIn, *, iuv: str, operation: str) -> ReceiptIn:
    if receipt.iuv != iuv:
        raise PagopaSchemaError(f"asked for IUV {iuv}, got a receipt of {receipt.iuv}", operation=operation)
    return receipt
