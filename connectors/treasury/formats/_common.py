"""Helpers shared by the treasury format readers: amounts, dates, segmented text, XML error mapping."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from connectors.treasury.movement import TreasuryFormatError
from rules.xmlsafe import MalformedXMLError, UnsafeXMLError

ISO_DATE = "%Y-%m-%d"
# At most 12 significant integer digits (the NUMERIC(14,2) column; a larger number is no movement and would
# overflow Decimal and the database), zero padding allowed; ASCII digits only.
_AMOUNT = re.compile(r"[+-]?0*[0-9]{1,12}(?:\.[0-9]{1,2})?")


def parse_amount(
    text: str | None, *, source_name: str, record: int | None, field: str, decimal_comma: bool = False
) -> Decimal:
    """An unsigned or signed amount with at most two decimals; anything else is a format error."""
    raw = (text or "").strip()
    if decimal_comma:
        raw = raw.replace(".", "").replace(",", ".")
    if not _AMOUNT.fullmatch(raw):
        shown = text if text is None or len(text) <= 40 else text[:40] + "…"
        raise TreasuryFormatError(
            f"amount {shown!r} is not a number of at most 12 digits and two decimals",
            source_name=source_name,
            record=record,
            field=field,
        )
    try:
        return Decimal(raw)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already guarantees a number
        raise TreasuryFormatError(
            f"amount {text!r} is not a number", source_name=source_name, record=record, field=field
        ) from exc


def parse_date(
    text: str | None, *, fmt: str, source_name: str, record: int | None, field: str, required: bool
) -> date | None:
    """A date in ``fmt`` (strptime); blank is None unless required."""
    raw = (text or "").strip()
    if not raw:
        if required:
            raise TreasuryFormatError("date is missing", source_name=source_name, record=record, field=field)
        return None
    try:
        if fmt == ISO_DATE and len(raw) == 10 and raw[4] == "-" and raw[7] == "-":
            return date.fromisoformat(raw)  # C fast path: XML formats carry millions of these
        return datetime.strptime(raw, fmt).date()
    except ValueError as exc:
        raise TreasuryFormatError(
            f"date {raw!r} does not match {fmt}", source_name=source_name, record=record, field=field
        ) from exc


def join_segments(segments: Iterable[str], *, width: int) -> str:
    """Join the pieces of a field split at a fixed width, as a person reads them.

    A piece that fills the width was cut mid-text, so the next one continues it directly; a shorter piece
    ended where its text ended, so a space separates it from the next.
    """
    text = ""
    glue = ""
    for segment in segments:
        if not segment.strip():
            continue
        full = len(segment) >= width
        text += glue + (segment if full else segment.rstrip())
        glue = "" if full else " "
    return text.strip()


def blank_to_none(text: str | None) -> str | None:
    """Stripped text, or None when nothing is left."""
    if text is None:
        return None
    stripped = text.strip()
    return stripped or None


@contextmanager
def xml_errors(source_name: str) -> Iterator[None]:
    """Turn the hardened parser's refusals into format errors that name the file and line."""
    try:
        yield
    except UnsafeXMLError as exc:
        raise TreasuryFormatError(f"refused: {exc}", source_name=source_name, field="DOCTYPE") from exc
    except MalformedXMLError as exc:
        raise TreasuryFormatError(str(exc), source_name=source_name, record=exc.line) from exc
