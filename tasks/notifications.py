"""Tasks of the notify-applications flow: claim due notifications, deliver them, record the results."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from connectors.ente.notifications import (
    AppEndpoint,
    Delivery,
    NotificationClient,
    RicevutaMessage,
    endpoint_for,
    ricevuta_message,
)
from connectors.secrets import SecretNotFoundError
from models.db import get_engine
from store import notifications as store
from store.notifications import Claim

LEASE_MARGIN = timedelta(seconds=60)
ARTIFACT_ROWS = 200


class NotificationFailure(BaseModel):
    """One delivery that did not succeed."""

    model_config = ConfigDict(frozen=True)

    id: int
    id_a2a: str
    iuv: str
    status: int | None = None
    error: str | None = None


class BatchOutcome(BaseModel):
    """What one batch did."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    no_endpoint: int = 0
    lost: int = 0  # results not recorded because the claim had run out and another worker held the row
    failures: list[NotificationFailure] = Field(default_factory=list)


def lease_for(*, batch_size: int, concurrency: int, timeout: float) -> timedelta:
    """How long a claim lasts: enough for every delivery of the batch to time out, plus a margin."""
    rounds = math.ceil(batch_size / max(1, concurrency))
    return timedelta(seconds=timeout * rounds) + LEASE_MARGIN


def _endpoints(data: dict[int, store.NotificationData]) -> dict[str, AppEndpoint | str | None]:
    """Per application: its endpoint, None when it has none, or why it cannot be used (a string)."""
    out: dict[str, AppEndpoint | str | None] = {}
    for d in data.values():
        app = d.application
        key = d.notification.id_a2a
        if key in out:
            continue
        if app is None or not app.notification_url:
            out[key] = None
            continue
        try:
            out[key] = endpoint_for(app)
        except (SecretNotFoundError, ValueError) as exc:
            out[key] = f"endpoint not usable: {exc}"
    return out


def deliver_batch(
    *,
    client: NotificationClient,
    session_factory: Callable[[], AbstractContextManager[Session]],
    batch_size: int,
    now: datetime,
    concurrency: int,
    timeout: float,
) -> BatchOutcome:
    """Claim up to ``batch_size`` due notifications, deliver ``concurrency`` at a time, record each."""
    outcome = BatchOutcome()
    with session_factory() as session:
        claims = store.claim_due(
            session,
            now=now,
            limit=batch_size,
            lease=lease_for(batch_size=batch_size, concurrency=concurrency, timeout=timeout),
        )
        session.commit()
    outcome.claimed = len(claims)
    if not claims:
        return outcome
    with session_factory() as session:
        data = store.load_notifications(session, ids=[c.id for c in claims])
        endpoints = _endpoints(data)
        today = now.date()
        jobs: list[tuple[Claim, AppEndpoint, RicevutaMessage]] = []
        for claim in claims:
            d = data[claim.id]
            endpoint = endpoints.get(claim.id_a2a)
            if endpoint is None:
                outcome.no_endpoint += store.record_no_endpoint(session, claim=claim)
            elif isinstance(endpoint, str):
                _failed(
                    session,
                    outcome,
                    claim,
                    d.notification.iuv,
                    Delivery(delivered=False, error=endpoint),
                    now,
                )
            else:
                jobs.append(
                    (
                        claim,
                        endpoint,
                        ricevuta_message(
                            receipt=d.receipt,
                            position=d.position,
                            items=d.items,
                            collections=d.collections,
                            creditor_name=d.creditor_name,
                            today=today,
                        ),
                    )
                )
        session.commit()
    if not jobs:
        return outcome
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="notify") as pool:
        futures = {
            pool.submit(client.send_receipt, endpoint=endpoint, message=message): (claim, message)
            for claim, endpoint, message in jobs
        }
        for future in as_completed(futures):
            claim, message = futures[future]
            try:
                delivery = future.result()
            except Exception as exc:  # noqa: BLE001 - the connector should not raise; if it does, retry later
                delivery = Delivery(delivered=False, error=f"{type(exc).__name__}: {exc}"[:500])
            with session_factory() as session:
                if delivery.delivered:
                    if store.record_delivered(session, claim=claim, now=now, status=delivery.status):
                        outcome.delivered += 1
                    else:
                        outcome.lost += 1
                else:
                    _failed(session, outcome, claim, message.iuv, delivery, now)
                session.commit()
    return outcome


def _failed(
    session: Session, outcome: BatchOutcome, claim: Claim, iuv: str, delivery: Delivery, now: datetime
) -> None:
    if store.record_failed(
        session, claim=claim, now=now, status=delivery.status, error=delivery.error or "failed"
    ):
        outcome.failed += 1
        outcome.failures.append(
            NotificationFailure(
                id=claim.id, id_a2a=claim.id_a2a, iuv=iuv, status=delivery.status, error=delivery.error
            )
        )
    else:
        outcome.lost += 1


def _session() -> Session:
    return Session(get_engine(), expire_on_commit=False)


@task(name="deliver-notifications", task_run_name="deliver-notifications-{batch_no}", cache_policy=NO_CACHE)
def deliver_notifications(
    batch_size: int, now: datetime, concurrency: int = 8, timeout: float = 30.0, batch_no: int = 0
) -> BatchOutcome:
    """One batch: claim due notifications, PUT each to its application, record delivered or retry later."""
    with NotificationClient(timeout=timeout) as client:
        outcome = deliver_batch(
            client=client,
            session_factory=_session,
            batch_size=batch_size,
            now=now,
            concurrency=concurrency,
            timeout=timeout,
        )
    get_run_logger().info(
        "notifications batch %d: %d claimed, %d delivered, %d failed, %d without endpoint",
        batch_no,
        outcome.claimed,
        outcome.delivered,
        outcome.failed,
        outcome.no_endpoint,
    )
    return outcome


def summary_markdown(
    *, totals: dict[str, Any], failures: list[NotificationFailure], queue: dict[str, int]
) -> str:
    """The run's summary as markdown."""
    lines = [
        "# Notifications to applications",
        "",
        f"Claimed **{totals['claimed']}**, delivered **{totals['delivered']}**, "
        f"failed **{totals['failed']}** "
        f"(retried later), without endpoint **{totals['no_endpoint']}**.",
        "",
        "| queue state | count |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in queue.items()]
    if failures:
        lines += ["", "| id | application | IUV | HTTP | error |", "|---|---|---|---|---|"]
        lines += [
            f"| {f.id} | {f.id_a2a} | {f.iuv} | {f.status or ''} "
            f"| {(f.error or '').replace('|', '/')[:200]} |"
            for f in failures[:ARTIFACT_ROWS]
        ]
    return "\n".join(lines) + "\n"


@task(name="publish-notifications-summary", cache_policy=NO_CACHE)
def publish_summary(totals: dict[str, Any], failures: list[NotificationFailure]) -> dict[str, int]:
    """The run's summary (with the queue's state) as a Prefect markdown artifact; returns the queue counts."""
    with _session() as session:
        queue = store.queue_counts(session)
    create_markdown_artifact(
        key="notify-applications",
        description="Notifications delivered to applications",
        markdown=summary_markdown(totals=totals, failures=failures, queue=queue),
    )
    return queue
