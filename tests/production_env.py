"""The production shape on one machine, for tests/test_two_workers.py and bench/production.py.

PostgreSQL for the platform and for a Prefect server of its own (``prefect server start``), a process work
pool, ``prefect deploy --all`` from the project's prefect.yaml and N ``prefect worker start`` processes; the
secrets the workers need (GPD subscription key, station passwords, SFTP password, the application's
notification password) live in Prefect Secret blocks and the registry names them ``block:…``. The counterparts
run in threads of the calling process: the pagoPA sandbox, the platform's web process (the station), the
treasury bank's SFTP server and an application's notification endpoint.

A day is prepared before the workers start: positions of two ECs (GPD with FdR REST, ACA with SOAP flows),
most of them paid by three sandbox PSPs through the station, the day settled (reporting flows and treasury
journals on the SFTP server); the rest waits for publication. The Prefect server boots meanwhile.

Every process started here is started in a session of its own and stopped with its children (the flow runs a
worker spawned), whatever happens; every thread and server is stopped too.
"""

from __future__ import annotations

import base64
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

PROJECT = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"
COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
PSPS = ("BCITITMM", "UNCRITMM", "BPPIITRR")
POOL = "pagoflow"
STATION_KEY = "production-station-inbound-key"  # the web process's own secret: an env reference
# The secrets the workers use, kept in Prefect Secret blocks (block name → value); the registry names them.
BLOCKS = {
    "pagoflow-gpd-subscription-key": "production-gpd-subscription-key",
    "pagoflow-station-01-password": "pwd01Station",
    "pagoflow-station-02-password": "pwd02Station",
    "pagoflow-sftp-comune-password": "production-sftp-password",
    "pagoflow-notify-tributi-password": "production-notify-password",
}
SERVER_BATCHES = {  # ARCHITECTURE: a server records one event per transaction by default
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "200",
}
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
# Off for a run on demand: the scheduler would start the cron runs of prefect.yaml (notify-applications every
# minute) beside the runs under study; the others watch for things that do not happen in a few minutes.
UNSCHEDULED = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in ("SCHEDULER", "LATE_RUNS", "PAUSE_EXPIRATIONS", "CANCELLATION_CLEANUP", "REPOSSESSOR",
                 "DB_VACUUM", "TRIGGERS")
}
# A test reads runs and states, never the event feed: the server need not store every event it hears.
LEAN = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in ("EVENT_PERSISTER", "FOREMAN")}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def asyncpg_url(url: str) -> str:
    """The same PostgreSQL database as a ``postgresql+asyncpg://`` URL (what the Prefect server wants)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


# --- processes ----------------------------------------------------------------------------------------------


class ProcessGroup:
    """Subprocesses started in sessions of their own, stopped with their children whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of each process and its waited-for children, at its end
        logs.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = PROJECT
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``<logs>/<name>.log``."""
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv of our own tools
                argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        """The end of a process's output (for failure messages)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def wait(self, name: str, proc: subprocess.Popen[bytes], *, timeout: float) -> str:
        """Wait for a command to end; its output, or RuntimeError with it if it failed or took too long."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise RuntimeError(f"{name}: not done in {timeout:.0f}s:\n{self.log(name)}") from None
        self.procs.pop(name, None)
        if code != 0:
            raise RuntimeError(f"{name} failed ({code}):\n{self.log(name)}")
        return self.log(name)

    def stop(self, name: str, *, timeout: float = 20) -> None:
        """SIGTERM to the process's group (it and the flow runs it started), SIGKILL if it lingers."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        self.cpu[name] = cpu_seconds(proc.pid)
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal(proc, signal.SIGKILL)  # children left behind by a process that exited
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be refused
            pass

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group whose leader we started (start_new_session): ours only
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        """Stop every process, the last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a live process and of the children it has waited for (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process: its own PREFECT_HOME, no telemetry, the API when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(QUIET, PREFECT_HOME=str(home), PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def start_prefect_server(
    group: ProcessGroup, *, home: Path, database_url: str, ui: bool, schedules: bool, lean: bool
) -> str:
    """``prefect server start`` on PostgreSQL (asyncpg), raised batch sizes; its API URL (still booting)."""
    port = free_port()
    env = prefect_env(home, PREFECT_API_DATABASE_CONNECTION_URL=asyncpg_url(database_url),
                      PREFECT_UI_ENABLED="true" if ui else "false", **SERVER_BATCHES,
                      **({} if schedules else UNSCHEDULED), **(LEAN if lean else {}))  # fmt: skip
    argv = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    group.start("prefect-server", argv, env=env)
    return f"http://127.0.0.1:{port}/api"


def wait_for_api(group: ProcessGroup, url: str, *, timeout: float) -> float:
    """Wait until the server answers its health check; returns the seconds waited."""
    started = time.monotonic()
    proc = group.procs["prefect-server"]
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError("the Prefect server did not start:\n" + group.log("prefect-server"))
        time.sleep(0.25)


# --- the counterparts (threads of this process) -------------------------------------------------------------


@dataclass
class Notified:
    """What the application's endpoint received: (EC, IUV, receiptId) calls and the credentials used."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _receiver(notified: Notified) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request: Request) -> JSONResponse:
        p = request.path_params
        with notified.lock:
            notified.calls.append((p["id_dominio"], p["iuv"], p["id_ricevuta"]))
            notified.authorizations.add(request.headers.get("authorization", ""))
        return JSONResponse({"esito": "OK"})

    route = Route("/govpay-ente/ricevute/{id_dominio}/{iuv}/{id_ricevuta}", receive, methods=["PUT"])
    return Starlette(routes=[route])


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    from tests.live_server import live_server

    with live_server(app) as url:
        yield url


