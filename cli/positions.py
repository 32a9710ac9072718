"""The `pagoflow positions` commands: bulk loads of debt positions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

positions_app = typer.Typer(help="Debt positions: bulk loads (tracciati).", no_args_is_help=True)

console = Console()
err = Console(stderr=True)


@positions_app.callback()
def positions() -> None:
    """Debt positions: bulk loads (tracciati)."""


@positions_app.command("load")
def load(
    file: Annotated[
        Path,
        typer.Argument(
            help="The tracciato: GovPay CSV (';' or ',') or JSON.", exists=True, dir_okay=False, readable=True
        ),
    ],
    a2a: Annotated[
        str | None,
        typer.Option(
            "--a2a",
            help="Application the file is loaded for (idA2A); rows of other applications are rejected.",
        ),
    ] = None,
    dominio: Annotated[
        str | None, typer.Option("--dominio", help="EC (idDominio) of rows that leave it out.")
    ] = None,
    tipo: Annotated[str | None, typer.Option("--tipo", help="Debt type of rows that leave it out.")] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Rows per batch (one transaction).")
    ] = 1000,
    notices: Annotated[
        bool, typer.Option("--notices", help="Also write a ZIP of the added positions' payment notices.")
    ] = False,
) -> None:
    """Load a bulk file of positions with the load-positions flow; print the counts and the outcome file."""
    from flows.load_positions import load_positions
    from rules.tracciato import TracciatoError

    try:
        summary = load_positions(
            path=str(file),
            id_a2a=a2a,
            id_dominio=dominio,
            debt_type=tipo,
            batch_size=batch_size,
            notices=notices,
        )
    except TracciatoError as exc:
        err.print(f"[red]error:[/red] {file}: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    table = Table(
        title=f"Tracciato {summary['name']} (bulk file {summary['bulk_file_id']}, {summary['state']})"
    )
    table.add_column("Esito")
    table.add_column("Righe", justify="right")
    for outcome, count in summary["counts"].items():
        table.add_row(outcome, str(count))
    table.add_row("Totale", str(sum(summary["counts"].values())))
    console.print(table)
    console.print(f"outcome file: {summary['outcome_path']}", highlight=False, soft_wrap=True)
    if summary["notices_path"]:
        console.print(f"notices: {summary['notices_path']}", highlight=False, soft_wrap=True)
