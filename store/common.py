"""Small persistence helpers shared by the store modules (dialect-aware upserts, paged lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, select


def insert_ignore(session: Session, *, model: type[SQLModel], rows: Sequence[dict[str, Any]],
                  keys: Sequence[str]) -> int:
    """Insert rows, silently skipping those whose unique key ``keys`` already exists; returns rows inserted."""
    if not rows:
        return 0
    table = model.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = builder(table).values(list(rows)).on_conflict_do_nothing(index_elements=list(keys))
    # RETURNING lists only the rows really inserted; rowcount is not reliable for multi-row inserts on every driver
    return len(session.execute(stmt.returning(table.c[keys[0]])).all())


def page_of(session: Session, stmt: Any, *, order_by: Sequence[Any], page: int, size: int) -> tuple[int, list[Any]]:
    """How many rows ``stmt`` selects, and the rows of page ``page`` (from 1) in the given order."""
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(stmt.order_by(*order_by).offset((page - 1) * size).limit(size)).all()
    return int(total), list(rows)
