"""What the reconciliation reports show, read with set-based queries: totals, money by day and state, labels.

Every figure is an aggregate computed by the database (GROUP BY), and only the first ``max_items`` items of a
list are loaded, with their related rows fetched in a few ``IN`` queries: the cost does not grow with the
number of collections of the EC beyond what the aggregates scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, or_, select
from sqlmodel import Session, col

from models.payments import Collection, CollectionState
from models.positions import Position, PositionItem
from models.reconciliation import Label, MatchSuggestion, Reconciliation, SuggestionState, TransferLabel
from models.registry import Creditor
from models.reporting import ReportingFlow, ReportingLine
from models.treasury import MovementMatch, TreasuryMovement
from models.types import utcnow
from rules.calendar import day_start

ROME = ZoneInfo("Europe/Rome")
ZERO = Decimal("0.00")

# Labels that need an operator (RT_IUF_TES and RT_TES are the good outcomes; RT_IUF alone is not a problem)
ANOMALY_LABELS: tuple[str, ...] = tuple(
    label.value
    for label in (
        Label.RT_NO_IUF,
        Label.IUV_NO_RT,
        Label.IUF_NO_TES,
        Label.IUF_TES_DIV_IMP,
        Label.TES_NO_IUF_OR_IUV,
        Label.TES_NO_MATCH,
        Label.DOPPI,
    )
)
UNEXPLAINED_LABELS = (Label.TES_NO_MATCH.value, Label.TES_NO_IUF_OR_IUV.value)
Period = Literal["day", "month"]




def _bucket(column: Any, starts: list[datetime]) -> Any:
    """The index of the [starts[i], starts[i+1]) interval a timestamp is in (portable: no time-zone SQL)."""
    return case(*[(column < starts[i + 1], i) for i in range(len(starts) - 1)], else_=None)


@dataclass(frozen=True)
class Amounts:
    """A count of items and their total."""

    count: int = 0
    total: Decimal = ZERO


@dataclass(frozen=True)
class DayMoney:
    """Money paid on one day, by where it stands now."""

    day: date
    cashed: Decimal
    reported: Decimal
    paid: Decimal


@dataclass(frozen=True)
class LabelItem:
    """One labelled subject (a collection, a reporting line, a flow or a movement) with what identifies it."""

    subject: str
    subject_id: int
    iuv: str | None
    iur: str | None
    transfer_index: int | None
    id_flusso: str | None
    movement_id: int | None
    amount: Decimal | None
    day: date | None
    debtor: str | None
    text: str | None
    reference: str | None


@dataclass(frozen=True)
class LabelGroup:
    """Every subject under one label: how many, how much, and the first items."""

    label: str
    count: int
    total: Decimal
    items: tuple[LabelItem, ...]


@dataclass(frozen=True)
class UnexplainedMovement:
    """Money on the account that reconciliation could not explain, and why."""

    movement_id: int
    value_date: date | None
    amount: Decimal
    remittance: str
    ordering_party: str | None
    reference: str | None
    match_state: str
    labels: tuple[str, ...]
    outcome_code: str | None
    outcome: str | None


@dataclass(frozen=True)
class OpenSuggestion:
    """A proposed movement ↔ flow match waiting for an operator."""

    suggestion_id: int
    score: float
    reasons: tuple[str, ...]
    movement_id: int
    value_date: date | None
    amount: Decimal
    remittance: str
    ordering_party: str | None
    id_flusso: str
    psp: str | None
    settlement_date: date | None


@dataclass(frozen=True)
class ReconciliationData:
    """Everything the daily reconciliation report of one EC shows (stocks are at ``generated_at``)."""

    id_dominio: str
    creditor_name: str
    report_date: date
    generated_at: datetime
    cashed_on_day: Amounts
    reported_not_cashed: Amounts
    paid_not_reported: Amounts
    unexplained: Amounts
    days: tuple[DayMoney, ...]
    label_counts: dict[str, int]
    anomalies: tuple[LabelGroup, ...]
    unexplained_items: tuple[UnexplainedMovement, ...]
    suggestions: tuple[OpenSuggestion, ...]
    open_suggestions: int
    max_items: int


def _amounts(session: Session, *conditions: Any) -> Amounts:
    count, total = session.execute(select(func.count(), func.sum(Collection.amount)).where(*conditions)).one()
    return Amounts(int(count), total or ZERO)


def _days(session: Session, *, id_dominio: str, report_date: date, window_days: int) -> tuple[DayMoney, ...]:
    days = [report_date - timedelta(days=window_days - 1 - i) for i in range(window_days)]
    starts = [day_start(d) for d in days] + [day_start(report_date + timedelta(days=1))]
    category = case(
        (Collection.state == CollectionState.INCASSATA, "cashed"),
        (col(Collection.flow_line_id).is_not(None), "reported"),
        else_="paid",
    )
    inner = (
        select(
            _bucket(Collection.paid_at, starts).label("bucket"),
            category.label("category"),
            Collection.amount.label("amount"),
        )
        .where(  # type: ignore[attr-defined]
            Collection.id_dominio == id_dominio,
            col(Collection.paid_at) >= starts[0],
            col(Collection.paid_at) < starts[-1],
        )
        .subquery()
    )
    sums: dict[tuple[int, str], Decimal] = {}
    for bucket, cat, total in session.execute(
        select(inner.c.bucket, inner.c.category, func.sum(inner.c.amount)).group_by(
            inner.c.bucket, inner.c.category
        )
    ):
        if bucket is not None:
            sums[(int(bucket), cat)] = total or ZERO
    return tuple(
        DayMoney(
            d, sums.get((i, "cashed"), ZERO), sums.get((i, "reported"), ZERO), sums.get((i, "paid"), ZERO)
        )
        for i, d in enumerate(days)
    )


def _label_items(session: Session, rows: list[TransferLabel]) -> tuple[LabelItem, ...]:
    """Labelled subjects with their debtor, text and date, loaded per subject kind in one query each."""
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        by_kind.setdefault(r.subject, []).append(int(r.subject_key))
    collections: dict[int, tuple[Collection, Position | None]] = {}
    if by_kind.get("collection"):
        for c, p in session.execute(
            select(Collection, Position)
            .outerjoin(Position, col(Position.id) == Collection.position_id)
            .where(col(Collection.id).in_(by_kind["collection"]))
        ):
            collections[c.id] = (c, p)
    lines: dict[int, tuple[ReportingLine, ReportingFlow, Position | None]] = {}
    if by_kind.get("line"):
        for ln, f, p in session.execute(
            select(ReportingLine, ReportingFlow, Position)
            .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
            .outerjoin(Position, col(Position.id) == ReportingLine.position_id)
            .where(col(ReportingLine.id).in_(by_kind["line"]))
        ):
            lines[ln.id] = (ln, f, p)
    flows = (
        {
            f.id: f
            for f in session.scalars(
                select(ReportingFlow).where(col(ReportingFlow.id).in_(by_kind.get("flow", [])))
            )
        }
        if by_kind.get("flow")
        else {}
    )
    movements = (
        {
            m.id: m
            for m in session.scalars(
                select(TreasuryMovement).where(col(TreasuryMovement.id).in_(by_kind.get("movement", [])))
            )
        }
        if by_kind.get("movement")
        else {}
    )
    out = []
    for r in rows:
        key = int(r.subject_key)
        day: date | None = None
        debtor = text = reference = None
        if r.subject == "collection" and key in collections:
            c, p = collections[key]
            day = c.paid_at.astimezone(ROME).date() if c.paid_at else None
            debtor, text = (p.debtor_name, p.causale) if p else (None, c.remittance)
            reference = p.nav if p else None
        elif r.subject == "line" and key in lines:
            ln, f, p = lines[key]
            day, text = ln.pay_date, f.psp_name or f.psp_id
            debtor, reference = (p.debtor_name, p.nav) if p else (None, None)
        elif r.subject == "flow" and key in flows:
            f = flows[key]
            day, text, reference = f.settlement_date, f.psp_name or f.psp_id, f.settlement_ref
        elif r.subject == "movement" and key in movements:
            m = movements[key]
            day, text, debtor, reference = m.value_date, m.remittance, m.ordering_party, m.bank_reference
        out.append(
            LabelItem(
                subject=r.subject,
                subject_id=key,
                iuv=r.iuv,
                iur=r.iur,
                transfer_index=r.transfer_index,
                id_flusso=r.id_flusso,
                movement_id=r.movement_id,
                amount=r.amount,
                day=day,
                debtor=debtor,
                text=text,
                reference=reference,
            )
        )
    return tuple(out)


def _anomalies(
    session: Session, *, id_dominio: str, max_items: int
) -> tuple[dict[str, int], tuple[LabelGroup, ...]]:
    stats = {
        label: (int(n), total or ZERO)
        for label, n, total in session.execute(
            select(TransferLabel.label, func.count(), func.sum(TransferLabel.amount))
            .where(TransferLabel.id_dominio == id_dominio)
            .group_by(TransferLabel.label)
        )
    }
    groups = []
    for label in ANOMALY_LABELS:
        if label not in stats:
            continue
        rows = list(
            session.scalars(
                select(TransferLabel)
                .where(TransferLabel.id_dominio == id_dominio, TransferLabel.label == label)
                .order_by(col(TransferLabel.subject), col(TransferLabel.subject_key))
                .limit(max_items)
            )
        )
        count, total = stats[label]
        groups.append(LabelGroup(label=label, count=count, total=total, items=_label_items(session, rows)))
    return {label: n for label, (n, _) in stats.items()}, tuple(groups)


def _unexplained(
    session: Session, *, id_dominio: str, max_items: int
) -> tuple[Amounts, tuple[UnexplainedMovement, ...]]:
    labelled = select(TransferLabel.movement_id).where(
        TransferLabel.id_dominio == id_dominio,
        TransferLabel.subject == "movement",
        col(TransferLabel.label).in_(UNEXPLAINED_LABELS),
    )
    cond = and_(
        TreasuryMovement.id_dominio == id_dominio,
        TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
        or_(
            col(TreasuryMovement.match_state).in_([MovementMatch.UNMATCHED, MovementMatch.PARTIAL]),
            col(TreasuryMovement.id).in_(labelled),
        ),
    )
    count, total = session.execute(select(func.count(), func.sum(TreasuryMovement.amount)).where(cond)).one()
    movements = list(
        session.scalars(
            select(TreasuryMovement)
            .where(cond)
            .order_by(col(TreasuryMovement.value_date), col(TreasuryMovement.id))
            .limit(max_items)
        )
    )
    ids = [m.id for m in movements]
    labels: dict[int, list[str]] = {}
    outcomes: dict[int, tuple[str | None, str | None]] = {}
    if ids:
        for movement_id, label in session.execute(
            select(TransferLabel.movement_id, TransferLabel.label).where(
                TransferLabel.id_dominio == id_dominio,
                col(TransferLabel.movement_id).in_(ids),
                col(TransferLabel.label).in_(UNEXPLAINED_LABELS),
            )
        ):
            labels.setdefault(movement_id, []).append(label)
        for movement_id, code, description in session.execute(
            select(Reconciliation.movement_id, Reconciliation.outcome_code, Reconciliation.description).where(
                col(Reconciliation.movement_id).in_(ids)
            )
        ):
            outcomes[movement_id] = (code, description)
    items = tuple(
        UnexplainedMovement(
            movement_id=m.id or 0,
            value_date=m.value_date,
            amount=m.amount,
            remittance=m.remittance,
            ordering_party=m.ordering_party,
            reference=m.reference,
            match_state=m.match_state,
            labels=tuple(sorted(labels.get(m.id or 0, []))),
            outcome_code=outcomes.get(m.id or 0, (None, None))[0],
            outcome=outcomes.get(m.id or 0, (None, None))[1],
        )
        for m in movements
    )
    return Amounts(int(count), total or ZERO), items


def _suggestions(
    session: Session, *, id_dominio: str, max_items: int
) -> tuple[int, tuple[OpenSuggestion, ...]]:
    cond = and_(MatchSuggestion.state == SuggestionState.PROPOSED, TreasuryMovement.id_dominio == id_dominio)
    base = (
        select(MatchSuggestion, TreasuryMovement, ReportingFlow)
        .join(TreasuryMovement, col(TreasuryMovement.id) == MatchSuggestion.movement_id)
        .join(ReportingFlow, col(ReportingFlow.id) == MatchSuggestion.flow_id)
        .where(cond)
    )
    count = session.execute(
        select(func.count())
        .select_from(MatchSuggestion)
        .join(TreasuryMovement, col(TreasuryMovement.id) == MatchSuggestion.movement_id)
        .where(cond)
    ).scalar_one()
    rows = session.execute(
        base.order_by(col(MatchSuggestion.score).desc(), col(MatchSuggestion.id)).limit(max_items)
    ).all()
    return int(count), tuple(
        OpenSuggestion(
            suggestion_id=s.id or 0,
            score=s.score,
            reasons=tuple(s.reasons or ()),
            movement_id=m.id or 0,
            value_date=m.value_date,
            amount=m.amount,
            remittance=m.remittance,
            ordering_party=m.ordering_party,
            id_flusso=f.id_flusso,
            psp=f.psp_name or f.psp_id,
            settlement_date=f.settlement_date,
        )
        for s, m, f in rows
    )


def reconciliation_data(
    session: Session,
    *,
    id_dominio: str,
    report_date: date,
    window_days: int = 14,
    max_items: int = 500,
    now: datetime | None = None,
) -> ReconciliationData:
    """The daily reconciliation report's figures for one EC and day (anomalies as they stand now)."""
    creditor = session.execute(
        select(Creditor.name).where(Creditor.id_dominio == id_dominio)
    ).scalar_one_or_none()
    if creditor is None:
        raise LookupError(f"unknown EC {id_dominio}")
    ec = Collection.id_dominio == id_dominio
    riscossa = Collection.state == CollectionState.RISCOSSA
    label_counts, anomalies = _anomalies(session, id_dominio=id_dominio, max_items=max_items)
    unexplained, unexplained_items = _unexplained(session, id_dominio=id_dominio, max_items=max_items)
    open_count, suggestions = _suggestions(session, id_dominio=id_dominio, max_items=max_items)
    return ReconciliationData(
        id_dominio=id_dominio,
        creditor_name=creditor,
        report_date=report_date,
        generated_at=now or utcnow(),
        cashed_on_day=_amounts(
            session,
            ec,
            Collection.state == CollectionState.INCASSATA,
            col(Collection.cashed_at) >= day_start(report_date),
            col(Collection.cashed_at) < day_start(report_date + timedelta(days=1)),
        ),
        reported_not_cashed=_amounts(session, ec, riscossa, col(Collection.flow_line_id).is_not(None)),
        paid_not_reported=_amounts(
            session,
            ec,
            riscossa,
            col(Collection.flow_line_id).is_(None),
            col(Collection.receipt_pk).is_not(None),
        ),
        unexplained=unexplained,
        days=_days(session, id_dominio=id_dominio, report_date=report_date, window_days=window_days),
        label_counts=label_counts,
        anomalies=anomalies,
        unexplained_items=unexplained_items,
        suggestions=suggestions,
        open_suggestions=open_count,
        max_items=max_items,
    )


