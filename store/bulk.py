"""Persistence of bulk files (tracciati): registration by hash, one batch of rows per transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models.bulk import BulkFile, BulkRow, BulkState, RowOutcome
from models.positions import Position
from models.types import utcnow
from rules.positions import BusinessError, Caller, RegistryView, validate_position
from rules.tracciato import AnnulRow, InsertRow, RowError, RowInput, describe
from store.common import insert_many
from store.positions import (
    CREATED,
    UNCHANGED,
    UPDATED,
    change_state,
    find_positions,
    load_caller,
    load_registry_view,
    upsert_positions,
)

AUTH = "AUTORIZZAZIONE"
NOT_FOUND = "PND_001"  # our code: GovPay answers 404 for an unknown position
DEFAULT_ANNUL_REASON = "Annullata da tracciato"
_MAX_REASON = 1000
_UPSERT_OUTCOME = {CREATED: RowOutcome.ADDED, UPDATED: RowOutcome.UPDATED, UNCHANGED: RowOutcome.UNCHANGED}


def find_bulk_file(session: Session, *, sha256: str, id_a2a: str | None) -> BulkFile | None:
    """The bulk file of this content loaded for this application (None = on behalf of several), if any."""
    stmt = select(BulkFile).where(BulkFile.sha256 == sha256)
    stmt = stmt.where(col(BulkFile.id_a2a).is_(None) if id_a2a is None else BulkFile.id_a2a == id_a2a)
    return session.exec(stmt.order_by(col(BulkFile.id))).first()


def register_bulk_file(
    session: Session,
    *,
    name: str,
    sha256: str,
    fmt: str,
    id_a2a: str | None,
    id_dominio: str | None,
    debt_type: str | None,
    total_rows: int,
) -> tuple[BulkFile, bool]:
    """Find or create the bulk file of this content; returns it and whether it was created now."""
    existing = find_bulk_file(session, sha256=sha256, id_a2a=id_a2a)
    if existing is not None:
        return existing, False
    row: dict[str, Any] = {
        "name": name[:255],
        "sha256": sha256,
        "format": fmt,
        "id_a2a": id_a2a,
        "id_dominio": id_dominio,
        "debt_type": debt_type,
        "total_rows": total_rows,
        "processed_rows": 0,
        "state": BulkState.RECEIVED,
        "counts": {},
        "created_at": utcnow(),
    }
    # A racing registration of the same file loses quietly on the unique key and reads the winner's row.
    # (With id_a2a NULL the key does not hold: both databases treat NULLs as distinct.)
    builder = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = builder(BulkFile).values(row).on_conflict_do_nothing(index_elements=["sha256", "id_a2a"])
    created = session.execute(stmt.returning(col(BulkFile.id))).first() is not None
    found = find_bulk_file(session, sha256=sha256, id_a2a=id_a2a)
    assert found is not None
    return found, created


def set_state(
    session: Session,
    *,
    bulk_file_id: int,
    state: BulkState,
    outcome_path: str | None = None,
    notices_path: str | None = None,
) -> BulkFile:
    """Move a bulk file to a state; DONE counts its rows and only holds once every row is processed."""
    bulk = session.get(BulkFile, bulk_file_id)
    if bulk is None:
        raise LookupError(f"bulk file {bulk_file_id} not found")
    if state == BulkState.DONE and bulk.processed_rows < bulk.total_rows:
        state = BulkState(bulk.state)  # another run is still processing it: leave its state alone
    bulk.state = state
    if outcome_path is not None:
        bulk.outcome_path = outcome_path
    if notices_path is not None:
        bulk.notices_path = notices_path
    if state == BulkState.DONE:
        bulk.counts = count_outcomes(session, bulk_file_id=bulk_file_id)
        if bulk.finished_at is None:
            bulk.finished_at = utcnow()
    session.add(bulk)
    session.flush()
    return bulk


def count_outcomes(session: Session, *, bulk_file_id: int) -> dict[str, int]:
    """How many rows of the file got each outcome (every outcome listed, zeros included)."""
    counts = {o.value: 0 for o in RowOutcome}
    for outcome, n in session.exec(
        select(BulkRow.outcome, func.count())
        .where(BulkRow.bulk_file_id == bulk_file_id)
        .group_by(BulkRow.outcome)
    ).all():
        counts[outcome] = int(n)
    return counts


@dataclass
class RowResult:
    """The outcome of one row, as recorded in bulk_row and written to the outcome file."""

    row_number: int
    outcome: RowOutcome
    reason: str | None = None
    id_a2a: str | None = None
    id_pendenza: str | None = None
    id_dominio: str | None = None
    nav: str | None = None


@dataclass
class BatchReport:
    """What one batch did: its rows' outcome counts, or skipped if another run had already processed it."""

    first_row: int
    last_row: int
    skipped: bool = False
    counts: dict[str, int] = field(default_factory=dict)


