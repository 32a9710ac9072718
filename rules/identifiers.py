"""pagoPA identifier rules (DOMAIN.md §3): IUV/NAV, RF, EC fiscal code, IBAN, flow id, remittance, QR."""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

# The regexes use [0-9], never \d: \d and int() also accept non-ASCII digits, which pagoPA does not.
_DIGITS = re.compile(r"[0-9]+")
_TWO_DIGITS = re.compile(r"[0-9]{2}")
_NAV = re.compile(r"[0-9]{18}")
_EC_FISCAL_CODE = re.compile(r"[0-9]{11}")
_RF = re.compile(r"RF[0-9]{2}[0-9A-Z]{1,21}")
_RF_REFERENCE = re.compile(r"[0-9A-Za-z]{1,21}")
_IUV = re.compile(r"[0-9A-Za-z]{1,35}")
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[0-9A-Z]{1,30}")
_IBAN_IT = re.compile(r"IT[0-9]{2}[A-Z][0-9]{10}[0-9A-Z]{12}")
_ID_FLUSSO = re.compile(r"[a-zA-Z0-9\-_]{1,35}")
_ID_FLUSSO_PARTS = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})(?P<psp>[A-Za-z0-9_]+)-(?P<progressive>[A-Za-z0-9_\-]+)"
)

BASE_LENGTH = 13
NAV_LENGTH = 18
REMITTANCE_MAX_LENGTH = 140
POSTE_ABI = "07601"
MAX_AMOUNT = Decimal("999999999.99")
_CENT = Decimal("0.01")

# ISO 13616 lengths for the SEPA scheme countries (EPC list, including the 2024 additions AL, MD, ME, MK).
# French overseas departments, Jersey, Guernsey and the Isle of Man bank with FR and GB IBANs.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AL": 28, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21,
    "HU": 28, "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "VA": 22,
}  # fmt: skip


class IdentifierError(ValueError):
    """An identifier or one of its inputs breaks a pagoPA rule; `field` names the offending input."""

    def __init__(self, message: str, *, field: str, value: object) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Notice:
    """A freshly generated notice: its aux digit, IUV and 18-digit notice number (NAV)."""

    aux_digit: int
    iuv: str
    nav: str


@dataclass(frozen=True)
class ParsedNav:
    """A NAV taken apart; aux 1 has no check digits, so `check_digits` is None and `check_digits_ok` True."""

    aux_digit: int
    iuv: str
    application_code: str | None
    segregation_code: str | None
    check_digits: str | None
    check_digits_ok: bool


@dataclass(frozen=True)
class FlowIdParts:
    """The parts of a conventional reporting flow id (idFlusso)."""

    settlement_date: date
    psp_id: str
    progressive: str


# --- check digits, IUV and NAV ------------------------------------------------------------------


def check_digits(digits: str) -> str:
    """Return the two mod-93 check digits of a string of ASCII digits."""
    if not isinstance(digits, str) or not _DIGITS.fullmatch(digits):
        raise IdentifierError("must be a non-empty string of digits", field="digits", value=digits)
    return str(int(digits) % 93).zfill(2)


def _require_int(value: object, *, field: str) -> int:
    # bool is an int subclass; True as a progressive is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int):
        raise IdentifierError("must be an integer", field=field, value=value)
    return value


def _require_code(value: str | None, *, field: str, aux_digit: int) -> str:
    if value is None:
        raise IdentifierError(f"is required for aux digit {aux_digit}", field=field, value=value)
    if not isinstance(value, str) or not _TWO_DIGITS.fullmatch(value):
        raise IdentifierError("must be exactly two digits", field=field, value=value)
    return value


def _require_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or (prefix and not _DIGITS.fullmatch(prefix)):
        raise IdentifierError("must be digits only", field="prefix", value=prefix)
    if len(prefix) >= BASE_LENGTH:
        raise IdentifierError(
            f"must be shorter than {BASE_LENGTH} digits to leave room for the progressive",
            field="prefix",
            value=prefix,
        )
    return prefix


