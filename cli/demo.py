"""`pagoflow demo`: the whole day of an intermediary on the embedded default, in one command.

It starts a Prefect server (SQLite, under the demo folder), the local pagoPA sandbox, the platform's web
process (API and station), the treasury bank's SFTP server and an application's notification endpoint, all
on loopback; loads a bulk file, publishes, lets the sandbox PSPs pay (with a double payment, an expired
notice and faults), settles the day, downloads the flows, ingests the treasury journal, reconciles, notifies
and writes the reports; then stops everything it started.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_REGISTRY = ROOT / "examples" / "registry.yaml"
COMUNE, SCUOLA = "01234567897", "80001234568"
STATION_KEY = "demo-station-inbound-key"
GPD_KEY = "demo-gpd-subscription-key"
NOTIFY_PASSWORD = "demo-notify-password"  # noqa: S105 - a demo value, printed in the README
SFTP_PASSWORD = "demo-sftp-password"  # noqa: S105


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoResult:
    """What the demo did, for the console and for tests."""

    workdir: Path
    counts: dict[str, Any] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)
    prefect_home: Path | None = None
    # what the sandbox (pagoPA's side) answered: the payments (``pay-batch``) and the settlement (``settle``)
    sandbox: dict[str, Any] = field(default_factory=dict)


def sandbox_endpoints(url: str) -> dict[str, str]:
    """The PAGOFLOW_PAGOPA_* settings that point the platform's connectors at a sandbox."""
    return {
        "PAGOFLOW_PAGOPA_GPD_URL": f"{url}/gpd/debt-positions-service/v1",
        "PAGOFLOW_PAGOPA_ACA_URL": f"{url}/aca/v1",
        "PAGOFLOW_PAGOPA_FDR_URL": f"{url}/fdr-org/service/v1",
        "PAGOFLOW_PAGOPA_NODO_URL": f"{url}/nodo/nodoPerPa",
        "PAGOFLOW_PAGOPA_BIZEVENTS_URL": f"{url}/bizevents/service/v1",
        "PAGOFLOW_PAGOPA_GPD_RECEIPTS_URL": f"{url}/gpd/payments-receipts-service/v1",
        "PAGOFLOW_PAGOPA_CHECKOUT_URL": f"{url}/checkout/ec/v1",
    }


def write_bulk_file(path: Path, *, count: int, seed: int) -> list[str]:
    """A GovPay-layout CSV of ``count`` positions (TARI of the Comune, one in ten MENSA of the school)."""
    rng = random.Random(seed)  # noqa: S311 - demo data, reproducible by design
    due = (date.today() + timedelta(days=30)).isoformat()
    header = ["idA2A", "idPendenza", "idDominio", "numeroAvviso", "tipoPendenza", "idUnitaOperativa",
              "causale", "annoRiferimento", "cartellaPagamento", "datiAllegati", "direzione", "divisione",
              "importo", "dataValidita", "dataScadenza", "tassonomiaAvviso", "tipoSoggettoPagatore",
              "identificativoPagatore", "anagraficaPagatore", "indirizzo", "civico", "cap", "localita",
              "provincia", "nazione", "email", "cellulare", "idVoce1", "importoVoce1", "descrizioneVoce1",
              "ibanAccredito1", "tipoEntrata1", "tipoBollo1", "ibanAppoggio1", "tipoContabilita1",
              "codiceContabilita1", "hashBollo1", "provinciaBollo1"]
    ids = []
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(header)
        for n in range(count):
            amount = f"{rng.randint(1000, 40000) / 100:.2f}"
            ids.append(f"DEMO-{n:05d}")
            if n % 10 == 9:
                row = ["A2A-SCUOLA", f"DEMO-{n:05d}", SCUOLA, "", "MENSA", "", f"Mensa scolastica {n}",
                       "2026", "", "", "", "", amount, "", due, "", "F", "VRDLGU10A01H501X", f"Alunno {n}",
                       "", "", "", "", "", "", "", "", "V1", amount, "Mensa", "IT65X0306909606000000654321",
                       "", "", "", "ALTRO", "MENSA", "", ""]
            else:
                row = ["A2A-TRIBUTI", f"DEMO-{n:05d}", COMUNE, "", "TARI", "", f"TARI 2026 utenza {n}",
                       "2026", "", "", "", "", amount, "", due, "", "F", "RSSMRA80A01H501U",
                       f"Contribuente {n}", "Via Roma", str(n % 200 + 1), "00100", "Roma", "RM", "IT", "", "",
                       "V1", amount, "Tassa rifiuti", "", "TARI", "", "", "", "", "", ""]
            writer.writerow(row)
    return ids


