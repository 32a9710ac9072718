"""The download-reporting-flows flow: list each EC's new flows (FdR REST or SOAP), fetch, check, store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict

from connectors.pagopa.config import get_endpoints
from models.registry import ReportingMode
from tasks.claims import leased, reporting_lease
from tasks.reporting import (
    REFUSED,
    EcJob,
    EcListing,
    FlowOutcome,
    FlowRef,
    advance_reporting_cursor,
    download_reporting_flow,
    list_reporting_creditors,
    list_reporting_flows,
    publish_reporting_report,
)


class ReportingDownloadError(RuntimeError):
    """Some listings or flows failed; everything else was stored."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__(
            f"{len(failures)} failure(s): " + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )


class RunSummary(BaseModel):
    """What one run did."""

    model_config = ConfigDict(frozen=True)

    listings: list[EcListing]
    outcomes: list[FlowOutcome]
    failures: dict[str, str]

    def counts(self) -> dict[str, int]:
        """Flows per outcome and the total lines stored."""
        out: dict[str, int] = {"lines": sum(o.lines for o in self.outcomes), "failures": len(self.failures)}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def run_download(
    *,
    jobs: list[EcJob],
    days: int,
    max_flows: int,
    list_flows: Callable[[EcJob, int, int | None], EcListing],
    download: Callable[[FlowRef], FlowOutcome],
    advance: Callable[[str, list[datetime], list[datetime]], Any],
) -> RunSummary:
    """List, download and store every EC's new flows; one failure never stops the other flows or ECs.

    The FdR cursor of an EC moves only over flows stored (or refused as unreadable) before its first failure,
    and at most ``max_flows`` flows are downloaded per run (the rest are listed again next time).
    """
    listings: list[EcListing] = []
    outcomes: list[FlowOutcome] = []
    failures: dict[str, str] = {}
    budget = max_flows
    for job in jobs:
        try:
            listing = list_flows(job, days, budget)
        except Exception as exc:  # noqa: BLE001 - recorded, reported, the run fails at the end
            failures[f"{job.id_dominio} (list)"] = f"{type(exc).__name__}: {exc}"
            continue
        listings.append(listing)
        budget = max(budget - len(listing.flows), 0)
        handled: list[datetime] = list(listing.stored_published)
        failed: list[datetime] = []
        for ref in listing.flows:
            try:
                outcome = download(ref)
            except Exception as exc:  # noqa: BLE001 - one flow must not stop the others
                failures[f"{ref.id_dominio}/{ref.id_flusso} r{ref.revision}"] = f"{type(exc).__name__}: {exc}"
                if ref.published_at is not None:
                    failed.append(ref.published_at)
                continue
            outcomes.append(outcome)
            if ref.published_at is not None:
                handled.append(ref.published_at)
        if listing.resume_from is not None:
            failed.append(listing.resume_from)  # flows left for the next run: the cursor stops before them
        if job.protocol == ReportingMode.FDR_REST and (handled or failed):
            try:
                advance(job.id_dominio, handled, failed)
            except Exception as exc:  # noqa: BLE001 - the next run lists the same flows again and skips them
                failures[f"{job.id_dominio} (cursor)"] = f"{type(exc).__name__}: {exc}"
    return RunSummary(listings=listings, outcomes=outcomes, failures=failures)


@flow(name="download-reporting-flows", log_prints=False)
def download_reporting_flows(id_dominio: str | None = None, days: int = 30) -> dict[str, Any]:
    """Download the flows of one EC (or of every EC with reporting enabled) published in the last ``days``.

    Each flow is checked (GovPay codes 0071xx), its lines linked to their collections, and stored in one
    transaction; a newer revision makes the older ones OBSOLETA. The run publishes a table artifact per EC and
    PSP, and fails at the end (after storing everything it could) if a listing or a download failed.
    """
    logger = get_run_logger()
    cfg = get_endpoints()
    delay = (
        exponential_backoff(backoff_factor=cfg.task_retry_delay_seconds)
        if cfg.task_retry_delay_seconds
        else 0
    )
    retry = dict(retries=cfg.task_retries, retry_delay_seconds=delay)
    lister = list_reporting_flows.with_options(**retry)  # type: ignore[arg-type]
    downloader = download_reporting_flow.with_options(**retry)  # type: ignore[arg-type]
    jobs = list_reporting_creditors(id_dominio)
    # an EC another run is downloading (another worker, the daily cycle) is left to it: a lease per EC
    with leased([reporting_lease(job.id_dominio) for job in jobs]) as held:
        busy = [job.id_dominio for job in jobs if reporting_lease(job.id_dominio) not in held]
        summary = run_download(
            jobs=[job for job in jobs if job.id_dominio not in busy],
            days=days,
            max_flows=cfg.max_flows_per_run,
            list_flows=lambda job, d, limit: lister(job, d, limit),
            download=lambda ref: downloader(ref),
            advance=lambda ec, handled, failed: advance_reporting_cursor(ec, handled, failed),
        )
    publish_reporting_report(summary.outcomes, summary.listings, summary.failures)
    counts = summary.counts()
    logger.info(
        "reporting flows: %d stored, %d skipped, %d refused, %d lines, %d failures",
        counts.get("STORED", 0),
        counts.get("SKIPPED", 0),
        counts.get(REFUSED, 0),
        counts["lines"],
        counts["failures"],
    )
    if summary.failures:
        raise ReportingDownloadError(summary.failures)
    return {
        "counts": counts,
        "busy": busy,
        "flows": [o.model_dump(mode="json") for o in summary.outcomes],
        "listings": [x.model_dump(mode="json") for x in summary.listings],
    }
