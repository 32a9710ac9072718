"""Payments started on the EC's portal (API Pagamento): the route of a cart and the state of a session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rules.positions import PAID_STATES
from rules.rpt import RPT_ERRORE_INVIO_A_NODO, RPT_RIFIUTATA_NODO, RPT_SCADUTA, RT_ACCETTATA_PA

MAX_CART = 5

IN_CORSO = "IN_CORSO"
ESEGUITO = "ESEGUITO"
NON_ESEGUITO = "NON_ESEGUITO"
ESEGUITO_PARZIALE = "ESEGUITO_PARZIALE"
ANNULLATO = "ANNULLATO"
FALLITO = "FALLITO"

CHECKOUT = "CHECKOUT"
RPT = "RPT"

# what became of one notice of the session
_PAID, _UNPAID, _NOT_SENT, _OPEN = "PAID", "UNPAID", "NOT_SENT", "OPEN"


@dataclass(frozen=True)
class NoticeAttempt:
    """One notice of a session: its attempt and the position it pays."""

    kind: str
    attempt_state: str
    position_state: str | None
    expires_at: datetime | None
    paid_by_attempt: bool | None = None  # RPT: whether this attempt's RT says paid (None: no RT yet)


def payment_mode(*, checkout: bool, legacy_rpt: bool) -> str | None:
    """How a station's ECs take payments started on their portal: Checkout first, legacy RPT otherwise."""
    if checkout:
        return CHECKOUT
    if legacy_rpt:
        return RPT
    return None


def _notice_outcome(n: NoticeAttempt, now: datetime) -> str:
    if n.kind == RPT:
        if n.attempt_state in (RPT_RIFIUTATA_NODO, RPT_ERRORE_INVIO_A_NODO):
            # a send that failed may still be found at the Node by the recovery, which then moves the state on
            return _NOT_SENT
        if n.attempt_state == RT_ACCETTATA_PA:
            return _PAID if n.paid_by_attempt else _UNPAID
        if n.attempt_state == RPT_SCADUTA:
            return _UNPAID
        return _OPEN
    if n.position_state in PAID_STATES:
        return _PAID  # the station's receipt closed the attempt (COMPLETED) and paid the position
    if n.attempt_state == "FAILED":
        return _NOT_SENT
    if n.attempt_state in ("EXPIRED", "COMPLETED") or (
        n.attempt_state == "PENDING" and n.expires_at is not None and n.expires_at < now
    ):
        return _UNPAID
    return _OPEN


def session_state(notices: list[NoticeAttempt], *, now: datetime) -> str:
    """GovPay's state of a payment session, from its notices' attempts and positions."""
    if not notices:
        raise ValueError("a session has at least one notice")
    outcomes = [_notice_outcome(n, now) for n in notices]
    if all(o == _NOT_SENT for o in outcomes):
        return FALLITO
    if _OPEN in outcomes:
        return IN_CORSO
    paid = outcomes.count(_PAID)
    if paid == len(outcomes):
        return ESEGUITO
    if paid:
        return ESEGUITO_PARZIALE
    if all(n.position_state == "ANNULLATA" for n in notices):
        return ANNULLATO
    return NON_ESEGUITO
