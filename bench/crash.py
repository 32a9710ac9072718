"""Crash and resume: each stage killed by SIGKILL at random points, re-run to the end, invariants checked.

Run: .venv/bin/python bench/crash.py [--seed 5] [--kills 3] [--positions 400] [--postgres]

The chain of the demo (cli/demo.py) runs stage by stage against the sandbox, each stage in a process of its
own: load-positions, publish-positions, the station (the web process, while the sandbox PSPs pay), then after
the settlement download-reporting-flows, receipts, notify-applications, ingest-treasury and reconcile. Each
stage is started ``--kills`` times and killed with SIGKILL at a seeded random point: once a random share of
its work is visible in the database (rows loaded, positions published, receipts stored, flows stored,
notifications delivered), or after a random delay for the stages whose work is one transaction (ingest,
reconcile) and when the drawn share is nothing. Then it runs again until it completes, as its schedule would.
At the end the database is checked by SQL (``database_invariants``) and against the sandbox's own records.

Stage processes are forked from a ``multiprocessing`` fork server that imported the flows once, so a start
costs a fork rather than a 10 s import; each one is a real process, killed by the kernel like any other. The
Prefect API is a temporary local server (``prefect_test_harness``). The re-runs of receipts pass ``now`` 31
minutes ahead (the attempts the station left unanswered have expired by then) and those of notify-applications
two hours ahead (the claims of a killed run have run out), as the next scheduled runs would find them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from sqlalchemy import func, text  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from models.bulk import BulkFile, BulkRow  # noqa: E402
from models.counters import IuvCounter  # noqa: E402
from models.notifications import Notification  # noqa: E402
from models.payments import Collection, Receipt  # noqa: E402
from models.positions import Position  # noqa: E402
from models.registry import Creditor  # noqa: E402
from models.reporting import ReportingFlow  # noqa: E402
from models.treasury import TreasuryFile, TreasuryMovement  # noqa: E402

FLOWS = {
    "load-positions": "flows.load_positions:load_positions",
    "publish-positions": "flows.publish_positions:publish_positions",
    "download-reporting-flows": "flows.download_reporting_flows:download_reporting_flows",
    "receipts": "flows.receipts:receipts",
    "notify-applications": "flows.notify_applications:notify_applications",
    "ingest-treasury": "flows.ingest_treasury:ingest_treasury",
    "reconcile": "flows.reconcile:reconcile",
}
STAGES = (
    "load-positions",
    "publish-positions",
    "station",
    "download-reporting-flows",
    "receipts",
    "notify-applications",
    "ingest-treasury",
    "reconcile",
)
SOURCES = ("01234567897", "80001234568")  # the ECs whose journals the registry fetches (treasury_sources)
PRELOAD = ["bench.crash", "web.app", "uvicorn", *sorted({v.split(":")[0] for v in FLOWS.values()})]
PSPS = ("BCITITMM", "UNCRITMM", "BPPIITRR", "PASCITMM")
# Runs of these stages happen later in time than the previous one by this much (their ``now``): the attempts a
# dead station left unanswered have expired, the claims of a killed run have run out.
LATER = {"receipts": timedelta(minutes=31), "notify-applications": timedelta(hours=2)}


# --- the invariants, by SQL ------------------------------------------------------------------------------


def _scalar(session: Session, stmt: Any) -> Any:
    return session.exec(stmt).one()


def _duplicates(session: Session, *columns: Any, where: Any = None) -> int:
    """How many keys of these columns occur more than once (among the rows ``where`` selects)."""
    stmt = select(*columns)
    if where is not None:
        stmt = stmt.where(where)
    grouped = stmt.group_by(*columns).having(func.count() > 1).subquery()
    return int(_scalar(session, select(func.count()).select_from(grouped)))


def database_invariants(session: Session) -> list[tuple[str, bool, str]]:
    """(name, holds, detail) for every invariant the platform's data must keep whatever crashed when."""
    from rules.identifiers import build_notice

    out: list[tuple[str, bool, str]] = []

    def check(name: str, holds: bool, detail: str) -> None:
        out.append((name, bool(holds), detail))

    # sum of collections = sum of receipts, receipt by receipt: an accepted receipt, and the second receipt
    # of a notice paid twice (DUPLICATE: that money is real too, to be refunded), collect exactly their
    # amount; a rejected receipt collects nothing
    sums = (
        select(Collection.receipt_pk, func.sum(Collection.amount).label("collected"))
        .group_by(Collection.receipt_pk)
        .subquery()
    )
    rows = session.exec(
        select(Receipt.id, Receipt.amount, Receipt.state, sums.c.collected).join(
            sums, sums.c.receipt_pk == Receipt.id, isouter=True
        )
    ).all()
    paying = [
        (pk, amount, collected) for pk, amount, state, collected in rows if state in ("ACCEPTED", "DUPLICATE")
    ]
    wrong = [pk for pk, amount, collected in paying if Decimal(collected or 0) != Decimal(amount)]
    stray = [
        pk for pk, _amount, state, collected in rows if state not in ("ACCEPTED", "DUPLICATE") and collected
    ]
    receipts_total = sum((Decimal(a) for _pk, a, _c in paying), Decimal("0"))
    collected_total = Decimal(
        _scalar(
            session,
            select(func.coalesce(func.sum(Collection.amount), 0)).where(
                col(Collection.receipt_pk).is_not(None)
            ),
        )
    )
    check(
        "sum of collections = sum of receipts",
        not wrong and not stray and receipts_total == collected_total,
        f"{collected_total:.2f} = {receipts_total:.2f} over {len(paying)} receipts"
        + (f"; {len(wrong)} differ, {len(stray)} rejected ones collected" if wrong or stray else ""),
    )

    # every cashed collection has its money: a movement, which covers all it cashed
    cashed = int(
        _scalar(session, select(func.count()).select_from(Collection).where(Collection.state == "INCASSATA"))
    )
    moneyless = int(
        _scalar(
            session,
            select(func.count())
            .select_from(Collection)
            .where(Collection.state == "INCASSATA", col(Collection.movement_id).is_(None)),
        )
    )
    per_movement = (
        select(Collection.movement_id, func.sum(Collection.amount).label("cashed"))
        .where(Collection.state == "INCASSATA")
        .group_by(Collection.movement_id)
        .subquery()
    )
    over = int(
        _scalar(
            session,
            select(func.count())
            .select_from(per_movement)
            .join(TreasuryMovement, TreasuryMovement.id == per_movement.c.movement_id)
            .where(per_movement.c.cashed > TreasuryMovement.amount),
        )
    )
    check(
        "every cashed collection has its money",
        moneyless == 0 and over == 0,
        f"{cashed} cashed, {moneyless} without a movement, {over} movements cashing more than they carry",
    )

    # no IUV allocated twice, none lost: the IUVs of each (EC, prefix) are exactly progressives 1..counter
    creditors = {c.id_dominio: c for c in session.exec(select(Creditor)).all()}
    used = {(ec, iuv) for ec, iuv in session.exec(select(Position.id_dominio, Position.iuv)).all()}
    twice = _duplicates(session, Position.id_dominio, Position.iuv)
    expected: set[tuple[str, str]] = set()
    for counter in session.exec(select(IuvCounter)).all():
        creditor = creditors[counter.id_dominio]
        expected |= {
            (
                counter.id_dominio,
                build_notice(
                    aux_digit=creditor.aux_digit,
                    progressive=p,
                    segregation_code=creditor.segregation_code,
                    application_code=creditor.application_code,
                    prefix=counter.prefix,
                ).iuv,
            )
            for p in range(1, counter.last_value + 1)
        }
    outside, unused = used - expected, expected - used
    check(
        "no IUV allocated twice (and none lost)",
        twice == 0 and not outside and not unused,
        f"{len(used)} IUVs, {twice} twice, {len(outside)} beyond the counters, {len(unused)} gaps",
    )

    dups = {
        "positions": _duplicates(session, Position.id_a2a, Position.id_pendenza),
        "bulk rows": _duplicates(session, BulkRow.bulk_file_id, BulkRow.row_number),
        "receipts": _duplicates(session, Receipt.id_dominio, Receipt.receipt_id),
        "collections": _duplicates(
            session,
            Collection.receipt_pk,
            Collection.transfer_index,
            where=col(Collection.receipt_pk).is_not(None),
        )
        + _duplicates(
            session,
            Collection.id_dominio,
            Collection.iuv,
            Collection.iur,
            Collection.transfer_index,
            where=col(Collection.iur).is_not(None),
        ),
        "flows": _duplicates(
            session,
            ReportingFlow.id_dominio,
            ReportingFlow.id_flusso,
            ReportingFlow.psp_id,
            ReportingFlow.revision,
        ),
        "treasury files": _duplicates(session, TreasuryFile.source, TreasuryFile.sha256),
        "movements": _duplicates(session, TreasuryMovement.account, TreasuryMovement.dedupe_key),
        "notifications": _duplicates(session, Notification.receipt_pk, Notification.kind),
    }
    check(
        "no duplicate positions/receipts/flows/movements/notifications",
        not any(dups.values()),
        ", ".join(f"{k} {v}" for k, v in dups.items() if v) or "none",
    )

    positions = int(_scalar(session, select(func.count()).select_from(Position)))
    unpublished = int(
        _scalar(
            session,
            select(func.count()).select_from(Position).where(Position.publication_state != "PUBLISHED"),
        )
    )
    check("every position published", unpublished == 0, f"{positions - unpublished} of {positions}")

    files = session.exec(select(BulkFile.total_rows, BulkFile.processed_rows, BulkFile.state)).all()
    rows_done = int(_scalar(session, select(func.count()).select_from(BulkRow)))
    total_rows = sum(t for t, _p, _s in files)
    check(
        "every bulk row has one outcome",
        rows_done == total_rows and all(s == "DONE" for *_x, s in files),
        f"{rows_done} outcomes of {total_rows} rows, files {', '.join(s for *_x, s in files) or '-'}",
    )
    return out


