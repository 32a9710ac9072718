"""Tests for the pagoPA identifier rules in rules/identifiers.py (DOMAIN.md §3)."""

from __future__ import annotations

import re
import string
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rules.identifiers import (
    IBAN_LENGTHS,
    FlowIdParts,
    IdentifierError,
    Notice,
    build_notice,
    check_digits,
    format_nav,
    is_postal_iban,
    is_rf,
    is_valid_id_flusso,
    is_valid_rf,
    iuv_to_nav,
    make_rf,
    max_progressive,
    nav_to_iuv,
    parse_id_flusso,
    parse_nav,
    qr_payload,
    validate_ec_fiscal_code,
    validate_iban,
    verify_nav,
    voce_remittance,
)

DIGITS = string.digits
LETTERS = string.ascii_uppercase
ALNUM = DIGITS + LETTERS

two_digits = st.text(DIGITS, min_size=2, max_size=2)
prefixes = st.text(DIGITS, max_size=12)


@st.composite
def notices(draw: st.DrawFn) -> Notice:
    """Any notice we can issue: aux 0 or 3, any code, prefix and progressive that fits."""
    aux = draw(st.sampled_from([0, 3]))
    code = draw(two_digits)
    prefix = draw(prefixes)
    progressive = draw(st.integers(min_value=0, max_value=max_progressive(prefix=prefix)))
    if aux == 0:
        return build_notice(aux_digit=0, progressive=progressive, application_code=code, prefix=prefix)
    return build_notice(aux_digit=3, progressive=progressive, segregation_code=code, prefix=prefix)


def raises_on(field: str):
    """Expect an IdentifierError naming `field`."""
    return pytest.raises(IdentifierError, match=rf"^{field}: ")


# --- worked examples (DOMAIN.md §3) --------------------------------------------------------------


def test_aux0_worked_example() -> None:
    notice = build_notice(aux_digit=0, progressive=1, application_code="01")
    assert notice == Notice(aux_digit=0, iuv="000000000000141", nav="001000000000000141")


def test_aux3_worked_example() -> None:
    notice = build_notice(aux_digit=3, progressive=1, segregation_code="01")
    assert notice == Notice(aux_digit=3, iuv="01000000000000144", nav="301000000000000144")


def test_real_notice_check_digits() -> None:
    assert check_digits("3007157000000000") == "32"
    assert verify_nav("300715700000000032")
    parsed = parse_nav("300715700000000032")
    assert (parsed.aux_digit, parsed.segregation_code, parsed.iuv) == (3, "00", "00715700000000032")


def test_check_digits_are_zero_padded() -> None:
    assert check_digits("93") == "00"
    assert check_digits("94") == "01"
    assert check_digits("0") == "00"


@given(st.text(DIGITS, min_size=1, max_size=40))
def test_check_digits_is_mod_93(digits: str) -> None:
    assert check_digits(digits) == f"{int(digits) % 93:02d}"


@pytest.mark.parametrize("bad", ["", "12a", " 12", "1_000", "١٢٣", "12\n", "-12"])
def test_check_digits_rejects_non_digits(bad: str) -> None:
    with raises_on("digits"):
        check_digits(bad)


def test_prefix_sits_before_the_progressive() -> None:
    notice = build_notice(aux_digit=3, progressive=42, segregation_code="07", prefix="2024")
    assert notice.iuv.startswith("07" + "2024" + "000000042")
    assert notice.nav == "3" + notice.iuv
    assert verify_nav(notice.nav)


def test_max_progressive() -> None:
    assert max_progressive() == 9_999_999_999_999
    assert max_progressive(prefix="2024") == 999_999_999
    top = build_notice(aux_digit=3, progressive=999_999_999, segregation_code="01", prefix="2024")
    assert top.iuv[2:15] == "2024999999999"


def test_format_nav() -> None:
    assert format_nav("301000000000000144") == "3010 0000 0000 0001 44"
    with raises_on("nav"):
        format_nav("3010 0000 0000 0001 44")


