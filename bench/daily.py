"""The daily cycle at scale: ``.venv/bin/python bench/daily.py [--positions 100000] [--payments 60000]``.

Setup (timed apart; faster paths where the citizen journey would take hours on two cores):

* a fresh database (SQLite file, the embedded default; ``--postgres`` for a throwaway database on
  PAGOFLOW_TEST_POSTGRES_URL) with the example registry, both ECs' treasury sources on a local SFTP server and
  the tax application's notification endpoint;
* ``--positions`` positions (nine in ten TARI of the Comune, published to GPD; one in ten MENSA of the school,
  published to ACA) through the API's store function (``upsert_positions``), queued for publication;
* ``--payments`` payments: our side gets what the station's ``accept_receipt`` writes for a ``paSendRTV2``
  (receipt, collection, position paid, notification queued), written set-based; pagoPA's side gets the paid
  transfers its Node books (a bench-only route of the sandbox process), over four PSPs;
* the sandbox settles the day: one reporting flow per PSP and EC (FdR REST for the Comune, the Node's SOAP for
  the school) and each EC's OPI journal on the SFTP server, with two unrelated credits each.

The cycle is the real ``daily-cycle`` flow, run by a fresh process against a real Prefect server
(``prefect server start`` on SQLite, batch settings raised as the operator guide says) with the sandbox in its
own process: publish the open positions (paid ones are skipped by rule), recover receipts, notify the
application of every payment, download the flows, ingest the journals over SFTP, reconcile and write the
reports. Prints the seconds (and CPU seconds) per stage and the total beside the target (<= 10 minutes), the
Prefect task runs by task (they follow batches, not rows), the peak memory of the cycle's process and of the
sandbox's, and checks the outcome: every open position published, every payment notified, reported, cashed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import Request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

TARGET_SECONDS = 600.0
COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
IBAN_COMUNE, IBAN_SCUOLA = "IT21X0306909606000000123456", "IT65X0306909606000000654321"
PSPS = ("BCITITMM", "UNCRITMM", "BPPIITRR", "PASCITMM")
GPD_KEY = "bench-daily-gpd-key"  # test values, not secrets
STATION_KEY = "bench-daily-station-key"
SFTP_PASSWORD = "bench-daily-sftp"  # noqa: S105
NOTIFY_PASSWORD = "bench-daily-notify"  # noqa: S105
BATCH = 2000
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------- the sandbox


def serve_sandbox(port: int) -> None:
    """The sandbox (pagoPA) in this process, plus two bench-only routes under /sandbox/bench.

    ``POST /sandbox/bench/paid`` books paid transfers in the Node's ledger, as ``Node.close`` does after a
    PSP's positive outcome (the settlement reports them); ``PUT /sandbox/bench/ente/ricevute/...`` is the
    application's notification endpoint (GovPay API Ente path), counted by ``GET /sandbox/bench/ente``.
    Routes under /sandbox are neither faulted nor journaled by the sandbox.
    """
    from datetime import date

    import uvicorn

    from sandbox.app import create_app
    from sandbox.state import PaidTransfer

    app = create_app(seed=11)
    state = app.state.sandbox
    received: Counter[str] = Counter()

    @app.post("/sandbox/bench/paid")
    async def paid(request: Request) -> dict[str, int]:
        body = await request.json()
        with state.lock:
            for p in body["payments"]:
                state.iurs.add(p["iur"])
                state.transfers.append(PaidTransfer(
                    ec_fiscal_code=p["ec"], iuv=p["iuv"], iur=p["iur"], transfer_index=1,
                    amount=Decimal(p["amount"]), outcome=0, pay_date=date.fromisoformat(p["payDate"]),
                    psp_id=p["psp"], receipt_id=p["receiptId"]))  # fmt: skip
            return {"booked": len(body["payments"]), "ledger": len(state.transfers)}

    @app.put("/sandbox/bench/ente/ricevute/{id_dominio}/{iuv}/{id_ricevuta}")
    async def notified(id_dominio: str, iuv: str, id_ricevuta: str, request: Request) -> dict[str, str]:
        await request.body()
        received[id_dominio] += 1
        return {"esito": "OK"}

    @app.get("/sandbox/bench/ente")
    async def notifications() -> dict[str, int]:
        return dict(received)

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_keep_alive=30
    )


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    from cli.demo import free_port

    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - this interpreter running this file
        [sys.executable, __file__, "--serve-sandbox", str(port)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/sandbox/state", timeout=2).raise_for_status()
            return process, base
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the sandbox did not start") from None
            time.sleep(0.2)


def configure_sandbox(base: str, *, bank: Path) -> None:
    import httpx

    stations = [
        {
            "idStation": sid,
            "idBroker": "77777777777",
            "password": f"pwd{sid[-2:]}Station",
            "url": None,
            "version": 2,
            "headers": {"Ocp-Apim-Subscription-Key": STATION_KEY},
        }
        for sid in ("77777777777_01", "77777777777_02")
    ]
    creditors = [
        {
            "fiscalCode": ec,
            "name": name,
            "idStation": sid,
            "idBroker": "77777777777",
            "iban": iban,
            "treasuryFormat": "opi",
            "treasuryDir": str(bank / ec) if ec != PROVINCIA else None,
        }
        for ec, name, sid, iban in (
            (COMUNE, "Comune di Esempio", "77777777777_01", IBAN_COMUNE),
            (SCUOLA, "Istituto Comprensivo Dimostrativo", "77777777777_02", IBAN_SCUOLA),
            (PROVINCIA, "Provincia Dimostrativa", "77777777777_01", "IT58X0103014200000000111222"),
        )
    ]
    psps = [{"pspId": p, "name": f"PSP {p}", "bic": p, "channel": f"{p}_01"} for p in PSPS]
    httpx.put(
        f"{base}/sandbox/config",
        timeout=30,
        json={
            "replace": True,
            "stations": stations,
            "creditors": creditors,
            "psps": psps,
            "subscriptionKeys": [GPD_KEY],
            "node": {"maxExchanges": 1000},
        },
    ).raise_for_status()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far (Linux /proc); 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    return own + sum(cpu_seconds(c) for c in children(pid))


def prefect_server_pid() -> int | None:
    """The ``prefect server start`` child of this process."""
    for pid in children(os.getpid()):
        try:
            if b"server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------- the setup


def platform_env(*, url: str, work: Path, sandbox: str) -> dict[str, str]:
    """The PAGOFLOW_* settings of every platform process of the bench."""
    from cli.demo import sandbox_endpoints

    return {
        "PAGOFLOW_DATABASE_URL": url, "PAGOFLOW_WORK_DIR": str(work),
        "PAGOFLOW_GPD_SUBSCRIPTION_KEY": GPD_KEY,
        "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY, "PAGOFLOW_STATION_01_PASSWORD": "pwd01Station",
        "PAGOFLOW_STATION_02_PASSWORD": "pwd02Station", "PAGOFLOW_SFTP_COMUNE_PASSWORD": SFTP_PASSWORD,
        "PAGOFLOW_SFTP_SCUOLA_PASSWORD": SFTP_PASSWORD, "PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD": NOTIFY_PASSWORD,
        **sandbox_endpoints(sandbox),
    }  # fmt: skip


def database(postgres: bool, tmp: Path) -> str:
    from bench.pgdb import create_pg_database
    from models.migrate import upgrade

    url = create_pg_database("pf_bench_daily") if postgres else f"sqlite:///{tmp}/daily.db"
    upgrade(url)
    return url


def apply_registry(*, tmp: Path, sftp_port: int, known_hosts: Path, notify_url: str) -> None:
    import yaml

    from cli.app import apply_registry_file
    from cli.demo import EXAMPLE_REGISTRY

    data = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    comune = {
        **data["treasury_sources"][0],
        "port": sftp_port,
        "known_hosts": str(known_hosts),
        "remote_dir": f"/{COMUNE}",
        "archive_dir": None,
    }
    scuola = {
        **comune,
        "name": "scuola-tesoreria",
        "id_dominio": SCUOLA,
        "account": IBAN_SCUOLA,
        "remote_dir": f"/{SCUOLA}",
        "password_ref": "env:PAGOFLOW_SFTP_SCUOLA_PASSWORD",
    }
    data["treasury_sources"] = [comune, scuola]
    data["applications"][0]["notification"]["url"] = notify_url
    path = tmp / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    apply_registry_file(path)


def load_positions(count: int) -> list[Any]:
    """Queue ``count`` positions through the API's store function; the new rows (``CreatedPosition``)."""
    from sqlmodel import Session

    from models.db import get_engine
    from rules.positions import PendenzaPut, validate_position
    from store.positions import load_caller, load_registry_view, upsert_positions

    due = (datetime.now(UTC) + timedelta(days=60)).date().isoformat()
    out: list[Any] = []
    with Session(get_engine()) as s:
        registry = load_registry_view(s)
        callers = {a2a: load_caller(s, id_a2a=a2a) for a2a in ("A2A-TRIBUTI", "A2A-SCUOLA")}
        for start in range(0, count, BATCH):
            batch = []
            for n in range(start, min(start + BATCH, count)):
                amount = f"{20 + n % 480}.{n % 100:02d}"
                school = n % 10 == 9
                a2a, ec, kind = ("A2A-SCUOLA", SCUOLA, "MENSA") if school else ("A2A-TRIBUTI", COMUNE, "TARI")
                voce: dict[str, Any] = (
                    {"ibanAccredito": IBAN_SCUOLA, "tipoContabilita": "ALTRO", "codiceContabilita": "MENSA"}
                    if school else {"codEntrata": "TARI"})  # fmt: skip
                body = PendenzaPut.model_validate(
                    {
                        "idTipoPendenza": kind,
                        "idDominio": ec,
                        "causale": f"{kind} {n}",
                        "importo": amount,
                        "dataScadenza": due,
                        "soggettoPagatore": {
                            "identificativo": "RSSMRA80A01H501U",
                            "anagrafica": f"Debitore {n}",
                        },
                        "voci": [{"idVocePendenza": "V1", "importo": amount, "descrizione": "Quota", **voce}],
                    }
                )
                batch.append(
                    validate_position(
                        body, id_a2a=a2a, id_pendenza=f"DAY-{n:07d}", caller=callers[a2a], registry=registry
                    )
                )
            for r in upsert_positions(s, batch=batch, want_rows=False):
                assert r.position is not None, r.error
                out.append(r.position)
            s.commit()
    return out


