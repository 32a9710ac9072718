"""Recovery of legacy RPTs left without an RT: ask the Node the RPT's state, then a copy of its RT.

``recover_pending_rpts`` is a plain function (tested without Prefect) that the ``receipts`` flow calls through
the ``recover-pending-rpts`` task. Each attempt still open (RPT_ATTIVATA, RPT_ACCETTATA_NODO,
RPT_ERRORE_INVIO_A_NODO) is asked about at most ``max_attempts`` times, waiting ``base_delay`` × 2ⁿ between
tries (``recovery_attempts``, ``next_recovery_at``); an RT found is applied exactly like one pushed to
``paaInviaRT``; an RPT the Node refused becomes RPT_RIFIUTATA_NODO; one still unpaid after the last try
becomes RPT_SCADUTA (a late RT still closes it). Each attempt is handled in a transaction of its own, holding
its row lock, so a re-run or a second worker converges.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaError, PagopaNotFoundError, PagopaSchemaError
from connectors.pagopa.nodo_rpt import NodoRptClient
from connectors.secrets import SecretNotFoundError, resolve_secret
from models.db import get_engine
from models.payments import PaymentAttempt, ReceiptSource
from models.registry import Creditor, Station
from models.types import utcnow
from rules.rpt import (
    MAX_RECOVERY_ATTEMPTS,
    NODE_HAS_RT,
    NODE_REFUSED,
    RECOVERY_BASE_DELAY,
    RPT_ACCETTATA_NODO,
    RPT_ERRORE_INVIO_A_NODO,
    RPT_OPEN_STATES,
    RPT_RIFIUTATA_NODO,
    RPT_SCADUTA,
    RptError,
    node_state_meaning,
    parse_rt,
    rt_problems,
)
from store.rpt import RT_APPLIED, RT_DUPLICATE, apply_rt, due_for_recovery, lock_attempt, record_recovery

Log = logging.Logger | logging.LoggerAdapter[Any]
ClientFactory = Callable[[Station], NodoRptClient]

RECOVERED = "RECOVERED"  # an RT was found and applied
REFUSED = "REFUSED"  # the Node refused the RPT
EXPIRED = "EXPIRED"  # still no RT after the last try: RPT_SCADUTA
PENDING = "PENDING"  # no RT yet: asked again later
UNKNOWN = "UNKNOWN"  # the Node never got the RPT: no more tries
FAILED = "FAILED"  # the question itself failed (Node down, bad answer): counted, asked again later
SKIPPED = "SKIPPED"  # handled meanwhile by someone else


class RecoverySummary(BaseModel):
    """What one recovery run did, by outcome."""

    model_config = ConfigDict(frozen=True)

    checked: int
    outcomes: dict[str, int]


def station_client(station: Station) -> NodoRptClient:
    """A Node RPT client authenticated as the station (password from ``Station.password_ref``)."""
    cfg = get_endpoints()
    password = resolve_secret(station.password_ref)
    if password is None:
        raise PagopaSchemaError(
            f"station {station.id_stazione} has no password_ref", operation="configuration"
        )
    return NodoRptClient(
        url=cfg.nodo_url,
        broker_id=station.id_intermediario,
        station_id=station.id_stazione,
        password=password,
        timeout=cfg.timeout_seconds,
        attempts=cfg.call_attempts,
        backoff=cfg.retry_backoff_seconds,
    )


def _station_of(session: Session, attempt: PaymentAttempt) -> Station | None:
    return session.exec(
        select(Station)
        .join(Creditor, Creditor.id_stazione == Station.id_stazione)  # type: ignore[arg-type]
        .where(Creditor.id_dominio == attempt.id_dominio)
    ).first()


def _recover_one(
    session: Session,
    attempt: PaymentAttempt,
    nodo: NodoRptClient,
    *,
    now: datetime,
    base_delay: timedelta,
    max_attempts: int,
) -> str:
    keys = {"id_dominio": attempt.id_dominio, "iuv": attempt.iuv, "ccp": attempt.ccp or ""}
    last_try = attempt.recovery_attempts + 1 >= max_attempts

    def again(error: str) -> str:
        # the Node holds the RPT and has no RT yet: after the last try the attempt is given up on
        record_recovery(
            session,
            attempt=attempt,
            now=now,
            state=RPT_SCADUTA if last_try else RPT_ACCETTATA_NODO,
            error=error,
            base=base_delay,
            max_attempts=max_attempts,
        )
        return EXPIRED if last_try else PENDING

    try:
        status = nodo.get_status(**keys)
    except PagopaNotFoundError as exc:
        # the Node never got it: nothing can be paid, and asking again will not change that
        record_recovery(
            session,
            attempt=attempt,
            now=now,
            state=RPT_ERRORE_INVIO_A_NODO,
            error=f"RPT sconosciuta al Nodo: {exc.reason}",
            give_up=True,
            max_attempts=max_attempts,
        )
        return UNKNOWN
    meaning = node_state_meaning(status.state)
    if meaning == NODE_REFUSED:
        record_recovery(
            session,
            attempt=attempt,
            now=now,
            state=RPT_RIFIUTATA_NODO,
            error=status.state,
            max_attempts=max_attempts,
        )
        return REFUSED
    if meaning != NODE_HAS_RT:
        return again(f"stato al Nodo {status.state}")
    try:
        xml = nodo.get_rt_copy(**keys)
    except PagopaNotFoundError:
        return again(f"stato al Nodo {status.state}, RT non ancora disponibile")
    try:
        rt = parse_rt(xml)
    except RptError as exc:
        raise PagopaSchemaError(str(exc), operation="nodoChiediCopiaRT") from exc
    problems = rt_problems(
        rt, id_dominio=attempt.id_dominio, iuv=attempt.iuv, ccp=attempt.ccp or "", amount=attempt.amount
    )
    if problems:
        raise PagopaSchemaError("; ".join(problems), operation="nodoChiediCopiaRT")
    applied = apply_rt(session, attempt=attempt, rt=rt, rt_xml=xml, source=ReceiptSource.PULL, now=now)
    if applied.status == RT_DUPLICATE:
        raise PagopaSchemaError(
            f"the Node's RT {rt.message_id} differs from the one stored", operation="nodoChiediCopiaRT"
        )
    return RECOVERED if applied.status == RT_APPLIED else SKIPPED


def recover_pending_rpts(
    *,
    now: datetime | None = None,
    limit: int = 200,
    max_attempts: int = MAX_RECOVERY_ATTEMPTS,
    base_delay: timedelta = RECOVERY_BASE_DELAY,
    first_delay: timedelta | None = None,
    client_factory: ClientFactory = station_client,
    logger: Log | None = None,
) -> RecoverySummary:
    """Ask the Node about the RPT attempts whose turn has come; apply the RTs found."""
    log = logger or logging.getLogger(__name__)
    now = now or utcnow()
    with Session(get_engine()) as session:
        ids = due_for_recovery(
            session,
            now=now,
            first_delay=base_delay if first_delay is None else first_delay,
            max_attempts=max_attempts,
            limit=limit,
        )
    outcomes: Counter[str] = Counter()
    clients: dict[str, NodoRptClient] = {}
    try:
        for attempt_id in ids:
            with Session(get_engine(), expire_on_commit=False) as session:
                attempt = lock_attempt(session, attempt_id=attempt_id)
                if (
                    attempt is None
                    or attempt.state not in RPT_OPEN_STATES
                    or attempt.recovery_attempts >= max_attempts
                ):
                    outcomes[SKIPPED] += 1
                    continue
                try:
                    station = _station_of(session, attempt)
                    if station is None:
                        raise PagopaSchemaError(
                            f"no station serves {attempt.id_dominio}", operation="configuration"
                        )
                    if station.id_stazione not in clients:
                        clients[station.id_stazione] = client_factory(station)
                    outcome = _recover_one(
                        session,
                        attempt,
                        clients[station.id_stazione],
                        now=now,
                        base_delay=base_delay,
                        max_attempts=max_attempts,
                    )
                except (PagopaError, SecretNotFoundError) as exc:
                    session.rollback()
                    attempt = lock_attempt(session, attempt_id=attempt_id)
                    assert attempt is not None
                    last_try = attempt.recovery_attempts + 1 >= max_attempts
                    record_recovery(
                        session,
                        attempt=attempt,
                        now=now,
                        error=f"recupero non riuscito: {exc}",
                        state=RPT_SCADUTA if last_try and attempt.state == RPT_ACCETTATA_NODO else None,
                        base=base_delay,
                        max_attempts=max_attempts,
                    )
                    outcome = FAILED
                    log.warning(
                        "RPT %s/%s/%s: recovery failed (%s)",
                        attempt.id_dominio,
                        attempt.iuv,
                        attempt.ccp,
                        exc,
                    )
                session.commit()
                outcomes[outcome] += 1
                log.info(
                    "RPT %s/%s/%s: %s (try %d)",
                    attempt.id_dominio,
                    attempt.iuv,
                    attempt.ccp,
                    outcome,
                    attempt.recovery_attempts,
                )
    finally:
        for client in clients.values():
            client.close()
    summary = RecoverySummary(checked=len(ids), outcomes=dict(outcomes))
    log.info("RPT recovery: %d checked, %s", summary.checked, summary.outcomes or "nothing to do")
    return summary


def _retry_on_database(_task: Any, _run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, OperationalError)


@task(
    name="recover-pending-rpts",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_on_database,
)
def recover_pending_rpts_task(
    now: datetime | None = None, limit: int = 200, max_attempts: int = MAX_RECOVERY_ATTEMPTS
) -> RecoverySummary:
    """Recover the RTs of legacy RPTs left pending (one batch of at most ``limit`` attempts)."""
    return recover_pending_rpts(now=now, limit=limit, max_attempts=max_attempts, logger=get_run_logger())