# --- build_notice errors name the field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aux_digit": 3, "progressive": 10**13, "segregation_code": "01"}, "progressive"),
        (
            {"aux_digit": 3, "progressive": 1000, "segregation_code": "01", "prefix": "1234567890"},
            "progressive",
        ),
        ({"aux_digit": 3, "progressive": -1, "segregation_code": "01"}, "progressive"),
        ({"aux_digit": 3, "progressive": True, "segregation_code": "01"}, "progressive"),
        ({"aux_digit": 3, "progressive": "1", "segregation_code": "01"}, "progressive"),
        ({"aux_digit": 3, "progressive": 1}, "segregation_code"),
        ({"aux_digit": 3, "progressive": 1, "segregation_code": "1"}, "segregation_code"),
        ({"aux_digit": 3, "progressive": 1, "segregation_code": "0A"}, "segregation_code"),
        (
            {"aux_digit": 3, "progressive": 1, "segregation_code": "01", "application_code": "01"},
            "application_code",
        ),
        ({"aux_digit": 0, "progressive": 1}, "application_code"),
        ({"aux_digit": 0, "progressive": 1, "application_code": "123"}, "application_code"),
        (
            {"aux_digit": 0, "progressive": 1, "application_code": "01", "segregation_code": "01"},
            "segregation_code",
        ),
        ({"aux_digit": 1, "progressive": 1, "segregation_code": "01"}, "aux_digit"),
        ({"aux_digit": 2, "progressive": 1, "segregation_code": "01"}, "aux_digit"),
        ({"aux_digit": 4, "progressive": 1, "segregation_code": "01"}, "aux_digit"),
        ({"aux_digit": 3, "progressive": 1, "segregation_code": "01", "prefix": "20a4"}, "prefix"),
        ({"aux_digit": 3, "progressive": 1, "segregation_code": "01", "prefix": "1234567890123"}, "prefix"),
    ],
)
def test_build_notice_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(IdentifierError) as excinfo:
        build_notice(**kwargs)
    assert excinfo.value.field == field
    assert isinstance(excinfo.value, ValueError)


def test_error_carries_the_offending_value() -> None:
    with pytest.raises(IdentifierError) as excinfo:
        build_notice(aux_digit=3, progressive=10**13, segregation_code="01")
    assert excinfo.value.value == 10**13
    with pytest.raises(IdentifierError) as excinfo:
        max_progressive(prefix="x")
    assert (excinfo.value.field, excinfo.value.value) == ("prefix", "x")


# --- parse_nav, nav_to_iuv, iuv_to_nav -----------------------------------------------------------


def test_parse_nav_aux0() -> None:
    parsed = parse_nav("001000000000000141")
    assert (parsed.aux_digit, parsed.application_code, parsed.segregation_code) == (0, "01", None)
    assert (parsed.iuv, parsed.check_digits, parsed.check_digits_ok) == ("000000000000141", "41", True)


def test_parse_nav_aux1_has_no_check_digits() -> None:
    parsed = parse_nav("112345678901234567")
    assert (parsed.aux_digit, parsed.iuv) == (1, "12345678901234567")
    assert parsed.check_digits is None and parsed.check_digits_ok
    assert verify_nav("112345678901234567")


def test_parse_nav_aux2() -> None:
    assert check_digits("2000000000000123") == "32"
    parsed = parse_nav("200000000000012332")
    assert (parsed.aux_digit, parsed.iuv, parsed.check_digits_ok) == (2, "00000000000012332", True)
    assert parsed.application_code is None and parsed.segregation_code is None
    assert not verify_nav("200000000000012333")


@pytest.mark.parametrize(
    ("nav", "iuv"),
    [
        ("001000000000000141", "000000000000141"),
        ("112345678901234567", "12345678901234567"),
        ("200000000000012332", "00000000000012332"),
        ("301000000000000144", "01000000000000144"),
    ],
)
def test_nav_to_iuv(nav: str, iuv: str) -> None:
    assert nav_to_iuv(nav) == iuv


@pytest.mark.parametrize(
    "bad", ["", "30100000000000014", "3010000000000001444", "30100000000000014A", "501000000000000144"]
)
def test_malformed_nav_is_rejected(bad: str) -> None:
    with raises_on("nav"):
        parse_nav(bad)
    with raises_on("nav"):
        nav_to_iuv(bad)
    assert not verify_nav(bad)


