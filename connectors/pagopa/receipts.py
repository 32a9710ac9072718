"""Receipts pulled from pagoPA: Biz-Events (``openapi/biz_events.json``) and GPD receipts.

* Biz-Events ``GET /organizations/{fc}/receipts/{iur}/paymentoptions/{iuv}`` answers
  ``CtReceiptModelResponse`` JSON; its ``{iur}`` is documented as the payment token (the receiptId); the
  sandbox accepts the FdR IUR too.
* GPD receipts (``openapi/gpd_payments.json``) ``GET /payments/{fc}/receipts/{iuv}`` answers the
  ``paSendRTV2Request`` (``paSendRTReq`` for V1 stations) XML of the first receipt issued for the IUV, as
  ``application/xml``; it is checked against ``paForNode.xsd`` before use.

Both become a :class:`rules.receipts.ReceiptIn` addressed to the EC that asked (``id_pa``), so a pulled
receipt is processed exactly like a pushed one. One method per operation, all through the shared call path
of ``connectors.pagopa.http``, which times and journals every attempt, retries retriable faults a few times
(honouring ``Retry-After`` on 429/503) and classifies errors once: 404 is :class:`PagopaNotFoundError`
(stop asking), 429/5xx/timeouts are retriable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import httpx
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.journal import EventJournal
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaRetriableError, PagopaSchemaError
from connectors.pagopa.http import SyncConnector, client_settings, json_body, subscription_key
from models.settings import get_settings
from rules.receipts import (
    ReceiptIn,
    ReceiptTransfer,
    parse_pagopa_date,
    parse_pagopa_datetime,
    receipt_from_xml,
)
from rules.xmlsafe import local_name, parse_xml

BIZ_EVENTS_OPERATION = "getOrganizationReceiptIuvIur"
GPD_RECEIPT_OPERATION = "getReceiptByIUV"
PA_FOR_NODE_XSD = "wsdl/xsd/paForNode.xsd"
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
        application_date=parse_pagopa_date(wire.application_date),
        transfer_date=parse_pagopa_date(wire.transfer_date),
        standin=meta.get("standin", "false").lower() == "true",
        payload=raw if raw is not None else json.dumps(body, default=str),
        payload_format="JSON",
    )


# --- GPD receipts: paSendRTV2Request / paSendRTReq XML -----------------------------------------------------


def receipt_from_rt_xml(xml: bytes | str, *, id_pa: str) -> ReceiptIn:
    """A ``paSendRTV2Request``/``paSendRTReq`` (or its SOAP envelope) as the receipt for ``id_pa``."""
    root = parse_xml(xml)
    if local_name(root) == "Envelope":
        body = next((c for c in root if isinstance(c.tag, str) and local_name(c) == "Body"), None)
        root = next((c for c in body if isinstance(c.tag, str)), root) if body is not None else root
    return receipt_from_xml(root, id_pa=id_pa, raw=xml)


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


class ReceiptsClient(SyncConnector):
    """Biz-Events and GPD receipts with one subscription key; the httpx transport is injected (or built)."""

    component = "receipts"
    accept = "application/json, application/xml"
    journal_answers = True

    def __init__(self, *, bizevents_url: str, gpd_receipts_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bizevents_url = bizevents_url.rstrip("/")
        self._gpd_receipts_url = gpd_receipts_url.rstrip("/")

    @classmethod
    def from_settings(
        cls, *, transport: httpx.BaseTransport | None = None, journal: EventJournal | None = None
    ) -> ReceiptsClient:
        """A client for the configured endpoints (``PAGOFLOW_PAGOPA_*``) and subscription key."""
        cfg = get_endpoints()
        return cls(
            bizevents_url=cfg.bizevents_url,
            gpd_receipts_url=cfg.gpd_receipts_url,
            subscription_key=subscription_key(None),
            transport=transport,
            journal=journal,
            **client_settings(),
        )

    # --- operations ----------------------------------------------------------------------------------

    def get_biz_event_receipt(self, *, fiscal_code: str, iur: str, iuv: str) -> ReceiptIn:
        """The receipt of (EC, IUR or receiptId, IUV) from Biz-Events, addressed to ``fiscal_code``."""
        url = f"{self._bizevents_url}/organizations/{fiscal_code}/receipts/{iur}/paymentoptions/{iuv}"

        def parse(response: httpx.Response, operation: str) -> ReceiptIn:
            body = json_body(response, operation)
            if not isinstance(body, dict):
                raise PagopaSchemaError("answer is not a JSON object", operation=operation)
            try:
                receipt = receipt_from_biz_event(body, id_pa=fiscal_code, raw=response.text)
            except ValueError as exc:
                raise PagopaSchemaError(str(exc), operation=operation) from exc
            return _same_iuv(receipt, iuv=iuv, operation=operation)

        keys = {"id_dominio": fiscal_code, "iuv": iuv, "iur": iur}
        return self._call(BIZ_EVENTS_OPERATION, "GET", url, keys=keys, parse=parse, result_keys=_receipt_keys)

    def get_gpd_receipt(self, *, fiscal_code: str, iuv: str) -> ReceiptIn:
        """The first receipt of (EC, IUV) from GPD receipts, checked against paForNode.xsd."""
        url = f"{self._gpd_receipts_url}/payments/{fiscal_code}/receipts/{iuv}"

        def parse(response: httpx.Response, operation: str) -> ReceiptIn:
            try:
                errors = rt_schema_errors(response.content)
            except ValueError as exc:  # not well-formed: most likely a cut answer
                raise PagopaRetriableError(
                    f"answer is not XML ({exc})", operation=operation, status=response.status_code
                ) from exc
            if errors:
                raise PagopaSchemaError(
                    f"receipt invalid against paForNode.xsd: {errors[0]}", operation=operation
                )
            try:
                receipt = receipt_from_rt_xml(response.content, id_pa=fiscal_code)
            except ValueError as exc:
                raise PagopaSchemaError(str(exc), operation=operation) from exc
            return _same_iuv(receipt, iuv=iuv, operation=operation)

        keys = {"id_dominio": fiscal_code, "iuv": iuv}
        return self._call(
            GPD_RECEIPT_OPERATION, "GET", url, keys=keys, parse=parse, result_keys=_receipt_keys
        )


def _receipt_keys(receipt: ReceiptIn) -> dict[str, Any]:
    return {"receipt_id": receipt.receipt_id, "nav": receipt.notice_number}


def _same_iuv(receipt: ReceiptIn, *, iuv: str, operation: str) -> ReceiptIn:
    if receipt.iuv != iuv:
        raise PagopaSchemaError(f"asked for IUV {iuv}, got a receipt of {receipt.iuv}", operation=operation)
    return receipt
