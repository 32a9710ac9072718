"""Persistence behind the API Ragioneria v3: riconciliazioni submitted by the EC, riscossioni, ricevute.

A submitted riconciliazione becomes a treasury movement (dedupe key ``ragioneria:<id>``) and a Reconciliation
row keyed by the EC and the caller's id; the next ``reconcile`` run decides it (``store.reconciliation``
finds the row by its movement and writes state, code and flow into it). The same money in the treasury
journal is never a second movement: a submission adopts the journal's movement when it is already there, and
ingest-treasury joins the two when the journal comes later (``store.movement_dedupe``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models.payments import Collection, Receipt
from models.positions import ItemKind, Position, PositionItem
from models.reconciliation import Reconciliation, ReconciliationState
from models.registry import Creditor, IbanAccount
from models.reporting import LineState, ReportingFlow, ReportingLine
from models.treasury import TreasuryMovement
from models.types import utcnow
from rules.calendar import day_start
from rules.movement_dedupe import money_facts, pair_twins, twin_evidence
from rules.positions import BusinessError
from rules.remittance import RemittanceRef
from rules.riconciliazioni import (
    ALREADY_CASHED,
    CAUSALE_INVALID,
    DUPLICATE_DIFFERENT,
    FLOW_ALREADY_CASHED,
    PAYMENT_ALREADY_CASHED,
    UNKNOWN_EC,
    UNKNOWN_IBAN,
    RiconciliazionePut,
    request_hash,
)
from store.movement_dedupe import (
    API_PREFIX,
    api_claims,
    candidates,
    complete_journal_movement,
    facts_of,
    is_api_movement,
)
from store.reconciliation import cashed_by

ROME = ZoneInfo("Europe/Rome")
DEDUPE_PREFIX = API_PREFIX
MOVEMENT_KIND = "RAGIONERIA"

# GovPay's riscossione types: a collection of one of our debts, a digital stamp, another broker's IUV
TIPO_ENTRATA, TIPO_MBT, TIPO_ALTRO = "ENTRATA", "MBT", "ALTRO_INTERMEDIARIO"


@dataclass(frozen=True)
class Submission:
    """What a PUT did: created the riconciliazione (True) or found the same one (False)."""

    created: bool
    reconciliation: Reconciliation
    movement: TreasuryMovement | None


def creditor_exists(session: Session, *, id_dominio: str) -> bool:
    """Whether the EC is one of ours."""
    return session.exec(select(Creditor.id).where(Creditor.id_dominio == id_dominio)).first() is not None


def find_riconciliazione(
    session: Session, *, id_dominio: str, id_riconciliazione: str
) -> tuple[Reconciliation, TreasuryMovement | None] | None:
    """A riconciliazione by EC and id, with its movement."""
    row = session.exec(
        select(Reconciliation).where(
            Reconciliation.id_dominio == id_dominio, Reconciliation.external_id == id_riconciliazione
        )
    ).first()
    if row is None:
        return None
    return row, session.get(TreasuryMovement, row.movement_id) if row.movement_id is not None else None


def _same_or_conflict(found: tuple[Reconciliation, TreasuryMovement | None], digest: str) -> Submission:
    rec, movement = found
    if rec.request_hash != digest:
        raise BusinessError(
            DUPLICATE_DIFFERENT, f"la riconciliazione {rec.external_id} esiste con dati diversi", field="id"
        )
    return Submission(False, rec, movement)


def _account(session: Session, *, id_dominio: str, iban: str | None) -> str:
    stmt = select(IbanAccount.iban).where(
        IbanAccount.id_dominio == id_dominio, col(IbanAccount.enabled).is_(True)
    )
    if iban is None:
        # GovPay makes contoAccredito optional: the EC's treasury account is meant
        found = session.exec(
            stmt.where(col(IbanAccount.treasury).is_(True)).order_by(col(IbanAccount.id))
        ).first()
        if found is None:
            raise BusinessError(
                UNKNOWN_IBAN, f"il dominio {id_dominio} non ha un conto di tesoreria", field="contoAccredito"
            )
        return found
    if session.exec(stmt.where(IbanAccount.iban == iban)).first() is None:
        raise BusinessError(
            UNKNOWN_IBAN, f"conto {iban} non censito per il dominio {id_dominio}", field="contoAccredito"
        )
    return iban


def _initial_state(reference_kind: str) -> tuple[str, str | None, str]:
    if reference_kind in ("flow", "iuv"):
        return ReconciliationState.IN_ELABORAZIONE, None, "in attesa della prossima riconciliazione"
    return (
        ReconciliationState.ERRORE,
        CAUSALE_INVALID,
        "causale non valida: non indica un flusso di rendicontazione ne' uno IUV",
    )


def _twin(
    session: Session, *, id_dominio: str, account: str, body: RiconciliazionePut, ref: RemittanceRef
) -> TreasuryMovement | None:
    """The journal movement of the same money, if the journal brought it first (``rules.movement_dedupe``).

    Raises 021411 when the same transfer (same account, amount and TRN) already carries another
    riconciliazione, posted through the API or adopted by one.
    """
    facts = money_facts(
        id=0,
        account=account,
        amount=body.importo,
        value_date=body.dataValuta,
        references=(body.sct,),
        reference_kind=ref.kind,
        reference=ref.reference,
        integrative=ref.integrative,
    )
    found = candidates(
        session,
        id_dominio=id_dominio,
        accounts={account},
        amounts={body.importo},
        dates=(body.dataValuta, body.dataValuta) if body.dataValuta else None,
        journal_only=False,
    )
    claims = api_claims(session, movement_ids=[m.id or 0 for m in found])
    for movement in found:
        claimed_by = claims.get(movement.id or 0)
        if claimed_by is not None and twin_evidence(facts, facts_of(movement)) == "TRN":
            raise BusinessError(
                ALREADY_CASHED, f"movimento gia' riconciliato con id {claimed_by}", field="sct"
            )
    journals = [m for m in found if (m.id or 0) not in claims and not is_api_movement(m)]
    twins = pair_twins([facts], [facts_of(m) for m in journals])
    return next((m for m in journals if twins and m.id == twins[0].journal_id), None)


def _refuse_if_cashed(session: Session, *, id_dominio: str, ref: RemittanceRef) -> None:
    """Another transfer for a flow or an IUV whose money is already on the account: 021413 / 021406.

    Reached only when the submission is not the money that cashed it (that one is adopted, or 021411).
    """
    if ref.reference is None:
        return
    if ref.kind == "flow":
        cashed = session.exec(
            select(ReportingFlow.id).where(
                ReportingFlow.id_dominio == id_dominio,
                ReportingFlow.id_flusso_lower == ref.reference.lower(),
                ReportingFlow.state != "OBSOLETA",
                col(ReportingFlow.reconciled).is_(True),
            )
        ).first()
        if cashed is not None:
            raise BusinessError(
                FLOW_ALREADY_CASHED, f"il flusso {ref.reference} risulta gia' incassato", field="idFlusso"
            )
    elif ref.kind == "iuv":
        states = set(
            session.exec(
                select(Collection.state).where(
                    Collection.id_dominio == id_dominio,
                    func.lower(Collection.iuv) == ref.reference.lower(),
                    col(Collection.receipt_pk).is_not(None),
                )
            )
        )
        if states == {"INCASSATA"}:
            raise BusinessError(
                PAYMENT_ALREADY_CASHED,
                f"il pagamento dello IUV {ref.reference} risulta gia' incassato",
                field="iuv",
            )


def submit_riconciliazione(
    session: Session,
    *,
    id_dominio: str,
    id_riconciliazione: str,
    body: RiconciliazionePut,
    now: datetime | None = None,
) -> Submission:
    """Store a riconciliazione for the next reconcile run; the same body again changes nothing."""
    # Raises BusinessError 021410 (unknown EC), 021412 (account not the EC's), 021409 (same id, other data),
    # 021411 (the same transfer already carries another id), 021413 / 021406 (another transfer for a flow or
    # an IUV already cashed). When the treasury journal already holds the money (rules.movement_dedupe), the
    # riconciliazione adopts that movement rather than add the money twice; when the journal brings it
    # later, ingest-treasury joins the two (store.movement_dedupe).
    now = now or utcnow()
    if not creditor_exists(session, id_dominio=id_dominio):
        raise BusinessError(UNKNOWN_EC, f"dominio {id_dominio} non gestito", field="idDominio")
    canonical = body.canonical()
    digest = request_hash(canonical)
    found = find_riconciliazione(session, id_dominio=id_dominio, id_riconciliazione=id_riconciliazione)
    if found is not None:
        return _same_or_conflict(found, digest)
    account = _account(session, id_dominio=id_dominio, iban=body.contoAccredito)
    ref = body.reference()
    reference_lower = ref.reference.lower() if ref.reference else None
    state, code, description = _initial_state(ref.kind)
    twin = _twin(session, id_dominio=id_dominio, account=account, body=body, ref=ref)
    if twin is None:
        _refuse_if_cashed(session, id_dominio=id_dominio, ref=ref)
    try:
        with session.begin_nested():
            if twin is not None:
                rec = _adopt(
                    session,
                    twin=twin,
                    id_dominio=id_dominio,
                    id_riconciliazione=id_riconciliazione,
                    api={
                        "reference_kind": ref.kind,
                        "reference": ref.reference,
                        "reference_lower": reference_lower,
                        "integrative": ref.integrative,
                        "bank_reference": body.sct,
                        "value_date": body.dataValuta,
                        "booking_date": body.dataContabile,
                    },
                    canonical=canonical,
                    digest=digest,
                    now=now,
                )
                session.flush()
                return Submission(True, rec, twin)
            movement = TreasuryMovement(
                id_dominio=id_dominio,
                account=account,
                dedupe_key=f"{DEDUPE_PREFIX}{id_riconciliazione}",
                amount=body.importo,
                value_date=body.dataValuta,
                booking_date=body.dataContabile,
                remittance=body.remittance(),
                bank_reference=body.sct,
                kind=MOVEMENT_KIND,
                reference_kind=ref.kind,
                reference=ref.reference,
                reference_lower=reference_lower,
                integrative=ref.integrative,
                created_at=now,
            )
            session.add(movement)
            session.flush()
            rec = Reconciliation(
                id_dominio=id_dominio,
                external_id=id_riconciliazione,
                movement_id=movement.id,
                request_hash=digest,
                request=canonical,
                amount=body.importo,
                value_date=body.dataValuta,
                id_flusso=ref.reference if ref.kind == "flow" else None,
                iuv=ref.reference if ref.kind == "iuv" else None,
                state=state,
                outcome_code=code,
                description=description,
                created_at=now,
                processed_at=now if state == ReconciliationState.ERRORE else None,
            )
            session.add(rec)
            session.flush()
            return Submission(True, rec, movement)
    except IntegrityError:
        # a concurrent PUT of the same id won the race: answer as for a resubmission
        found = find_riconciliazione(session, id_dominio=id_dominio, id_riconciliazione=id_riconciliazione)
        if found is None:
            raise
        return _same_or_conflict(found, digest)


def _adopt(
    session: Session,
    *,
    twin: TreasuryMovement,
    id_dominio: str,
    id_riconciliazione: str,
    api: dict[str, Any],
    canonical: dict[str, Any],
    digest: str,
    now: datetime,
) -> Reconciliation:
    """The journal movement takes the riconciliazione (its own ``TES-<id>`` one renamed, or a new one)."""
    complete_journal_movement(session, journal=twin, api=api)
    claimed = session.exec(
        select(Reconciliation).where(Reconciliation.movement_id == twin.id).order_by(col(Reconciliation.id))
    ).first()
    if claimed is None:
        state, code, description = _initial_state(twin.reference_kind or "none")
        claimed = Reconciliation(
            id_dominio=id_dominio,
            movement_id=twin.id,
            amount=twin.amount,
            state=state,
            outcome_code=code,
            description=description,
            created_at=now,
            id_flusso=twin.reference if twin.reference_kind == "flow" else None,
            iuv=twin.reference if twin.reference_kind == "iuv" else None,
            external_id="",
        )
    claimed.external_id, claimed.request_hash, claimed.request = id_riconciliazione, digest, canonical
    claimed.value_date = claimed.value_date or api["value_date"] or twin.value_date
    session.add(claimed)
    return claimed


@dataclass(frozen=True)
class CollectionView:
    """One riscossione with its receipt, position and voce; ``line`` for another broker's IUV."""

    collection: Collection | None
    line: ReportingLine | None
    receipt: Receipt | None
    position: Position | None
    item: PositionItem | None
    tipo: str
    reconciliation_id: str | None = None