def max_progressive(*, prefix: str = "") -> int:
    """Return the largest progressive that fits in the 13-digit base after `prefix`."""
    return 10 ** (BASE_LENGTH - len(_require_prefix(prefix))) - 1


def build_notice(
    *,
    aux_digit: int,
    progressive: int,
    segregation_code: str | None = None,
    application_code: str | None = None,
    prefix: str = "",
) -> Notice:
    """Build the IUV and NAV for aux digit 0 (application code) or 3 (segregation code)."""
    aux_digit = _require_int(aux_digit, field="aux_digit")
    if aux_digit == 0:
        code = _require_code(application_code, field="application_code", aux_digit=0)
        if segregation_code is not None:
            raise IdentifierError(
                "applies only to aux digit 3", field="segregation_code", value=segregation_code
            )
    elif aux_digit == 3:
        code = _require_code(segregation_code, field="segregation_code", aux_digit=3)
        if application_code is not None:
            raise IdentifierError(
                "applies only to aux digit 0", field="application_code", value=application_code
            )
    else:
        # Aux 1 and 2 are legacy: we read them (parse_nav) but never issue new ones.
        raise IdentifierError("new notices use aux digit 0 or 3", field="aux_digit", value=aux_digit)
    progressive = _require_int(progressive, field="progressive")
    highest = max_progressive(prefix=prefix)
    if not 0 <= progressive <= highest:
        raise IdentifierError(
            f"must be between 0 and {highest} with prefix {prefix!r}", field="progressive", value=progressive
        )
    base = prefix + str(progressive).zfill(BASE_LENGTH - len(prefix))
    head = f"{aux_digit}{code}{base}"
    cd = check_digits(head)
    nav = head + cd
    iuv = base + cd if aux_digit == 0 else code + base + cd
    return Notice(aux_digit=aux_digit, iuv=iuv, nav=nav)


def _require_nav(nav: str) -> str:
    if not isinstance(nav, str) or not _NAV.fullmatch(nav):
        raise IdentifierError(f"must be exactly {NAV_LENGTH} digits", field="nav", value=nav)
    if nav[0] not in "0123":
        raise IdentifierError(f"unknown aux digit {nav[0]}", field="nav", value=nav)
    return nav


def parse_nav(nav: str) -> ParsedNav:
    """Split an 18-digit NAV (aux 0–3) into its IUV and codes and check its check digits."""
    nav = _require_nav(nav)
    aux_digit = int(nav[0])
    if aux_digit == 1:
        return ParsedNav(
            aux_digit=1,
            iuv=nav[1:],
            application_code=None,
            segregation_code=None,
            check_digits=None,
            check_digits_ok=True,
        )
    # Aux 0, 2 and 3 all put the check digits last, computed over the 16 digits before them.
    cd = nav[16:]
    return ParsedNav(
        aux_digit=aux_digit,
        iuv=nav[3:] if aux_digit == 0 else nav[1:],
        application_code=nav[1:3] if aux_digit == 0 else None,
        segregation_code=nav[1:3] if aux_digit == 3 else None,
        check_digits=cd,
        check_digits_ok=check_digits(nav[:16]) == cd,
    )


def nav_to_iuv(nav: str) -> str:
    """Return the IUV inside a NAV (aux 0 drops three leading digits, aux 1–3 drop one)."""
    nav = _require_nav(nav)
    return nav[3:] if nav[0] == "0" else nav[1:]


def iuv_to_nav(*, iuv: str, aux_digit: int, application_code: str | None = None) -> str:
    """Return the NAV of an IUV; GPD and ACA positions use aux 3, i.e. `"3" + iuv`."""
    aux_digit = _require_int(aux_digit, field="aux_digit")
    if aux_digit not in (0, 1, 2, 3):
        raise IdentifierError("must be 0, 1, 2 or 3", field="aux_digit", value=aux_digit)
    if aux_digit == 0:
        code = _require_code(application_code, field="application_code", aux_digit=0)
        length = 15
    else:
        if application_code is not None:
            raise IdentifierError(
                "applies only to aux digit 0", field="application_code", value=application_code
            )
        code = ""
        length = 17
    if not isinstance(iuv, str) or not _DIGITS.fullmatch(iuv) or len(iuv) != length:
        raise IdentifierError(f"must be {length} digits for aux digit {aux_digit}", field="iuv", value=iuv)
    return f"{aux_digit}{code}{iuv}"


