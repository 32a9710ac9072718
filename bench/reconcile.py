"""Reconciliation at scale: ``reconcile_ec`` over 1,000,000 paid receipts, 20,000 flows, 10,000 movements.

Run: .venv/bin/python bench/reconcile.py [--receipts N] [--flows N] [--movements N] [--noise 0.02]
     [--skip-sqlite] [--skip-postgres] [--explain N] [--keep | --url URL]

Per database (SQLite in a temporary file; PostgreSQL too when PAGOFLOW_TEST_POSTGRES_URL is set, in a
throwaway database created and dropped here) it migrates the schema, applies the example registry and writes
the data straight into the tables (PostgreSQL ``COPY``; SQLite ``executemany`` of prepared tuples): one paid
position, receipt and collection per receipt, every collection reported in a flow of ``receipts / flows``
lines, one credit per flow for the first ``--movements`` flows, ``--noise`` of them damaged in turn (a flow
id we never received, an amount one cent off, a credit that is not pagoPA money).

Then, each in a fresh process, the code of ``store.reconciliation`` as it is: ``reconcile_ec`` twice (the
first run cashes everything, the second finds nothing new and must change nothing) and the daily report
(data, HTML, CSV, PDF, prospetto). Each prints its seconds, its phases (``ReconcileSummary.phase_seconds``),
its peak memory (VmHWM minus the RSS once imports and the engine are ready), its time in SQL and its slowest
statements (summed per statement text); a table at the end sets the runs beside the target: <= 30 s on
PostgreSQL. ``--explain N`` prints PostgreSQL's EXPLAIN ANALYZE of the N slowest statements of each run, as
they ran (``auto_explain`` at NOTICE level, which needs a superuser and slows the instrumented runs down: take
their seconds from a run without it). ``--keep`` keeps the loaded databases and prints their URLs;
``--url URL`` migrates such a database, brings it back to its state before the first run and measures again.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from models.db import make_engine  # noqa: E402

TARGET_SECONDS = 30.0
EC = "01234567897"
IBAN = "IT21X0306909606000000123456"
A2A = "A2A-TRIBUTI"
DAY = date(2026, 11, 25)
PAID_AT = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
MB = 1024.0


# ------------------------------------------------------------------------------------------------ data


_CENTS = array("i")


def set_amounts(n: int) -> None:
    """Draw the amounts of receipts 1..n (1.00 to 200.99 euros), the same every run."""
    rng = random.Random(20261125)  # noqa: S311 - test data, not secrets
    _CENTS[:] = array("i", [0] + [rng.randrange(100, 20100) for _ in range(n)])


def amount_of(i: int) -> Decimal:
    """The amount of receipt ``i``."""
    return Decimal(_CENTS[i]) / 100


def iuv_of(i: int) -> str:
    return f"01{i:015d}"


def flow_id_of(f: int) -> str:
    return f"2026-11-25BENCHPSP{f % 7}-S{f:010d}"


def positions(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        iuv = iuv_of(i)
        yield (
            i,
            A2A,
            f"P{i:010d}",
            EC,
            "TARI",
            f"TARI 2026 {i}",
            "F",
            "RSSMRA80A01H501U",
            f"Debitore {i}",
            amount_of(i),
            iuv,
            "3" + iuv,
            "ESEGUITA",
            False,
            f"{i:064x}"[-64:],
            1,
            1,
            "PUBLISHED",
            1,
            PAID_AT,
            PAID_AT,
        )


POSITION_COLUMNS = (
    "id",
    "id_a2a",
    "id_pendenza",
    "id_dominio",
    "debt_type",
    "causale",
    "debtor_type",
    "debtor_id",
    "debtor_name",
    "amount",
    "iuv",
    "nav",
    "state",
    "paid_without_receipt",
    "content_hash",
    "version",
    "published_version",
    "publication_state",
    "publication_attempts",
    "created_at",
    "paid_at",
)


def receipts(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        iuv = iuv_of(i)
        yield (
            i,
            f"R{i:012d}",
            EC,
            iuv,
            "3" + iuv,
            i,
            "OK",
            "ACCEPTED",
            "PUSH",
            amount_of(i),
            "BCITITMM",
            False,
            PAID_AT,
            PAID_AT,
        )


RECEIPT_COLUMNS = (
    "id",
    "receipt_id",
    "id_dominio",
    "iuv",
    "nav",
    "position_id",
    "outcome",
    "state",
    "source",
    "amount",
    "psp_id",
    "standin",
    "payment_at",
    "received_at",
)


def collections(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        yield (
            i,
            EC,
            iuv_of(i),
            f"IUR{i:012d}",
            1,
            i,
            i,
            amount_of(i),
            IBAN,
            "1010",
            False,
            "RISCOSSA",
            PAID_AT - timedelta(days=i % 14),
            i,
        )


COLLECTION_COLUMNS = (
    "id",
    "id_dominio",
    "iuv",
    "iur",
    "transfer_index",
    "receipt_pk",
    "position_id",
    "amount",
    "iban",
    "accounting_code",
    "without_receipt",
    "state",
    "paid_at",
    "flow_line_id",
)


def flow_totals(n: int, flows: int) -> list[Decimal]:
    per = n // flows
    totals = [Decimal("0.00")] * flows
    for i in range(1, per * flows + 1):
        totals[(i - 1) // per] += amount_of(i)
    return totals


def reporting_flows(n: int, flows: int, totals: list[Decimal]) -> Iterator[tuple[Any, ...]]:
    per = n // flows
    for f in range(flows):
        fid = flow_id_of(f)
        yield (
            f + 1,
            EC,
            fid,
            fid.lower(),
            f"BENCHPSP{f % 7}",
            "PSP di prova",
            1,
            DAY,
            f"SR{f:010d}",
            per,
            totals[f],
            "ACCETTATA",
            "FDR_REST",
            PAID_AT,
            False,
        )


FLOW_COLUMNS = (
    "id",
    "id_dominio",
    "id_flusso",
    "id_flusso_lower",
    "psp_id",
    "psp_name",
    "revision",
    "settlement_date",
    "settlement_ref",
    "total_count",
    "total_amount",
    "state",
    "source",
    "downloaded_at",
    "reconciled",
)


def reporting_lines(n: int, flows: int) -> Iterator[tuple[Any, ...]]:
    per = n // flows
    for i in range(1, per * flows + 1):
        yield (
            i,
            (i - 1) // per + 1,
            (i - 1) % per + 1,
            iuv_of(i),
            f"IUR{i:012d}",
            1,
            amount_of(i),
            0,
            DAY,
            "LINKED",
            i,
            i,
        )


LINE_COLUMNS = (
    "id",
    "flow_id",
    "line_index",
    "iuv",
    "iur",
    "transfer_index",
    "amount",
    "outcome",
    "pay_date",
    "state",
    "collection_id",
    "position_id",
)


def movements(count: int, totals: list[Decimal], noise: float) -> Iterator[tuple[Any, ...]]:
    """One credit per flow; every ``1/noise``-th is damaged: unknown flow, wrong amount or not pagoPA."""
    every = max(1, round(1 / noise)) if noise > 0 else 0
    damaged = 0
    for j in range(count):
        fid, amount, kind = flow_id_of(j), totals[j], "flow"
        remittance = f"/PUR/LGPE-RIVERSAMENTO/URI/{fid}"
        if every and j % every == every // 2:
            damaged += 1
            if damaged % 3 == 1:
                fid = f"2026-11-25UNKNOWNPSP-X{j:08d}"
                remittance = f"/PUR/LGPE-RIVERSAMENTO/URI/{fid}"
            elif damaged % 3 == 2:
                amount += Decimal("0.01")
            else:
                fid, kind, remittance = None, "none", f"BONIFICO AFFITTO LOCALI COMUNALI RATA {j}"
        yield (
            j + 1,
            EC,
            IBAN,
            f"BENCH{j:08d}",
            amount,
            "EUR",
            DAY,
            DAY,
            remittance,
            "PSP DI PROVA SPA",
            f"TRN{j:020d}",
            False,
            kind,
            fid,
            fid.lower() if fid else None,
            0 if kind == "flow" else None,
            "PENDING",
            PAID_AT,
        )


MOVEMENT_COLUMNS = (
    "id",
    "id_dominio",
    "account",
    "dedupe_key",
    "amount",
    "currency",
    "value_date",
    "booking_date",
    "remittance",
    "ordering_party",
    "bank_reference",
    "reversal",
    "reference_kind",
    "reference",
    "reference_lower",
    "integrative",
    "match_state",
    "created_at",
)


# ---------------------------------------------------------------------------------------------- loading


def _sqlite_value(value: Any) -> Any:
    # what the column types would bind: Money as integer cents, timestamps as naive UTC text
    if isinstance(value, Decimal):
        return int(value * 100)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def load(engine: Engine, table: str, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """Write rows into a table: COPY on PostgreSQL, batched executemany on SQLite."""
    count = 0
    names = ", ".join(columns)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            raw: Any = conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table}))"
            )
            return count
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(tuple(_sqlite_value(v) for v in row))
            if len(batch) == 50_000:
                conn.exec_driver_sql(sql, batch)  # type: ignore[arg-type]
                count += len(batch)
                batch = []
        if batch:
            conn.exec_driver_sql(sql, batch)  # type: ignore[arg-type]
            count += len(batch)
    return count


def prepare(url: str, *, n: int, flows: int, moves: int, noise: float) -> None:
    """Migrate, apply the example registry and load the data set."""
    from sqlmodel import Session

    from models.migrate import upgrade
    from tests.factories import load_example_registry

    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        load_example_registry(session)
    set_amounts(n)
    totals = flow_totals(n, flows)
    started = time.perf_counter()
    for table, columns, rows in (
        ("position", POSITION_COLUMNS, positions(n)),
        ("receipt", RECEIPT_COLUMNS, receipts(n)),
        ("reporting_flow", FLOW_COLUMNS, reporting_flows(n, flows, totals)),
        ("collection", COLLECTION_COLUMNS, collections(n)),
        ("reporting_line", LINE_COLUMNS, reporting_lines(n, flows)),
        ("treasury_movement", MOVEMENT_COLUMNS, movements(moves, totals, noise)),
    ):
        t0 = time.perf_counter()
        count = load(engine, table, columns, rows)
        print(f"  loaded {count:>9,} {table:<18} in {time.perf_counter() - t0:6.1f} s", flush=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(f"  data set ready in {time.perf_counter() - started:.1f} s", flush=True)
    engine.dispose()


# --------------------------------------------------------------------------------------------- state


def reset(url: str) -> None:
    """Bring a loaded database back to its state before the first reconcile run."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for sql in (
            "DELETE FROM transfer_label",
            "DELETE FROM match_suggestion",
            "DELETE FROM reconciliation",
            "UPDATE collection SET state = 'RISCOSSA', cashed_at = NULL, movement_id = NULL "
            "WHERE state <> 'RISCOSSA' OR movement_id IS NOT NULL",
            "UPDATE position SET state = 'ESEGUITA', cashed_at = NULL WHERE state <> 'ESEGUITA'",
            "UPDATE reporting_flow SET reconciled = false WHERE reconciled",
            "UPDATE treasury_movement SET match_state = 'PENDING' WHERE match_state <> 'PENDING'",
        ):
            conn.exec_driver_sql(sql)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def fingerprint(url: str) -> list[Any]:
    """What reconciliation decided, in aggregate: equal fingerprints mean equal outcomes."""
    queries = (
        "SELECT state, count(*), sum(amount), count(movement_id), sum(movement_id), count(cashed_at) "
        "FROM collection GROUP BY state ORDER BY state",
        "SELECT state, count(*), count(cashed_at), sum(id) FROM position GROUP BY state ORDER BY state",
        "SELECT subject, label, count(*), sum(amount), sum(movement_id), count(iuv), count(id_flusso), "
        "sum(subject_key) FROM transfer_label GROUP BY subject, label ORDER BY subject, label",
        "SELECT state, outcome_code, flow_id IS NULL, count(*), sum(movement_id), sum(amount), "
        "sum(length(description)) FROM reconciliation GROUP BY state, outcome_code, flow_id IS NULL "
        "ORDER BY state, outcome_code",
        "SELECT match_state, count(*), sum(id) FROM treasury_movement GROUP BY match_state "
        "ORDER BY match_state",
        "SELECT count(*), sum(id) FROM reporting_flow WHERE reconciled",
        "SELECT count(*), sum(flow_id), sum(movement_id) FROM match_suggestion",
    )
    engine = make_engine(url)
    with engine.connect() as conn:
        out = [[tuple(str(v) for v in row) for row in conn.exec_driver_sql(q)] for q in queries]
    engine.dispose()
    return out