# --- a stage in a process of its own ---------------------------------------------------------------------


def _clear_caches() -> None:
    from connectors.pagopa.config import get_endpoints
    from models import db as models_db
    from models.settings import get_settings
    from web.station import registry_cache

    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    get_endpoints.cache_clear()
    registry_cache.clear()


def _child(stage: str, env: dict[str, str], kwargs: dict[str, Any], result_path: str, log_path: str) -> None:
    """The body of a stage process (forked from the fork server): run the stage, write its outcome."""
    import importlib
    import logging

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(env)
    _clear_caches()
    logging.basicConfig(level=logging.WARNING, force=True)
    if stage == "station":
        import uvicorn

        from web.app import create_app

        uvicorn.run(
            create_app(),
            host="127.0.0.1",
            port=int(kwargs["port"]),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        return
    module, name = FLOWS[stage].split(":")
    flow = getattr(importlib.import_module(module), name)
    state = flow(**kwargs, return_state=True)
    result = state.result(raise_on_failure=False)
    outcome = {
        "completed": state.is_completed(),
        "message": state.message,
        "result": result if isinstance(result, dict | list) else repr(result),
    }
    part = result_path + ".part"
    with open(part, "w", encoding="utf-8") as fh:
        json.dump(outcome, fh, default=str)
    os.replace(part, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if outcome["completed"] else 3)  # nothing left to do: skip the interpreter's slow shutdown


_context: Any = None


def process_context() -> Any:
    """The fork server context, started once per process with the flows already imported."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


@dataclass
class Kill:
    """One SIGKILL delivered to a stage (``running`` False: the stage had ended before the kill)."""

    stage: str
    running: bool
    after_seconds: float
    progress: int
    target: int | None


@dataclass
class StageReport:
    """What happened to one stage: its kills and the runs it took to complete."""

    stage: str
    kills: list[Kill] = field(default_factory=list)
    runs_to_complete: int = 0
    seconds: float = 0.0


class Rig:
    """The chain's world (sandbox, SFTP bank, application endpoint, station) and the stage processes."""

    def __init__(
        self,
        *,
        workdir: Path,
        db_url: str,
        seed: int,
        positions: int,
        prefect_api_url: str,
        say: Callable[[str], None] = print,
    ) -> None:
        self.workdir, self.db_url, self.seed, self.positions = workdir, db_url, seed, positions
        self.say = say
        self.rng = random.Random(seed)  # noqa: S311 - reproducible kill points, not secrets
        self.prefect_api_url = prefect_api_url
        self.env: dict[str, str] = {}
        self.station: Any = None
        self.station_port = 0
        self.reports: dict[str, StageReport] = {}
        self._stack: list[Callable[[], None]] = []
        self._runs = 0
        self._later: dict[str, int] = {}
        self.leases_released = 0
        self.notified: list[str] = []
        self.paid: dict[str, Any] = {}
        self.settled: dict[str, Any] = {}
        self.sandbox_url = ""
        self.engine: Any = None

    # -- set-up ------------------------------------------------------------------------------------------

    def start(self) -> Rig:
        """Migrate, apply the registry, start the sandbox, the bank, the application endpoint, the station."""
        import paramiko

        from cli.app import apply_registry_file
        from cli.demo import (
            GPD_KEY,
            NOTIFY_PASSWORD,
            SFTP_PASSWORD,
            STATION_KEY,
            _configure_sandbox,
            _notification_receiver,
            _registry,
            _serve,
            free_port,
            sandbox_endpoints,
        )
        from models.db import make_engine
        from models.migrate import upgrade
        from sandbox.server import start_in_thread
        from sandbox.sftp import SandboxSftpServer

        (self.workdir / "bank").mkdir(parents=True, exist_ok=True)
        (self.workdir / "runs").mkdir(exist_ok=True)
        sandbox = start_in_thread(seed=self.seed)
        self._stack.append(sandbox.stop)
        self.sandbox_url = sandbox.url
        bank = SandboxSftpServer(
            root=self.workdir / "bank",
            username="tesoreria",
            password=SFTP_PASSWORD,
            host_key=paramiko.ECDSAKey.generate(),
        ).start()
        self._stack.append(bank.stop)
        known_hosts = self.workdir / "known_hosts"
        known_hosts.write_text(bank.known_hosts_line() + "\n", encoding="utf-8")
        receiver_app, self.notified = _notification_receiver()
        notify_port = free_port()
        server, thread = _serve(receiver_app, notify_port)

        def stop_receiver() -> None:
            server.should_exit = True
            thread.join(timeout=10)

        self._stack.append(stop_receiver)
        self.env = {
            "PAGOFLOW_DATABASE_URL": self.db_url,
            "PAGOFLOW_WORK_DIR": str(self.workdir),
            "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY,
            "PAGOFLOW_GPD_SUBSCRIPTION_KEY": GPD_KEY,
            "PAGOFLOW_STATION_01_PASSWORD": "pwd01Station",
            "PAGOFLOW_STATION_02_PASSWORD": "pwd02Station",
            "PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD": NOTIFY_PASSWORD,
            "PAGOFLOW_SFTP_COMUNE_PASSWORD": SFTP_PASSWORD,
            "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0",
            "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0.1",
            "PAGOFLOW_PAGOPA_FDR_PAGE_SIZE": "20",
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            **sandbox_endpoints(sandbox.url),
        }
        with _environment(self.env):
            upgrade(self.db_url)
            apply_registry_file(
                _registry(
                    self.workdir,
                    sftp_port=bank.port,
                    known_hosts=known_hosts,
                    notify_url=f"http://127.0.0.1:{notify_port}/govpay-ente",
                )
            )
        self.engine = make_engine(self.db_url)
        self._stack.append(self.engine.dispose)
        self.station_port = free_port()  # fixed: the sandbox calls the station there across its restarts
        import httpx

        _configure_sandbox(
            sandbox.url,
            station=f"http://127.0.0.1:{self.station_port}/pagopa/paForNode",
            bank=self.workdir / "bank",
        )
        httpx.put(
            f"{sandbox.url}/sandbox/config",
            json={"psps": [{"pspId": p, "name": f"PSP {p}", "bic": p} for p in PSPS]},
            timeout=10,
        ).raise_for_status()
        return self

    def stop(self) -> None:
        """Stop the station and everything started, in reverse order."""
        self.stop_station()
        while self._stack:
            try:
                self._stack.pop()()
            except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
                self.say(f"  (stopping: {exc})")

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ---------------------------------------------------------------------------------------

    def spawn(self, stage: str, **kwargs: Any) -> tuple[Any, Path]:
        """Start a stage process; returns it and where it will write its outcome."""
        self._runs += 1
        if stage in LATER:
            self._later[stage] = self._later.get(stage, 0) + 1
            kwargs["now"] = datetime.now(UTC) + LATER[stage] * self._later[stage]
        result = self.workdir / "runs" / f"{self._runs:03d}-{stage}.json"
        log = self.workdir / "runs" / f"{self._runs:03d}-{stage}.log"
        proc = process_context().Process(
            target=_child,
            args=(stage, self.env, kwargs, str(result), str(log)),
            name=f"pagoflow-{stage}",
            daemon=False,
        )
        proc.start()
        return proc, result

    def start_station(self) -> None:
        """Start the web process (the station) on its fixed port and wait until it answers."""
        import httpx

        self.station, _ = self.spawn("station", port=self.station_port)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.station_port}/openapi.json", timeout=2)
                return
            except httpx.TransportError:
                if not self.station.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the station did not start") from None
                time.sleep(0.05)

    def stop_station(self) -> None:
        """Stop the web process, if running."""
        if self.station is not None and self.station.is_alive():
            self.station.terminate()
            self.station.join(10)
            if self.station.is_alive():
                self.station.kill()
                self.station.join(5)
        self.station = None

    # -- progress and kills ------------------------------------------------------------------------------

    def count(self, stmt: Any) -> int:
        """One count, on the rig's own connection."""
        with Session(self.engine) as session:
            return int(session.exec(stmt).one())

    def progress_of(self, stage: str) -> Callable[[], int] | None:
        """How far a stage's work shows in the database, or None when it is one transaction."""
        counts = {
            "load-positions": select(func.count()).select_from(BulkRow),
            "publish-positions": select(func.count())
            .select_from(Position)
            .where(Position.publication_state == "PUBLISHED"),
            "station": select(func.count()).select_from(Receipt),
            "download-reporting-flows": select(func.count()).select_from(ReportingFlow),
            "receipts": select(func.count()).select_from(Receipt),
            "notify-applications": select(func.count())
            .select_from(Notification)
            .where(Notification.state == "DELIVERED"),
        }
        stmt = counts.get(stage)
        return None if stmt is None else (lambda: self.count(stmt))

    def kill_at_random(
        self,
        stage: str,
        *,
        expected: int,
        proc: Any,
        report: StageReport,
        delay_range: tuple[float, float] = (0.0, 3.0),
    ) -> Kill:
        """SIGKILL ``proc`` at a seeded random point of ``stage``: a share of ``expected`` work or a delay."""
        progress = self.progress_of(stage)
        started = time.monotonic()
        base = progress() if progress else 0
        remaining = max(expected - base, 0)
        target: int | None = None
        delay = self.rng.uniform(*delay_range)
        if progress is not None and remaining > 1:
            share = self.rng.randrange(remaining)  # 0: no work done yet, kill on the delay instead
            target = base + share if share else None
        while proc.is_alive():
            now = time.monotonic()
            if target is not None:
                if progress() >= target:  # type: ignore[misc]
                    break
                if now - started > 120:
                    break
            elif now - started >= delay:
                break
            time.sleep(0.005)
        running = proc.is_alive()
        if running:
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        self.release_leases_of(proc.pid)
        kill = Kill(
            stage=stage,
            running=running and proc.exitcode == -signal.SIGKILL,
            after_seconds=time.monotonic() - started,
            progress=progress() if progress else 0,
            target=target,
        )
        report.kills.append(kill)
        return kill

    def release_leases_of(self, pid: int) -> None:
        """Free the leases a killed process held, as their running out would.

        A work lease lasts an hour (``tasks.claims.DEFAULT_LEASE``) so that a slow run keeps its EC; a killed
        one keeps it too, and the next run skips that EC until the hour is over. Row claims (a publication
        batch, notifications, receipts to recover) last 30 minutes the same way. The bench does not wait: the
        stages run one at a time, so every row claim still held now is the killed process's.
        """
        from sqlalchemy import inspect

        tables = set(inspect(self.engine).get_table_names())
        if "work_claim" not in tables:
            return
        row_claims = (("position", "publication_claimed_until"), ("notification", "claimed_until"),
                      ("payment_attempt", "recovery_claimed_until"),
                      ("reporting_line", "recovery_claimed_until"))
        with self.engine.begin() as conn:
            released = conn.execute(
                text(
                    "UPDATE work_claim SET claimed_until = NULL"
                    " WHERE holder LIKE :holder AND claimed_until IS NOT NULL"
                ),
                {"holder": f"%:{pid}:%"},
            ).rowcount
            for table, column in row_claims:
                if table in tables:  # constant names: no input reaches this SQL
                    released += conn.execute(text(  # noqa: S608
                        f'UPDATE "{table}" SET {column} = NULL WHERE {column} IS NOT NULL')).rowcount
        self.leases_released += released

    def complete(
        self, stage: str, *, report: StageReport, attempts: int = 6, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the stage until a run completes (each run is a new process); its outcome."""
        for _ in range(attempts):
            proc, result_path = self.spawn(stage, **kwargs)
            proc.join(600)
            report.runs_to_complete += 1
            if result_path.exists():
                outcome = json.loads(result_path.read_text(encoding="utf-8"))
                if outcome["completed"] and _done(stage, outcome["result"]):
                    return outcome
        raise RuntimeError(f"{stage} did not complete in {attempts} runs (see {self.workdir / 'runs'})")

    def crash_stage(self, stage: str, *, kills: int, expected: int, **kwargs: Any) -> StageReport:
        """Start ``stage`` ``kills`` times, killing each at random; then run it to completion."""
        report = self.reports.setdefault(stage, StageReport(stage))
        started = time.perf_counter()
        for _ in range(kills):
            proc, _result = self.spawn(stage, **kwargs)
            self.kill_at_random(stage, expected=expected, proc=proc, report=report)
        self.complete(stage, report=report, **kwargs)
        report.seconds = time.perf_counter() - started
        self._say_report(report)
        return report

    def crash_station(self, *, kills: int) -> StageReport:
        """The sandbox PSPs pay 85% of the notices while the station is killed ``kills`` times, restarted."""
        import httpx

        from cli.demo import _payable

        report = self.reports.setdefault("station", StageReport("station"))
        started = time.perf_counter()
        if self.station is None:
            self.start_station()
        with _environment(self.env):
            navs = _payable(limit=int(self.positions * 0.85))
        batch: list[dict[str, Any]] = [
            {"noticeNumber": nav, "fiscalCode": ec, "psp": PSPS[n % len(PSPS)]}
            for n, (ec, nav) in enumerate(navs)
        ]
        if batch:
            batch[0]["times"] = 2
        answer: dict[str, Any] = {}

        def pay() -> None:
            answer.update(
                httpx.post(
                    f"{self.sandbox_url}/sandbox/pay-batch",
                    json={"payments": batch, "concurrency": 4},
                    timeout=900,
                ).json()
            )

        payer = threading.Thread(target=pay, name="psp-payments")
        payer.start()
        for _ in range(kills):
            if not payer.is_alive():
                break
            self.kill_at_random("station", expected=len(batch), proc=self.station, report=report)
            time.sleep(self.rng.uniform(0.1, 0.6))  # the station stays down a moment: the Node sees it gone
            self.start_station()
        payer.join()
        report.runs_to_complete = 1
        report.seconds = time.perf_counter() - started
        self.paid = answer
        self._say_report(report)
        return report

    def retry_receipts(self) -> None:
        """pagoPA retries the receipts it could not deliver while the station was down (paSendRT again)."""
        import httpx

        for _ in range(3):
            retried = httpx.post(f"{self.sandbox_url}/sandbox/retry-receipts", timeout=300).json()
            if not retried.get("pending"):
                return

    def settle(self) -> dict[str, Any]:
        """The PSPs settle the day: flows published, journals dropped on the bank's SFTP server."""
        import httpx

        self.settled = httpx.post(
            f"{self.sandbox_url}/sandbox/settle",
            json={"date": date.today().isoformat(), "seed": self.seed, "noise": {"unrelated": 2}},
            timeout=120,
        ).json()
        return self.settled

    def sandbox_receipts(self) -> int:
        """How many receipts the sandbox issued (what the receipts stage may have to recover up to)."""
        import httpx

        return int(httpx.get(f"{self.sandbox_url}/sandbox/state", timeout=10).json()["receipts"]["total"])

    def _say_report(self, report: StageReport) -> None:
        landed = [k for k in report.kills if k.running]
        points = ", ".join(f"{k.after_seconds:.1f}s/{k.progress}" for k in landed) or "-"
        self.say(
            f"  {report.stage:<26} {len(landed)}/{len(report.kills)} kills landed (at {points}); "
            f"completed by run {report.runs_to_complete}, {report.seconds:.1f} s"
        )

    # -- the whole chain ---------------------------------------------------------------------------------

    def run_chain(self, *, kills: int, stages: tuple[str, ...] = STAGES, batch_size: int = 20) -> None:
        """Every stage in order, each crashed ``kills`` times and then completed."""
        from cli.demo import write_bulk_file

        bulk = self.workdir / "tracciato.csv"
        write_bulk_file(bulk, count=self.positions, seed=self.seed)
        for stage in stages:
            later = {
                "notify-applications": {"batch_size": 10, "concurrency": 2},
                "ingest-treasury": {"archive": False},
            }
            if stage == "load-positions":
                self.crash_stage(
                    stage, kills=kills, expected=self.positions, path=str(bulk), batch_size=batch_size
                )
            elif stage == "publish-positions":
                self.crash_stage(stage, kills=kills, expected=self.positions, batch_size=batch_size)
            elif stage == "station":
                self.crash_station(kills=kills)
                self.settle()
                if "receipts" not in stages:
                    self.retry_receipts()
            else:
                expected = {
                    "download-reporting-flows": len(self.settled.get("flows", [])),
                    "receipts": self.sandbox_receipts(),
                    "notify-applications": self.count(select(func.count()).select_from(Notification)),
                }.get(stage, 0)
                self.crash_stage(stage, kills=kills, expected=expected, **later.get(stage, {}))
                if stage == "receipts":  # what the receipts flow did not recover, the Node delivers now
                    self.retry_receipts()

    def checks(self) -> list[tuple[str, bool, str]]:
        """The database invariants, then the database against the sandbox's records."""
        import httpx

        with Session(self.engine) as session:
            out = database_invariants(session)
            state = httpx.get(f"{self.sandbox_url}/sandbox/state", timeout=10).json()
            c = {
                "positions": session.exec(select(func.count()).select_from(Position)).one(),
                "receipts": session.exec(select(func.count()).select_from(Receipt)).one(),
                "flows": session.exec(select(func.count()).select_from(ReportingFlow)).one(),
                "movements": session.exec(select(func.count()).select_from(TreasuryMovement)).one(),
                "delivered": session.exec(
                    select(func.count()).select_from(Notification).where(Notification.state == "DELIVERED")
                ).one(),
                "notifications": session.exec(
                    select(func.count()).select_from(Notification).where(Notification.state != "NO_ENDPOINT")
                ).one(),
            }
        if self.reports.get("publish-positions"):
            out.append(
                (
                    "every position at GPD/ACA once",
                    c["positions"] == state["positions"]["total"],
                    f"{state['positions']['total']} at the sandbox, {c['positions']} here",
                )
            )
        if self.reports.get("station"):
            out.append(
                (
                    "every payment received once",
                    c["receipts"] == state["receipts"]["total"],
                    f"{c['receipts']} receipts stored of {state['receipts']['total']} issued",
                )
            )
        if self.settled and self.reports.get("download-reporting-flows"):
            published = len(self.settled.get("flows", []))
            out.append(
                ("every flow downloaded once", c["flows"] == published, f"{c['flows']} of {published}")
            )
        if self.settled and self.reports.get("ingest-treasury"):
            credits = sum(len(j["credits"]) for j in self.settled.get("journals", []) if j["ec"] in SOURCES)
            out.append(
                ("every movement ingested once", c["movements"] == credits, f"{c['movements']} of {credits}")
            )
        if self.reports.get("notify-applications"):
            twice = sum(1 for n in Counter(self.notified).values() if n > 1)
            out.append(
                (
                    "every notification delivered (applications with an endpoint)",
                    c["delivered"] == c["notifications"] and len(set(self.notified)) == c["delivered"],
                    f"{c['delivered']} of {c['notifications']}; the application saw {len(set(self.notified))}"
                    f" ({twice} twice: at-least-once delivery across a kill)",
                )
            )
        return out


def _done(stage: str, result: Any) -> bool:
    """Whether a completed run left its stage done: nothing failed, nothing skipped as held by another run."""
    if not isinstance(result, dict):
        return True
    return not result.get("failed") and not result.get("busy")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables for the block (the platform's settings in this process), then the old ones."""
    saved = dict(os.environ)
    os.environ.update(values)
    _clear_caches()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _clear_caches()


@contextmanager
def postgres_database(admin_url: str, prefix: str = "pf_crash") -> Iterator[str]:
    """A fresh PostgreSQL database for the block (dropped afterwards)."""
    from sqlalchemy.engine import make_url

    from models.db import make_engine

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(str(make_url(admin_url).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    *, backend: str, db_url: str, workdir: Path, seed: int, kills: int, positions: int, prefect_api_url: str
) -> bool:
    """The whole chain on one database; prints the kills and the checks; True when every check holds."""
    print(f"\n{backend}: {positions} positions, {kills} kills per stage, seed {seed}")
    started = time.perf_counter()
    with Rig(
        workdir=workdir, db_url=db_url, seed=seed, positions=positions, prefect_api_url=prefect_api_url
    ) as rig:
        rig.run_chain(kills=kills)
        checks = rig.checks()
        landed = sum(k.running for r in rig.reports.values() for k in r.kills)
        delivered = sum(len(r.kills) for r in rig.reports.values())
        released = rig.leases_released
    print(
        f"  kills survived: {landed} SIGKILLs landed on running stages ({delivered} delivered) "
        f"in {time.perf_counter() - started:.0f} s; {released} one-hour leases of killed runs released"
    )
    for name, holds, detail in checks:
        print(f"  {'ok' if holds else 'NO'} {name}: {detail}")
    return all(h for _n, h, _d in checks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seed", type=int, default=5, help="seed of the kill points, the sandbox and the data"
    )
    parser.add_argument("--kills", type=int, default=3, help="kills per stage")
    parser.add_argument("--positions", type=int, default=400, help="positions in the bulk file")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also on PostgreSQL (a fresh database on PAGOFLOW_TEST_POSTGRES_URL's server)",
    )
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        api_url = str(PREFECT_API_URL.value())
        print(f"Prefect temporary server up in {time.perf_counter() - started:.0f} s at {api_url}")
        os.environ["PREFECT_API_URL"] = api_url  # inherited by the fork server, read by every stage
        workdir = Path(tempfile.mkdtemp(prefix="pf-crash-"))
        ok = run(
            backend="sqlite",
            db_url=f"sqlite:///{workdir / 'sqlite' / 'pagoflow.db'}",
            workdir=workdir / "sqlite",
            seed=args.seed,
            kills=args.kills,
            positions=args.positions,
            prefect_api_url=api_url,
        )
        pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
        if args.postgres and pg:
            with postgres_database(pg) as url:
                ok = (
                    run(
                        backend="postgres",
                        db_url=url,
                        workdir=workdir / "postgres",
                        seed=args.seed,
                        kills=args.kills,
                        positions=args.positions,
                        prefect_api_url=api_url,
                    )
                    and ok
                )
        elif args.postgres:
            print("postgres: skipped (PAGOFLOW_TEST_POSTGRES_URL not set)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    from bench.crash import main as _main  # the stage processes find their code under this name

    _main()
