"""Persistence of portal payments: the attempts of a session (Checkout or RPT), RTs applied, RPT recovery."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from lxml import etree
from sqlalchemy import or_
from sqlmodel import Session, col, select

from models.payments import AttemptKind, AttemptState, PaymentAttempt, Receipt, ReceiptSource
from models.positions import Position, PositionItem
from models.types import utcnow
from rules.rpt import (
    MAX_RECOVERY_ATTEMPTS,
    RECOVERY_BASE_DELAY,
    RPT_OPEN_STATES,
    RT_ACCETTATA_PA,
    RptData,
    RptSubject,
    RptTransfer,
    RtData,
    can_move,
    dati_specifici_riscossione,
    receipt_from_rt,
    recovery_delay,
)
from rules.station import remittance_for
from rules.xmlsafe import parse_xml
from store.payments import accept_receipt

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
CHECKOUT_TTL = timedelta(minutes=30)
RPT_TTL = timedelta(days=1)

# what apply_rt did
RT_APPLIED = "APPLIED"  # a new RT, stored and applied
RT_ALREADY = "ALREADY"  # the same RT again: nothing changes
RT_DUPLICATE = "DUPLICATE"  # another RT for an attempt that has one already (PAA_RT_DUPLICATA)
RT_UNEXPECTED = "UNEXPECTED"  # the attempt cannot take an RT (refused by the Node)


def new_payment_id() -> str:
    """A payment (session) id: 32 hex characters, also used as identificativoCarrello and idCart."""
    return uuid.uuid4().hex


def new_ccp() -> str:
    """A codiceContestoPagamento (1–35 characters), unique per attempt."""
    return uuid.uuid4().hex


def checkout_note(payment_id: str) -> str:
    """The idCart handed to Checkout (``record_attempt`` links a ``cart:`` paymentNote by it)."""
    return f"cart:{payment_id}"


def lock_attempt(session: Session, *, attempt_id: int) -> PaymentAttempt | None:
    """An attempt, row-locked on PostgreSQL: an RT pushed and one recovered are applied in turn."""
    stmt = select(PaymentAttempt).where(PaymentAttempt.id == attempt_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.exec(stmt).first()


def create_attempts(
    session: Session,
    *,
    positions: list[Position],
    kind: AttemptKind,
    payment_id: str,
    now: datetime | None = None,
) -> list[PaymentAttempt]:
    """One attempt per notice of a new session (Checkout: PENDING; RPT: RPT_ATTIVATA with a CCP)."""
    now = now or utcnow()
    rpt = kind == AttemptKind.RPT
    attempts = [
        PaymentAttempt(
            kind=kind,
            state=AttemptState.RPT_ATTIVATA if rpt else AttemptState.PENDING,
            id_dominio=p.id_dominio,
            iuv=p.iuv or "",
            nav=p.nav,
            position_id=p.id,
            amount=p.amount,
            ccp=new_ccp() if rpt else None,
            cart_id=payment_id,
            payment_note=None if rpt else checkout_note(payment_id),
            requested_at=now,
            expires_at=now + (RPT_TTL if rpt else CHECKOUT_TTL),
        )
        for p in positions
    ]
    session.add_all(attempts)
    session.flush()
    return attempts


def record_sent(
    session: Session,
    *,
    attempts: list[PaymentAttempt],
    state: AttemptState | None = None,
    session_id: str | None = None,
    redirect_url: str | None = None,
    error: str | None = None,
) -> None:
    """What the Node or Checkout answered for a session: state, session id, redirect, error."""
    for a in attempts:
        if state is not None and (a.kind != AttemptKind.RPT or can_move(a.state, state)):
            a.state = state
        if session_id:
            a.session_id = session_id[:100]
        if redirect_url:
            a.redirect_url = redirect_url[:500]
        a.last_error = error[:500] if error else None
        session.add(a)
    session.flush()


def session_attempts(
    session: Session, *, payment_id: str | None = None, node_session: str | None = None
) -> list[PaymentAttempt]:
    """The attempts of a portal session, by our id or by the Node's/Checkout's session id."""
    stmt = select(PaymentAttempt).where(col(PaymentAttempt.kind).in_([AttemptKind.CHECKOUT, AttemptKind.RPT]))
    if payment_id is not None:
        stmt = stmt.where(PaymentAttempt.cart_id == payment_id)
    elif node_session is not None:
        stmt = stmt.where(PaymentAttempt.session_id == node_session)
    else:
        raise ValueError("payment_id or node_session")
    return list(session.exec(stmt.order_by(col(PaymentAttempt.id))).all())


def station_attempts(session: Session, *, payment_id: str, checkout_cart: str | None) -> list[PaymentAttempt]:
    """The station's attempts (paGetPayment) of a Checkout session: by ``cart:<id>`` or Checkout's cart."""
    notes = [checkout_note(payment_id)] + ([checkout_cart] if checkout_cart else [])
    stmt = select(PaymentAttempt).where(
        PaymentAttempt.kind == AttemptKind.NODE,
        or_(col(PaymentAttempt.cart_id).in_(notes), col(PaymentAttempt.payment_note).in_(notes)),
    )
    return list(session.exec(stmt.order_by(col(PaymentAttempt.id))).all())


def receipts_of(session: Session, *, attempt_ids: list[int]) -> dict[int, Receipt]:
    """The RT applied to each RPT attempt, by attempt id."""
    if not attempt_ids:
        return {}
    rows = session.exec(select(Receipt).where(col(Receipt.attempt_id).in_(attempt_ids))).all()
    return {r.attempt_id: r for r in rows if r.attempt_id is not None}


def open_rpt_positions(session: Session, *, position_ids: list[int], now: datetime) -> set[int]:
    """The positions among ``position_ids`` with an RPT the debtor may be paying (no RT, not expired).

    A send that failed (RPT_ERRORE_INVIO_A_NODO) does not count: the debtor never got its redirect.
    """
    if not position_ids:
        return set()
    stmt = select(PaymentAttempt.position_id).where(
        PaymentAttempt.kind == AttemptKind.RPT,
        col(PaymentAttempt.position_id).in_(position_ids),
        col(PaymentAttempt.state).in_([AttemptState.RPT_ATTIVATA, AttemptState.RPT_ACCETTATA_NODO]),
        or_(col(PaymentAttempt.expires_at).is_(None), col(PaymentAttempt.expires_at) > now),
    )
    return {i for i in session.exec(stmt).all() if i is not None}


def find_rpt_attempt(session: Session, *, id_dominio: str, iuv: str, ccp: str) -> PaymentAttempt | None:
    """The RPT attempt of (EC, IUV, CCP), row-locked on PostgreSQL."""
    stmt = select(PaymentAttempt).where(
        PaymentAttempt.kind == AttemptKind.RPT,
        PaymentAttempt.id_dominio == id_dominio,
        PaymentAttempt.iuv == iuv,
        PaymentAttempt.ccp == ccp,
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.exec(stmt).first()


def rpt_data_for(
    *,
    position: Position,
    items: list[PositionItem],
    creditor_name: str,
    station_id: str,
    ccp: str,
    message_id: str,
    now: datetime,
    taxonomy: str | None,
    payer: RptSubject | None = None,
    authentication: str = "N/A",
    payment_date: date | None = None,
) -> RptData:
    """The RPT of one position (single beneficiary: every voce credits the position's EC)."""
    iuv = position.iuv or ""
    transfers = tuple(
        RptTransfer(
            amount=i.amount,
            remittance=remittance_for(iuv=iuv, amount=i.amount, description=i.description),
            dati_specifici=dati_specifici_riscossione(
                accounting_type=i.accounting_type,
                accounting_code=i.accounting_code,
                taxonomy=position.taxonomy or taxonomy,
            ),
            iban=i.iban,
            support_iban=i.support_iban,
            stamp=(i.stamp_type or "", i.stamp_hash or "", i.stamp_province or "")
            if i.kind == "STAMP"
            else None,
        )
        for i in items
    )
    debtor = RptSubject(
        kind=position.debtor_type,
        identifier=position.debtor_id,
        name=position.debtor_name,
        address=position.debtor_address,
        civic=position.debtor_civic,
        cap=position.debtor_cap,
        locality=position.debtor_locality,
        province=position.debtor_province,
        nation=position.debtor_nation,
        email=position.debtor_email,
    )
    return RptData(
        id_dominio=position.id_dominio,
        id_stazione=station_id,
        message_id=message_id,
        requested_at=now,
        creditor_name=creditor_name,
        iuv=iuv,
        ccp=ccp,
        debtor=debtor,
        transfers=transfers,
        payment_date=payment_date or now.date(),
        unit_code=position.unit_code,
        payer=payer,
        authentication=authentication,
    )


@dataclass(frozen=True)
class RtApplied:
    """What became of an RT (APPLIED, ALREADY, DUPLICATE, UNEXPECTED) and of its receipt."""

    status: str
    receipt_status: str | None = (
        None  # accept_receipt's: ACCEPTED, ALREADY, DUPLICATE (paid twice), KO, UNKNOWN
    )
    paid: bool = False


def _envelope(rt_xml: bytes) -> str:
    # Receipt.payload holds a SOAP envelope around the document (GET /rpp/.../rt answers its body as XML)
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soapenv": SOAP_NS})
    etree.SubElement(env, f"{{{SOAP_NS}}}Body").append(parse_xml(rt_xml))
    return etree.tostring(env, encoding="unicode")


def apply_rt(
    session: Session,
    *,
    attempt: PaymentAttempt,
    rt: RtData,
    rt_xml: bytes,
    source: ReceiptSource,
    now: datetime | None = None,
) -> RtApplied:
    """Store an RT once and apply it through ``accept_receipt``; the attempt becomes RT_ACCETTATA_PA.

    The caller has checked the RT against the schema and its header, and holds the attempt's row lock.
    """
    now = now or utcnow()
    existing = session.exec(select(Receipt).where(Receipt.attempt_id == attempt.id)).first()
    if existing is not None:
        return RtApplied(
            RT_ALREADY if existing.receipt_id == rt.message_id else RT_DUPLICATE,
            paid=existing.outcome == "OK",
        )
    if not can_move(attempt.state, RT_ACCETTATA_PA):
        return RtApplied(RT_UNEXPECTED)
    items = session.exec(select(PositionItem).where(PositionItem.position_id == attempt.position_id)).all()
    receipt = receipt_from_rt(
        rt, nav=attempt.nav or "", ibans={i.item_index: i.iban for i in items}, payload=_envelope(rt_xml)
    )
    outcome = accept_receipt(session, receipt=receipt, source=source, now=now)
    row = session.get(Receipt, outcome.receipt_pk) if outcome.receipt_pk else None
    if row is not None and row.attempt_id is None:
        row.attempt_id, row.ccp = attempt.id, attempt.ccp
        session.add(row)
    attempt.state = RT_ACCETTATA_PA
    attempt.completed_at = now
    attempt.psp_id = (rt.psp_id or None) and rt.psp_id[:35]
    attempt.next_recovery_at = None
    attempt.last_error = None if rt.paid else f"RT negativa (codiceEsitoPagamento {rt.outcome_code})"
    session.add(attempt)
    session.flush()
    return RtApplied(RT_APPLIED, receipt_status=outcome.status, paid=rt.paid and outcome.status != "KO")


def due_for_recovery(
    session: Session,
    *,
    now: datetime | None = None,
    first_delay: timedelta = RECOVERY_BASE_DELAY,
    max_attempts: int = MAX_RECOVERY_ATTEMPTS,
    limit: int = 200,
) -> list[int]:
    """Ids of the RPT attempts still without an RT whose turn to ask the Node has come, oldest first."""
    now = now or utcnow()
    stmt = (
        select(PaymentAttempt.id)
        .where(
            PaymentAttempt.kind == AttemptKind.RPT,
            col(PaymentAttempt.state).in_(RPT_OPEN_STATES),
            PaymentAttempt.recovery_attempts < max_attempts,
            or_(
                col(PaymentAttempt.next_recovery_at) <= now,
                (col(PaymentAttempt.next_recovery_at).is_(None))
                & (col(PaymentAttempt.requested_at) <= now - first_delay),
            ),
        )
        .order_by(col(PaymentAttempt.requested_at), col(PaymentAttempt.id))
        .limit(limit)
    )
    return [i for i in session.exec(stmt).all() if i is not None]


def record_recovery(
    session: Session,
    *,
    attempt: PaymentAttempt,
    now: datetime,
    state: str | None = None,
    error: str | None = None,
    give_up: bool = False,
    base: timedelta = RECOVERY_BASE_DELAY,
    max_attempts: int = MAX_RECOVERY_ATTEMPTS,
) -> None:
    """One recovery try without an RT: count it, move the state if told, plan the next try (or stop)."""
    attempt.recovery_attempts += 1
    if state is not None and can_move(attempt.state, state):
        attempt.state = state
    attempt.last_error = error[:500] if error else None
    if give_up or attempt.recovery_attempts >= max_attempts or attempt.state not in RPT_OPEN_STATES:
        attempt.next_recovery_at = None
        if give_up:
            attempt.recovery_attempts = max(attempt.recovery_attempts, max_attempts)
    else:
        attempt.next_recovery_at = now + recovery_delay(attempts=attempt.recovery_attempts, base=base)
    session.add(attempt)
    session.flush()
