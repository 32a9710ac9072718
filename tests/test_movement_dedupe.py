"""The same money posted through the API Ragioneria and read from the treasury journal: the pure rule."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from rules.movement_dedupe import (
    VALUE_DATE_WINDOW_DAYS,
    completed_from_api,
    money_facts,
    names_conflict,
    normal_reference,
    pair_twins,
    twin_evidence,
)

IBAN = "IT21X0306909606000000123456"
DAY = date(2026, 11, 27)
FLOW = "2026-11-26BCITITMM-S0000001"


def facts(id: int = 1, **overrides: Any):  # type: ignore[no-untyped-def]  # noqa: A002
    values: dict[str, Any] = {
        "account": IBAN,
        "amount": Decimal("40.00"),
        "value_date": DAY,
        "references": ("TRN-1",),
        "reference_kind": "flow",
        "reference": FLOW,
        "integrative": 0,
    }
    values.update(overrides)
    return money_facts(id=id, **values)


def test_a_shared_transfer_reference_is_the_strong_evidence() -> None:
    api = facts(references=("trn 1",))  # typed with a blank and in lower case
    assert twin_evidence(api, facts(2, references=("E2E-9", None, "TRN1"))) == "TRN"
    # the journal's remittance names nothing usable: the reference alone says it is the same money
    loose = {"reference_kind": "none", "reference": None}
    assert twin_evidence(api, facts(2, references=("TRN 1",), **loose)) == "TRN"
    assert twin_evidence(api, facts(2, references=("TRN1",), reference_kind="truncated")) == "TRN"
    assert twin_evidence(api, facts(2, references=("TRN-1",), **loose)) is None  # another reference


def test_the_named_flow_or_iuv_stands_in_when_the_references_differ() -> None:
    api = facts(references=("CRO-TYPED-BY-THE-EC",))
    assert twin_evidence(api, facts(2, references=("TRN-OF-THE-BANK",), reference=FLOW.upper())) == "IUF"
    iuv = {"reference_kind": "iuv", "reference": "01000000000000144"}
    assert twin_evidence(facts(references=(), **iuv), facts(2, references=("T",), **iuv)) == "IUV"
    # nothing named, nothing shared: two credits of the same amount are not taken for one
    loose = {"reference_kind": "none", "reference": None}
    assert twin_evidence(facts(references=("A",), **loose), facts(2, references=("B",), **loose)) is None
    # placeholders are never evidence
    assert normal_reference(" NOTPROVIDED ") is None and normal_reference("") is None
    no_id = {"references": ("NOTPROVIDED",), **loose}
    assert twin_evidence(facts(**no_id), facts(2, **no_id)) is None


def test_account_amount_date_window_and_what_is_named_must_agree() -> None:
    api = facts()
    assert twin_evidence(api, facts(2, account="IT21 X030 6909 6060 0000 0123 456")) == "TRN"
    assert twin_evidence(api, facts(2, account="IT65X0306909606000000654321")) is None
    assert twin_evidence(api, facts(2, amount=Decimal("40.01"))) is None
    assert twin_evidence(api, facts(2, amount=Decimal("-40.00"))) is None  # a reversal
    edge = DAY + timedelta(days=VALUE_DATE_WINDOW_DAYS)
    assert twin_evidence(api, facts(2, value_date=edge)) == "TRN"
    assert twin_evidence(api, facts(2, value_date=edge + timedelta(days=1))) is None
    assert twin_evidence(facts(value_date=None), facts(2, value_date=edge + timedelta(days=9))) == "TRN"
    # the same TRN, but another flow or another integrative transfer of the flow: one transfer, in conflict
    other_flow = facts(2, reference="2026-11-26BCITITMM-S0000002")
    assert twin_evidence(api, other_flow) == "TRN" and names_conflict(api, other_flow)
    assert twin_evidence(api, facts(2, integrative=1)) == "TRN" and names_conflict(api, facts(2, integrative=1))
    assert not names_conflict(api, facts(2, reference=FLOW.lower()))
    assert not names_conflict(api, facts(2, reference_kind="none", reference=None))  # the bank names nothing
    # without a shared reference, two credits naming different flows are two credits
    assert twin_evidence(facts(references=("A",)), facts(2, references=("B",), integrative=1)) is None


def test_pairs_are_one_to_one_shared_references_first_then_the_oldest() -> None:
    # two equal transfers for one flow (a split settlement): the API's TRN picks its own, not the oldest
    apis = [facts(10, references=("TRN-B",)), facts(11, references=("CRO-UNKNOWN",))]
    journals = [facts(n, references=(f"TRN-{x}",)) for n, x in ((1, "A"), (2, "B"), (3, "C"))]
    twins = pair_twins(apis, journals)
    assert [(t.api_id, t.journal_id, t.evidence) for t in twins] == [(10, 2, "TRN"), (11, 1, "IUF")]
    assert pair_twins(apis, []) == [] and pair_twins([], journals) == []
    # a journal movement is the same money as one API movement at most
    assert len(pair_twins([facts(10), facts(11)], [facts(1)])) == 1


def test_the_journal_keeps_its_data_and_takes_only_what_the_bank_left_out() -> None:
    api = {
        "reference_kind": "flow",
        "reference": FLOW,
        "reference_lower": FLOW.lower(),
        "integrative": 0,
        "bank_reference": "TRN-1",
        "value_date": DAY,
        "booking_date": DAY,
    }
    bank = {**api, "reference": FLOW.upper(), "bank_reference": "TRN-1-BNK", "value_date": DAY - timedelta(1)}
    assert completed_from_api(journal=bank, api=api) == {}
    cut = {**bank, "reference_kind": "truncated", "reference": "2026-11-26BCIT", "bank_reference": None}
    assert completed_from_api(journal=cut, api=api) == {
        "reference_kind": "flow",
        "reference": FLOW,
        "reference_lower": FLOW.lower(),
        "integrative": 0,
        "bank_reference": "TRN-1",
    }
    # the API named nothing usable: the bank's remittance stays
    unnamed = {**api, "reference_kind": "none"}
    assert completed_from_api(journal=cut, api=unnamed) == {"bank_reference": "TRN-1"}
