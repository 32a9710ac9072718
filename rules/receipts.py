"""A receipt as pagoPA gives it (pushed by paSendRT/paSendRTV2 or pulled), independent of the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

ROME = ZoneInfo("Europe/Rome")


def parse_pagopa_datetime(value: str) -> datetime:
    """A pagoPA timestamp as aware UTC; pagoPA writes local Italian time when it gives no offset."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ROME)
    return parsed.astimezone(ZoneInfo("UTC"))


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
