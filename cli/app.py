"""The `pagoflow` command: database, registry, sandbox, operator tools and the demo."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.positions import positions_app
from cli.report import report_app

app = typer.Typer(help="pagoflow: a pagoPA intermediary platform on Prefect.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="The platform database.", no_args_is_help=True)
config_app = typer.Typer(help="The registry: broker, stations, ECs, applications, operators.",
                         no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(positions_app, name="positions")
app.add_typer(config_app, name="config")
app.add_typer(report_app, name="report")

console = Console()
err = Console(stderr=True)

EXAMPLE_REGISTRY = Path(__file__).resolve().parent.parent / "examples" / "registry.yaml"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _require_specs() -> None:
    """Stop with the settings' clear message when the official pagoPA specifications are missing."""
    from models.settings import SpecsNotFoundError, get_settings

    try:
        get_settings().pagopa_api_dir()
    except SpecsNotFoundError as exc:  # one unwrapped line, so that the path can be copied
        err.print("[red]error:[/red]", escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the database schema (SQLite or PostgreSQL, per PAGOFLOW_DATABASE_URL)."""
    from models.migrate import upgrade

    before, after = upgrade(revision=revision)
    if before == after:
        console.print(f"database already at revision {after}")
    else:
        console.print(f"database upgraded from {before or 'empty'} to {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and of the code."""
    from models.migrate import current_revision, head_revision

    console.print(f"database: {current_revision() or 'empty'}; code: {head_revision()}")


def _load_registry_file(path: Path):  # type: ignore[no-untyped-def]
    import yaml

    from rules.registry import RegistryError, parse_registry

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        _fail(f"{path} is not valid YAML: {exc}")
    try:
        return parse_registry(data)
    except RegistryError as exc:
        _fail(f"{path}: {exc}")


def apply_registry_file(path: Path, *, dry_run: bool = False) -> str:
    """Validate and apply a registry file; returns the report summary (used by the demo too)."""
    from models.db import session_scope
    from store.registry import apply_registry

    spec = _load_registry_file(path)
    with session_scope() as session:
        report = apply_registry(session, spec=spec)
        if dry_run:
            session.rollback()
    verdict = "nothing changed" if not report.changed else ("would change" if dry_run else "applied")
    return f"{report.summary()}\n{verdict}"


@config_app.command("apply")
def config_apply(
    file: Annotated[Path, typer.Argument(help="Registry YAML file.", exists=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show what would change.")] = False,
) -> None:
    """Upsert the registry from FILE, all or nothing; a second apply changes nothing and says so."""
    console.print(apply_registry_file(file, dry_run=dry_run), highlight=False)


_SHOW_COLUMNS = {
    "broker": ["id_intermediario", "name"],
    "station": ["id_stazione", "version", "publication", "reporting", "legacy_rpt", "checkout", "auth_method"],
    "creditor": ["id_dominio", "name", "id_stazione", "aux_digit", "segregation_code", "application_code",
                 "iuv_prefix", "cbill"],
    "iban_account": ["id_dominio", "iban", "postal", "treasury"],
    "organisational_unit": ["id_dominio", "code", "name"],
    "debt_type": ["id_dominio", "code", "description", "iuv_prefix", "default_revenue_code"],
    "revenue_type": ["id_dominio", "code", "iban", "accounting_type", "accounting_code"],
    "application": ["id_a2a", "name", "principal", "own_iuv", "notification_url"],
    "application_grant": ["id_a2a", "id_dominio", "debt_type"],
    "operator": ["username", "full_name", "role", "all_creditors"],
    "operator_grant": ["username", "id_dominio"],
}


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the registry as stored (credentials shown only as '(set)')."""
    from models.db import session_scope
    from store.registry import registry_snapshot

    with session_scope() as session:
        snapshot = registry_snapshot(session)
    if as_json:
        sys.stdout.write(json.dumps(snapshot, default=str, indent=2) + "\n")
        return
    for entity, rows in snapshot.items():
        if not rows:
            continue
        table = Table(title=f"{entity} ({len(rows)})", title_justify="left")
        columns = [c for c in _SHOW_COLUMNS.get(entity, list(rows[0])) if c in rows[0]]
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*["" if row[c] is None else str(row[c]) for c in columns])
        console.print(table)


@config_app.command("hash-secret")
def config_hash_secret() -> None:
    """Hash a password or API key (read from standard input) for the registry file."""
    from rules.credentials import hash_secret

    secret = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else typer.prompt(
        "secret", hide_input=True, confirmation_prompt=True)
    if not secret:
        _fail("empty secret")
    sys.stdout.write(hash_secret(secret) + "\n")


@app.command("remittance")
def remittance(text: Annotated[str, typer.Argument(help="Remittance text of a treasury movement.")]) -> None:
    """Print what a remittance names: {"kind": flow|iuv|truncated|none, "reference", "integrative"}."""
    from rules.remittance import parse_remittance

    sys.stdout.write(json.dumps(parse_remittance(text).to_dict()) + "\n")


@app.command("sandbox")
def sandbox(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (faults, ids).")] = 0,
    config: Annotated[Path | None, typer.Option(help="Sandbox configuration file (JSON or YAML).")] = None,
) -> None:
    """Run the local pagoPA sandbox (GPD, ACA, PSP, FdR, Node SOAP, Checkout)."""
    _require_specs()
    from sandbox.server import run

    run(host=host, port=port, seed=seed, config_file=str(config) if config else None)


@app.command("journal")
def journal(
    iuv: Annotated[str | None, typer.Option(help="IUV (creditor reference).")] = None,
    nav: Annotated[str | None, typer.Option("--avviso", help="Notice number (NAV).")] = None,
    flusso: Annotated[str | None, typer.Option(help="Reporting flow id (idFlusso).")] = None,
    ricevuta: Annotated[str | None, typer.Option(help="Receipt id.")] = None,
    file: Annotated[str | None, typer.Option(help="File name (treasury or bulk).")] = None,
    dominio: Annotated[str | None, typer.Option(help="EC fiscal code.")] = None,
    component: Annotated[str | None, typer.Option(help="station, gpd, fdr, nodo, sftp, ente, ...")] = None,
    outcome: Annotated[str | None, typer.Option(help="OK, KO or FAIL.")] = None,
    day: Annotated[str | None, typer.Option("--date", help="Day (YYYY-MM-DD, Italian time).")] = None,
    payloads: Annotated[bool, typer.Option(help="Show the stored payloads too.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 200,
) -> None:
    """Search the event journal: what happened to this payment, flow or file?"""
    from datetime import date as _date

    from models.db import session_scope
    from store.journal import JournalQuery, search_events

    query = JournalQuery(id_dominio=dominio, iuv=iuv, nav=nav, id_flusso=flusso, receipt_id=ricevuta, file_name=file,
                         component=component, outcome=outcome, day=_date.fromisoformat(day) if day else None)
    if query == JournalQuery():
        _fail("give at least one of --iuv, --avviso, --flusso, --ricevuta, --file, --dominio, --date")
    with session_scope() as session:
        events = search_events(session, query=query, limit=limit)
    table = Table(title=f"{len(events)} event(s)", title_justify="left")
    for column in ("at (UTC)", "component", "operation", "role", "outcome", "ms", "keys", "fault / error"):
        table.add_column(column)
    for e in events:
        keys = " ".join(f"{k}={v}" for k, v in (("ec", e.id_dominio), ("iuv", e.iuv), ("nav", e.nav),
                                                ("rt", e.receipt_id), ("flusso", e.id_flusso), ("file", e.file_name))
                        if v)
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.component, e.operation, e.role, e.outcome,
                      str(e.duration_ms or ""), keys, (e.fault_code or e.error or "")[:80])
    console.print(table)
    if payloads:
        for e in events:
            for label, body in (("request", e.request_payload), ("response", e.response_payload)):
                if body:
                    console.rule(f"event {e.id} {label}")
                    console.print(body, markup=False, highlight=False)


def _last_runs() -> dict[str, tuple[str, str]]:
    """Last run of each flow from the Prefect server (empty without PREFECT_API_URL or when unreachable)."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        return {}
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
            names = {f.id: f.name for f in client.read_flows(limit=200)}
    except Exception as exc:  # status must answer even when the server does not
        err.print(f"[yellow]Prefect server not reachable: {exc}[/yellow]")
        return {}
    last: dict[str, tuple[str, str]] = {}
    for run in runs:
        name = names.get(run.flow_id, "?")
        if name not in last and run.state is not None:
            when = run.start_time.strftime("%Y-%m-%d %H:%M") if run.start_time else "-"
            last[name] = (when, run.state.name)
    return last


@app.command("status")
def status() -> None:
    """Health of each stage: last run (from the Prefect server, if PREFECT_API_URL is set), backlog, failures."""
    from models.db import session_scope
    from store.backlog import stage_backlog

    with session_scope() as session:
        backlog = stage_backlog(session)
    runs = _last_runs()
    table = Table(title="pagoflow stages", title_justify="left")
    for column in ("stage", "last run", "state", "backlog", "failures (24 h)"):
        table.add_column(column)
    for stage, figures in backlog.items():
        when, state = runs.get(stage, ("-", "-"))
        table.add_row(stage, when, state, str(figures["backlog"]), str(figures["failures_24h"]))
    console.print(table)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the web process: the GovPay-compatible API (and the station) over HTTP."""
    _require_specs()
    import uvicorn

    uvicorn.run("web.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@app.command("demo")
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Folder of the demo's database, files and Prefect server.")
    ] = Path("var/demo"),
    positions: Annotated[int, typer.Option(help="Positions in the bulk file.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 2026,
) -> None:
    """The main job on the embedded default: a whole day of an intermediary against the pagoPA sandbox."""
    _require_specs()
    from cli.demo import run_demo

    started = time.monotonic()
    result = run_demo(workdir=workdir, positions=positions, seed=seed, console=console)
    console.print(f"\n[bold]Done in {time.monotonic() - started:.0f} s.[/bold] "
                  f"Database: {result.workdir / 'pagoflow.db'}")
    table = Table(title="The day per EC", title_justify="left")
    for column in ("EC", "positions", "receipts", "paid", "flows", "money", "cashed", "anomalies"):
        table.add_column(column)
    for f in result.counts.get("figures", []):
        table.add_row(f["name"], str(f["positions"]), str(f["receipts"]), str(f["paid"]), str(f["flows"]),
                      str(f["money"]), str(f["cashed"]), str(f["anomalies"]))
    console.print(table)
    if result.reports:
        console.print(f"Reconciliation reports (HTML, CSV, PDF; prospetto riscossioni in CSV, PDF) in "
                      f"{result.workdir / 'reports'}:", highlight=False)
        for report in result.reports:
            if report.endswith(".html"):
                console.print(f"  {report}", highlight=False)
    if result.prefect_home:
        console.print(f"Prefect UI on these runs: PREFECT_HOME={result.prefect_home} "
                      ".venv/bin/prefect server start  then open http://127.0.0.1:4200", highlight=False)
    console.print(f"Event journal: PAGOFLOW_DATABASE_URL=sqlite:///{result.workdir / 'pagoflow.db'} "
                  ".venv/bin/pagoflow journal --date " + __import__("datetime").date.today().isoformat(),
                  highlight=False)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
