"""Reconciliation over the database, set-based: cash flows and IUVs named by treasury money, recompute labels.

Every run recomputes an EC's state from its inputs (movements, flows, receipts), so a late flow, a second
transfer or a reversal changes the outcome on the next run without special cases, and a run with no new input
changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import and_, cast, delete, exists, func, insert, literal, not_, or_, select, update
from sqlalchemy import String as SqlString
from sqlmodel import Session, col

from models.payments import Collection, CollectionState
from models.positions import Position, PositionState
from models.reconciliation import (
    Label,
    MatchSuggestion,
    Reconciliation,
    ReconciliationState,
    SuggestionState,
    TransferLabel,
)
from models.reporting import FlowState, LineState, ReportingFlow, ReportingLine
from models.treasury import MovementMatch, TreasuryMovement
from models.types import utcnow
from rules.reconciliation import Candidate, Decision, FlowFacts, decide_flow, decide_single, suggestion_score
from store.common import insert_ignore


@dataclass
class ReconcileSummary:
    """What one run found for one EC."""

    id_dominio: str
    flows_cashed: int = 0
    flows_waiting: int = 0
    flows_in_error: int = 0
    singles_cashed: int = 0
    collections_cashed: int = 0
    collections_uncashed: int = 0
    without_receipt: int = 0
    suggestions: int = 0
    labels: dict[str, int] = field(default_factory=dict)


def _latest_flows(session: Session, id_dominio: str) -> dict[str, FlowFacts]:
    rows = session.execute(
        select(ReportingFlow.id, ReportingFlow.id_flusso, ReportingFlow.id_flusso_lower, ReportingFlow.state,
               ReportingFlow.total_amount, ReportingFlow.revision)
        .where(ReportingFlow.id_dominio == id_dominio, ReportingFlow.state != FlowState.OBSOLETA)
    ).all()
    best: dict[str, tuple[int, FlowFacts]] = {}
    for flow_id, id_flusso, lower, state, total, revision in rows:
        if lower not in best or revision > best[lower][0]:
            best[lower] = (revision, FlowFacts(flow_id, id_flusso, state, total))
    return {k: v[1] for k, v in best.items()}


def _record(session: Session, *, id_dominio: str, movement_ids: list[int], flow: FlowFacts | None,
            decision: Decision, amount: Decimal, iuv: str | None, now: datetime) -> None:
    """One riconciliazione per movement: its outcome, upserted (a re-run rewrites the same row)."""
    state = {"MATCH": ReconciliationState.ACQUISITO, "WAIT": ReconciliationState.IN_ELABORAZIONE,
             "ERROR": ReconciliationState.ERRORE}[decision.outcome]
    existing = {r.movement_id: r for r in session.scalars(
        select(Reconciliation).where(col(Reconciliation.movement_id).in_(movement_ids)))}
    for movement_id in movement_ids:
        row = existing.get(movement_id) or Reconciliation(id_dominio=id_dominio, external_id=f"TES-{movement_id}",
                                                          movement_id=movement_id, amount=amount, created_at=now)
        changed = (row.state, row.outcome_code, row.flow_id) != (state, decision.code, flow.flow_id if flow else None)
        row.state, row.outcome_code, row.description = state, decision.code, decision.description[:500]
        row.flow_id, row.id_flusso, row.iuv = (flow.flow_id if flow else None), (flow.id_flusso if flow else None), iuv
        if changed or row.id is None:
            row.processed_at = now
            session.add(row)


def reconcile_ec(session: Session, *, id_dominio: str, now: datetime | None = None) -> ReconcileSummary:
    """Recompute cashing, positions and labels of one EC from everything known; idempotent."""
    now = now or utcnow()
    summary = ReconcileSummary(id_dominio)
    flows = _latest_flows(session, id_dominio)
    flow_refs = session.execute(
        select(TreasuryMovement.reference_lower, func.sum(TreasuryMovement.amount), func.array_agg(TreasuryMovement.id)
               if session.get_bind().dialect.name == "postgresql" else func.group_concat(TreasuryMovement.id))
        .where(TreasuryMovement.id_dominio == id_dominio, TreasuryMovement.reference_kind == "flow",
               TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA)
        .group_by(TreasuryMovement.reference_lower)
    ).all()
    matched_flows: set[int] = set()
    movement_state: dict[int, str] = {}
    flow_labels: list[tuple[int, str]] = []
    for ref, money, ids in flow_refs:
        movement_ids = [int(i) for i in (ids if isinstance(ids, list) else str(ids).split(","))]
        flow = flows.get(ref or "")
        decision = decide_flow(money=money or Decimal("0.00"), flow=flow)
        _record(session, id_dominio=id_dominio, movement_ids=movement_ids, flow=flow, decision=decision,
                amount=money, iuv=None, now=now)
        if decision.outcome == "MATCH":
            assert flow is not None
            matched_flows.add(flow.flow_id)
            summary.flows_cashed += 1
        elif decision.outcome == "WAIT":
            summary.flows_waiting += 1
        else:
            summary.flows_in_error += 1
        for m in movement_ids:
            movement_state[m] = MovementMatch.MATCHED if decision.outcome == "MATCH" else (
                MovementMatch.PARTIAL if decision.outcome == "WAIT" and flow is not None and money
                else MovementMatch.UNMATCHED)
        if flow is not None and decision.label == "IUF_TES_DIV_IMP":
            flow_labels.append((flow.flow_id, Label.IUF_TES_DIV_IMP))
    _apply_flows(session, id_dominio=id_dominio, matched=matched_flows, now=now, summary=summary)
    _apply_singles(session, id_dominio=id_dominio, now=now, summary=summary, movement_state=movement_state)
    _apply_positions(session, id_dominio=id_dominio, now=now)
    for state in (MovementMatch.MATCHED, MovementMatch.PARTIAL, MovementMatch.UNMATCHED):
        ids = [m for m, s in movement_state.items() if s == state]
        for start in range(0, len(ids), 5000):
            session.execute(update(TreasuryMovement).where(col(TreasuryMovement.id).in_(ids[start:start + 5000]),
                                                           TreasuryMovement.match_state != state)
                            .values(match_state=state))
    summary.suggestions = _suggest(session, id_dominio=id_dominio, now=now)
    summary.labels = _relabel(session, id_dominio=id_dominio, now=now, flow_labels=flow_labels)
    session.flush()
    return summary


def _apply_flows(session: Session, *, id_dominio: str, matched: set[int], now: datetime,
                 summary: ReconcileSummary) -> None:
    flow_ids = list(matched)
    session.execute(update(ReportingFlow).where(ReportingFlow.id_dominio == id_dominio,
                                                col(ReportingFlow.id).in_(flow_ids), not_(ReportingFlow.reconciled))
                    .values(reconciled=True))
    session.execute(update(ReportingFlow).where(ReportingFlow.id_dominio == id_dominio,
                                                col(ReportingFlow.id).not_in(flow_ids), ReportingFlow.reconciled)
                    .values(reconciled=False))
    cashed_lines = select(ReportingLine.id).join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id).where(
        ReportingFlow.id_dominio == id_dominio, ReportingFlow.reconciled)
    # lines paid without a receipt (outcome 8/9, or a known debt whose receipt never came) become collections
    orphan = (
        select(ReportingLine.iuv, ReportingLine.iur, ReportingLine.transfer_index, ReportingLine.amount,
               ReportingLine.id, ReportingLine.position_id)
        .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
        .where(ReportingFlow.id_dominio == id_dominio, ReportingFlow.reconciled,
               col(ReportingLine.collection_id).is_(None), col(ReportingLine.outcome).in_([8, 9]),
               ReportingLine.state != LineState.ALTRO_INTERMEDIARIO)
    )
    rows = [{"id_dominio": id_dominio, "iuv": iuv, "iur": iur, "transfer_index": idx, "amount": amount,
             "flow_line_id": line_id, "position_id": position_id, "without_receipt": True,
             "state": CollectionState.RISCOSSA, "paid_at": now}
            for iuv, iur, idx, amount, line_id, position_id in session.execute(orphan).all()]
    for start in range(0, len(rows), 1000):
        summary.without_receipt += insert_ignore(session, model=Collection, rows=rows[start:start + 1000],
                                                 keys=("id_dominio", "iuv", "iur", "transfer_index"))
    if rows:
        session.execute(update(ReportingLine).where(col(ReportingLine.id).in_([r["flow_line_id"] for r in rows]))
                        .values(collection_id=select(Collection.id).where(
                            Collection.flow_line_id == ReportingLine.id).scalar_subquery()))
    first_movement = (select(func.min(Reconciliation.movement_id))
                      .where(Reconciliation.flow_id == ReportingLine.flow_id,
                             Reconciliation.state == ReconciliationState.ACQUISITO)
                      .correlate(ReportingLine).scalar_subquery())
    cash = (update(Collection)
            .where(Collection.id_dominio == id_dominio, Collection.state == CollectionState.RISCOSSA,
                   col(Collection.flow_line_id).in_(cashed_lines))
            .values(state=CollectionState.INCASSATA, cashed_at=now,
                    movement_id=select(first_movement).where(ReportingLine.id == Collection.flow_line_id)
                    .scalar_subquery()))
    summary.collections_cashed = int(session.execute(cash).rowcount or 0)
    uncash = (update(Collection)
              .where(Collection.id_dominio == id_dominio, Collection.state == CollectionState.INCASSATA,
                     col(Collection.flow_line_id).is_not(None), col(Collection.flow_line_id).not_in(cashed_lines))
              .values(state=CollectionState.RISCOSSA, cashed_at=None, movement_id=None))
    summary.collections_uncashed = int(session.execute(uncash).rowcount or 0)


def _apply_singles(session: Session, *, id_dominio: str, now: datetime, summary: ReconcileSummary,
                   movement_state: dict[int, str]) -> None:
    singles = session.execute(
        select(TreasuryMovement.id, TreasuryMovement.reference_lower, TreasuryMovement.amount)
        .where(TreasuryMovement.id_dominio == id_dominio, TreasuryMovement.reference_kind == "iuv",
               TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA)
    ).all()
    if not singles:
        return
    paid: dict[str, tuple[Decimal, list[int]]] = {}
    refs = list({s[1] for s in singles})
    for start in range(0, len(refs), 2000):
        for iuv, amount, cid in session.execute(
                select(func.lower(Collection.iuv), Collection.amount, Collection.id)
                .where(Collection.id_dominio == id_dominio, func.lower(Collection.iuv).in_(refs[start:start + 2000]),
                       col(Collection.receipt_pk).is_not(None))):
            total, ids = paid.get(iuv, (Decimal("0.00"), []))
            paid[iuv] = (total + amount, [*ids, cid])
    for movement_id, ref, amount in singles:
        total, ids = paid.get(ref or "", (None, []))
        decision = decide_single(money=amount, paid=total)
        _record(session, id_dominio=id_dominio, movement_ids=[movement_id], flow=None, decision=decision,
                amount=amount, iuv=ref, now=now)
        movement_state[movement_id] = MovementMatch.MATCHED if decision.outcome == "MATCH" else MovementMatch.UNMATCHED
        if decision.outcome == "MATCH":
            summary.singles_cashed += 1
            session.execute(update(Collection).where(col(Collection.id).in_(ids),
                                                     Collection.state == CollectionState.RISCOSSA)
                            .values(state=CollectionState.INCASSATA, cashed_at=now, movement_id=movement_id))


def _apply_positions(session: Session, *, id_dominio: str, now: datetime) -> None:
    has_collection = exists().where(Collection.position_id == Position.id, Collection.id_dominio == id_dominio)
    uncashed = exists().where(Collection.position_id == Position.id, Collection.id_dominio == id_dominio,
                              Collection.state != CollectionState.INCASSATA)
    session.execute(update(Position).where(
        Position.id_dominio == id_dominio,
        col(Position.state).in_([PositionState.ESEGUITA, PositionState.NON_ESEGUITA]),
        has_collection, not_(uncashed),
    ).values(state=PositionState.INCASSATA, cashed_at=now,
             paid_without_receipt=Position.state == PositionState.NON_ESEGUITA))
    session.execute(update(Position).where(
        Position.id_dominio == id_dominio, Position.state == PositionState.INCASSATA, uncashed,
    ).values(state=PositionState.ESEGUITA, cashed_at=None))


def _suggest(session: Session, *, id_dominio: str, now: datetime) -> int:
    """Propose flows for credits without a usable remittance (an operator confirms or rejects)."""
    known_flow = exists().where(ReportingFlow.id_dominio == id_dominio, ReportingFlow.state != FlowState.OBSOLETA,
                                ReportingFlow.id_flusso_lower == TreasuryMovement.reference_lower)
    # credits with no usable remittance, or naming a flow id we do not have (often a cut or mangled id)
    loose = session.execute(
        select(TreasuryMovement).where(
            TreasuryMovement.id_dominio == id_dominio, TreasuryMovement.amount > 0,
            TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
            or_(col(TreasuryMovement.reference_kind).in_(["none", "truncated"]),
                and_(TreasuryMovement.reference_kind == "flow", not_(known_flow))))
    ).scalars().all()
    if not loose:
        return 0
    amounts = list({m.amount for m in loose})
    candidates: dict[Decimal, list[Candidate]] = defaultdict(list)
    for f in session.execute(select(ReportingFlow).where(
            ReportingFlow.id_dominio == id_dominio, not_(ReportingFlow.reconciled),
            ReportingFlow.state != FlowState.OBSOLETA, col(ReportingFlow.total_amount).in_(amounts))).scalars():
        candidates[f.total_amount].append(Candidate(f.id or 0, f.total_amount, f.settlement_date, f.psp_name,
                                                    f.psp_id, f.settlement_ref, f.id_flusso))
    rows = []
    for m in loose:
        for c in candidates.get(m.amount, []):
            score, reasons = suggestion_score(
                amount=m.amount, value_date=m.value_date, ordering_party=m.ordering_party,
                references=(m.bank_reference, m.end_to_end_id, m.remittance),
                partial_reference=m.reference if m.reference_kind in ("truncated", "flow") else None, candidate=c)
            if score > 0:
                rows.append({"movement_id": m.id, "flow_id": c.flow_id, "score": round(score, 3),
                             "reasons": reasons, "state": SuggestionState.PROPOSED, "created_at": now})
    return insert_ignore(session, model=MatchSuggestion, rows=rows, keys=("movement_id", "flow_id")) if rows else 0


def _relabel(session: Session, *, id_dominio: str, now: datetime,
             flow_labels: list[tuple[int, str]]) -> dict[str, int]:
    """Replace the EC's labels with those its current state implies (DOMAIN §10)."""
    session.execute(delete(TransferLabel).where(TransferLabel.id_dominio == id_dominio))
    t = TransferLabel.__table__  # type: ignore[attr-defined]
    columns = ["id_dominio", "subject", "subject_key", "label", "iuv", "iur", "transfer_index", "id_flusso",
               "movement_id", "amount", "updated_at"]
    ec, ts = literal(id_dominio), literal(now, type_=t.c.updated_at.type)
    live = ReportingFlow.state != FlowState.OBSOLETA

    def collections(label: str, *conditions) -> None:  # type: ignore[no-untyped-def]
        session.execute(insert(t).from_select(columns, select(
            ec, literal("collection"), cast(Collection.id, SqlString), literal(label), Collection.iuv, Collection.iur,
            Collection.transfer_index, literal(None, SqlString), Collection.movement_id, Collection.amount, ts,
        ).where(Collection.id_dominio == id_dominio, *conditions)))

    collections(Label.RT_NO_IUF, col(Collection.receipt_pk).is_not(None), col(Collection.flow_line_id).is_(None),
                Collection.state == CollectionState.RISCOSSA)
    collections(Label.RT_IUF, col(Collection.receipt_pk).is_not(None), col(Collection.flow_line_id).is_not(None))
    collections(Label.RT_IUF_TES, col(Collection.flow_line_id).is_not(None),
                Collection.state == CollectionState.INCASSATA)
    collections(Label.RT_TES, col(Collection.flow_line_id).is_(None), Collection.state == CollectionState.INCASSATA)

    def lines(label: str, *conditions) -> None:  # type: ignore[no-untyped-def]
        session.execute(insert(t).from_select(columns, select(
            ec, literal("line"), cast(ReportingLine.id, SqlString), literal(label), ReportingLine.iuv,
            ReportingLine.iur, ReportingLine.transfer_index, ReportingFlow.id_flusso, literal(None),
            ReportingLine.amount, ts,
        ).join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id).where(
            ReportingFlow.id_dominio == id_dominio, live, *conditions)))

    lines(Label.IUV_NO_RT, col(ReportingLine.collection_id).is_(None),
          ReportingLine.state != LineState.ALTRO_INTERMEDIARIO)
    twice = (select(ReportingLine.iuv, ReportingLine.transfer_index)
             .join(ReportingFlow, ReportingFlow.id == ReportingLine.flow_id)
             .where(ReportingFlow.id_dominio == id_dominio, live, ReportingLine.outcome != 3)
             .group_by(ReportingLine.iuv, ReportingLine.transfer_index).having(func.count() > 1).subquery())
    lines(Label.DOPPI, exists().where(twice.c.iuv == ReportingLine.iuv,
                                      twice.c.transfer_index == ReportingLine.transfer_index))

    money = exists().where(TreasuryMovement.id_dominio == id_dominio, TreasuryMovement.reference_kind == "flow",
                           TreasuryMovement.reference_lower == ReportingFlow.id_flusso_lower)
    session.execute(insert(t).from_select(columns, select(
        ec, literal("flow"), cast(ReportingFlow.id, SqlString), literal(Label.IUF_NO_TES), literal(None, SqlString),
        literal(None, SqlString), literal(None), ReportingFlow.id_flusso, literal(None), ReportingFlow.total_amount, ts,
    ).where(ReportingFlow.id_dominio == id_dominio, live, not_(ReportingFlow.reconciled), not_(money))))
    if flow_labels:
        flows = {f.id: f for f in session.scalars(select(ReportingFlow).where(
            col(ReportingFlow.id).in_([f for f, _ in flow_labels])))}
        session.execute(insert(t), [
            {"id_dominio": id_dominio, "subject": "flow", "subject_key": str(fid), "label": label,
             "id_flusso": flows[fid].id_flusso, "amount": flows[fid].total_amount, "updated_at": now}
            for fid, label in set(flow_labels)])

    def movements(label: str, *conditions) -> None:  # type: ignore[no-untyped-def]
        session.execute(insert(t).from_select(columns, select(
            ec, literal("movement"), cast(TreasuryMovement.id, SqlString), literal(label), literal(None, SqlString),
            literal(None, SqlString), literal(None), TreasuryMovement.reference, TreasuryMovement.id,
            TreasuryMovement.amount, ts,
        ).where(TreasuryMovement.id_dominio == id_dominio, TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
                *conditions)))

    flow_known = exists().where(ReportingFlow.id_dominio == id_dominio, live,
                                ReportingFlow.id_flusso_lower == TreasuryMovement.reference_lower)
    iuv_known = exists().where(Collection.id_dominio == id_dominio,
                               func.lower(Collection.iuv) == TreasuryMovement.reference_lower)
    movements(Label.TES_NO_IUF_OR_IUV, or_(and_(TreasuryMovement.reference_kind == "flow", not_(flow_known)),
                                            and_(TreasuryMovement.reference_kind == "iuv", not_(iuv_known))))
    movements(Label.TES_NO_MATCH, col(TreasuryMovement.reference_kind).in_(["none", "truncated"]),
              TreasuryMovement.amount > 0, TreasuryMovement.match_state != MovementMatch.MATCHED)
    counts = session.execute(select(TransferLabel.label, func.count()).where(TransferLabel.id_dominio == id_dominio)
                             .group_by(TransferLabel.label)).all()
    return {label: int(n) for label, n in counts}


