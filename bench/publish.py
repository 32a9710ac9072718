"""Publication throughput: ``.venv/bin/python bench/publish.py [--positions 10000] [--postgres] [--flow]``.

Starts the sandbox in its own process, writes ``--positions`` queued positions (one voce each, IUVs from the
real allocator's formula) into a fresh database (SQLite, or a throwaway PostgreSQL database on
PAGOFLOW_TEST_POSTGRES_URL with ``--postgres``), then in the same run measures:

* the sandbox's own GPD capacity: bare httpx creates (async, one keep-alive connection per worker, the
  fastest client ``bench/sandbox.py`` found) at the publisher's concurrency, before and after our run;
* our publication of every queued position: the work of the publish-positions tasks (claim, decide, send
  from ``publish_concurrency`` threads, journal, record) called directly, or with ``--flow`` the flow under
  Prefect (its temporary server is started before the timing).

Prints positions/s next to the capacity and the ratio (target: at least 70%). Checks that every position
ended PUBLISHED.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx  # noqa: E402
import yaml  # noqa: E402
from sqlalchemy import func, insert  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from bench.pgdb import create_pg_database, drop_database  # noqa: E402
from models.db import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.positions import Position, PositionItem  # noqa: E402
from rules.identifiers import build_notice  # noqa: E402
from rules.registry import parse_registry  # noqa: E402
from store.registry import apply_registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "examples" / "registry.yaml"
EC, A2A, IBAN = "01234567897", "A2A-TRIBUTI", "IT21X0306909606000000123456"
KEY = "bench-gpd-key"
GPD_BASE = "/gpd/debt-positions-service/v1"
TARGET = 0.70
BARE_SECONDS = float(os.environ.get("BENCH_PHASE_SECONDS", "4"))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    """The sandbox in its own process, configured with the example ECs and the bench key."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - this interpreter running our own module
        [sys.executable, "-m", "sandbox.server", "--port", str(port), "--seed", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/sandbox/state", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the sandbox did not start") from None
            time.sleep(0.1)
    registry = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    creditors = [
        {
            "fiscalCode": c["id_dominio"],
            "name": c["name"],
            "idStation": c["station"],
            "iban": c["ibans"][0]["iban"],
        }
        for c in registry["creditors"]
    ]
    stations = [
        {"idStation": s["id_stazione"], "idBroker": "77777777777", "password": "pw", "url": None}
        for s in registry["stations"]
    ]
    httpx.put(
        f"{base}/sandbox/config",
        json={
            "replace": True,
            "stations": stations,
            "creditors": creditors,
            "subscriptionKeys": [KEY],
            "node": {"maxExchanges": 1000},
        },
        timeout=10,
    ).raise_for_status()
    return process, base


def database(postgres: bool, tmp: Path) -> str:
    """A fresh, migrated database with the example registry."""
    url = create_pg_database("pf_bench_publish") if postgres else f"sqlite:///{tmp}/publish.db"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        apply_registry(session, spec=parse_registry(yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))))
        session.commit()
    engine.dispose()
    return url