def _views(session: Session, collections: list[Collection]) -> list[CollectionView]:
    """Collections with their receipts, positions and voci, loaded in three queries."""
    receipt_ids = {c.receipt_pk for c in collections if c.receipt_pk is not None}
    position_ids = {c.position_id for c in collections if c.position_id is not None}
    item_ids = {c.item_id for c in collections if c.item_id is not None}
    movement_ids = {c.movement_id for c in collections if c.movement_id is not None}
    receipts = (
        {r.id: r for r in session.exec(select(Receipt).where(col(Receipt.id).in_(receipt_ids)))}
        if receipt_ids
        else {}
    )
    positions = (
        {p.id: p for p in session.exec(select(Position).where(col(Position.id).in_(position_ids)))}
        if position_ids
        else {}
    )
    items = (
        {i.id: i for i in session.exec(select(PositionItem).where(col(PositionItem.id).in_(item_ids)))}
        if item_ids
        else {}
    )
    recs: dict[int, str] = {}
    if movement_ids:
        for movement_id, external_id in session.exec(
            select(Reconciliation.movement_id, Reconciliation.external_id).where(
                col(Reconciliation.movement_id).in_(movement_ids)
            )
        ):
            recs.setdefault(movement_id or 0, external_id)
    out = []
    for c in collections:
        item = items.get(c.item_id) if c.item_id is not None else None
        out.append(
            CollectionView(
                collection=c,
                line=None,
                receipt=receipts.get(c.receipt_pk) if c.receipt_pk is not None else None,
                position=positions.get(c.position_id) if c.position_id is not None else None,
                item=item,
                tipo=TIPO_MBT if item is not None and item.kind == ItemKind.STAMP else TIPO_ENTRATA,
                reconciliation_id=recs.get(c.movement_id) if c.movement_id is not None else None,
            )
        )
    return out