def claim_batch(session: Session, *, bulk_file_id: int, first_row: int, last_row: int) -> bool:
    """Advance processed_rows from first_row - 1 to last_row; False if the rows are not next (another run).

    The compare-and-set is the transaction's first write, so it also takes the lock that serialises two
    runs of one file (the bulk_file row on PostgreSQL, the database on SQLite).
    """
    result = session.execute(
        update(BulkFile)
        .where(col(BulkFile.id) == bulk_file_id, col(BulkFile.processed_rows) == first_row - 1)
        .values(processed_rows=last_row, state=BulkState.RUNNING)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0) == 1


def load_batch(
    session: Session, *, bulk_file_id: int, rows: Sequence[tuple[int, RowInput]], only_a2a: str | None = None
) -> BatchReport:
    """Process consecutive rows in the caller's transaction: validate, upsert, annul, record every outcome.

    ``only_a2a`` is the application the file was loaded for: rows of another application are refused.
    Committing the caller's transaction makes the rows' effects, outcomes and progress durable together.
    """
    if not rows:
        raise ValueError("empty batch")
    first, last = rows[0][0], rows[-1][0]
    if not claim_batch(session, bulk_file_id=bulk_file_id, first_row=first, last_row=last):
        return BatchReport(first_row=first, last_row=last, skipped=True)
    results = process_rows(session, rows=rows, only_a2a=only_a2a)
    record_rows(session, bulk_file_id=bulk_file_id, results=results)
    counts = Counter(r.outcome.value for r in results)
    bulk = session.get(BulkFile, bulk_file_id)
    assert bulk is not None
    merged = Counter(bulk.counts or {})
    merged.update(counts)
    bulk.counts = dict(merged)
    session.add(bulk)
    session.flush()
    return BatchReport(first_row=first, last_row=last, counts=dict(counts))


def process_rows(
    session: Session, *, rows: Sequence[tuple[int, RowInput]], only_a2a: str | None = None
) -> list[RowResult]:
    """Apply a batch of rows (inserts in one upsert, then annulments); return each row's outcome in order."""
    results: dict[int, RowResult] = {}
    inserts: list[tuple[int, InsertRow]] = []
    annuls: list[tuple[int, AnnulRow]] = []
    for number, row in rows:
        if isinstance(row, RowError):
            results[number] = RowResult(
                number, RowOutcome.REJECTED, row.describe(), row.id_a2a, row.id_pendenza, row.id_dominio
            )
        elif only_a2a is not None and row.id_a2a != only_a2a:
            id_dominio = row.body.idDominio if isinstance(row, InsertRow) else row.id_dominio
            results[number] = RowResult(
                number,
                RowOutcome.REJECTED,
                describe(AUTH, f"Il tracciato e' caricato per l'applicazione {only_a2a}", "idA2A"),
                row.id_a2a,
                row.id_pendenza,
                id_dominio,
            )
        elif isinstance(row, InsertRow):
            inserts.append((number, row))
        else:
            annuls.append((number, row))
    callers = {a2a: load_caller(session, id_a2a=a2a) for a2a in {r.id_a2a for _, r in inserts + annuls}}
    if inserts:
        _inserts(session, inserts, callers, load_registry_view(session), results)
    if annuls:
        _annulments(session, annuls, callers, results)
    return [results[number] for number, _ in rows]


def _unknown_caller(id_a2a: str) -> str:
    return describe(AUTH, f"Applicazione {id_a2a} sconosciuta o disabilitata", "idA2A")


def _not_enabled(id_a2a: str, id_dominio: str, debt_type: str) -> str:
    return describe(
        AUTH,
        f"Applicazione {id_a2a} non abilitata per il dominio {id_dominio} e il tipo pendenza {debt_type}",
        "idDominio",
    )


