"""Reconciliation over the database, set-based: cash flows and IUVs named by treasury money, recompute labels.

Every run recomputes an EC's state from its inputs (movements, flows, receipts), so a late flow, a second
transfer or a reversal changes the outcome on the next run without special cases, and a run with no new input
changes nothing: each step writes only the rows whose value differs.

The decisions (``rules.reconciliation``) are taken in Python, one per flow or IUV named by money (thousands a
day, not millions); they go into a temporary table, and everything done per transfer (a million collections,
their positions and labels) is one statement over a set: UPDATE … FROM, INSERT … SELECT, anti-joins. Nothing
is done row by row or through the ORM's unit of work, on SQLite (3.35 or later) and PostgreSQL alike.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import ColumnElement, FromClause
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
from models.types import Money, UTCDateTime, utcnow
from rules.reconciliation import (
    Candidate,
    Decision,
    FlowFacts,
    decide_flow,
    decide_single,
    flow_already_cashed,
    payment_already_cashed,
    split_repeats,
    suggestion_score,
)
from store.common import insert_ignore

COLLECTION = Collection.__table__  # type: ignore[attr-defined]
POSITION = Position.__table__  # type: ignore[attr-defined]
FLOW = ReportingFlow.__table__  # type: ignore[attr-defined]
LINE = ReportingLine.__table__  # type: ignore[attr-defined]
MOVEMENT = TreasuryMovement.__table__  # type: ignore[attr-defined]
RECONCILIATION = Reconciliation.__table__  # type: ignore[attr-defined]
LABEL = TransferLabel.__table__  # type: ignore[attr-defined]

_STATE = {"MATCH": ReconciliationState.ACQUISITO, "WAIT": ReconciliationState.IN_ELABORAZIONE,
          "ERROR": ReconciliationState.ERRORE}
# what a label row copies from its subject, beside the EC, the subject, its key and the label
_PAYLOAD = ("iuv", "iur", "transfer_index", "id_flusso", "movement_id", "amount")
# rows a statement may change before the statistics of its table are refreshed for the statements after it
_STALE_ROWS = 5000


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
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where the run spent its time


def _decision_table() -> Table:
    """The run's verdict on each movement that names a flow or an IUV (temporary: gone with the run)."""
    return Table(
        "reconcile_decision", MetaData(),
        Column("movement_id", Integer, primary_key=True, autoincrement=False),
        Column("kind", String(10), nullable=False),  # "flow" or "iuv", as the movement's reference_kind
        Column("external_id", String(100), nullable=False),
        Column("amount", Money(), nullable=False),
        Column("flow_id", Integer), Column("id_flusso", String(35)), Column("iuv", String(70)),
        Column("state", String(16), nullable=False), Column("outcome_code", String(6)),
        Column("description", String(500)), Column("match_state", String(16), nullable=False),
        Column("unknown", Boolean, nullable=False),  # names a flow or IUV we do not have: TES_NO_IUF_OR_IUV
        Column("flow_mismatch", Boolean, nullable=False),  # its flow is anomalous or off: IUF_TES_DIV_IMP
        Column("no_money", Boolean, nullable=False),  # the money naming its flow nets to 0.00: IUF_NO_TES
        prefixes=["TEMPORARY"],
    )


@contextmanager
def _decisions(session: Session) -> Iterator[Table]:
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        # a run that failed on this pooled connection may have left it (PostgreSQL rolls the CREATE back)
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.reconcile_decision")
    table = _decision_table()
    table.create(conn)
    yield table
    table.drop(conn)