def pay(positions: list[Any], *, count: int, sandbox: str) -> dict[str, Any]:
    """``count`` of the positions paid today at pagoPA and their receipts stored, ``BATCH`` at a time.

    Our side gets what ``store.payments.accept_receipt`` writes when the station accepts a ``paSendRTV2`` of
    an open single-voce position (receipt ACCEPTED, its collection, position ESEGUITA and voce ESEGUITO, a
    notification queued, or NO_ENDPOINT when the application has none), written set-based: one receipt at a
    time takes some 60 ms on a loaded two-core machine, an hour for 60,000. pagoPA's side gets the paid
    transfers its Node books (the bench route of the sandbox), over four PSPs.
    """
    import random

    import httpx
    from sqlalchemy import select, update
    from sqlmodel import Session, col

    from models.db import get_engine
    from models.notifications import Notification, NotificationState
    from models.payments import Collection, Receipt, ReceiptSource, ReceiptState
    from models.positions import ItemState, Position, PositionItem, PositionState
    from models.registry import Application
    from rules.calendar import italian_today

    chosen = sorted(random.Random(11).sample(range(len(positions)), count))  # noqa: S311 - bench data
    today = italian_today()
    now = datetime.now(UTC)
    totals: Counter[str] = Counter()
    amounts: dict[str, Decimal] = {}
    with Session(get_engine()) as s, httpx.Client(timeout=120) as client:
        endpoint = {
            a: bool(u) for a, u in s.execute(select(Application.id_a2a, Application.notification_url))
        }
        for start in range(0, len(chosen), BATCH):
            batch = [positions[i] for i in chosen[start : start + BATCH]]
            items = {pid: (iid, code) for iid, pid, code in s.execute(
                select(PositionItem.id, PositionItem.position_id, PositionItem.accounting_code)
                .where(col(PositionItem.position_id).in_([p.id for p in batch])))}  # fmt: skip
            receipts, booked = [], []
            for n, p in enumerate(batch, start=start):
                psp = PSPS[n % len(PSPS)]
                receipt_id = uuid.uuid4().hex
                payload = (
                    f"<paSendRTV2Request><idPA>{p.id_dominio}</idPA><receipt><receiptId>{receipt_id}"
                    f"</receiptId><noticeNumber>{p.nav}</noticeNumber><creditorReferenceId>{p.iuv}"
                    f"</creditorReferenceId><paymentAmount>{p.amount}</paymentAmount>"
                    + "<x/>" * 500
                    + "</receipt></paSendRTV2Request>"
                )  # about the size of a real one
                receipts.append(Receipt(
                    receipt_id=receipt_id, id_dominio=p.id_dominio, iuv=p.iuv, nav=p.nav, position_id=p.id,
                    outcome="OK", state=ReceiptState.ACCEPTED, source=ReceiptSource.PUSH, amount=p.amount,
                    fee=Decimal("1.00"), psp_id=psp, psp_name=f"PSP {psp}", channel_id=f"{psp}_01",
                    payment_method="CP", payer_id="RSSMRA80A01H501U", payer_name=f"Debitore {n}",
                    payment_at=now, payload=payload, payload_format="XML", received_at=now))  # fmt: skip
                booked.append(
                    {
                        "ec": p.id_dominio,
                        "iuv": p.iuv,
                        "iur": f"IUR{n:013d}",
                        "amount": str(p.amount),
                        "psp": psp,
                        "receiptId": receipt_id,
                        "payDate": today.isoformat(),
                    }
                )
                totals[p.id_dominio] += 1
                amounts[p.id_dominio] = amounts.get(p.id_dominio, Decimal("0.00")) + p.amount
            s.add_all(receipts)
            s.flush()
            iban = {COMUNE: IBAN_COMUNE, SCUOLA: IBAN_SCUOLA}
            s.add_all([Collection(
                id_dominio=p.id_dominio, iuv=p.iuv, transfer_index=1, receipt_pk=r.id, position_id=p.id,
                item_id=items[p.id][0], amount=p.amount, iban=iban[p.id_dominio],
                remittance=f"/RFB/{p.iuv}/{p.amount}", transfer_category="9/0101100IM/", paid_at=now,
                accounting_code=items[p.id][1]) for p, r in zip(batch, receipts, strict=True)])  # fmt: skip
            s.add_all([Notification(
                id_a2a=p.id_a2a, id_dominio=p.id_dominio, iuv=p.iuv, receipt_pk=r.id, next_attempt_at=now,
                state=NotificationState.PENDING if endpoint.get(p.id_a2a) else NotificationState.NO_ENDPOINT)
                for p, r in zip(batch, receipts, strict=True)])  # fmt: skip
            s.execute(
                update(Position),
                [
                    {"id": p.id, "state": PositionState.ESEGUITA, "paid_at": now, "updated_at": now}
                    for p in batch
                ],
            )
            s.execute(
                update(PositionItem), [{"id": items[p.id][0], "state": ItemState.ESEGUITO} for p in batch]
            )
            s.commit()
            s.expunge_all()
            client.post(f"{sandbox}/sandbox/bench/paid", json={"payments": booked}).raise_for_status()
    return {
        "count": dict(totals),
        "amount": {k: str(v) for k, v in amounts.items()},
        "day": today.isoformat(),
    }


