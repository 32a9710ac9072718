"""The README's main job, end to end: every stage against the sandbox, and totals that add up."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from cli.demo import run_demo


@pytest.fixture
def restore_env():  # type: ignore[no-untyped-def]
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    from cli.demo import _clear_caches

    _clear_caches()


def test_the_demo_runs_the_whole_day_and_its_totals_add_up(tmp_path: Path, prefect_harness: None,
                                                           restore_env: None) -> None:
    # pagoPA faults (latency, 10% errors, 5% dropped connections) on GPD, ACA, FdR, Biz-Events and the Node
    result = run_demo(workdir=tmp_path / "demo", positions=120, seed=7, prefect_server=False, faults=0.10)
    counts = result.counts
    assert counts["bulk"]["total_rows"] == 120
    assert counts["publication"]["published"] == 120, counts["publication"]
    paid_ok = counts["payments"]["ok"]
    assert paid_ok >= 100  # 85% of the notices, one of them twice
    figures = {f["id_dominio"]: f for f in counts["figures"]}
    comune, scuola = figures["01234567897"], figures["80001234568"]
    assert comune["positions"] + scuola["positions"] == 120
    receipts = comune["receipts"] + scuola["receipts"]
    assert receipts == paid_ok  # one accepted receipt per paid notice; the second payment of one is a duplicate
    assert counts["notifications received by the application"] == comune["receipts"]  # only A2A-TRIBUTI has an endpoint
    for ec in (comune, scuola):
        assert ec["flows"] >= 1
        assert ec["cashed"] > Decimal("0") and ec["cashed"] <= ec["paid"]
    assert scuola["cashed"] == scuola["paid"]  # nothing odd happened to the school: all its money is explained
    assert (result.workdir / "pagoflow.db").exists()
    from models.db import session_scope
    from sqlmodel import func, select
    from models.notifications import Notification
    from models.payments import Receipt
    from models.reporting import ReportingFlow

    with session_scope() as s:  # exactly once: no receipt, notification or flow stored twice
        assert s.exec(select(func.count()).select_from(Receipt).where(Receipt.state == "ACCEPTED")).one() == receipts
        assert s.exec(select(func.count()).select_from(Notification).where(
            Notification.state == "DELIVERED")).one() == comune["receipts"]
        flows = s.exec(select(ReportingFlow.id_flusso)).all()
        assert len(flows) == len(set(flows))
