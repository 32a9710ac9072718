"""The reconciliation decisions as plain functions (rules/reconciliation.py), without a database or Prefect."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from rules.reconciliation import (
    FLOW_ALREADY_CASHED,
    FLOW_ANOMALOUS,
    FLOW_NOT_FOUND,
    PAYMENT_ALREADY_CASHED,
    PAYMENT_NOT_FOUND,
    WRONG_AMOUNT,
    Candidate,
    FlowFacts,
    decide_flow,
    decide_single,
    flow_already_cashed,
    payment_already_cashed,
    split_repeats,
    suggestion_score,
)

FLOW = FlowFacts(flow_id=7, id_flusso="2026-11-27BCITITMM-0001", state="ACCETTATA", total_amount=Decimal("40.00"))


def d(value: str) -> Decimal:
    return Decimal(value)


@pytest.mark.parametrize(("money", "flow", "outcome", "code", "label"), [
    (d("40.00"), FLOW, "MATCH", None, "RT_IUF_TES"),
    (d("25.00"), FLOW, "WAIT", WRONG_AMOUNT, "IUF_TES_DIV_IMP"),  # a first part of a split transfer
    (d("40.01"), FLOW, "ERROR", WRONG_AMOUNT, "IUF_TES_DIV_IMP"),
    (d("0.00"), FLOW, "WAIT", None, None),  # reversed: the flow-level label comes from the store (IUF_NO_TES)
    (d("40.00"), None, "WAIT", FLOW_NOT_FOUND, "TES_NO_IUF_OR_IUV"),  # money before its flow
    (d("40.00"), FlowFacts(7, "F", "ANOMALA", d("40.00")), "ERROR", FLOW_ANOMALOUS, "IUF_TES_DIV_IMP"),
])
def test_decide_flow(money: Decimal, flow: FlowFacts | None, outcome: str, code: str | None,
                     label: str | None) -> None:
    decision = decide_flow(money=money, flow=flow)
    assert (decision.outcome, decision.code, decision.label) == (outcome, code, label)
    assert decision.description


@pytest.mark.parametrize(("parts", "kept", "refused"), [
    # one transfer, or a split one whose parts add up: all summed
    ([(1, d("40.00"))], [1], []),
    ([(1, d("15.00")), (2, d("25.00"))], [1, 2], []),
    # the same money twice: the first cashes the flow, the second is refused (021413)
    ([(1, d("40.00")), (2, d("40.00"))], [1], [2]),
    ([(1, d("15.00")), (2, d("25.00")), (3, d("40.00")), (4, d("1.00"))], [1, 2], [3, 4]),
    # a reversal is always summed, and after it the money may come again
    ([(1, d("40.00")), (2, d("-40.00")), (3, d("40.00"))], [1, 2, 3], []),
    # too much in one transfer is not a repeat: the sum is wrong, decide_flow says so
    ([(1, d("30.00")), (2, d("30.00"))], [1, 2], []),
])
def test_split_repeats_keeps_the_first_cashing(parts: list[tuple[int, Decimal]], kept: list[int],
                                               refused: list[int]) -> None:
    summed, repeats = split_repeats(parts, flow=FLOW)
    assert ([m for m, _ in summed], repeats) == (kept, refused)


def test_split_repeats_sums_everything_while_the_flow_is_unknown() -> None:
    parts = [(1, d("40.00")), (2, d("40.00"))]
    assert split_repeats(parts, flow=None) == (parts, [])


def test_refused_transfers_carry_govpay_codes() -> None:
    flow = flow_already_cashed(FLOW)
    assert (flow.outcome, flow.code, flow.label) == ("ERROR", FLOW_ALREADY_CASHED, "IUF_TES_DIV_IMP")
    assert FLOW.id_flusso in flow.description
    single = payment_already_cashed()
    assert (single.outcome, single.code) == ("ERROR", PAYMENT_ALREADY_CASHED)


@pytest.mark.parametrize(("money", "paid", "outcome", "code"), [
    (d("7.00"), d("7.00"), "MATCH", None),
    (d("7.00"), None, "WAIT", PAYMENT_NOT_FOUND),
    (d("7.00"), d("7.50"), "ERROR", WRONG_AMOUNT),
])
def test_decide_single(money: Decimal, paid: Decimal | None, outcome: str, code: str | None) -> None:
    decision = decide_single(money=money, paid=paid)
    assert (decision.outcome, decision.code) == (outcome, code)


CANDIDATE = Candidate(flow_id=3, total_amount=d("120.00"), settlement_date=date(2026, 11, 26),
                      psp_name="Banca Esempio", psp_id="BCITITMM", settlement_ref="SETTLE-778",
                      id_flusso="2026-11-26BCITITMM-0042")


def test_suggestions_need_the_same_amount_within_the_window() -> None:
    base = {"ordering_party": None, "references": (), "partial_reference": None, "candidate": CANDIDATE}
    assert suggestion_score(amount=d("120.01"), value_date=date(2026, 11, 26), **base) == (0.0, [])
    assert suggestion_score(amount=d("120.00"), value_date=date(2026, 12, 9), **base) == (0.0, [])
    score, reasons = suggestion_score(amount=d("120.00"), value_date=date(2026, 11, 27), **base)
    assert 0.4 < score < 0.6 and reasons == ["stesso importo", "date a 1 giorni"]


def test_every_matching_clue_adds_to_the_score_up_to_one() -> None:
    score, reasons = suggestion_score(
        amount=d("120.00"), value_date=date(2026, 11, 26), ordering_party="BONIFICO DA BCITITMM SPA",
        references=("TRN SETTLE-778 X",), partial_reference="2026-11-26BCITITMM-00", candidate=CANDIDATE)
    assert score == 1.0
    assert reasons == ["stesso importo", "date a 0 giorni", "ordinante compatibile con il PSP",
                       "riferimento di regolamento coincidente", "causale troncata compatibile"]
