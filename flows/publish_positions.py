"""The publish-positions flow: new, changed and annulled positions sent to GPD or ACA, one task per batch."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from connectors.pagopa.config import get_endpoints
from tasks.publication import (
    PublicationIncompleteError,
    PublicationSummary,
    plan_publication,
    publish_positions_batch,
    summary_markdown,
)

MAX_BATCHES = 190  # one run stays under ~200 task runs whatever max_batches asks


@flow(name="publish-positions", log_prints=False)
def publish_positions(
    id_dominio: str | None = None, batch_size: int = 500, max_batches: int = 100
) -> dict[str, Any]:
    """Publish the queued positions (all ECs, or one); failures stay queued for the next run."""
    logger = get_run_logger()
    endpoints = get_endpoints()
    plan = plan_publication(
        id_dominio=id_dominio, batch_size=batch_size, max_batches=min(max_batches, MAX_BATCHES)
    )
    delay = endpoints.task_retry_delay_seconds
    send = publish_positions_batch.with_options(
        retries=endpoints.task_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=delay) if delay > 0 else 0,
    )
    summary = PublicationSummary(backlog=plan.backlog)
    for window in plan.windows:
        state = send(
            first_id=window.first_id, last_id=window.last_id, id_dominio=id_dominio, return_state=True
        )
        result = state.result(raise_on_failure=False)
        if isinstance(result, PublicationIncompleteError):  # recorded; the failed ones stay queued
            summary.add(result.report)
        elif isinstance(result, BaseException):
            summary.batch_errors.append(f"posizioni {window.first_id}-{window.last_id}: {result}")
        else:
            summary.add(result)
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key="publish-positions-summary",
        description="Pubblicazione delle posizioni su GPD/ACA",
    )
    logger.info(
        "published %d, updated %d, invalidated %d, skipped %d, failed %d; %d left for the next run",
        summary.published,
        summary.updated,
        summary.invalidated,
        sum(summary.skipped.values()),
        summary.failed,
        summary.backlog,
    )
    if summary.batch_errors:
        raise RuntimeError(f"{len(summary.batch_errors)} batches failed: {summary.batch_errors[0]}")
    return summary.as_dict()
