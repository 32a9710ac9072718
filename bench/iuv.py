"""IUV allocations per second, one caller and 4 concurrent, on SQLite and (if configured) PostgreSQL.

Run: .venv/bin/python bench/iuv.py [--n 5000]   (PostgreSQL: set PAGOFLOW_TEST_POSTGRES_URL to a server URL;
a throwaway database is created and dropped there.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlmodel import Session  # noqa: E402

from models.db import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from store.iuv import allocate_progressives  # noqa: E402


def _worker(url: str, n: int, block: int) -> int:
    engine = make_engine(url)
    done = 0
    with Session(engine) as s:
        while done < n:
            allocate_progressives(s, id_dominio="01234567897", count=block)
            s.commit()
            done += block
    engine.dispose()
    return done


def _measure(url: str, *, n: int, workers: int, block: int = 1) -> float:
    per = n // workers
    start = time.perf_counter()
    if workers == 1:
        _worker(url, per, block)
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            pool.starmap(_worker, [(url, per, block)] * workers)
    return (per * workers) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="allocations per measurement")
    args = parser.parse_args()
    targets: list[tuple[str, str, str | None]] = []
    tmp = tempfile.mkdtemp()
    targets.append(("sqlite", f"sqlite:///{tmp}/bench.db", None))
    pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if pg:
        name = f"pf_bench_{uuid.uuid4().hex[:8]}"
        admin = make_engine(str(make_url(pg).set(database="postgres")), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        targets.append(("postgres", make_url(pg).set(database=name).render_as_string(hide_password=False), name))
    else:
        print("postgres: skipped (PAGOFLOW_TEST_POSTGRES_URL not set)")
    print(f"{'database':<10} {'callers':>7} {'block':>5} {'allocations/s':>14}")
    try:
        for label, url, _ in targets:
            upgrade(url)
            for workers, block in ((1, 1), (4, 1), (1, 100)):
                rate = _measure(url, n=args.n, workers=workers, block=block)
                print(f"{label:<10} {workers:>7} {block:>5} {rate:>14,.0f}")
    finally:
        for label, _, name in targets:
            if name:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print("baseline: the issue sets no target; allocations are transactional (one commit each) unless blocked")


if __name__ == "__main__":
    main()
