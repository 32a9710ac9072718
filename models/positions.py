"""Debt positions (pendenze) and their 1–5 voci."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, money_field, ts_field


class PositionState(StrEnum):
    """Stored state of a position; SCADUTA is computed on read and never stored."""

    NON_ESEGUITA = "NON_ESEGUITA"
    ESEGUITA = "ESEGUITA"
    ESEGUITA_PARZIALE = "ESEGUITA_PARZIALE"
    ANNULLATA = "ANNULLATA"
    INCASSATA = "INCASSATA"
    ANOMALA = "ANOMALA"


class PublicationState(StrEnum):
    """Where a position stands with GPD/ACA."""

    NONE = "NONE"
    PENDING = "PENDING"
    PUBLISHED = "PUBLISHED"
    INVALIDATED = "INVALIDATED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"


class ItemKind(StrEnum):
    """What a voce credits."""

    IBAN = "IBAN"
    REVENUE = "REVENUE"
    STAMP = "STAMP"


class ItemState(StrEnum):
    """State of one voce."""

    NON_ESEGUITO = "NON_ESEGUITO"
    ESEGUITO = "ESEGUITO"
    ANOMALO = "ANOMALO"


class Position(SQLModel, table=True):
    """A debt position of one debtor towards one EC, owned by one application."""

    __tablename__ = "position"
    __table_args__ = (
        UniqueConstraint("id_a2a", "id_pendenza", name="uq_position_a2a"),
        UniqueConstraint("id_dominio", "iuv", name="uq_position_iuv"),
        UniqueConstraint("id_dominio", "nav", name="uq_position_nav"),
        # partial (migration 0009): a row outside the predicate has no entry to rewrite when it changes
        Index("ix_position_publication_queue", "publication_state", "id",
              postgresql_where=text("publication_state IN ('PENDING', 'FAILED')"),
              sqlite_where=text("publication_state IN ('PENDING', 'FAILED')")),
        Index("ix_position_debtor", "id_dominio", "debtor_id"),
        Index("ix_position_document", "id_dominio", "document_id",
              postgresql_where=text("document_id IS NOT NULL"), sqlite_where=text("document_id IS NOT NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)
    id_a2a: str = Field(foreign_key="application.id_a2a", max_length=35)
    id_pendenza: str = Field(max_length=35)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11)
    debt_type: str = Field(max_length=35)
    unit_code: str | None = Field(default=None, max_length=35)
    causale: str = Field(max_length=140)
    debtor_type: str = Field(default="F", max_length=1)
    debtor_id: str = Field(max_length=35)
    debtor_name: str = Field(max_length=140)
    debtor_address: str | None = Field(default=None, max_length=70)
    debtor_civic: str | None = Field(default=None, max_length=16)
    debtor_cap: str | None = Field(default=None, max_length=16)
    debtor_locality: str | None = Field(default=None, max_length=35)
    debtor_province: str | None = Field(default=None, max_length=35)
    debtor_nation: str | None = Field(default=None, max_length=2)
    debtor_email: str | None = Field(default=None, max_length=256)
    debtor_phone: str | None = Field(default=None, max_length=35)
    amount: Decimal = money_field()
    iuv: str | None = Field(default=None, max_length=35)
    nav: str | None = Field(default=None, max_length=18)
    iupd: str | None = Field(default=None, max_length=100)
    valid_until: date | None = Field(default=None)
    due_date: date | None = Field(default=None)
    year: int | None = Field(default=None)
    cartella: str | None = Field(default=None, max_length=35)
    taxonomy: str | None = Field(default=None, max_length=140)
    direction: str | None = Field(default=None, max_length=35)
    division: str | None = Field(default=None, max_length=35)
    attached_data: Any = json_field()
    document_id: str | None = Field(default=None, max_length=35)
    document_description: str | None = Field(default=None, max_length=140)
    instalment: int | None = Field(default=None)
    threshold: str | None = Field(default=None, max_length=35)
    # not indexed (migration 0009): a change of state then rewrites no index entry (a HOT update on PostgreSQL)
    state: str = enum_field(PositionState, default=PositionState.NON_ESEGUITA)
    state_description: str | None = Field(default=None, max_length=255)
    anomaly: str | None = Field(default=None, max_length=255)
    paid_without_receipt: bool = Field(default=False)
    content_hash: str = Field(max_length=64)
    version: int = Field(default=1)
    published_version: int = Field(default=0)
    publication_state: str = enum_field(PublicationState, default=PublicationState.PENDING)
    published_at: datetime | None = ts_field()
    publication_error: str | None = Field(default=None, max_length=500)
    publication_attempts: int = Field(default=0)
    publication_claimed_until: datetime | None = ts_field()  # a publisher is sending it to GPD/ACA until then
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()
    paid_at: datetime | None = ts_field()
    cashed_at: datetime | None = ts_field()
    annulled_at: datetime | None = ts_field()


class PositionItem(SQLModel, table=True):
    """One voce of a position: an amount credited to an IBAN, a revenue type or a digital stamp."""

    __tablename__ = "position_item"
    __table_args__ = (
        UniqueConstraint("position_id", "item_index", name="uq_position_item_index"),
        UniqueConstraint("position_id", "id_voce", name="uq_position_item_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    position_id: int = Field(foreign_key="position.id", index=True)
    item_index: int
    id_voce: str = Field(max_length=35)
    id_dominio: str = Field(max_length=11)
    description: str = Field(max_length=140)
    amount: Decimal = money_field()
    kind: str = enum_field(ItemKind, default=ItemKind.IBAN)
    iban: str | None = Field(default=None, max_length=34)
    support_iban: str | None = Field(default=None, max_length=34)
    postal: bool = Field(default=False)
    revenue_code: str | None = Field(default=None, max_length=35)
    accounting_type: str | None = Field(default=None, max_length=10)
    accounting_code: str | None = Field(default=None, max_length=140)
    stamp_type: str | None = Field(default=None, max_length=2)
    stamp_hash: str | None = Field(default=None, max_length=70)
    stamp_province: str | None = Field(default=None, max_length=2)
    attached_data: Any = json_field()
    state: str = enum_field(ItemState, default=ItemState.NON_ESEGUITO)
