"""Treasury CSV exports, read row by row through a ``CsvMapping`` that names the column of each field."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from decimal import Decimal
from typing import IO

from connectors.treasury.formats._common import blank_to_none, parse_amount, parse_date
from connectors.treasury.movement import CsvMapping, Movement, TreasuryFormatError


def _amount(row: dict[str, str], mapping: CsvMapping, *, line: int, source_name: str) -> Decimal:
    """The signed amount from one column (with an optional sign column) or from credit/debit columns."""

    def number(column: str) -> Decimal:
        return parse_amount(
            row[column],
            source_name=source_name,
            record=line,
            field=column,
            decimal_comma=mapping.decimal_comma,
        )

    if mapping.amount is not None:
        value = number(mapping.amount)
        if mapping.sign is None:
            return value
        mark = row[mapping.sign].strip().upper()
        if mark in {sign.upper() for sign in mapping.credit_signs}:
            return abs(value)
        if mark in {sign.upper() for sign in mapping.debit_signs}:
            return -abs(value)
        raise TreasuryFormatError(
            f"sign {mark!r} is neither a credit nor a debit mark",
            source_name=source_name,
            record=line,
            field=mapping.sign,
        )
    assert mapping.credit is not None and mapping.debit is not None  # the mapping validates the pair
    credit = row[mapping.credit].strip()
    debit = row[mapping.debit].strip()
    if bool(credit) == bool(debit):
        raise TreasuryFormatError(
            "exactly one of the credit and debit columns must hold an amount",
            source_name=source_name,
            record=line,
            field=f"{mapping.credit}/{mapping.debit}",
        )
    return abs(number(mapping.credit)) if credit else -abs(number(mapping.debit))


def _cell(row: dict[str, str], column: str | None) -> str | None:
    return blank_to_none(row[column]) if column is not None else None


def _decoded_lines(stream: IO[bytes], *, encoding: str, source_name: str) -> Iterator[str]:
    """The file's lines as text, decoded one physical line at a time so an error names its line."""
    decoder = codecs.getincrementaldecoder(encoding)()
    for number, raw in enumerate(stream, start=1):
        try:
            yield decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise TreasuryFormatError(
                f"not {encoding}: {exc.reason}", source_name=source_name, record=number, field="encoding"
            ) from exc


def read_csv(stream: IO[bytes], *, mapping: CsvMapping, source_name: str = "") -> Iterator[Movement]:
    """Yield one movement per data row; errors name the physical line and the column."""
    lines = _decoded_lines(stream, encoding=mapping.encoding, source_name=source_name)
    for _ in range(mapping.skip_lines):
        next(lines, None)
    reader = csv.DictReader(lines, delimiter=mapping.delimiter, quotechar=mapping.quotechar)
    headers = reader.fieldnames or []
    header_line = mapping.skip_lines + 1
    stripped = {header.strip(): header for header in headers if header is not None}
    columns = mapping.columns()
    for column in columns.values():
        if column not in stripped:
            raise TreasuryFormatError(
                f"column {column!r} is not in the header",
                source_name=source_name,
                record=header_line,
                field=column,
            )
    ordinal = 0
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = mapping.skip_lines + reader.line_num
            raise TreasuryFormatError(str(exc), source_name=source_name, record=line) from exc
        line = mapping.skip_lines + reader.line_num
        if not any((value or "").strip() for key, value in raw.items() if key is not None):
            continue
        row = {name: (raw.get(original) or "") for name, original in stripped.items()}
        ordinal += 1
        remittance = " ".join(part for column in mapping.remittance if (part := row[column].strip()))
        reversal_cell = _cell(row, mapping.reversal)
        yield Movement(
            account=_cell(row, mapping.account),
            amount=_amount(row, mapping, line=line, source_name=source_name),
            currency=_cell(row, mapping.currency) or "EUR",
            value_date=parse_date(
                row[mapping.value_date] if mapping.value_date else None,
                fmt=mapping.date_format,
                source_name=source_name,
                record=line,
                field=mapping.value_date or "value_date",
                required=False,
            ),
            booking_date=parse_date(
                row[mapping.booking_date] if mapping.booking_date else None,
                fmt=mapping.date_format,
                source_name=source_name,
                record=line,
                field=mapping.booking_date or "booking_date",
                required=False,
            ),
            remittance=remittance,
            ordering_party=_cell(row, mapping.ordering_party),
            end_to_end_id=_cell(row, mapping.end_to_end_id),
            bank_reference=_cell(row, mapping.bank_reference),
            bank_movement_id=_cell(row, mapping.bank_movement_id),
            reversal=reversal_cell is not None
            and reversal_cell.upper() in {v.upper() for v in mapping.reversal_values},
            kind=_cell(row, mapping.kind),
            status=_cell(row, mapping.status),
            ordinal=ordinal,
        )