@contextmanager
def _prefect_server(home: Path, console: Console) -> Iterator[str]:
    """A Prefect server of the demo's own (SQLite under ``home``), so the runs stay visible in its UI."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200",
           "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
           "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "200"}
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("wb")
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],  # noqa: S603
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300  # a new server's database: 20 s on two idle cores, minutes if busy
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start (see {home / 'server.log'})")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


def _registry(workdir: Path, *, sftp_port: int, known_hosts: Path, notify_url: str) -> Path:
    data = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    source = data["treasury_sources"][0]
    source.update(port=sftp_port, known_hosts=str(known_hosts), remote_dir=f"/{COMUNE}", archive_dir=None)
    data["treasury_sources"].append({**source, "name": "scuola-tesoreria", "id_dominio": SCUOLA,
                                     "account": "IT65X0306909606000000654321", "remote_dir": f"/{SCUOLA}"})
    data["applications"][0]["notification"]["url"] = notify_url
    path = workdir / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _notification_receiver() -> tuple[Any, list[str]]:
    """The application side: an HTTP endpoint that records what pagoflow notifies."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    received: list[str] = []

    async def receive(request: Request) -> JSONResponse:
        received.append(request.path_params["iuv"])
        return JSONResponse({"esito": "OK"})

    app = Starlette(routes=[Route("/govpay-ente/ricevute/{id_dominio}/{iuv}/{id_ricevuta}", receive,
                                  methods=["PUT"])])
    return app, received


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread


def run_demo(*, workdir: Path, positions: int = 2000, seed: int = 2026, console: Console | None = None,
             prefect_server: bool = True, faults: float = 0.05) -> DemoResult:
    """Run the demo end to end; returns counts and report paths. Everything started is stopped."""
    console = console or Console()
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "bank").mkdir(parents=True)
    result = DemoResult(workdir=workdir, prefect_home=workdir / "prefect" if prefect_server else None)
    os.environ.update({
        "PAGOFLOW_DATABASE_URL": f"sqlite:///{workdir / 'pagoflow.db'}", "PAGOFLOW_WORK_DIR": str(workdir),
        "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY, "PAGOFLOW_GPD_SUBSCRIPTION_KEY": GPD_KEY,
        "PAGOFLOW_STATION_01_PASSWORD": "pwd01Station", "PAGOFLOW_STATION_02_PASSWORD": "pwd02Station",
        "PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD": NOTIFY_PASSWORD, "PAGOFLOW_SFTP_COMUNE_PASSWORD": SFTP_PASSWORD,
        "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "1", "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0.2",
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore", "PREFECT_LOGGING_LEVEL": "ERROR",
    })
    if prefect_server:
        (workdir / "prefect").mkdir()
    with _prefect_server(workdir / "prefect", console) if prefect_server else _nothing() as api_url:
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
        _clear_caches()
        _run_stages(result, workdir=workdir, positions=positions, seed=seed, console=console, faults=faults)
    return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _clear_caches() -> None:
    from connectors.pagopa.config import get_endpoints
    from models import db as models_db
    from models.settings import get_settings
    from web.station import registry_cache

    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    get_endpoints.cache_clear()
    registry_cache.clear()


