"""Reconciliation: GovPay-style riconciliazioni, per-transfer labels and suggested matches."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, money_field, ts_field


class ReconciliationState(StrEnum):
    """State of a riconciliazione (Ragioneria API and movement processing)."""

    IN_ELABORAZIONE = "IN_ELABORAZIONE"
    ACQUISITO = "ACQUISITO"
    ERRORE = "ERRORE"


class Reconciliation(SQLModel, table=True):
    """The outcome of matching one treasury movement (or one Ragioneria submission)."""

    __tablename__ = "reconciliation"
    __table_args__ = (
        UniqueConstraint("id_dominio", "external_id", name="uq_reconciliation"),
        # one riconciliazione per movement: reconcile upserts on it; the API adopts a journal movement's row
        Index("ix_reconciliation_movement_id", "movement_id", unique=True),
    )
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(max_length=11)
    external_id: str = Field(max_length=100)
    movement_id: int | None = Field(default=None, foreign_key="treasury_movement.id")
    request_hash: str | None = Field(default=None, max_length=64)
    request: Any = json_field()
    amount: Decimal = money_field()
    value_date: date | None = Field(default=None)
    id_flusso: str | None = Field(default=None, max_length=35)
    flow_id: int | None = Field(default=None, foreign_key="reporting_flow.id", index=True)
    iuv: str | None = Field(default=None, max_length=35)
    state: str = enum_field(ReconciliationState, default=ReconciliationState.IN_ELABORAZIONE)
    outcome_code: str | None = Field(default=None, max_length=6)
    description: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_field()
    processed_at: datetime | None = ts_field()


class Label(StrEnum):
    """Per-transfer reconciliation labels (DOMAIN §10)."""

    RT_IUF_TES = "RT_IUF_TES"
    RT_IUF = "RT_IUF"
    RT_NO_IUF = "RT_NO_IUF"
    IUV_NO_RT = "IUV_NO_RT"
    IUF_NO_TES = "IUF_NO_TES"
    IUF_TES_DIV_IMP = "IUF_TES_DIV_IMP"
    TES_NO_IUF_OR_IUV = "TES_NO_IUF_OR_IUV"
    TES_NO_MATCH = "TES_NO_MATCH"
    DOPPI = "DOPPI"
    RT_TES = "RT_TES"


class TransferLabel(SQLModel, table=True):
    """A current label of one subject (a transfer, a flow or a movement), recomputed as inputs arrive.

    A subject may carry several labels at once (a reported and cashed transfer is RT_IUF and RT_IUF_TES).
    """

    __tablename__ = "transfer_label"
    __table_args__ = (
        # label second: it also serves lookups by (EC, label), so no other index is kept up (migration 0009)
        UniqueConstraint("id_dominio", "label", "subject", "subject_key", name="uq_transfer_label"),
    )
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(max_length=11)
    subject: str = Field(max_length=12)
    subject_key: int  # the subject's id (collection, line, flow, movement): ordered as written (migration 0009)
    label: str = enum_field(Label)
    iuv: str | None = Field(default=None, max_length=35)
    iur: str | None = Field(default=None, max_length=35)
    transfer_index: int | None = Field(default=None)
    id_flusso: str | None = Field(default=None, max_length=35)
    # a copy of the movement id, no foreign key: each run recomputes labels from the movements that exist, and
    # checking a reference per label written (a million on a large EC's first run) cost a third of the writing
    movement_id: int | None = Field(default=None)
    amount: Decimal | None = money_field(nullable=True, default=None)
    updated_at: datetime = created_field()  # since when the label holds as it is


class SuggestionState(StrEnum):
    """An operator's decision on a suggested match."""

    PROPOSED = "PROPOSED"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"


class MatchSuggestion(SQLModel, table=True):
    """A proposed movement ↔ flow match for money without a usable remittance."""

    __tablename__ = "match_suggestion"
    __table_args__ = (UniqueConstraint("movement_id", "flow_id", name="uq_match_suggestion"),)
    id: int | None = Field(default=None, primary_key=True)
    movement_id: int = Field(foreign_key="treasury_movement.id", index=True)
    flow_id: int = Field(foreign_key="reporting_flow.id")
    score: float = Field(default=0.0)
    reasons: Any = json_field()
    state: str = enum_field(SuggestionState, default=SuggestionState.PROPOSED)
    decided_by: str | None = Field(default=None, max_length=140)
    decided_at: datetime | None = ts_field()
    created_at: datetime = created_field()