def last_writes(url: str) -> tuple[Any, ...]:
    """The last label, riconciliazione and cashing reconciliation wrote: a run writing nothing keeps them."""
    engine = make_engine(url)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT (SELECT max(updated_at) FROM transfer_label), (SELECT max(id) FROM transfer_label), "
            "(SELECT max(processed_at) FROM reconciliation), (SELECT max(cashed_at) FROM collection), "
            "(SELECT max(cashed_at) FROM position)"
        ).one()
    engine.dispose()
    return tuple(row)


def digest(state: list[Any]) -> str:
    """A short name of a fingerprint, to compare runs (and databases) at a glance."""
    return hashlib.sha256(repr(state).encode()).hexdigest()[:12]


# -------------------------------------------------------------------------------------------- measuring


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: the latter survives exec, so a spawned child would inherit its parent's peak
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB / MB


_ENGINE: Any = None


def _run_reconcile() -> Any:
    from sqlmodel import Session

    from store.reconciliation import reconcile_ec

    with Session(_ENGINE) as session:
        summary = reconcile_ec(session, id_dominio=EC)
        session.commit()
    return {
        "outcome": {
            "flows_cashed": summary.flows_cashed,
            "flows_waiting": summary.flows_waiting,
            "flows_in_error": summary.flows_in_error,
            "collections_cashed": summary.collections_cashed,
            "collections_uncashed": summary.collections_uncashed,
            "suggestions": summary.suggestions,
            "labels": summary.labels,
        },
        "phases": summary.phase_seconds,
    }