def covered_collections(session: Session, *, reconciliation: Reconciliation) -> list[CollectionView]:
    """The riscossioni a riconciliazione cashed (none until it is ACQUISITO), then other brokers' lines."""
    if reconciliation.state != ReconciliationState.ACQUISITO or reconciliation.movement_id is None:
        return []
    cond = cashed_by(reconciliation)
    if cond is None:
        return []
    collections = list(
        session.exec(
            select(Collection)
            .where(Collection.id_dominio == reconciliation.id_dominio, cond)
            .order_by(col(Collection.iuv), col(Collection.transfer_index))
        )
    )
    views = [
        v if v.reconciliation_id else replace(v, reconciliation_id=reconciliation.external_id)
        for v in _views(session, collections)
    ]
    if reconciliation.flow_id is not None:
        others = session.exec(
            select(ReportingLine)
            .where(
                ReportingLine.flow_id == reconciliation.flow_id,
                ReportingLine.state == LineState.ALTRO_INTERMEDIARIO,
            )
            .order_by(col(ReportingLine.line_index))
        )
        views += [
            CollectionView(
                collection=None,
                line=ln,
                receipt=None,
                position=None,
                item=None,
                tipo=TIPO_ALTRO,
                reconciliation_id=reconciliation.external_id,
            )
            for ln in others
        ]
    return views