def test_iuv_to_nav() -> None:
    assert iuv_to_nav(iuv="01000000000000144", aux_digit=3) == "301000000000000144"
    assert iuv_to_nav(iuv="000000000000141", aux_digit=0, application_code="01") == "001000000000000141"
    assert iuv_to_nav(iuv="12345678901234567", aux_digit=1) == "112345678901234567"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"iuv": "000000000000141", "aux_digit": 0}, "application_code"),
        ({"iuv": "01000000000000144", "aux_digit": 3, "application_code": "01"}, "application_code"),
        ({"iuv": "000000000000141", "aux_digit": 3}, "iuv"),
        ({"iuv": "01000000000000144", "aux_digit": 0, "application_code": "01"}, "iuv"),
        ({"iuv": "RF18539007547034", "aux_digit": 3}, "iuv"),
        ({"iuv": "01000000000000144", "aux_digit": 4}, "aux_digit"),
    ],
)
def test_iuv_to_nav_errors_name_the_field(kwargs: dict, field: str) -> None:
    with raises_on(field):
        iuv_to_nav(**kwargs)


# --- NAV properties ------------------------------------------------------------------------------


@given(notices())
def test_generated_nav_round_trips(notice: Notice) -> None:
    assert len(notice.nav) == 18
    assert len(notice.iuv) == (15 if notice.aux_digit == 0 else 17)
    assert nav_to_iuv(notice.nav) == notice.iuv
    assert verify_nav(notice.nav)
    parsed = parse_nav(notice.nav)
    assert parsed.aux_digit == notice.aux_digit
    assert parsed.iuv == notice.iuv
    assert parsed.check_digits_ok
    if notice.aux_digit == 0:
        assert parsed.application_code == notice.nav[1:3]
        assert iuv_to_nav(iuv=notice.iuv, aux_digit=0, application_code=parsed.application_code) == notice.nav
    else:
        assert parsed.segregation_code == notice.iuv[:2]
        assert iuv_to_nav(iuv=notice.iuv, aux_digit=3) == notice.nav


@given(two_digits, prefixes, st.data())
def test_parse_nav_recovers_the_codes(code: str, prefix: str, data: st.DataObject) -> None:
    progressive = data.draw(st.integers(min_value=0, max_value=max_progressive(prefix=prefix)))
    aux0 = build_notice(aux_digit=0, progressive=progressive, application_code=code, prefix=prefix)
    aux3 = build_notice(aux_digit=3, progressive=progressive, segregation_code=code, prefix=prefix)
    assert parse_nav(aux0.nav).application_code == code
    assert parse_nav(aux3.nav).segregation_code == code
    # Same base, so the aux-3 IUV is the aux-0 IUV's base behind the segregation code.
    assert aux3.iuv[2:15] == aux0.iuv[:13] == prefix + str(progressive).zfill(13 - len(prefix))


@given(notices(), st.integers(min_value=0, max_value=17), st.sampled_from(DIGITS))
def test_single_digit_change_fails_verification(notice: Notice, position: int, digit: str) -> None:
    # 93 = 3 × 31 shares no factor with 10 and exceeds 9, so no substitution in the 16 checked digits
    # keeps the remainder, and a changed check digit no longer matches it. The one escape: turning
    # the aux digit into 1, the legacy aux that carries no check digits at all.
    assume(notice.nav[position] != digit)
    changed = notice.nav[:position] + digit + notice.nav[position + 1 :]
    assert verify_nav(changed) is (position == 0 and digit == "1")


@given(notices(), st.integers(min_value=0, max_value=16))
def test_adjacent_transposition_fails_verification(notice: Notice, position: int) -> None:
    # A swap shifts the value by 9·(a−b)·10^k; 31 never divides 9·(a−b) for distinct digits.
    a, b = notice.nav[position], notice.nav[position + 1]
    assume(a != b)
    swapped = notice.nav[:position] + b + a + notice.nav[position + 2 :]
    assert verify_nav(swapped) is (swapped[0] == "1")


@given(st.text(max_size=30))
def test_random_strings_are_not_navs(value: str) -> None:
    assume(not re.fullmatch(r"[0-3][0-9]{17}", value))
    assert not verify_nav(value)
    with raises_on("nav"):
        parse_nav(value)


# --- RF creditor reference (ISO 11649) -----------------------------------------------------------

rf_references = st.text(ALNUM, min_size=1, max_size=21)


def test_rf_known_examples() -> None:
    assert make_rf("539007547034") == "RF18539007547034"
    assert make_rf("g72uur") == "RF45G72UUR"
    assert is_valid_rf("RF18 5390 0754 7034")
    assert is_valid_rf("rf45g72uur")
    assert not is_valid_rf("RF19539007547034")