def _run_report() -> Any:
    from sqlmodel import Session

    from reports.reconciliation import (
        prospetto_context,
        reconciliation_context,
        render_csv,
        render_html,
        render_pdf,
        render_prospetto_csv,
        render_prospetto_pdf,
    )
    from store.report_data import collections_summary, reconciliation_data

    with Session(_ENGINE) as session:
        data = reconciliation_data(session, id_dominio=EC, report_date=DAY, window_days=14)
        prospetto = collections_summary(session, id_dominio=EC, start=DAY.replace(day=1), end=DAY)
    ctx, pctx = reconciliation_context(data), prospetto_context(prospetto)
    sizes = {
        "html": len(render_html(ctx)),
        "csv": len(render_csv(ctx)),
        "pdf": len(render_pdf(ctx)),
        "prospetto csv": len(render_prospetto_csv(pctx)),
        "prospetto pdf": len(render_prospetto_pdf(pctx)),
    }
    return {
        "outcome": {"bytes": sizes, "anomalies": {g.label: g.count for g in data.anomalies}},
        "phases": {},
    }


def _auto_explain(engine: Engine, plans: list[tuple[float, str]]) -> None:
    """Have PostgreSQL send the plan of every statement over 100 ms, as it ran, to the client."""
    from sqlalchemy import event

    def _notice(diag: Any) -> None:
        message = diag.message_primary or ""
        if message.startswith("duration:"):
            plans.append((float(message.split()[1]), message))

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.add_notice_handler(_notice)
        with dbapi_connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            for setting, value in (
                ("log_min_duration", "100"),
                ("log_analyze", "on"),
                ("log_buffers", "on"),
                ("log_nested_statements", "on"),
                ("log_level", "notice"),
            ):
                cursor.execute(f"SET auto_explain.{setting} = '{value}'")
        dbapi_connection.commit()


