"""Treasury files fetched from the bank and the movements of the EC's account."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, money_field, ts_field


class TreasuryFileState(StrEnum):
    """What became of a fetched file."""

    PROCESSED = "PROCESSED"
    QUARANTINED = "QUARANTINED"


class TreasuryFile(SQLModel, table=True):
    """A treasury journal file fetched once, identified by its content hash."""

    __tablename__ = "treasury_file"
    __table_args__ = (UniqueConstraint("source", "sha256", name="uq_treasury_file"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=140)
    name: str = Field(max_length=255)
    size: int
    mtime: datetime | None = ts_field()
    sha256: str = Field(max_length=64)
    format: str | None = Field(default=None, max_length=16)
    state: str = enum_field(TreasuryFileState, default=TreasuryFileState.PROCESSED)
    error: str | None = Field(default=None, sa_type=Text)
    movements: int = Field(default=0)
    duplicates: int = Field(default=0)
    received_at: datetime = created_field()


class MovementMatch(StrEnum):
    """How far reconciliation got with a movement."""

    PENDING = "PENDING"
    MATCHED = "MATCHED"
    PARTIAL = "PARTIAL"
    UNMATCHED = "UNMATCHED"
    NOT_PAGOPA = "NOT_PAGOPA"
    REVERSED = "REVERSED"


class TreasuryMovement(SQLModel, table=True):
    """One movement of an EC's treasury account."""

    __tablename__ = "treasury_movement"
    __table_args__ = (
        UniqueConstraint("account", "dedupe_key", name="uq_treasury_movement"),
        Index("ix_movement_match", "id_dominio", "match_state"),
        Index("ix_movement_reference", "reference_lower"),
    )
    id: int | None = Field(default=None, primary_key=True)
    file_id: int | None = Field(default=None, foreign_key="treasury_file.id", index=True)
    id_dominio: str | None = Field(default=None, max_length=11)
    account: str = Field(max_length=34)
    dedupe_key: str = Field(max_length=100)
    amount: Decimal = money_field()
    currency: str = Field(default="EUR", max_length=3)
    value_date: date | None = Field(default=None, index=True)
    booking_date: date | None = Field(default=None)
    remittance: str = Field(default="", sa_type=Text)
    ordering_party: str | None = Field(default=None, max_length=140)
    end_to_end_id: str | None = Field(default=None, max_length=70)
    bank_reference: str | None = Field(default=None, max_length=70)
    bank_movement_id: str | None = Field(default=None, max_length=70)
    reversal: bool = Field(default=False)
    kind: str | None = Field(default=None, max_length=40)
    status: str | None = Field(default=None, max_length=40)
    reference_kind: str | None = Field(default=None, max_length=10)
    reference: str | None = Field(default=None, max_length=70)
    reference_lower: str | None = Field(default=None, max_length=70)
    integrative: int | None = Field(default=None)
    match_state: str = enum_field(MovementMatch, default=MovementMatch.PENDING)
    created_at: datetime = created_field()