def test_rf_check_digit_aliases_are_refused() -> None:
    # 02 ≡ 99 mod 97: a bare "mod 97 == 1" test would accept both; ISO 11649 issues only 02…98.
    rf = next(make_rf(str(n)) for n in range(1000) if make_rf(str(n))[2:4] == "02")
    assert not is_valid_rf("RF99" + rf[4:])


def test_rf_shape() -> None:
    assert is_rf("RF00X") and not is_valid_rf("RF00X")
    assert not is_rf("RF18")
    assert not is_rf("RF1853900754703412345678901")  # 22-character reference
    assert not is_rf("RFAB123")
    assert not is_rf("01000000000000144")
    assert not is_rf("RF45G72UUR\u0131")  # dotless i upper-cases to ASCII "I"


@pytest.mark.parametrize("bad", ["", "A" * 22, "AB-12", "AB 12", "ÀB"])
def test_make_rf_errors_name_the_field(bad: str) -> None:
    with raises_on("reference"):
        make_rf(bad)


@given(rf_references)
def test_made_rf_verifies(reference: str) -> None:
    rf = make_rf(reference)
    assert is_rf(rf) and is_valid_rf(rf)
    assert is_valid_rf(" ".join(rf[i : i + 4] for i in range(0, len(rf), 4)).lower())


@given(rf_references, st.data())
def test_rf_same_kind_substitution_is_rejected(reference: str, data: st.DataObject) -> None:
    # Replacing a digit with a digit or a letter with a letter keeps the length of the numeric form,
    # so the difference is c·10^k with 0 < c < 97 and 97 is prime. See the next test for the rest.
    rf = make_rf(reference)
    position = data.draw(st.integers(min_value=0, max_value=len(rf) - 1))
    old = rf[position]
    alphabet = ALNUM if position < 4 else (DIGITS if old in DIGITS else LETTERS)
    new = data.draw(st.sampled_from(alphabet).filter(lambda c: c != old))
    assert not is_valid_rf(rf[:position] + new + rf[position + 1 :])


def test_rf_blind_spots() -> None:
    # ISO 11649 expands letters to two digits, so a digit↔letter substitution can keep the remainder
    # mod 97 ("13" and "1A" expand to 13 and 110, which differ by 97), and swapping a digit d with the
    # letter worth 11·d leaves the numeric form unchanged ("1B" and "B1" both expand to 111).
    assert make_rf("13") == "RF4113" and is_valid_rf("RF411A")
    for digit, letter in (("1", "B"), ("2", "M"), ("3", "X")):
        rf = make_rf(f"7{digit}{letter}7")
        assert is_valid_rf(f"{rf[:5]}{letter}{digit}7")


BLIND_SWAPS = {frozenset("1B"), frozenset("2M"), frozenset("3X")}


@given(rf_references, st.data())
def test_rf_adjacent_transposition_is_rejected(reference: str, data: st.DataObject) -> None:
    rf = make_rf(reference)
    position = data.draw(st.integers(min_value=0, max_value=len(rf) - 2))
    a, b = rf[position], rf[position + 1]
    assume(a != b and frozenset((a, b)) not in BLIND_SWAPS)
    assert not is_valid_rf(rf[:position] + b + a + rf[position + 2 :])


@given(st.text(max_size=30))
def test_random_strings_are_not_valid_rf(value: str) -> None:
    compact = "".join(value.split()).upper()
    if is_valid_rf(value):
        assert make_rf(compact[4:]) == compact
    if not compact.startswith("RF"):
        assert not is_rf(value)


@given(st.text(ALNUM + " ", max_size=26).map(lambda rest: "RF" + rest))
def test_rf_like_strings_verify_only_with_their_own_check_digits(value: str) -> None:
    compact = "".join(value.split()).upper()
    expected = is_rf(value) and make_rf(compact[4:]) == compact
    assert is_valid_rf(value) is expected


# --- EC fiscal code ------------------------------------------------------------------------------


def test_test_ec_fiscal_code_only_warns() -> None:
    warnings = validate_ec_fiscal_code("77777777777")
    assert warnings and "check digit" in warnings[0]


@pytest.mark.parametrize("code", ["02438750586", "06363391001", "80078750587", "00488410010"])
def test_real_ec_fiscal_codes_have_no_warnings(code: str) -> None:
    assert validate_ec_fiscal_code(code) == []


