"""Tasks of the receipts flow: expire stale attempts, plan the recovery, recover one batch, report."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaError, PagopaNotFoundError
from connectors.pagopa.receipts import ReceiptsClient
from models.db import get_engine
from models.types import utcnow
from rules.receipts import ReceiptIn
from store import receipts as store
from store.payments import expire_attempts
from store.receipts import RecoveryItem, RecoveryKind

ARTIFACT_ROWS = 200
BUSY = "BUSY"  # another run holds the item's claim
CLAIM_MARGIN = timedelta(seconds=60)
_STATUS_OF_OUTCOME = {
    "ACCEPTED": "RECOVERED",
    "ALREADY": "ALREADY",
    "DUPLICATE": "DUPLICATE",
    "UNKNOWN": "UNKNOWN",
    "KO": "KO",
}


class RecoveryResult(BaseModel):
    """What asking pagoPA for one missing receipt gave.

    ``status``: RECOVERED (new receipt applied), ALREADY (we had it), DUPLICATE (a second payment, position
    ANOMALA), UNKNOWN/KO (stored, not applied), NOT_FOUND (404: stop asking), RETRY (transient, backed off),
    REFUSED (pagoPA's answer unusable), FAILED (our side).
    """

    model_config = ConfigDict(frozen=True)

    kind: RecoveryKind
    id_dominio: str
    iuv: str
    iur: str | None = None
    status: str
    receipt_id: str | None = None
    source: str | None = None
    error: str | None = None


def _transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry only a lost or busy database connection."""
    return isinstance(state.result(raise_on_failure=False), OperationalError)


def _result(item: RecoveryItem, status: str, **extra: Any) -> RecoveryResult:
    return RecoveryResult(
        kind=item.kind, id_dominio=item.id_dominio, iuv=item.iuv, iur=item.iur, status=status, **extra
    )


def _ask(client: ReceiptsClient, item: RecoveryItem) -> tuple[ReceiptIn, str]:
    """The receipt and the API that gave it; a line falls back to GPD receipts when Biz-Events has none."""
    if item.kind == RecoveryKind.LINE and item.iur:
        try:
            return client.get_biz_event_receipt(
                fiscal_code=item.id_dominio, iur=item.iur, iuv=item.iuv
            ), "BIZ_EVENTS"
        except PagopaNotFoundError:
            pass  # Biz-Events may know the payment token only, not the PSP's IUR: ask by IUV
    return client.get_gpd_receipt(fiscal_code=item.id_dominio, iuv=item.iuv), "GPD"


def recover_item(
    *,
    client: ReceiptsClient,
    session_factory: Callable[[], AbstractContextManager[Session]],
    item: RecoveryItem,
    now: datetime,
) -> RecoveryResult:
    """Ask pagoPA for one missing receipt and apply or record the answer, in a transaction of its own.

    The item is claimed first (``store.receipts.claim_item``): an item another run is asking about is BUSY and
    left to it; the claim is released with the outcome, in the same transaction.
    """
    with session_factory() as session:
        claimed = store.claim_item(session, item=item, now=now, until=max(now, utcnow()) + claim_lease())
        session.commit()
    if claimed is None:
        return _result(item, BUSY)
    try:
        return _recover_claimed(client=client, session_factory=session_factory, item=claimed, now=now)
    except BaseException:
        with session_factory() as session:  # the outcome was not recorded: let the next run ask again
            store.release_item(session, item=claimed)
            session.commit()
        raise


def claim_lease() -> timedelta:
    """How long an item's claim lasts: each of its calls timing out on every attempt, plus a margin."""
    cfg = get_endpoints()
    per_call = cfg.call_attempts * (cfg.timeout_seconds + cfg.retry_backoff_seconds * 2**cfg.call_attempts)
    return timedelta(seconds=2 * per_call) + CLAIM_MARGIN


def _recover_claimed(
    *,
    client: ReceiptsClient,
    session_factory: Callable[[], AbstractContextManager[Session]],
    item: RecoveryItem,
    now: datetime,
) -> RecoveryResult:
    try:
        receipt, source = _ask(client, item)
    except PagopaNotFoundError as exc:
        _record_attempts(
            session_factory, item, now=now, stop=True, error=f"not found at pagoPA: {exc.reason}"
        )
        return _result(item, "NOT_FOUND", error=exc.reason)
    except PagopaError as exc:
        _record_attempts(session_factory, item, now=now, stop=False, error=str(exc))
        return _result(item, "RETRY" if exc.retriable else "REFUSED", error=str(exc))
    problems = receipt.problems()
    if problems:
        error = f"receipt {receipt.receipt_id} refused: " + "; ".join(problems)
        _record_attempts(session_factory, item, now=now, stop=False, error=error)
        return _result(item, "REFUSED", receipt_id=receipt.receipt_id, source=source, error=error)
    with session_factory() as session:
        outcome = store.apply_recovered(
            session, item=item, receipt=receipt, now=now, link_known=source == "BIZ_EVENTS"
        )
        store.release_item(session, item=item)
        session.commit()
    return _result(
        item,
        _STATUS_OF_OUTCOME.get(outcome.status, outcome.status),
        receipt_id=receipt.receipt_id,
        source=source,
    )


def _record_attempts(
    session_factory: Callable[[], AbstractContextManager[Session]],
    item: RecoveryItem,
    *,
    now: datetime,
    stop: bool,
    error: str,
) -> None:
    with session_factory() as session:
        # lines keep no memo of a failed try (the run is the memo): only their claim is released
        if item.kind == RecoveryKind.ATTEMPT:
            store.record_attempts_failure(session, attempt_ids=item.ids, now=now, stop=stop, error=error)
        store.release_item(session, item=item)
        session.commit()


def _session() -> Session:
    return Session(get_engine(), expire_on_commit=False)


@task(
    name="expire-payment-attempts",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
)
def expire_stale_attempts(now: datetime) -> int:
    """Mark attempts with no receipt 30 minutes after paGetPayment as EXPIRED."""
    with _session() as session:
        expired = expire_attempts(session, now=now)
        session.commit()
    get_run_logger().info("%d payment attempt(s) expired", expired)
    return expired


@task(
    name="plan-receipt-recovery",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
)
def plan_recoveries(now: datetime, limit: int) -> list[RecoveryItem]:
    """The missing receipts to ask pagoPA for in this run (each key once)."""
    with _session() as session:
        items = store.due_recoveries(session, now=now, limit=limit)
    kinds = Counter(i.kind for i in items)
    get_run_logger().info(
        "receipts to recover: %d reporting line key(s), %d expired attempt key(s)",
        kinds[RecoveryKind.LINE],
        kinds[RecoveryKind.ATTEMPT],
    )
    return items


@task(name="recover-receipts", task_run_name="recover-receipts-{batch_no}", cache_policy=NO_CACHE)
def recover_receipts(items: list[RecoveryItem], now: datetime, batch_no: int = 0) -> list[RecoveryResult]:
    """Ask pagoPA for a batch of missing receipts, one after the other; one item never stops the batch."""
    logger = get_run_logger()
    results: list[RecoveryResult] = []
    with ReceiptsClient.from_settings() as client:
        for item in items:
            try:
                result = recover_item(client=client, session_factory=_session, item=item, now=now)
            except Exception as exc:  # noqa: BLE001 - recorded in the summary; the other items go on
                logging.getLogger(__name__).exception("recovery of %s/%s failed", item.id_dominio, item.iuv)
                result = _result(item, "FAILED", error=f"{type(exc).__name__}: {exc}"[:500])
            logger.info(
                "receipt recovery %s %s/%s: %s%s",
                item.kind,
                item.id_dominio,
                item.iuv,
                result.status,
                f" ({result.receipt_id})" if result.receipt_id else "",
            )
            if result.status == BUSY:  # another run is asking pagoPA for it: not ours to count
                continue
            results.append(result)
    return results


def summary_markdown(*, expired: int, results: Sequence[RecoveryResult]) -> str:
    """The run's summary as markdown: counts by kind and status, then the items that need a look."""
    counts = Counter((r.kind.value, r.status) for r in results)
    lines = [
        "# Receipts",
        "",
        f"Attempts expired: **{expired}**. Receipts asked for: **{len(results)}**.",
        "",
        "| kind | status | count |",
        "|---|---|---|",
    ]
    lines += [f"| {kind} | {status} | {n} |" for (kind, status), n in sorted(counts.items())]
    odd = [r for r in results if r.status not in ("RECOVERED", "ALREADY")]
    if odd:
        lines += [
            "",
            "| kind | EC | IUV | IUR | status | receiptId | error |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.kind.value} | {r.id_dominio} | {r.iuv} | {r.iur or ''} | {r.status} "
            f"| {r.receipt_id or ''} "
            f"| {(r.error or '').replace('|', '/')[:200]} |"
            for r in odd[:ARTIFACT_ROWS]
        ]
        if len(odd) > ARTIFACT_ROWS:
            lines.append(
                f"\n…and {len(odd) - ARTIFACT_ROWS} more (see the event journal, component receipts)."
            )
    return "\n".join(lines) + "\n"


@task(name="publish-receipts-summary", cache_policy=NO_CACHE)
def publish_summary(expired: int, results: list[RecoveryResult]) -> None:
    """The run's summary as a Prefect markdown artifact."""
    create_markdown_artifact(
        key="receipts-recovery",
        markdown=summary_markdown(expired=expired, results=results),
        description="Expired attempts and receipts recovered from pagoPA",
    )
