"""Small persistence helpers shared by the store modules (dialect-aware upserts, paged lists)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, func, insert
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


def insert_many(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows that all have the same keys, in one executemany, without RETURNING.

    Core's ``insert()`` executemany builds each row's parameters through the compiled statement, which costs
    more than the database's own work on SQLite. Here the INSERT is compiled once and the driver gets plain
    tuples, each value through its column type's bind processor (the same conversion Core applies).
    """
    if not rows:
        return
    conn = session.connection()
    names = list(rows[0])
    if conn.dialect.name != "sqlite":
        session.execute(insert(table), list(rows))
        return
    columns = [table.c[name] for name in names]
    processors = [column.type.bind_processor(conn.dialect) for column in columns]
    quote = conn.dialect.identifier_preparer.quote
    names_sql = ", ".join(quote(c.name) for c in columns)  # the table's own column names, quoted
    marks = ", ".join("?" * len(columns))
    sql = f"INSERT INTO {quote(table.name)} ({names_sql}) VALUES ({marks})"  # noqa: S608 - no data in it
    pick = operator.itemgetter(*names) if len(names) > 1 else (lambda row: (row[names[0]],))
    converted = [(i, p) for i, p in enumerate(processors) if p is not None]
    params: list[Any] = [pick(row) for row in rows]
    if converted:
        for n, values in enumerate(params):
            values = list(values)
            for i, process in converted:
                values[i] = process(values[i])
            params[n] = tuple(values)
    conn.exec_driver_sql(sql, params)


def page_of(session: Session, stmt: Any, *, order_by: Sequence[Any], page: int, size: int) -> tuple[int, list[Any]]:
    """How many rows ``stmt`` selects, and the rows of page ``page`` (from 1) in the given order."""
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(stmt.order_by(*order_by).offset((page - 1) * size).limit(size)).all()
    return int(total), list(rows)