def test_all_zero_fiscal_code_warns() -> None:
    assert validate_ec_fiscal_code("00000000000") == ["fiscal code is all zeros"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "7777777777",
        "777777777777",
        "7777777777A",
        " 77777777777",
        "77777777777\n",
        "٧٧٧٧٧٧٧٧٧٧٧",
        "RSSMRA80A01H501U",
    ],
)
def test_ec_fiscal_code_pattern_is_enforced(bad: str) -> None:
    with raises_on("fiscal_code"):
        validate_ec_fiscal_code(bad)


@given(st.text(DIGITS, min_size=11, max_size=11))
def test_any_eleven_digits_are_accepted(code: str) -> None:
    assert isinstance(validate_ec_fiscal_code(code), list)


# --- IBAN ----------------------------------------------------------------------------------------

VALID_IBANS = [
    "IT60X0542811101000000123456",
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "BE68539007547034",
    "CH9300762011623852957",
    "NO9386011117947",
    "MT84MALT011000012345MTLCAST001S",
]
POSTAL_IBAN = "IT67X0760103200001001234567"


@pytest.mark.parametrize("iban", VALID_IBANS)
def test_valid_ibans(iban: str) -> None:
    assert validate_iban(iban) == iban
    assert len(iban) == IBAN_LENGTHS[iban[:2]]


def test_iban_is_normalised() -> None:
    assert validate_iban("it60 x054 2811 1010 0000 0123 456") == "IT60X0542811101000000123456"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "IT60X0542811101000000123457",  # wrong check
        "IT60X054281110100000012345",  # too short
        "IT6005428111010000001234567",
        "US64SVBKUS6S3300958879",  # not SEPA
        "IT60X0542811101000000123456!",
        "IT60X05428111010000001234\u0130",  # dotted capital I: non-ASCII
    ],
)
def test_invalid_ibans(bad: str) -> None:
    with raises_on("iban"):
        validate_iban(bad)


def test_italian_shape_is_checked_even_with_right_check_digits() -> None:
    bban = "00542811101000000123456"
    numeric = int("".join(str(int(c, 36)) for c in bban + "IT00"))
    iban = f"IT{98 - numeric % 97:02d}{bban}"
    assert int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1
    with raises_on("iban"):
        validate_iban(iban)


@given(st.sampled_from(VALID_IBANS), st.data())
def test_iban_digit_substitution_is_rejected(iban: str, data: st.DataObject) -> None:
    positions = [i for i, c in enumerate(iban) if c in DIGITS]
    position = data.draw(st.sampled_from(positions))
    new = data.draw(st.sampled_from(DIGITS).filter(lambda c: c != iban[position]))
    with raises_on("iban"):
        validate_iban(iban[:position] + new + iban[position + 1 :])


@given(st.text(max_size=40))
def test_random_strings_are_not_ibans(value: str) -> None:
    try:
        compact = validate_iban(value)
    except IdentifierError as exc:
        assert exc.field == "iban"
    else:
        assert len(compact) == IBAN_LENGTHS[compact[:2]]


def test_postal_iban() -> None:
    assert validate_iban(POSTAL_IBAN) == POSTAL_IBAN
    assert is_postal_iban(POSTAL_IBAN)
    assert is_postal_iban("it67 x076 0103 2000 0100 1234 567")
    assert not is_postal_iban("IT60X0542811101000000123456")
    assert not is_postal_iban("IT67X0760103200001001234568")  # right ABI, wrong check digits
    assert not is_postal_iban("DE89370400440532013000")


# --- reporting flow id ---------------------------------------------------------------------------


def test_parse_id_flusso() -> None:
    assert parse_id_flusso("2024-07-26PPAYITR1XXX-S2024072601") == FlowIdParts(
        settlement_date=date(2024, 7, 26), psp_id="PPAYITR1XXX", progressive="S2024072601"
    )
    assert parse_id_flusso("2024-07-26ABI03069-a-b_c") == FlowIdParts(
        settlement_date=date(2024, 7, 26), psp_id="ABI03069", progressive="a-b_c"
    )


@pytest.mark.parametrize(
    "deviant",
    [
        "",
        "20240726PPAYITR1XXX-1",
        "2024-02-30PPAYITR1XXX-1",
        "2024-07-26PPAYITR1XXX",
        "2024-07-26-1",
        "2024-07-26PPAYITR1XXX-",
        "XX2024-07-26PPAYITR1XXX-1",
        "2024-07-26PPAY ITR1XXX-1",
    ],
)
def test_deviant_id_flusso_parses_to_none(deviant: str) -> None:
    assert parse_id_flusso(deviant) is None