def sandbox_endpoints(url: str) -> dict[str, str]:
    """The PAGOFLOW_PAGOPA_* settings pointing the connectors at a sandbox."""
    from cli.demo import sandbox_endpoints as endpoints

    return endpoints(url)


def registry_file(workdir: Path, *, sftp_port: int, known_hosts: Path, notify_url: str) -> Path:
    """The example registry with every worker secret a ``block:`` reference and the local counterparts."""
    data = yaml.safe_load((PROJECT / "examples" / "registry.yaml").read_text(encoding="utf-8"))
    for station in data["stations"]:
        n = station["id_stazione"][-2:]
        station["password_ref"] = f"block:pagoflow-station-{n}-password"
        station["api_key_ref"] = "block:pagoflow-gpd-subscription-key"
        station["auth"]["secret_ref"] = "env:PAGOFLOW_STATION_INBOUND_KEY"
    for creditor in data["creditors"]:
        creditor["enabled"] = creditor["id_dominio"] != PROVINCIA  # two ECs are enough for the day
    notification = data["applications"][0]["notification"]
    notification.update(url=notify_url, secret_ref="block:pagoflow-notify-tributi-password")
    source = data["treasury_sources"][0]
    source.update(port=sftp_port, known_hosts=str(known_hosts), remote_dir=f"/{COMUNE}",
                  archive_dir=f"/{COMUNE}/archivio", password_ref="block:pagoflow-sftp-comune-password")
    data["treasury_sources"].append({**source, "name": "scuola-tesoreria", "id_dominio": SCUOLA,
                                     "account": "IT65X0306909606000000654321", "remote_dir": f"/{SCUOLA}",
                                     "archive_dir": f"/{SCUOLA}/archivio"})
    path = workdir / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def sandbox_config(*, station_url: str, bank: Path) -> dict[str, Any]:
    """The sandbox's view: our stations at our URL, the two ECs' treasury folders, three PSPs."""
    legacy = station_url.replace("/pagopa/paForNode", "/pagopa/PaPerNodo")
    stations = [{"idStation": sid, "idBroker": "77777777777",
                 "password": BLOCKS[f"pagoflow-station-{sid[-2:]}-password"],
                 "url": station_url, "legacyUrl": legacy, "version": 2,
                 "headers": {"Ocp-Apim-Subscription-Key": STATION_KEY}}
                for sid in ("77777777777_01", "77777777777_02")]  # fmt: skip
    creditors = [
        {"fiscalCode": COMUNE, "name": "Comune di Esempio", "idStation": "77777777777_01",
         "idBroker": "77777777777", "iban": "IT21X0306909606000000123456", "treasuryFormat": "opi",
         "treasuryDir": str(bank / COMUNE)},
        {"fiscalCode": SCUOLA, "name": "Istituto Comprensivo Dimostrativo", "idStation": "77777777777_02",
         "idBroker": "77777777777", "iban": "IT65X0306909606000000654321", "treasuryFormat": "opi",
         "treasuryDir": str(bank / SCUOLA)},
        {"fiscalCode": PROVINCIA, "name": "Provincia Dimostrativa", "idStation": "77777777777_01",
         "idBroker": "77777777777", "iban": "IT58X0103014200000000111222"},
    ]  # fmt: skip
    psps = [{"pspId": psp, "name": f"PSP {psp}", "bic": psp} for psp in PSPS]
    return {"replace": True, "stations": stations, "creditors": creditors, "psps": psps,
            "subscriptionKeys": [BLOCKS["pagoflow-gpd-subscription-key"]],
            "node": {"sendRtAttempts": 3, "sendRtBackoff": 0.05, "maxExchanges": 100_000}}  # fmt: skip


