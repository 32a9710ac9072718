"""Persistence of treasury files and movements: idempotent by file hash and by movement dedupe key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, SQLModel, col, select

from connectors.treasury.movement import Movement
from models.registry import TreasurySource
from models.treasury import MovementMatch, TreasuryFile, TreasuryFileState, TreasuryMovement
from models.types import utcnow
from rules.remittance import parse_remittance

BATCH_SIZE = 5_000
_KEY_LIMIT = 100  # TreasuryMovement.dedupe_key
_CONFLICTS_SHOWN = 20
_COLUMN_LIMITS = {
    "ordering_party": 140,
    "end_to_end_id": 70,
    "bank_reference": 70,
    "bank_movement_id": 70,
    "kind": 40,
    "status": 40,
    "reference": 70,
    "reference_lower": 70,
    "currency": 3,
}


def insert_new(
    session: Session, *, model: type[SQLModel], rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    """Insert rows, skipping those whose unique ``keys`` exist; returns how many were inserted.

    Like ``store.common.insert_ignore``, but counted with RETURNING (with SQLAlchemy 2.1 and psycopg 3 the
    rowcount of ``INSERT .. ON CONFLICT DO NOTHING`` is -1 on PostgreSQL) and fast for thousands of rows:
    compiling a literal multi-row ``.values(rows)`` costs about 0.7 ms a row, 25 times the insert itself.
    SQLite gets an executemany, which SQLAlchemy batches into multi-row VALUES from one cached compilation;
    PostgreSQL gets COPY into a temporary table, then one ``INSERT .. SELECT .. ON CONFLICT DO NOTHING``
    (3 times faster than ``unnest`` arrays; psycopg spends 0.2 ms a row on statements with thousands of
    placeholders).
    """
    if not rows:
        return 0
    table = model.__table__  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "postgresql":
        return _insert_new_copy(session, table=table, rows=rows, keys=keys)
    stmt = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(*table.primary_key.columns)
    )
    return len(session.execute(stmt, list(rows)).all())


def _insert_new_copy(
    session: Session, *, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    dialect = session.get_bind().dialect
    quote = dialect.identifier_preparer.quote
    names = list(rows[0])
    processors = [(name, table.c[name].type.bind_processor(dialect)) for name in names]
    target = quote(table.name)
    staging = quote(f"load_{table.name}")
    columns = ", ".join(quote(n) for n in names)
    conflict = ", ".join(quote(k) for k in keys)
    returning = ", ".join(quote(c.name) for c in table.primary_key.columns)
    # Identifiers come from the table's metadata; values travel through COPY, never through the SQL text.
    select_columns = f"SELECT {columns} FROM"
    create = (
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DROP AS {select_columns} {target} WITH NO DATA"
    )
    insert = (
        f"INSERT INTO {target} ({columns}) {select_columns} {staging} ON CONFLICT ({conflict}) DO NOTHING"
    )
    # The session's own connection, so the COPY runs in its transaction (a psycopg 3 connection).
    raw: Any = session.connection().connection.driver_connection
    with raw.cursor() as cursor:
        cursor.execute(create)
        cursor.execute(f"TRUNCATE {staging}")
        with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([process(row[name]) if process else row[name] for name, process in processors])
        cursor.execute(f"{insert} RETURNING {returning}")
        return len(cursor.fetchall())


def enabled_sources(session: Session, *, name: str | None = None) -> list[TreasurySource]:
    """Enabled treasury sources by name (all of them when ``name`` is None); a named disabled one too."""
    stmt = select(TreasurySource).order_by(col(TreasurySource.name))
    if name is None:
        stmt = stmt.where(col(TreasurySource.enabled).is_(True))
    else:
        stmt = stmt.where(TreasurySource.name == name)
    return list(session.exec(stmt))


def find_file(session: Session, *, source: str, sha256: str) -> TreasuryFile | None:
    """The outcome row of a file already seen from ``source`` with these bytes, if any."""
    stmt = select(TreasuryFile).where(TreasuryFile.source == source, TreasuryFile.sha256 == sha256)
    return session.exec(stmt).first()


def claim_file(
    session: Session,
    *,
    source: str,
    name: str,
    size: int,
    mtime: datetime | None,
    sha256: str,
    fmt: str | None,
) -> TreasuryFile | None:
    """Insert the file's row (not committed) so its movements can point at it; None if it already exists.

    On PostgreSQL a second worker inserting the same (source, sha256) waits for the first to commit or roll
    back, then gets None or the claim: two runs never process one file twice.
    """
    inserted = insert_new(
        session,
        model=TreasuryFile,
        keys=("source", "sha256"),
        rows=[
            {
                "source": source,
                "name": name,
                "size": size,
                "mtime": mtime,
                "sha256": sha256,
                "format": fmt,
                "state": TreasuryFileState.PROCESSED.value,
                "error": None,
                "movements": 0,
                "duplicates": 0,
                "received_at": utcnow(),
            }
        ],
    )
    if not inserted:
        return None
    return find_file(session, source=source, sha256=sha256)


def finish_file(session: Session, *, file: TreasuryFile, movements: int, duplicates: int,
                conflicts: Sequence[str] = ()) -> TreasuryFile:
    """Record how many movements the file added and how many were already known.

    Conflicts (a known bank id with other money, see ``find_conflicts``) go in the file's ``error`` for the
    operator, though the file is processed: the movements stored first stand.
    """
    file.movements, file.duplicates = movements, duplicates
    if conflicts:
        more = " ..." if len(conflicts) > _CONFLICTS_SHOWN else ""
        shown = "; ".join(conflicts[:_CONFLICTS_SHOWN]) + more
        file.error = f"{len(conflicts)} movimenti ripetuti con altri importi, non registrati: {shown}"
    session.add(file)
    session.flush()
    return file


def record_quarantine(
    session: Session,
    *,
    source: str,
    name: str,
    size: int,
    mtime: datetime | None,
    sha256: str,
    fmt: str | None,
    error: str,
) -> TreasuryFile:
    """Record a file that could not be read (idempotent: the first reason recorded stays)."""
    insert_new(
        session,
        model=TreasuryFile,
        keys=("source", "sha256"),
        rows=[
            {
                "source": source,
                "name": name,
                "size": size,
                "mtime": mtime,
                "sha256": sha256,
                "format": fmt,
                "state": TreasuryFileState.QUARANTINED.value,
                "error": error,
                "movements": 0,
                "duplicates": 0,
                "received_at": utcnow(),
            }
        ],
    )
    row = find_file(session, source=source, sha256=sha256)
    if row is None:  # pragma: no cover - inserted or already there, within this transaction
        raise RuntimeError(f"treasury file {source}/{sha256} vanished")
    return row


# Which Movement field carries the bank's own id of a movement, stable from one journal to the next (for camt
# the reader gives the entry's AcctSvcrRef, never the per-statement NtryRef).
MOVEMENT_ID_FIELD: dict[str, str] = {}


class DedupeKeys:
    """Dedupe keys for the movements of one file, in file order.

    The bank's movement id (``MOVEMENT_ID_FIELD``) gives ``id:<id>`` (per account, so the same movement in two
    overlapping journals is one row). Without one, the content fingerprint gives ``fp:<sha256>``; the n-th
    identical movement of a file (two equal credits the same day) gets ``fp:<sha256>#n``, so both are kept and
    an overlapping journal that repeats them maps onto the same two keys.
    """

    def __init__(self, *, fmt: str | None = None) -> None:
        self._id_field = MOVEMENT_ID_FIELD.get(fmt or "", "bank_movement_id")
        self._repeats: dict[str, int] = {}

    def key(self, movement: Movement) -> str:
        """The dedupe key of the next movement of the file."""
        bank_id = getattr(movement, self._id_field)
        if bank_id:
            key = f"id:{bank_id}"
            if len(key) > _KEY_LIMIT:
                key = "id#" + hashlib.sha256(bank_id.encode("utf-8")).hexdigest()
            return key
        fingerprint = movement.fingerprint()
        seen = self._repeats.get(fingerprint, 0) + 1
        self._repeats[fingerprint] = seen
        return f"fp:{fingerprint}" if seen == 1 else f"fp:{fingerprint}#{seen}"


def _cut(value: str | None, column: str) -> str | None:
    if value is None:
        return None
    return value[: _COLUMN_LIMITS[column]]


def movement_values(
    movement: Movement,
    *,
    file_id: int | None,
    id_dominio: str | None,
    account: str,
    dedupe_key: str,
    now: datetime,
) -> dict[str, Any]:
    """The treasury_movement row of a movement read from a file (remittance parsed, columns bounded)."""
    ref = parse_remittance(movement.remittance)
    reference = ref.reference
    return {
        "file_id": file_id,
        "id_dominio": id_dominio,
        "account": account,
        "dedupe_key": dedupe_key,
        "amount": movement.amount,
        "currency": _cut(movement.currency.upper(), "currency"),
        "value_date": movement.value_date,
        "booking_date": movement.booking_date,
        "remittance": movement.remittance,
        "ordering_party": _cut(movement.ordering_party, "ordering_party"),
        "end_to_end_id": _cut(movement.end_to_end_id, "end_to_end_id"),
        "bank_reference": _cut(movement.bank_reference, "bank_reference"),
        "bank_movement_id": _cut(movement.bank_movement_id, "bank_movement_id"),
        "reversal": movement.reversal,
        "kind": _cut(movement.kind, "kind"),
        "status": _cut(movement.status, "status"),
        "reference_kind": ref.kind,
        "reference": _cut(reference, "reference"),
        "reference_lower": _cut(reference.casefold() if reference else None, "reference_lower"),
        "integrative": ref.integrative,
        "match_state": MovementMatch.PENDING.value,
        "created_at": now,
    }


def insert_movements(session: Session, *, rows: Sequence[dict[str, Any]]) -> int:
    """Insert movement rows, skipping those already stored (same account and dedupe key); returns inserted."""
    return insert_new(session, model=TreasuryMovement, keys=("account", "dedupe_key"), rows=rows)


def store_movements(
    session: Session,
    *,
    movements: Iterable[Movement],
    source: TreasurySource,
    file_id: int | None,
    fmt: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> StoredMovements:
    """Store a file's movements in batches (not committed): how many were read, inserted, and in conflict.

    The account is the source's (the EC's account the bank delivers for): formats name it differently
    (IBAN, OPI conto evidenza), and deduplication must not depend on the format.
    """
    keys = DedupeKeys(fmt=fmt)
    read = inserted = 0
    conflicts: list[MovementConflict] = []
    batch: list[dict[str, Any]] = []
    now = utcnow()
    for movement in movements:
        read += 1
        batch.append(
            movement_values(
                movement,
                file_id=file_id,
                id_dominio=source.id_dominio,
                account=source.account,
                dedupe_key=keys.key(movement),
                now=now,
            )
        )
        if len(batch) >= batch_size:
            conflicts += find_conflicts(session, rows=batch)
            inserted += insert_movements(session, rows=batch)
            batch = []
    conflicts += find_conflicts(session, rows=batch)
    inserted += insert_movements(session, rows=batch)
    return StoredMovements(read=read, inserted=inserted, conflicts=conflicts)


class MovementConflict(NamedTuple):
    """A movement that repeats a stored one's bank id with different money: the stored one stands."""

    bank_id: str
    stored: tuple[Decimal, date, bool]  # amount, value date, reversal
    repeated: tuple[Decimal, date, bool]

    def describe(self) -> str:
        """One line for an operator: the bank id and what differs."""
        fields = ("importo", "data valuta", "storno")
        pairs = zip(fields, self.stored, self.repeated, strict=True)
        diff = [f"{name} {old} -> {new}" for name, old, new in pairs if old != new]
        return f"movimento {self.bank_id}: {', '.join(diff)}"


