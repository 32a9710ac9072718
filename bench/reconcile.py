"""Reconciliation at scale: ``reconcile_ec`` over 1,000,000 paid receipts, 20,000 flows, 10,000 movements.

Run: .venv/bin/python bench/reconcile.py [--receipts N] [--flows N] [--movements N] [--noise 0.02]
     [--skip-sqlite] [--prototype] [--explain N] [--keep | --url URL]

Per database (SQLite in a temporary file; PostgreSQL too when PAGOFLOW_TEST_POSTGRES_URL is set, in a
throwaway database created and dropped here) it migrates the schema, applies the example registry and writes
the data straight into the tables (PostgreSQL ``COPY``; SQLite ``executemany`` of prepared tuples): one paid
position, receipt and collection per receipt, every collection reported in a flow of ``receipts / flows``
lines, one credit per flow for the first ``--movements`` flows, ``--noise`` of them damaged in turn (a flow
id we never received, an amount one cent off, a credit that is not pagoPA money).

Then, each in a fresh process: ``reconcile_ec`` twice (the first run cashes everything, the second finds
nothing new) and the daily report (data, HTML, CSV, PDF, prospetto). Each prints its seconds, its peak memory
(VmHWM minus the RSS once imports and the engine are ready), its time in SQL and its slowest statements
(summed per statement text); ``--explain N`` adds PostgreSQL's EXPLAIN ANALYZE of the second run's N slowest.
``--prototype`` then resets the data, runs the rewrites of the slow parts of store.reconciliation defined in
"rewrite prototype" below and checks that they reach the same outcome. Target: <= 30 s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
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


# ------------------------------------------------------------------------------------- rewrite prototype
# ``--prototype`` swaps the three slow parts of store.reconciliation for set-based rewrites, runs the same two
# runs on the same data (reset to its loaded state in between) and checks the outcome is the same.


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
        "SELECT state, count(*), count(cashed_at) FROM position GROUP BY state ORDER BY state",
        "SELECT subject, label, count(*), sum(amount), sum(movement_id), count(iuv), count(id_flusso) "
        "FROM transfer_label GROUP BY subject, label ORDER BY subject, label",
        "SELECT state, outcome_code, flow_id IS NULL, count(*), sum(movement_id) FROM reconciliation "
        "GROUP BY state, outcome_code, flow_id IS NULL ORDER BY state, outcome_code",
        "SELECT match_state, count(*) FROM treasury_movement GROUP BY match_state ORDER BY match_state",
        "SELECT count(*) FROM reporting_flow WHERE reconciled",
        "SELECT count(*), sum(flow_id) FROM match_suggestion",
    )
    engine = make_engine(url)
    with engine.connect() as conn:
        out = [[tuple(row) for row in conn.exec_driver_sql(q)] for q in queries]
    engine.dispose()
    return out


def install_prototype() -> None:
    """Replace ``_record``, ``_apply_flows`` and ``_relabel`` of store.reconciliation with the rewrites."""
    import store.reconciliation as rec

    rec._record = _record_preloaded  # type: ignore[assignment]
    rec._apply_flows = _apply_flows_joined  # type: ignore[assignment]
    rec._relabel = _relabel_diff  # type: ignore[assignment]


def _record_preloaded(session, *, id_dominio, movement_ids, flow, decision, amount, iuv, now):  # type: ignore[no-untyped-def]
    """``_record`` without a SELECT (and an autoflush, so an INSERT) per movement: the EC's rows load once."""
    from sqlmodel import col, select

    from models.reconciliation import Reconciliation, ReconciliationState

    cache = session.info.get("reconciliations")
    if cache is None:
        with session.no_autoflush:
            cache = {
                r.movement_id: r
                for r in session.scalars(
                    select(Reconciliation).where(
                        Reconciliation.id_dominio == id_dominio, col(Reconciliation.movement_id).is_not(None)
                    )
                )
            }
        session.info["reconciliations"] = cache
    state = {
        "MATCH": ReconciliationState.ACQUISITO,
        "WAIT": ReconciliationState.IN_ELABORAZIONE,
        "ERROR": ReconciliationState.ERRORE,
    }[decision.outcome]
    for movement_id in movement_ids:
        row = cache.get(movement_id)
        if row is None:
            row = cache[movement_id] = Reconciliation(
                id_dominio=id_dominio,
                external_id=f"TES-{movement_id}",
                movement_id=movement_id,
                amount=amount,
                created_at=now,
            )
        changed = (row.state, row.outcome_code, row.flow_id) != (
            state,
            decision.code,
            flow.flow_id if flow else None,
        )
        row.state, row.outcome_code, row.description = state, decision.code, decision.description[:500]
        row.flow_id, row.id_flusso, row.iuv = (
            (flow.flow_id if flow else None),
            (flow.id_flusso if flow else None),
            iuv,
        )
        if changed or row.id is None:
            row.processed_at = now
            session.add(row)


