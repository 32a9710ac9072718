"""The `pagoflow report` commands: the daily reconciliation report and the prospetto riscossioni."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

report_app = typer.Typer(help="Reports: daily reconciliation, prospetto riscossioni.", no_args_is_help=True)
err = Console(stderr=True)


class ReportFormat(StrEnum):
    """Formats of the daily reconciliation report."""

    html = "html"
    csv = "csv"
    pdf = "pdf"


class ProspettoFormat(StrEnum):
    """Formats of the prospetto riscossioni."""

    csv = "csv"
    pdf = "pdf"


class PeriodChoice(StrEnum):
    """Periods of the prospetto riscossioni."""

    day = "day"
    month = "month"


def _today() -> date:
    return datetime.now(ZoneInfo("Europe/Rome")).date()


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


@report_app.callback()
def report() -> None:
    """Reports: daily reconciliation, prospetto riscossioni."""


@report_app.command("reconciliation")
def reconciliation(
    dominio: Annotated[str, typer.Option("--dominio", help="The EC (idDominio).")],
    day: Annotated[
        datetime | None,
        typer.Option(
            "--date", formats=["%Y-%m-%d"], help="Day of the report (default: today, Italian time)."
        ),
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.html,
    days: Annotated[int, typer.Option("--days", min=1, max=92, help="Days in the chart.")] = 14,
    max_items: Annotated[int, typer.Option("--max-items", min=1, help="Items listed per section.")] = 500,
) -> None:
    """Write the daily reconciliation report of an EC and print the path of the file."""
    from models.db import session_scope
    from models.settings import get_settings
    from reports.reconciliation import (
        ReportContext,
        reconciliation_context,
        render_csv,
        render_html,
        render_pdf,
        report_file_names,
        write_report_files,
    )
    from store.report_data import reconciliation_data

    report_date = day.date() if day else _today()
    try:
        with session_scope() as session:
            data = reconciliation_data(
                session, id_dominio=dominio, report_date=report_date, window_days=days, max_items=max_items
            )
    except LookupError as exc:
        _fail(str(exc))
    ctx = reconciliation_context(data)
    renderers: dict[ReportFormat, Callable[[ReportContext], bytes | str]] = {
        ReportFormat.html: render_html,
        ReportFormat.csv: render_csv,
        ReportFormat.pdf: render_pdf,
    }
    render = renderers[fmt]
    name = report_file_names(id_dominio=dominio, report_date=report_date)[fmt.value]
    paths = write_report_files(
        work_dir=get_settings().work_dir,
        id_dominio=dominio,
        report_date=report_date,
        files={name: render(ctx)},
    )
    typer.echo(str(paths[name]))


@report_app.command("riscossioni")
def riscossioni(
    dominio: Annotated[str, typer.Option("--dominio", help="The EC (idDominio).")],
    start: Annotated[
        datetime | None,
        typer.Option(
            "--from", formats=["%Y-%m-%d"], help="First day of payment (default: first of the month)."
        ),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option("--to", formats=["%Y-%m-%d"], help="Last day of payment (default: today)."),
    ] = None,
    period: Annotated[
        PeriodChoice, typer.Option("--period", help="Group by day or month.")
    ] = PeriodChoice.day,
    fmt: Annotated[ProspettoFormat, typer.Option("--format", help="Output format.")] = ProspettoFormat.csv,
) -> None:
    """Write the prospetto riscossioni (collections by accounting code and period) and print the path."""
    from models.db import session_scope
    from models.settings import get_settings
    from reports.reconciliation import (
        prospetto_context,
        prospetto_file_names,
        render_prospetto_csv,
        render_prospetto_pdf,
        write_report_files,
    )
    from store.report_data import collections_summary

    last = end.date() if end else _today()
    first = start.date() if start else last.replace(day=1)
    try:
        with session_scope() as session:
            data = collections_summary(
                session, id_dominio=dominio, start=first, end=last, period=period.value
            )
    except (LookupError, ValueError) as exc:
        _fail(str(exc))
    ctx = prospetto_context(data)
    render = render_prospetto_csv if fmt == ProspettoFormat.csv else render_prospetto_pdf
    name = prospetto_file_names(id_dominio=dominio, start=first, end=last, period=period.value)[fmt.value]
    paths = write_report_files(
        work_dir=get_settings().work_dir, id_dominio=dominio, report_date=last, files={name: render(ctx)}
    )
    typer.echo(str(paths[name]))