def verify_nav(nav: str) -> bool:
    """Tell whether a NAV is well formed and its check digits (if its aux digit has any) are right."""
    try:
        return parse_nav(nav).check_digits_ok
    except IdentifierError:
        return False


def format_nav(nav: str) -> str:
    """Group a NAV in fours for printing, e.g. `3010 0000 0000 0001 44`."""
    if not isinstance(nav, str) or not _NAV.fullmatch(nav):
        raise IdentifierError(f"must be exactly {NAV_LENGTH} digits", field="nav", value=nav)
    return " ".join(nav[i : i + 4] for i in range(0, NAV_LENGTH, 4))


# --- ISO 11649 RF creditor reference ------------------------------------------------------------


def _compact(value: str) -> str | None:
    # Print forms group characters with spaces; pasted values bring tabs and non-breaking spaces too.
    # Non-ASCII is refused before upper-casing, which would fold some of it into ASCII ("ı" → "I").
    compact = "".join(value.split())
    return compact.upper() if compact.isascii() else None


def _alnum_to_digits(value: str) -> str:
    # ISO 7064 letter values: A=10 … Z=35; int(c, 36) gives exactly that for 0-9A-Z.
    return "".join(str(int(c, 36)) for c in value)


def _rf_check(reference: str) -> str:
    return str(98 - int(_alnum_to_digits(reference + "RF00")) % 97).zfill(2)


def make_rf(reference: str) -> str:
    """Return the RF creditor reference (ISO 11649) for 1–21 alphanumerics, upper-cased."""
    if not isinstance(reference, str) or not _RF_REFERENCE.fullmatch(reference):
        raise IdentifierError("must be 1 to 21 letters or digits", field="reference", value=reference)
    reference = reference.upper()
    return f"RF{_rf_check(reference)}{reference}"


