"""Persistence of the operator console: logins and lockout, the audit trail, searches, timelines and actions.

Every function takes the caller's session and the set of ECs the operator may see (``allowed``; None means
every EC), so no query can return another EC's data by omission.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import distinct, func, or_, update
from sqlmodel import Session, col, select

from models.bulk import BulkFile
from models.console import OperatorAction
from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, CollectionState, PaymentAttempt, Receipt
from models.positions import Position
from models.reconciliation import Label, MatchSuggestion, Reconciliation, SuggestionState, TransferLabel
from models.registry import Creditor, Operator, OperatorGrant
from models.reporting import ReportingFlow, ReportingLine
from models.treasury import TreasuryMovement
from models.types import utcnow
from reports.receipt import ReceiptContext, ReceiptLine
from rules.calendar import day_start
from rules.console import after_failure
from rules.positions import visible_state
from store.bulk import register_bulk_file
from store.common import page_of
from store.journal import JournalQuery, search_events
from store.positions import PositionFilter, change_state, items_of, list_positions
from store.reconciliation import confirm_suggestion, mark_not_pagopa

ZERO = Decimal("0.00")


# --- operators, logins and the audit trail ------------------------------------------------------------


def find_operator(session: Session, *, username: str) -> Operator | None:
    """An operator by username (None if unknown)."""
    return session.exec(select(Operator).where(Operator.username == username)).first()


def operator_creditors(session: Session, *, operator: Operator) -> frozenset[str] | None:
    """The ECs an operator may see: None for every EC."""
    if operator.all_creditors:
        return None
    return frozenset(
        session.exec(
            select(OperatorGrant.id_dominio).where(OperatorGrant.username == operator.username)
        ).all()
    )


def record_action(
    session: Session,
    *,
    username: str,
    action: str,
    entity: str,
    entity_key: str,
    id_dominio: str | None = None,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
) -> OperatorAction:
    """Write one line of the audit trail (who, when, what, on which object, before and after)."""
    row = OperatorAction(
        username=username[:140],
        action=action[:40],
        entity=entity[:40],
        entity_key=entity_key[:200],
        id_dominio=id_dominio,
        reason=reason and reason[:500],
        before=before,
        after=after,
    )
    session.add(row)
    session.flush()
    return row


def record_login_failure(
    session: Session, *, operator: Operator, now: datetime | None = None
) -> datetime | None:
    """Count a wrong password; returns the end of the lockout when this failure locks the account."""
    now = now or utcnow()
    failures, locked_until = after_failure(operator.failed_logins, now)
    operator.failed_logins = failures
    if locked_until is not None:
        operator.locked_until = locked_until
    session.add(operator)
    record_action(
        session,
        username=operator.username,
        action="login_failed" if locked_until is None else "locked",
        entity="operator",
        entity_key=operator.username,
        after={"locked_until": locked_until.isoformat()} if locked_until else None,
    )
    return locked_until


def record_login_success(session: Session, *, operator: Operator) -> None:
    """A successful login: the failure count starts again, and the audit trail records it."""
    if operator.failed_logins or operator.locked_until is not None:
        operator.failed_logins, operator.locked_until = 0, None
        session.add(operator)
    record_action(
        session, username=operator.username, action="login", entity="operator", entity_key=operator.username
    )


def list_actions(
    session: Session,
    *,
    allowed: frozenset[str] | None,
    entity: str | None = None,
    entity_key: str | None = None,
    username: str | None = None,
    page: int = 1,
    size: int = 50,
) -> tuple[int, list[OperatorAction]]:
    """Audit lines, newest first; a restricted operator sees only those about its ECs."""
    stmt = select(OperatorAction)
    if allowed is not None:
        stmt = stmt.where(col(OperatorAction.id_dominio).in_(sorted(allowed)))
    for column, value in (
        (OperatorAction.entity, entity),
        (OperatorAction.entity_key, entity_key),
        (OperatorAction.username, username),
    ):
        if value:
            stmt = stmt.where(column == value)
    order = (col(OperatorAction.at).desc(), col(OperatorAction.id).desc())
    return page_of(session, stmt, order_by=order, page=page, size=size)


def _in_scope(column: Any, allowed: frozenset[str] | None) -> Any:
    return None if allowed is None else col(column).in_(sorted(allowed))


def visible_creditors(session: Session, *, allowed: frozenset[str] | None) -> list[Creditor]:
    """The ECs an operator may see, by fiscal code."""
    stmt = select(Creditor).order_by(col(Creditor.id_dominio))
    if allowed is not None:
        stmt = stmt.where(col(Creditor.id_dominio).in_(sorted(allowed)))
    return list(session.exec(stmt).all())


# --- positions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositionSearch:
    """What an operator looks a position up by (every given field must match)."""

    nav: str | None = None
    iuv: str | None = None
    debtor: str | None = None
    id_a2a: str | None = None
    stato: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    id_dominio: str | None = None


def search_positions(
    session: Session,
    *,
    search: PositionSearch,
    allowed: frozenset[str] | None,
    today: date,
    page: int,
    size: int,
) -> tuple[int, list[Position]]:
    """One page of the positions matching the search among the ECs the operator may see, newest first."""
    filters = PositionFilter(
        id_dominio=search.id_dominio,
        id_a2a=search.id_a2a,
        id_debitore=search.debtor,
        stato=search.stato,
        data_da=search.data_da,
        data_a=search.data_a,
    )
    scope = None if allowed is None else set(allowed)
    if not search.nav and not search.iuv:
        return list_positions(
            session, filters=filters, allowed_creditors=scope, owner=None, today=today, page=page, size=size
        )
    # A notice number or IUV names at most one position per EC: find them by key, then apply the rest.
    stmt = select(Position)
    if search.nav:
        stmt = stmt.where(Position.nav == search.nav)
    if search.iuv:
        stmt = stmt.where(Position.iuv == search.iuv)
    if scope is not None:
        stmt = stmt.where(col(Position.id_dominio).in_(sorted(scope)))
    rows = [p for p in session.exec(stmt.order_by(col(Position.id))).all() if _matches(p, filters, today)]
    return len(rows), rows[(page - 1) * size : page * size]


def _matches(p: Position, f: PositionFilter, today: date) -> bool:
    if f.id_dominio and p.id_dominio != f.id_dominio:
        return False
    if f.id_a2a and p.id_a2a != f.id_a2a:
        return False
    if f.id_debitore and p.debtor_id != f.id_debitore.upper():
        return False
    if f.stato and visible_state(state=p.state, due_date=p.due_date, today=today) != f.stato:
        return False
    if f.data_da and p.created_at < day_start(f.data_da):
        return False
    return not (f.data_a and p.created_at >= day_start(f.data_a + timedelta(days=1)))


@dataclass(frozen=True)
class TimelineEntry:
    """One moment in the life of a position: a milestone from the tables or an exchange from the journal."""

    at: datetime
    kind: str
    text: str
    outcome: str | None = None
    link: str | None = None  # what it links to, as (kind, id) turned into a URL by the view
    link_id: str | None = None
    detail: str | None = None


def position_timeline(session: Session, *, position: Position, limit: int = 300) -> list[TimelineEntry]:
    """Created, published, each payment attempt, receipt, reported, cashed, notifications, operator actions
    and every journal exchange about the position's IUV, in time order."""
    p = position
    out: list[TimelineEntry] = [TimelineEntry(p.created_at, "created", p.id_a2a, detail=p.id_pendenza)]
    if p.published_at is not None:
        out.append(TimelineEntry(p.published_at, "published", p.publication_state))
    elif p.publication_error:
        out.append(
            TimelineEntry(
                p.updated_at or p.created_at,
                "publication_failed",
                p.publication_state,
                outcome="FAIL",
                detail=p.publication_error,
            )
        )
    for a in session.exec(
        select(PaymentAttempt)
        .where(PaymentAttempt.position_id == p.id)
        .order_by(col(PaymentAttempt.requested_at))
    ).all():
        out.append(
            TimelineEntry(
                a.requested_at, "attempt", a.state, detail=" ".join(x for x in (a.kind, a.psp_id, a.ccp) if x)
            )
        )
    receipts = list(
        session.exec(
            select(Receipt)
            .where(Receipt.position_id == p.id, Receipt.id_dominio == p.id_dominio)
            .order_by(col(Receipt.received_at))
        ).all()
    )
    for r in receipts:
        out.append(
            TimelineEntry(
                r.payment_at or r.received_at,
                "receipt",
                r.state,
                link="receipt",
                link_id=str(r.id),
                detail=f"{r.receipt_id} {r.psp_name or r.psp_id or ''}".strip(),
            )
        )
    if p.iuv:
        for line, flow in session.exec(
            select(ReportingLine, ReportingFlow)
            .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
            .where(ReportingFlow.id_dominio == p.id_dominio, ReportingLine.iuv == p.iuv)
            .order_by(col(ReportingFlow.downloaded_at))
        ).all():
            out.append(
                TimelineEntry(
                    flow.flow_at or flow.downloaded_at,
                    "reported",
                    line.state,
                    link="flow",
                    link_id=str(flow.id),
                    detail=flow.id_flusso,
                )
            )
    for c in session.exec(
        select(Collection).where(
            Collection.position_id == p.id, Collection.state == CollectionState.INCASSATA
        )
    ).all():
        out.append(
            TimelineEntry(
                c.cashed_at or p.cashed_at or p.created_at,
                "cashed",
                str(c.amount),
                link="movement" if c.movement_id else None,
                link_id=str(c.movement_id) if c.movement_id else None,
            )
        )
    if receipts:
        for n in session.exec(
            select(Notification)
            .where(col(Notification.receipt_pk).in_([r.id for r in receipts]))
            .order_by(col(Notification.created_at))
        ).all():
            out.append(
                TimelineEntry(
                    n.delivered_at or n.created_at,
                    "notification",
                    n.state,
                    outcome="OK" if n.state == "DELIVERED" else None,
                    detail=f"{n.id_a2a} ({n.attempts})",
                )
            )
    for action in session.exec(
        select(OperatorAction)
        .where(OperatorAction.entity == "position", OperatorAction.entity_key == str(p.id))
        .order_by(col(OperatorAction.at))
    ).all():
        out.append(
            TimelineEntry(
                action.at,
                "operator",
                action.action,
                detail=f"{action.username}: {action.reason}" if action.reason else action.username,
            )
        )
    if p.state == "ANNULLATA" and p.annulled_at is not None:
        out.append(TimelineEntry(p.annulled_at, "annulled", p.state, detail=p.state_description))
    if p.iuv:
        for e in search_events(session, query=JournalQuery(id_dominio=p.id_dominio, iuv=p.iuv), limit=limit):
            out.append(
                TimelineEntry(
                    e.at,
                    "event",
                    f"{e.component} {e.operation}",
                    outcome=e.outcome,
                    link="event",
                    link_id=str(e.id),
                    detail=e.fault_code or e.error,
                )
            )
    out.sort(key=lambda entry: entry.at)
    return out


