"""Counters and watermarks: IUV progressives and per-stage cursors."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.base import ts_field


class IuvCounter(SQLModel, table=True):
    """The last progressive handed out for an EC and IUV prefix; it only ever grows."""

    __tablename__ = "iuv_counter"
    id_dominio: str = Field(primary_key=True, max_length=11)
    prefix: str = Field(primary_key=True, max_length=12)
    last_value: int = Field(default=0)


class Watermark(SQLModel, table=True):
    """A named cursor of a stage (e.g. the last publishedGt of the FdR listing of an EC)."""

    __tablename__ = "watermark"
    name: str = Field(primary_key=True, max_length=120)
    value: str = Field(max_length=200)
    updated_at: datetime | None = ts_field()