def _rf_compact(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    compact = _compact(value)
    return compact if compact is not None and _RF.fullmatch(compact) else None


def is_rf(value: str) -> bool:
    """Tell whether a value has the shape of an RF reference (check digits not verified)."""
    return _rf_compact(value) is not None


def is_valid_rf(value: str) -> bool:
    """Tell whether a value is an RF reference with correct check digits (case and spaces ignored)."""
    compact = _rf_compact(value)
    # Recomputing (rather than testing mod 97 == 1) also refuses the aliases 00, 01 and 99.
    return compact is not None and _rf_check(compact[4:]) == compact[2:4]


# --- EC fiscal code and IBAN --------------------------------------------------------------------


def _partita_iva_check(code: str) -> int:
    total = 0
    for index, char in enumerate(code[:10]):
        digit = int(char)
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def validate_ec_fiscal_code(code: str) -> list[str]:
    """Require 11 digits; return warnings (e.g. a failing checksum), which never reject the code."""
    if not isinstance(code, str) or not _EC_FISCAL_CODE.fullmatch(code):
        raise IdentifierError("must be exactly 11 digits", field="fiscal_code", value=code)
    warnings: list[str] = []
    if code == "0" * 11:
        warnings.append("fiscal code is all zeros")
    expected = _partita_iva_check(code)
    if int(code[10]) != expected:
        # pagoPA's own test EC 77777777777 fails this, so it stays a warning.
        warnings.append(f"check digit is {code[10]}, expected {expected}")
    return warnings


def validate_iban(iban: str) -> str:
    """Return the IBAN in electronic form (upper case, no spaces) or raise IdentifierError."""
    if not isinstance(iban, str):
        raise IdentifierError("must be a string", field="iban", value=iban)
    return _checked_iban(iban)


@lru_cache(maxsize=4096)
def _checked_iban(iban: str) -> str:
    # A bulk file repeats a handful of accounts on every row: the mod-97 check runs once per account.
    compact = _compact(iban)
    if compact is None or not _IBAN_SHAPE.fullmatch(compact):
        raise IdentifierError(
            "must be a country code, two check digits and letters or digits", field="iban", value=iban
        )
    country = compact[:2]
    length = IBAN_LENGTHS.get(country)
    if length is None:
        raise IdentifierError(f"country {country} is not in the SEPA scheme", field="iban", value=iban)
    if len(compact) != length:
        raise IdentifierError(f"must be {length} characters for {country}", field="iban", value=iban)
    if country == "IT" and not _IBAN_IT.fullmatch(compact):
        raise IdentifierError(
            "Italian IBAN must be IT, 2 digits, CIN letter, ABI, CAB, account", field="iban", value=iban
        )
    if int(_alnum_to_digits(compact[4:] + compact[:4])) % 97 != 1:
        raise IdentifierError("check digits do not verify", field="iban", value=iban)
    return compact


def is_postal_iban(iban: str) -> bool:
    """Tell whether a valid Italian IBAN belongs to Poste Italiane (ABI 07601)."""
    try:
        compact = validate_iban(iban)
    except IdentifierError:
        return False
    return compact.startswith("IT") and compact[5:10] == POSTE_ABI


# --- reporting flow id --------------------------------------------------------------------------


def parse_id_flusso(value: str) -> FlowIdParts | None:
    """Split `<YYYY-MM-DD><PSP id>-<progressive>`; None for ids of another shape (never raises)."""
    if not isinstance(value, str):
        return None
    match = _ID_FLUSSO_PARTS.fullmatch(value)
    if match is None:
        return None
    try:
        settlement_date = date.fromisoformat(match["date"])
    except ValueError:
        return None
    return FlowIdParts(settlement_date=settlement_date, psp_id=match["psp"], progressive=match["progressive"])


def is_valid_id_flusso(value: str) -> bool:
    """Tell whether a reporting flow id matches pagoPA's pattern `[a-zA-Z0-9\\-_]{1,35}`."""
    return isinstance(value, str) and _ID_FLUSSO.fullmatch(value) is not None


# --- remittance and QR code ---------------------------------------------------------------------


def _amount_cents(amount: Decimal) -> int:
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise IdentifierError("must be a finite Decimal", field="amount", value=amount)
    if amount != amount.quantize(_CENT):
        raise IdentifierError("must have at most two decimal places", field="amount", value=amount)
    if not _CENT <= amount <= MAX_AMOUNT:
        raise IdentifierError(f"must be between 0.01 and {MAX_AMOUNT}", field="amount", value=amount)
    return int(amount * 100)


def voce_remittance(*, iuv: str, amount: Decimal, text: str | None = None) -> str:
    """Return `/RFB/<IUV>/<0.00>[/TXT/<text>]` (`/RFS/` for RF IUVs), cutting the text to fit 140 chars."""
    cents = _amount_cents(amount)
    rf = _rf_compact(iuv)
    if rf is not None:
        if not is_valid_rf(rf):
            raise IdentifierError("RF reference with wrong check digits", field="iuv", value=iuv)
        tag, reference = "RFS", rf
    elif isinstance(iuv, str) and _IUV.fullmatch(iuv):
        tag, reference = "RFB", iuv
    else:
        raise IdentifierError("must be 1 to 35 letters or digits", field="iuv", value=iuv)
    remittance = f"/{tag}/{reference}/{cents // 100}.{cents % 100:02d}"
    # Line breaks and runs of blanks would survive into bank statements; one space is enough.
    words = " ".join(text.split()) if text else ""
    room = REMITTANCE_MAX_LENGTH - len(remittance) - len("/TXT/")
    words = words[:room].rstrip()
    return f"{remittance}/TXT/{words}" if words else remittance


def qr_payload(*, nav: str, fiscal_code: str, amount: Decimal) -> str:
    """Return the notice QR code payload `PAGOPA|002|<NAV>|<EC fiscal code>|<amount in cents>`."""
    if not parse_nav(nav).check_digits_ok:
        raise IdentifierError("check digits do not verify", field="nav", value=nav)
    validate_ec_fiscal_code(fiscal_code)
    return f"PAGOPA|002|{nav}|{fiscal_code}|{_amount_cents(amount)}"