def _apply_flows_joined(session, *, id_dominio, matched, now, summary):  # type: ignore[no-untyped-def]
    """``_apply_flows`` whose cashing UPDATE joins each flow's first movement: no two subplans per row."""
    from sqlalchemy import func, not_, select, update
    from sqlmodel import col

    from models.payments import Collection, CollectionState
    from models.reconciliation import Reconciliation, ReconciliationState
    from models.reporting import LineState, ReportingFlow, ReportingLine
    from store.common import insert_ignore

    flow_ids = list(matched)
    session.execute(
        update(ReportingFlow)
        .where(
            ReportingFlow.id_dominio == id_dominio,
            col(ReportingFlow.id).in_(flow_ids),
            not_(ReportingFlow.reconciled),
        )
        .values(reconciled=True)
    )
    session.execute(
        update(ReportingFlow)
        .where(
            ReportingFlow.id_dominio == id_dominio,
            col(ReportingFlow.id).not_in(flow_ids),
            ReportingFlow.reconciled,
        )
        .values(reconciled=False)
    )
    cashed_lines = (
        select(ReportingLine.id)
        .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
        .where(ReportingFlow.id_dominio == id_dominio, ReportingFlow.reconciled)
    )
    orphan = (
        select(
            ReportingLine.iuv,
            ReportingLine.iur,
            ReportingLine.transfer_index,
            ReportingLine.amount,
            ReportingLine.id,
            ReportingLine.position_id,
        )
        .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
        .where(
            ReportingFlow.id_dominio == id_dominio,
            ReportingFlow.reconciled,
            col(ReportingLine.collection_id).is_(None),
            col(ReportingLine.outcome).in_([8, 9]),
            ReportingLine.state != LineState.ALTRO_INTERMEDIARIO,
        )
    )
    rows = [
        {
            "id_dominio": id_dominio,
            "iuv": iuv,
            "iur": iur,
            "transfer_index": idx,
            "amount": amount,
            "flow_line_id": line_id,
            "position_id": position_id,
            "without_receipt": True,
            "state": CollectionState.RISCOSSA,
            "paid_at": now,
        }
        for iuv, iur, idx, amount, line_id, position_id in session.execute(orphan).all()
    ]
    for start in range(0, len(rows), 1000):
        summary.without_receipt += insert_ignore(
            session,
            model=Collection,
            rows=rows[start : start + 1000],
            keys=("id_dominio", "iuv", "iur", "transfer_index"),
        )
    if rows:
        session.execute(
            update(ReportingLine)
            .where(col(ReportingLine.id).in_([r["flow_line_id"] for r in rows]))
            .values(
                collection_id=select(Collection.id)
                .where(Collection.flow_line_id == ReportingLine.id)
                .scalar_subquery()
            )
        )
    # the rewrite: one hash join (lines of cashed flows x first ACQUISITO movement per flow)
    first = (
        select(Reconciliation.flow_id, func.min(Reconciliation.movement_id).label("first_movement"))
        .where(Reconciliation.id_dominio == id_dominio, Reconciliation.state == ReconciliationState.ACQUISITO)
        .group_by(Reconciliation.flow_id)
        .subquery()
    )
    lines = (
        select(ReportingLine.id.label("line_id"), first.c.first_movement)  # type: ignore[attr-defined]
        .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
        .outerjoin(first, first.c.flow_id == ReportingLine.flow_id)
        .where(ReportingFlow.id_dominio == id_dominio, ReportingFlow.reconciled)
        .subquery()
    )
    cash = (
        update(Collection)
        .where(
            Collection.flow_line_id == lines.c.line_id,
            Collection.id_dominio == id_dominio,
            Collection.state == CollectionState.RISCOSSA,
        )
        .values(state=CollectionState.INCASSATA, cashed_at=now, movement_id=lines.c.first_movement)
    )
    summary.collections_cashed = int(session.execute(cash).rowcount or 0)
    uncash = (
        update(Collection)
        .where(
            Collection.id_dominio == id_dominio,
            Collection.state == CollectionState.INCASSATA,
            col(Collection.flow_line_id).is_not(None),
            col(Collection.flow_line_id).not_in(cashed_lines),
        )
        .values(state=CollectionState.RISCOSSA, cashed_at=None, movement_id=None)
    )
    summary.collections_uncashed = int(session.execute(uncash).rowcount or 0)


