"""Persistence of debt positions: batch upsert, annul/restore, reads, the registry views validation needs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar, overload
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, func, insert, or_, text, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, SQLModel, col, select

from models.positions import Position, PositionItem, PositionState, PublicationState
from models.registry import (
    Application,
    ApplicationGrant,
    Creditor,
    DebtType,
    IbanAccount,
    OrganisationalUnit,
    RevenueType,
)
from models.types import utcnow
from rules.calendar import day_start as _day_start
from rules.identifiers import nav_to_iuv
from rules.positions import (
    BusinessError,
    Caller,
    CreditorView,
    PositionData,
    RegistryView,
    StoredItem,
    check_annul,
    check_restore,
    check_update,
)
from store.common import insert_many, page_of
from store.iuv import allocate_notices

CREATED, UPDATED, UNCHANGED = "CREATED", "UPDATED", "UNCHANGED"
ROME = ZoneInfo("Europe/Rome")




def load_registry_view(session: Session) -> RegistryView:
    """Everything validation needs from the registry, in five queries."""
    units: dict[str, set[str]] = defaultdict(set)
    for u in session.exec(select(OrganisationalUnit).where(OrganisationalUnit.enabled)).all():
        units[u.id_dominio].add(u.code)
    debt_types: dict[str, dict[str, str | None]] = defaultdict(dict)
    for d in session.exec(select(DebtType).where(DebtType.enabled)).all():
        debt_types[d.id_dominio][d.code] = d.default_revenue_code
    revenues: dict[str, dict[str, tuple[str, str | None, str, str]]] = defaultdict(dict)
    for r in session.exec(select(RevenueType).where(RevenueType.enabled)).all():
        revenues[r.id_dominio][r.code] = (r.iban, r.support_iban, r.accounting_type, r.accounting_code)
    ibans: dict[str, dict[str, bool]] = defaultdict(dict)
    for a in session.exec(select(IbanAccount).where(IbanAccount.enabled)).all():
        ibans[a.id_dominio][a.iban] = a.postal
    creditors = {
        c.id_dominio: CreditorView(
            id_dominio=c.id_dominio, aux_digit=c.aux_digit, segregation_code=c.segregation_code,
            application_code=c.application_code, enabled=c.enabled, units=frozenset(units[c.id_dominio]),
            debt_types=dict(debt_types[c.id_dominio]), revenue_types=dict(revenues[c.id_dominio]),
            ibans=dict(ibans[c.id_dominio]))
        for c in session.exec(select(Creditor)).all()
    }
    return RegistryView(creditors=creditors)


def load_caller(session: Session, *, id_a2a: str) -> Caller | None:
    """The application with its grants, or None if unknown or disabled."""
    app = session.exec(select(Application).where(Application.id_a2a == id_a2a)).first()
    if app is None or not app.enabled:
        return None
    grants = session.exec(select(ApplicationGrant).where(ApplicationGrant.id_a2a == id_a2a)).all()
    return Caller(id_a2a=app.id_a2a, own_iuv=app.own_iuv, all_creditors=app.all_creditors,
                  grants=frozenset((g.id_dominio, g.debt_type) for g in grants))


@dataclass(frozen=True, slots=True)
class CreatedPosition:
    """A position just inserted, for callers that read its keys and need no ORM row (want_rows=False)."""

    id: int
    id_a2a: str
    id_pendenza: str
    id_dominio: str
    debt_type: str
    iuv: str
    nav: str
    iupd: str
    amount: Decimal
    due_date: date | None
    state: str
    version: int


P = TypeVar("P", bound="Position | CreatedPosition")


@dataclass
class UpsertResult(Generic[P]):
    """The outcome of one position of a batch: CREATED/UPDATED/UNCHANGED with the row, or an error."""

    key: tuple[str, str]
    outcome: str | None = None
    position: P | None = None
    error: BusinessError | None = None


def find_positions(session: Session, *, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Position]:
    """The stored positions among (idA2A, idPendenza) keys, by index lookups whatever the table's size."""
    # Not tuple_(…).in_(…), nor id_a2a = X AND id_pendenza IN (…): when one application owns most rows,
    # PostgreSQL plans both as a scan of the application's rows, so a bulk load slows down batch after batch.
    # One probe of the unique index per key (LATERAL) stays flat; SQLite probes the index for IN already.
    by_a2a: dict[str, list[str]] = defaultdict(list)
    for id_a2a, id_pendenza in keys:
        by_a2a[id_a2a].append(id_pendenza)
    postgres = session.get_bind().dialect.name == "postgresql"
    found: dict[tuple[str, str], Position] = {}
    for id_a2a, ids in by_a2a.items():
        if postgres:
            pks = session.execute(text(
                "SELECT p.id FROM unnest(CAST(:ids AS varchar[])) AS k(id_pendenza) JOIN LATERAL "
                "(SELECT id FROM position WHERE id_a2a = :id_a2a AND id_pendenza = k.id_pendenza) p ON true"),
                {"ids": ids, "id_a2a": id_a2a}).scalars().all()
            stmt = select(Position).where(col(Position.id).in_(pks)) if pks else None
        else:
            stmt = select(Position).where(Position.id_a2a == id_a2a, col(Position.id_pendenza).in_(ids))
        if stmt is not None:
            for p in session.exec(stmt).all():
                found[(p.id_a2a, p.id_pendenza)] = p
    return found


