"""One FR of 100,000 lines parsed, checked, linked to 100,000 collections and stored, per database.

Run: .venv/bin/python bench/reporting.py [--lines 100000] [--batch-size 2000] [--check]

The FlussoRiversamento document is written first (as the SOAP download hands it over: bytes in memory).
Per database, a first process migrates it, applies the example registry and inserts 100,000 paid positions
(position, receipt, one collection each) for the Comune; a second, fresh process then times what the
download-reporting-flows flow does once a flow is downloaded: streaming parse, checks, linking by
(EC, IUV, transfer index) with amount equality, storage of the flow (raw XML kept) and its lines, commit.
Its memory is the process's peak RSS (``ru_maxrss``, everything included: interpreter, libraries, the
document and its stored copy). PostgreSQL: set PAGOFLOW_TEST_POSTGRES_URL to a server URL; a throwaway
database is created and dropped there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DO_NOT_TRACK", "1")

EC, PSP = "01234567897", "PPAYITR1XXX"
AMOUNT = Decimal("12.34")
TARGET_SECONDS = 15.0
TARGET_MB = 300.0


def iuvs(n: int) -> list[str]:
    """The Comune's first ``n`` IUVs (aux digit 3, segregation code 01)."""
    from rules.identifiers import build_notice

    return [build_notice(aux_digit=3, progressive=i, segregation_code="01").iuv for i in range(1, n + 1)]


def write_flow(path: Path, *, lines: int) -> int:
    """A valid FR of ``lines`` single-transfer payments of the Comune's notices; returns its size."""
    from datetime import UTC, date, datetime

    from rules.reporting import FlowHeader, FlowLine, render_flow_xml

    header = FlowHeader(
        id_flusso=f"2024-07-26{PSP}-S000000001",
        psp_id=PSP,
        ec=EC,
        total_count=lines,
        total_amount=AMOUNT * lines,
        flow_at=datetime(2024, 7, 27, 6, tzinfo=UTC),
        settlement_ref="TRN2024072700001",
        settlement_date=date(2024, 7, 27),
        psp_name="PayPal Pagamenti SpA",
        ec_name="Comune di Esempio",
    )
    rows = (
        FlowLine(
            index=n,
            iuv=code,
            iur=f"IUR{n:012d}",
            transfer_index=1,
            amount=AMOUNT,
            outcome=0,
            outcome_raw="0",
            pay_date=date(2024, 7, 26),
        )
        for n, code in enumerate(iuvs(lines), start=1)
    )
    size = 0
    with path.open("wb") as out:
        for chunk in render_flow_xml(header, rows):
            out.write(chunk)
            size += len(chunk)
    return size


def setup(url: str, *, lines: int) -> None:
    """Migrate, apply the example registry and insert ``lines`` paid positions with their collections."""
    import yaml
    from sqlmodel import Session

    from models.db import make_engine
    from models.migrate import upgrade
    from rules.registry import parse_registry
    from store.registry import apply_registry
    from tests.factories_reporting import bulk_paid

    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        registry = yaml.safe_load((ROOT / "examples" / "registry.yaml").read_text(encoding="utf-8"))
        apply_registry(session, spec=parse_registry(registry))
        bulk_paid(session, id_dominio=EC, iuvs=iuvs(lines), amount=AMOUNT, psp_id=PSP)
        session.commit()
    engine.dispose()


def measure(url: str, *, flow: Path, batch_size: int) -> dict[str, Any]:
    """Parse, check, link and store the flow in one transaction; seconds, peak RSS and what was linked."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from models.db import make_engine
    from models.payments import Collection
    from store.reporting import ingest_xml, reporting_creditors
    from tasks.reporting import spool_document

    engine = make_engine(url)
    with Session(engine) as session:
        scope = reporting_creditors(session, id_dominio=EC)[0]
    started = time.perf_counter()
    data = flow.read_bytes()  # what the SOAP connector hands over
    document = spool_document(data)  # then exactly what the download task does with it
    del data
    with document, Session(engine) as session:
        result = ingest_xml(session, scope=scope, stream=document, revision=1, batch_size=batch_size)
        session.commit()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Session(engine) as session:
        linked = session.exec(
            select(func.count()).select_from(Collection).where(col(Collection.flow_line_id).is_not(None))
        ).one()
    engine.dispose()
    return {
        "seconds": elapsed,
        "peak_mb": peak,
        "lines": result.lines,
        "linked": int(linked),
        "state": result.state or "",
    }


def _pg_database() -> tuple[str, str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.db import make_engine

    server = make_url(os.environ["PAGOFLOW_TEST_POSTGRES_URL"])
    name = f"pf_bench_reporting_{uuid.uuid4().hex[:8]}"
    admin = make_engine(str(server.set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False), name


def _pg_drop(name: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.db import make_engine

    admin = make_engine(
        str(make_url(os.environ["PAGOFLOW_TEST_POSTGRES_URL"]).set(database="postgres")),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _child(*args: str) -> str:
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main(argv: list[str] | None = None) -> int:
    """Write the flow, then per database: set up (one process), measure (a fresh process), print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--setup", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--flow", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup:
        setup(args.setup, lines=args.lines)
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, flow=Path(args.flow), batch_size=args.batch_size)))
        return 0
    missed = False
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        flow = tmp / "flow.xml"
        started = time.perf_counter()
        size = write_flow(flow, lines=args.lines)
        print(
            f"flow: FlussoRiversamento, {args.lines:,} lines, {size / 2**20:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s); targets <= {TARGET_SECONDS:.0f} s, "
            f"<= {TARGET_MB:.0f} MB"
        )
        targets: list[tuple[str, str, str | None]] = [("sqlite", f"sqlite:///{tmp}/bench.db", None)]
        if os.environ.get("PAGOFLOW_TEST_POSTGRES_URL"):
            url, name = _pg_database()
            targets.append(("postgres", url, name))
        else:
            print("postgres: skipped (PAGOFLOW_TEST_POSTGRES_URL not set)")
        try:
            for backend, url, _name in targets:
                started = time.perf_counter()
                _child("--setup", url, "--lines", str(args.lines))
                prepared = time.perf_counter() - started
                got = json.loads(
                    _child(
                        "--measure",
                        url,
                        "--flow",
                        str(flow),
                        "--lines",
                        str(args.lines),
                        "--batch-size",
                        str(args.batch_size),
                    )
                )
                ok = (
                    got["seconds"] <= TARGET_SECONDS
                    and got["peak_mb"] <= TARGET_MB
                    and got["linked"] == args.lines == got["lines"]
                )
                missed |= not ok
                print(
                    f"{backend:<9} {got['seconds']:6.1f} s  peak RSS {got['peak_mb']:5.0f} MB  "
                    f"{got['lines']:,} lines, {got['linked']:,} linked, flow {got['state']}  "
                    f"({args.lines / got['seconds']:,.0f} lines/s; setup {prepared:.0f} s)  "
                    f"{'OK' if ok else 'MISSED'}"
                )
        finally:
            for _backend, _url, database in targets:
                if database:
                    _pg_drop(database)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
