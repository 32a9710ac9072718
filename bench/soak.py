"""Soak: the station under steady load for minutes, sampling memory and latency: memory flat, p99 stable?

Run: .venv/bin/python bench/soak.py [--minutes 10] [--rate 60] [--interval 30]

Not part of CI. The web process is `pagoflow serve` (uvicorn, one worker, access log on as in production) in
a process of its own on a fresh SQLite database (PostgreSQL with --postgres, on PAGOFLOW_TEST_POSTGRES_URL's
server) holding enough positions for the whole run. This process is the Node: it pays one notice after the
other at a steady rate, each payment being the three real envelopes pagoPA sends (paVerifyPaymentNotice,
paGetPaymentV2, paSendRTV2, one after the other) over HTTP; payments start on schedule whatever the answers'
delays (open loop, up to 48 in flight). Every ``--interval`` seconds it prints the curve (a window once the
next has closed, so its slow answers are in): time, requests offered and answered, errors, p50, p99, and the
server's resident memory (RSS, from /proc), with the machine's load average beside. At the end, the verdict:
memory is flat when, after the first minute of warm-up, it grew by less than 10% (or 25 MB) and by less than
5 MB a minute; p99 is stable when no interval's p99 is above twice the median interval's and the last third's
median p99 is within 1.5x of the first third's. A station that answers less than 95% of what is offered is
saturated: no steady state then.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.station import KEY, free_port, pct, prepare, receipt, request  # noqa: E402

WARM_UP_SECONDS = 60.0


@dataclass
class Sample:
    """One point of the curve."""

    at: float
    offered: int
    requests: int
    errors: int
    p50: float
    p99: float
    rss_mb: float
    load: float  # the machine's 1-minute load average: other processes slow the station down too


class Load:
    """The requests of the run: (time sent, latency ms, ok) appended by the payer threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[float, float, bool]] = []
        self.offered: list[float] = []  # when each payment was due to start

    def call(self, client: httpx.Client, url: str, body: bytes, action: str) -> None:
        started = time.perf_counter()
        try:
            r = client.post(
                url, content=body, headers={"SOAPAction": action, "Ocp-Apim-Subscription-Key": KEY}
            )
            ok = r.status_code == 200 and b"<outcome>OK</outcome>" in r.content
        except httpx.HTTPError:
            ok = False
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.done.append((started, elapsed, ok))

    def pay(self, client: httpx.Client, url: str, nav: str) -> None:
        self.call(client, url, request("paVerifyPaymentNoticeReq", nav), "paVerifyPaymentNotice")
        self.call(client, url, request("paGetPaymentV2Request", nav), "paGetPaymentV2")
        self.call(client, url, receipt(nav), "paSendRTV2")

    def window(self, since: float, until: float) -> tuple[int, list[tuple[float, float, bool]]]:
        """Requests offered in [since, until) (3 per payment due) and those sent then, answered."""
        with self.lock:
            offered = 3 * sum(1 for t in self.offered if since <= t < until)
            return offered, [d for d in self.done if since <= d[0] < until]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def web_process(db_url: str, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`pagoflow serve` on a free port; yields the process and the station URL."""
    port = free_port()
    env = {
        **os.environ,
        "PAGOFLOW_DATABASE_URL": db_url,
        "PAGOFLOW_STATION_INBOUND_KEY": KEY,
        "PAGOFLOW_JOURNAL_PAYLOADS": "on_error",
    }
    pagoflow = Path(sys.executable).parent / "pagoflow"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(pagoflow), "serve", "--host", "127.0.0.1", "--port", str(port)],  # noqa: S603
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/pagopa/paForNode"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.post(url, content=b"", timeout=2)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the web process did not start (see {log})") from None
                    time.sleep(0.2)
            yield server, url
        finally:
            server.terminate()
            server.wait(20)


def soak(
    url: str, pid: int, navs: list[str], *, rate: float, seconds: float, interval: float
) -> list[Sample]:
    """Pay at ``rate`` requests/s for ``seconds``, printing a sample every ``interval`` s.

    A window is printed once the next one has closed, so that its slow answers are in (a request is counted
    in the window it was sent in); the last ones when every request sent has been answered.
    """
    load = Load()
    samples: list[Sample] = []
    windows = max(1, int(seconds // interval))
    stop = threading.Event()
    started = time.perf_counter()

    def sample(n: int) -> None:
        offered, window = load.window(started + (n - 1) * interval, started + n * interval)
        latencies = [d[1] for d in window]
        point = Sample(
            at=n * interval,
            offered=offered,
            requests=len(window),
            errors=sum(1 for d in window if not d[2]),
            p50=pct(latencies, 50),
            p99=pct(latencies, 99),
            rss_mb=rss_mb(pid),
            load=os.getloadavg()[0],
        )
        samples.append(point)
        print(
            f"{point.at:6.0f} {point.offered / interval:9.1f} {point.requests:9d} "
            f"{point.requests / interval:7.1f} {point.errors:7d} {point.p50:8.1f} {point.p99:8.1f} "
            f"{point.rss_mb:8.1f} {point.load:6.1f}",
            flush=True,
        )

    def sampler() -> None:
        for n in range(1, windows):
            if stop.wait(max(0.0, started + (n + 1) * interval - time.perf_counter())):
                return
            sample(n)

    print(
        f"{'t (s)':>6} {'offered/s':>9} {'requests':>9} {'req/s':>7} {'errors':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'RSS MB':>8} {'load':>6}"
    )
    watcher = threading.Thread(target=sampler, name="sampler", daemon=True)
    watcher.start()
    interval_between = 3 / rate  # one payment = 3 requests
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        pool = ThreadPoolExecutor(48)
        try:
            n = 0
            while time.perf_counter() - started < windows * interval and navs:
                with load.lock:
                    load.offered.append(started + n * interval_between)
                pool.submit(load.pay, client, url, navs.pop())
                n += 1
                delay = started + n * interval_between - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        finally:
            # payments not started by the end are dropped: a station that fell behind shows it in the
            # offered and answered columns, not in a tail of drained backlog
            pool.shutdown(wait=True, cancel_futures=True)
    stop.set()
    watcher.join()
    for n in range(len(samples) + 1, windows + 1):
        sample(n)
    if not navs:
        print("  (ran out of prepared notices before the end)")
    return samples


def verdict(samples: list[Sample], interval: float) -> tuple[bool, bool, bool, list[str]]:
    """Memory flat? p99 stable? Did the station keep up with the offered rate? And the lines saying why."""
    lines: list[str] = []
    steady = [s for s in samples if s.at > WARM_UP_SECONDS] or samples[-1:]
    if len(steady) < 2:
        return False, False, False, ["too few samples after the warm-up for a verdict: run longer"]
    first, last = steady[0], steady[-1]
    minutes = (last.at - first.at) / 60
    growth = last.rss_mb - first.rss_mb
    xs = [s.at / 60 for s in steady]
    ys = [s.rss_mb for s in steady]
    slope = statistics.linear_regression(xs, ys).slope if len(steady) > 2 else growth / max(minutes, 1e-9)
    flat = growth < max(0.10 * first.rss_mb, 25.0) and slope < 5.0
    lines.append(
        f"memory: {first.rss_mb:.1f} MB at {first.at:.0f} s -> {last.rss_mb:.1f} MB at {last.at:.0f} s "
        f"({growth:+.1f} MB, trend {slope:+.2f} MB/min, peak {max(ys):.1f} MB): "
        f"{'FLAT' if flat else 'GROWING'}"
    )
    p99s = [s.p99 for s in steady]
    median = statistics.median(p99s)
    third = max(1, len(steady) // 3)
    early, late = statistics.median(p99s[:third]), statistics.median(p99s[-third:])
    stable = max(p99s) <= 2 * median and late <= 1.5 * early
    lines.append(
        f"p99: median {median:.1f} ms, range {min(p99s):.1f}-{max(p99s):.1f} ms, first third {early:.1f} ms,"
        f" last third {late:.1f} ms: {'STABLE' if stable else 'UNSTABLE'}"
    )
    total = sum(s.requests for s in samples)
    offered = sum(s.offered for s in samples)
    errors = sum(s.errors for s in samples)
    kept_up = total >= 0.95 * offered
    lines.append(
        f"{total} requests answered of {offered} offered ({total / (len(samples) * interval):.1f}/s), "
        f"{errors} errors: "
        + ("the station kept up" if kept_up else "the station did NOT keep up with the offered rate")
    )
    return flat, stable, kept_up, lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load lasts")
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s offered (3 per payment)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between two samples")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    seconds = args.minutes * 60
    count = int(seconds * args.rate / 3 * 1.05) + 100
    tmp = Path(tempfile.mkdtemp(prefix="pf-soak-"))
    pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if args.postgres and not pg:
        sys.exit("--postgres needs PAGOFLOW_TEST_POSTGRES_URL")
    with _database(tmp, pg if args.postgres else None) as db_url:
        started = time.perf_counter()
        navs = prepare(db_url, count)
        print(
            f"{len(navs)} positions prepared in {time.perf_counter() - started:.0f} s on "
            f"{'PostgreSQL' if args.postgres else 'SQLite'}; {args.rate:.0f} requests/s "
            f"for {args.minutes:g} min, a sample every {args.interval:.0f} s"
        )
        with web_process(db_url, tmp / "serve.log") as (server, url):
            samples = soak(url, server.pid, navs, rate=args.rate, seconds=seconds, interval=args.interval)
    flat, stable, kept_up, lines = verdict(samples, args.interval)
    print("\n" + "\n".join(lines))
    print(
        f"verdict: memory {'flat' if flat else 'NOT flat'}, p99 {'stable' if stable else 'NOT stable'}"
        + ("" if kept_up else "; the station was saturated (lower --rate): not a steady-state soak")
    )
    sys.exit(0 if flat and stable and kept_up else 1)


@contextmanager
def _database(tmp: Path, pg: str | None):  # type: ignore[no-untyped-def]
    if pg is None:
        yield f"sqlite:///{tmp}/soak.db"
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.db import make_engine

    name = f"pf_soak_{uuid.uuid4().hex[:8]}"
    admin = make_engine(str(make_url(pg).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