def queue_positions(url: str, *, count: int) -> None:
    """``count`` new positions queued for publication (a raw insert: the bench measures publication)."""
    engine = make_engine(url)
    positions, items = Position.__table__, PositionItem.__table__  # type: ignore[attr-defined]
    due = date.today() + timedelta(days=60)
    with engine.begin() as conn:
        for start in range(0, count, 1000):
            now = datetime.now(UTC)
            rows = []
            for i in range(start, min(start + 1000, count)):
                notice = build_notice(aux_digit=3, progressive=i + 1, segregation_code="01")
                amount = Decimal(50 + i % 400) + Decimal(i % 100) / 100
                rows.append({
                    "id": i + 1, "id_a2a": A2A, "id_pendenza": f"PUB-{i:07d}", "id_dominio": EC,
                    "debt_type": "TARI", "causale": f"TARI 2026 utenza {i}", "debtor_type": "F",
                    "debtor_id": "RSSMRA80A01H501U", "debtor_name": f"Mario Rossi {i}",
                    "debtor_address": "Via Roma", "debtor_civic": str(i % 200), "debtor_cap": "00100",
                    "debtor_locality": "Roma", "debtor_province": "RM", "amount": amount, "iuv": notice.iuv,
                    "nav": notice.nav, "iupd": f"{EC}-{notice.iuv}", "due_date": due, "state": "NON_ESEGUITA",
                    "paid_without_receipt": False, "content_hash": "0" * 64, "version": 1,
                    "published_version": 0, "publication_state": "PENDING", "publication_attempts": 0,
                    "created_at": now, "updated_at": now})  # fmt: skip
            conn.execute(insert(positions), rows)
            conn.execute(insert(items), [
                {"position_id": r["id"], "item_index": 1, "id_voce": "1", "id_dominio": EC,
                 "description": "Tassa rifiuti", "amount": r["amount"], "kind": "IBAN", "iban": IBAN,
                 "postal": False, "accounting_type": "CAPITOLO", "accounting_code": "1010",
                 "state": "NON_ESEGUITO"}
                for r in rows])  # fmt: skip
    engine.dispose()


def bare_position(n: int, tag: str) -> dict[str, Any]:
    """A one-transfer position of the same shape as ours, in an IUV space of its own."""
    iuv = f"9{tag}{n:015d}"
    due = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    return {
        "iupd": f"BARE-{tag}-{n}",
        "type": "F",
        "fiscalCode": "RSSMRA80A01H501U",
        "fullName": "Mario Rossi",
        "companyName": "Comune di Esempio",
        "switchToExpired": True,
        "paymentOption": [
            {
                "iuv": iuv,
                "nav": f"3{iuv}",
                "amount": 1000,
                "description": "bench",
                "isPartialPayment": False,
                "dueDate": due,
                "paymentOptionMetadata": [],
                "transfer": [
                    {
                        "idTransfer": "1",
                        "amount": 1000,
                        "organizationFiscalCode": EC,
                        "remittanceInformation": f"/RFB/{iuv}/10.00",
                        "category": "9/0101100IM/",
                        "iban": IBAN,
                        "transferMetadata": [],
                    }
                ],
            }
        ],
    }


async def bare_capacity(base: str, *, concurrency: int, seconds: float, tag: str) -> tuple[float, float]:
    """Creates/s of bare async httpx workers, one keep-alive connection each, and client CPU ms per create."""
    counter = iter(range(10**9))
    ok = 0
    stop = time.perf_counter() + seconds
    url = f"{GPD_BASE}/organizations/{EC}/debtpositions?toPublish=true"

    async def worker() -> None:
        nonlocal ok
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=limits, headers={"Ocp-Apim-Subscription-Key": KEY}
        ) as client:
            while time.perf_counter() < stop:
                r = await client.post(url, json=bare_position(next(counter), tag))
                ok += r.status_code == 201

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / max(ok, 1)


