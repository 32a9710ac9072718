"""Reconciliation scenarios: money ↔ flows ↔ receipts ↔ positions, labels as inputs arrive, re-runs idempotent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session, select

from models.payments import Collection
from models.positions import Position
from models.reconciliation import MatchSuggestion, Reconciliation, TransferLabel
from models.reporting import ReportingFlow
from models.treasury import TreasuryMovement
from store.reconciliation import confirm_suggestion, mark_not_pagopa, reconcile_ec
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_reconciliation import EC, flow, money, paid_position

FLOW_ID = "2026-11-26BCITITMM-S0000001"


@pytest.fixture
def s(db: Database):  # type: ignore[no-untyped-def]
    with db.session() as session:
        load_example_registry(session)
        yield session


def run(s: Session):  # type: ignore[no-untyped-def]
    summary = reconcile_ec(s, id_dominio=EC)
    s.commit()
    return summary


def labels(s: Session) -> set[str]:
    return {row.label for row in s.exec(select(TransferLabel).where(TransferLabel.id_dominio == EC)).all()}


def state_of(s: Session, position: Position) -> str:
    s.expire_all()
    return s.get(Position, position.id).state  # type: ignore[union-attr]


def snapshot(s: Session) -> tuple:  # type: ignore[type-arg]
    s.expire_all()
    return (
        sorted((p.id, p.state) for p in s.exec(select(Position)).all()),
        sorted((c.id, c.state, c.movement_id) for c in s.exec(select(Collection)).all()),
        sorted((m.id, m.match_state) for m in s.exec(select(TreasuryMovement)).all()),
        sorted((r.movement_id, r.state, r.outcome_code) for r in s.exec(select(Reconciliation)).all()),
        sorted((t.subject, t.subject_key, t.label) for t in s.exec(select(TransferLabel)).all()),
    )


def test_expected_label_sets_as_inputs_arrive_and_a_second_run_changes_nothing(s: Session) -> None:
    a, b = paid_position(s, amount="10.00"), paid_position(s, amount="15.50")
    run(s)
    assert labels(s) == {"RT_NO_IUF"}
    flow(s, id_flusso=FLOW_ID, positions=[a, b])
    run(s)
    assert labels(s) == {"RT_IUF", "IUF_NO_TES"}
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="25.50")
    summary = run(s)
    assert summary.flows_cashed == 1 and summary.collections_cashed == 2
    assert labels(s) == {"RT_IUF", "RT_IUF_TES"}
    assert state_of(s, a) == state_of(s, b) == "INCASSATA"
    before = snapshot(s)
    again = run(s)
    assert again.collections_cashed == 0 and snapshot(s) == before


def test_money_before_its_flow_is_matched_when_the_flow_arrives(s: Session) -> None:
    a = paid_position(s, amount="7.00")
    mov = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID.upper()}", amount="7.00")
    run(s)
    assert "TES_NO_IUF_OR_IUV" in labels(s)
    assert s.exec(select(Reconciliation).where(Reconciliation.movement_id == mov.id)).one().outcome_code == "021405"
    flow(s, id_flusso=FLOW_ID, positions=[a])
    run(s)
    assert state_of(s, a) == "INCASSATA" and "TES_NO_IUF_OR_IUV" not in labels(s)
    rec = s.exec(select(Reconciliation).where(Reconciliation.movement_id == mov.id)).one()
    assert rec.state == "ACQUISITO" and rec.outcome_code is None


@pytest.mark.parametrize("second", [f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}",
                                    f"/PUR/LGPE-RIVERSAMENTO/TXT/1/URI/{FLOW_ID}"])
def test_split_or_integrative_transfers_are_summed(s: Session, second: str) -> None:
    a = paid_position(s, amount="100.00")
    flow(s, id_flusso=FLOW_ID, positions=[a])
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="60.00")
    run(s)
    assert state_of(s, a) == "ESEGUITA" and "IUF_TES_DIV_IMP" in labels(s)
    assert {m.match_state for m in s.exec(select(TreasuryMovement)).all()} == {"PARTIAL"}
    money(s, remittance=second, amount="40.00")
    run(s)
    assert state_of(s, a) == "INCASSATA" and "IUF_TES_DIV_IMP" not in labels(s)
    assert {m.match_state for m in s.exec(select(TreasuryMovement)).all()} == {"MATCHED"}


def test_amount_mismatch_and_anomalous_flow_are_never_cashed(s: Session) -> None:
    a = paid_position(s, amount="10.00")
    b = paid_position(s, amount="20.00")
    flow(s, id_flusso=FLOW_ID, positions=[a])
    flow(s, id_flusso="2026-11-26BCITITMM-S0000002", positions=[b], state="ANOMALA")
    m1 = money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="12.00")
    m2 = money(s, remittance="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-26BCITITMM-S0000002", amount="20.00")
    run(s)
    assert state_of(s, a) == "ESEGUITA" and state_of(s, b) == "ESEGUITA"
    codes = {r.movement_id: r.outcome_code for r in s.exec(select(Reconciliation)).all()}
    assert codes == {m1.id: "021407", m2.id: "021404"}


def test_reversal_undoes_the_cashing(s: Session) -> None:
    a = paid_position(s, amount="30.00")
    flow(s, id_flusso=FLOW_ID, positions=[a])
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="30.00")
    run(s)
    assert state_of(s, a) == "INCASSATA"
    money(s, remittance=f"STORNO /PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="-30.00", reversal=True)
    summary = run(s)
    assert summary.collections_uncashed == 1
    assert state_of(s, a) == "ESEGUITA" and "RT_IUF_TES" not in labels(s)


def test_outcome_9_line_closes_the_position_without_receipt(s: Session) -> None:
    unpaid = paid_position(s, amount="12.00", pay=False)
    paid = paid_position(s, amount="8.00")
    flow(s, id_flusso=FLOW_ID, positions=[paid], extra_lines=[(unpaid.iuv or "", "12.00", 9, 1)])
    run(s)
    assert "IUV_NO_RT" in labels(s)
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="20.00")
    summary = run(s)
    assert summary.without_receipt == 1
    s.expire_all()
    closed = s.get(Position, unpaid.id)
    assert closed is not None and closed.state == "INCASSATA" and closed.paid_without_receipt
    orphan = s.exec(select(Collection).where(Collection.iuv == unpaid.iuv)).one()
    assert orphan.without_receipt and orphan.state == "INCASSATA" and orphan.receipt_pk is None


def test_double_payment_reported_twice_is_doppi(s: Session) -> None:
    a = paid_position(s, amount="5.00")
    from tests.factories_reconciliation import pay_position

    assert pay_position(s, a, receipt_id="SECOND-PSP-RECEIPT") == "DUPLICATE"
    s.commit()
    flow(s, id_flusso=FLOW_ID, positions=[a, a])
    run(s)
    assert "DOPPI" in labels(s) and state_of(s, a) == "ANOMALA"


def test_single_payment_by_iuv(s: Session) -> None:
    a = paid_position(s, amount="44.00")
    money(s, remittance=f"/RFB/{a.iuv}/44.00", amount="44.00")
    run(s)
    assert state_of(s, a) == "INCASSATA" and "RT_TES" in labels(s)
    money(s, remittance="/RFB/01999999999999999/3.00", amount="3.00")
    run(s)
    assert "TES_NO_IUF_OR_IUV" in labels(s)


def test_non_pagopa_credit_and_truncated_remittance_with_suggestion(s: Session) -> None:
    a = paid_position(s, amount="61.20")
    f = flow(s, id_flusso=FLOW_ID, positions=[a])
    noise = money(s, remittance="BONIFICO DA ROSSI MARIO AFFITTO NOVEMBRE", amount="500.00", party="ROSSI MARIO")
    truncated = money(s, remittance="/PUR/LGPE-RIVERSAMENTO/URI/2026-11-26BCITITMM-S00", amount="61.20",
                      party="BANCA DI TEST SPA")
    run(s)
    assert "TES_NO_MATCH" in labels(s) and state_of(s, a) == "ESEGUITA"
    suggestion = s.exec(select(MatchSuggestion).where(MatchSuggestion.movement_id == truncated.id)).one()
    assert suggestion.flow_id == f.id and suggestion.score > 0.5
    mark_not_pagopa(s, movement_id=noise.id or 0, operator="operatore.comune")
    confirm_suggestion(s, suggestion_id=suggestion.id or 0, operator="operatore.comune", accept=True)
    s.commit()
    run(s)
    assert state_of(s, a) == "INCASSATA" and "TES_NO_MATCH" not in labels(s)
    assert s.get(ReportingFlow, f.id).reconciled  # type: ignore[union-attr]


def test_totals_are_exact(s: Session) -> None:
    positions = [paid_position(s, amount=str(Decimal("0.10") * (i + 1))) for i in range(10)]
    flow(s, id_flusso=FLOW_ID, positions=positions)
    money(s, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="5.50")
    run(s)
    assert {state_of(s, p) for p in positions} == {"INCASSATA"}


def test_the_reconcile_flow_runs_under_prefect(db: Database, monkeypatch: pytest.MonkeyPatch,
                                               prefect_harness: None, tmp_path: Path) -> None:
    from models import db as models_db
    from models.settings import get_settings

    with db.session() as session:
        load_example_registry(session)
        a = paid_position(session, amount="9.99")
        flow(session, id_flusso=FLOW_ID, positions=[a])
        money(session, remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/{FLOW_ID}", amount="9.99")
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path))  # the flow writes its reports there
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    try:
        from flows.reconcile import reconcile

        summaries = reconcile(id_dominio=EC)
        assert [s["flows_cashed"] for s in summaries] == [1]
        assert reconcile(id_dominio=EC)[0]["collections_cashed"] == 0
    finally:
        get_settings.cache_clear()
        models_db.get_engine.cache_clear()
    with db.session() as session:
        assert state_of(session, a) == "INCASSATA"
