"""What publication sends for each position and what GPD/ACA refusals mean (pure; messages on the spec)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from connectors.pagopa.gpd import (
    GpdPositionState,
    aca_request_from,
    gpd_position_from,
)
from rules.publication import (
    Action,
    Candidate,
    CandidateItem,
    RemoteCopy,
    Result,
    after_aca_refusal,
    after_conflict,
    after_not_found,
    cents,
    next_iupd,
    plan,
    today_in_rome,
)
from sandbox.openapi import ACA_SPEC, GPD_SPEC, schema_errors

EC, TODAY = "01234567897", date(2026, 3, 10)
IUV, NAV, IUPD = "01000000000000144", "301000000000000144", "01234567897-01000000000000144"
IBAN = "IT21X0306909606000000123456"


def candidate(**overrides: object) -> Candidate:
    base = Candidate(
        id=1,
        version=1,
        published_version=0,
        id_dominio=EC,
        company_name="Comune di Esempio",
        office_name="Settore Tributi",
        target="GPD",
        key_ref="env:K",
        creditor_enabled=True,
        iuv=IUV,
        nav=NAV,
        iupd=IUPD,
        state="NON_ESEGUITA",
        amount=Decimal("25.00"),
        causale="TARI 2026",
        due_date=date(2026, 4, 30),
        category="9/0101100IM/",
        debtor_type="F",
        debtor_id="RSSMRA80A01H501U",
        debtor_name="Mario Rossi",
        debtor_nation="it",
        items=(
            CandidateItem(
                index=1,
                id_dominio=EC,
                company_name="Comune di Esempio",
                description="Quota TARI",
                amount=Decimal("20.00"),
                kind="IBAN",
                iban=IBAN,
            ),
            CandidateItem(
                index=2,
                id_dominio="00987654324",
                company_name="Provincia",
                description="TEFA",
                amount=Decimal("5.00"),
                kind="IBAN",
                iban="IT58X0103014200000000111222",
            ),
        ),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def remote(status: str, *, same: bool = False, iuvs: frozenset[str] = frozenset({IUV})) -> RemoteCopy:
    return RemoteCopy(status=status, iuvs=iuvs, same_content=same)


# --- plan ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "action"),
    [
        ({}, Action.CREATE),
        ({"version": 3, "published_version": 2}, Action.UPDATE),
        ({"state": "ANNULLATA", "published_version": 1, "version": 2}, Action.INVALIDATE),
        # never acknowledged, but a crashed run may have created it: invalidate anyway (404 = nothing there)
        ({"state": "ANNULLATA"}, Action.INVALIDATE),
        ({"state": "ANNULLATA", "due_date": date(2020, 1, 1)}, Action.INVALIDATE),
        ({"due_date": TODAY}, Action.CREATE),  # payable through its due date
        ({"due_date": None}, Action.CREATE),
        ({"iupd": None}, Action.CREATE),
    ],
)
def test_plan_picks_the_first_call(overrides: dict[str, object], action: Action) -> None:
    step = plan(candidate(**overrides), today=TODAY)
    assert step.action is action
    assert step.iupd == IUPD


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iuv": None}, "posizione senza IUV"),
        ({"due_date": date(2026, 3, 9)}, "scaduta il 2026-03-09"),
        ({"state": "ESEGUITA"}, "posizione gia' pagata (ESEGUITA)"),
        ({"target": "NONE"}, "la stazione dell'ente non pubblica su GPD/ACA"),
        ({"creditor_enabled": False}, "ente disabilitato"),
        ({"items": ()}, "0 voci: GPD ne accetta da 1 a 5"),
        ({"target": "ACA"}, "ACA: una posizione multibeneficiario non e' pubblicabile su ACA"),
    ],
)
def test_plan_skips_with_the_reason(overrides: dict[str, object], reason: str) -> None:
    step = plan(candidate(**overrides), today=TODAY)
    assert (step.action, step.result, step.reason) == (Action.DONE, Result.SKIPPED, reason)


def test_aca_takes_a_single_iban_position() -> None:
    single = candidate(target="ACA", items=candidate().items[:1], amount=Decimal("20.00"))
    assert plan(single, today=TODAY).action is Action.CREATE
    stamp = replace(
        single.items[0], kind="STAMP", iban=None, stamp_type="01", stamp_hash="h", stamp_province="RM"
    )
    assert plan(replace(single, items=(stamp,)), today=TODAY).reason == (
        "ACA: una marca da bollo digitale non e' pubblicabile su ACA"
    )


def test_italian_day_decides_the_due_date() -> None:
    # 23:30 UTC on 9 March is already 10 March in Rome
    assert today_in_rome(datetime(2026, 3, 9, 23, 30, tzinfo=UTC)) == TODAY


# --- answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "copy", "expected"),
    [
        # a crash after GPD took the create: the re-run finds the same content and sends nothing more
        (Action.CREATE, remote("VALID", same=True), (Action.DONE, Result.UNCHANGED)),
        (Action.CREATE, remote("PUBLISHED", same=False), (Action.UPDATE, None)),
        (Action.CREATE, remote("DRAFT", same=True), (Action.PUBLISH, None)),
        (Action.CREATE, remote("DRAFT", same=False), (Action.UPDATE, None)),
        (Action.CREATE, None, (Action.DONE, Result.FAILED)),  # the IUV is held by another IUPD
        (Action.CREATE, remote("PAID"), (Action.DONE, Result.SKIPPED)),
        (Action.UPDATE, remote("REPORTED"), (Action.DONE, Result.SKIPPED)),
        (Action.UPDATE, remote("INVALID"), (Action.DONE, Result.FAILED)),  # restore of an invalidated IUV
        (Action.UPDATE, remote("EXPIRED"), (Action.DONE, Result.FAILED)),
        (
            Action.UPDATE,
            remote("INVALID", iuvs=frozenset({"OTHER"})),
            (Action.CREATE, None),
        ),  # new IUV: new IUPD
        (Action.UPDATE, None, (Action.CREATE, None)),
        (Action.INVALIDATE, remote("INVALID"), (Action.DONE, Result.INVALIDATED)),
        (Action.INVALIDATE, remote("DRAFT"), (Action.DELETE, None)),
        (Action.INVALIDATE, remote("PAID"), (Action.DONE, Result.SKIPPED)),
        (Action.INVALIDATE, None, (Action.DONE, Result.INVALIDATED)),
    ],
)
def test_a_conflict_is_resolved_from_gpds_copy(
    action: Action, copy: RemoteCopy | None, expected: tuple[Action, Result | None]
) -> None:
    step = after_conflict(action, iuv=IUV, iupd=IUPD, remote=copy)
    assert (step.action, step.result) == expected


def test_a_restored_position_whose_iuv_gpd_invalidated_needs_a_new_notice_number() -> None:
    step = after_conflict(Action.UPDATE, iuv=IUV, iupd=IUPD, remote=remote("INVALID"))
    assert step.reason is not None and "nuovo numero avviso" in step.reason
    moved = after_conflict(Action.UPDATE, iuv="NEW", iupd=IUPD, remote=remote("INVALID"))
    assert moved.iupd == f"{IUPD}-R1"
    assert next_iupd(f"{IUPD}-R1") == f"{IUPD}-R2"
    assert next_iupd(f"{IUPD}-R9") is None


def test_not_found_and_aca_refusals() -> None:
    assert after_not_found(Action.UPDATE, iupd=IUPD).action is Action.CREATE
    assert after_not_found(Action.INVALIDATE, iupd=IUPD).result is Result.INVALIDATED
    assert after_aca_refusal(invalidate=True, status=404).result is Result.INVALIDATED
    assert after_aca_refusal(invalidate=False, status=409).result is Result.FAILED
    assert after_aca_refusal(invalidate=True, status=422).result is Result.SKIPPED
    assert after_aca_refusal(invalidate=False, status=422).result is Result.FAILED


# --- messages --------------------------------------------------------------------------------------------


def test_gpd_message_is_valid_against_the_spec_and_in_cents() -> None:
    message = gpd_position_from(candidate(), iupd=IUPD)
    body = json.loads(message.to_json())
    assert schema_errors(GPD_SPEC, "PaymentPositionModel", body) == []
    option = body["paymentOption"][0]
    assert (option["amount"], [t["amount"] for t in option["transfer"]]) == (2500, [2000, 500])
    assert option["paymentOptionMetadata"] == [] and option["transfer"][0]["transferMetadata"] == []
    assert option["dueDate"] == "2026-04-30T21:59:59Z"  # end of the Italian day
    assert option["nav"] == NAV and body["country"] == "IT" and body["switchToExpired"] is True
    assert [t["organizationFiscalCode"] for t in option["transfer"]] == [EC, "00987654324"]
    assert option["transfer"][0]["remittanceInformation"] == f"/RFB/{IUV}/20.00/TXT/Quota TARI"
    assert option["transfer"][1]["category"] == "9/0101100IM/"


def test_the_copy_gpd_answers_compares_equal_to_the_message() -> None:
    message = gpd_position_from(candidate(), iupd=IUPD)
    answered = json.loads(message.to_json()) | {"status": "VALID"}
    answered["paymentOption"][0]["dueDate"] = "2026-04-30T21:59:59.000Z"
    copy = GpdPositionState.model_validate(answered)
    assert copy.content_key() == message.content_key()
    changed = gpd_position_from(candidate(causale="TARI 2026 rettifica"), iupd=IUPD)
    assert copy.content_key() != changed.content_key()


def test_aca_message_and_its_invalidation() -> None:
    single = candidate(target="ACA", items=candidate().items[:1], amount=Decimal("20.00"))
    create = json.loads(aca_request_from(single).to_json())
    assert schema_errors(ACA_SPEC, "NewDebtPositionRequest", create) == []
    assert (create["amount"], create["iban"]) == (2000, IBAN)
    cancel = json.loads(aca_request_from(single, invalidate=True).to_json())
    assert cancel["amount"] == 0 and "iban" not in cancel


def test_cents_refuse_fractions() -> None:
    assert cents(Decimal("0.01")) == 1
    with pytest.raises(ValueError):
        cents(Decimal("0.001"))