def _server_cpu(conn: Any) -> float:
    """CPU seconds so far of the PostgreSQL backend of a connection, when it runs on this machine (else 0).

    On a machine shared with other work, wall seconds stretch with the load; CPU seconds much less so.
    """
    pid = getattr(getattr(conn.connection.driver_connection, "info", None), "backend_pid", None)
    try:
        with open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip() != "postgres":
                return 0.0
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child(url: str, what: str, explain: int, out: Any) -> None:
    """One measured job in a fresh process: seconds, phases, memory, SQL time and the slowest statements."""
    from sqlalchemy import event

    global _ENGINE
    engine = _ENGINE = make_engine(url)
    plans: list[tuple[float, str]] = []
    if explain and engine.dialect.name == "postgresql":
        _auto_explain(engine, plans)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    import store.reconciliation  # noqa: F401  (imports before the baseline)
    import store.report_data  # noqa: F401

    spent: dict[str, list[Any]] = {}  # statement: [wall seconds, calls, server CPU seconds]
    local = engine.dialect.name == "postgresql"

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info.setdefault("t0", []).append((time.perf_counter(), _server_cpu(conn) if local else 0.0))

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        wall, cpu = conn.info["t0"].pop()
        entry = spent.setdefault(" ".join(statement.split()), [0.0, 0, 0.0])
        entry[0] += time.perf_counter() - wall
        entry[1] += 1
        entry[2] += (_server_cpu(conn) - cpu) if local else 0.0

    base = _rss_mb()
    started, client = time.perf_counter(), time.process_time()
    result = _run_reconcile() if what == "reconcile" else _run_report()
    seconds, client = time.perf_counter() - started, time.process_time() - client
    peak = _peak_mb() - base
    top = sorted(spent.items(), key=lambda kv: -kv[1][0])[:8]
    out.send(
        {
            "seconds": seconds,
            "client_cpu": client,
            "server_cpu": sum(v[2] for v in spent.values()),
            "peak_mb": peak,
            **result,
            "sql_seconds": sum(v[0] for v in spent.values()),
            "statements": sum(v[1] for v in spent.values()),
            "top": [(st, t, c, cpu) for st, (t, c, cpu) in top],
            "plans": [plan for _, plan in sorted(plans, key=lambda p: -p[0])[:explain]],
        }
    )


