"""CBI RH "Rendicontazione movimenti di conto corrente": fixed-width 120-character records, read line by line.

Record layout (CBI-RND-001; positions 1-based as in the standard, slices below are 0-based):
``61`` opens an account (CIN 52, ABI 53-57, CAB 58-62, account 63-74, currency 75-77, IBAN country 100-101
and check digits 102-103); ``62`` is a movement (value date 14-19, booking date 20-25 as DDMMYY, sign 26,
amount 27-41 with a decimal comma, CBI reason 42-43, bank reference 62-77, description 87-120); each ``63``
after it adds detail, its kind at 14-16: ``YYY`` ordering party (name 41-80), ``ID1`` transaction reference
(17-51) and end-to-end id (52-86), ``RI1``/``RI2`` remittance (17-120). Other ``63`` kinds (``ZZ1``…,
``KKK``) are bank containers; when no ``RI`` record exists they are the remittance, each behind its tag as
treasuries concatenate them (``/ZZ2…/ZZ3…``). ``RH``, ``64``, ``65`` and ``EF`` carry nothing per movement.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import IO

from connectors.treasury.formats._common import blank_to_none, join_segments, parse_amount, parse_date
from connectors.treasury.movement import Movement, TreasuryFormatError

RECORD_LENGTH = 120
REMITTANCE_WIDTH = 104
_IGNORED = frozenset({"RH", "64", "65", "EF"})


@dataclass
class _Pending:
    """A 62 record waiting for its 63 records."""

    line: int
    sequence: str
    account: str | None
    amount: Decimal
    value_date: date | None
    booking_date: date | None
    reason: str | None
    bank_reference: str | None
    description: str
    ordering_party: str | None = None
    transaction_reference: str | None = None
    end_to_end_id: str | None = None
    remittance: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)


def _records(stream: IO[bytes], *, source_name: str) -> Iterator[tuple[int, str]]:
    """(line number, 120-character record); files without line breaks are cut every 120 characters."""
    # CBI files are single-byte; latin-1 keeps every byte at its column whatever the bank's code page.
    decoder = codecs.getincrementaldecoder("latin-1")()
    number = 0
    for raw in stream:
        line = decoder.decode(raw).rstrip("\r\n")
        pieces = [line]
        if len(line) > RECORD_LENGTH and len(line) % RECORD_LENGTH == 0:
            pieces = [line[start : start + RECORD_LENGTH] for start in range(0, len(line), RECORD_LENGTH)]
        for piece in pieces:
            number += 1
            if not piece.strip():
                continue
            if len(piece.rstrip()) > RECORD_LENGTH:
                raise TreasuryFormatError(
                    f"record is {len(piece.rstrip())} characters long, not {RECORD_LENGTH}",
                    source_name=source_name,
                    record=number,
                    field="record length",
                )
            yield number, piece.ljust(RECORD_LENGTH)


def _account(record: str) -> str | None:
    country, check, bban = record[99:101], record[101:103], record[51:74]
    if country.strip() and check.strip() and bban.strip():
        return f"{country}{check}{bban}".replace(" ", "")
    return blank_to_none(bban.replace(" ", ""))


def _opening(record: str, *, line: int, account: str | None, source_name: str) -> _Pending:
    sign = record[25]
    if sign not in ("C", "D"):
        raise TreasuryFormatError(
            f"sign {sign!r} is neither C nor D", source_name=source_name, record=line, field="segno"
        )
    amount = parse_amount(
        record[26:41], source_name=source_name, record=line, field="importo", decimal_comma=True
    )
    return _Pending(
        line=line,
        sequence=record[3:13],
        account=account,
        amount=amount if sign == "C" else -amount,
        value_date=parse_date(
            record[13:19],
            fmt="%d%m%y",
            source_name=source_name,
            record=line,
            field="data valuta",
            required=True,
        ),
        booking_date=parse_date(
            record[19:25],
            fmt="%d%m%y",
            source_name=source_name,
            record=line,
            field="data contabile",
            required=True,
        ),
        reason=blank_to_none(record[41:43]),
        bank_reference=blank_to_none(record[61:77]),
        description=record[86:120].strip(),
    )


def _detail(pending: _Pending, record: str, *, line: int, source_name: str) -> None:
    if record[3:13] != pending.sequence:
        raise TreasuryFormatError(
            f"63 record numbered {record[3:13]!r} follows the 62 record numbered {pending.sequence!r}",
            source_name=source_name,
            record=line,
            field="progressivo movimento",
        )
    tag, content = record[13:16], record[16:120]
    if tag == "YYY":
        pending.ordering_party = blank_to_none(record[40:80])
    elif tag == "ID1":
        pending.transaction_reference = blank_to_none(record[16:51])
        pending.end_to_end_id = blank_to_none(record[51:86])
    elif tag in ("RI1", "RI2"):
        pending.remittance.append(content)
    elif tag != "YY2":
        pending.containers.append(f"/{tag}{content.rstrip()}" if tag.strip() else content.rstrip())


def _movement(pending: _Pending, ordinal: int) -> Movement:
    remittance = join_segments(pending.remittance, width=REMITTANCE_WIDTH)
    if not remittance:
        remittance = "".join(pending.containers).strip() or pending.description
    return Movement(
        account=pending.account,
        amount=pending.amount,
        value_date=pending.value_date,
        booking_date=pending.booking_date,
        remittance=remittance,
        ordering_party=pending.ordering_party,
        end_to_end_id=pending.end_to_end_id,
        bank_reference=pending.transaction_reference or pending.bank_reference,
        bank_movement_id=pending.bank_reference,
        reversal=False,
        kind=pending.reason,
        status=None,
        ordinal=ordinal,
    )


def read_cbi_rh(stream: IO[bytes], *, source_name: str = "") -> Iterator[Movement]:
    """Yield the movements of an RH file; ``bank_reference`` is the ID1 transaction reference (TRN), else
    the 62 bank reference, which is also ``bank_movement_id``."""
    account: str | None = None
    pending: _Pending | None = None
    ordinal = 0
    seen_header = False
    for line, record in _records(stream, source_name=source_name):
        kind = record[1:3]
        if not seen_header:
            if record[0] != " " or kind != "RH":
                raise TreasuryFormatError(
                    "a CBI RH file starts with an RH record", source_name=source_name, record=line, field="RH"
                )
            seen_header = True
            continue
        if kind != "63" and pending is not None:
            ordinal += 1
            yield _movement(pending, ordinal)
            pending = None
        if kind == "61":
            account = _account(record)
        elif kind == "62":
            pending = _opening(record, line=line, account=account, source_name=source_name)
        elif kind == "63":
            if pending is None:
                raise TreasuryFormatError(
                    "63 record without a 62 movement before it",
                    source_name=source_name,
                    record=line,
                    field="tipo record",
                )
            _detail(pending, record, line=line, source_name=source_name)
        elif kind not in _IGNORED:
            raise TreasuryFormatError(
                f"unknown record type {kind!r}", source_name=source_name, record=line, field="tipo record"
            )
    if pending is not None:
        ordinal += 1
        yield _movement(pending, ordinal)
    if not seen_header:
        raise TreasuryFormatError("empty CBI RH file", source_name=source_name, field="RH")