def _insert(session: Session, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def _analyze(session: Session, table: Table) -> None:
    # PostgreSQL keeps no statistics of a temporary table unless asked: the planner would guess its size
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(f"ANALYZE pg_temp.{table.name}")


def _fresh_statistics(session: Session, table: Table, *, changed: int) -> None:
    """ANALYZE a table a statement of this run changed a lot (PostgreSQL), before the next statements read it.

    Autovacuum sees only committed work: without this, the statements after a large change are planned on
    the table as it was (e.g. no INCASSATA collections, no labels) and pick nested loops over rows they
    believe absent. ANALYZE inside the transaction samples its own uncommitted rows.
    """
    if changed >= _STALE_ROWS and session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(f"ANALYZE {table.name}")


def reconcile_ec(session: Session, *, id_dominio: str, now: datetime | None = None) -> ReconcileSummary:
    """Recompute cashing, positions and labels of one EC from everything known; idempotent."""
    now = now or utcnow()
    summary = ReconcileSummary(id_dominio)
    phase = _Phases(summary.phase_seconds)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # for this transaction only: the joins below hash a million rows (memory, not disk batches), and JIT
        # compiling each large statement costs more than it saves on writes (0.1-0.2 s a statement, measured)
        session.connection().exec_driver_sql("SET LOCAL work_mem = '64MB'")
        session.connection().exec_driver_sql("SET LOCAL jit = off")
    with _decisions(session) as decided:
        with phase("decide flows"):
            _decide_flows(session, decided, id_dominio=id_dominio, summary=summary)
            _write_reconciliations(session, decided, id_dominio=id_dominio, kind="flow", now=now)
        with phase("cash flows"):
            _apply_flows(session, decided, id_dominio=id_dominio, now=now, summary=summary)
        with phase("singles"):
            _apply_singles(session, decided, id_dominio=id_dominio, now=now, summary=summary)
        with phase("positions"):
            _apply_positions(session, id_dominio=id_dominio, now=now)
        with phase("movements"):
            d, m = decided.c, MOVEMENT.c
            session.execute(update(MOVEMENT).where(m.id == d.movement_id, m.match_state != d.match_state)
                            .values(match_state=d.match_state))
            # money naming no flow and no IUV was looked at too: unmatched until an operator decides
            session.execute(update(MOVEMENT).where(
                m.id_dominio == id_dominio, m.match_state == MovementMatch.PENDING,
                m.id.not_in(select(d.movement_id))).values(match_state=MovementMatch.UNMATCHED))
        with phase("suggestions"):
            summary.suggestions = _suggest(session, id_dominio=id_dominio, now=now)
        with phase("labels"):
            postgresql_ = session.get_bind().dialect.name == "postgresql"
            if postgresql_:
                # each INSERT below reads the table it writes (what is missing?). Planned on a table still
                # empty, a nested loop scanned it again for every row it added: minutes on a large first run.
                # Hashing what the table held when the statement began is right at every size.
                session.connection().exec_driver_sql("SET LOCAL enable_nestloop = off")
            summary.labels = _relabel(session, decided, id_dominio=id_dominio, now=now)
            if postgresql_:
                session.connection().exec_driver_sql("SET LOCAL enable_nestloop = on")
    # the statements above bypass the ORM: objects the caller holds reload what they became
    session.expire_all()
    return summary


class _Phases:
    """Times the phases of a run into a dict (seconds, by phase name)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 3)


def _latest_flows(session: Session, *, id_dominio: str, named: Any) -> dict[str | None, FlowFacts]:
    """The newest live revision of each flow id (lower-cased) that the money ``named`` names."""
    f = FLOW.c
    rows = session.execute(
        select(f.id, f.id_flusso, f.id_flusso_lower, f.state, f.total_amount, f.revision)
        .where(f.id_dominio == id_dominio, f.state != FlowState.OBSOLETA, f.id_flusso_lower.in_(named))
        .order_by(f.id)
    ).all()
    best: dict[str | None, tuple[int, FlowFacts]] = {}
    for flow_id, id_flusso, lower, state, total, revision in rows:
        if lower not in best or revision > best[lower][0]:
            best[lower] = (revision, FlowFacts(flow_id, id_flusso, state, total))
    return {k: v[1] for k, v in best.items()}


def _decide_flows(session: Session, decided: Table, *, id_dominio: str, summary: ReconcileSummary) -> None:
    """Sum the money naming each flow and decide it (``decide_flow``), one decision row per movement."""
    m = MOVEMENT.c
    naming = (m.id_dominio == id_dominio, m.reference_kind == "flow",
              m.match_state != MovementMatch.NOT_PAGOPA)
    money: dict[str | None, list[tuple[int, Decimal]]] = defaultdict(list)
    for movement_id, ref, amount in session.execute(
            select(m.id, m.reference_lower, m.amount).where(*naming).order_by(m.id)):
        money[ref].append((movement_id, amount))
    if not money:
        return
    flows = _latest_flows(session, id_dominio=id_dominio, named=select(m.reference_lower).where(*naming))
    rows = []
    for ref, transfers in money.items():
        flow = flows.get(ref)
        parts, refused = split_repeats(transfers, flow=flow)
        total = sum((amount for _, amount in parts), Decimal("0.00"))
        decision = decide_flow(money=total, flow=flow)
        if decision.outcome == "MATCH":
            summary.flows_cashed += 1
        elif decision.outcome == "WAIT":
            summary.flows_waiting += 1
        else:
            summary.flows_in_error += 1
        match_state = MovementMatch.MATCHED if decision.outcome == "MATCH" else (
            MovementMatch.PARTIAL if decision.outcome == "WAIT" and flow is not None and total
            else MovementMatch.UNMATCHED)
        mismatch = flow is not None and decision.label == Label.IUF_TES_DIV_IMP
        rows += [_decision_row(movement_id, kind="flow", amount=amount, decision=decision, flow=flow,
                               iuv=None, match_state=match_state, unknown=flow is None,
                               flow_mismatch=mismatch, no_money=flow is not None and total == 0)
                 for movement_id, amount in parts]
        if flow is not None and refused:  # another transfer for a flow already cashed: the flow is labelled
            amounts = dict(transfers)
            rows += [_decision_row(movement_id, kind="flow", amount=amounts[movement_id],
                                   decision=flow_already_cashed(flow), flow=flow, iuv=None,
                                   match_state=MovementMatch.UNMATCHED, unknown=False, flow_mismatch=True)
                     for movement_id in refused]
    session.execute(insert(decided), rows)
    _analyze(session, decided)


def _decision_row(movement_id: int, *, kind: str, amount: Decimal, decision: Decision, flow: FlowFacts | None,
                  iuv: str | None, match_state: str, unknown: bool, flow_mismatch: bool,
                  no_money: bool = False) -> dict[str, Any]:
    """A movement's verdict; ``amount`` is the movement's own (its riconciliazione's importo)."""
    return {"movement_id": movement_id, "kind": kind, "external_id": f"TES-{movement_id}", "amount": amount,
            "flow_id": flow.flow_id if flow else None, "id_flusso": flow.id_flusso if flow else None,
            "iuv": iuv, "state": _STATE[decision.outcome], "outcome_code": decision.code,
            "description": decision.description[:500], "match_state": match_state, "unknown": unknown,
            "flow_mismatch": flow_mismatch, "no_money": no_money}


def _write_reconciliations(session: Session, decided: Table, *, id_dominio: str, kind: str,
                           now: datetime) -> None:
    """One riconciliazione per movement: its outcome, upserted (a run that decides the same writes nothing).

    A row the API Ragioneria created for the movement keeps its id and request; ``processed_at`` moves only
    when the state, the code or the flow changes.
    """
    d, r = decided.c, RECONCILIATION.c
    ts = literal(now, UTCDateTime())
    of_movement = (r.movement_id == d.movement_id, d.kind == kind)
    changed = or_(*(r[name].is_distinct_from(d[name]) for name in ("state", "outcome_code", "flow_id")))
    retold = or_(*(r[name].is_distinct_from(d[name]) for name in ("description", "id_flusso", "iuv")))
    session.execute(
        update(RECONCILIATION).where(*of_movement, or_(changed, retold))
        .values(state=d.state, outcome_code=d.outcome_code, description=d.description, flow_id=d.flow_id,
                id_flusso=d.id_flusso, iuv=d.iuv, processed_at=case((changed, ts), else_=r.processed_at)))
    columns = ["id_dominio", "external_id", "movement_id", "amount", "flow_id", "id_flusso", "iuv", "state",
               "outcome_code", "description", "created_at", "processed_at"]
    new = select(literal(id_dominio, String), d.external_id, d.movement_id, d.amount, d.flow_id, d.id_flusso,
                 d.iuv, d.state, d.outcome_code, d.description, ts, ts).where(
        d.kind == kind, ~exists().where(r.movement_id == d.movement_id))
    # a riconciliazione the API writes for the same movement meanwhile wins; the next run decides it
    session.execute(_insert(session, RECONCILIATION).from_select(columns, new)
                    .on_conflict_do_nothing(index_elements=["movement_id"]))


def _apply_flows(session: Session, decided: Table, *, id_dominio: str, now: datetime,
                 summary: ReconcileSummary) -> None:
    """Mark the flows the money cashes, and cash (or un-cash) their collections."""
    d, c, ln, f = decided.c, COLLECTION.c, LINE.c, FLOW.c
    ts = literal(now, UTCDateTime())
    cashing = select(d.flow_id).where(d.state == ReconciliationState.ACQUISITO, d.flow_id.is_not(None))
    marked = session.execute(update(FLOW).where(f.id_dominio == id_dominio, not_(f.reconciled),
                                                f.id.in_(cashing)).values(reconciled=True)).rowcount
    marked += session.execute(update(FLOW).where(f.id_dominio == id_dominio, f.reconciled,
                                                 f.id.not_in(cashing)).values(reconciled=False)).rowcount
    _fresh_statistics(session, FLOW, changed=marked)
    lines_of_cashed = LINE.join(FLOW, f.id == ln.flow_id)
    cashed_flow = (f.id_dominio == id_dominio, f.reconciled)
    # lines paid without a receipt (outcome 8/9, or a known debt whose receipt never came) become collections
    orphans = select(literal(id_dominio, String), ln.iuv, ln.iur, ln.transfer_index, ln.amount, ln.id,
                     ln.position_id, true(), literal(CollectionState.RISCOSSA, String), ts).select_from(
        lines_of_cashed).where(*cashed_flow, ln.collection_id.is_(None), ln.outcome.in_([8, 9]),
                               ln.state != LineState.ALTRO_INTERMEDIARIO)
    created = session.execute(
        _insert(session, COLLECTION)
        .from_select(["id_dominio", "iuv", "iur", "transfer_index", "amount", "flow_line_id", "position_id",
                      "without_receipt", "state", "paid_at"], orphans)
        .on_conflict_do_nothing(index_elements=["id_dominio", "iuv", "iur", "transfer_index"])
        .returning(c.id, c.flow_line_id)
    ).all()
    summary.without_receipt = len(created)
    if created:
        # the line now has its collection: it no longer waits for a receipt (an anomaly stays as it was)
        session.execute(update(LINE).where(ln.id == bindparam("line"))
                        .values(collection_id=bindparam("created"),
                                state=case((ln.state == LineState.NO_RECEIPT, LineState.LINKED.value),
                                           else_=ln.state)),
                        [{"line": line_id, "created": collection_id} for collection_id, line_id in created])
    # each collection of a cashed flow takes the first movement that cashed it: joined once, not per row
    r = RECONCILIATION.c
    first = (select(r.flow_id, func.min(r.movement_id).label("movement_id"))
             .where(r.id_dominio == id_dominio, r.state == ReconciliationState.ACQUISITO,
                    r.flow_id.is_not(None))
             .group_by(r.flow_id).subquery("first_movement"))
    cashed_lines = (select(ln.id.label("line_id"), first.c.movement_id)
                    .select_from(lines_of_cashed.outerjoin(first, first.c.flow_id == ln.flow_id))
                    .where(*cashed_flow).subquery("cashed_line"))
    cash = (update(COLLECTION)
            .where(c.flow_line_id == cashed_lines.c.line_id, c.id_dominio == id_dominio,
                   c.state == CollectionState.RISCOSSA)
            .values(state=CollectionState.INCASSATA, cashed_at=ts, movement_id=cashed_lines.c.movement_id))
    summary.collections_cashed = int(session.execute(cash).rowcount or 0)
    in_cashed_flow = exists().where(ln.id == c.flow_line_id, f.id == ln.flow_id, *cashed_flow)
    uncash = (update(COLLECTION)
              .where(c.id_dominio == id_dominio, c.state == CollectionState.INCASSATA,
                     c.flow_line_id.is_not(None), ~in_cashed_flow)
              .values(state=CollectionState.RISCOSSA, cashed_at=None, movement_id=None))
    _fresh_statistics(session, COLLECTION, changed=summary.collections_cashed)
    summary.collections_uncashed = int(session.execute(uncash).rowcount or 0)
    _fresh_statistics(session, COLLECTION, changed=summary.collections_uncashed)


def _apply_singles(session: Session, decided: Table, *, id_dominio: str, now: datetime,
                   summary: ReconcileSummary) -> None:
    """Decide the money naming one IUV (/RFB/, /RFS/) against what was paid for it, and cash it."""
    c, m = COLLECTION.c, MOVEMENT.c
    naming = (m.id_dominio == id_dominio, m.reference_kind == "iuv",
              m.match_state != MovementMatch.NOT_PAGOPA)
    singles = session.execute(select(m.id, m.reference_lower, m.amount).where(*naming).order_by(m.id)).all()
    if not singles:
        return
    known: set[str] = set()
    paid: dict[str, tuple[Decimal, list[int]]] = {}
    for iuv, amount, collection_id, with_receipt in session.execute(
            select(func.lower(c.iuv), c.amount, c.id, c.receipt_pk.is_not(None))
            .where(c.id_dominio == id_dominio,
                   func.lower(c.iuv).in_(select(m.reference_lower).where(*naming)))
            .order_by(c.id)):
        known.add(iuv)
        if with_receipt:
            total, ids = paid.get(iuv, (Decimal("0.00"), []))
            paid[iuv] = (total + amount, [*ids, collection_id])
    rows, cash = [], []
    cashed_by: set[str] = set()  # in movement order: of two transfers for one IUV, the first cashes it
    for movement_id, ref, amount in singles:
        total, ids = paid.get(ref or "", (None, []))
        decision = decide_single(money=amount, paid=total)
        if decision.outcome == "MATCH" and (ref or "") in cashed_by:
            decision = payment_already_cashed()
        elif decision.outcome == "MATCH":
            cashed_by.add(ref or "")
        matched = decision.outcome == "MATCH"
        state = MovementMatch.MATCHED if matched else MovementMatch.UNMATCHED
        rows.append(_decision_row(movement_id, kind="iuv", amount=amount, decision=decision, flow=None,
                                  iuv=ref, match_state=state, unknown=ref not in known, flow_mismatch=False))
        if matched:
            summary.singles_cashed += 1
            cash += [{"collection": collection_id, "movement": movement_id} for collection_id in ids]
    session.execute(insert(decided), rows)
    _analyze(session, decided)
    _write_reconciliations(session, decided, id_dominio=id_dominio, kind="iuv", now=now)
    if cash:
        session.execute(update(COLLECTION).where(c.id == bindparam("collection"),
                                                 c.state == CollectionState.RISCOSSA)
                        .values(state=CollectionState.INCASSATA, cashed_at=now,
                                movement_id=bindparam("movement")), cash)


def cashed_by(reconciliation: Reconciliation) -> ColumnElement[bool] | None:
    """The collections a riconciliazione's money pays, found through indexed columns; None if it names none.

    By flow: every collection of the flow's lines (several transfers may pay one flow; ``movement_id`` names
    the first). Single: the IUV's collections this movement cashed. ``collection.movement_id`` is deliberately
    not indexed (migration 0009): cashing a collection then rewrites none of its index entries, so the flow's
    lines or the IUV narrow the rows first.
    """
    c = COLLECTION.c
    if reconciliation.movement_id is None:
        return None
    if reconciliation.flow_id is not None:
        return c.flow_line_id.in_(select(LINE.c.id).where(LINE.c.flow_id == reconciliation.flow_id))
    if reconciliation.iuv:
        # the treasury may have changed an RF reference's case: the collection keeps pagoPA's
        return and_(c.id_dominio == reconciliation.id_dominio,
                    c.iuv.in_({reconciliation.iuv, reconciliation.iuv.upper()}),
                    c.movement_id == reconciliation.movement_id)
    return None


def _apply_positions(session: Session, *, id_dominio: str, now: datetime) -> None:
    """A position is INCASSATA when it has collections and all are; back to ESEGUITA when one is not."""
    c, p = COLLECTION.c, POSITION.c
    cashed = select(c.position_id).where(c.id_dominio == id_dominio, c.state == CollectionState.INCASSATA)
    uncashed = exists().where(c.position_id == p.id, c.id_dominio == id_dominio,
                              c.state != CollectionState.INCASSATA)
    # the two sets are disjoint; taking back first reads only positions cashed before this run
    session.execute(update(POSITION).where(p.id_dominio == id_dominio, p.state == PositionState.INCASSATA,
                                           uncashed).values(state=PositionState.ESEGUITA, cashed_at=None))
    session.execute(update(POSITION).where(
        p.id_dominio == id_dominio, p.state.in_([PositionState.ESEGUITA, PositionState.NON_ESEGUITA]),
        p.id.in_(cashed), ~uncashed,
    ).values(state=PositionState.INCASSATA, cashed_at=literal(now, UTCDateTime()),
             paid_without_receipt=p.state == PositionState.NON_ESEGUITA))


def _suggest(session: Session, *, id_dominio: str, now: datetime) -> int:
    """Propose flows for credits without a usable remittance (an operator confirms or rejects)."""
    known_flow = exists().where(ReportingFlow.id_dominio == id_dominio,
                                ReportingFlow.state != FlowState.OBSOLETA,
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
            ReportingFlow.state != FlowState.OBSOLETA,
            col(ReportingFlow.total_amount).in_(amounts))).scalars():
        candidates[f.total_amount].append(Candidate(f.id or 0, f.total_amount, f.settlement_date, f.psp_name,
                                                    f.psp_id, f.settlement_ref, f.id_flusso))
    rows = []
    for m in loose:
        for c in candidates.get(m.amount, []):
            score, reasons = suggestion_score(
                amount=m.amount, value_date=m.value_date, ordering_party=m.ordering_party,
                references=(m.bank_reference, m.end_to_end_id, m.remittance),
                partial_reference=m.reference if m.reference_kind in ("truncated", "flow") else None,
                candidate=c)
            if score > 0:
                rows.append({"movement_id": m.id, "flow_id": c.flow_id, "score": round(score, 3),
                             "reasons": reasons, "state": SuggestionState.PROPOSED, "created_at": now})
    if not rows:
        return 0
    return insert_ignore(session, model=MatchSuggestion, rows=rows, keys=("movement_id", "flow_id"))


@dataclass(frozen=True)
class _Family:
    """The subjects that carry one label now: where they are, their integer key, what a label row copies."""

    subject: str
    label: str
    source: FromClause
    key: ColumnElement[Any]
    payload: tuple[ColumnElement[Any], ...]  # in the order of _PAYLOAD
    conditions: tuple[ColumnElement[Any], ...]


def _families(decided: Table, *, id_dominio: str) -> list[_Family]:
    """Which subject carries which label (DOMAIN §10), as conditions over the EC's current state."""
    c, ln, f, m, d = COLLECTION.c, LINE.c, FLOW.c, MOVEMENT.c, decided.c
    none_str, none_int = literal(None, String), literal(None, Integer)
    transfer = (c.iuv, c.iur, c.transfer_index, none_str, c.movement_id, c.amount)
    in_ec = c.id_dominio == id_dominio
    live = (f.id_dominio == id_dominio, f.state != FlowState.OBSOLETA)
    lines = LINE.join(FLOW, f.id == ln.flow_id)
    reported = (ln.iuv, ln.iur, ln.transfer_index, f.id_flusso, none_int, ln.amount)
    twice = (select(ln.iuv, ln.transfer_index).select_from(lines).where(*live, ln.outcome != 3)
             .group_by(ln.iuv, ln.transfer_index).having(func.count() > 1).subquery("twice"))
    flow = (none_str, none_str, none_int, f.id_flusso, none_int, f.total_amount)
    money = (none_str, none_str, none_int, m.reference, m.id, m.amount)
    counted = (m.id_dominio == id_dominio, m.match_state != MovementMatch.NOT_PAGOPA)
    named = exists().where(m.id_dominio == id_dominio, m.reference_kind == "flow",
                           m.reference_lower == f.id_flusso_lower)
    # money that named the flow and was reversed (it nets to 0.00): the flow is without money again
    reversed_ = select(d.flow_id).where(d.no_money)
    return [
        _Family("collection", Label.RT_NO_IUF, COLLECTION, c.id, transfer,
                (in_ec, c.receipt_pk.is_not(None), c.flow_line_id.is_(None),
                 c.state == CollectionState.RISCOSSA)),
        _Family("collection", Label.RT_IUF, COLLECTION, c.id, transfer,
                (in_ec, c.receipt_pk.is_not(None), c.flow_line_id.is_not(None))),
        _Family("collection", Label.RT_IUF_TES, COLLECTION, c.id, transfer,
                (in_ec, c.flow_line_id.is_not(None), c.state == CollectionState.INCASSATA)),
        _Family("collection", Label.RT_TES, COLLECTION, c.id, transfer,
                (in_ec, c.flow_line_id.is_(None), c.state == CollectionState.INCASSATA)),
        _Family("line", Label.IUV_NO_RT, lines, ln.id, reported,
                (*live, ln.collection_id.is_(None), ln.state != LineState.ALTRO_INTERMEDIARIO)),
        _Family("line", Label.DOPPI, lines, ln.id, reported,
                (*live, exists().where(twice.c.iuv == ln.iuv, twice.c.transfer_index == ln.transfer_index))),
        _Family("flow", Label.IUF_NO_TES, FLOW, f.id, flow,
                (*live, not_(f.reconciled), or_(~named, f.id.in_(reversed_)))),
        _Family("flow", Label.IUF_TES_DIV_IMP, FLOW, f.id, flow,
                (*live, f.id.in_(select(d.flow_id).where(d.flow_mismatch)))),
        _Family("movement", Label.TES_NO_IUF_OR_IUV, MOVEMENT, m.id, money,
                (*counted, m.id.in_(select(d.movement_id).where(d.unknown)))),
        _Family("movement", Label.TES_NO_MATCH, MOVEMENT, m.id, money,
                (*counted, m.reference_kind.in_(["none", "truncated"]), m.amount > 0,
                 m.match_state != MovementMatch.MATCHED)),
    ]


def _relabel(session: Session, decided: Table, *, id_dominio: str, now: datetime) -> dict[str, int]:
    """Bring the EC's labels to those its state implies: drop the stale, add the missing, keep the rest.

    A label whose copied values changed (a reported transfer gets its movement) is dropped and added again.
    ``updated_at`` says since when a label holds as it is.
    """
    t = LABEL.c
    columns = ["id_dominio", "subject", "subject_key", "label", *_PAYLOAD, "updated_at"]
    families = _families(decided, id_dominio=id_dominio)
    for family in families:
        same = (t.id_dominio == id_dominio, t.subject == family.subject, t.label == family.label)
        same_values = (value.is_not_distinct_from(t[name])
                       for name, value in zip(_PAYLOAD, family.payload, strict=True))
        still = (select(literal(1)).select_from(family.source)
                 .where(*family.conditions, family.key == t.subject_key, *same_values))
        dropped = session.execute(delete(LABEL).where(*same, ~still.exists())).rowcount
        _fresh_statistics(session, LABEL, changed=dropped)
        held = LABEL.alias("held")
        missing = ~exists().where(held.c.id_dominio == id_dominio, held.c.subject == family.subject,
                                  held.c.label == family.label,
                                  held.c.subject_key == family.key)
        added = session.execute(insert(LABEL).from_select(columns, select(
            literal(id_dominio, String), literal(family.subject, String), family.key,
            literal(family.label, String), *family.payload, literal(now, UTCDateTime()),
        ).select_from(family.source).where(*family.conditions, missing))
            # SQLAlchemy keeps an INSERT's rowcount only when asked (-1 otherwise): without it the table
            # was never re-analysed after a big insert, and later statements were planned on an empty table
            .execution_options(preserve_rowcount=True)).rowcount
        _fresh_statistics(session, LABEL, changed=added)
    counts: dict[str, int] = defaultdict(int)
    kinds = {(family.subject, family.label) for family in families}
    for subject, label, n in session.execute(select(t.subject, t.label, func.count())
                                             .where(t.id_dominio == id_dominio).group_by(t.subject, t.label)):
        if (subject, label) in kinds:
            counts[label] += int(n)
        else:  # a kind of label no family gives (left by an older version): it goes too
            session.execute(delete(LABEL).where(t.id_dominio == id_dominio, t.subject == subject,
                                                t.label == label))
    return dict(counts)


def confirm_suggestion(session: Session, *, suggestion_id: int, operator: str,
                       accept: bool) -> MatchSuggestion:
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