def _spawn(url: str, what: str, explain: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(url, what, explain, child))
    proc.start()
    child.close()
    try:
        return parent.recv()  # type: ignore[no-any-return]
    finally:
        proc.join()


def measure(label: str, url: str, *, explain: int) -> dict[str, Any]:
    """Two reconcile runs and one report, each in its own process, printed as they end."""
    jobs = [
        ("reconcile", "first", "reconcile_ec first run"),
        ("reconcile", "second", "reconcile_ec second run (no change)"),
        ("report", "report", "daily report data + HTML/CSV/PDF + prospetto"),
    ]
    results: dict[str, Any] = {}
    states = [(digest(fingerprint(url)), last_writes(url))]
    for what, key, title in jobs:
        r = results[key] = _spawn(url, what, explain if what == "reconcile" else 0)
        if what == "reconcile":
            states.append((digest(fingerprint(url)), last_writes(url)))
        note = " (EXPLAIN ANALYZE instrumented)" if r["plans"] else ""
        cpu = f", CPU {r['client_cpu']:.1f} s here" + (
            f" + {r['server_cpu']:.1f} s in PostgreSQL" if r["server_cpu"] else ""
        )
        print(f"{label} {title}: {r['seconds']:.1f} s{cpu}, peak memory {r['peak_mb']:.0f} MB{note}")
        if r["phases"]:
            print("  phases: " + ", ".join(f"{name} {s:.1f} s" for name, s in r["phases"].items()))
        print(f"  SQL {r['sql_seconds']:.1f} s in {r['statements']:,} statements; {r['outcome']}")
        for statement, seconds, calls, server in r["top"]:
            cpu = f" ({server:6.2f} s CPU)" if server else ""
            print(f"  {seconds:7.2f} s{cpu} {calls:6d}x  {statement[:200]}")
        for plan in r["plans"]:
            print("  auto_explain: " + "\n    ".join(plan.splitlines()))
        sys.stdout.flush()
    results["states"] = states
    if states[1] == states[2]:
        changed = "nothing (same outcome, no label, riconciliazione or cashing written again)"
    elif states[1][0] == states[2][0]:
        changed = "no outcome but wrote rows again (a second run should write nothing)"
    else:
        changed = "the OUTCOME (a second run must change nothing)"
    print(f"{label} outcome {states[1][0]} after the first run; the second run changed {changed}")
    return results