def load_positions(*, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` positions: nine in ten TARI of the Comune (GPD), one in ten MENSA of the school (ACA)."""
    from models.db import session_scope
    from rules.positions import PendenzaPut, validate_position
    from store.positions import load_caller, load_registry_view, upsert_positions

    rng = random.Random(seed)
    due = (date.today() + timedelta(days=30)).isoformat()
    made: list[tuple[str, str]] = []
    with session_scope() as s:
        registry = load_registry_view(s)
        callers = {a: load_caller(s, id_a2a=a) for a in ("A2A-TRIBUTI", "A2A-SCUOLA")}
        batch = []
        for n in range(count):
            amount = f"{rng.randint(1000, 40000) / 100:.2f}"
            school = n % 10 == 9
            voce = ({"ibanAccredito": "IT65X0306909606000000654321", "tipoContabilita": "ALTRO",
                     "codiceContabilita": "MENSA"} if school else {"codEntrata": "TARI"})  # fmt: skip
            body = PendenzaPut.model_validate({
                "idTipoPendenza": "MENSA" if school else "TARI", "idDominio": SCUOLA if school else COMUNE,
                "causale": f"{'Mensa' if school else 'TARI'} {n}", "importo": amount, "dataScadenza": due,
                "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": f"Debitore {n}"},
                "voci": [{"idVocePendenza": "V1", "importo": amount, "descrizione": "Quota", **voce}],
            })  # fmt: skip
            a2a = "A2A-SCUOLA" if school else "A2A-TRIBUTI"
            caller = callers[a2a]
            assert caller is not None
            batch.append(validate_position(body, id_a2a=a2a, id_pendenza=f"PROD-{n:05d}", caller=caller,
                                           registry=registry))  # fmt: skip
        for result in upsert_positions(s, batch=batch):
            if result.error is not None or result.position is None:
                raise RuntimeError(f"position not loaded: {result.error}")
            made.append((result.position.id_dominio, result.position.nav or ""))
    return made


# --- the shape ----------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """The running production shape: URLs, processes, counterparts and what the day looks like."""

    workdir: Path
    platform_url: str
    api_url: str
    group: ProcessGroup
    sandbox: Any
    web_url: str
    notified: Notified
    workers: list[str]
    positions: list[tuple[str, str]]
    paid: dict[str, Any]
    settled: dict[str, Any]
    timings: dict[str, float]
    env: dict[str, str]

    def client(self) -> Any:
        """A synchronous Prefect client of this server (``with shape.client() as c``)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def exchanges(self, **params: Any) -> list[dict[str, Any]]:
        """What the sandbox received (``operation=…``, ``endpoint=…``)."""
        r = httpx.get(f"{self.sandbox.url}/sandbox/exchanges", params={"limit": 0, **params}, timeout=60)
        r.raise_for_status()
        return r.json()

    def run_deployment(self, name: str, *, count: int, parameters: dict[str, Any] | None = None,
                       start_in: float = 20, timeout: float = 300) -> list[Any]:
        """Schedule ``count`` runs of a deployment for one instant ``start_in`` s away; wait for their end.

        The workers take the runs ahead (prefetch) and start their processes, so the runs start together.
        """
        from prefect.client.schemas.objects import StateType
        from prefect.states import Scheduled

        with self.client() as c:
            deployment = c.read_deployment_by_name(name)
            when = datetime.now(UTC) + timedelta(seconds=start_in)
            ids = [c.create_flow_run_from_deployment(deployment.id, parameters=parameters or {},
                                                     state=Scheduled(scheduled_time=when)).id
                   for _ in range(count)]  # fmt: skip
            deadline = time.monotonic() + timeout
            final = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
            while True:
                runs = [c.read_flow_run(i) for i in ids]
                if all(r.state is not None and r.state.type in final for r in runs):
                    return runs
                if time.monotonic() > deadline:
                    states = [(r.name, r.state.name if r.state else None) for r in runs]
                    logs = "\n".join(self.group.log(w, 3000) for w in self.workers)
                    raise RuntimeError(f"{name}: runs not finished after {timeout:.0f}s: {states}\n{logs}")
                time.sleep(0.5)

    def describe(self, runs: list[Any]) -> list[str]:
        """What ran where: each run's worker, process and state, then its stages with their durations."""
        lines = []
        for run in runs:
            worker = (run.labels or {}).get("prefect.worker.name")
            seconds = run.total_run_time.total_seconds()
            pid = run.infrastructure_pid
            lines.append(f"{run.name}: {run.state.name} on {worker} (pid {pid}), {seconds:.1f}s")
            for stage in self.subflow_runs([run.id]):
                args = ", ".join(f"{k}={v}" for k, v in (stage.parameters or {}).items() if v is not None)
                seconds = stage.total_run_time.total_seconds()
                lines.append(f"    {self.flow_name(stage.flow_id):<26} {args:<36} {stage.state.name:<10} "
                             f"{seconds:5.1f}s  {stage.name}")  # fmt: skip
        return lines

    def flow_name(self, flow_id: Any) -> str:
        """The name of a flow by id."""
        with self.client() as c:
            return str(c.read_flow(flow_id).name)

    def subflow_runs(self, parent_ids: list[Any]) -> list[Any]:
        """Every flow run below the given runs (their stages), oldest first."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
        from prefect.client.schemas.sorting import FlowRunSort

        with self.client() as c:
            return list(c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parent_ids)),
                sort=FlowRunSort.START_TIME_ASC, limit=200))  # fmt: skip


def _warm_up() -> None:
    import prefect.blocks.system  # noqa: F401
    import prefect.client.orchestration  # noqa: F401
    import prefect.workers.process  # noqa: F401


def _create_blocks(api_url: str) -> None:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for name, value in BLOCKS.items():
            Secret(value=value).save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]


def _create_pool(api_url: str) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with SyncPrefectClient(api_url) as c:
        template = ProcessWorker.get_default_base_job_template()
        c.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))


def _allow_concurrent_runs(api_url: str, deployment: str, limit: int) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import DeploymentUpdate

    with SyncPrefectClient(api_url) as c:
        found = c.read_deployment_by_name(deployment)
        c.update_deployment(found.id, DeploymentUpdate(concurrency_limit=limit))


def _clear_caches() -> None:
    from cli.demo import _clear_caches as clear

    clear()


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _clear_caches()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_caches()


@contextmanager
def production_shape(
    workdir: Path,
    *,
    platform_url: str,
    prefect_database_url: str,
    workers: int = 2,
    positions: int = 300,
    paid_share: float = 0.6,
    concurrent_daily_cycles: int = 2,
    seed: int = 2026,
    ui: bool = False,
    schedules: bool = False,
    lean: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[Shape]:
    """Bring the production shape up around a prepared day; yields it with the workers polling.

    ``schedules`` False keeps the server's scheduler (and the services watching late or paused runs) off, so
    only the runs asked for run; ``lean`` also stops it storing events and watching workers; ``ui`` serves
    the Prefect UI.
    """
    import logging

    import paramiko

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients hanging up are not news here

    from models.migrate import upgrade
    from sandbox.server import start_in_thread
    from sandbox.sftp import SandboxSftpServer
    from web.app import create_app

    workdir.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(workdir / "logs")
    timings: dict[str, float] = {}
    started = time.monotonic()

    def mark(what: str) -> None:
        timings[what] = round(time.monotonic() - started, 1)
        say(f"{timings[what]:6.1f}s  {what}")

    with ExitStack() as stack:
        stack.callback(group.stop_all)
        api_url = start_prefect_server(
            group, home=workdir / "prefect-server", database_url=prefect_database_url, ui=ui,
            schedules=schedules, lean=lean,
        )
        mark("prefect server starting (PostgreSQL)")
        warmed = threading.Thread(target=_warm_up, name="import-prefect", daemon=True)
        warmed.start()  # the client modules load while the day is prepared, not on the critical path
        bank = workdir / "bank"
        bank.mkdir(exist_ok=True)
        env = {"PAGOFLOW_DATABASE_URL": platform_url, "PAGOFLOW_WORK_DIR": str(workdir / "work"),
               "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY, "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "1",
               "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0.2"}  # fmt: skip
        stack.enter_context(_environ(env))
        upgrade(platform_url)
        mark("platform database migrated (PostgreSQL)")
        sandbox = start_in_thread(seed=seed)
        stack.callback(sandbox.stop)
        env.update(sandbox_endpoints(sandbox.url))
        stack.enter_context(_environ(env))
        sftp = SandboxSftpServer(root=bank, username="tesoreria",
                                 password=BLOCKS["pagoflow-sftp-comune-password"],
                                 host_key=paramiko.ECDSAKey.generate()).start()  # fmt: skip
        stack.callback(sftp.stop)
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(sftp.known_hosts_line() + "\n", encoding="utf-8")
        notified = Notified()
        notify_url = stack.enter_context(_serving(_receiver(notified)))
        from cli.app import apply_registry_file

        apply_registry_file(registry_file(workdir, sftp_port=sftp.port, known_hosts=known_hosts,
                                          notify_url=f"{notify_url}/govpay-ente"))  # fmt: skip
        web_url = stack.enter_context(_serving(create_app()))
        station_url = f"{web_url}/pagopa/paForNode"
        httpx.put(f"{sandbox.url}/sandbox/config", json=sandbox_config(station_url=station_url, bank=bank),
                  timeout=30).raise_for_status()  # fmt: skip
        mark("sandbox, station, SFTP server and notification endpoint up; registry applied")
        made = load_positions(count=positions, seed=seed)
        rng = random.Random(seed)
        payable = made[: int(len(made) * paid_share)]
        batch = [{"noticeNumber": nav, "fiscalCode": ec, "psp": rng.choice(PSPS)} for ec, nav in payable]
        paid = httpx.post(f"{sandbox.url}/sandbox/pay-batch", json={"payments": batch, "concurrency": 8},
                          timeout=600).json()  # fmt: skip
        mark(f"{len(made)} positions loaded, {paid.get('ok')} paid through the station")
        day = {"date": date.today().isoformat(), "seed": seed}
        settled = httpx.post(f"{sandbox.url}/sandbox/settle", json=day, timeout=300).json()
        mark(f"day settled: {len(settled.get('flows', []))} reporting flows, "
             f"{len(settled.get('journals', []))} treasury journals")  # fmt: skip
        warmed.join()
        timings["server ready after"] = round(wait_for_api(group, api_url, timeout=300), 1)
        mark("prefect server healthy")
        _create_pool(api_url)
        mark(f"work pool {POOL!r} (process) created")
        names = [f"worker-{n}" for n in range(1, workers + 1)]
        # a worker asks for work every 5 s and takes runs due within a minute: their processes start (and
        # import everything) ahead of time, then wait for the scheduled instant
        worker_env = prefect_env(workdir / "prefect-worker", api_url, PREFECT_WORKER_QUERY_SECONDS="5",
                                 PREFECT_WORKER_PREFETCH_SECONDS="60", PREFECT_LOGGING_LEVEL="WARNING",
                                 **env)  # fmt: skip
        for name in names:  # they boot while the deployments are made and the blocks saved
            group.start(name, [str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process",
                               "--name", name, "--limit", "1"], env=worker_env)  # fmt: skip
        deploy = group.start("deploy", [str(PREFECT), "--no-prompt", "deploy", "--all"],
                             env=prefect_env(workdir / "prefect-deploy", api_url))  # fmt: skip
        _create_blocks(api_url)
        mark(f"secret blocks saved: {', '.join(BLOCKS)}")
        group.wait("deploy", deploy, timeout=300)
        mark("prefect deploy --all done")
        if concurrent_daily_cycles > 1:
            # prefect.yaml limits each deployment to one run at a time; two at once is what this shape proves
            _allow_concurrent_runs(api_url, "daily-cycle/daily-cycle", concurrent_daily_cycles)
        _wait_for_workers(api_url, names, group, timeout=120)
        mark(f"{workers} process workers online")
        yield Shape(workdir=workdir, platform_url=platform_url, api_url=api_url, group=group, sandbox=sandbox,
                    web_url=web_url, notified=notified, workers=names, positions=made, paid=paid,
                    settled=settled, timings=timings, env=env)  # fmt: skip


def _wait_for_workers(api_url: str, names: list[str], group: ProcessGroup, *, timeout: float) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as c:
        while True:
            online = {w.name for w in c.read_workers_for_work_pool(POOL)}
            if set(names) <= online:
                return
            for name in names:
                proc = group.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{group.log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(set(names) - online)} not online:\n"
                                   + "\n".join(group.log(n) for n in names))  # fmt: skip
            time.sleep(0.5)


# --- reading the outcome ------------------------------------------------------------------------------------


def basic_auth(user: str, password: str) -> str:
    """The Authorization header value of HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def soap_flow_id(request: str | None) -> str:
    """The flow a ``nodoChiediFlussoRendicontazione`` request asked for."""
    found = re.search(r"identificativoFlusso>([^<]+)<", request or "")
    return found.group(1) if found else "?"