@dataclass(frozen=True)
class RiconciliazioneFilter:
    """Filters of GET /riconciliazioni (days are Italian calendar days of the request)."""

    id_dominio: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    stato: str | None = None
    id_flusso: str | None = None
    iuv: str | None = None
    sct: str | None = None


def _page(stmt: Any, page: int, size: int) -> Any:
    return stmt.offset((page - 1) * size).limit(size)


def list_riconciliazioni(
    session: Session,
    *,
    filters: RiconciliazioneFilter,
    allowed_creditors: set[str] | None,
    page: int,
    size: int,
) -> tuple[int, list[tuple[Reconciliation, TreasuryMovement | None]]]:
    """Riconciliazioni (submitted and from the journal) the caller may see, newest first, and their count."""
    cond: list[Any] = []
    if allowed_creditors is not None:
        cond.append(col(Reconciliation.id_dominio).in_(sorted(allowed_creditors)))
    if filters.id_dominio:
        cond.append(Reconciliation.id_dominio == filters.id_dominio)
    if filters.data_da:
        cond.append(col(Reconciliation.created_at) >= day_start(filters.data_da))
    if filters.data_a:
        cond.append(col(Reconciliation.created_at) < day_start(filters.data_a + timedelta(days=1)))
    if filters.stato:
        cond.append(Reconciliation.state == filters.stato)
    if filters.id_flusso:
        cond.append(func.lower(Reconciliation.id_flusso) == filters.id_flusso.lower())
    if filters.iuv:
        cond.append(Reconciliation.iuv == filters.iuv)
    if filters.sct:
        cond.append(TreasuryMovement.bank_reference == filters.sct)
    base = (
        select(Reconciliation, TreasuryMovement)
        .outerjoin(TreasuryMovement, col(TreasuryMovement.id) == Reconciliation.movement_id)
        .where(*cond)
    )
    total = session.exec(select(func.count()).select_from(base.subquery())).one()
    rows = session.exec(
        _page(base.order_by(col(Reconciliation.created_at).desc(), col(Reconciliation.id).desc()), page, size)
    ).all()
    return int(total), [(r, m) for r, m in rows]