def publish(
    url: str, *, gpd_url: str, batch_size: int, flow: bool, sandbox_pid: int
) -> tuple[float, dict[str, Any]]:
    """Seconds to publish the whole queue, and the totals."""
    os.environ.update(
        {
            "PAGOFLOW_DATABASE_URL": url,
            "PAGOFLOW_GPD_SUBSCRIPTION_KEY": KEY,
            "PAGOFLOW_PAGOPA_GPD_URL": gpd_url,
        }
    )
    from connectors.pagopa.config import get_endpoints
    from models.db import get_engine, session_scope
    from models.settings import get_settings

    get_settings.cache_clear()
    get_endpoints.cache_clear()
    get_engine.cache_clear()
    if flow:
        from prefect import flow as prefect_flow

        from flows.publish_positions import publish_positions

        prefect_flow(name="bench-warm-up")(lambda: None)()  # the temporary server starts outside the timing
        sandbox_cpu, own_cpu = cpu_seconds(sandbox_pid), time.process_time()
        started = time.perf_counter()
        totals = publish_positions(batch_size=batch_size, max_batches=190)
        elapsed = time.perf_counter() - started
    else:
        from store.publication import pending_windows
        from tasks.publication import PublicationSummary, publish_batch

        summary = PublicationSummary()
        sandbox_cpu, own_cpu = cpu_seconds(sandbox_pid), time.process_time()
        started = time.perf_counter()
        with session_scope() as session:
            windows, _ = pending_windows(session, id_dominio=None, batch_size=batch_size, max_batches=190)
        for window in windows:
            summary.add(publish_batch(first_id=window.first_id, last_id=window.last_id))
        elapsed = time.perf_counter() - started
        totals = summary.as_dict()
    sandbox_after = cpu_seconds(sandbox_pid)
    totals["own_cpu"] = time.process_time() - own_cpu
    totals["sandbox_cpu"] = sandbox_after - sandbox_cpu if sandbox_cpu is not None and sandbox_after else None
    with session_scope() as session:
        totals["published_in_db"] = session.exec(
            select(func.count()).select_from(Position).where(Position.publication_state == "PUBLISHED")
        ).one()
    get_engine(url).dispose()
    return elapsed, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--postgres", action="store_true", help="on PAGOFLOW_TEST_POSTGRES_URL instead of SQLite"
    )
    parser.add_argument("--flow", action="store_true", help="run the flow under Prefect")
    args = parser.parse_args(argv)
    from connectors.pagopa.config import get_endpoints

    concurrency = get_endpoints().publish_concurrency
    sandbox, base = start_sandbox()
    with tempfile.TemporaryDirectory() as tmp:
        url = database(args.postgres, Path(tmp))
        try:
            queue_positions(url, count=args.positions)
            before, bare_cpu = asyncio.run(
                bare_capacity(base, concurrency=concurrency, seconds=BARE_SECONDS, tag="1")
            )
            elapsed, totals = publish(
                url,
                gpd_url=base + GPD_BASE,
                batch_size=args.batch_size,
                flow=args.flow,
                sandbox_pid=sandbox.pid,
            )
            after, _ = asyncio.run(
                bare_capacity(base, concurrency=concurrency, seconds=BARE_SECONDS, tag="2")
            )
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)
            drop_database(url)
    capacity = (before + after) / 2
    rate = args.positions / elapsed
    backend = "postgresql" if args.postgres else "sqlite"
    print(
        f"sandbox GPD capacity, bare httpx at concurrency {concurrency}: {capacity:8.1f} creates/s "
        f"(before {before:.1f}, after {after:.1f}; {os.cpu_count()} CPUs, sandbox in its own process)"
    )
    print(
        f"publish-positions{' (flow)' if args.flow else ''}, {backend}, batch {args.batch_size}: "
        f"{rate:8.1f} positions/s ({args.positions} in {elapsed:.1f}s; published {totals['published']}, "
        f"failed {totals['failed']}, in db {totals['published_in_db']})"
    )
    sandbox_cpu = totals["sandbox_cpu"]
    cpu = f", sandbox CPU {100 * sandbox_cpu / elapsed:.0f}%" if sandbox_cpu is not None else ""
    print(
        f"  CPU during publication: this process {100 * totals['own_cpu'] / elapsed:.0f}% "
        f"({1000 * totals['own_cpu'] / args.positions:.2f} ms per position; the bare client "
        f"{bare_cpu:.2f} ms per create){cpu}"
    )
    if totals.get("phases"):
        print("  seconds by phase: " + ", ".join(f"{k} {v:.1f}" for k, v in totals["phases"].items()))
    ratio = rate / capacity if capacity else 0.0
    print(f"ratio {100 * ratio:.0f}% of the sandbox's capacity (target >= {100 * TARGET:.0f}%)")
    ok = totals["published_in_db"] == args.positions
    if not ok:
        print("NOT every position was published", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