# ----------------------------------------------------------------------------------------------- the cycle


def run_cycle(out: Path) -> None:
    """In a fresh process: run the daily-cycle flow once, write its outcome and this process's memory."""
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into a forked child's ru_maxrss
    from flows.daily_cycle import DailyCycleError, daily_cycle

    imported = peak_rss_mb(os.getpid())
    started = time.perf_counter()
    state = daily_cycle(return_state=True)
    seconds = time.perf_counter() - started
    value = state.result(raise_on_failure=False)
    summary = value.summary if isinstance(value, DailyCycleError) else value
    if not isinstance(summary, dict):
        summary = {"error": repr(value)}
    out.write_text(json.dumps({
        "state": state.type.value, "message": state.message, "seconds": seconds,
        "flow_run_id": str(state.state_details.flow_run_id), "summary": summary,
        "rss_imported_mb": imported, "rss_peak_mb": peak_rss_mb(os.getpid()),
    }, default=str), encoding="utf-8")  # fmt: skip


def task_runs(
    api_url: str, *, settle_seconds: float = 4.0, timeout: float = 120.0
) -> tuple[int, Counter[str]]:
    """Task runs recorded by the Prefect server (the bench's own: only the cycle ran tasks), by task name."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def read_all(client: Any) -> Counter[str]:
        names: Counter[str] = Counter()
        offset = 0
        while page := client.read_task_runs(limit=200, offset=offset):
            names.update(_task_name(r) for r in page)
            offset += len(page)
        return names

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deadline, names, stable_since = time.monotonic() + timeout, Counter[str](), time.monotonic()
        while time.monotonic() < deadline:  # the server records task runs from events, a little later
            now = read_all(client)
            if now != names:
                names, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= settle_seconds:
                break
            time.sleep(1)
    return sum(names.values()), names


def _task_name(run: Any) -> str:
    # the task's key is "<function name>-<hash of its code>"
    return str(run.task_key).rpartition("-")[0] or run.name


# ----------------------------------------------------------------------------------------------- the bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--payments", type=int, default=60_000)
    parser.add_argument(
        "--postgres", action="store_true", help="on PAGOFLOW_TEST_POSTGRES_URL instead of SQLite"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed) for inspection")
    parser.add_argument("--serve-sandbox", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cycle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sandbox:
        serve_sandbox(args.serve_sandbox)
        return 0
    if args.cycle:
        run_cycle(args.cycle)
        return 0
    if args.payments > args.positions:
        parser.error("--payments cannot exceed --positions")
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    import logging

    import httpx
    import paramiko
    from rich.console import Console

    from bench.pgdb import drop_database
    from cli.demo import _clear_caches, _prefect_server
    from sandbox.sftp import SandboxSftpServer

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients hanging up are not news here
    tmp = Path(tempfile.mkdtemp(prefix="pagoflow-bench-daily-"))
    (tmp / "prefect").mkdir()
    for ec in (COMUNE, SCUOLA):
        (tmp / "bank" / ec).mkdir(parents=True)
    setup: dict[str, float] = {}
    clock = time.perf_counter()
    sandbox, base = start_sandbox()
    bank = SandboxSftpServer(
        root=tmp / "bank", username="tesoreria", password=SFTP_PASSWORD, host_key=paramiko.ECDSAKey.generate()
    ).start()
    url = database(args.postgres, tmp)
    env = platform_env(url=url, work=tmp / "work", sandbox=base)
    os.environ.update(env)
    _clear_caches()
    backend = "postgresql" if args.postgres else "sqlite"
    print(
        f"pagoflow daily cycle bench: {args.positions:,} positions, {args.payments:,} payments, {backend}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); work folder {tmp}",
        flush=True,
    )
    try:
        with _prefect_server(tmp / "prefect", Console(stderr=True)) as api_url:
            configure_sandbox(base, bank=tmp / "bank")
            known_hosts = tmp / "known_hosts"
            known_hosts.write_text(bank.known_hosts_line() + "\n", encoding="utf-8")
            apply_registry(
                tmp=tmp, sftp_port=bank.port, known_hosts=known_hosts, notify_url=f"{base}/sandbox/bench/ente"
            )
            setup["servers and registry"] = time.perf_counter() - clock
            clock = time.perf_counter()
            positions = load_positions(args.positions)
            setup["positions"] = time.perf_counter() - clock
            clock = time.perf_counter()
            paid = pay(positions, count=args.payments, sandbox=base)
            setup["payments"] = time.perf_counter() - clock
            clock = time.perf_counter()
            settled = httpx.post(
                f"{base}/sandbox/settle",
                timeout=600,
                json={"date": paid["day"], "seed": 11, "noise": {"unrelated": 2}},
            ).json()
            setup["settlement"] = time.perf_counter() - clock
            print(
                "setup: "
                + ", ".join(f"{k} {v:.0f}s" for k, v in setup.items())
                + f" ({len(settled['flows'])} flows, {len(settled['journals'])} journals)",
                flush=True,
            )

            out = tmp / "cycle.json"
            log = (tmp / "cycle.log").open("wb")
            server = prefect_server_pid()
            cpu_before = {
                "sandbox": cpu_seconds(sandbox.pid),
                "prefect": cpu_seconds(server) if server else 0.0,
            }
            load = os.getloadavg()[0]
            clock = time.perf_counter()
            child = subprocess.run(  # noqa: S603 - this interpreter running this file
                [sys.executable, __file__, "--cycle", str(out)], cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, check=False, env={
                    **os.environ, **env, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "INFO",
                    "PREFECT_HOME": str(tmp / "prefect-client")})  # fmt: skip
            wall = time.perf_counter() - clock
            cpu = {
                "sandbox": cpu_seconds(sandbox.pid) - cpu_before["sandbox"],
                "prefect": (cpu_seconds(server) if server else 0.0) - cpu_before["prefect"],
                "load": (load + os.getloadavg()[0]) / 2,
            }
            log.close()
            if child.returncode != 0 or not out.exists():
                print(
                    f"the cycle's process failed ({child.returncode}); see {tmp / 'cycle.log'}",
                    file=sys.stderr,
                )
                return 1
            cycle = json.loads(out.read_text(encoding="utf-8"))
            runs, by_task = task_runs(api_url)
            notified = httpx.get(f"{base}/sandbox/bench/ente", timeout=30).json()
            sandbox_peak = peak_rss_mb(sandbox.pid)
    finally:
        bank.stop()
        sandbox.terminate()
        sandbox.wait(timeout=20)
        if not args.keep:
            drop_database(url)
    ok = report(
        args,
        cycle=cycle,
        wall=wall,
        runs=runs,
        by_task=by_task,
        paid=paid,
        settled=settled,
        notified=notified,
        sandbox_peak=sandbox_peak,
        cpu=cpu,
    )
    print(f"work folder: {tmp}" + ("" if args.keep else " (database dropped on PostgreSQL)"))
    return 0 if ok else 1


def report(
    args: argparse.Namespace,
    *,
    cycle: dict[str, Any],
    wall: float,
    runs: int,
    by_task: Counter[str],
    paid: dict[str, Any],
    settled: dict[str, Any],
    notified: dict[str, int],
    sandbox_peak: float | None,
    cpu: dict[str, float],
) -> bool:
    summary = cycle["summary"]
    total = cycle["seconds"]
    print(f"\ndaily-cycle: {cycle['state']} in {total:.1f}s (its process: {wall:.1f}s with start-up)")
    print(f"  {'stage':<34} {'EC':<12} {'runs':>4} {'seconds':>8} {'CPU s':>7}")
    for s in summary.get("stages", []):
        name = s["stage"] + (f" ({s['target']})" if s["target"] else "")
        flag = "" if s["ok"] else f"   FAILED: {s['message'][:120]}"
        print(
            f"  {name:<34} {s['ec']:<12} {s['runs']:>4} {s['seconds']:>8.1f} {s.get('cpu_seconds', 0):>7.1f}"
            + flag
        )
    met = "met" if total <= TARGET_SECONDS else "MISSED"
    print(f"total {total:.1f}s, target <= {TARGET_SECONDS:.0f}s: {met}")
    own = sum(s.get("cpu_seconds", 0) for s in summary.get("stages", []))
    print(
        f"CPU seconds during the cycle: its process {own:.0f}, the sandbox {cpu['sandbox']:.0f}, the Prefect "
        f"server {cpu['prefect']:.0f}; {own + cpu['sandbox'] + cpu['prefect']:.0f} in all, on "
        f"{os.cpu_count()} CPUs shared with other work (load average {cpu['load']:.1f})"
    )
    # rows: positions to plan, then per payment a notification, a flow line and a cashing
    rows = args.positions + 3 * args.payments
    print(
        f"Prefect task runs: {runs} (subflow calls included) for {args.positions:,} positions and "
        f"{args.payments:,} payments, {rows / max(runs, 1):.0f} rows per task run: "
        + ", ".join(f"{name} {n}" for name, n in by_task.most_common())
    )
    work = cycle["rss_peak_mb"] - cycle["rss_imported_mb"]
    print(
        f"peak memory: the cycle's process {cycle['rss_peak_mb']:.0f} MB ({cycle['rss_imported_mb']:.0f} MB "
        f"after imports, {work:.0f} MB for the work); the sandbox "
        + (f"{sandbox_peak:.0f} MB" if sandbox_peak else "unknown")
    )
    figures = {f["id_dominio"]: f for f in summary.get("figures", [])}
    ok = cycle["state"] == "COMPLETED"
    print("per EC: positions, to publish, payments, paid, flows, money, cashed, anomalies, notified")
    for ec in (COMUNE, SCUOLA):
        f = figures.get(ec)
        if not f:
            ok = False
            continue
        want = Decimal(paid["amount"].get(ec, "0"))
        print(
            f"  {ec}: {f['positions']}, {f['positions_pending_publication']}, {f['receipts']}, "
            f"{f['paid']}, {f['flows']}, {f['money']}, {f['cashed']}, {f['anomalies']}, {notified.get(ec, 0)}"
        )
        flows = [x for x in settled["flows"] if x["ec"] == ec]
        ok &= f["positions_pending_publication"] == 0 and f["receipts"] == paid["count"].get(ec, 0)
        ok &= Decimal(f["paid"]) == want and Decimal(f["cashed"]) == want and Decimal(f["money"]) == want
        ok &= f["flows"] == len(flows)
    ok &= notified.get(COMUNE, 0) == paid["count"].get(COMUNE, 0)  # the school's application has no endpoint
    print(
        "outcome: "
        + (
            "every open position published, every payment notified, reported and cashed"
            if ok
            else "NOT as expected (see above)"
        )
    )
    return ok and total <= TARGET_SECONDS


if __name__ == "__main__":
    raise SystemExit(main())
