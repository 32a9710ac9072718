"""Fault campaign: the daily chain, with the faults the demo test does not inject, ends as a clean run does.

The demo test already runs the chain with 10% 5xx/429/SOAP faults and dropped connections. Here the other
kinds are switched on at 10% on every pagoPA service, each injected at least once: answers held back past the
platform's timeout after the work was done, requests served whose answer is lost with the connection,
connections dropped before the request, answers cut in half, and the treasury bank's SFTP server hanging up in
the middle of a journal. Every position must end published, every payment received once, every flow
downloaded once, every movement ingested once, every notification delivered once, and the reconciliation must
equal the fault-free run's, label by label (bench/faults.py runs the same campaign bigger, with every fault
kind). The fault kinds themselves are checked first, on the sandbox alone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from bench.faults import compare, run_campaign
from connectors.journal import EventJournal
from models.journal import Event
from sandbox.server import start_in_thread
from tests.conftest import Database

KINDS = ("stall", "lost", "drop", "malformed", "sftp_drop")


@pytest.mark.prefect
@pytest.mark.timeout(600)  # on a loaded machine the session's Prefect harness alone can take minutes to start
def test_faults_the_demo_does_not_inject_leave_the_day_as_a_fault_free_run(
    tmp_path: Path, prefect_harness: None
) -> None:
    common = {
        "positions": 20,
        "seed": 31,
        "timeout": 0.6,  # a stalled answer comes 0.9 s later
        "psps": 2,
        "fdr_page_size": 8,
        "say": lambda _: None,
    }
    clean = run_campaign(workdir=tmp_path / "clean", rate=0.0, one_shots=False, **common)  # type: ignore[arg-type]
    faulty = run_campaign(workdir=tmp_path / "faulty", rate=0.10, kinds=KINDS, **common)  # type: ignore[arg-type]

    assert sum(clean.faults.values()) == 0
    for kind in KINDS:  # each kind really happened, on some service
        assert faulty.faults[kind] >= 1, (kind, dict(faulty.faults))
    assert faulty.faults["http_5xx"] == faulty.faults["http_429"] == 0  # not this test's kinds
    checks = compare(clean, faulty)
    failed = [(c.name, c.clean, c.faulty) for c in checks if not c.ok]
    assert not failed, failed
    assert clean.counts["positions published"] == faulty.counts["positions published"] == 20
    assert faulty.counts["receipts stored"] == faulty.counts["sandbox: receipts issued"] > 0
    assert faulty.counts["flows stored"] == faulty.counts["sandbox: flows published"] > 0
    assert faulty.counts["movements stored"] == faulty.counts["sandbox: journal credits"] > 0
    assert clean.labels == faulty.labels and len(clean.labels) > 0


# --- the fault kinds themselves, on the sandbox alone (no Prefect) ---------------------------------------

EC, KEY = "77777777777", "campaign-key"
GPD = f"/gpd/debt-positions-service/v1/organizations/{EC}/debtpositions"
H = {"Ocp-Apim-Subscription-Key": KEY}


def gpd_position(iupd: str, iuv: str) -> dict[str, Any]:
    """A valid GPD position with one option and one transfer."""
    due = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    transfer = {
        "idTransfer": "1",
        "amount": 1000,
        "remittanceInformation": "TARI",
        "category": "9/0101108TS/",
        "iban": "IT60X0542811101000000123456",
        "transferMetadata": [],
    }
    option = {
        "iuv": iuv,
        "amount": 1000,
        "description": "TARI",
        "isPartialPayment": False,
        "dueDate": due,
        "paymentOptionMetadata": [],
        "transfer": [transfer],
    }
    return {
        "iupd": iupd,
        "type": "F",
        "fiscalCode": "RSSMRA80A01H501U",
        "fullName": "Mario Rossi",
        "companyName": "Comune di Sandbox",
        "switchToExpired": False,
        "paymentOption": [option],
    }


@pytest.fixture
def sandbox() -> Iterator[httpx.Client]:
    """A sandbox with one creditor, and a client of it."""
    running = start_in_thread(seed=5)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            client.put(
                "/sandbox/config",
                json={
                    "stations": [
                        {"idStation": f"{EC}_01", "idBroker": EC, "password": "password01", "url": None}
                    ],
                    "creditors": [
                        {
                            "fiscalCode": EC,
                            "name": "Comune di Sandbox",
                            "idStation": f"{EC}_01",
                            "iban": "IT60X0542811101000000123456",
                        }
                    ],
                    "subscriptionKeys": [KEY],
                },
            ).raise_for_status()
            yield client
    finally:
        running.stop()


def test_a_stalled_answer_times_the_caller_out_after_the_work_is_done(sandbox: httpx.Client) -> None:
    sandbox.put(
        "/sandbox/faults",
        json={"rules": [{"path": "/gpd/", "method": "POST", "stallRate": 1.0, "stallMs": 800, "times": 1}]},
    ).raise_for_status()
    with pytest.raises(httpx.ReadTimeout):
        sandbox.post(GPD, json=gpd_position("S-1", "01000000000000144"), headers=H, timeout=0.3)
    # the position was created although the caller never heard of it: a retry meets a 409, a GET finds it
    assert sandbox.post(GPD, json=gpd_position("S-1", "01000000000000144"), headers=H).status_code == 409
    assert sandbox.get(f"{GPD}/S-1", headers=H).status_code == 200
    rule = sandbox.get("/sandbox/faults").json()["rules"][0]
    assert rule["injected"] == {"stall": 1} and rule["hits"] == 1


def test_a_lost_answer_drops_the_connection_after_the_work_is_done(sandbox: httpx.Client) -> None:
    sandbox.put(
        "/sandbox/faults", json={"rules": [{"path": "/gpd/", "method": "POST", "lostRate": 1.0, "times": 1}]}
    ).raise_for_status()
    with (
        httpx.Client(base_url=str(sandbox.base_url), timeout=5) as fresh,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        fresh.post(GPD, json=gpd_position("L-1", "01000000000000155"), headers=H)
    assert sandbox.get(f"{GPD}/L-1", headers=H).status_code == 200
    time.sleep(0.05)  # the exchange is journaled once the socket is gone
    posts = [
        e["status"]
        for e in sandbox.get("/sandbox/exchanges", params={"endpoint": GPD}).json()
        if e["status"].endswith("(lost)")
    ]
    assert posts == ["dropped (lost)"]


def test_an_error_list_draws_each_kind_and_counts_them(sandbox: httpx.Client) -> None:
    rules = {
        "seed": 3,
        "rules": [{"path": "/gpd/", "errorRate": 1.0, "error": ["http_503", "http_429"], "retryAfter": 0}],
    }
    sandbox.put("/sandbox/faults", json=rules).raise_for_status()
    first = [sandbox.get(f"{GPD}/NONE", headers=H).status_code for _ in range(20)]
    sandbox.put("/sandbox/faults", json=rules).raise_for_status()
    again = [sandbox.get(f"{GPD}/NONE", headers=H).status_code for _ in range(20)]
    assert first == again and set(first) == {503, 429}  # seeded: the same sequence twice
    injected = sandbox.get("/sandbox/faults").json()["rules"][0]["injected"]
    assert injected == {"http_503": first.count(503), "http_429": first.count(429)}
    bad = {"rules": [{"path": "/", "errorRate": 0.5, "stallRate": 0.6, "stallMs": 10}]}
    assert sandbox.put("/sandbox/faults", json=bad).status_code == 400  # more than 100% of the requests
    assert (
        sandbox.put("/sandbox/faults", json={"rules": [{"path": "/", "stallRate": 0.1}]}).status_code == 400
    )


def test_the_bank_hangs_up_mid_file_and_the_download_resumes_whole(
    tmp_path: Path, sqlite_db: Database
) -> None:
    # The cut races with the client: paramiko's prefetch thread may see the connection go before the reader
    # has taken the bytes that did arrive, and then nothing is kept to resume from (a whole restart, still
    # correct). Of three cuts at other points, at least one must resume where the first connection stopped.
    resumed = [_cut_download(tmp_path / f"try{seed}", sqlite_db, seed=seed) for seed in (1, 2, 3)]
    assert any(resumed), resumed


def _cut_download(tmp_path: Path, sqlite_db: Database, *, seed: int) -> int:
    """One download cut once mid-file: whole and verified in the end; the bytes it resumed from."""
    import paramiko
    from pydantic import SecretStr

    from connectors.treasury.sftp import SftpConfig, SftpSource
    from sandbox.sftp import Faults, SandboxSftpServer

    (tmp_path / "bank" / "d").mkdir(parents=True)
    data = os.urandom(1_500_000)  # several reads: the cut lands inside the file
    (tmp_path / "bank" / "d" / "GDC_1.xml").write_bytes(data)
    bank = SandboxSftpServer(
        root=tmp_path / "bank",
        host_key=paramiko.ECDSAKey.generate(),
        faults=Faults(drop_rate=0.0, seed=seed, cut_first=1),
    ).start()
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(bank.known_hosts_line())
        config = SftpConfig(
            name="bank",
            host=bank.host,
            port=bank.port,
            username=bank.username,
            password=SecretStr(bank.password),
            known_hosts=known_hosts,
            remote_dir="/d",
            timeout=10,
        )
        sleeps: list[float] = []
        journal = EventJournal(session_factory=sqlite_db.session)
        with SftpSource(config, journal=journal, sleep=sleeps.append, backoff_seconds=0.1) as sftp:
            got = sftp.download(name="GDC_1.xml", target=tmp_path / "GDC_1.xml")
    finally:
        bank.stop()
    assert (tmp_path / "GDC_1.xml").read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert (bank.faults.opened, bank.faults.dropped) == (2, 1) and got.attempts == 2 and sleeps == [0.1]
    second = [o for c, o, _n in bank.reads if c == 2]
    assert 0 <= got.resumed_bytes < len(data) and min(second) == got.resumed_bytes  # from what it kept
    assert sum(n for c, _o, n in bank.reads if c == 1) < len(data)  # the first connection never gave it all
    (event,) = sqlite_db.session().exec(select(Event).order_by(col(Event.id).desc()).limit(1)).all()
    assert event.outcome == "OK" and event.keys["resumed_from"] == str(got.resumed_bytes)
    return got.resumed_bytes
