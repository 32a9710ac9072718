"""Throwaway PostgreSQL databases for the benchmarks, on the server of PAGOFLOW_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url

from models.db import make_engine


def create_pg_database(prefix: str) -> str:
    """A new empty database ``<prefix>_<random>`` on the test server; its URL (password kept)."""
    server = make_url(os.environ["PAGOFLOW_TEST_POSTGRES_URL"])
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(str(server.set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a database ``create_pg_database`` made (connections closed by force); SQLite URLs are left alone."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    admin = make_engine(str(parsed.set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()