def _run_stages(result: DemoResult, *, workdir: Path, positions: int, seed: int, console: Console,
                faults: float) -> None:
    import logging

    import paramiko

    from models.migrate import upgrade

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients hanging up are not news here
    from sandbox.server import start_in_thread
    from sandbox.sftp import SandboxSftpServer

    upgrade()
    sandbox = start_in_thread(seed=seed)
    os.environ.update(sandbox_endpoints(sandbox.url))
    _clear_caches()
    bank = SandboxSftpServer(root=workdir / "bank", username="tesoreria", password=SFTP_PASSWORD,
                             host_key=paramiko.ECDSAKey.generate()).start()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(bank.known_hosts_line() + "\n", encoding="utf-8")
    web_port, notify_port = free_port(), free_port()
    receiver_app, notified = _notification_receiver()
    servers = [_serve(receiver_app, notify_port)]
    try:
        from cli.app import apply_registry_file

        apply_registry_file(_registry(workdir, sftp_port=bank.port, known_hosts=known_hosts,
                                      notify_url=f"http://127.0.0.1:{notify_port}/govpay-ente"))
        with _web_process(web_port, log=workdir / "web.log"):
            station = f"http://127.0.0.1:{web_port}/pagopa/paForNode"
            _configure_sandbox(sandbox.url, station=station, bank=workdir / "bank")
            with Progress(TextColumn("{task.description:<38}"), BarColumn(bar_width=10), TimeElapsedColumn(),
                          TextColumn("{task.fields[info]}"), console=console) as progress:
                _pipeline(result, progress=progress, sandbox_url=sandbox.url, workdir=workdir,
                          positions=positions, seed=seed, faults=faults)
        result.counts["notifications received by the application"] = len(notified)
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)
        bank.stop()
        sandbox.stop()