def _pg_database(base_url: str) -> str:
    name = f"pf_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(str(make_url(base_url).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(url: str) -> None:
    admin = make_engine(str(make_url(url).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    """The runs of every database beside the target (CPU: this process + the PostgreSQL backend)."""
    head = ("database", "first run", "CPU", "second run", "CPU", "report", "peak MB")
    print()
    print(f"{head[0]:<11}" + "".join(f"{h:>12}" for h in head[1:]) + "  target")
    for label, r in rows:
        first, second = r["first"], r["second"]
        target = "-"
        if label == "PostgreSQL":
            met = first["seconds"] <= TARGET_SECONDS and second["seconds"] <= TARGET_SECONDS
            target = f"<= {TARGET_SECONDS:.0f} s: {'met' if met else 'MISSED'}"
            if first["plans"] or second["plans"]:
                target += " (instrumented by --explain: measure without it)"
        cells = [f"{first['seconds']:.1f} s", f"{first['client_cpu'] + first['server_cpu']:.1f} s"]
        cells += [f"{second['seconds']:.1f} s", f"{second['client_cpu'] + second['server_cpu']:.1f} s"]
        cells += [f"{r['report']['seconds']:.1f} s", f"{max(first['peak_mb'], second['peak_mb']):.0f} MB"]
        print(f"{label:<11}" + "".join(f"{c:>12}" for c in cells) + f"  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--movements", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="EXPLAIN ANALYZE the N slowest statements of each reconcile run, as they ran (PostgreSQL)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the loaded databases and print their URLs")
    parser.add_argument(
        "--url", help="measure a database loaded by an earlier --keep run (migrate, reset, no load, no drop)"
    )
    args = parser.parse_args()
    if args.movements > args.flows:
        parser.error("--movements cannot exceed --flows (one credit per flow)")
    if args.url:
        from models.migrate import upgrade

        upgrade(args.url)
        reset(args.url)
        label = "PostgreSQL" if make_url(args.url).get_backend_name() == "postgresql" else "SQLite"
        print_table([(label, measure(label, args.url, explain=args.explain))])
        return
    print(
        f"{args.receipts:,} receipts, {args.flows:,} flows, {args.movements:,} movements, "
        f"noise {args.noise:.0%}"
    )
    rows = []
    if not args.skip_sqlite:
        folder = tempfile.mkdtemp(prefix="pf_bench_")
        url = f"sqlite:///{folder}/bench.db"
        try:
            print("SQLite:", flush=True)
            prepare(url, n=args.receipts, flows=args.flows, moves=args.movements, noise=args.noise)
            rows.append(("SQLite", measure("SQLite", url, explain=0)))
        finally:
            if args.keep:
                print(f"kept: {url}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    base = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if args.skip_postgres or not base:
        print(
            "PostgreSQL: skipped" + ("" if args.skip_postgres else " (PAGOFLOW_TEST_POSTGRES_URL is not set)")
        )
    else:
        url = _pg_database(base)
        try:
            print("PostgreSQL:", flush=True)
            prepare(url, n=args.receipts, flows=args.flows, moves=args.movements, noise=args.noise)
            rows.append(("PostgreSQL", measure("PostgreSQL", url, explain=args.explain)))
        finally:
            if args.keep:
                print(f"kept: {url}")
            else:
                _drop_pg_database(url)
    print_table(rows)


if __name__ == "__main__":
    main()
