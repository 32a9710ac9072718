"""The engine and sessions of the platform database (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

import models.tables  # noqa: F401  (every table known before any session: foreign keys span modules)
from models.settings import get_settings


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while one writer writes; busy_timeout makes writers queue instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_savepoint(conn, _name) -> None:  # type: ignore[no-untyped-def]
    # pysqlite opens a transaction only before INSERT/UPDATE/DELETE: a SAVEPOINT issued first would start a
    # transaction of its own, which its RELEASE commits at once, ahead of the caller's commit (a station
    # killed in between kept a receipt without its collections). Open the caller's transaction first.
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine for the given URL, with the SQLite settings the platform relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs  # type: ignore[arg-type]
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_savepoint)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)  # type: ignore[arg-type]


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    """The shared engine of a database URL (the configured one by default)."""
    return make_engine(url or get_settings().database_url)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
