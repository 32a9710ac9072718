"""The load-positions flow: a bulk file (tracciato) of positions in, positions and an outcome file out."""

from __future__ import annotations

import math
import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.utilities.annotations import quote

from models.bulk import BulkState
from rules.tracciato import batched
from tasks.positions import (
    finish_file,
    iter_rows,
    load_rows,
    register_file,
    summary_markdown,
    write_notices_zip,
    write_outcome_file,
)

MAX_BATCHES = 180  # keeps one flow run under ~200 task runs, whatever the file size
PROGRESS_EVERY_SECONDS = 2.0


def effective_batch_size(*, batch_size: int, total_rows: int) -> int:
    """The requested batch size, raised when the file would otherwise need more than MAX_BATCHES batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return max(batch_size, math.ceil(total_rows / MAX_BATCHES))


@flow(name="load-positions", log_prints=False)
def load_positions(
    path: str,
    id_a2a: str | None = None,
    id_dominio: str | None = None,
    debt_type: str | None = None,
    batch_size: int = 1000,
    notices: bool = False,
) -> dict[str, Any]:
    """Load a bulk file of positions; a re-run resumes at the first unprocessed batch or changes nothing."""
    logger = get_run_logger()
    bulk = register_file(path=path, id_a2a=id_a2a, id_dominio=id_dominio, debt_type=debt_type)
    size = effective_batch_size(batch_size=batch_size, total_rows=bulk.total_rows)
    if size != batch_size:
        logger.info(
            "batch size raised from %s to %s to stay within %s batches", batch_size, size, MAX_BATCHES
        )
    total = max(bulk.total_rows, 1)
    progress = cast(
        UUID,
        create_progress_artifact(
            progress=100.0 * bulk.processed_rows / total,
            key=f"bulk-file-{bulk.id}",
            description=f"Tracciato {bulk.name}: rows processed",
        ),
    )
    if bulk.state == BulkState.DONE:
        logger.info("bulk file %s was loaded completely before: nothing to do", bulk.id)
    else:
        if bulk.processed_rows:
            logger.info(
                "resuming bulk file %s after row %s of %s", bulk.id, bulk.processed_rows, bulk.total_rows
            )
        last_update = time.monotonic()
        try:
            for rows in batched(
                iter_rows(path, defaults=bulk.defaults), size=size, after=bulk.processed_rows
            ):
                report = load_rows(bulk_file_id=bulk.id, rows=quote(rows), only_a2a=bulk.id_a2a)
                if time.monotonic() - last_update >= PROGRESS_EVERY_SECONDS:
                    update_progress_artifact(progress, 100.0 * report.last_row / total)
                    last_update = time.monotonic()
        except Exception:
            try:
                finish_file(bulk_file_id=bulk.id, state=BulkState.FAILED)
            except Exception:  # the original failure matters more; a re-run resumes from RUNNING too
                logger.exception("could not mark bulk file %s as failed", bulk.id)
            raise
    update_progress_artifact(progress, 100.0)
    outcome = write_outcome_file(bulk_file_id=bulk.id, path=path, name=bulk.name, fmt=bulk.format)
    zipped = write_notices_zip(bulk_file_id=bulk.id, name=bulk.name) if notices else None
    summary = finish_file(
        bulk_file_id=bulk.id, state=BulkState.DONE, outcome_path=outcome, notices_path=zipped
    )
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key=f"bulk-file-{bulk.id}-summary",
        description=f"Outcome of tracciato {bulk.name}",
    )
    if summary.state != BulkState.DONE:
        logger.warning(
            "bulk file %s: rows %s/%s processed, another run is still at work on it",
            bulk.id,
            summary.processed_rows,
            summary.total_rows,
        )
    logger.info("bulk file %s %s: %s", bulk.id, summary.state, summary.counts)
    return summary.as_dict()