@given(st.text(max_size=50))
def test_parse_id_flusso_never_raises(value: str) -> None:
    parts = parse_id_flusso(value)
    if parts is not None:
        assert f"{parts.settlement_date.isoformat()}{parts.psp_id}-{parts.progressive}" == value


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2024-07-26PPAYITR1XXX-S2024072601", True),
        ("a", True),
        ("A_b-9" * 7, True),
        ("A_b-9" * 7 + "x", False),
        ("", False),
        ("2024-07-26 PPAY", False),
        ("2024.07.26PPAY", False),
        ("abc\n", False),
    ],
)
def test_is_valid_id_flusso(value: str, valid: bool) -> None:
    assert is_valid_id_flusso(value) is valid


# --- remittance and QR code ----------------------------------------------------------------------


def test_voce_remittance() -> None:
    assert voce_remittance(iuv="01000000000000144", amount=Decimal("10")) == "/RFB/01000000000000144/10.00"
    assert (
        voce_remittance(iuv="01000000000000144", amount=Decimal("1234.5"), text="TARI 2024\n rata  1")
        == "/RFB/01000000000000144/1234.50/TXT/TARI 2024 rata 1"
    )
    assert (
        voce_remittance(iuv="01000000000000144", amount=Decimal("0.01"), text="  ")
        == "/RFB/01000000000000144/0.01"
    )


def test_voce_remittance_rf() -> None:
    assert voce_remittance(iuv="rf18 5390 0754 7034", amount=Decimal("5.00")) == "/RFS/RF18539007547034/5.00"


def test_voce_remittance_truncates_only_the_text() -> None:
    remittance = voce_remittance(iuv="01000000000000144", amount=Decimal("999999999.99"), text="x" * 300)
    assert len(remittance) == 140
    assert remittance.startswith("/RFB/01000000000000144/999999999.99/TXT/xxx")


@given(
    st.text(max_size=200), st.decimals(min_value=Decimal("0.01"), max_value=Decimal("999999999.99"), places=2)
)
def test_voce_remittance_never_exceeds_140(text: str, amount: Decimal) -> None:
    remittance = voce_remittance(iuv="01000000000000144", amount=amount, text=text)
    assert len(remittance) <= 140
    assert remittance.startswith(f"/RFB/01000000000000144/{amount:.2f}")
    assert not remittance.endswith(" ")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"iuv": "01000000000000144", "amount": Decimal("1.001")}, "amount"),
        ({"iuv": "01000000000000144", "amount": Decimal("0")}, "amount"),
        ({"iuv": "01000000000000144", "amount": Decimal("-1.00")}, "amount"),
        ({"iuv": "01000000000000144", "amount": Decimal("NaN")}, "amount"),
        ({"iuv": "01000000000000144", "amount": Decimal("1000000000.00")}, "amount"),
        ({"iuv": "01000000000000144", "amount": 1.5}, "amount"),
        ({"iuv": "RF19539007547034", "amount": Decimal("1.00")}, "iuv"),
        ({"iuv": "0100/0000", "amount": Decimal("1.00")}, "iuv"),
        ({"iuv": "", "amount": Decimal("1.00")}, "iuv"),
    ],
)
def test_voce_remittance_errors_name_the_field(kwargs: dict, field: str) -> None:
    with raises_on(field):
        voce_remittance(**kwargs)


def test_qr_payload() -> None:
    payload = qr_payload(nav="301000000000000144", fiscal_code="77777777777", amount=Decimal("123.45"))
    assert payload == "PAGOPA|002|301000000000000144|77777777777|12345"
    assert qr_payload(nav="001000000000000141", fiscal_code="02438750586", amount=Decimal("0.5")).endswith(
        "|50"
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nav": "301000000000000145", "fiscal_code": "77777777777", "amount": Decimal("1.00")}, "nav"),
        ({"nav": "3010000000000001", "fiscal_code": "77777777777", "amount": Decimal("1.00")}, "nav"),
        (
            {"nav": "301000000000000144", "fiscal_code": "7777777777", "amount": Decimal("1.00")},
            "fiscal_code",
        ),
        ({"nav": "301000000000000144", "fiscal_code": "77777777777", "amount": Decimal("1.234")}, "amount"),
    ],
)
def test_qr_payload_errors_name_the_field(kwargs: dict, field: str) -> None:
    with raises_on(field):
        qr_payload(**kwargs)
