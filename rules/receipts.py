"""A receipt as pagoPA gives it (pushed by paSendRT/paSendRTV2 or pulled), independent of the wire format.

``receipt_from_xml`` maps the paForNode receipt element, whoever brought it: the station (pushed) and the
GPD receipts connector (pulled) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from lxml import etree

from rules.xmlsafe import local_name

ROME = ZoneInfo("Europe/Rome")
RT_ELEMENTS = frozenset({"paSendRTV2Request", "paSendRTReq"})
_CENT = Decimal("0.01")


def parse_pagopa_datetime(value: str) -> datetime:
    """A pagoPA timestamp as aware UTC; pagoPA writes local Italian time when it gives no offset."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ROME)
    try:
        return parsed.astimezone(ZoneInfo("UTC"))
    except OverflowError as exc:  # year 1 or 9999 pushed past the calendar: valid xs:dateTime, no payment
        raise ValueError(f"timestamp {value[:40]!r} out of range") from exc


def parse_pagopa_date(value: str | None) -> date | None:
    """The day of a pagoPA date or timestamp (its first ten characters); None when absent or unreadable."""
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class ReceiptTransfer:
    """One transfer of a receipt."""

    id_transfer: int
    amount: Decimal
    fiscal_code: str
    iban: str | None
    remittance: str | None
    category: str | None
    stamp: bool = False


@dataclass(frozen=True)
class ReceiptIn:
    """Everything a receipt says that the platform keeps."""

    receipt_id: str
    id_pa: str  # the EC the receipt was addressed to (several for multi-beneficiary payments)
    fiscal_code: str  # the EC of the notice
    notice_number: str
    iuv: str
    outcome: str
    amount: Decimal
    transfers: tuple[ReceiptTransfer, ...] = field(default_factory=tuple)
    description: str | None = None
    company_name: str | None = None
    debtor_id: str | None = None
    debtor_name: str | None = None
    payer_id: str | None = None
    payer_name: str | None = None
    psp_id: str | None = None
    psp_name: str | None = None
    channel_id: str | None = None
    payment_method: str | None = None
    payment_note: str | None = None
    fee: Decimal | None = None
    payment_at: datetime | None = None
    application_date: date | None = None
    transfer_date: date | None = None
    standin: bool = False
    payload: str | None = None
    payload_format: str | None = None

    def own_transfers(self) -> tuple[ReceiptTransfer, ...]:
        """The transfers that credit the EC the receipt was addressed to."""
        return tuple(t for t in self.transfers if t.fiscal_code == self.id_pa)

    def problems(self) -> list[str]:
        """Semantic faults of the receipt (the schema has already been checked)."""
        out = []
        total = sum((t.amount for t in self.transfers), Decimal("0.00"))
        if self.transfers and total != self.amount:
            out.append(f"the transfers total {total}, the receipt says {self.amount}")
        ids = [t.id_transfer for t in self.transfers]
        if len(set(ids)) != len(ids):
            out.append("idTransfer repeated")
        if self.outcome == "OK" and not any(t.fiscal_code == self.id_pa for t in self.transfers):
            out.append(f"no transfer credits {self.id_pa}")
        return out


# --- the paForNode receipt (paSendRTV2Request / paSendRTReq) -----------------------------------------------


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
        amount = Decimal(value or "")
        if not amount.is_finite():  # NaN, sNaN, Infinity pass the Decimal parser (and the XSD's decimal)
            raise InvalidOperation
        return amount.quantize(_CENT)
    except InvalidOperation as exc:
        raise ValueError(f"{name} is not an amount: {value[:40] if value else value!r}") from exc


def receipt_from_xml(element: etree._Element, *, id_pa: str, raw: str | bytes) -> ReceiptIn:
    """A ``paSendRTV2Request``/``paSendRTReq`` element as the receipt for ``id_pa`` (ValueError if not one).

    ``raw`` is the message as it arrived, kept as the receipt's payload; a time without an offset is Italian.
    """
    if local_name(element) not in RT_ELEMENTS:
        raise ValueError(f"expected paSendRTV2Request or paSendRTReq, got {local_name(element)}")
    r = _child(element, "receipt")
    if r is None:
        raise ValueError("no receipt element")
    transfer_list = _child(r, "transferList")
    elements = [c for c in transfer_list if isinstance(c.tag, str)] if transfer_list is not None else []
    transfers = tuple(
        ReceiptTransfer(
            id_transfer=int(_text(t, "idTransfer") or index),
            amount=_money(_text(t, "transferAmount"), name="transferAmount"),
            fiscal_code=_text(t, "fiscalCodePA") or "",
            iban=_text(t, "IBAN"),
            remittance=_text(t, "remittanceInformation"),
            category=_text(t, "transferCategory"),
            stamp=_child(t, "MBDAttachment") is not None,
        )
        for index, t in enumerate(elements, start=1)
    )
    receipt_id, nav, iuv = _text(r, "receiptId"), _text(r, "noticeNumber"), _text(r, "creditorReferenceId")
    if not (receipt_id and nav and iuv):
        raise ValueError("receiptId, noticeNumber and creditorReferenceId are required")
    paid_at, fee = _text(r, "paymentDateTime"), _text(r, "fee")
    return ReceiptIn(
        receipt_id=receipt_id,
        id_pa=id_pa,
        fiscal_code=_text(r, "fiscalCode") or "",
        notice_number=nav,
        iuv=iuv,
        outcome=(_text(r, "outcome") or "KO").upper(),
        amount=_money(_text(r, "paymentAmount"), name="paymentAmount"),
        transfers=transfers,
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
        application_date=parse_pagopa_date(_text(r, "applicationDate")),
        transfer_date=parse_pagopa_date(_text(r, "transferDate")),
        standin=(_text(r, "standIn") or "false") == "true",
        payload=raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw,
        payload_format="XML",
    )
