"""The event journal (giornale degli eventi): every exchange with pagoPA, applications and the treasury."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field


class Role(StrEnum):
    """Whether we called (CLIENT) or were called (SERVER)."""

    CLIENT = "CLIENT"
    SERVER = "SERVER"


class Outcome(StrEnum):
    """OK; KO is a business error answered by the peer; FAIL is a technical failure."""

    OK = "OK"
    KO = "KO"
    FAIL = "FAIL"


class Event(SQLModel, table=True):
    """One exchange, with correlation keys an operator can search."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_iuv", "id_dominio", "iuv"),
        Index("ix_event_at", "at"),
        Index("ix_event_flusso", "id_flusso"),
        Index("ix_event_receipt", "receipt_id"),
        Index("ix_event_nav", "nav"),
    )
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_field()
    component: str = Field(max_length=40)
    operation: str = Field(max_length=80)
    role: str = enum_field(Role)
    outcome: str = enum_field(Outcome)
    duration_ms: int | None = Field(default=None)
    id_dominio: str | None = Field(default=None, max_length=11)
    iuv: str | None = Field(default=None, max_length=35)
    nav: str | None = Field(default=None, max_length=18)
    receipt_id: str | None = Field(default=None, max_length=35)
    id_flusso: str | None = Field(default=None, max_length=35)
    file_name: str | None = Field(default=None, max_length=255)
    id_a2a: str | None = Field(default=None, max_length=35)
    http_status: int | None = Field(default=None)
    fault_code: str | None = Field(default=None, max_length=60)
    error: str | None = Field(default=None, sa_type=Text)
    keys: Any = json_field()
    request_payload: str | None = Field(default=None, sa_type=Text)
    response_payload: str | None = Field(default=None, sa_type=Text)
