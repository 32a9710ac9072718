"""Persistence of debt positions: batch upsert, annul/restore, reads and the registry views validation needs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo
from typing import Any

from sqlalchemy import func, or_, tuple_
from sqlmodel import Session, col, select

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
from store.iuv import allocate_notices

CREATED, UPDATED, UNCHANGED = "CREATED", "UPDATED", "UNCHANGED"
ROME = ZoneInfo("Europe/Rome")


def _day_start(day: date) -> datetime:
    # Applications and operators speak of Italian calendar days.
    return datetime.combine(day, time.min, tzinfo=ROME)


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


@dataclass
class UpsertResult:
    """The outcome of one position of a batch: CREATED/UPDATED/UNCHANGED with the row, or an error."""

    key: tuple[str, str]
    outcome: str | None = None
    position: Position | None = None
    error: BusinessError | None = None


def _prefixes(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    creditors = {c.id_dominio: c for c in session.exec(
        select(Creditor).where(col(Creditor.id_dominio).in_({k[0] for k in keys}))).all()}
    types = {(d.id_dominio, d.code): d.iuv_prefix for d in session.exec(
        select(DebtType).where(col(DebtType.id_dominio).in_({k[0] for k in keys}))).all()}
    return {k: (types.get(k) if types.get(k) is not None else creditors[k[0]].iuv_prefix) or "" for k in keys}


def upsert_positions(session: Session, *, batch: list[PositionData]) -> list[UpsertResult]:
    """Create or update a batch of validated positions in the caller's transaction.

    One query finds the existing rows, one their voci; new positions get IUV/NAV in blocks per (EC, prefix).
    A row whose update breaks a rule gets its error and the others go on.
    """
    results = [UpsertResult(key=(d.id_a2a, d.id_pendenza)) for d in batch]
    if not batch:
        return results
    keys = [r.key for r in results]
    existing = {(p.id_a2a, p.id_pendenza): p for p in session.exec(
        select(Position).where(tuple_(Position.id_a2a, Position.id_pendenza).in_(keys))).all()}
    items_of: dict[int, list[PositionItem]] = defaultdict(list)
    if existing:
        for item in session.exec(select(PositionItem).where(
                col(PositionItem.position_id).in_([p.id for p in existing.values()]))
                .order_by(PositionItem.position_id, PositionItem.item_index)).all():
            items_of[item.position_id].append(item)
    now = utcnow()
    to_create: list[tuple[UpsertResult, PositionData]] = []
    seen: set[tuple[str, str]] = set()
    for result, data in zip(results, batch, strict=True):
        if result.key in seen:
            result.error = BusinessError("VER_015", "Pendenza ripetuta nello stesso lotto", field="idPendenza")
            continue
        seen.add(result.key)
        row = existing.get(result.key)
        if row is None:
            to_create.append((result, data))
            continue
        if row.content_hash == data.content_hash:
            result.outcome, result.position = UNCHANGED, row
            continue
        stored = [StoredItem(i.id_voce, i.id_dominio, i.kind) for i in items_of[row.id or 0]]
        try:
            check_update(state=row.state, nav=row.nav, items=stored, new=data)
        except BusinessError as exc:
            result.error = exc
            continue
        for name, value in data.columns().items():
            if name not in {"nav", "id_a2a", "id_pendenza", "id_dominio"}:
                setattr(row, name, value)
        row.version += 1
        row.updated_at = now
        row.publication_state = PublicationState.PENDING
        for item, new in zip(items_of[row.id or 0], data.items, strict=True):
            for name, value in new.__dict__.items():
                setattr(item, name, value)
            session.add(item)
        session.add(row)
        result.outcome, result.position = UPDATED, row
    _create(session, to_create, now)
    session.flush()
    return results


def _create(session: Session, pending: list[tuple[UpsertResult, PositionData]], now: Any) -> None:
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
    taken = set()
    if own:
        taken = {(p.id_dominio, p.nav) for p in session.exec(select(Position).where(col(Position.nav).in_(own))).all()}
    rows: list[tuple[UpsertResult, Position, PositionData]] = []
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
        columns = d.columns() | {"iuv": iuv, "nav": nav}
        position = Position(**columns, iupd=f"{d.id_dominio}-{iuv}", created_at=now, updated_at=now,
                            state=PositionState.NON_ESEGUITA, publication_state=PublicationState.PENDING)
        rows.append((result, position, d))
    session.add_all([p for _, p, _ in rows])
    session.flush()
    session.add_all([PositionItem(position_id=p.id, **item.__dict__) for _, p, d in rows for item in d.items])
    for result, position, _ in rows:
        result.outcome, result.position = CREATED, position


def get_position(session: Session, *, id_a2a: str, id_pendenza: str) -> Position | None:
    """A position by the application's key."""
    return session.exec(select(Position).where(Position.id_a2a == id_a2a,
                                               Position.id_pendenza == id_pendenza)).first()


def get_position_by_nav(session: Session, *, id_dominio: str, nav: str) -> Position | None:
    """A position by EC and notice number."""
    return session.exec(select(Position).where(Position.id_dominio == id_dominio, Position.nav == nav)).first()


def items_of(session: Session, *, position_ids: list[int]) -> dict[int, list[PositionItem]]:
    """The voci of several positions, in order."""
    out: dict[int, list[PositionItem]] = defaultdict(list)
    if position_ids:
        for item in session.exec(select(PositionItem).where(col(PositionItem.position_id).in_(position_ids))
                                 .order_by(PositionItem.position_id, PositionItem.item_index)).all():
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
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(stmt.order_by(col(Position.created_at).desc(), col(Position.id).desc())
                        .offset((page - 1) * size).limit(size)).all()
    return int(total), list(rows)
