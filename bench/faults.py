"""Fault campaign: the daily chain against the sandbox, fault-free and with every fault kind on, compared.

Run: .venv/bin/python bench/faults.py [--positions 400] [--seed 11] [--rate 0.10] [--timeout 2]

The chain is the demo's (cli/demo.py): a bulk file loaded, published to GPD/ACA, paid by the sandbox PSPs
through the station, receipts recovered and notified, the day settled, reporting flows downloaded (FdR REST
for the Comune, Node SOAP for the school), the treasury journals fetched over SFTP and ingested, reconciled.
It runs twice on fresh SQLite databases with the same seed: once fault-free, once with every fault kind at
``--rate`` on every pagoPA service the platform calls, each kind injected at least once by a one-shot rule:

    stall       the answer held back past the client's timeout (``--timeout``), after the work was done
    http_5xx    500/502/503/504 (Node: HTTP 500 with a SOAP Fault)
    http_429    Too Many Requests with Retry-After (REST)
    soap_fault  the Node's PPT_SYSTEM_ERROR answer (SOAP)
    drop        the connection closed before the request is served
    lost        the request served, the connection closed instead of the answer
    malformed   the real answer cut in half
    sftp_drop   the treasury bank's SFTP server hanging up in the middle of a journal

plus 5-25 ms of latency on every call. Every stage is re-run until it converges, as its schedule would.
It prints the faults injected per kind and per service, then the comparison: positions published, payments
received once, flows downloaded once, movements ingested once, notifications delivered once, reconciliation
totals and labels identical, the database invariants of bench/crash.py; and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine is slow

# The demo's building blocks (cli/demo.py is the chain of record; this campaign drives it stage by stage so it
# can switch every fault kind on and read the sandbox's side of each exchange).
from cli.demo import (  # noqa: E402
    COMUNE,
    GPD_KEY,
    NOTIFY_PASSWORD,
    SCUOLA,
    SFTP_PASSWORD,
    STATION_KEY,
    _clear_caches,
    _configure_sandbox,
    _converge,
    _notification_receiver,
    _payable,
    _registry,
    _serve,
    free_port,
    sandbox_endpoints,
    write_bulk_file,
)

KINDS = ("stall", "http_5xx", "http_429", "soap_fault", "drop", "lost", "malformed", "sftp_drop")
PSPS = ("BCITITMM", "UNCRITMM", "BPPIITRR", "PASCITMM", "CIPBITMM", "BNLIITRR")
# service -> (path prefix, the error kinds it answers)
SERVICES = {
    "gpd": ("/gpd/", ("http_503", "http_429")),
    "aca": ("/aca/", ("http_502", "http_429")),
    "fdr": ("/fdr-org/", ("http_500", "http_429")),
    "bizevents": ("/bizevents/", ("http_504", "http_429")),
    "nodo": ("/nodo/", ("soap_fault", "http_500")),
}


def kind_of(name: str) -> str:
    """The campaign kind of a sandbox fault name (``http_503`` is an ``http_5xx``)."""
    if name.startswith("http_5"):
        return "http_5xx"
    return name


def campaign_rules(
    rate: float, *, stall_ms: float, kinds: tuple[str, ...] = KINDS, one_shots: bool = True
) -> list[dict[str, Any]]:
    """Sandbox fault rules: each kind at ``rate`` on every service (one-shot rules first: each kind fires)."""
    rules: list[dict[str, Any]] = []
    for prefix, errors in SERVICES.values():
        wanted_errors = [e for e in errors if kind_of(e) in kinds]
        if one_shots:
            for kind in ("drop", "lost", "malformed", "stall"):
                if kind in kinds:
                    rules.append({"path": prefix, f"{kind}Rate": 1.0, "times": 1, "stallMs": stall_ms})
            for error in wanted_errors:
                rules.append({"path": prefix, "errorRate": 1.0, "error": error, "times": 1, "retryAfter": 0})
        if rate > 0:
            rule: dict[str, Any] = {"path": prefix, "latencyMs": 5, "jitterMs": 20, "retryAfter": 0}
            if wanted_errors:
                rule |= {"errorRate": rate * len(wanted_errors), "error": wanted_errors}
            for kind in ("drop", "lost", "malformed", "stall"):
                if kind in kinds:
                    rule[f"{kind}Rate"] = rate
            if "stall" in kinds:
                rule["stallMs"] = stall_ms
            rules.append(rule)
    return rules


@dataclass
class Figures:
    """What one run of the chain left, on our side and on the sandbox's."""

    label: str
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    per_ec: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: frozenset[tuple[Any, ...]] = frozenset()
    faults: Counter[str] = field(default_factory=Counter)
    faults_by_service: dict[str, Counter[str]] = field(default_factory=dict)
    requests: int = 0
    invariants: list[tuple[str, bool, str]] = field(default_factory=list)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put the old environment back (and the caches)."""
    saved = dict(os.environ)
    os.environ.update(values)
    _clear_caches()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _clear_caches()


def run_campaign(
    *,
    workdir: Path,
    positions: int,
    seed: int,
    rate: float,
    timeout: float = 2.0,
    kinds: tuple[str, ...] = KINDS,
    one_shots: bool = True,
    psps: int = 4,
    fdr_page_size: int = 25,
    attempts: int = 10,
    say: Callable[[str], None] = print,
) -> Figures:
    """One run of the chain on a fresh SQLite database under ``workdir``; ``rate`` 0 is the fault-free run."""
    import shutil

    faulty = rate > 0 or one_shots
    label = f"faults {rate:.0%}" if faulty else "fault-free"
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "bank").mkdir(parents=True)
    env = {
        "PAGOFLOW_DATABASE_URL": f"sqlite:///{workdir / 'pagoflow.db'}",
        "PAGOFLOW_WORK_DIR": str(workdir),
        "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY,
        "PAGOFLOW_GPD_SUBSCRIPTION_KEY": GPD_KEY,
        "PAGOFLOW_STATION_01_PASSWORD": "pwd01Station",
        "PAGOFLOW_STATION_02_PASSWORD": "pwd02Station",
        "PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD": NOTIFY_PASSWORD,
        "PAGOFLOW_SFTP_COMUNE_PASSWORD": SFTP_PASSWORD,
        "PAGOFLOW_PAGOPA_TIMEOUT_SECONDS": str(timeout),
        "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0",
        "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0.1",
        "PAGOFLOW_PAGOPA_FDR_PAGE_SIZE": str(fdr_page_size),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
    }
    figures = Figures(label=label)
    with _environment(env):
        _chain(
            figures,
            workdir=workdir,
            positions=positions,
            seed=seed,
            rate=rate,
            timeout=timeout,
            kinds=kinds if faulty else (),
            one_shots=one_shots and faulty,
            psps=psps,
            attempts=attempts,
            say=say,
        )
    return figures


def _chain(
    figures: Figures,
    *,
    workdir: Path,
    positions: int,
    seed: int,
    rate: float,
    timeout: float,
    kinds: tuple[str, ...],
    one_shots: bool,
    psps: int,
    attempts: int,
    say: Callable[[str], None],
) -> None:
    import logging

    import paramiko

    from cli.app import apply_registry_file
    from flows.download_reporting_flows import download_reporting_flows
    from flows.ingest_treasury import ingest_treasury
    from flows.load_positions import load_positions
    from flows.notify_applications import notify_applications
    from flows.publish_positions import publish_positions
    from flows.receipts import receipts
    from flows.reconcile import reconcile
    from models.migrate import upgrade
    from sandbox.server import start_in_thread
    from sandbox.sftp import Faults as SftpFaults
    from sandbox.sftp import SandboxSftpServer
    from web.app import create_app

    for noisy in ("paramiko", "connectors", "tasks", "flows", "prefect", "httpx", "sandbox"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)  # faults are the point here, not news
    upgrade()
    sandbox = start_in_thread(seed=seed)
    os.environ.update(sandbox_endpoints(sandbox.url))
    _clear_caches()
    sftp_rate = rate if "sftp_drop" in kinds else 0.0
    bank = SandboxSftpServer(
        root=workdir / "bank",
        username="tesoreria",
        password=SFTP_PASSWORD,
        host_key=paramiko.ECDSAKey.generate(),
        faults=SftpFaults(
            drop_rate=sftp_rate, seed=seed, cut_first=1 if one_shots and "sftp_drop" in kinds else 0
        ),
    ).start()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(bank.known_hosts_line() + "\n", encoding="utf-8")
    receiver_app, notified = _notification_receiver()
    notify_port, web_port = free_port(), free_port()
    servers = [_serve(receiver_app, notify_port)]
    stall_ms = timeout * 1000 * 1.5

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out = fn()
        figures.seconds[name] = time.perf_counter() - started
        say(f"  {figures.label:<11} {name:<26} {figures.seconds[name]:6.1f} s")
        return out

    try:
        apply_registry_file(
            _registry(
                workdir,
                sftp_port=bank.port,
                known_hosts=known_hosts,
                notify_url=f"http://127.0.0.1:{notify_port}/govpay-ente",
            )
        )
        servers.append(_serve(create_app(), web_port))
        _configure_sandbox(
            sandbox.url, station=f"http://127.0.0.1:{web_port}/pagopa/paForNode", bank=workdir / "bank"
        )
        httpx.put(
            f"{sandbox.url}/sandbox/config",
            json={"psps": [{"pspId": p, "name": f"PSP {p}", "bic": p} for p in PSPS[:psps]]},
            timeout=10,
        ).raise_for_status()
        bulk = workdir / "tracciato.csv"
        write_bulk_file(bulk, count=positions, seed=seed)
        loaded = stage("load-positions", lambda: load_positions(path=str(bulk), batch_size=200))
        figures.counts["bulk rows"] = loaded["total_rows"]

        rules = campaign_rules(rate, stall_ms=stall_ms, kinds=kinds, one_shots=one_shots) if kinds else []
        httpx.put(
            f"{sandbox.url}/sandbox/faults", json={"seed": seed, "rules": rules}, timeout=10
        ).raise_for_status()
        stage(
            "publish-positions",
            lambda: _converge(publish_positions, done=lambda r: not r.get("failed"), attempts=attempts),
        )

        navs = _payable(limit=int(positions * 0.85))
        batch: list[dict[str, Any]] = [
            {"noticeNumber": nav, "fiscalCode": ec, "psp": PSPS[n % psps]} for n, (ec, nav) in enumerate(navs)
        ]
        if batch:
            batch[0]["times"] = 2  # one notice paid twice by two PSPs
        paid = stage(
            "pay (sandbox PSPs)",
            lambda: httpx.post(
                f"{sandbox.url}/sandbox/pay-batch", json={"payments": batch, "concurrency": 8}, timeout=900
            ).json(),
        )
        figures.counts["payments ok"] = paid.get("ok")
        figures.counts["payments ko"] = paid.get("ko")

        stage("receipts", lambda: _converge(receipts, attempts=attempts))
        stage(
            "notify-applications",
            lambda: _converge(notify_applications, done=lambda r: not r.get("failed"), attempts=attempts),
        )
        settled = stage(
            "settle (sandbox)",
            lambda: httpx.post(
                f"{sandbox.url}/sandbox/settle",
                json={"date": date.today().isoformat(), "seed": seed, "noise": {"unrelated": 2}},
                timeout=120,
            ).json(),
        )
        stage("download-reporting-flows", lambda: _converge(download_reporting_flows, attempts=attempts))
        stage("ingest-treasury", lambda: _converge(ingest_treasury, archive=False, attempts=attempts))
        injected = httpx.get(f"{sandbox.url}/sandbox/faults", timeout=10).json()
        httpx.delete(f"{sandbox.url}/sandbox/faults", timeout=10)
        stage("reconcile", lambda: reconcile())
        _collect(
            figures, sandbox_url=sandbox.url, settled=settled, notified=notified, injected=injected, bank=bank
        )
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)
        bank.stop()
        sandbox.stop()


def _collect(
    figures: Figures,
    *,
    sandbox_url: str,
    settled: dict[str, Any],
    notified: list[str],
    injected: dict[str, Any],
    bank: Any,
) -> None:
    from sqlalchemy import func
    from sqlmodel import col, select

    from bench.crash import database_invariants
    from models.db import session_scope
    from models.notifications import Notification
    from models.payments import Collection, Receipt
    from models.positions import Position
    from models.reconciliation import TransferLabel
    from models.reporting import ReportingFlow
    from models.treasury import TreasuryMovement

    state = httpx.get(f"{sandbox_url}/sandbox/state", timeout=10).json()
    settlement = httpx.get(f"{sandbox_url}/sandbox/settlement", timeout=10).json()
    c = figures.counts
    c["sandbox: GPD/ACA positions"] = state["positions"]["total"]
    c["sandbox: receipts issued"] = state["receipts"]["total"]
    c["sandbox: flows published"] = len([f for f in settlement["flows"] if f["published"]])
    journals = [
        j for j in settled.get("journals", []) if j["ec"] in (COMUNE, SCUOLA)
    ]  # the registry's sources
    c["sandbox: journal credits"] = sum(len(j["credits"]) for j in journals)
    c["sandbox: journals"] = len(journals)
    with session_scope() as s:

        def one(stmt: Any) -> Any:
            return s.exec(stmt).one()

        c["positions"] = one(select(func.count()).select_from(Position))
        c["positions published"] = one(
            select(func.count()).select_from(Position).where(Position.publication_state == "PUBLISHED")
        )
        c["receipts stored"] = one(select(func.count()).select_from(Receipt))
        c["receipts distinct"] = one(select(func.count(func.distinct(Receipt.receipt_id))))
        c["receipts accepted"] = one(
            select(func.count()).select_from(Receipt).where(Receipt.state == "ACCEPTED")
        )
        c["receipts amount"] = one(
            select(func.coalesce(func.sum(Receipt.amount), 0)).where(Receipt.state == "ACCEPTED")
        )
        c["flows stored"] = one(select(func.count()).select_from(ReportingFlow))
        c["flows distinct"] = len(
            set(
                s.exec(
                    select(
                        ReportingFlow.id_dominio,
                        ReportingFlow.id_flusso,
                        ReportingFlow.psp_id,
                        ReportingFlow.revision,
                    )
                ).all()
            )
        )
        c["movements stored"] = one(select(func.count()).select_from(TreasuryMovement))
        c["movements amount"] = one(select(func.coalesce(func.sum(TreasuryMovement.amount), 0)))
        c["notifications delivered"] = one(
            select(func.count()).select_from(Notification).where(Notification.state == "DELIVERED")
        )
        c["notifications received by the application"] = len(notified)
        c["notifications received twice"] = sum(1 for n in Counter(notified).values() if n > 1)
        for ec in (COMUNE, SCUOLA):
            per = figures.per_ec.setdefault(ec, {})
            per["paid"] = one(
                select(func.coalesce(func.sum(Collection.amount), 0)).where(Collection.id_dominio == ec)
            )
            per["cashed"] = one(
                select(func.coalesce(func.sum(Collection.amount), 0)).where(
                    Collection.id_dominio == ec, Collection.state == "INCASSATA"
                )
            )
            per["flows"] = one(
                select(func.count()).select_from(ReportingFlow).where(ReportingFlow.id_dominio == ec)
            )
            per["movements"] = one(
                select(func.count()).select_from(TreasuryMovement).where(TreasuryMovement.id_dominio == ec)
            )
            per["labels"] = dict(
                sorted(
                    Counter(
                        s.exec(select(TransferLabel.label).where(TransferLabel.id_dominio == ec)).all()
                    ).items()
                )
            )
        rows = s.exec(
            select(
                TransferLabel.id_dominio,
                TransferLabel.subject,
                TransferLabel.label,
                TransferLabel.iuv,
                TransferLabel.transfer_index,
                TransferLabel.id_flusso,
                TransferLabel.amount,
            ).order_by(col(TransferLabel.id))
        ).all()
        figures.labels = frozenset(tuple(r) for r in rows)
        figures.invariants = database_invariants(s)
    for rule in injected.get("rules", []):
        service = next(
            (name for name, (prefix, _) in SERVICES.items() if rule["path"] == prefix), rule["path"]
        )
        per_service = figures.faults_by_service.setdefault(service, Counter())
        for name, n in rule.get("injected", {}).items():
            figures.faults[kind_of(name)] += n
            per_service[kind_of(name)] += n
        figures.requests += rule["hits"]  # a request matches one rule at most
    if bank.faults.dropped:
        figures.faults["sftp_drop"] += bank.faults.dropped
        figures.faults_by_service.setdefault("sftp", Counter())["sftp_drop"] += bank.faults.dropped
    c["sftp downloads opened"] = bank.faults.opened


@dataclass(frozen=True)
class Check:
    """One line of the comparison."""

    name: str
    clean: Any
    faulty: Any
    ok: bool


def compare(clean: Figures, faulty: Figures) -> list[Check]:
    """The equalities the campaign asserts between the fault-free and the faulty run (and within each)."""
    checks: list[Check] = []

    def same(name: str, key: str) -> None:
        a, b = clean.counts.get(key), faulty.counts.get(key)
        checks.append(Check(name, a, b, a == b))

    def within(name: str, key: str, of: str) -> None:
        a = (clean.counts.get(key), clean.counts.get(of))
        b = (faulty.counts.get(key), faulty.counts.get(of))
        checks.append(Check(name, f"{a[0]} of {a[1]}", f"{b[0]} of {b[1]}", a[0] == a[1] and b[0] == b[1]))

    within("every position published", "positions published", "bulk rows")
    within("... and once at GPD/ACA", "sandbox: GPD/ACA positions", "positions")
    within("every payment received once", "receipts stored", "sandbox: receipts issued")
    within("... no receipt stored twice", "receipts distinct", "receipts stored")
    same("receipts accepted", "receipts accepted")
    same("receipts amount", "receipts amount")
    within("every flow downloaded once", "flows stored", "sandbox: flows published")
    within("... no flow stored twice", "flows distinct", "flows stored")
    within("every movement ingested once", "movements stored", "sandbox: journal credits")
    same("movements amount", "movements amount")
    within(
        "every notification delivered once",
        "notifications received by the application",
        "notifications delivered",
    )
    same("notifications received twice", "notifications received twice")
    for ec in sorted(clean.per_ec):
        for key in ("paid", "cashed", "flows", "movements", "labels"):
            a, b = clean.per_ec[ec].get(key), faulty.per_ec.get(ec, {}).get(key)
            checks.append(Check(f"reconciliation {ec} {key}", a, b, a == b))
    checks.append(
        Check(
            "reconciliation labels, transfer by transfer",
            f"{len(clean.labels)} labels",
            f"{len(faulty.labels)} labels, {len(clean.labels ^ faulty.labels)} differ",
            clean.labels == faulty.labels,
        )
    )
    for (name, ok_a, detail_a), (_, ok_b, detail_b) in zip(clean.invariants, faulty.invariants, strict=True):
        checks.append(Check(f"invariant: {name}", detail_a, detail_b, ok_a and ok_b))
    return checks


def print_faults(faulty: Figures, say: Callable[[str], None] = print) -> None:
    """The faults injected, per kind and per service."""
    services = sorted(faulty.faults_by_service)
    say(
        f"\nfaults injected ({faulty.requests} pagoPA requests matched; "
        f"{sum(v for k, v in faulty.faults.items() if k != 'sftp_drop')} faulted, "
        f"{faulty.counts.get('sftp downloads opened', 0)} SFTP downloads, {faulty.faults['sftp_drop']} cut):"
    )
    say(f"  {'kind':<11}" + "".join(f"{s:>10}" for s in services) + f"{'total':>10}")
    for kind in KINDS:
        say(
            f"  {kind:<11}"
            + "".join(f"{faulty.faults_by_service[s][kind]:>10}" for s in services)
            + f"{faulty.faults[kind]:>10}"
        )


def print_comparison(checks: list[Check], say: Callable[[str], None] = print) -> None:
    """The comparison table."""
    say(f"\n{'check':<48} {'fault-free':>30} {'with faults':>30}")
    for check in checks:
        say(
            f"{'ok ' if check.ok else 'NO '}{check.name:<45} "
            f"{_cell(check.clean):>30} {_cell(check.faulty):>30}"
        )


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--positions", type=int, default=400, help="positions in the bulk file")
    parser.add_argument("--seed", type=int, default=11, help="seed of the sandbox, the faults and the data")
    parser.add_argument("--rate", type=float, default=0.10, help="rate of each fault kind")
    parser.add_argument("--timeout", type=float, default=2.0, help="the platform's pagoPA call timeout (s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the two runs keep their files")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pf-faults-"))
    from prefect import flow as prefect_flow

    started = time.perf_counter()
    prefect_flow(name="bench-warm-up")(lambda: None)()  # the temporary Prefect server starts outside the runs
    print(
        f"Prefect temporary server up in {time.perf_counter() - started:.0f} s; "
        f"{args.positions} positions, seed {args.seed}, each fault kind at {args.rate:.0%}, "
        f"call timeout {args.timeout:.1f} s"
    )
    clean = run_campaign(
        workdir=workdir / "clean",
        positions=args.positions,
        seed=args.seed,
        rate=0.0,
        timeout=args.timeout,
        one_shots=False,
    )
    faulty = run_campaign(
        workdir=workdir / "faulty",
        positions=args.positions,
        seed=args.seed,
        rate=args.rate,
        timeout=args.timeout,
    )
    print_faults(faulty)
    checks = compare(clean, faulty)
    print_comparison(checks)
    totals = (sum(clean.seconds.values()), sum(faulty.seconds.values()))
    print(
        f"\nchain: {totals[0]:.0f} s fault-free, {totals[1]:.0f} s with faults; "
        f"{sum(c.ok for c in checks)}/{len(checks)} checks hold"
    )
    sys.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
