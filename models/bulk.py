"""Bulk files of positions (tracciati) and the outcome of every row."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, ts_field


class BulkState(StrEnum):
    """Where the loading of a bulk file stands."""

    RECEIVED = "RECEIVED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class RowOutcome(StrEnum):
    """What happened to one row."""

    ADDED = "ADDED"
    UPDATED = "UPDATED"
    UNCHANGED = "UNCHANGED"
    ANNULLED = "ANNULLED"
    REJECTED = "REJECTED"


class BulkFile(SQLModel, table=True):
    """A bulk file, identified by its content hash so a re-run finds its earlier progress."""

    __tablename__ = "bulk_file"
    __table_args__ = (UniqueConstraint("sha256", "id_a2a", name="uq_bulk_file"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255)
    sha256: str = Field(max_length=64)
    format: str = Field(max_length=8)
    id_a2a: str | None = Field(default=None, max_length=35)
    id_dominio: str | None = Field(default=None, max_length=11)
    debt_type: str | None = Field(default=None, max_length=35)
    state: str = enum_field(BulkState, default=BulkState.RECEIVED)
    total_rows: int = Field(default=0)
    processed_rows: int = Field(default=0)
    counts: Any = json_field()
    outcome_path: str | None = Field(default=None, max_length=500)
    notices_path: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_field()
    finished_at: datetime | None = ts_field()


class BulkRow(SQLModel, table=True):
    """The outcome of one row of a bulk file."""

    __tablename__ = "bulk_row"
    __table_args__ = (UniqueConstraint("bulk_file_id", "row_number", name="uq_bulk_row"),)
    id: int | None = Field(default=None, primary_key=True)
    bulk_file_id: int = Field(foreign_key="bulk_file.id", index=True)
    row_number: int
    outcome: str = enum_field(RowOutcome)
    reason: str | None = Field(default=None, max_length=1000)
    id_a2a: str | None = Field(default=None, max_length=35)
    id_pendenza: str | None = Field(default=None, max_length=35)
    id_dominio: str | None = Field(default=None, max_length=11)
    nav: str | None = Field(default=None, max_length=18)