def annul_or_restore(
    session: Session, *, position: Position, annul: bool, reason: str, username: str
) -> bool:
    """Annul or restore a position with the operator's reason (BusinessError when the rules refuse it);
    returns whether anything changed. The audit trail gets who, when, why, and the state before and after."""
    before = {"state": position.state, "state_description": position.state_description}
    changed = change_state(session, position=position, annul=annul, description=reason)
    if changed:
        record_action(
            session,
            username=username,
            action="annul" if annul else "restore",
            entity="position",
            entity_key=str(position.id),
            id_dominio=position.id_dominio,
            reason=reason,
            before=before,
            after={"state": position.state, "state_description": position.state_description},
        )
    session.flush()
    return changed


def position_receipt_context(session: Session, *, receipt: Receipt) -> ReceiptContext:
    """What the receipt PDF shows for a stored receipt (with its position's voci when known)."""
    position = session.get(Position, receipt.position_id) if receipt.position_id else None
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == receipt.id_dominio)).first()
    items = items_of(session, position_ids=[position.id or 0])[position.id or 0] if position else []
    names = {
        c.id_dominio: c.name
        for c in session.exec(
            select(Creditor).where(col(Creditor.id_dominio).in_({i.id_dominio for i in items}))
        ).all()
    }
    return ReceiptContext(
        creditor_name=creditor.name if creditor else receipt.id_dominio,
        creditor_fiscal_code=receipt.id_dominio,
        receipt_id=receipt.receipt_id,
        iuv=receipt.iuv,
        nav=receipt.nav,
        reason=position.causale if position else "",
        amount=receipt.amount,
        fee=receipt.fee,
        paid_at=receipt.payment_at,
        psp=receipt.psp_name or receipt.psp_id or "-",
        debtor=f"{position.debtor_name} ({position.debtor_id})" if position else (receipt.debtor_id or "-"),
        payer=receipt.payer_name,
        outcome=receipt.outcome,
        lines=tuple(
            ReceiptLine(
                index=i.item_index,
                description=i.description,
                beneficiary=names.get(i.id_dominio, i.id_dominio),
                amount=i.amount,
            )
            for i in items
        ),
    )


