"""The production shape (issues #9, #11): two process workers run two daily cycles at once, nothing twice.

PostgreSQL for the platform and for a real Prefect server (``prefect server start``), ``prefect deploy --all``
from prefect.yaml, two ``prefect worker start --type process`` on one pool, secrets in Prefect Secret blocks
(see ``tests/production_env.py``). Two runs of the ``daily-cycle`` deployment are scheduled for the same
instant and each worker takes one. The sandbox's call journal, the application's endpoint and the database
then show every position published once, every notification delivered once, every flow downloaded and stored
once, every treasury file fetched and stored once, and a reconciliation that one more run leaves unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from models.counters import WorkClaim
from models.db import make_engine
from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, Receipt
from models.positions import Position
from models.reconciliation import Reconciliation, TransferLabel
from models.reporting import ReportingFlow
from models.treasury import TreasuryFile, TreasuryMovement
from store.reconciliation import reconcile_ec
from tests.conftest import PG_URL, create_pg_database, drop_pg_database
from tests.production_env import BLOCKS, COMUNE, SCUOLA, Shape, basic_auth, production_shape, soap_flow_id

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]
POSITIONS, PAID = 250, 150  # 60% paid by three PSPs before the cycles; the cycles publish the rest
NOTIFY_AUTH = basic_auth("pagoflow", BLOCKS["pagoflow-notify-tributi-password"])  # as read from its block


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """A fresh platform database and a fresh one for the Prefect server, dropped afterwards."""
    if not PG_URL:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    made: list[str] = []
    try:
        made.append(create_pg_database("pf_prod_platform"))
        made.append(create_pg_database("pf_prod_prefect"))
        yield made[0], made[1]
    finally:
        for url in made:
            drop_pg_database(url)


def reconciliation_state(s: Session) -> dict[str, Any]:
    """What reconciliation decides: labels, cashed collections and positions, riconciliazioni, movements."""
    s.expire_all()
    label = (TransferLabel.id_dominio, TransferLabel.subject, TransferLabel.subject_key, TransferLabel.label)
    return {
        "labels": sorted(s.exec(select(*label)).all()),
        "collections": sorted(s.exec(select(Collection.id, Collection.state, Collection.movement_id)).all()),
        "positions": sorted(s.exec(select(Position.id, Position.state)).all()),
        "riconciliazioni": sorted(s.exec(select(Reconciliation.movement_id, Reconciliation.state,
                                                Reconciliation.outcome_code)).all()),  # fmt: skip
        "movements": sorted(s.exec(select(TreasuryMovement.id, TreasuryMovement.match_state)).all()),
    }


def sandbox_calls(shape: Shape) -> dict[str, Counter[str]]:
    """What pagoPA (the sandbox) received, per key: GPD and ACA creates, flow downloads (REST and SOAP)."""
    def requests(operation: str) -> list[dict[str, Any]]:
        return shape.exchanges(operation=operation)

    return {
        "gpd": Counter(json.loads(e["request"])["iupd"] for e in requests("createPosition")
                       if e["status"].startswith("201")),
        "aca": Counter(json.loads(e["request"])["iuv"] for e in requests("newDebtPosition")),
        "fdr": Counter(e["endpoint"] for e in requests("IOrganizationsController_getSinglePublishedFlow")),
        "soap": Counter(soap_flow_id(e["request"]) for e in requests("nodoChiediFlussoRendicontazione")),
    }  # fmt: skip


def test_two_workers_run_two_daily_cycles_at_once_and_do_nothing_twice(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    platform_url, prefect_url = databases
    day = production_shape(tmp_path / "production", platform_url=platform_url,
                           prefect_database_url=prefect_url, positions=POSITIONS, paid_share=PAID / POSITIONS,
                           lean=True, say=print)
    with day as shape:
        assert (shape.paid["ok"], shape.paid["ko"]) == (PAID, 0), shape.paid
        settled_flows = sorted((f["ec"], f["idFlusso"]) for f in shape.settled["flows"])
        journals = {j["file"]: len(j["credits"]) for j in shape.settled["journals"]}
        assert len(settled_flows) >= 4 and len(journals) == 2  # three PSPs; the two ECs' treasury accounts

        runs = shape.run_deployment("daily-cycle/daily-cycle", count=2, timeout=420)
        print("\n".join(shape.describe(runs)))
        logs = "\n".join(shape.group.log(w) for w in shape.workers)
        states = [r.state.type.value for r in runs]
        assert states == ["COMPLETED"] * 2, [r.state.message for r in runs] + [logs]
        # one run on each worker, side by side, every stage of both completed
        assert {(r.labels or {}).get("prefect.worker.name") for r in runs} == {"worker-1", "worker-2"}
        first, second = runs
        assert first.start_time < second.end_time and second.start_time < first.end_time
        stages = shape.subflow_runs([r.id for r in runs])
        assert len(stages) >= 16 and {s.state.type.value for s in stages} == {"COMPLETED"}
        calls = sandbox_calls(shape)

    engine = make_engine(platform_url)
    try:
        with Session(engine) as s:
            positions = s.exec(select(Position)).all()
            # publication: every unpaid position created once at GPD or ACA; the paid ones never sent
            assert Counter(p.publication_state for p in positions) == {"PUBLISHED": POSITIONS - PAID,
                                                                       "SKIPPED": PAID}  # fmt: skip
            unpaid = [p for p in positions if p.paid_at is None]
            assert calls["gpd"] == {p.iupd: 1 for p in unpaid if p.id_dominio == COMUNE}
            assert calls["aca"] == {p.iuv: 1 for p in unpaid if p.id_dominio == SCUOLA}

            # notifications: every receipt of the application with an endpoint delivered once, with the
            # credentials of its Secret block
            receipts = s.exec(select(Receipt).where(Receipt.state == "ACCEPTED")).all()
            assert len(receipts) == PAID
            tributi = {(r.id_dominio, r.iuv, r.receipt_id) for r in receipts if r.id_dominio == COMUNE}
            assert Counter(shape.notified.calls) == dict.fromkeys(tributi, 1)
            assert shape.notified.authorizations == {NOTIFY_AUTH}
            assert Counter(s.exec(select(Notification.state)).all()) == {
                "DELIVERED": len(tributi), "NO_ENDPOINT": PAID - len(tributi)}

            # reporting flows: each downloaded once (FdR REST for the Comune, Node SOAP for the school) and
            # stored once
            stored = s.exec(select(ReportingFlow.id_dominio, ReportingFlow.id_flusso)).all()
            assert sorted(stored) == settled_flows
            assert set(calls["fdr"].values()) == {1} and set(calls["soap"].values()) == {1}
            assert len(calls["fdr"]) + len(calls["soap"]) == len(settled_flows)

            # treasury: each journal fetched once over SFTP and stored once, its movements once
            assert Counter(s.exec(select(TreasuryFile.name)).all()) == dict.fromkeys(journals, 1)
            fetched = s.exec(select(Event.file_name).where(
                Event.component == "sftp", Event.operation == "download", Event.outcome == "OK")).all()
            assert Counter(fetched) == dict.fromkeys(journals, 1)
            movements = s.exec(select(func.count()).select_from(TreasuryMovement)).one()
            assert movements == sum(journals.values())

            # reconciliation: all the money paid is cashed, and one more run changes nothing
            paid = sum((r.amount for r in receipts), Decimal("0.00"))
            cashed = s.exec(select(func.sum(Collection.amount)).where(Collection.state == "INCASSATA")).one()
            assert cashed == paid
            after_two = reconciliation_state(s)
            labels = Counter(label for *_key, label in after_two["labels"])
            assert labels == {"RT_IUF_TES": PAID, "RT_IUF": PAID}
            assert Counter(state for _id, state in after_two["positions"]) == {
                "INCASSATA": PAID, "NON_ESEGUITA": POSITIONS - PAID}
            for ec in (COMUNE, SCUOLA):
                reconcile_ec(s, id_dominio=ec)
            s.commit()
            assert reconciliation_state(s) == after_two

            # every lease the runs took was given back
            assert s.exec(select(WorkClaim).where(col(WorkClaim.claimed_until).is_not(None))).all() == []
    finally:
        engine.dispose()
