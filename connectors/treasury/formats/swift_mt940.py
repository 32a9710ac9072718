"""SWIFT MT940 customer statements through the ``mt-940`` library, one statement block at a time.

``:61:`` gives amount, dates and references; ``:86:`` is the remittance. An Italian ``:86:`` is free text
hard-wrapped at a fixed width, so its lines are joined without a separator (the wrap may fall inside a flow
id); a German-style structured ``:86:`` (``166?00…?20…``) gives its purpose subfields instead (?20-?29,
?60-?63), with the applicant (?32-?33) as ordering party and ``EREF+`` as end-to-end id. Otherwise the
``:61:`` customer reference (16 characters at most, so possibly a cut end-to-end id) stands in for the
end-to-end id, unless it is ``NONREF``.
Every ``:61:`` line is checked before the library reads it, because the library drops a malformed one
silently and glues its ``:86:`` to the next movement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import IO, Any

import mt940

from connectors.treasury.formats._common import blank_to_none
from connectors.treasury.movement import Movement, TreasuryFormatError

_LINE_61 = re.compile(r":61:(?P<value>\d{6})(?P<entry>\d{4})?(?P<mark>R?[DCdc])[A-Z]?\n?(?P<amount>[\d,]*)")
_AMOUNT = re.compile(r"\d{1,12},\d{0,2}")
_STRUCTURED = re.compile(r"^\d{3}\?\d{2}")


# The library's structured-:86: processor is left out: it loses purpose text; the subfields are read here.
_PROCESSORS: dict[str, list[Any]] = {"post_transaction_details": []}
_SUBFIELD = re.compile(r"\?(\d{2})")
_SEPA_KEYWORD = re.compile(r"(?:EREF|KREF|MREF|CRED|DEBT|COAM|OAMT|SVWZ|ABWA|ABWE|IBAN|BIC)\+")


def _structured(details: str) -> tuple[str, str | None, str | None]:
    """(purpose, applicant name, EREF) of a structured :86: whose subfields are ?20-?29/?60-?63, ?32-?33."""
    pieces = _SUBFIELD.split(details)
    purpose: list[str] = []
    name: list[str] = []
    for code, text in zip(pieces[1::2], pieces[2::2], strict=False):
        number = int(code)
        if 20 <= number <= 29 or 60 <= number <= 63:
            purpose.append(text)
        elif number in (32, 33):
            name.append(text)
    joined = "".join(purpose).strip()
    end_to_end: str | None = None
    found = re.search(r"EREF\+", joined)
    if found:
        following = _SEPA_KEYWORD.search(joined, found.end())
        value = joined[found.end() : following.start() if following else len(joined)].strip()
        end_to_end = value if 0 < len(value) <= 35 and value.upper() != "NOTPROVIDED" else None
    return joined, blank_to_none("".join(name)), end_to_end


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        yield number, text.rstrip("\r\n")


def _statements(stream: IO[bytes]) -> Iterator[list[tuple[int, str]]]:
    """The lines of each statement, from its :20: to the next :20: or the '-' closing it."""
    block: list[tuple[int, str]] = []
    for number, line in _lines(stream):
        if line.startswith(":20:"):
            if block:
                yield block
            block = [(number, line)]
        elif block:
            if line.strip() in ("-", "-}"):
                yield block
                block = []
            else:
                block.append((number, line))
    if block:
        yield block


def _check_61(number: int, line: str, *, source_name: str) -> None:
    match = _LINE_61.match(line)
    if match is None:
        raise TreasuryFormatError(
            "statement line does not read as date, debit/credit mark and amount",
            source_name=source_name,
            record=number,
            field=":61:",
        )
    try:
        datetime.strptime(match.group("value"), "%y%m%d")
    except ValueError as exc:
        raise TreasuryFormatError(
            f"value date {match.group('value')!r} is not a YYMMDD date",
            source_name=source_name,
            record=number,
            field=":61: value date",
        ) from exc
    if not _AMOUNT.fullmatch(match.group("amount")):
        raise TreasuryFormatError(
            f"amount {match.group('amount')!r} is not digits with a decimal comma",
            source_name=source_name,
            record=number,
            field=":61: amount",
        )


def _plain_date(value: Any) -> date | None:
    return date(value.year, value.month, value.day) if value else None


def _movement(data: dict[str, Any], *, account: str | None, ordinal: int) -> Movement:
    raw = "".join(line.strip("\r") for line in str(data.get("transaction_details") or "").split("\n"))
    if _STRUCTURED.match(raw):
        remittance, ordering_party, end_to_end = _structured(raw)
    else:
        remittance, ordering_party, end_to_end = raw.strip(), None, None
    if end_to_end is None:
        customer = blank_to_none(data.get("customer_reference"))
        end_to_end = None if customer is None or customer.upper() == "NONREF" else customer
    amount = data["amount"]
    mark = str(data.get("status") or "").upper()
    return Movement(
        account=account,
        amount=amount.amount,
        currency=amount.currency or data.get("currency") or "EUR",
        value_date=_plain_date(data.get("date")),
        booking_date=_plain_date(data.get("entry_date")),
        remittance=remittance,
        ordering_party=ordering_party,
        end_to_end_id=end_to_end,
        bank_reference=blank_to_none(data.get("bank_reference")),
        bank_movement_id=None,
        reversal=mark.startswith("R"),
        kind=blank_to_none(data.get("id")),
        status=None,
        ordinal=ordinal,
    )


def read_mt940(stream: IO[bytes], *, source_name: str = "") -> Iterator[Movement]:
    """Yield the movements of every statement in an MT940 file; memory grows with one statement only."""
    ordinal = 0
    seen = False
    for block in _statements(stream):
        seen = True
        first_line = block[0][0]
        expected = 0
        for number, line in block:
            if line.startswith(":61:"):
                expected += 1
                _check_61(number, line, source_name=source_name)
        transactions = mt940.models.Transactions(processors=_PROCESSORS, options=mt940.Options.all())
        try:
            transactions.parse("\n".join(line for _, line in block))
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise TreasuryFormatError(
                f"statement cannot be read: {exc}",
                source_name=source_name,
                record=first_line,
                field="statement",
            ) from exc
        if len(transactions) != expected:
            raise TreasuryFormatError(
                f"{expected} :61: lines but {len(transactions)} movements read",
                source_name=source_name,
                record=first_line,
                field=":61:",
            )
        account = blank_to_none(transactions.data.get("account_identification"))
        for transaction in transactions:
            ordinal += 1
            yield _movement(transaction.data, account=account, ordinal=ordinal)
    if not seen:
        raise TreasuryFormatError("no :20: statement found", source_name=source_name, field=":20:")