# --- dashboard ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayPayments:
    """Payments of one EC on one day: how many notices were paid and how much of it is the EC's."""

    count: int
    total: Decimal


def payments_on_day(session: Session, *, id_dominio: str, day: date) -> DayPayments:
    """Notices paid on an Italian calendar day (receipts' collections for this EC)."""
    count, total = session.execute(
        select(func.count(distinct(Collection.iuv)), func.sum(Collection.amount)).where(
            Collection.id_dominio == id_dominio,
            col(Collection.receipt_pk).is_not(None),
            col(Collection.paid_at) >= day_start(day),
            col(Collection.paid_at) < day_start(day + timedelta(days=1)),
        )
    ).one()
    return DayPayments(int(count), total or ZERO)


def cashed_total(session: Session, *, id_dominio: str) -> Decimal:
    """Everything cashed for the EC so far (collections whose money is on the treasury account)."""
    total = session.execute(
        select(func.sum(Collection.amount)).where(
            Collection.id_dominio == id_dominio, Collection.state == CollectionState.INCASSATA
        )
    ).scalar_one()
    return total or ZERO


# --- receipts, flows, movements ----------------------------------------------------------------------


def list_receipts(
    session: Session,
    *,
    allowed: frozenset[str] | None,
    id_dominio: str | None = None,
    iuv: str | None = None,
    nav: str | None = None,
    receipt_id: str | None = None,
    day: date | None = None,
    page: int = 1,
    size: int = 50,
) -> tuple[int, list[Receipt]]:
    """Receipts matching the filters among the operator's ECs, newest first."""
    stmt = select(Receipt)
    scope = _in_scope(Receipt.id_dominio, allowed)
    if scope is not None:
        stmt = stmt.where(scope)
    for column, value in (
        (Receipt.id_dominio, id_dominio),
        (Receipt.iuv, iuv),
        (Receipt.nav, nav),
        (Receipt.receipt_id, receipt_id),
    ):
        if value:
            stmt = stmt.where(column == value)
    if day is not None:
        stmt = stmt.where(
            col(Receipt.received_at) >= day_start(day),
            col(Receipt.received_at) < day_start(day + timedelta(days=1)),
        )
    order = (col(Receipt.received_at).desc(), col(Receipt.id).desc())
    return page_of(session, stmt, order_by=order, page=page, size=size)