def _relabel_diff(session, *, id_dominio, now, flow_labels):  # type: ignore[no-untyped-def]
    """``_relabel`` that computes the labels into a temporary table and writes only the difference."""
    from sqlalchemy import (
        Column,
        Index,
        MetaData,
        Table,
        and_,
        delete,
        exists,
        func,
        or_,
        select,
        true,
        update,
    )
    from sqlalchemy.dialects import postgresql, sqlite

    from models.reconciliation import TransferLabel

    real = TransferLabel.__table__  # type: ignore[attr-defined]
    desired = Table(
        "desired_label",
        MetaData(),
        *[Column(c.name, c.type) for c in real.columns if c.name != "id"],
        prefixes=["TEMPORARY"],
    )
    conn = session.connection()
    desired.drop(conn, checkfirst=True)
    desired.create(conn)
    _labels_into(session, desired, id_dominio=id_dominio, now=now, flow_labels=flow_labels)
    # an index and fresh statistics, or the planner nests loops over a table it believes empty
    Index("ix_desired_label", desired.c.subject, desired.c.subject_key, desired.c.label).create(conn)
    conn.exec_driver_sql("ANALYZE desired_label")
    key = and_(
        real.c.id_dominio == id_dominio,
        real.c.subject == desired.c.subject,
        real.c.subject_key == desired.c.subject_key,
        real.c.label == desired.c.label,
    )
    payload = ("iuv", "iur", "transfer_index", "id_flusso", "movement_id", "amount")
    session.execute(delete(real).where(real.c.id_dominio == id_dominio, ~exists().where(key)))
    session.execute(
        update(real)
        .where(key, or_(*[real.c[c].is_distinct_from(desired.c[c]) for c in payload]))
        .values({**{c: desired.c[c] for c in payload}, "updated_at": desired.c.updated_at})
    )
    columns = [c.name for c in desired.columns]
    # the unique key skips what is there already: no anti-join, whose plan hinges on fresh statistics
    builder = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    session.execute(
        builder(real)
        # WHERE true: SQLite cannot otherwise tell the upsert's ON from a join's
        .from_select(columns, select(*desired.columns).where(true()))
        .on_conflict_do_nothing(index_elements=["id_dominio", "subject", "subject_key", "label"])
    )
    desired.drop(conn)
    counts = session.execute(
        select(real.c.label, func.count()).where(real.c.id_dominio == id_dominio).group_by(real.c.label)
    ).all()
    return {label: int(n) for label, n in counts}