@dataclass(frozen=True)
class RiscossioneFilter:
    """Filters of GET /riscossioni (days are Italian calendar days of the payment)."""

    id_dominio: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    stato: str | None = None
    tipo: str | None = None
    iuv: str | None = None


def _collection_conditions(filters: RiscossioneFilter, allowed: set[str] | None) -> list[Any]:
    cond: list[Any] = []
    if allowed is not None:
        cond.append(col(Collection.id_dominio).in_(sorted(allowed)))
    if filters.id_dominio:
        cond.append(Collection.id_dominio == filters.id_dominio)
    if filters.data_da:
        cond.append(col(Collection.paid_at) >= day_start(filters.data_da))
    if filters.data_a:
        cond.append(col(Collection.paid_at) < day_start(filters.data_a + timedelta(days=1)))
    if filters.stato:
        cond.append(Collection.state == filters.stato)
    if filters.iuv:
        cond.append(Collection.iuv == filters.iuv)
    stamp = select(PositionItem.id).where(PositionItem.kind == ItemKind.STAMP)
    if filters.tipo == TIPO_MBT:
        cond.append(col(Collection.item_id).in_(stamp))
    elif filters.tipo == TIPO_ENTRATA:
        cond.append(or_(col(Collection.item_id).is_(None), col(Collection.item_id).not_in(stamp)))
    return cond


def _line_conditions(filters: RiscossioneFilter, allowed: set[str] | None) -> list[Any]:
    cond: list[Any] = [
        ReportingLine.state == LineState.ALTRO_INTERMEDIARIO,
        ReportingFlow.state != "OBSOLETA",
    ]
    if allowed is not None:
        cond.append(col(ReportingFlow.id_dominio).in_(sorted(allowed)))
    if filters.id_dominio:
        cond.append(ReportingFlow.id_dominio == filters.id_dominio)
    if filters.data_da:
        cond.append(col(ReportingLine.pay_date) >= filters.data_da)
    if filters.data_a:
        cond.append(col(ReportingLine.pay_date) <= filters.data_a)
    if filters.stato:
        cond.append(col(ReportingFlow.reconciled).is_(filters.stato == "INCASSATA"))
    if filters.iuv:
        cond.append(ReportingLine.iuv == filters.iuv)
    return cond