def flow_lines(
    session: Session, *, flow_id: int, after: int = 0, only_anomalies: bool = False, size: int = 200
) -> list[ReportingLine]:
    """A page of a flow's lines after line ``after`` (keyset paging), optionally only those with anomalies."""
    stmt = select(ReportingLine).where(ReportingLine.flow_id == flow_id, ReportingLine.line_index > after)
    if only_anomalies:
        stmt = stmt.where(or_(col(ReportingLine.anomalies).is_not(None), ReportingLine.state == "ANOMALA"))
    return list(session.exec(stmt.order_by(col(ReportingLine.line_index)).limit(size)).all())


def labels_of(session: Session, *, id_dominio: str, subject: str, keys: list[str]) -> dict[str, list[str]]:
    """The current reconciliation labels of some subjects (collection, line, flow, movement) by key."""
    out: dict[str, list[str]] = {}
    if keys:
        for key, label in session.exec(
            select(TransferLabel.subject_key, TransferLabel.label).where(
                TransferLabel.id_dominio == id_dominio,
                col(TransferLabel.label).in_(list(Label)),  # uq_transfer_label leads with (EC, label)
                TransferLabel.subject == subject,
                col(TransferLabel.subject_key).in_([int(k) for k in keys]),
            )
        ).all():
            out.setdefault(str(key), []).append(label)
    return out


