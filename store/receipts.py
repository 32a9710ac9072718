"""Receipts to recover from pagoPA: what is missing, applying a pulled receipt, and the per-item backoff.

Two kinds of work, each a query (so a re-run or a second worker finds the same work):

* **LINE** — reporting lines in state ``NO_RECEIPT`` (a PSP reported a payment of a known position whose
  receipt never reached us), of a current flow revision, with outcome EXECUTED (0) or STAND_IN (4) — the
  outcomes that come with a receipt. Asked from Biz-Events by (EC of the flow, IUR, IUV), then from GPD
  receipts by IUV. Lines sharing the key (one per transfer) make one item. Until ``reporting_line`` has
  recovery columns, the only memo is the run itself: each key is asked at most once per run.
* **ATTEMPT** — payment attempts that EXPIRED (30 minutes without a receipt) on a position still unpaid.
  pagoPA holding a receipt for the IUV is what "paid according to pagoPA" means here: GPD receipts is asked
  by (EC, IUV) and answers the receipt, or 404 when the debtor never completed the payment. Attempts of the
  same IUV make one item. Per-attempt state lives on ``payment_attempt``: ``recovery_attempts``,
  ``next_recovery_at`` (NULL with ``recovery_attempts > 0`` means "stop asking": recovered, or 404),
  ``last_error``; other failures back off attempts² minutes, at most 24 h.

A recovered receipt goes through :func:`store.payments.accept_receipt` with ``source=PULL``, exactly like a
pushed one (idempotent by receiptId: two runs racing store it once), then the lines are linked to its
collections and the attempts closed.

Two runs at once (two workers, or the daily cycle beside the scheduled ``receipts``) plan the same items; each
item is claimed before pagoPA is asked (``claim_item``: ``recovery_claimed_until`` on its lines or attempts,
set in one short transaction), so only one run asks and applies it; the other skips it. An item is claimed
whole or not at all: the claim first takes a lock named after the item (``store.claims.try_serialize``: a
PostgreSQL advisory lock on its kind and first row), and a run that does not get it at once skips the item.
Row locks with ``SKIP LOCKED`` could split a two-line item between two runs, each asking pagoPA for the same
receipt. The claim re-checks that the rows still wait (a line still NO_RECEIPT, an attempt still EXPIRED and
due), so an item recovered by one run (or an attempt it backed off) is not asked again by a run that planned
it earlier.
The claim is released with the outcome (``release_item``), or runs out after its lease if the worker dies.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from models.payments import AttemptState, Collection, PaymentAttempt, ReceiptSource
from models.positions import Position
from models.reporting import FlowState, LineState, ReportingFlow, ReportingLine
from rules.backoff import squared_backoff
from rules.positions import PAID_STATES
from rules.receipts import ReceiptIn
from rules.reporting import Candidate, FlowLine, decide_line
from store.claims import try_serialize
from store.payments import ReceiptOutcome, accept_receipt

RECEIPT_OUTCOMES = (0, 4)  # FdR payStatus EXECUTED and STAND_IN: a receipt exists; 8/9 are paid without one
_ERROR_LIMIT = 500


class RecoveryKind(StrEnum):
    """Why a receipt is missing."""

    LINE = "LINE"
    ATTEMPT = "ATTEMPT"



class RecoveryItem(BaseModel):
    """One receipt to ask pagoPA for, and the rows (lines or attempts) waiting on it."""

    model_config = ConfigDict(frozen=True)

    kind: RecoveryKind
    id_dominio: str
    iuv: str
    iur: str | None = None
    ids: tuple[int, ...]

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        """What identifies the question asked to pagoPA (the in-run memo)."""
        return (self.kind, self.id_dominio, self.iuv, self.iur)


def due_lines(
    session: Session, *, limit: int, skip: Iterable[tuple[str, str, str | None]] = ()
) -> list[RecoveryItem]:
    """Items for NO_RECEIPT lines of current flows with a receipt-bearing outcome, oldest line first."""
    if limit <= 0:
        return []
    skipped = set(skip)
    rows = session.exec(
        select(ReportingLine.id, ReportingFlow.id_dominio, ReportingLine.iuv, ReportingLine.iur)
        .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
        .where(
            ReportingLine.state == LineState.NO_RECEIPT,
            ReportingFlow.state != FlowState.OBSOLETA,
            col(ReportingLine.outcome).in_(RECEIPT_OUTCOMES),
        )
        .order_by(col(ReportingLine.id))
    ).all()
    grouped: dict[tuple[str, str, str], list[int]] = {}
    for line_id, id_dominio, iuv, iur in rows:
        key = (id_dominio, iuv, iur)
        if key in skipped:
            continue
        if key not in grouped and len(grouped) >= limit:
            continue
        grouped.setdefault(key, []).append(line_id or 0)
    return [
        RecoveryItem(kind=RecoveryKind.LINE, id_dominio=d, iuv=v, iur=r, ids=tuple(ids))
        for (d, v, r), ids in grouped.items()
    ]


def due_attempts(session: Session, *, now: datetime, limit: int) -> list[RecoveryItem]:
    """Items for EXPIRED attempts on unpaid positions that are due to be asked about, oldest expiry first."""
    if limit <= 0:
        return []
    rows = session.exec(
        select(PaymentAttempt.id, PaymentAttempt.id_dominio, PaymentAttempt.iuv)
        .join(Position, col(Position.id) == PaymentAttempt.position_id)
        .where(
            PaymentAttempt.state == AttemptState.EXPIRED,
            col(Position.state).not_in(PAID_STATES),
            or_(
                and_(
                    col(PaymentAttempt.recovery_attempts) == 0, col(PaymentAttempt.next_recovery_at).is_(None)
                ),
                col(PaymentAttempt.next_recovery_at) <= now,
            ),
        )
        .order_by(col(PaymentAttempt.expires_at), col(PaymentAttempt.id))
    ).all()
    grouped: dict[tuple[str, str], list[int]] = {}
    for attempt_id, id_dominio, iuv in rows:
        key = (id_dominio, iuv)
        if key not in grouped and len(grouped) >= limit:
            continue
        grouped.setdefault(key, []).append(attempt_id or 0)
    return [
        RecoveryItem(kind=RecoveryKind.ATTEMPT, id_dominio=d, iuv=v, ids=tuple(ids))
        for (d, v), ids in grouped.items()
    ]


def due_recoveries(session: Session, *, now: datetime, limit: int) -> list[RecoveryItem]:
    """Everything to ask pagoPA about now, reporting lines first (their money is already on its way)."""
    lines = due_lines(session, limit=limit)
    # a line of the same notice asks the better question (with its IUR); its receipt pays the position
    asked = {(item.id_dominio, item.iuv) for item in lines}
    attempts = [
        a
        for a in due_attempts(session, now=now, limit=limit - len(lines))
        if (a.id_dominio, a.iuv) not in asked
    ]
    return lines + attempts


def _free(column: Any, now: datetime) -> Any:
    return or_(column.is_(None), column < now)


def claim_item(
    session: Session, *, item: RecoveryItem, now: datetime, until: datetime
) -> RecoveryItem | None:
    """Claim the item's rows still waiting for a receipt until ``until``; None if another run holds them all.

    The item that comes back names only the rows claimed. The caller commits at once, so other runs see it.
    """
    if item.kind == RecoveryKind.LINE:
        model: Any = ReportingLine
        waiting: list[Any] = [ReportingLine.state == LineState.NO_RECEIPT]
    else:
        model = PaymentAttempt
        waiting = [
            PaymentAttempt.state == AttemptState.EXPIRED,
            or_(
                and_(
                    col(PaymentAttempt.recovery_attempts) == 0, col(PaymentAttempt.next_recovery_at).is_(None)
                ),
                col(PaymentAttempt.next_recovery_at) <= now,
            ),
        ]
    claim_column = model.__table__.c.recovery_claimed_until
    free = _free(claim_column, now)
    # whole items only: the run that holds the item's lock claims all of its rows; the others skip it
    if item.ids and not try_serialize(session, name=f"receipt-recovery:{item.kind}:{min(item.ids)}"):
        return None
    claimed = session.execute(
        update(model)
        .where(col(model.id).in_(item.ids), *waiting, free)
        .values(recovery_claimed_until=until)
        .returning(col(model.id))
        .execution_options(synchronize_session=False)
    ).all()
    ids = tuple(sorted(int(row[0]) for row in claimed))
    return item.model_copy(update={"ids": ids}) if ids else None


def release_item(session: Session, *, item: RecoveryItem) -> None:
    """Give back the claim on the item's rows (in the transaction that records its outcome)."""
    model: Any = ReportingLine if item.kind == RecoveryKind.LINE else PaymentAttempt
    session.execute(
        update(model)
        .where(col(model.id).in_(item.ids))
        .values(recovery_claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def apply_recovered(
    session: Session, *, item: RecoveryItem, receipt: ReceiptIn, now: datetime, link_known: bool = True
) -> ReceiptOutcome:
    """Process a pulled receipt like a pushed one, then link the item's lines or close its attempts.

    ``link_known`` False is for a receipt found by IUV only (GPD receipts gives the first receipt of the IUV):
    one we already had is not the line's missing receipt, so the line is linked only to a new one.
    """
    outcome = accept_receipt(session, receipt=receipt, source=ReceiptSource.PULL, now=now)
    if item.kind == RecoveryKind.LINE:
        linkable = ("ACCEPTED", "ALREADY", "DUPLICATE") if link_known else ("ACCEPTED", "DUPLICATE")
        if outcome.receipt_pk is not None and outcome.status in linkable:
            link_lines(session, line_ids=item.ids, receipt_pk=outcome.receipt_pk)
    elif outcome.status in ("ACCEPTED", "ALREADY") and outcome.position_id is not None:
        session.execute(
            update(PaymentAttempt)
            .where(col(PaymentAttempt.id).in_(item.ids))
            .values(
                state=AttemptState.COMPLETED,
                completed_at=now,
                recovery_attempts=PaymentAttempt.recovery_attempts + 1,
                next_recovery_at=None,
                last_error=None,
            )
        )
    else:
        record_attempts_failure(
            session,
            attempt_ids=item.ids,
            now=now,
            stop=True,
            error=f"receipt {receipt.receipt_id} not applicable: {outcome.status}",
        )
    session.flush()
    return outcome


def link_lines(session: Session, *, line_ids: Iterable[int], receipt_pk: int) -> int:
    """Link reporting lines still NO_RECEIPT to the collections of a recovered receipt; returns those changed.

    The decision is the reporting stage's own (:func:`rules.reporting.decide_line`, with this receipt's
    collections of the line's transfer index as candidates): an amount that differs makes the line ANOMALA
    (GovPay 007104); a line with no matching transfer stays NO_RECEIPT.
    """
    collections = list(session.exec(select(Collection).where(Collection.receipt_pk == receipt_pk)).all())
    stmt = (
        select(ReportingLine, ReportingFlow.psp_id)
        .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
        .where(col(ReportingLine.id).in_(list(line_ids)), ReportingLine.state == LineState.NO_RECEIPT)
    )
    if session.get_bind().dialect.name == "postgresql":
        # a line linked meanwhile (by a run whose claim ran out) is re-read once that run commits, and skipped
        stmt = stmt.with_for_update(of=ReportingLine)  # type: ignore[arg-type]
    rows = session.exec(stmt).all()
    changed = 0
    for line, psp_id in rows:
        options = [c for c in collections if c.transfer_index == line.transfer_index]
        candidates = [
            Candidate(
                id=c.id or 0,
                iur=c.iur,
                amount=c.amount,
                position_id=c.position_id,
                linked=c.flow_line_id is not None,
            )
            for c in options
        ]
        decision = decide_line(
            FlowLine(
                index=line.line_index,
                iuv=line.iuv,
                iur=line.iur,
                transfer_index=line.transfer_index,
                amount=line.amount,
                outcome=line.outcome,
                outcome_raw=str(line.outcome),
                pay_date=line.pay_date,
            ),
            candidates=candidates,
            position_id=line.position_id,
            in_space=True,
            psp_id=psp_id,
        )
        if decision.state == LineState.NO_RECEIPT:
            continue
        if decision.claim:
            chosen = next(c for c in options if c.id == decision.collection_id)
            chosen.iur, chosen.flow_line_id = line.iur, line.id
            session.add(chosen)
        line.state = decision.state
        line.collection_id = decision.collection_id
        line.position_id = decision.position_id or line.position_id
        if decision.anomalies:
            line.anomalies = [*(line.anomalies or []), *(a.as_json() for a in decision.anomalies)]
        session.add(line)
        changed += 1
    session.flush()
    return changed


def record_attempts_failure(
    session: Session, *, attempt_ids: Iterable[int], now: datetime, stop: bool, error: str
) -> None:
    """Count one more recovery try on the attempts: ``stop`` ends the asking, otherwise attempts² minutes."""
    for attempt in session.exec(
        select(PaymentAttempt).where(col(PaymentAttempt.id).in_(list(attempt_ids)))
    ).all():
        attempt.recovery_attempts += 1
        attempt.next_recovery_at = None if stop else now + squared_backoff(attempts=attempt.recovery_attempts)
        attempt.last_error = error[:_ERROR_LIMIT]
        session.add(attempt)
    session.flush()
