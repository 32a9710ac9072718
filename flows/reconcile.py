"""Flow `reconcile`: match treasury money with flows, receipts and positions (one EC or all), then report."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.reconciliation import list_creditors, reconcile_creditor
from tasks.reports import publish_reconciliation_report
from tasks.treasury import join_api_movements

LABEL_ORDER = ("RT_IUF_TES", "RT_TES", "RT_IUF", "RT_NO_IUF", "IUV_NO_RT", "IUF_NO_TES", "IUF_TES_DIV_IMP",
               "TES_NO_IUF_OR_IUV", "TES_NO_MATCH", "DOPPI")


class ReportPublishError(RuntimeError):
    """Reconciliation is done and stored, but some ECs' reports could not be written or published."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("reports not published: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))


@flow(name="reconcile", log_prints=False)
def reconcile(id_dominio: str | None = None, report_date: date | None = None,
              reports: bool = True) -> list[dict[str, Any]]:
    """Reconcile every enabled EC (or one): cashed flows and IUVs, positions INCASSATA, labels, suggestions.

    Before each EC, credits posted through the API Ragioneria are joined to the journal's copies of the same
    money (``joined``). After it, the EC's daily report and prospetto are written under
    ``<work_dir>/reports/<ec>/<date>/`` and published as artifacts (unless ``reports`` is false); each EC's
    summary says where (``reports``: ``directory``, ``files``, ``totals``). A report that fails does not stop
    the others; the run fails at the end, reconciliation already stored.

    Args:
        id_dominio: one EC only (all enabled ECs when empty).
        report_date: the day of the reports (today in Italy when empty).
        reports: write and publish the reports.
    """
    logger = get_run_logger()
    summaries: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for ec in list_creditors(id_dominio):
        joined = join_api_movements(ec)
        summary = {**reconcile_creditor(ec), "joined": joined, "reports": None}
        if reports:
            state = publish_reconciliation_report(ec, report_date, return_state=True)
            if state.is_completed():
                published = state.result()
                summary["reports"] = {
                    k: published[k] for k in ("directory", "files", "report_date", "totals", "anomalies")
                }
            else:
                failures[ec] = state.message or "failed"
                logger.error("EC %s: reconciliation report not published: %s", ec, state.message)
        summaries.append(summary)
    create_table_artifact(
        key="reconciliation-summary",
        table=[{"EC": s["id_dominio"], "flows cashed": s["flows_cashed"], "flows waiting": s["flows_waiting"],
                "flows in error": s["flows_in_error"], "singles cashed": s["singles_cashed"],
                "without receipt": s["without_receipt"], "suggestions": s["suggestions"],
                **{label: s["labels"].get(label, 0) for label in LABEL_ORDER}} for s in summaries],
        description="Reconciliation outcome per EC, with the number of transfers under each label",
    )
    lines = ["# Reconciliation", "", "| EC | cashed flows | waiting | errors | anomalies | reports |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        anomalies = sum(s["labels"].get(label, 0) for label in LABEL_ORDER[4:])
        where = f"`{s['reports']['directory']}`" if s["reports"] else failures.get(s["id_dominio"], "-")
        lines.append(f"| {s['id_dominio']} | {s['flows_cashed']} | {s['flows_waiting']} | "
                     f"{s['flows_in_error']} | {anomalies} | {where} |")
    create_markdown_artifact(key="reconciliation-report", markdown="\n".join(lines),
                             description="Reconciliation summary")
    if failures:
        raise ReportPublishError(failures)
    return summaries