def list_movements(
    session: Session,
    *,
    allowed: frozenset[str] | None,
    id_dominio: str | None = None,
    match_state: str | None = None,
    day: date | None = None,
    with_suggestions: bool = False,
    page: int = 1,
    size: int = 50,
) -> tuple[int, list[tuple[TreasuryMovement, int]]]:
    """Treasury movements of the operator's ECs with their count of open suggestions, newest first."""
    open_count = (
        select(func.count())
        .where(
            MatchSuggestion.movement_id == TreasuryMovement.id,
            MatchSuggestion.state == SuggestionState.PROPOSED,
        )
        .correlate(TreasuryMovement)
        .scalar_subquery()
    )
    conditions: list[Any] = []
    scope = _in_scope(TreasuryMovement.id_dominio, allowed)
    if scope is not None:
        conditions.append(scope)
    if id_dominio:
        conditions.append(TreasuryMovement.id_dominio == id_dominio)
    if match_state:
        conditions.append(TreasuryMovement.match_state == match_state)
    if day is not None:
        conditions.append(TreasuryMovement.value_date == day)
    if with_suggestions:
        conditions.append(open_count > 0)
    total = session.exec(select(func.count()).select_from(TreasuryMovement).where(*conditions)).one()
    rows = session.exec(
        select(TreasuryMovement, open_count)
        .where(*conditions)
        .order_by(col(TreasuryMovement.value_date).desc(), col(TreasuryMovement.id).desc())
        .offset((page - 1) * size)
        .limit(size)
    ).all()
    return int(total), [(m, int(n)) for m, n in rows]


@dataclass(frozen=True)
class SuggestionView:
    """A suggested flow for a movement, with the flow it names."""

    suggestion: MatchSuggestion
    flow: ReportingFlow


def movement_details(
    session: Session, *, movement: TreasuryMovement
) -> tuple[Reconciliation | None, list[str], list[SuggestionView]]:
    """A movement's reconciliation outcome, current labels and suggestions (open ones first)."""
    reconciliation = session.exec(
        select(Reconciliation).where(Reconciliation.movement_id == movement.id)
    ).first()
    labels = list(
        session.exec(
            select(TransferLabel.label).where(
                TransferLabel.movement_id == movement.id, TransferLabel.subject == "movement"
            )
        ).all()
    )
    suggestions = [
        SuggestionView(s, f)
        for s, f in session.exec(
            select(MatchSuggestion, ReportingFlow)
            .join(ReportingFlow, col(ReportingFlow.id) == MatchSuggestion.flow_id)
            .where(MatchSuggestion.movement_id == movement.id)
            .order_by(
                col(MatchSuggestion.state) != SuggestionState.PROPOSED,
                col(MatchSuggestion.score).desc(),
                col(MatchSuggestion.id),
            )
        ).all()
    ]
    return reconciliation, sorted(labels), suggestions