def _labels_into(session, t, *, id_dominio, now, flow_labels):  # type: ignore[no-untyped-def]
    """The INSERT..SELECTs of store.reconciliation._relabel, unchanged, aimed at table ``t``."""
    from sqlalchemy import String as SqlString
    from sqlalchemy import and_, cast, exists, func, insert, literal, not_, or_, select
    from sqlmodel import col

    from models.payments import Collection, CollectionState
    from models.reconciliation import Label
    from models.reporting import FlowState, LineState, ReportingFlow, ReportingLine
    from models.treasury import MovementMatch, TreasuryMovement

    columns = [
        "id_dominio",
        "subject",
        "subject_key",
        "label",
        "iuv",
        "iur",
        "transfer_index",
        "id_flusso",
        "movement_id",
        "amount",
        "updated_at",
    ]
    ec, ts = literal(id_dominio), literal(now, type_=t.c.updated_at.type)
    live = ReportingFlow.state != FlowState.OBSOLETA

    def collections(label, *conditions):  # type: ignore[no-untyped-def]
        session.execute(
            insert(t).from_select(
                columns,
                select(
                    ec,
                    literal("collection"),
                    cast(Collection.id, SqlString),
                    literal(label),
                    Collection.iuv,
                    Collection.iur,
                    Collection.transfer_index,
                    literal(None, SqlString),
                    Collection.movement_id,
                    Collection.amount,
                    ts,
                ).where(Collection.id_dominio == id_dominio, *conditions),
            )
        )

    collections(
        Label.RT_NO_IUF,
        col(Collection.receipt_pk).is_not(None),
        col(Collection.flow_line_id).is_(None),
        Collection.state == CollectionState.RISCOSSA,
    )
    collections(
        Label.RT_IUF, col(Collection.receipt_pk).is_not(None), col(Collection.flow_line_id).is_not(None)
    )
    collections(
        Label.RT_IUF_TES,
        col(Collection.flow_line_id).is_not(None),
        Collection.state == CollectionState.INCASSATA,
    )
    collections(
        Label.RT_TES, col(Collection.flow_line_id).is_(None), Collection.state == CollectionState.INCASSATA
    )

    def lines(label, *conditions):  # type: ignore[no-untyped-def]
        session.execute(
            insert(t).from_select(
                columns,
                select(
                    ec,
                    literal("line"),
                    cast(ReportingLine.id, SqlString),
                    literal(label),
                    ReportingLine.iuv,
                    ReportingLine.iur,
                    ReportingLine.transfer_index,
                    ReportingFlow.id_flusso,
                    literal(None),
                    ReportingLine.amount,
                    ts,
                )
                .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
                .where(ReportingFlow.id_dominio == id_dominio, live, *conditions),
            )
        )

    lines(
        Label.IUV_NO_RT,
        col(ReportingLine.collection_id).is_(None),
        ReportingLine.state != LineState.ALTRO_INTERMEDIARIO,
    )
    twice = (
        select(ReportingLine.iuv, ReportingLine.transfer_index)
        .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
        .where(ReportingFlow.id_dominio == id_dominio, live, ReportingLine.outcome != 3)
        .group_by(ReportingLine.iuv, ReportingLine.transfer_index)
        .having(func.count() > 1)
        .subquery()
    )
    lines(
        Label.DOPPI,
        exists().where(
            twice.c.iuv == ReportingLine.iuv, twice.c.transfer_index == ReportingLine.transfer_index
        ),
    )
    money = exists().where(
        TreasuryMovement.id_dominio == id_dominio,
        TreasuryMovement.reference_kind == "flow",
        TreasuryMovement.reference_lower == ReportingFlow.id_flusso_lower,
    )
    session.execute(
        insert(t).from_select(
            columns,
            select(
                ec,
                literal("flow"),
                cast(ReportingFlow.id, SqlString),
                literal(Label.IUF_NO_TES),
                literal(None, SqlString),
                literal(None, SqlString),
                literal(None),
                ReportingFlow.id_flusso,
                literal(None),
                ReportingFlow.total_amount,
                ts,
            ).where(
                ReportingFlow.id_dominio == id_dominio, live, not_(ReportingFlow.reconciled), not_(money)
            ),
        )
    )
    if flow_labels:
        flows = {
            f.id: f
            for f in session.scalars(
                select(ReportingFlow).where(col(ReportingFlow.id).in_([f for f, _ in flow_labels]))
            )
        }
        session.execute(
            insert(t),
            [
                {
                    "id_dominio": id_dominio,
                    "subject": "flow",
                    "subject_key": str(fid),
                    "label": label,
                    "id_flusso": flows[fid].id_flusso,
                    "amount": flows[fid].total_amount,
                    "updated_at": now,
                }
                for fid, label in set(flow_labels)
            ],
        )

    def movements(label, *conditions):  # type: ignore[no-untyped-def]
        session.execute(
            insert(t).from_select(
                columns,
                select(
                    ec,
                    literal("movement"),
                    cast(TreasuryMovement.id, SqlString),
                    literal(label),
                    literal(None, SqlString),
                    literal(None, SqlString),
                    literal(None),
                    TreasuryMovement.reference,
                    TreasuryMovement.id,
                    TreasuryMovement.amount,
                    ts,
                ).where(
                    TreasuryMovement.id_dominio == id_dominio,
                    TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
                    *conditions,
                ),
            )
        )

    flow_known = exists().where(
        ReportingFlow.id_dominio == id_dominio,
        live,
        ReportingFlow.id_flusso_lower == TreasuryMovement.reference_lower,
    )
    iuv_known = exists().where(
        Collection.id_dominio == id_dominio, func.lower(Collection.iuv) == TreasuryMovement.reference_lower
    )
    movements(
        Label.TES_NO_IUF_OR_IUV,
        or_(
            and_(TreasuryMovement.reference_kind == "flow", not_(flow_known)),
            and_(TreasuryMovement.reference_kind == "iuv", not_(iuv_known)),
        ),
    )
    movements(
        Label.TES_NO_MATCH,
        col(TreasuryMovement.reference_kind).in_(["none", "truncated"]),
        TreasuryMovement.amount > 0,
        TreasuryMovement.match_state != MovementMatch.MATCHED,
    )


