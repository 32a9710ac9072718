"""store.reconciliation writes only what changed; one riconciliazione per movement (migration 0005 too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models.db import make_engine
from models.migrate import upgrade
from models.positions import Position
from models.reconciliation import Reconciliation, TransferLabel
from store.reconciliation import reconcile_ec
from tests.conftest import PG_URL, Database, create_pg_database, drop_pg_database
from tests.factories import load_example_registry
from tests.factories_reconciliation import EC, flow, money, paid_position

FLOW_ID = "2026-11-26BCITITMM-S0000077"


@pytest.fixture
def s(db: Database) -> Iterator[Session]:
    with db.session() as session:
        load_example_registry(session)
        yield session


def labels(s: Session) -> dict[tuple[str, str, str], TransferLabel]:
    s.expire_all()
    return {(t.subject, t.subject_key, t.label): t for t in s.exec(select(TransferLabel)).all()}


def test_labels_follow_their_values_and_a_run_with_nothing_new_writes_nothing(s: Session) -> None:
    a, b = paid_position(s, amount="10.00"), paid_position(s, amount="2.50")
    flow(s, id_flusso=FLOW_ID, positions=[a, b])
    reconcile_ec(s, id_dominio=EC)
    s.commit()
    reported = labels(s)
    assert {k[2] for k in reported} == {"RT_IUF", "IUF_NO_TES"}
    assert {t.movement_id for t in reported.values()} == {None}

    mov = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="12.50")
    summary = reconcile_ec(s, id_dominio=EC)
    s.commit()
    cashed = labels(s)
    assert summary.collections_cashed == 2 and set(summary.phase_seconds) >= {"cash flows", "labels"}
    assert {k[2] for k in cashed} == {"RT_IUF", "RT_IUF_TES"}
    # a reported transfer's label now names the money that cashed it: its row was replaced, the flow's dropped
    assert {t.movement_id for t in cashed.values()} == {mov.id}
    assert not {k for k in cashed if k[2] == "RT_IUF"} - set(reported)

    def rows() -> tuple[dict, set]:  # type: ignore[type-arg]
        recs = {(r.id, r.external_id, r.state, r.processed_at) for r in s.exec(select(Reconciliation)).all()}
        return {k: (t.id, t.updated_at, t.movement_id, t.amount) for k, t in labels(s).items()}, recs

    before = rows()
    again = reconcile_ec(s, id_dominio=EC)
    s.commit()
    # same rows, same ids, same timestamps: nothing deleted and inserted again, no sequence numbers spent
    assert rows() == before
    assert again.collections_cashed == 0 and again.labels == summary.labels
    assert {s.get(Position, p.id).state for p in (a, b)} == {"INCASSATA"}  # type: ignore[union-attr]


def test_a_label_no_rule_gives_goes(s: Session) -> None:
    a = paid_position(s, amount="4.00")
    s.add(TransferLabel(id_dominio=EC, subject="movement", subject_key=999, label="RT_IUF"))
    s.commit()
    summary = reconcile_ec(s, id_dominio=EC)
    s.commit()
    assert summary.labels == {"RT_NO_IUF": 1}
    assert {(k[0], k[2]) for k in labels(s)} == {("collection", "RT_NO_IUF")}
    assert s.get(Position, a.id).state == "ESEGUITA"  # type: ignore[union-attr]


def test_a_movement_has_one_riconciliazione(s: Session) -> None:
    a = paid_position(s, amount="3.00")
    flow(s, id_flusso=FLOW_ID, positions=[a])
    mov = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="3.00")
    reconcile_ec(s, id_dominio=EC)
    s.commit()
    (rec,) = s.exec(select(Reconciliation)).all()
    assert (rec.external_id, rec.movement_id, rec.state) == (f"TES-{mov.id}", mov.id, "ACQUISITO")
    s.add(Reconciliation(id_dominio=EC, external_id="R-OTHER", movement_id=mov.id, amount=rec.amount))
    with pytest.raises(IntegrityError):
        s.commit()
    s.rollback()


# rows as a 0004 database holds them (raw SQL: the models describe the newest schema)
MOVEMENT_0004 = text(
    "INSERT INTO treasury_movement (id, id_dominio, account, dedupe_key, amount, currency, remittance, "
    "reversal, match_state, created_at) VALUES (:id, '01234567897', 'IT00', :key, 100, 'EUR', '', false, "
    "'PENDING', '2026-11-27 10:00:00')"
)
RECONCILIATION_0004 = text(
    "INSERT INTO reconciliation (id, id_dominio, external_id, movement_id, request_hash, amount, state, "
    "created_at) VALUES (:id, '01234567897', :ext, :movement, :digest, 100, 'ACQUISITO', "
    "'2026-11-27 10:00:00')"
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    if not PG_URL:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    url = create_pg_database("pf_test_0005")
    try:
        yield url
    finally:
        drop_pg_database(url)


def test_migration_0005_keeps_one_riconciliazione_per_movement(empty_url: str) -> None:
    upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            for m in (1, 2, 3):
                conn.execute(MOVEMENT_0004, {"id": m, "key": f"K{m}"})
            for row in ((1, "TES-1", 1, None), (2, "TES-1-bis", 1, None),  # two derived rows of a movement
                        (3, "TES-2", 2, None), (4, "R-2", 2, "h" * 64),  # a derived row and the API's
                        (5, "R-3", 3, "h" * 64)):
                conn.execute(RECONCILIATION_0004, dict(zip(("id", "ext", "movement", "digest"), row,
                                                           strict=True)))
        upgrade(empty_url, "0005")
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT external_id FROM reconciliation ORDER BY id")).scalars().all()
        assert kept == ["TES-1", "R-2", "R-3"]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(RECONCILIATION_0004, {"id": 6, "ext": "R-3-bis", "movement": 3, "digest": "h" * 64})
        assert inspect(engine).get_foreign_keys("transfer_label") == []
    finally:
        engine.dispose()


def test_migration_0005_stops_on_two_api_riconciliazioni_of_one_movement(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url, "0004")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(MOVEMENT_0004, {"id": 7, "key": "K7"})
            for n in (1, 2):
                conn.execute(RECONCILIATION_0004, {"id": n, "ext": f"R-{n}", "movement": 7, "digest": "h"})
        with pytest.raises(RuntimeError, match="movement_id 7"):
            upgrade(url, "0005")
    finally:
        engine.dispose()