def _movement_state(movement: TreasuryMovement) -> dict[str, Any]:
    return {
        "match_state": movement.match_state,
        "reference_kind": movement.reference_kind,
        "reference": movement.reference,
    }


def decide_suggestion(
    session: Session, *, suggestion: MatchSuggestion, movement: TreasuryMovement, accept: bool, username: str
) -> MatchSuggestion:
    """Confirm or reject a suggested match (the next reconcile run cashes a confirmed one), audited."""
    if suggestion.state != SuggestionState.PROPOSED:
        raise ValueError(f"suggestion {suggestion.id}: already {suggestion.state}")
    before = {"suggestion": suggestion.state, **_movement_state(movement)}
    decided = confirm_suggestion(session, suggestion_id=suggestion.id or 0, operator=username, accept=accept)
    session.flush()
    session.refresh(movement)
    record_action(
        session,
        username=username,
        action="confirm_match" if accept else "reject_match",
        entity="movement",
        entity_key=str(movement.id),
        id_dominio=movement.id_dominio,
        before=before,
        after={"suggestion": decided.state, "flow_id": decided.flow_id, **_movement_state(movement)},
    )
    return decided


def set_not_pagopa(
    session: Session, *, movement: TreasuryMovement, username: str, reason: str | None
) -> None:
    """Mark a credit as not pagoPA money (it leaves reconciliation), audited with the operator's note."""
    before = _movement_state(movement)
    mark_not_pagopa(session, movement_id=movement.id or 0, operator=username)
    session.flush()
    session.refresh(movement)
    record_action(
        session,
        username=username,
        action="not_pagopa",
        entity="movement",
        entity_key=str(movement.id),
        id_dominio=movement.id_dominio,
        reason=reason,
        before=before,
        after=_movement_state(movement),
    )


# --- bulk uploads --------------------------------------------------------------------------------------


def register_upload(
    session: Session,
    *,
    name: str,
    sha256: str,
    fmt: str,
    total_rows: int,
    id_a2a: str,
    id_dominio: str,
    debt_type: str | None,
    username: str,
) -> tuple[BulkFile, bool]:
    """Register an uploaded bulk file before its flow runs (the flow finds it by hash), audited when new."""
    bulk, created = register_bulk_file(
        session,
        name=name,
        sha256=sha256,
        fmt=fmt,
        id_a2a=id_a2a,
        id_dominio=id_dominio,
        debt_type=debt_type,
        total_rows=total_rows,
    )
    record_action(
        session,
        username=username,
        action="upload" if created else "upload_again",
        entity="bulk_file",
        entity_key=str(bulk.id),
        id_dominio=id_dominio,
        after={"name": name, "rows": total_rows, "id_a2a": id_a2a, "sha256": sha256},
    )
    return bulk, created


def list_bulk_files(
    session: Session, *, allowed: frozenset[str] | None, page: int = 1, size: int = 25
) -> tuple[int, list[BulkFile]]:
    """Bulk files of the operator's ECs, newest first (files of several ECs only for all-EC operators)."""
    stmt = select(BulkFile)
    if allowed is not None:
        stmt = stmt.where(col(BulkFile.id_dominio).in_(sorted(allowed)))
    return page_of(session, stmt, order_by=(col(BulkFile.id).desc(),), page=page, size=size)


def bulk_fail_if_stuck(session: Session, *, bulk_file_id: int) -> None:
    """Mark a registered file FAILED when its flow could not even start (it stays re-runnable)."""
    session.execute(
        update(BulkFile)
        .where(col(BulkFile.id) == bulk_file_id, BulkFile.state == "RECEIVED")
        .values(state="FAILED")
    )


# --- the event journal ---------------------------------------------------------------------------------


def event_visible(event: Event, allowed: frozenset[str] | None) -> bool:
    """Whether an operator may read an event: events of no EC only for operators of every EC."""
    return allowed is None or (event.id_dominio is not None and event.id_dominio in allowed)
