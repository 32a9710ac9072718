"""Reporting flows (FR) downloaded from pagoPA and their lines."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, money_field, ts_field


class FlowState(StrEnum):
    """A flow is ACCETTATA when its checks pass, ANOMALA otherwise, OBSOLETA once a newer revision came."""

    ACCETTATA = "ACCETTATA"
    ANOMALA = "ANOMALA"
    OBSOLETA = "OBSOLETA"


class LineState(StrEnum):
    """How a reporting line relates to what we know."""

    LINKED = "LINKED"
    NO_RECEIPT = "NO_RECEIPT"
    UNKNOWN = "UNKNOWN"
    ANOMALA = "ANOMALA"
    ALTRO_INTERMEDIARIO = "ALTRO_INTERMEDIARIO"


class ReportingFlow(SQLModel, table=True):
    """One revision of a reporting flow (FR) of one PSP for one EC."""

    __tablename__ = "reporting_flow"
    __table_args__ = (
        UniqueConstraint("id_dominio", "id_flusso", "psp_id", "revision", name="uq_reporting_flow"),
        Index("ix_reporting_flow_lookup", "id_dominio", "id_flusso_lower"),
    )
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(max_length=11)
    id_flusso: str = Field(max_length=35)
    id_flusso_lower: str = Field(max_length=35)
    psp_id: str = Field(max_length=35)
    psp_name: str | None = Field(default=None, max_length=140)
    revision: int = Field(default=1)
    flow_at: datetime | None = ts_field()
    settlement_ref: str | None = Field(default=None, max_length=35)
    settlement_date: date | None = Field(default=None)
    bic: str | None = Field(default=None, max_length=11)
    total_count: int
    total_amount: Decimal = money_field()
    state: str = enum_field(FlowState, default=FlowState.ACCETTATA, index=True)
    anomalies: Any = json_field()
    source: str = Field(default="FDR_REST", max_length=10)
    published_at: datetime | None = ts_field()
    downloaded_at: datetime = created_field()
    reconciled: bool = Field(default=False)
    payload: str | None = Field(default=None)


class ReportingLine(SQLModel, table=True):
    """One payment line of a reporting flow."""

    __tablename__ = "reporting_line"
    __table_args__ = (
        UniqueConstraint("flow_id", "line_index", name="uq_reporting_line"),
        Index("ix_reporting_line_key", "iuv", "iur", "transfer_index"),
    )
    id: int | None = Field(default=None, primary_key=True)
    flow_id: int = Field(foreign_key="reporting_flow.id", index=True)
    line_index: int
    iuv: str = Field(max_length=35)
    iur: str = Field(max_length=35)
    transfer_index: int = Field(default=1)
    amount: Decimal = money_field()
    outcome: int = Field(default=0)
    pay_date: date | None = Field(default=None)
    state: str = enum_field(LineState, default=LineState.UNKNOWN)
    anomalies: Any = json_field()
    collection_id: int | None = Field(default=None, foreign_key="collection.id")
    position_id: int | None = Field(default=None, foreign_key="position.id")
    recovery_claimed_until: datetime | None = ts_field()  # a receipts run is asking pagoPA for it until then