@contextmanager
def _web_process(port: int, *, log: Path) -> Iterator[None]:
    """The platform's web process (API and station) in a process of its own, as in production.

    The sandbox's PSPs pay through it: in a thread of this process the station and the sandbox would share one
    interpreter lock, and the payments would take twice as long on two cores.
    """
    out = log.open("wb")
    proc = subprocess.Popen(  # noqa: S603 - this interpreter running uvicorn on our app
        [sys.executable, "-m", "uvicorn", "--factory", "web.app:create_app", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the web process did not start (see {log})")
            time.sleep(0.2)
        yield
    finally:
        _stop(proc)
        out.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child process: politely, then by force after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _configure_sandbox(url: str, *, station: str, bank: Path) -> None:
    stations = [{"idStation": sid, "idBroker": "77777777777", "password": f"pwd{sid[-2:]}Station",
                 "url": station, "version": 2, "headers": {"Ocp-Apim-Subscription-Key": STATION_KEY}}
                for sid in ("77777777777_01", "77777777777_02")]
    creditors = [
        {"fiscalCode": COMUNE, "name": "Comune di Esempio", "idStation": "77777777777_01",
         "idBroker": "77777777777", "iban": "IT21X0306909606000000123456", "treasuryFormat": "opi",
         "treasuryDir": str(bank / COMUNE)},
        {"fiscalCode": SCUOLA, "name": "Istituto Comprensivo Dimostrativo", "idStation": "77777777777_02",
         "idBroker": "77777777777", "iban": "IT65X0306909606000000654321", "treasuryFormat": "opi",
         "treasuryDir": str(bank / SCUOLA)},
        {"fiscalCode": "00987654324", "name": "Provincia Dimostrativa", "idStation": "77777777777_01",
         "idBroker": "77777777777", "iban": "IT58X0103014200000000111222", "treasuryFormat": "opi",
         "treasuryDir": str(bank / "00987654324")},
    ]
    config = {"replace": True, "stations": stations, "creditors": creditors, "subscriptionKeys": [GPD_KEY],
              "node": {"sendRtAttempts": 3, "sendRtBackoff": 0.05}}
    httpx.put(f"{url}/sandbox/config", json=config, timeout=10).raise_for_status()


def fault_rules(rate: float) -> list[dict[str, Any]]:
    """Sandbox faults on every pagoPA service the platform calls: latency, 5xx/429 and dropped connections."""
    if rate <= 0:
        return []
    return [{"path": prefix, "latencyMs": 5, "jitterMs": 20, "errorRate": rate, "error": error,
             "dropRate": rate / 2, "retryAfter": 0}
            for prefix, error in (("/gpd/", "http_503"), ("/aca/", "http_502"), ("/fdr-org/", "http_429"),
                                  ("/bizevents/", "http_503"), ("/nodo/", "soap_fault"))]


def _pipeline(result: DemoResult, *, progress: Progress, sandbox_url: str, workdir: Path, positions: int,
              seed: int, faults: float) -> None:
    from flows.download_reporting_flows import download_reporting_flows
    from flows.ingest_treasury import ingest_treasury
    from flows.load_positions import load_positions
    from flows.notify_applications import notify_applications
    from flows.publish_positions import publish_positions
    from flows.receipts import receipts
    from flows.reconcile import reconcile
    from models.db import session_scope
    from store.status import ec_figures

    def stage(description: str):  # type: ignore[no-untyped-def]
        return progress.add_task(description, total=1, info="")

    t = stage("load the bulk file (load-positions)")
    bulk = workdir / "tracciato.csv"
    write_bulk_file(bulk, count=positions, seed=seed)
    loaded = load_positions(path=str(bulk), batch_size=500)
    progress.update(t, completed=1, info=_short(loaded))
    result.counts["bulk"] = loaded

    t = stage("publish to GPD/ACA (publish-positions)")
    # pagoPA misbehaves from here on (latency, errors, dropped connections): every stage must converge anyway
    httpx.put(f"{sandbox_url}/sandbox/faults", json={"seed": seed, "rules": fault_rules(faults)},
              timeout=10).raise_for_status()
    published = _converge(publish_positions, done=lambda r: not r.get("failed"), total="published")
    published["published"] = _count_published()  # the database says what is published, whatever runs failed
    progress.update(t, completed=1, info=f"{published['published']} published")
    result.counts["publication"] = published

    t = stage("citizens pay at the PSPs (sandbox)")
    navs = _payable(limit=int(positions * 0.85) + 1)
    batch = [{"noticeNumber": nav, "fiscalCode": ec} for ec, nav in navs[:-1]]
    if batch:
        batch[0]["times"] = 2  # one notice paid twice by two PSPs
    paid = httpx.post(f"{sandbox_url}/sandbox/pay-batch", json={"payments": batch, "concurrency": 8},
                      timeout=600).json()
    expired = _pay_too_late(sandbox_url, *navs[-1]) if len(navs) > len(batch) else None
    progress.update(t, completed=1, info=f"{paid.get('ok')} paid, {paid.get('ko')} refused"
                    + (f", 1 expired ({expired.get('faultCode')})" if expired else ""))
    result.counts["payments"] = {"ok": paid.get("ok"), "ko": paid.get("ko"), "expired": int(bool(expired))}
    result.sandbox["payments"] = paid.get("results", [])
    result.sandbox["expired"] = expired

    t = stage("receipts and notifications")
    recovered = _converge(receipts)
    notified = _converge(notify_applications, done=lambda r: not r.get("failed"), total="delivered")
    progress.update(t, completed=1, info=_short(notified))
    result.counts["receipts"] = recovered
    result.counts["notifications"] = notified

    t = stage("the PSPs settle the day (sandbox)")
    settled = httpx.post(f"{sandbox_url}/sandbox/settle", timeout=120, json={
        "date": date.today().isoformat(), "seed": seed, "noise": {"unrelated": 2}}).json()
    progress.update(t, completed=1, info=f"{len(settled.get('flows', []))} flows")
    result.sandbox["settlement"] = settled

    t = stage("download reporting flows")
    downloaded = _converge(download_reporting_flows)
    progress.update(t, completed=1, info=_short(downloaded))
    result.counts["reporting"] = downloaded

    t = stage("ingest the treasury journal (SFTP)")
    ingested = _converge(ingest_treasury, archive=False)
    progress.update(t, completed=1, info=_short(ingested))
    result.counts["treasury"] = ingested

    httpx.delete(f"{sandbox_url}/sandbox/faults", timeout=10)
    t = stage("reconcile and write the reports")
    reconciled = reconcile()  # each EC's daily report and prospetto, under <workdir>/reports/<EC>/<date>/
    progress.update(t, completed=1, info=", ".join(f"{s['id_dominio']}: {s['flows_cashed']} flows cashed"
                                                    for s in reconciled if s["flows_cashed"]))
    result.counts["reconciliation"] = reconciled
    result.reports.extend(_reports(reconciled))
    with session_scope() as session:
        result.counts["figures"] = [f.__dict__ for f in ec_figures(session)]


def _converge(run, *, done=None, total: str | None = None, attempts: int = 4,  # type: ignore[no-untyped-def]
              **kwargs: Any) -> dict[str, Any]:
    """Run a flow until it completes and ``done`` holds, as its schedule would (every stage is idempotent).

    ``total`` names a count to add up across the runs (e.g. positions published by the first and the second
    run).
    """
    summed = 0
    result: dict[str, Any] = {}
    for _ in range(attempts):
        state = run(**kwargs, return_state=True)
        value = state.result(raise_on_failure=False)
        result = value if isinstance(value, dict) else {}
        if total:
            summed += int(result.get(total, 0) or 0)
        if state.is_completed() and (done is None or done(result)):
            break
    if total:
        result = {**result, total: summed}
    return result


def _pay_too_late(sandbox_url: str, id_dominio: str, nav: str) -> dict[str, Any]:
    """A citizen who takes too long: the PSP's outcome comes after the payment token expired (no receipt)."""
    def expiry(seconds: float) -> None:
        httpx.put(f"{sandbox_url}/sandbox/config", json={"node": {"tokenExpirySeconds": seconds}},
                  timeout=10).raise_for_status()

    expiry(0.5)
    try:
        return httpx.post(f"{sandbox_url}/sandbox/pay", json={"noticeNumber": nav, "fiscalCode": id_dominio,
                                                             "outcomeDelay": 1.0}, timeout=60).json()
    finally:
        expiry(1800)


def _count_published() -> int:
    from sqlmodel import func, select

    from models.db import session_scope
    from models.positions import Position

    with session_scope() as session:
        return int(session.exec(select(func.count()).select_from(Position)
                                .where(Position.publication_state == "PUBLISHED")).one())


def _payable(*, limit: int) -> list[tuple[str, str]]:
    from sqlmodel import select

    from models.db import session_scope
    from models.positions import Position

    with session_scope() as session:
        rows = session.exec(select(Position.id_dominio, Position.nav).where(Position.state == "NON_ESEGUITA")
                            .order_by(Position.id).limit(limit)).all()
    return [(ec, nav) for ec, nav in rows if nav]


def _reports(reconciled: list[dict[str, Any]]) -> list[str]:
    """The report files the reconcile flow wrote, EC by EC (daily report in HTML, CSV, PDF; prospetto)."""
    return [path for s in reconciled if s.get("reports") for path in sorted(s["reports"]["files"].values())]


def _short(summary: Any) -> str:
    if isinstance(summary, dict):
        parts = [f"{k} {v}" for k, v in summary.items() if isinstance(v, int) and v]
        return ", ".join(parts[:4])
    return ""
