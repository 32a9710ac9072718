"""Load of the station on loopback: verify + paGetPaymentV2 + paSendRTV2, throughput and latency percentiles.

Run: .venv/bin/python bench/station.py [--seconds 20] [--rate 100]
The web process (uvicorn, one worker) runs in its own process on a fresh SQLite database (and PostgreSQL when
PAGOFLOW_TEST_POSTGRES_URL is set); this process is the client. Two phases per database, each bounded:
an open-loop run at --rate payments/s (3 requests each), then a closed loop at 16 concurrent payers to find the
maximum throughput. Targets (issue): p99 <= 100 ms at 100 requests/s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.db import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from rules.positions import PendenzaPut, validate_position  # noqa: E402
from sqlmodel import Session  # noqa: E402
from store.positions import load_caller, load_registry_view, upsert_positions  # noqa: E402
from tests.factories import load_example_registry  # noqa: E402
from web import soap  # noqa: E402

KEY = "bench-station-key"
EC, BROKER, STATION = "01234567897", "77777777777", "77777777777_01"
IBAN = "IT21X0306909606000000123456"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(url: str, count: int) -> list[str]:
    upgrade(url)
    engine = make_engine(url)
    navs: list[str] = []
    with Session(engine) as s:
        load_example_registry(s)
        caller = load_caller(s, id_a2a="A2A-TRIBUTI")
        registry = load_registry_view(s)
        due = (date.today() + timedelta(days=30)).isoformat()
        for start in range(0, count, 1000):
            batch = []
            for n in range(start, min(start + 1000, count)):
                body = PendenzaPut.model_validate({
                    "idTipoPendenza": "TARI", "idDominio": EC, "causale": f"Bench {n}",
                    "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
                    "importo": "10.00", "dataScadenza": due,
                    "voci": [{"idVocePendenza": "V1", "importo": "10.00", "descrizione": "Quota", "ibanAccredito": IBAN,
                              "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"}]})
                batch.append(validate_position(body, id_a2a="A2A-TRIBUTI", id_pendenza=f"B-{n}", caller=caller,
                                               registry=registry))
            navs.extend(r.position.nav for r in upsert_positions(s, batch=batch) if r.position)
            s.commit()
    engine.dispose()
    return navs


def request(op: str, nav: str) -> bytes:
    element = soap.new(op)
    for name, value in (("idPA", EC), ("idBrokerPA", BROKER), ("idStation", STATION)):
        soap.sub(element, name, value)
    qr = soap.sub(element, "qrCode")
    soap.sub(qr, "fiscalCode", EC)
    soap.sub(qr, "noticeNumber", nav)
    return soap.envelope(element)


def receipt(nav: str) -> bytes:
    iuv = nav[1:]
    element = soap.new("paSendRTV2Request")
    for name, value in (("idPA", EC), ("idBrokerPA", BROKER), ("idStation", STATION)):
        soap.sub(element, name, value)
    r = soap.sub(element, "receipt")
    for name, value in (("receiptId", uuid.uuid4().hex), ("noticeNumber", nav), ("fiscalCode", EC), ("outcome", "OK"),
                        ("creditorReferenceId", iuv), ("paymentAmount", "10.00"), ("description", "Bench"),
                        ("companyName", "Comune di Esempio")):
        soap.sub(r, name, value)
    debtor = soap.sub(r, "debtor")
    uid = soap.sub(debtor, "uniqueIdentifier")
    soap.sub(uid, "entityUniqueIdentifierType", "F")
    soap.sub(uid, "entityUniqueIdentifierValue", "RSSMRA80A01H501U")
    soap.sub(debtor, "fullName", "Mario Rossi")
    t = soap.sub(soap.sub(r, "transferList"), "transfer")
    for name, value in (("idTransfer", "1"), ("transferAmount", "10.00"), ("fiscalCodePA", EC), ("IBAN", IBAN),
                        ("remittanceInformation", f"/RFB/{iuv}/10.00"), ("transferCategory", "9/0101100IM/")):
        soap.sub(t, name, value)
    for name, value in (("idPSP", "BCITITMM"), ("PSPCompanyName", "Banca"), ("idChannel", "BCITITMM_01"),
                        ("channelDescription", "app"), ("paymentDateTime", datetime.now(UTC).strftime(
                            "%Y-%m-%dT%H:%M:%S"))):
        soap.sub(r, name, value)
    return soap.envelope(element)


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {"verify": [], "get": [], "sendRT": []}
        self.errors = 0

    def call(self, client: httpx.Client, url: str, op: str, body: bytes, action: str) -> None:
        started = time.perf_counter()
        r = client.post(url, content=body, headers={"SOAPAction": action, "Ocp-Apim-Subscription-Key": KEY})
        elapsed = (time.perf_counter() - started) * 1000
        ok = r.status_code == 200 and b"<outcome>OK</outcome>" in r.content
        with self.lock:
            self.latency[op].append(elapsed)
            self.errors += 0 if ok else 1


def pay(client: httpx.Client, url: str, nav: str, rec: Recorder) -> None:
    rec.call(client, url, "verify", request("paVerifyPaymentNoticeReq", nav), "paVerifyPaymentNotice")
    rec.call(client, url, "get", request("paGetPaymentV2Request", nav), "paGetPaymentV2")
    rec.call(client, url, "sendRT", receipt(nav), "paSendRTV2")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def report(label: str, rec: Recorder, seconds: float) -> None:
    everything = [v for vs in rec.latency.values() for v in vs]
    print(f"  {label}: {len(everything) / seconds:7.1f} requests/s, p50 {pct(everything, 50):6.1f} ms, "
          f"p99 {pct(everything, 99):6.1f} ms, errors {rec.errors}")
    for op, values in rec.latency.items():
        print(f"    {op:<7} n={len(values):5d} p50 {pct(values, 50):6.1f} ms p99 {pct(values, 99):6.1f} ms")


def open_loop(url: str, navs: list[str], *, rate: float, seconds: float) -> None:
    rec = Recorder()
    interval = 3 / rate  # one payment = 3 requests
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(32) as pool:
        started = time.perf_counter()
        futures = []
        n = 0
        while time.perf_counter() - started < seconds and navs:
            futures.append(pool.submit(pay, client, url, navs.pop(), rec))
            n += 1
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    report(f"open loop at {rate:.0f} requests/s offered", rec, elapsed)


def closed_loop(url: str, navs: list[str], *, workers: int, seconds: float) -> None:
    rec = Recorder()
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            while time.perf_counter() < stop:
                with lock:
                    if not navs:
                        return
                    nav = navs.pop()
                pay(client, url, nav, rec)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report(f"closed loop, {workers} concurrent payers (max throughput)", rec, time.perf_counter() - started)


def run(label: str, db_url: str, *, seconds: float, rate: float) -> None:
    navs = prepare(db_url, 12_000)
    port = free_port()
    env = {**os.environ, "PAGOFLOW_DATABASE_URL": db_url, "PAGOFLOW_STATION_INBOUND_KEY": KEY,
           "PAGOFLOW_JOURNAL_PAYLOADS": "on_error"}
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "uvicorn", "web.app:create_app", "--factory", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/pagopa/paForNode"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url, content=b"", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"{label}:")
        open_loop(url, navs, rate=rate, seconds=seconds)
        closed_loop(url, navs, workers=16, seconds=seconds)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each phase (at most 60)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s offered in the open loop")
    args = parser.parse_args()
    seconds = min(args.seconds, 60.0)
    print("target: p99 <= 100 ms at 100 requests/s; maximum throughput on 2 cores (client and server share them)")
    tmp = tempfile.mkdtemp()
    run("sqlite", f"sqlite:///{tmp}/station.db", seconds=seconds, rate=args.rate)
    pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if pg:
        name = f"pf_bench_{uuid.uuid4().hex[:8]}"
        admin = make_engine(str(make_url(pg).set(database="postgres")), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            run("postgres", make_url(pg).set(database=name).render_as_string(hide_password=False), seconds=seconds,
                rate=args.rate)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        print("postgres: skipped (PAGOFLOW_TEST_POSTGRES_URL not set)")


if __name__ == "__main__":
    main()
