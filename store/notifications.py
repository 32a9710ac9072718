"""The notification queue: claiming due notifications for one worker, recording what each delivery did.

A notification is due when PENDING, ``next_attempt_at <= now`` and not claimed (``claimed_until`` NULL or
past). A claim sets ``claimed_until`` to the end of a lease in one ``UPDATE … WHERE id IN (SELECT … LIMIT n)
RETURNING`` statement: on PostgreSQL the inner SELECT takes ``FOR UPDATE SKIP LOCKED`` so concurrent workers
take disjoint rows without waiting; on SQLite the statement holds the database's single write lock. The lease
end is the claim's token: a result is recorded only on a row still held with it, so a worker whose lease ran
out cannot overwrite the next worker's claim. Failures back off attempts² minutes, at most 24 h (GovPay);
nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, func, select

from models.notifications import Notification, NotificationState
from models.payments import Collection, Receipt
from models.positions import Position, PositionItem
from models.registry import Application, Creditor
from rules.backoff import squared_backoff

_ERROR_LIMIT = 500


@dataclass(frozen=True)
class Claim:
    """A notification held by one worker until ``claimed_until``."""

    id: int
    id_a2a: str
    claimed_until: datetime


def claim_due(session: Session, *, now: datetime, limit: int, lease: timedelta) -> list[Claim]:
    """Claim up to ``limit`` due notifications, oldest due first; the caller commits at once."""
    if limit <= 0:
        return []
    until = now + lease
    due = (
        select(Notification.id)
        .where(
            Notification.state == NotificationState.PENDING,
            col(Notification.next_attempt_at) <= now,
            or_(col(Notification.claimed_until).is_(None), col(Notification.claimed_until) < now),
        )
        .order_by(col(Notification.next_attempt_at), col(Notification.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(Notification)
        .where(
            col(Notification.id).in_(due.scalar_subquery()),
            or_(col(Notification.claimed_until).is_(None), col(Notification.claimed_until) < now),
        )
        .values(claimed_until=until)
        .returning(col(Notification.id), col(Notification.id_a2a))
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    return sorted((Claim(id=row[0], id_a2a=row[1], claimed_until=until) for row in rows), key=lambda c: c.id)


def record_delivered(session: Session, *, claim: Claim, now: datetime, status: int | None) -> bool:
    """The application accepted the notification; False if the claim was lost meanwhile."""
    result = session.execute(
        update(Notification)
        .where(
            col(Notification.id) == claim.id,
            col(Notification.claimed_until) == claim.claimed_until,
            col(Notification.state) == NotificationState.PENDING,
        )
        .values(
            state=NotificationState.DELIVERED,
            delivered_at=now,
            attempts=Notification.attempts + 1,
            last_status=status,
            last_error=None,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def record_failed(session: Session, *, claim: Claim, now: datetime, status: int | None, error: str) -> bool:
    """The delivery failed: one more attempt, next one attempts² minutes later (at most 24 h)."""
    row = session.get(Notification, claim.id)
    if row is None or row.state != NotificationState.PENDING or row.claimed_until != claim.claimed_until:
        return False
    row.attempts += 1
    row.next_attempt_at = now + squared_backoff(attempts=row.attempts)
    row.last_status, row.last_error, row.claimed_until = status, error[:_ERROR_LIMIT], None
    session.add(row)
    session.flush()
    return True


def record_no_endpoint(session: Session, *, claim: Claim) -> bool:
    """The application has no endpoint (any more): the notification is parked as NO_ENDPOINT, not dropped."""
    result = session.execute(
        update(Notification)
        .where(
            col(Notification.id) == claim.id,
            col(Notification.claimed_until) == claim.claimed_until,
            col(Notification.state) == NotificationState.PENDING,
        )
        .values(state=NotificationState.NO_ENDPOINT, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def release(session: Session, *, claims: list[Claim]) -> None:
    """Give claims back untouched (e.g. the worker stops before trying them)."""
    for claim in claims:
        session.execute(
            update(Notification)
            .where(col(Notification.id) == claim.id, col(Notification.claimed_until) == claim.claimed_until)
            .values(claimed_until=None)
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class NotificationData:
    """What a delivery needs from the database: the rows behind one notification."""

    notification: Notification
    application: Application | None
    receipt: Receipt
    position: Position | None
    items: list[PositionItem]
    collections: list[Collection]
    creditor_name: str | None


def load_notifications(session: Session, *, ids: list[int]) -> dict[int, NotificationData]:
    """The notifications with their application, receipt, position, voci and collections, by id."""
    notes = list(session.exec(select(Notification).where(col(Notification.id).in_(ids))).all())
    receipts = {
        r.id: r
        for r in session.exec(select(Receipt).where(col(Receipt.id).in_([n.receipt_pk for n in notes]))).all()
    }
    apps = {
        a.id_a2a: a
        for a in session.exec(
            select(Application).where(col(Application.id_a2a).in_({n.id_a2a for n in notes}))
        ).all()
    }
    position_ids = {r.position_id for r in receipts.values() if r.position_id is not None}
    positions = {
        p.id: p for p in session.exec(select(Position).where(col(Position.id).in_(position_ids))).all()
    }
    items: dict[int, list[PositionItem]] = {}
    for item in session.exec(
        select(PositionItem)
        .where(col(PositionItem.position_id).in_(position_ids))
        .order_by(col(PositionItem.item_index))
    ).all():
        items.setdefault(item.position_id, []).append(item)
    collections: dict[int, list[Collection]] = {}
    for c in session.exec(
        select(Collection)
        .where(col(Collection.receipt_pk).in_(list(receipts)))
        .order_by(col(Collection.transfer_index))
    ).all():
        collections.setdefault(c.receipt_pk or 0, []).append(c)
    names = {
        c.id_dominio: c.name
        for c in session.exec(
            select(Creditor).where(col(Creditor.id_dominio).in_({n.id_dominio for n in notes}))
        ).all()
    }
    out: dict[int, NotificationData] = {}
    for n in notes:
        receipt = receipts[n.receipt_pk]
        position = positions.get(receipt.position_id) if receipt.position_id is not None else None
        out[n.id or 0] = NotificationData(
            notification=n,
            application=apps.get(n.id_a2a),
            receipt=receipt,
            position=position,
            items=items.get(position.id or 0, []) if position else [],
            collections=collections.get(receipt.id or 0, []),
            creditor_name=names.get(n.id_dominio),
        )
    return out


def queue_counts(session: Session) -> dict[str, int]:
    """How many notifications are in each state, and how many PENDING ones are due but failing."""
    counts = {s.value: 0 for s in NotificationState}
    for state, n in session.exec(select(Notification.state, func.count()).group_by(Notification.state)).all():
        counts[state] = int(n)
    counts["RETRYING"] = int(
        session.exec(
            select(func.count())
            .select_from(Notification)
            .where(Notification.state == NotificationState.PENDING, Notification.attempts > 0)
        ).one()
    )
    return counts