def _prefixes(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    creditors = {c.id_dominio: c for c in session.exec(
        select(Creditor).where(col(Creditor.id_dominio).in_({k[0] for k in keys}))).all()}
    types = {(d.id_dominio, d.code): d.iuv_prefix for d in session.exec(
        select(DebtType).where(col(DebtType.id_dominio).in_({k[0] for k in keys}))).all()}
    return {k: (types.get(k) if types.get(k) is not None else creditors[k[0]].iuv_prefix) or "" for k in keys}


def _column_defaults(model: type[SQLModel]) -> dict[str, Any]:
    # What SQLModel puts in the unset fields of a new object: the Core inserts below write exactly what the
    # ORM wrote (the tables have no server defaults to fall back on). created_at, a factory, is always given.
    return {name: f.default for name, f in model.model_fields.items()
            if name != "id" and not f.is_required() and f.default_factory is None}


_POSITIONS: Table = Position.__table__  # type: ignore[attr-defined]
_ITEMS: Table = PositionItem.__table__  # type: ignore[attr-defined]
_POSITION_DEFAULTS = _column_defaults(Position)
_ITEM_DEFAULTS = _column_defaults(PositionItem)
_KEYS = frozenset({"nav", "id_a2a", "id_pendenza", "id_dominio"})  # what an update never rewrites
_IN_CHUNK = 5000  # ids per IN list: well under SQLite's 32766 bound parameters


@overload
def upsert_positions(session: Session, *, batch: list[PositionData],
                     want_rows: Literal[True] = ...) -> list[UpsertResult[Position]]: ...


@overload
def upsert_positions(session: Session, *, batch: list[PositionData],
                     want_rows: bool) -> list[UpsertResult[Position | CreatedPosition]]: ...


def upsert_positions(session: Session, *, batch: list[PositionData],
                     want_rows: bool = True) -> list[UpsertResult[Any]]:
    """Create or update a batch of validated positions in the caller's transaction.

    One query finds the existing rows, one the voci of those that changed; new positions get IUV/NAV in
    blocks per (EC, prefix) and are written by Core executemany. A row whose update breaks a rule gets its
    error and the others go on. Created positions come back as ORM rows (one more query), or with
    ``want_rows=False`` as CreatedPosition; updated and unchanged ones always as the ORM rows.
    """
    results: list[UpsertResult[Any]] = [UpsertResult(key=(d.id_a2a, d.id_pendenza)) for d in batch]
    if not batch:
        return results
    existing = find_positions(session, keys=[r.key for r in results])
    now = utcnow()
    to_create: list[tuple[UpsertResult[Any], PositionData]] = []
    to_update: list[tuple[UpsertResult[Any], Position, PositionData]] = []
    seen: set[tuple[str, str]] = set()
    for result, data in zip(results, batch, strict=True):
        if result.key in seen:
            result.error = BusinessError("VER_015", "Pendenza ripetuta nello stesso lotto",
                                         field="idPendenza")
            continue
        seen.add(result.key)
        row = existing.get(result.key)
        if row is None:
            to_create.append((result, data))
        elif row.content_hash == data.content_hash:
            result.outcome, result.position = UNCHANGED, row
        else:
            to_update.append((result, row, data))
    _update(session, pending=to_update, now=now)
    _create(session, pending=to_create, now=now, want_rows=want_rows)
    session.flush()
    return results


def _update(session: Session, *, pending: list[tuple[UpsertResult[Any], Position, PositionData]],
            now: datetime) -> None:
    if not pending:
        return
    stored_items = items_of(session, position_ids=[row.id or 0 for _, row, _ in pending])
    positions: list[tuple[SQLModel, dict[str, Any]]] = []
    items: list[tuple[SQLModel, dict[str, Any]]] = []
    for result, row, data in pending:
        stored = stored_items[row.id or 0]
        try:
            check_update(state=row.state, nav=row.nav,
                         items=[StoredItem(i.id_voce, i.id_dominio, i.kind) for i in stored], new=data)
        except BusinessError as exc:
            result.error = exc
            continue
        values = {k: v for k, v in data.columns().items() if k not in _KEYS}
        values |= {"version": row.version + 1, "updated_at": now,
                   "publication_state": PublicationState.PENDING}
        positions.append((row, values))
        items.extend((item, new.__dict__) for item, new in zip(stored, data.items, strict=True))
        result.outcome, result.position = UPDATED, row
    _write_updates(session, table=_POSITIONS, changes=positions)
    _write_updates(session, table=_ITEMS, changes=items)


def _write_updates(session: Session, *, table: Table, changes: list[tuple[SQLModel, dict[str, Any]]]) -> None:
    """UPDATE by id the columns whose value changes, one executemany per set of such columns."""
    # Only what differs, as the ORM's flush wrote (a reload changes a few columns of most rows, so the
    # groups are few), and voci that do not change are not written at all.
    groups: dict[tuple[str, ...], list[tuple[SQLModel, dict[str, Any]]]] = defaultdict(list)
    for obj, values in changes:
        changed = {name: value for name, value in values.items() if getattr(obj, name) != value}
        if changed:
            groups[tuple(changed)].append((obj, changed))
    for group in groups.values():
        session.execute(update(table).where(table.c.id == bindparam("pk")),
                        [{"pk": obj.id, **changed} for obj, changed in group])  # type: ignore[attr-defined]
        # The callers read these rows (and their voci) afterwards: committed values, not attribute sets,
        # show them what the database now holds without the ORM writing them a second time at flush.
        for obj, changed in group:
            for name, value in changed.items():
                set_committed_value(obj, name, value)


def _create(session: Session, *, pending: list[tuple[UpsertResult[Any], PositionData]], now: datetime,
            want_rows: bool) -> None:
    if not pending:
        return
    needs_nav = [(r, d) for r, d in pending if d.nav is None]
    prefixes = _prefixes(session, {(d.id_dominio, d.debt_type) for _, d in needs_nav})
    by_prefix: dict[tuple[str, str], list[PositionData]] = defaultdict(list)
    for _, d in needs_nav:
        by_prefix[(d.id_dominio, prefixes[(d.id_dominio, d.debt_type)])].append(d)
    creditors = {c.id_dominio: c for c in session.exec(
        select(Creditor).where(col(Creditor.id_dominio).in_({k[0] for k in by_prefix}))).all()}
    assigned: dict[int, tuple[str, str]] = {}
    for (id_dominio, prefix), group in by_prefix.items():
        notices = allocate_notices(session, creditor=creditors[id_dominio], prefix=prefix, count=len(group))
        for d, notice in zip(group, notices, strict=True):
            assigned[id(d)] = (notice.iuv, notice.nav)
    own = [d.nav for _, d in pending if d.nav]
    taken: set[tuple[str, str | None]] = set()
    if own:
        taken = set(session.exec(select(Position.id_dominio, Position.nav)
                                 .where(col(Position.nav).in_(own))).all())
    created: list[tuple[UpsertResult[Any], dict[str, Any], PositionData]] = []
    for result, d in pending:
        if d.nav:
            if (d.id_dominio, d.nav) in taken:
                result.error = BusinessError("VER_014", f"numeroAvviso {d.nav} gia' utilizzato",
                                             field="numeroAvviso")
                continue
            taken.add((d.id_dominio, d.nav))
            iuv, nav = nav_to_iuv(d.nav), d.nav
        else:
            iuv, nav = assigned[id(d)]
        row = _POSITION_DEFAULTS | d.columns() | {
            "iuv": iuv, "nav": nav, "iupd": f"{d.id_dominio}-{iuv}", "created_at": now, "updated_at": now,
            "state": PositionState.NON_ESEGUITA, "publication_state": PublicationState.PENDING}
        created.append((result, row, d))
    if not created:
        return
    ids = _insert_positions(session, rows=[row for _, row, _ in created])
    voci = [_ITEM_DEFAULTS | item.__dict__ | {"position_id": pk}
            for (_, _, d), pk in zip(created, ids, strict=True) for item in d.items]
    if voci:
        insert_many(session, _ITEMS, _without_empty_columns(_ITEMS, voci))
    loaded = _load_positions(session, ids=ids) if want_rows else {}
    for (result, row, _), pk in zip(created, ids, strict=True):
        result.outcome = CREATED
        result.position = loaded[pk] if want_rows else CreatedPosition(
            id=pk, id_a2a=row["id_a2a"], id_pendenza=row["id_pendenza"], id_dominio=row["id_dominio"],
            debt_type=row["debt_type"], iuv=row["iuv"], nav=row["nav"], iupd=row["iupd"],
            amount=row["amount"], due_date=row["due_date"], state=row["state"], version=row["version"])


def _insert_positions(session: Session, *, rows: list[dict[str, Any]]) -> list[int]:
    """Insert position rows by Core executemany; their ids, in the rows' order."""
    if session.get_bind().dialect.name == "postgresql":
        # SQLAlchemy turns an executemany INSERT … RETURNING into multi-VALUES pages that cost here four
        # times a plain executemany (client time, whatever the page size); drawing the ids from the sequence
        # first keeps the insert plain. Sorted, so ids follow the batch's order as the ORM's did.
        ids = sorted(session.execute(text(
            "SELECT nextval(CAST(pg_get_serial_sequence(:table, 'id') AS regclass)) "
            "FROM generate_series(1, :n)"), {"table": _POSITIONS.name, "n": len(rows)}).scalars())
        for row, pk in zip(rows, ids, strict=True):
            row["id"] = pk
        session.execute(insert(_POSITIONS), _without_empty_columns(_POSITIONS, rows))
        return ids
    # SQLite: the write lock first (a write that changes nothing), so no other writer can take the ids that
    # follow the largest; then the ids are ours to give, and the insert is a plain executemany.
    session.execute(text("UPDATE position SET id = id WHERE id = 0"))  # ids start at 1: no row, one lookup
    last = session.execute(select(func.max(_POSITIONS.c.id))).scalar_one() or 0
    ids = list(range(last + 1, last + 1 + len(rows)))
    for row, pk in zip(rows, ids, strict=True):
        row["id"] = pk
    insert_many(session, _POSITIONS, _without_empty_columns(_POSITIONS, rows))
    return ids


def _without_empty_columns(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without the columns that are NULL in every one of them and have no default."""
    # Most optional columns are empty throughout a file: leaving them out of the INSERT spares SQLAlchemy
    # and the driver a quarter of their work per row, and the database stores NULL all the same.
    keep = [name for name in rows[0] if table.c[name].default is not None
            or table.c[name].server_default is not None or any(row[name] is not None for row in rows)]
    if len(keep) == len(rows[0]):
        return rows
    return [{name: row[name] for name in keep} for row in rows]


def _load_positions(session: Session, *, ids: list[int]) -> dict[int, Position]:
    """Positions by id as ORM rows, one query per few thousand ids."""
    found: dict[int, Position] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        for p in session.exec(select(Position).where(col(Position.id).in_(chunk))).all():
            found[p.id or 0] = p
    return found


def get_position(session: Session, *, id_a2a: str, id_pendenza: str) -> Position | None:
    """A position by the application's key."""
    return session.exec(select(Position).where(Position.id_a2a == id_a2a,
                                               Position.id_pendenza == id_pendenza)).first()


def get_position_by_nav(session: Session, *, id_dominio: str, nav: str) -> Position | None:
    """A position by EC and notice number."""
    return session.exec(select(Position).where(Position.id_dominio == id_dominio,
                                               Position.nav == nav)).first()


def items_of(session: Session, *, position_ids: list[int]) -> dict[int, list[PositionItem]]:
    """The voci of several positions, in order."""
    out: dict[int, list[PositionItem]] = defaultdict(list)
    if position_ids:
        stmt = (select(PositionItem).where(col(PositionItem.position_id).in_(position_ids))
                .order_by(col(PositionItem.position_id), col(PositionItem.item_index)))
        for item in session.exec(stmt).all():
            out[item.position_id].append(item)
    return out


def change_state(session: Session, *, position: Position, annul: bool, description: str | None) -> bool:
    """Annul (ANNULLATA) or restore (NON_ESEGUITA) a position; returns whether anything changed."""
    target = PositionState.ANNULLATA if annul else PositionState.NON_ESEGUITA
    if position.state == target:
        if description is not None and description != position.state_description:
            position.state_description = description
            session.add(position)
            return True
        return False
    if annul:
        check_annul(position.state)
        position.annulled_at = utcnow()
    else:
        check_restore(position.state)
        position.annulled_at = None
    position.state = target
    position.state_description = description
    position.version += 1
    position.updated_at = utcnow()
    position.publication_state = PublicationState.PENDING
    session.add(position)
    return True


@dataclass(frozen=True)
class PositionFilter:
    """Filters of GET /pendenze."""

    id_dominio: str | None = None
    id_a2a: str | None = None
    id_debitore: str | None = None
    stato: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    direzione: str | None = None
    divisione: str | None = None
    id_documento: str | None = None


def list_positions(session: Session, *, filters: PositionFilter, allowed_creditors: set[str] | None,
                   owner: str | None, today: date, page: int, size: int) -> tuple[int, list[Position]]:
    """One page of positions matching the filters, within what the caller may see; returns (total, rows)."""
    stmt = select(Position)
    if allowed_creditors is not None:
        stmt = stmt.where(col(Position.id_dominio).in_(allowed_creditors))
    if owner is not None:
        stmt = stmt.where(Position.id_a2a == owner)
    f = filters
    for column, value in ((Position.id_dominio, f.id_dominio), (Position.id_a2a, f.id_a2a),
                          (Position.debtor_id, f.id_debitore.upper() if f.id_debitore else None),
                          (Position.direction, f.direzione), (Position.division, f.divisione),
                          (Position.document_id, f.id_documento)):
        if value is not None:
            stmt = stmt.where(column == value)
    if f.data_da is not None:
        stmt = stmt.where(col(Position.created_at) >= _day_start(f.data_da))
    if f.data_a is not None:
        stmt = stmt.where(col(Position.created_at) < _day_start(f.data_a + timedelta(days=1)))
    if f.stato == "SCADUTA":
        stmt = stmt.where(Position.state == PositionState.NON_ESEGUITA, col(Position.due_date) < today)
    elif f.stato == "NON_ESEGUITA":
        stmt = stmt.where(Position.state == PositionState.NON_ESEGUITA,
                          or_(col(Position.due_date).is_(None), col(Position.due_date) >= today))
    elif f.stato is not None:
        stmt = stmt.where(Position.state == f.stato)
    return page_of(session, stmt, order_by=(col(Position.created_at).desc(), col(Position.id).desc()),
                   page=page, size=size)
