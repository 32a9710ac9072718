"""Report tasks: render the reconciliation reports of an EC, write them, publish them as Prefect artifacts."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from models.db import session_scope
from models.settings import get_settings
from reports.reconciliation import (
    prospetto_context,
    prospetto_file_names,
    reconciliation_context,
    render_csv,
    render_html,
    render_markdown,
    render_pdf,
    render_prospetto_csv,
    render_prospetto_pdf,
    report_file_names,
    write_report_files,
)
from rules.calendar import italian_today
from store.report_data import collections_summary, reconciliation_data


def _artifact_key(prefix: str, id_dominio: str) -> str:
    # artifact keys: lowercase letters, digits and dashes
    return f"{prefix}-{id_dominio}".lower()


@task(name="publish-reconciliation-report", retries=1, retry_delay_seconds=5)
def publish_reconciliation_report(
    id_dominio: str, report_date: date | None = None, window_days: int = 14, max_items: int = 500
) -> dict[str, Any]:
    """Write an EC's daily report and month-to-date prospetto in the work dir; publish them as artifacts.

    Returns where the files are (``directory``, ``files`` by name), the report's totals and anomaly counts.
    Re-run for the same day, it rewrites the same files (atomically) and adds a new version of each artifact.
    """
    # files: <work_dir>/reports/<ec>/<date>/ (daily report in HTML, CSV, PDF; prospetto by day in CSV, PDF)
    logger = get_run_logger()
    day = report_date or italian_today()
    with session_scope() as session:
        data = reconciliation_data(
            session, id_dominio=id_dominio, report_date=day, window_days=window_days, max_items=max_items
        )
        prospetto = collections_summary(
            session, id_dominio=id_dominio, start=day.replace(day=1), end=day, period="day"
        )
    ctx = reconciliation_context(data)
    pctx = prospetto_context(prospetto)
    names = report_file_names(id_dominio=id_dominio, report_date=day)
    pnames = prospetto_file_names(
        id_dominio=id_dominio, start=prospetto.start, end=prospetto.end, period="day"
    )
    files = write_report_files(
        work_dir=get_settings().work_dir,
        id_dominio=id_dominio,
        report_date=day,
        files={
            names["html"]: render_html(ctx),
            names["csv"]: render_csv(ctx),
            names["pdf"]: render_pdf(ctx),
            pnames["csv"]: render_prospetto_csv(pctx),
            pnames["pdf"]: render_prospetto_pdf(pctx),
        },
    )
    create_markdown_artifact(
        key=_artifact_key("reconciliation-daily", id_dominio),
        markdown=render_markdown(ctx, files=files),
        description=f"Daily reconciliation report of {id_dominio} for {day.isoformat()}",
    )
    create_table_artifact(
        key=_artifact_key("reconciliation-anomalies", id_dominio),
        table=[{"label": t.key, "title": t.title, "items": t.note, "action": t.action} for t in ctx.anomalies]
        or [{"label": "-", "title": "nessuna anomalia", "items": "", "action": ""}],
        description=f"Anomalies of {id_dominio} by label; files under {files[names['html']].parent}",
    )
    create_table_artifact(
        key=_artifact_key("prospetto-riscossioni", id_dominio),
        table=[dict(zip(pctx.csv_header, row, strict=True)) for row in pctx.csv_rows]
        or [dict.fromkeys(pctx.csv_header, "")],
        description=f"Collections of {id_dominio} by day and accounting code, "
        f"{prospetto.start} - {prospetto.end}; {files[pnames['csv']]}",
    )
    logger.info(
        "EC %s: reconciliation report for %s written to %s",
        id_dominio,
        day.isoformat(),
        files[names["html"]].parent,
    )
    return {
        "id_dominio": id_dominio,
        "report_date": day.isoformat(),
        "directory": str(files[names["html"]].parent),
        "files": {name: str(path) for name, path in files.items()},
        "totals": {t.key: {"count": t.raw_count, "amount": str(t.raw_amount)} for t in ctx.totals},
        "anomalies": {g.label: g.count for g in data.anomalies},
    }
