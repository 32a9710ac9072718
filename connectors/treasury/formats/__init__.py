"""Treasury file formats: recognise a file from its first bytes and read its movements in streaming."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from connectors.treasury.formats.camt import read_camt
from connectors.treasury.formats.cbi_rh import read_cbi_rh
from connectors.treasury.formats.csv_export import read_csv
from connectors.treasury.formats.opi import read_opi
from connectors.treasury.formats.swift_mt940 import read_mt940
from connectors.treasury.movement import CsvMapping, Movement, TreasuryFormat, TreasuryFormatError

__all__ = ["HEAD_BYTES", "detect_format", "read_movements"]

HEAD_BYTES = 4096
"""How many leading bytes ``detect_format`` needs to decide."""

_CAMT = re.compile(rb"<(?:[\w.-]+:)?Document\b[^>]*urn:iso:std:iso:20022:tech:xsd:camt\.05([34])\.001\.\d{2}")
_MT940 = re.compile(rb"(?m)^(?::20:|\{1:F01)")
_CSV_NAME = re.compile(r"\.(csv|tsv)$", re.IGNORECASE)


def detect_format(*, head: bytes, name: str) -> TreasuryFormat:
    """Tell a treasury file's format from its first bytes (``HEAD_BYTES`` suffice) and its name."""
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if body.startswith(b"<"):
        if b"<flusso_giornale_di_cassa" in body:
            return TreasuryFormat.OPI
        camt = _CAMT.search(body)
        if camt:
            return TreasuryFormat.CAMT053 if camt.group(1) == b"3" else TreasuryFormat.CAMT054
        raise TreasuryFormatError(
            "XML that is neither an OPI Giornale di Cassa nor camt.053/054", source_name=name, field="root"
        )
    # Position 1 of a CBI record is a blank filler, so the header record starts " RH".
    if head.removeprefix(b"\xef\xbb\xbf").startswith(b" RH"):
        return TreasuryFormat.CBI_RH
    if _MT940.search(body):
        return TreasuryFormat.MT940
    if _CSV_NAME.search(name):
        return TreasuryFormat.CSV
    raise TreasuryFormatError(
        "unknown treasury file format (expected OPI, CBI RH, camt.053/054, MT940 or CSV)",
        source_name=name,
        record=1,
    )


def read_movements(
    stream: IO[bytes],
    *,
    fmt: TreasuryFormat,
    csv_mapping: CsvMapping | None = None,
    source_name: str = "",
) -> Iterator[Movement]:
    """Yield a treasury file's movements in file order, streaming; bad content raises TreasuryFormatError."""
    if fmt is TreasuryFormat.OPI:
        return read_opi(stream, source_name=source_name)
    if fmt in (TreasuryFormat.CAMT053, TreasuryFormat.CAMT054):
        return read_camt(stream, source_name=source_name)
    if fmt is TreasuryFormat.CBI_RH:
        return read_cbi_rh(stream, source_name=source_name)
    if fmt is TreasuryFormat.MT940:
        return read_mt940(stream, source_name=source_name)
    if fmt is TreasuryFormat.CSV:
        if csv_mapping is None:
            raise TreasuryFormatError(
                "a CSV file needs a column mapping", source_name=source_name, field="csv_mapping"
            )
        return read_csv(stream, mapping=csv_mapping, source_name=source_name)
    raise TreasuryFormatError(f"unsupported format {fmt!r}", source_name=source_name)
