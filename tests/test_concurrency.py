"""Concurrency (issue #11): the station under load while publication and reconciliation run; claims hold.

On SQLite and PostgreSQL: the sandbox's PSPs pay notices through the live station (paVerifyPaymentNotice,
paGetPaymentV2, paSendRTV2 at eight at a time) while the publish-positions and reconcile flows run in other
threads; nothing fails, nothing is done twice. Then the claims themselves: two reconciliations of one EC take
turns, a lease or a receipt-recovery item is held by one run at a time and handed back.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, func, select

from connectors.pagopa.config import get_endpoints
from models.notifications import Notification
from models.payments import Collection, Receipt
from models.positions import Position
from models.reconciliation import Reconciliation, TransferLabel
from models.reporting import ReportingLine
from models.types import utcnow
from rules.positions import PendenzaPut, validate_position
from sandbox.gpd import ACA_BASE, GPD_BASE
from store.claims import claim_leases, new_holder, release_leases
from store.positions import load_caller, load_registry_view, upsert_positions
from store.receipts import RecoveryKind, claim_item, due_lines, release_item
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_payments import use_database
from tests.factories_reconciliation import EC, flow, money, paid_position
from tests.platform_env import platform_and_sandbox

PUBLISHED, PAID_UNDER_LOAD, RECONCILED = 120, 40, 24
TAKING_TURNS = 24  # positions of the day reconciled by two runs at once
URI = "/PUR/LGPE-RIVERSAMENTO/URI/"


def reconciliation_state(s: Session, positions: list[Position] | None = None) -> tuple[Any, ...]:
    """What a reconciliation run decides (about these positions only, when given), comparable between runs."""
    s.expire_all()
    ids = [p.id for p in positions] if positions is not None else None
    collections = select(Collection.id, Collection.state, Collection.movement_id)
    states = select(Position.id, Position.state)
    if ids is not None:
        collections = collections.where(col(Collection.position_id).in_(ids))
        states = states.where(col(Position.id).in_(ids))
    mine = {str(c[0]) for c in s.exec(collections).all()}
    labels = s.exec(select(TransferLabel.subject, TransferLabel.subject_key, TransferLabel.label)).all()
    return (
        sorted(label for label in labels if ids is None or label[0] != "collection" or label[1] in mine),
        sorted(s.exec(collections).all()),
        sorted(s.exec(select(Reconciliation.movement_id, Reconciliation.state,
                             Reconciliation.outcome_code)).all()),  # fmt: skip
        sorted(s.exec(states).all()),
    )


def reconcilable_day(s: Session, *, positions: int) -> list[Position]:
    """Paid positions of the Comune, reported in four flows whose money is on the treasury account."""
    paid = [paid_position(s, amount=f"{10 + n}.00") for n in range(positions)]
    size = positions // 4
    for k in range(4):
        chunk = paid[k * size : k * size + size]
        reported = flow(s, id_flusso=f"2026-11-26BCITITMM-S0000{k:03d}", positions=chunk)
        money(s, remittance=f"{URI}{reported.id_flusso}", amount=str(reported.total_amount))
    return paid


def queued_positions(s: Session, *, count: int) -> list[Position]:
    """``count`` unpaid positions of the Comune, loaded in one batch and queued for publication."""
    caller = load_caller(s, id_a2a="A2A-TRIBUTI")
    assert caller is not None
    registry = load_registry_view(s)
    due = (date.today() + timedelta(days=30)).isoformat()
    batch = []
    for n in range(count):
        amount = f"{20 + n % 50}.00"
        voce = {"idVocePendenza": "V1", "importo": amount, "descrizione": "Quota", "codEntrata": "TARI"}
        body = PendenzaPut.model_validate({
            "idTipoPendenza": "TARI", "idDominio": EC, "causale": f"TARI {n}", "importo": amount,
            "dataScadenza": due, "voci": [voce],
            "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        })  # fmt: skip
        batch.append(validate_position(body, id_a2a="A2A-TRIBUTI", id_pendenza=f"LOAD-{n:04d}", caller=caller,
                                       registry=registry))  # fmt: skip
    made = [r.position for r in upsert_positions(s, batch=batch)]
    s.commit()
    assert all(p is not None for p in made)
    return [p for p in made if p is not None]


def test_the_station_answers_under_load_while_publication_and_reconciliation_run(
    db: Database, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.publish_positions import publish_positions
    from flows.reconcile import reconcile

    with db.session() as s:
        load_example_registry(s)
        reconciled = reconcilable_day(s, positions=RECONCILED)
        fresh = queued_positions(s, count=PUBLISHED)
    to_pay = fresh[:PAID_UNDER_LOAD]  # queued for publication too: paid while it runs
    with platform_and_sandbox(db, monkeypatch) as env:
        for name, value in {"PAGOFLOW_PAGOPA_GPD_URL": env.sandbox_url + GPD_BASE,
                            "PAGOFLOW_PAGOPA_ACA_URL": env.sandbox_url + ACA_BASE,
                            "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        get_endpoints.cache_clear()
        httpx.put(f"{env.sandbox_url}/sandbox/faults", json={"rules": [{"path": "/gpd/", "latencyMs": 5}]},
                  timeout=10).raise_for_status()  # fmt: skip
        states: dict[str, Any] = {}
        answers: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        flows_done = threading.Event()
        start = threading.Barrier(3)

        def run_flow(name: str, fn: Any) -> None:
            try:
                start.wait()
                states[name] = fn(return_state=True)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def pay() -> None:
            try:
                start.wait()
                pending = [p for p in to_pay]
                while pending:  # eight at a time until the flows end, then the rest at once
                    chunk, pending = (pending[:8], pending[8:]) if not flows_done.is_set() else (pending, [])
                    payments = [{"noticeNumber": p.nav, "fiscalCode": EC} for p in chunk]
                    body = {"payments": payments, "concurrency": 8}
                    r = httpx.post(f"{env.sandbox_url}/sandbox/pay-batch", json=body, timeout=120)
                    r.raise_for_status()
                    answers.extend(r.json()["results"])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run_flow, args=("publish", publish_positions)),
                   threading.Thread(target=run_flow, args=("reconcile", reconcile)),
                   threading.Thread(target=pay)]  # fmt: skip
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads[:2]:
            t.join(120)
        flows_done.set()
        flows_seconds = time.monotonic() - started
        threads[2].join(120)
        assert not errors, errors
        assert len(states) == 2 and all(state.is_completed() for state in states.values()), {
            k: v.message for k, v in states.items()}

        # the station: every payment went through, no answer was an error or too late
        assert len(answers) == PAID_UNDER_LOAD
        assert all(a["outcome"] == "OK" and a["delivery"] == {EC: "delivered"} for a in answers), [
            a for a in answers if a["outcome"] != "OK" or a["delivery"] != {EC: "delivered"}][:3]
        calls = httpx.get(f"{env.sandbox_url}/sandbox/exchanges", params={"direction": "out", "limit": 0},
                          timeout=30).json()  # fmt: skip
        operations = ("paVerifyPaymentNotice", "paGetPaymentV2", "paSendRTV2")
        assert Counter(c["operation"] for c in calls) == dict.fromkeys(operations, PAID_UNDER_LOAD)
        assert {c["status"] for c in calls} == {"200"}, Counter(c["status"] for c in calls)
        millis = sorted(c["durationMs"] for c in calls)
        print(f"\n{db.backend}: {len(calls)} station calls while the flows ran ({flows_seconds:.1f}s): "
              f"p50 {statistics.median(millis):.0f} ms, p99 {millis[int(len(millis) * 0.99) - 1]:.0f} ms, "
              f"max {millis[-1]:.0f} ms")  # fmt: skip

        # publication: every queued position sent once at most; the unpaid ones all published
        wanted = {"operation": "createPosition", "limit": 0}
        sent = httpx.get(f"{env.sandbox_url}/sandbox/exchanges", params=wanted, timeout=30).json()
        creates = Counter(json.loads(e["request"])["iupd"] for e in sent if e["status"].startswith("201"))
        assert set(creates.values()) <= {1}
        with db.session() as s:
            ids = [f.id for f in fresh]
            rows = {p.id: p for p in s.exec(select(Position).where(col(Position.id).in_(ids)))}
            assert all(rows[p.id].state == "ESEGUITA" for p in to_pay)
            assert all(rows[p.id].publication_state == "PUBLISHED" for p in fresh[PAID_UNDER_LOAD:])
            assert all(rows[p.id].iupd in creates for p in fresh[PAID_UNDER_LOAD:])
            # receipts and notifications once each
            paid_ids = [p.id for p in to_pay]
            assert s.exec(select(func.count()).select_from(Receipt).where(
                col(Receipt.position_id).in_(paid_ids))).one() == PAID_UNDER_LOAD  # fmt: skip
            assert s.exec(select(func.count()).select_from(Notification).join(
                Receipt, col(Receipt.id) == Notification.receipt_pk).where(
                col(Receipt.position_id).in_(paid_ids))).one() == PAID_UNDER_LOAD  # fmt: skip
            # reconciliation: the day's money cashed, and a serial run now changes nothing
            ids = [r.id for r in reconciled]
            cashed = s.exec(select(Position.state).where(col(Position.id).in_(ids))).all()
            assert set(cashed) == {"INCASSATA"} and len(cashed) == RECONCILED
            after = reconciliation_state(s, reconciled)
        assert reconcile(return_state=True).is_completed()  # the payments made meanwhile get their labels too
        with db.session() as s:
            assert reconciliation_state(s, reconciled) == after


def test_two_reconciliations_of_one_ec_at_once_take_turns(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.logging import disable_run_logger

    from tasks.reconciliation import reconcile_creditor

    use_database(db, monkeypatch)
    with db.session() as s:
        load_example_registry(s)
        reconcilable_day(s, positions=TAKING_TURNS)
    errors: list[BaseException] = []
    results: list[dict[str, Any]] = []

    def run(barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            with disable_run_logger():
                results.append(reconcile_creditor.fn(EC))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first_state = None
    for _round in range(3):  # without the lock they collide on riconciliazioni and labels (unique keys)
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(barrier,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        with db.session() as s:
            state = reconciliation_state(s)
        assert first_state is None or state == first_state
        first_state = state
    assert len(results) == 6 and {r["flows_cashed"] for r in results} == {4}
    labels = Counter(label for _s, _k, label in first_state[0])
    assert labels == {"RT_IUF_TES": TAKING_TURNS, "RT_IUF": TAKING_TURNS}


def test_a_lease_is_held_by_one_run_at_a_time_and_given_back(db: Database) -> None:
    now = utcnow()
    lease = timedelta(minutes=5)
    names = ["download-reporting-flows:01234567897", "ingest-treasury:comune-tesoreria"]
    with db.session() as s:
        assert claim_leases(s, names=names, holder="run-a", now=now, lease=lease) == names
        s.commit()
        assert claim_leases(s, names=names, holder="run-b", now=now, lease=lease) == []
        assert claim_leases(s, names=names[:1], holder="run-a", now=now, lease=lease) == names[:1]  # renewed
        s.commit()
        assert release_leases(s, names=names, holder="run-b") == 0  # not b's to give back
        assert release_leases(s, names=names[1:], holder="run-a") == 1
        s.commit()
        assert claim_leases(s, names=names, holder="run-b", now=now, lease=lease) == names[1:]
        # run-a died holding the first: its lease runs out
        assert claim_leases(s, names=names, holder="run-b", now=now + lease + timedelta(seconds=1),
                            lease=lease) == names  # fmt: skip
        s.commit()
    taken: list[list[str]] = []
    barrier = threading.Barrier(4)

    def claim(holder: str) -> None:
        barrier.wait()
        with db.session() as session:
            got = claim_leases(session, names=["ingest-treasury:x"], holder=holder, now=now, lease=lease)
            taken.append(got)
            session.commit()

    threads = [threading.Thread(target=claim, args=(f"run-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(taken) == [[], [], [], ["ingest-treasury:x"]]


def test_a_lease_of_a_killed_run_on_this_host_is_free_at_once(db: Database) -> None:
    now, lease = utcnow(), timedelta(hours=1)
    here = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: S603
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    dead.wait(30)
    try:
        holders = {"ingest-treasury:alive": f"ingest@{here}:{alive.pid}:0a1b2c3d",
                   "ingest-treasury:dead": f"ingest@{here}:{dead.pid}:0a1b2c3d",
                   "ingest-treasury:elsewhere": f"ingest@another-host:{dead.pid}:0a1b2c3d"}
        with db.session() as s:
            for name, holder in holders.items():
                assert claim_leases(s, names=[name], holder=holder, now=now, lease=lease) == [name]
            s.commit()
            # a minute later, well within the hour: only the lease whose process is gone is taken over
            got = claim_leases(s, names=list(holders), holder=new_holder("next"),
                               now=now + timedelta(minutes=1), lease=lease)
            s.commit()
        assert got == ["ingest-treasury:dead"]
    finally:
        alive.kill()
        alive.wait(30)


def test_a_receipt_to_recover_is_asked_by_one_run_at_a_time(db: Database) -> None:
    with db.session() as s:
        load_example_registry(s)
        reported = paid_position(s, amount="25.00", pay=False)
        iuv = reported.iuv or ""
        reporting = flow(s, id_flusso="2026-11-26BCITITMM-S0000900", positions=[],
                         extra_lines=[(iuv, "20.00", 0, 1), (iuv, "5.00", 0, 2)])
        for line in s.exec(select(ReportingLine).where(ReportingLine.flow_id == reporting.id)).all():
            line.iur = "IUR-SHARED"  # one payment, two transfers: the lines share the PSP's IUR
            s.add(line)
        s.commit()
        (item,) = due_lines(s, limit=10)
    assert item.kind == RecoveryKind.LINE and len(item.ids) == 2
    now, lease = utcnow(), timedelta(minutes=5)
    until = now + lease
    won: list[Any] = []
    barrier = threading.Barrier(3)

    def claim() -> None:
        barrier.wait()
        with db.session() as session:
            won.append(claim_item(session, item=item, now=now, until=until))
            session.commit()

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(w is not None for w in won) == [False, False, True]
    with db.session() as s:
        assert claim_item(s, item=item, now=now, until=until) is None
        release_item(s, item=item)
        s.commit()
        # one of its lines got its receipt meanwhile: the claim takes only the line still waiting
        line = s.get(ReportingLine, item.ids[0])
        assert line is not None
        line.state = "LINKED"
        s.add(line)
        s.commit()
        narrowed = claim_item(s, item=item, now=now, until=until)
        s.commit()
        assert narrowed is not None and narrowed.ids == item.ids[1:]
        # its run died: the claim runs out and another run takes it
        assert claim_item(s, item=item, now=until + timedelta(seconds=1), until=until + lease) == narrowed