def _inserts(
    session: Session,
    inserts: list[tuple[int, InsertRow]],
    callers: dict[str, Caller | None],
    registry: RegistryView,
    results: dict[int, RowResult],
) -> None:
    valid = []
    for number, row in inserts:
        result = RowResult(number, RowOutcome.REJECTED, None, row.id_a2a, row.id_pendenza, row.body.idDominio)
        results[number] = result
        caller = callers[row.id_a2a]
        if caller is None:
            result.reason = _unknown_caller(row.id_a2a)
            continue
        try:
            data = validate_position(
                row.body, id_a2a=row.id_a2a, id_pendenza=row.id_pendenza, caller=caller, registry=registry
            )
        except BusinessError as exc:
            result.reason = describe(exc.code, exc.message, exc.field)
            continue
        except PermissionError:
            result.reason = _not_enabled(row.id_a2a, row.body.idDominio, row.body.idTipoPendenza)
            continue
        valid.append((result, data))
    upserted = upsert_positions(session, batch=[d for _, d in valid], want_rows=False)
    for (result, _), outcome in zip(valid, upserted, strict=True):
        if outcome.error is not None:
            result.reason = describe(outcome.error.code, outcome.error.message, outcome.error.field)
            continue
        assert outcome.outcome is not None and outcome.position is not None
        result.outcome = _UPSERT_OUTCOME[outcome.outcome]
        result.nav = outcome.position.nav


def _annulments(
    session: Session,
    annuls: list[tuple[int, AnnulRow]],
    callers: dict[str, Caller | None],
    results: dict[int, RowResult],
) -> None:
    found = find_positions(session, keys=[(r.id_a2a, r.id_pendenza) for _, r in annuls])
    for number, row in annuls:
        position = found.get((row.id_a2a, row.id_pendenza))
        result = RowResult(
            number,
            RowOutcome.REJECTED,
            None,
            row.id_a2a,
            row.id_pendenza,
            position.id_dominio if position else row.id_dominio,
            position.nav if position else None,
        )
        results[number] = result
        caller = callers[row.id_a2a]
        if caller is None:
            result.reason = _unknown_caller(row.id_a2a)
            continue
        if position is None:
            result.reason = describe(
                NOT_FOUND, f"Pendenza {row.id_a2a}/{row.id_pendenza} inesistente", "idPendenza"
            )
            continue
        if not caller.may_use(position.id_dominio, position.debt_type):
            result.reason = _not_enabled(row.id_a2a, position.id_dominio, position.debt_type)
            continue
        try:
            changed = change_state(
                session, position=position, annul=True, description=row.reason or DEFAULT_ANNUL_REASON
            )
        except BusinessError as exc:
            result.reason = describe(exc.code, exc.message, exc.field)
            continue
        result.outcome = RowOutcome.ANNULLED if changed else RowOutcome.UNCHANGED
        result.reason = None if changed else "Pendenza gia' annullata"


def record_rows(session: Session, *, bulk_file_id: int, results: Sequence[RowResult]) -> None:
    """Insert the outcome of each row (one statement; the unique key refuses a row recorded twice)."""
    if not results:
        return
    insert_many(
        session,
        BulkRow.__table__,  # type: ignore[attr-defined]  # a plain executemany: a fraction of the ORM's cost
        [
            {
                "bulk_file_id": bulk_file_id,
                "row_number": r.row_number,
                "outcome": r.outcome.value,
                "reason": r.reason[:_MAX_REASON] if r.reason else None,
                "id_a2a": r.id_a2a,
                "id_pendenza": r.id_pendenza,
                "id_dominio": r.id_dominio,
                "nav": r.nav,
            }
            for r in results
        ],
    )


OUTCOME_FIELDS = ("row_number", "id_a2a", "id_pendenza", "id_dominio", "nav", "outcome", "reason")


def iter_outcomes(session: Session, *, bulk_file_id: int, page: int = 5000) -> Iterator[tuple[Any, ...]]:
    """Every recorded row of a file in row order as a tuple of OUTCOME_FIELDS, read a page at a time."""
    table = BulkRow.__table__  # type: ignore[attr-defined]
    columns = [table.c[name] for name in OUTCOME_FIELDS]
    after = 0
    while True:
        chunk = session.execute(
            sa_select(*columns)
            .where(table.c.bulk_file_id == bulk_file_id, table.c.row_number > after)
            .order_by(table.c.row_number)
            .limit(page)
        ).all()
        if not chunk:
            return
        for row in chunk:
            yield tuple(row)
        after = chunk[-1][0]


def iter_added_positions(session: Session, *, bulk_file_id: int, page: int = 500) -> Iterator[Position]:
    """The positions a file added, in row order, read a page at a time."""
    after = 0
    while True:
        chunk = session.exec(
            select(BulkRow.row_number, Position)
            .join(
                Position,
                (col(Position.id_a2a) == col(BulkRow.id_a2a))
                & (col(Position.id_pendenza) == col(BulkRow.id_pendenza)),
            )
            .where(
                BulkRow.bulk_file_id == bulk_file_id,
                BulkRow.outcome == RowOutcome.ADDED,
                col(BulkRow.row_number) > after,
            )
            .order_by(col(BulkRow.row_number))
            .limit(page)
        ).all()
        if not chunk:
            return
        for _, position in chunk:
            yield position
        after = chunk[-1][0]
