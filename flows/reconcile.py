"""Flow `reconcile`: match treasury money with flows, receipts and positions, for one EC or all."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.reconciliation import list_creditors, reconcile_creditor

LABEL_ORDER = ("RT_IUF_TES", "RT_TES", "RT_IUF", "RT_NO_IUF", "IUV_NO_RT", "IUF_NO_TES", "IUF_TES_DIV_IMP",
               "TES_NO_IUF_OR_IUV", "TES_NO_MATCH", "DOPPI")


@flow(name="reconcile", log_prints=False)
def reconcile(id_dominio: str | None = None) -> list[dict[str, Any]]:
    """Reconcile every enabled EC (or one): cashed flows and IUVs, positions INCASSATA, labels, suggestions."""
    summaries = [reconcile_creditor(ec) for ec in list_creditors(id_dominio)]
    create_table_artifact(
        key="reconciliation-summary",
        table=[{"EC": s["id_dominio"], "flows cashed": s["flows_cashed"], "flows waiting": s["flows_waiting"],
                "flows in error": s["flows_in_error"], "singles cashed": s["singles_cashed"],
                "without receipt": s["without_receipt"], "suggestions": s["suggestions"],
                **{label: s["labels"].get(label, 0) for label in LABEL_ORDER}} for s in summaries],
        description="Reconciliation outcome per EC, with the number of transfers under each label",
    )
    lines = ["# Reconciliation", "", "| EC | cashed flows | waiting | errors | anomalies |", "|---|---|---|---|---|"]
    for s in summaries:
        anomalies = sum(s["labels"].get(label, 0) for label in LABEL_ORDER[4:])
        lines.append(f"| {s['id_dominio']} | {s['flows_cashed']} | {s['flows_waiting']} | {s['flows_in_error']} | "
                     f"{anomalies} |")
    create_markdown_artifact(key="reconciliation-report", markdown="\n".join(lines),
                             description="Reconciliation summary")
    return summaries
