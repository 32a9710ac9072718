"""Persistence of payments: attempts, receipts (pushed or pulled, idempotent), collections, notifications."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models.notifications import Notification, NotificationState
from models.payments import AttemptKind, AttemptState, Collection, PaymentAttempt, Receipt, ReceiptSource, ReceiptState
from models.positions import ItemState, Position, PositionItem, PositionState
from models.registry import Application
from models.types import utcnow
from rules.positions import PAID_STATES
from rules.receipts import ReceiptIn

ATTEMPT_TTL = timedelta(minutes=30)


def lock_position(session: Session, *, id_dominio: str, nav: str) -> Position | None:
    """A position by notice number, row-locked on PostgreSQL so concurrent receipts queue."""
    stmt = select(Position).where(Position.id_dominio == id_dominio, Position.nav == nav)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.exec(stmt).first()


def record_attempt(session: Session, *, position: Position, amount_requested: object = None,
                   payment_note: str | None = None, now: datetime | None = None) -> PaymentAttempt:
    """Remember a paGetPayment: an attempt that expires after 30 minutes without a receipt."""
    now = now or utcnow()
    cart_id = None
    if payment_note:
        if payment_note.startswith("cart:"):
            cart_id = payment_note
        else:  # Checkout may put its own cart id in the note: link to the portal session that opened it
            cart_id = session.exec(select(PaymentAttempt.cart_id).where(
                PaymentAttempt.kind == AttemptKind.CHECKOUT, PaymentAttempt.session_id == payment_note)).first()
    attempt = PaymentAttempt(id_dominio=position.id_dominio, iuv=position.iuv or "", nav=position.nav,
                             position_id=position.id, amount=position.amount, payment_note=payment_note,
                             requested_at=now, expires_at=now + ATTEMPT_TTL, cart_id=cart_id)
    session.add(attempt)
    return attempt


def expire_attempts(session: Session, *, now: datetime | None = None) -> int:
    """Mark every pending attempt past its expiry as EXPIRED; returns how many."""
    now = now or utcnow()
    result = session.execute(
        update(PaymentAttempt)
        .where(PaymentAttempt.state == AttemptState.PENDING, col(PaymentAttempt.expires_at) < now)
        .values(state=AttemptState.EXPIRED)
    )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class ReceiptOutcome:
    """What became of a receipt: ACCEPTED, ALREADY (same receiptId again), DUPLICATE (paid twice), UNKNOWN."""

    status: str
    receipt_pk: int | None
    position_id: int | None = None


def _existing(session: Session, receipt: ReceiptIn) -> Receipt | None:
    return session.exec(select(Receipt).where(Receipt.id_dominio == receipt.id_pa,
                                              Receipt.receipt_id == receipt.receipt_id)).first()


def accept_receipt(session: Session, *, receipt: ReceiptIn, source: ReceiptSource,
                   now: datetime | None = None) -> ReceiptOutcome:
    """Store a receipt once and apply it: collections, position and voci paid, attempt closed, notification queued.

    The same receiptId again is ALREADY (nothing changes). Another receipt for an already paid position is kept
    as DUPLICATE, with its collections, and the position becomes ANOMALA (paid twice).
    """
    now = now or utcnow()
    found = _existing(session, receipt)
    if found is not None:
        return ReceiptOutcome("ALREADY", found.id, found.position_id)
    position = lock_position(session, id_dominio=receipt.fiscal_code, nav=receipt.notice_number)
    if position is None and receipt.iuv:
        position = session.exec(select(Position).where(Position.id_dominio == receipt.fiscal_code,
                                                       Position.iuv == receipt.iuv)).first()
    primary = receipt.id_pa == receipt.fiscal_code
    status = "ACCEPTED"
    state = ReceiptState.ACCEPTED
    if receipt.outcome != "OK":
        status, state = "KO", ReceiptState.REJECTED
    elif position is None:
        status, state = "UNKNOWN", ReceiptState.REJECTED
    elif primary and position.state in PAID_STATES:
        status, state = "DUPLICATE", ReceiptState.DUPLICATE
    row = Receipt(
        receipt_id=receipt.receipt_id, id_dominio=receipt.id_pa, iuv=receipt.iuv, nav=receipt.notice_number,
        position_id=position.id if position else None, outcome=receipt.outcome, state=state, source=source,
        amount=receipt.amount, fee=receipt.fee, psp_id=receipt.psp_id, psp_name=receipt.psp_name,
        channel_id=receipt.channel_id, payment_method=receipt.payment_method, payer_id=receipt.payer_id,
        payer_name=receipt.payer_name, debtor_id=receipt.debtor_id, standin=receipt.standin,
        payment_at=receipt.payment_at or now, payload=receipt.payload, payload_format=receipt.payload_format,
        received_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        # the same receipt arrived concurrently: the other request stored it
        found = _existing(session, receipt)
        assert found is not None
        return ReceiptOutcome("ALREADY", found.id, found.position_id)
    if status in ("KO", "UNKNOWN"):
        return ReceiptOutcome(status, row.id, None)
    assert position is not None
    items = {i.item_index: i for i in session.exec(select(PositionItem).where(
        PositionItem.position_id == position.id)).all()}
    session.add_all(
        Collection(id_dominio=receipt.id_pa, iuv=receipt.iuv, transfer_index=t.id_transfer, receipt_pk=row.id,
                   position_id=position.id, item_id=items[t.id_transfer].id if t.id_transfer in items else None,
                   amount=t.amount, iban=t.iban, remittance=(t.remittance or "")[:140] or None,
                   transfer_category=t.category, paid_at=receipt.payment_at or now,
                   accounting_code=items[t.id_transfer].accounting_code if t.id_transfer in items else None)
        for t in receipt.own_transfers()
    )
    if status == "DUPLICATE":
        position.state = PositionState.ANOMALA
        position.anomaly = f"pagata due volte: ricevuta {receipt.receipt_id}"
        position.updated_at = now
        session.add(position)
        session.flush()
        return ReceiptOutcome(status, row.id, position.id)
    if primary:
        position.state = PositionState.ESEGUITA if receipt.amount >= position.amount else \
            PositionState.ESEGUITA_PARZIALE
        position.paid_at = receipt.payment_at or now
        position.updated_at = now
        session.add(position)
        paid_indexes = {t.id_transfer for t in receipt.transfers}
        for index, item in items.items():
            if index in paid_indexes:
                item.state = ItemState.ESEGUITO
                session.add(item)
        session.execute(update(PaymentAttempt).where(
            PaymentAttempt.position_id == position.id, PaymentAttempt.state == AttemptState.PENDING,
        ).values(state=AttemptState.COMPLETED, completed_at=now))
        _queue_notification(session, position=position, receipt_pk=row.id or 0, now=now)
    session.flush()
    return ReceiptOutcome(status, row.id, position.id)


def _queue_notification(session: Session, *, position: Position, receipt_pk: int, now: datetime) -> None:
    app = session.exec(select(Application).where(Application.id_a2a == position.id_a2a)).first()
    has_endpoint = app is not None and bool(app.notification_url)
    session.add(Notification(id_a2a=position.id_a2a, id_dominio=position.id_dominio, iuv=position.iuv or "",
                             receipt_pk=receipt_pk, next_attempt_at=now,
                             state=NotificationState.PENDING if has_endpoint else NotificationState.NO_ENDPOINT))
