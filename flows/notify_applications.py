"""The notify-applications flow: deliver queued receipt notifications to the EC applications, with backoff."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from models.types import utcnow
from tasks.notifications import NotificationFailure, deliver_notifications, publish_summary

MAX_BATCHES = 150  # keeps one run under ~200 task runs; what is left waits for the next run


@flow(name="notify-applications", log_prints=False)
def notify_applications(
    batch_size: int = 200,
    concurrency: int = 8,
    timeout_seconds: float = 30.0,
    max_batches: int = MAX_BATCHES,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Deliver every due notification, one task per claimed batch, ``concurrency`` deliveries at a time.

    Claims make concurrent runs (or workers) take disjoint notifications; a failed delivery is retried
    attempts² minutes later (at most 24 h) by a later run. ``now`` is for tests and replays.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    logger = get_run_logger()
    now = now or utcnow()
    totals = {"claimed": 0, "delivered": 0, "failed": 0, "no_endpoint": 0, "lost": 0, "batches": 0}
    failures: list[NotificationFailure] = []
    for number in range(1, max(1, max_batches) + 1):
        outcome = deliver_notifications(batch_size, now, concurrency, timeout_seconds, number)
        if outcome.claimed == 0:
            break
        totals["batches"] += 1
        for key in ("claimed", "delivered", "failed", "no_endpoint", "lost"):
            totals[key] += getattr(outcome, key)
        failures.extend(outcome.failures)
        if outcome.claimed < batch_size:
            break
    queue = publish_summary(totals, failures)
    logger.info(
        "notifications: %(claimed)d claimed, %(delivered)d delivered, %(failed)d failed, "
        "%(no_endpoint)d without endpoint in %(batches)d batch(es)",
        totals,
    )
    return {**totals, "queue": queue, "failures": [f.model_dump(mode="json") for f in failures]}