def list_riscossioni(
    session: Session, *, filters: RiscossioneFilter, allowed_creditors: set[str] | None, page: int, size: int
) -> tuple[int, list[CollectionView]]:
    """Riscossioni the caller may see: our collections (newest payment first), then other brokers' lines."""
    want_collections = filters.tipo in (None, TIPO_ENTRATA, TIPO_MBT)
    want_lines = filters.tipo in (None, TIPO_ALTRO)
    n_coll = n_lines = 0
    if want_collections:
        c_cond = _collection_conditions(filters, allowed_creditors)
        n_coll = int(session.exec(select(func.count()).select_from(Collection).where(*c_cond)).one())
    if want_lines:
        l_cond = _line_conditions(filters, allowed_creditors)
        n_lines = int(
            session.exec(
                select(func.count())
                .select_from(ReportingLine)
                .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
                .where(*l_cond)
            ).one()
        )
    start, end = (page - 1) * size, page * size
    views: list[CollectionView] = []
    if want_collections and start < n_coll:
        collections = list(
            session.exec(
                select(Collection)
                .where(*c_cond)
                .order_by(col(Collection.paid_at).desc(), col(Collection.id).desc())
                .offset(start)
                .limit(size)
            )
        )
        views += _views(session, collections)
    if want_lines and end > n_coll:
        offset = max(0, start - n_coll)
        rows = session.exec(
            select(ReportingLine, ReportingFlow)
            .join(ReportingFlow, col(ReportingFlow.id) == ReportingLine.flow_id)
            .where(*l_cond)
            .order_by(col(ReportingLine.pay_date).desc(), col(ReportingLine.id).desc())
            .offset(offset)
            .limit(size - len(views))
        )
        views += [
            CollectionView(
                collection=None,
                line=ln,
                receipt=None,
                position=None,
                item=None,
                tipo=TIPO_ALTRO,
                reconciliation_id=None,
            )
            for ln, _flow in rows
        ]
    return n_coll + n_lines, views


def flow_of_lines(session: Session, *, lines: list[ReportingLine]) -> dict[int, ReportingFlow]:
    """The flows of some reporting lines, by id."""
    ids = {ln.flow_id for ln in lines}
    return (
        {f.id or 0: f for f in session.exec(select(ReportingFlow).where(col(ReportingFlow.id).in_(ids)))}
        if ids
        else {}
    )


@dataclass(frozen=True)
class RicevutaFilter:
    """Filters of GET /ricevute (days are Italian calendar days of the payment)."""

    id_dominio: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    esito: str | None = None
    iuv: str | None = None
    id_ricevuta: str | None = None


def list_ricevute(
    session: Session, *, filters: RicevutaFilter, allowed_creditors: set[str] | None, page: int, size: int
) -> tuple[int, list[tuple[Receipt, Position | None]]]:
    """Receipts the caller may see, newest payment first, with their positions, and their count."""
    cond: list[Any] = []
    if allowed_creditors is not None:
        cond.append(col(Receipt.id_dominio).in_(sorted(allowed_creditors)))
    if filters.id_dominio:
        cond.append(Receipt.id_dominio == filters.id_dominio)
    paid = func.coalesce(Receipt.payment_at, Receipt.received_at)
    if filters.data_da:
        cond.append(paid >= day_start(filters.data_da))
    if filters.data_a:
        cond.append(paid < day_start(filters.data_a + timedelta(days=1)))
    if filters.esito:
        cond.append(Receipt.outcome == filters.esito)
    if filters.iuv:
        cond.append(Receipt.iuv == filters.iuv)
    if filters.id_ricevuta:
        cond.append(Receipt.receipt_id == filters.id_ricevuta)
    total = session.exec(select(func.count()).select_from(Receipt).where(*cond)).one()
    rows = session.exec(
        select(Receipt, Position)
        .outerjoin(Position, and_(col(Position.id) == Receipt.position_id))
        .where(*cond)
        .order_by(col(Receipt.payment_at).desc(), col(Receipt.id).desc())
        .offset((page - 1) * size)
        .limit(size)
    ).all()
    return int(total), [(r, p) for r, p in rows]