# -------------------------------------------------------------------------------------------- measuring


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: the latter survives exec, so a spawned child would inherit its parent's peak
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB / MB


def _run_reconcile() -> Any:
    from sqlmodel import Session

    from store.reconciliation import reconcile_ec

    with Session(_ENGINE) as session:
        summary = reconcile_ec(session, id_dominio=EC)
        session.commit()
    return {
        "flows_cashed": summary.flows_cashed,
        "flows_waiting": summary.flows_waiting,
        "flows_in_error": summary.flows_in_error,
        "collections_cashed": summary.collections_cashed,
        "suggestions": summary.suggestions,
        "labels": summary.labels,
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
    return {"bytes": sizes, "anomalies": {g.label: g.count for g in data.anomalies}}


_ENGINE: Any = None


def _explain(engine: Engine, statement: str, parameters: Any) -> str:
    """PostgreSQL's plan of one statement as it ran, its effect rolled back."""
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cursor:
            if statement.startswith("INSERT INTO transfer_label"):
                # the labels are in place: re-inserting them needs the delete that precedes it in the run
                cursor.execute("DELETE FROM transfer_label WHERE id_dominio = %s", (EC,))
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = "\n".join(r[0] for r in cursor.fetchall())
        raw.rollback()
    return plan


def _child(url: str, what: str, explain: int, prototype: bool, out: Any) -> None:
    """One measured job in a fresh process: seconds, memory, SQL time and the slowest statements."""
    from sqlalchemy import event

    global _ENGINE
    engine = _ENGINE = make_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    import store.reconciliation  # noqa: F401  (imports before the baseline)

    if prototype:
        install_prototype()
    import store.report_data  # noqa: F401

    spent: dict[str, list[Any]] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info.setdefault("t0", []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        elapsed = time.perf_counter() - conn.info["t0"].pop()
        entry = spent.setdefault(" ".join(statement.split()), [0.0, 0, None if executemany else parameters])
        entry[0] += elapsed
        entry[1] += 1

    base = _rss_mb()
    started = time.perf_counter()
    outcome = _run_reconcile() if what == "reconcile" else _run_report()
    seconds = time.perf_counter() - started
    peak = _peak_mb() - base
    event.remove(engine, "before_cursor_execute", _before)
    event.remove(engine, "after_cursor_execute", _after)
    top = sorted(spent.items(), key=lambda kv: -kv[1][0])[:8]
    plans = []
    if explain and engine.dialect.name == "postgresql":
        plans = [
            (st, _explain(engine, st, params))
            for st, (_, calls, params) in top[:explain]
            if calls == 1 and params is not None
        ]
    out.send(
        {
            "seconds": seconds,
            "peak_mb": peak,
            "outcome": outcome,
            "sql_seconds": sum(v[0] for v in spent.values()),
            "statements": sum(v[1] for v in spent.values()),
            "top": [(st, t, c) for st, (t, c, _) in top],
            "plans": plans,
        }
    )


def _spawn(url: str, what: str, explain: int, prototype: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(url, what, explain, prototype, child))
    proc.start()
    child.close()
    try:
        return parent.recv()  # type: ignore[no-any-return]
    finally:
        proc.join()


def measure(label: str, url: str, *, explain: int, target: float | None, prototype: bool = False) -> None:
    """Two reconcile runs and one report, each in its own process, printed as they end."""
    jobs = [("reconcile", "reconcile_ec first run"), ("reconcile", "reconcile_ec second run (no change)")]
    if not prototype:
        jobs.append(("report", "daily report data + HTML/CSV/PDF + prospetto"))
    if prototype:
        label += " (rewrite prototype)"
    for what, title in jobs:
        # the prototype's statements read a temporary table that is gone once the run ends: no plan for them
        wanted = explain if what == "reconcile" and "second" in title and not prototype else 0
        r = _spawn(url, what, wanted, prototype)
        verdict = ""
        if target is not None and what == "reconcile":
            verdict = f"  (target <= {target:.0f} s: {'met' if r['seconds'] <= target else 'MISSED'})"
        print(f"{label} {title}: {r['seconds']:.1f} s, peak memory {r['peak_mb']:.0f} MB{verdict}")
        print(f"  SQL {r['sql_seconds']:.1f} s in {r['statements']:,} statements; {r['outcome']}")
        for statement, seconds, calls in r["top"]:
            print(f"  {seconds:7.2f} s {calls:6d}x  {statement[:200]}")
        for statement, plan in r["plans"]:
            print(f"  EXPLAIN ANALYZE of: {statement[:160]}")
            print("\n".join("    " + line for line in plan.splitlines()))
        sys.stdout.flush()


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


def run_database(label: str, url: str, *, args: argparse.Namespace, target: float | None) -> None:
    """Measure one loaded database; with --prototype, measure the rewrite too and compare the outcomes."""
    measure(label, url, explain=args.explain, target=target)
    if args.prototype:
        before = fingerprint(url)
        reset(url)
        measure(label, url, explain=args.explain, target=target, prototype=True)
        same = fingerprint(url) == before
        print(f"{label} rewrite prototype: same outcome as store.reconciliation: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--movements", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="EXPLAIN ANALYZE the N slowest statements of the second run (PostgreSQL)",
    )
    parser.add_argument(
        "--prototype",
        action="store_true",
        help="also run the rewritten statements (see 'rewrite prototype') and compare outcomes",
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database and print its URL")
    parser.add_argument(
        "--url", help="measure a database loaded by an earlier --keep run (reset, no load, no drop)"
    )
    args = parser.parse_args()
    if args.movements > args.flows:
        parser.error("--movements cannot exceed --flows (one credit per flow)")
    if args.url:
        reset(args.url)
        backend = make_url(args.url).get_backend_name()
        run_database(backend, args.url, args=args, target=TARGET_SECONDS if backend == "postgresql" else None)
        return
    print(
        f"{args.receipts:,} receipts, {args.flows:,} flows, {args.movements:,} movements, "
        f"noise {args.noise:.0%}"
    )
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            print("SQLite:", flush=True)
            prepare(url, n=args.receipts, flows=args.flows, moves=args.movements, noise=args.noise)
            run_database("SQLite", url, args=args, target=None)
    base = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if not base:
        print("PostgreSQL: skipped (PAGOFLOW_TEST_POSTGRES_URL is not set)")
        return
    url = _pg_database(base)
    try:
        print("PostgreSQL:", flush=True)
        prepare(url, n=args.receipts, flows=args.flows, moves=args.movements, noise=args.noise)
        run_database("PostgreSQL", url, args=args, target=TARGET_SECONDS)
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            _drop_pg_database(url)


if __name__ == "__main__":
    main()
