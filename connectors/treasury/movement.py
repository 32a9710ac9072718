"""A treasury account movement as every file format reads it; the formats, their errors, the CSV mapping."""

from __future__ import annotations

import hashlib
from datetime import date
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from models.types import to_money
from rules.remittance import parse_remittance


class TreasuryFormat(StrEnum):
    """The account-journal formats a treasury bank delivers."""

    OPI = "opi"
    CBI_RH = "cbi_rh"
    CAMT053 = "camt053"
    CAMT054 = "camt054"
    MT940 = "mt940"
    CSV = "csv"


_MAX_REASON = 300


class TreasuryFormatError(ValueError):
    """A treasury file that cannot be read: which file, which record (ordinal or line) and which field."""

    def __init__(
        self,
        message: str,
        *,
        source_name: str = "",
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source_name = source_name
        self.record = record
        self.field = field
        # A hostile file can put megabytes in one field: the message quotes at most the start of it.
        if len(message) > _MAX_REASON:
            message = message[: _MAX_REASON - 1] + "…"
        self.reason = message
        where = [source_name or "<treasury file>"]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field}")
        super().__init__(f"{', '.join(where)}: {message}")


class Movement(BaseModel):
    """A movement on the EC's account; amounts are signed (credits positive, debits negative)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account: str | None = None
    amount: Decimal
    currency: str = "EUR"
    value_date: date | None = None
    booking_date: date | None = None
    remittance: str = ""
    ordering_party: str | None = None
    end_to_end_id: str | None = None
    bank_reference: str | None = None
    bank_movement_id: str | None = None
    reversal: bool = False
    kind: str | None = None
    status: str | None = None
    ordinal: int

    @field_validator("amount")
    @classmethod
    def _two_places(cls, value: Decimal) -> Decimal:
        if not value.is_finite():
            raise ValueError("amount must be a finite number")
        return to_money(value)

    def fingerprint(self) -> str:
        """SHA-256 hex of the business content, for dedupe when the bank gives no movement id.

        Fields: signed amount, currency, value date, booking date, and what the causale names — the flow
        id or IUV found by ``parse_remittance`` (case-folded), else the causale text upper-cased with its
        blanks collapsed. These read the same in OPI, CBI RH, camt and MT940 for the same pagoPA movement.
        Left out because they differ between formats of the same movement: account (IBAN vs OPI conto
        evidenza), references and ids (MT940 cuts the end-to-end id at 16), kind, status, ordinal, and the
        free text around a recognised reference. Two genuinely identical movements on the same day share a
        fingerprint: a caller deduping within one file should count repeats.
        """
        named = parse_remittance(self.remittance)
        if named.reference is not None:
            subject = f"{named.kind}:{named.reference.casefold()}"
        else:
            subject = "text:" + " ".join(self.remittance.upper().split())
        parts = (
            f"{self.amount:.2f}",
            self.currency.upper(),
            self.value_date.isoformat() if self.value_date else "",
            self.booking_date.isoformat() if self.booking_date else "",
            subject,
        )
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class CsvMapping(BaseModel):
    """How to read a treasury CSV export: layout, number and date formats, and a header name per field.

    The amount is either one column (signed, or made signed by a ``sign`` column) or a pair of
    ``credit``/``debit`` columns holding unsigned amounts. Several remittance columns are joined with a space.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delimiter: str = ";"
    encoding: str = "utf-8-sig"
    quotechar: str = '"'
    skip_lines: int = 0
    date_format: str = "%d/%m/%Y"
    decimal_comma: bool = True
    amount: str | None = None
    sign: str | None = None
    credit_signs: tuple[str, ...] = ("C", "+", "A", "AVERE", "CR", "CRDT")
    debit_signs: tuple[str, ...] = ("D", "-", "DARE", "DR", "DBIT")
    credit: str | None = None
    debit: str | None = None
    account: str | None = None
    currency: str | None = None
    value_date: str | None = None
    booking_date: str | None = None
    remittance: tuple[str, ...] = ()
    ordering_party: str | None = None
    end_to_end_id: str | None = None
    bank_reference: str | None = None
    bank_movement_id: str | None = None
    reversal: str | None = None
    reversal_values: tuple[str, ...] = ("1", "S", "SI", "Y", "YES", "TRUE", "STORNO")
    kind: str | None = None
    status: str | None = None

    @model_validator(mode="after")
    def _one_amount_layout(self) -> CsvMapping:
        single = self.amount is not None
        pair = self.credit is not None or self.debit is not None
        if single == pair:
            raise ValueError("map either 'amount' (optionally with 'sign') or 'credit'/'debit', not both")
        if pair and (self.credit is None or self.debit is None):
            raise ValueError("'credit' and 'debit' columns go together")
        if len(self.delimiter) != 1:
            raise ValueError("the delimiter is one character")
        return self

    def columns(self) -> dict[str, str]:
        """Movement field (or amount part) → header name, for every mapped column."""
        mapped = {
            name: getattr(self, name)
            for name in (
                "amount",
                "sign",
                "credit",
                "debit",
                "account",
                "currency",
                "value_date",
                "booking_date",
                "ordering_party",
                "end_to_end_id",
                "bank_reference",
                "bank_movement_id",
                "reversal",
                "kind",
                "status",
            )
            if getattr(self, name) is not None
        }
        for index, header in enumerate(self.remittance):
            mapped[f"remittance[{index}]"] = header
        return mapped
