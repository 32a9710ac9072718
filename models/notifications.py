"""The queue of notifications to the EC applications."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, ts_field


class NotificationState(StrEnum):
    """A notification waits (PENDING) until DELIVERED; it is never dropped."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    NO_ENDPOINT = "NO_ENDPOINT"


class Notification(SQLModel, table=True):
    """A receipt to deliver to the application that owns the position."""

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("receipt_pk", "kind", name="uq_notification"),
        Index("ix_notification_due", "state", "next_attempt_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="RICEVUTA", max_length=16)
    id_a2a: str = Field(max_length=35, index=True)
    id_dominio: str = Field(max_length=11)
    iuv: str = Field(max_length=35)
    receipt_pk: int = Field(foreign_key="receipt.id")
    state: str = enum_field(NotificationState, default=NotificationState.PENDING)
    attempts: int = Field(default=0)
    next_attempt_at: datetime | None = ts_field()
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    claimed_until: datetime | None = ts_field()
    created_at: datetime = created_field()
    delivered_at: datetime | None = ts_field()
