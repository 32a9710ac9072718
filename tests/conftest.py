"""Shared fixtures: databases (SQLite always, PostgreSQL when PAGOFLOW_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from models.db import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.tables import metadata  # noqa: E402

PG_URL = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Database:
    """A migrated test database: its URL, engine and a session factory."""

    backend: str
    url: str
    engine: Engine

    def session(self) -> Session:
        """A new session (caller commits)."""
        return Session(self.engine, expire_on_commit=False)

    def truncate(self) -> None:
        """Empty every table, keeping the schema."""
        tables = [t.name for t in reversed(metadata.sorted_tables)]
        with self.engine.begin() as conn:
            if self.backend == "postgres":
                conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
            else:
                for t in tables:
                    conn.execute(text(f'DELETE FROM "{t}"'))


def create_pg_database(prefix: str = "pf_test") -> str:
    """A fresh database on the test PostgreSQL server; returns its URL."""
    assert PG_URL
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = make_engine(str(make_url(PG_URL).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database."""
    name = make_url(url).database
    admin = make_engine(str(make_url(url).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Database]]:
    made: dict[str, Database] = {}
    pg_made: str | None = None
    sqlite_path: Path = tmp_path_factory.mktemp("db") / "pagoflow.db"
    sqlite_url = f"sqlite:///{sqlite_path}"
    upgrade(sqlite_url)
    made["sqlite"] = Database("sqlite", sqlite_url, make_engine(sqlite_url))
    if PG_URL:
        pg_made = create_pg_database()
        upgrade(pg_made)
        made["postgres"] = Database("postgres", pg_made, make_engine(pg_made))
    yield made
    for database in made.values():
        database.engine.dispose()
    if pg_made:
        drop_pg_database(pg_made)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, _databases: dict[str, Database]) -> Database:
    """A clean, migrated database: SQLite, and PostgreSQL when configured."""
    if request.param not in _databases:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    database = _databases[request.param]
    database.truncate()
    return database


@pytest.fixture
def sqlite_db(_databases: dict[str, Database]) -> Database:
    """A clean, migrated SQLite database only."""
    database = _databases["sqlite"]
    database.truncate()
    return database


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server for the whole session, for the tests that run flows."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-storage")
    with temporary_settings(
        updates={PREFECT_LOCAL_STORAGE_PATH: str(storage), PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
                 PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None},
        restore_defaults={PREFECT_API_URL},
    ):
        with prefect_test_harness(server_startup_timeout=120):
            yield
