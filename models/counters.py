"""Counters, watermarks and work claims: IUV progressives, per-stage cursors, leases on coarse work units."""

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


class WorkClaim(SQLModel, table=True):
    """A lease on a coarse unit of work (an EC's flow download, a treasury source) held by one run at a time.

    Free when ``claimed_until`` is NULL (released) or past (its holder died); see ``store.claims``.
    """

    __tablename__ = "work_claim"
    name: str = Field(primary_key=True, max_length=120)
    holder: str | None = Field(default=None, max_length=120)
    claimed_at: datetime | None = ts_field()
    claimed_until: datetime | None = ts_field()
