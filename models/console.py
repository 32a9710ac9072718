"""The operator console's audit trail: who did what, when, to which object, with the before and after."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from models.base import created_field, json_field


class OperatorAction(SQLModel, table=True):
    """One action of an operator in the console (login, annulment, a match confirmed, an upload…)."""

    __tablename__ = "operator_action"
    __table_args__ = (
        Index("ix_operator_action_subject", "entity", "entity_key"),
        Index("ix_operator_action_at", "at"),
        Index("ix_operator_action_ec", "id_dominio", "at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_field()
    username: str = Field(max_length=140, index=True)
    action: str = Field(max_length=40)
    entity: str = Field(max_length=40)
    entity_key: str = Field(max_length=200)
    id_dominio: str | None = Field(default=None, max_length=11)
    reason: str | None = Field(default=None, max_length=500)
    before: Any = json_field()
    after: Any = json_field()
