"""Capacity of the pagoPA sandbox over loopback: ``.venv/bin/python bench/sandbox.py``.

The sandbox and the trivial test station (tests/sandbox_station.py) each run in their own process; this
process is a bare httpx client. Prints one line per figure: GPD creates/s at concurrency 8 and 32, pay
round trips/s (verify + paGetPaymentV2 + paSendRTV2 against the station), FdR payment pages/s when
sandbox.fdr and sandbox.settlement are present. Bounded to about a minute.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
EC = "77777777777"
STATION = f"{EC}_01"
KEY = "bench-key"
H = {"Ocp-Apim-Subscription-Key": KEY}
GPD = f"/gpd/debt-positions-service/v1/organizations/{EC}/debtpositions"
PHASE_SECONDS = float(os.environ.get("BENCH_PHASE_SECONDS", "4"))
PAY_NOTICES = 30_000

STATION_SCRIPT = """
import sys, uvicorn
sys.path.insert(0, "tests")
from sandbox_station import TestStation
port, count = int(sys.argv[1]), int(sys.argv[2])
station = TestStation()
for n in range(count):
    station.add_notice(nav=f"302{n:015d}", amount="10.00")
uvicorn.run(station.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """This interpreter running our own module or script (no outside input)."""
    return subprocess.Popen(  # noqa: S603
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_ready(url: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def position(n: int, tag: str) -> dict[str, Any]:
    iuv = f"1{tag}{n:014d}"[:17]
    due = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    return {
        "iupd": f"BENCH-{tag}-{n}",
        "type": "F",
        "fiscalCode": "RSSMRA80A01H501U",
        "fullName": "Mario Rossi",
        "companyName": "Comune",
        "switchToExpired": False,
        "paymentOption": [
            {
                "iuv": iuv,
                "amount": 1000,
                "description": "bench",
                "isPartialPayment": False,
                "dueDate": due,
                "paymentOptionMetadata": [],
                "transfer": [
                    {
                        "idTransfer": "1",
                        "amount": 1000,
                        "remittanceInformation": "bench",
                        "category": "9/0101108TS/",
                        "iban": "IT60X0542811101000000123456",
                        "transferMetadata": [],
                    }
                ],
            }
        ],
    }


async def run_for(base: str, seconds: float, concurrency: int, call: Any) -> tuple[int, int, float]:
    """Run ``call(client, i)`` from ``concurrency`` workers for ``seconds``; (ok, errors, elapsed).

    Each worker has its own client holding one keep-alive connection: a single httpx pool shared by
    32 workers spends more CPU scanning its connections than the sandbox spends answering.
    """
    counter = iter(range(10**9))
    ok = errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal ok, errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            while time.perf_counter() < stop:
                try:
                    if await call(client, next(counter)):
                        ok += 1
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors, time.perf_counter() - started


SANDBOX_PID: int | None = None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def measure(base: str, name: str, seconds: float, concurrency: int, call: Any) -> None:
    """Run a phase and print its line: rate, count, errors, and the sandbox process's CPU use."""
    before = cpu_seconds(SANDBOX_PID)
    ok, errors, elapsed = await run_for(base, seconds, concurrency, call)
    after = cpu_seconds(SANDBOX_PID)
    cpu = f", sandbox CPU {100 * (after - before) / elapsed:.0f}%" if before is not None and after else ""
    print(f"{name:<50} {ok / elapsed:8.1f}/s  (n={ok}, errors={errors}, {elapsed:.1f}s{cpu})", flush=True)


async def bench(base: str) -> None:
    for concurrency in (8, 32):
        tag = f"{concurrency:02d}"

        async def create(client: httpx.AsyncClient, n: int, tag: str = tag) -> bool:
            r = await client.post(f"{GPD}?toPublish=true", json=position(n, tag), headers=H)
            return r.status_code == 201

        await measure(base, f"GPD creates (concurrency {concurrency})", PHASE_SECONDS, concurrency, create)

    navs = iter(range(PAY_NOTICES))

    async def pay(client: httpx.AsyncClient, _: int) -> bool:
        body = {"noticeNumber": f"302{next(navs):015d}", "fiscalCode": EC}
        r = await client.post("/sandbox/pay", json=body)
        return r.status_code == 200 and r.json()["outcome"] == "OK"

    await measure(base, "pay round trips via /sandbox/pay (concurrency 8)", PHASE_SECONDS + 2, 8, pay)

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        state = (await client.get("/sandbox/state")).json()
        paths = (await client.get("/sandbox/openapi.json")).json()["paths"]
        if not any(p.startswith("/fdr-org/") for p in paths) or "/sandbox/settle" not in paths:
            print("FdR pages: skipped (sandbox.fdr / sandbox.settlement not present)")
            return
        settled = await client.post("/sandbox/settle", json={"date": datetime.now(UTC).date().isoformat()})
        if settled.status_code != 200 or not settled.json().get("flows"):
            print(f"FdR pages: skipped (settle answered {settled.status_code})")
            return
        flow = max(settled.json()["flows"], key=lambda f: f.get("count") or 0)
        url = (
            f"/fdr-org/service/v1/organizations/{EC}/fdrs/{flow['idFlusso']}/revisions/{flow['revision']}"
            f"/psps/{flow['psp']}/payments"
        )
        first = await client.get(url, params={"page": 1, "size": 100}, headers=H)
        if first.status_code != 200:
            print(f"FdR pages: skipped (payments answered {first.status_code})")
            return
        pages = max(1, first.json()["metadata"]["totPage"])

    async def page(client: httpx.AsyncClient, n: int) -> bool:
        r = await client.get(url, params={"page": n % pages + 1, "size": 100}, headers=H)
        return r.status_code == 200

    lines = state["transfers"]["total"]
    await measure(base, f"FdR payment pages of 100 (concurrency 8, {lines} lines)", PHASE_SECONDS, 8, page)


def main() -> None:
    sandbox_port, station_port = free_port(), free_port()
    global SANDBOX_PID
    sandbox = spawn(["-m", "sandbox.server", "--port", str(sandbox_port), "--seed", "1"])
    SANDBOX_PID = sandbox.pid
    station = spawn(["-c", STATION_SCRIPT, str(station_port), str(PAY_NOTICES)])
    try:
        base = f"http://127.0.0.1:{sandbox_port}"
        wait_ready(f"{base}/sandbox/reset")
        wait_ready(f"http://127.0.0.1:{station_port}/paForNode")
        httpx.put(
            f"{base}/sandbox/config",
            json={
                "stations": [
                    {
                        "idStation": STATION,
                        "idBroker": EC,
                        "password": "password01",
                        "url": f"http://127.0.0.1:{station_port}/paForNode",
                    }
                ],
                "creditors": [
                    {
                        "fiscalCode": EC,
                        "name": "Comune di Sandbox",
                        "idStation": STATION,
                        "iban": "IT60X0542811101000000123456",
                    }
                ],
                "psps": [
                    {
                        "pspId": "BCITITMM",
                        "name": "Banca Sandbox",
                        "bic": "BCITITMM",
                        "channel": "BCITITMM_01",
                    }
                ],
                "subscriptionKeys": [KEY],
                "node": {"maxExchanges": 2000},
            },
            timeout=10,
        ).raise_for_status()
        print(
            f"sandbox capacity over loopback ({os.cpu_count()} CPUs; sandbox, station, client in 3 processes)"
        )
        asyncio.run(asyncio.wait_for(bench(base), timeout=50))
    finally:
        for process in (sandbox, station):
            process.terminate()
        for process in (sandbox, station):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
