"""IUV allocation: a database counter per (EC, prefix) that never hands out a progressive twice."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session

from models.counters import IuvCounter
from models.registry import Creditor
from rules.identifiers import Notice, build_notice
from store.common import insert_ignore


def allocate_progressives(session: Session, *, id_dominio: str, prefix: str = "", count: int = 1) -> range:
    """Reserve ``count`` consecutive progressives for (EC, prefix) in the caller's transaction.

    A single ``UPDATE … RETURNING`` takes the row lock on PostgreSQL and the write lock on SQLite, so
    concurrent callers queue; a rolled-back transaction gives its numbers back, so the sequence stays dense.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    stmt = (
        update(IuvCounter)
        .where(IuvCounter.id_dominio == id_dominio, IuvCounter.prefix == prefix)  # type: ignore[arg-type]
        .values(last_value=IuvCounter.last_value + count)
        .returning(IuvCounter.last_value)
    )
    last = session.execute(stmt).scalar_one_or_none()
    if last is None:  # first use of this (EC, prefix): create the row (a racing creator is harmless), then count
        insert_ignore(session, model=IuvCounter, rows=[{"id_dominio": id_dominio, "prefix": prefix,
                                                        "last_value": 0}], keys=("id_dominio", "prefix"))
        last = session.execute(stmt).scalar_one()
    last = int(last)
    return range(last - count + 1, last + 1)


def allocate_notices(session: Session, *, creditor: Creditor, prefix: str | None = None,
                     count: int = 1) -> list[Notice]:
    """Reserve ``count`` new IUV/NAV pairs for an EC, following its aux digit and codes."""
    effective_prefix = creditor.iuv_prefix if prefix is None else prefix
    progressives = allocate_progressives(session, id_dominio=creditor.id_dominio, prefix=effective_prefix,
                                         count=count)
    return [
        build_notice(aux_digit=creditor.aux_digit, progressive=p, segregation_code=creditor.segregation_code,
                     application_code=creditor.application_code, prefix=effective_prefix)
        for p in progressives
    ]