def confirm_suggestion(session: Session, *, suggestion_id: int, operator: str, accept: bool) -> MatchSuggestion:
    """An operator's decision: a confirmed match makes the movement name the flow (the next run cashes it)."""
    suggestion = session.get(MatchSuggestion, suggestion_id)
    if suggestion is None:
        raise LookupError(f"no suggestion {suggestion_id}")
    suggestion.state = SuggestionState.CONFIRMED if accept else SuggestionState.REJECTED
    suggestion.decided_by, suggestion.decided_at = operator, utcnow()
    if accept:
        flow = session.get(ReportingFlow, suggestion.flow_id)
        movement = session.get(TreasuryMovement, suggestion.movement_id)
        assert flow is not None and movement is not None
        movement.reference_kind, movement.reference = "flow", flow.id_flusso
        movement.reference_lower = flow.id_flusso_lower
        session.add(movement)
        session.execute(update(MatchSuggestion).where(MatchSuggestion.movement_id == movement.id,
                                                      MatchSuggestion.id != suggestion.id,
                                                      MatchSuggestion.state == SuggestionState.PROPOSED)
                        .values(state=SuggestionState.REJECTED, decided_by=operator, decided_at=utcnow()))
    session.add(suggestion)
    return suggestion


def mark_not_pagopa(session: Session, *, movement_id: int, operator: str) -> None:
    """An operator says a credit is not pagoPA money: it leaves reconciliation."""
    session.execute(update(TreasuryMovement).where(TreasuryMovement.id == movement_id)
                    .values(match_state=MovementMatch.NOT_PAGOPA))
    session.execute(update(MatchSuggestion).where(MatchSuggestion.movement_id == movement_id,
                                                  MatchSuggestion.state == SuggestionState.PROPOSED)
                    .values(state=SuggestionState.REJECTED, decided_by=operator, decided_at=utcnow()))
