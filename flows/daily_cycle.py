"""Flow `daily-cycle`: every stage in order for all ECs, tolerant of one EC's failure, with one summary."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.download_reporting_flows import download_reporting_flows
from flows.ingest_treasury import ingest_treasury
from flows.notify_applications import notify_applications
from flows.publish_positions import publish_positions
from flows.receipts import receipts
from flows.reconcile import reconcile
from models.db import session_scope
from store.status import ec_figures
from tasks.reconciliation import list_creditors


@task(name="daily-summary")
def daily_summary() -> list[dict[str, Any]]:
    """Per EC: positions, payments, flows, money, cashed, anomalies."""
    with session_scope() as session:
        return [asdict(f) for f in ec_figures(session)]


def _stage(name: str, run, **kwargs: Any) -> str:  # type: ignore[no-untyped-def]
    """Run one stage as a subflow; a failure is logged and reported, never stops the cycle."""
    state = run(**kwargs, return_state=True)
    if state.is_completed():
        return "ok"
    get_run_logger().error("stage %s %s failed: %s", name, kwargs or "", state.message)
    return f"failed: {state.message}"


@flow(name="daily-cycle", log_prints=False)
def daily_cycle(id_dominio: str | None = None) -> dict[str, Any]:
    """Publish, recover receipts, notify, download flows, ingest the treasury and reconcile, EC by EC.

    Args:
        id_dominio: one EC only (all enabled ECs when empty).
    """
    outcome: dict[str, Any] = {
        "publish-positions": _stage("publish-positions", publish_positions, id_dominio=id_dominio),
        "receipts": _stage("receipts", receipts),
        "notify-applications": _stage("notify-applications", notify_applications),
        "ingest-treasury": _stage("ingest-treasury", ingest_treasury),
    }
    for ec in list_creditors(id_dominio):
        outcome[f"download-reporting-flows {ec}"] = _stage("download-reporting-flows", download_reporting_flows,
                                                           id_dominio=ec)
        outcome[f"reconcile {ec}"] = _stage("reconcile", reconcile, id_dominio=ec)
    outcome["notify-applications (after)"] = _stage("notify-applications", notify_applications)
    figures = daily_summary()
    create_table_artifact(key="daily-cycle-summary", table=[
        {"EC": f["id_dominio"], "name": f["name"], "positions": f["positions"], "receipts": f["receipts"],
         "paid": str(f["paid"]), "flows": f["flows"], "money": str(f["money"]), "cashed": str(f["cashed"]),
         "anomalies": f["anomalies"]} for f in figures], description="The day per EC")
    failed = {k: v for k, v in outcome.items() if v != "ok"}
    create_markdown_artifact(key="daily-cycle-stages", markdown="# Daily cycle\n\n" + "\n".join(
        f"- **{k}**: {v}" for k, v in outcome.items()), description="Stages and their outcome")
    return {"stages": outcome, "failed": failed, "figures": figures}
