"""The receipts flow: expire stale payment attempts, then recover missing receipts from pagoPA in batches."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from models.types import utcnow
from tasks.receipts import (
    RecoveryResult,
    expire_stale_attempts,
    plan_recoveries,
    publish_summary,
    recover_receipts,
)
from tasks.rpt import recover_pending_rpts_task

MAX_BATCHES = 150  # keeps one run under ~200 task runs whatever the backlog
CONCURRENT_BATCHES = 4


def batch_items(items: list[Any], *, batch_size: int, max_batches: int = MAX_BATCHES) -> list[list[Any]]:
    """Split items in batches of ``batch_size``, larger when they would need more than ``max_batches``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    size = max(batch_size, math.ceil(len(items) / max_batches))
    return [items[i : i + size] for i in range(0, len(items), size)]


@flow(
    name="receipts",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=CONCURRENT_BATCHES),  # type: ignore[arg-type]
)
def receipts(batch_size: int = 50, max_items: int = 5000, now: datetime | None = None) -> dict[str, Any]:
    """Expire attempts 30 minutes old without a receipt, then ask pagoPA for every missing receipt.

    Legacy RPTs left pending are asked to the Node (state, then a copy of the RT). Missing receipts are reporting
    lines NO_RECEIPT (Biz-Events, then GPD receipts) and expired attempts on
    unpaid positions (GPD receipts); each one found is processed like a pushed receipt (position, collections,
    notification). 404 stops the asking; transient faults back off per item. ``now`` is for tests and replays.
    """
    logger = get_run_logger()
    now = now or utcnow()
    expired = expire_stale_attempts(now)
    rpt = recover_pending_rpts_task(now=now)  # legacy RPTs: ask the Node for their state or a copy of the RT
    items = plan_recoveries(now, max_items)
    batches = batch_items(items, batch_size=batch_size)
    futures = [recover_receipts.submit(batch, now, number) for number, batch in enumerate(batches, start=1)]
    results: list[RecoveryResult] = [r for f in futures for r in f.result()]
    publish_summary(expired, results)
    counts = Counter(r.status for r in results)
    logger.info(
        "receipts: %d attempts expired, %d asked, %s",
        expired,
        len(results),
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to recover",
    )
    return {
        "expired": expired,
        "asked": len(results),
        "batches": len(batches),
        "by_status": dict(counts),
        "results": [r.model_dump(mode="json") for r in results],
        "rpt_recovery": rpt.model_dump(mode="json"),
    }
