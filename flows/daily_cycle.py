"""Flow `daily-cycle`: every stage in order for all ECs, tolerant of one EC's failure, with one summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from typing import Any

from prefect import flow, get_run_logger

from flows.download_reporting_flows import download_reporting_flows
from flows.ingest_treasury import ingest_treasury
from flows.notify_applications import MAX_BATCHES as NOTIFY_MAX_BATCHES
from flows.notify_applications import notify_applications
from flows.publish_positions import publish_positions
from flows.receipts import receipts
from flows.reconcile import reconcile
from tasks.daily import ALL_ECS, StageOutcome, daily_figures, publish_daily_summary
from tasks.reconciliation import list_creditors
from tasks.treasury import list_treasury_sources

MAX_RUNS = 10  # a stage with a backlog (publication, notifications) runs again, at most this many times


class DailyCycleError(RuntimeError):
    """Some stages failed for some ECs; every other stage ran, and the summary artifact says which failed."""

    def __init__(self, failed: list[StageOutcome], summary: dict[str, Any]) -> None:
        self.failed = failed
        self.summary = summary
        super().__init__(f"{len(failed)} stage run(s) failed: " + "; ".join(
            f"{s.describe()} for {s.ec}: {s.message}" for s in failed))


def _run(stage: str, ec: str, run: Callable[..., Any], *, target: str | None = None,
         again: Callable[[Any], bool] | None = None, **kwargs: Any) -> tuple[StageOutcome, Any]:
    """Run one stage (a subflow or task) for one EC; a failure is recorded, never raised.

    ``again`` says from a completed run's result that work is left (a backlog beyond one run's batches): the
    stage then runs again, as its schedule would, at most MAX_RUNS times.
    """
    started, cpu = time.monotonic(), time.process_time()
    runs, result = 0, None
    while True:
        runs += 1
        state = run(**kwargs, return_state=True)
        if not state.is_completed():
            failed = StageOutcome(stage, ec, False, time.monotonic() - started, runs, target,
                                  state.message or state.name or "failed", time.process_time() - cpu)
            get_run_logger().error("stage %s for %s failed: %s", failed.describe(), ec, failed.message)
            return failed, None
        result = state.result()
        if again is None or runs >= MAX_RUNS or not again(result):
            return StageOutcome(stage, ec, True, time.monotonic() - started, runs, target,
                                cpu_seconds=time.process_time() - cpu), result


def _publication_left(result: Any) -> bool:
    # positions beyond this run's batches wait in the queue; run again only if this run got through some
    return bool(result.get("backlog")) and bool(result.get("positions"))


def _notifications_left(result: Any) -> bool:
    return int(result.get("batches", 0)) >= NOTIFY_MAX_BATCHES


@flow(name="daily-cycle", log_prints=False)
def daily_cycle(id_dominio: str | None = None, report_date: date | None = None) -> dict[str, Any]:
    """Publish, recover receipts, notify, download flows, ingest the treasury, reconcile and report, EC by EC.

    Every per-EC stage runs as its own subflow for each EC (ingestion: for each of its treasury sources), so
    one EC's failure (an unreachable SFTP server, a refused key) stops nothing else; receipts and
    notifications run once for all ECs. The reconcile subflow writes each EC's reports (``reports`` in the
    result: directory, files, totals). The cycle ends with one ``daily-cycle-summary`` artifact (the
    day per EC and the stages that failed) and fails at the end if any stage failed.

    Args:
        id_dominio: one EC only (all enabled ECs when empty).
        report_date: the day of the reconciliation reports (today, Italian time, when empty).
    """
    logger = get_run_logger()
    ecs = list_creditors(id_dominio)
    stages: list[StageOutcome] = []
    results: dict[tuple[str, str, str | None], Any] = {}

    def run(stage: str, ec: str, flow_or_task: Callable[..., Any], **kwargs: Any) -> None:
        outcome, result = _run(stage, ec, flow_or_task, **kwargs)
        stages.append(outcome)
        results[(stage, ec, outcome.target)] = result

    for ec in ecs:
        run("publish-positions", ec, publish_positions, id_dominio=ec, again=_publication_left)
    run("receipts", ALL_ECS, receipts)
    run("notify-applications", ALL_ECS, notify_applications, again=_notifications_left)
    for ec in ecs:
        run("download-reporting-flows", ec, download_reporting_flows, id_dominio=ec)
    sources = list_treasury_sources()
    for ec in ecs:
        for source in (s for s in sources if s.id_dominio == ec):
            run("ingest-treasury", ec, ingest_treasury, target=source.name, source=source.name)
    for ec in ecs:  # the reconcile flow writes and publishes the EC's reports after reconciling it
        run("reconcile", ec, reconcile, id_dominio=ec, report_date=report_date)
    figures = daily_figures(ecs)
    rows = publish_daily_summary(figures, stages)
    failed = [s for s in stages if not s.ok]
    summary = {
        "stages": [asdict(s) for s in stages],
        "failed": [asdict(s) for s in failed],
        "figures": figures,
        "rows": rows,
        "reports": {ec: s["reports"] for (stage, ec, _t), r in results.items() if stage == "reconcile" and r
                    for s in r if s.get("reports")},
    }
    logger.info("daily cycle: %d ECs, %d stage runs, %d failed", len(ecs), len(stages), len(failed))
    if failed:
        raise DailyCycleError(failed, summary)
    return summary