@dataclass(frozen=True)
class ProspettoRow:
    """Collections of one period under one revenue/accounting code."""

    period_start: date
    revenue_code: str
    accounting_type: str
    accounting_code: str
    count: int
    amount: Decimal
    cashed: Decimal


@dataclass(frozen=True)
class ProspettoData:
    """The prospetto riscossioni: collections by accounting code and period, paid between two days."""

    id_dominio: str
    creditor_name: str
    start: date
    end: date
    period: str
    rows: tuple[ProspettoRow, ...]
    generated_at: datetime


MAX_PERIODS = 400


def period_starts(*, start: date, end: date, period: Period) -> list[date]:
    """The first day of every day or month from ``start`` to ``end`` (inclusive), then the next one."""
    out: list[date] = []
    current = start if period == "day" else start.replace(day=1)
    while current <= end:
        out.append(current)
        current = (
            current + timedelta(days=1)
            if period == "day"
            else (current.replace(day=28) + timedelta(days=4)).replace(day=1)
        )
    out.append(current)
    if len(out) - 1 > MAX_PERIODS:
        raise ValueError(f"at most {MAX_PERIODS} periods: choose a shorter range or a monthly prospetto")
    return out


def collections_summary(
    session: Session,
    *,
    id_dominio: str,
    start: date,
    end: date,
    period: Period = "day",
    now: datetime | None = None,
) -> ProspettoData:
    """Collections paid between two days by period and revenue/accounting code, and the cashed part."""
    # the accounting code is the collection's, else its voce's
    creditor = session.execute(
        select(Creditor.name).where(Creditor.id_dominio == id_dominio)
    ).scalar_one_or_none()
    if creditor is None:
        raise LookupError(f"unknown EC {id_dominio}")
    if end < start:
        raise ValueError("end is before start")
    days = period_starts(start=start, end=end, period=period)
    starts = [day_start(d) for d in days]
    # the first bucket may begin before ``start`` (monthly): count only what was paid in the asked range
    lower, upper = day_start(start), day_start(end + timedelta(days=1))
    inner = (
        select(
            _bucket(Collection.paid_at, starts).label("bucket"),
            func.coalesce(PositionItem.revenue_code, "").label("revenue"),
            func.coalesce(PositionItem.accounting_type, "").label("atype"),
            func.coalesce(Collection.accounting_code, PositionItem.accounting_code, "").label("acode"),
            Collection.amount.label("amount"),  # type: ignore[attr-defined]
            case((Collection.state == CollectionState.INCASSATA, Collection.amount), else_=None).label(
                "cashed"
            ),
        )
        .select_from(Collection)
        .outerjoin(PositionItem, col(PositionItem.id) == Collection.item_id)
        .where(
            Collection.id_dominio == id_dominio,
            col(Collection.paid_at) >= lower,
            col(Collection.paid_at) < upper,
        )
        .subquery()
    )
    rows = session.execute(
        select(
            inner.c.bucket,
            inner.c.revenue,
            inner.c.atype,
            inner.c.acode,
            func.count(),
            func.sum(inner.c.amount),
            func.sum(inner.c.cashed),
        )
        .group_by(inner.c.bucket, inner.c.revenue, inner.c.atype, inner.c.acode)
        .order_by(inner.c.bucket, inner.c.revenue, inner.c.atype, inner.c.acode)
    ).all()
    out = []
    for bucket, revenue, atype, acode, count, amount, cashed in rows:
        if bucket is None:
            continue
        out.append(
            ProspettoRow(
                period_start=days[int(bucket)],
                revenue_code=revenue,
                accounting_type=atype,
                accounting_code=acode,
                count=int(count),
                amount=amount or ZERO,
                cashed=cashed or ZERO,
            )
        )
    return ProspettoData(
        id_dominio=id_dominio,
        creditor_name=creditor,
        start=start,
        end=end,
        period=period,
        rows=tuple(out),
        generated_at=now or utcnow(),
    )