class StoredMovements(NamedTuple):
    read: int
    inserted: int
    conflicts: list[MovementConflict]


def find_conflicts(session: Session, *, rows: Sequence[dict[str, Any]]) -> list[MovementConflict]:
    """Rows whose bank id is already stored for their account with another amount, value date or sign.

    Such a row is not stored (the bank's id says it is the same movement), but it must not vanish silently: a
    bank that re-sends a movement with other money is correcting it, and an operator decides which holds.
    """
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    conflicts = []
    for row in rows:
        if not row["dedupe_key"].startswith("id"):
            continue
        first = by_key.setdefault((row["account"], row["dedupe_key"]), row)
        if first is not row and _money(first) != _money(row):  # twice in this very batch
            conflicts.append(MovementConflict(_bank_id(row), _money(first), _money(row)))
    if not by_key:
        return conflicts
    m = TreasuryMovement
    stored = session.exec(
        select(m.account, m.dedupe_key, m.amount, m.value_date, m.reversal).where(
            col(m.account).in_({account for account, _ in by_key}),
            col(m.dedupe_key).in_({key for _, key in by_key}),
        )
    ).all()
    for account, key, amount, value_date, reversal in stored:
        row = by_key.get((account, key))
        stored_money = (amount, value_date, bool(reversal))
        if row is not None and stored_money != _money(row):
            conflicts.append(MovementConflict(_bank_id(row), stored_money, _money(row)))
    return conflicts


def _money(row: dict[str, Any]) -> tuple[Decimal, date, bool]:
    return row["amount"], row["value_date"], bool(row["reversal"])


def _bank_id(row: dict[str, Any]) -> str:
    return str(row["bank_movement_id"] or row["dedupe_key"].removeprefix("id:"))


def movements_of_files(session: Session, *, file_ids: Sequence[int], limit: int) -> list[TreasuryMovement]:
    """Movements stored from these files, by value date then file order (at most ``limit``)."""
    if not file_ids:
        return []
    stmt = (
        select(TreasuryMovement)
        .where(col(TreasuryMovement.file_id).in_(list(file_ids)))
        .order_by(col(TreasuryMovement.value_date), col(TreasuryMovement.id))
        .limit(limit)
    )
    return list(session.exec(stmt))
