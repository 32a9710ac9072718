"""SIOPE+ OPI Giornale di Cassa (versions 1.4 to 1.8, no namespace, signed, paged), read in streaming.

Each ``movimento_conto_evidenza`` is one movement. ``tipo_movimento`` gives the direction (USCITA is a
debit); ``tipo_operazione`` STORNATO cancels the document, so the movement takes the opposite sign and is a
reversal; REGOLARIZZATO and RIPRISTINATO keep the direction and are reported in ``status``. pagoPA transfers
arrive as ``SOSPESO ENTRATA`` (provvisori); a REVERSALE executed by REGOLARIZZAZIONE only covers provvisori
already counted, which the caller tells apart by ``kind``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from typing import IO

from lxml import etree

from connectors.treasury.formats._common import ISO_DATE, blank_to_none, parse_amount, parse_date, xml_errors
from connectors.treasury.movement import Movement, TreasuryFormatError
from rules.xmlsafe import iterparse_xml

ROOT = "flusso_giornale_di_cassa"
_TAGS = (ROOT, "esercizio", "conto_evidenza", "movimento_conto_evidenza")
_DIRECTION = {"ENTRATA": 1, "USCITA": -1}
_OPERATIONS = frozenset({"ESEGUITO", "STORNATO", "REGOLARIZZATO", "RIPRISTINATO"})
_TIMEZONE = re.compile(r"(?:Z|[+-]\d{2}:\d{2})$")


def _number(text: str | None) -> str:
    """A document number without its zero padding, so 0064422 and 64422 name the same document."""
    raw = (text or "").strip()
    return (raw.lstrip("0") or "0") if raw else ""


def _xs_date(text: str | None, *, source_name: str, record: int, field: str, required: bool) -> date | None:
    raw = (text or "").strip()
    if len(raw) > 10:
        raw = _TIMEZONE.sub("", raw)
    return parse_date(
        raw, fmt=ISO_DATE, source_name=source_name, record=record, field=field, required=required
    )


def _movement(
    element: etree._Element, *, ordinal: int, year: str, account: str | None, source_name: str
) -> Movement:
    # One pass over the children, text only: this loop runs once per movement of files with 10^5 of them.
    fields: dict[str, str | None] = {}
    customer: str | None = None
    for child in element:
        tag = child.tag
        fields[tag] = child.text
        if tag == "cliente":
            for part in child:
                if part.tag == "anagrafica_cliente":
                    customer = part.text
    direction_name = (fields.get("tipo_movimento") or "").strip()
    if direction_name not in _DIRECTION:
        raise TreasuryFormatError(
            f"tipo_movimento {direction_name!r} is neither ENTRATA nor USCITA",
            source_name=source_name,
            record=ordinal,
            field="tipo_movimento",
        )
    operation = (fields.get("tipo_operazione") or "").strip() or None
    if operation is not None and operation not in _OPERATIONS:
        raise TreasuryFormatError(
            f"tipo_operazione {operation!r} is unknown",
            source_name=source_name,
            record=ordinal,
            field="tipo_operazione",
        )
    if "importo" not in fields:
        raise TreasuryFormatError(
            "importo is missing", source_name=source_name, record=ordinal, field="importo"
        )
    amount = parse_amount(fields["importo"], source_name=source_name, record=ordinal, field="importo")
    reversal = operation == "STORNATO"
    sign = _DIRECTION[direction_name] * (-1 if reversal else 1)
    document = (fields.get("tipo_documento") or "").strip() or None
    movement_id = "/".join(
        (
            year,
            account or "",
            document or "",
            _number(fields.get("numero_documento")),
            _number(fields.get("progressivo_documento")),
            operation or "",
            _number(fields.get("numero_bolletta_quietanza")),
        )
    )
    return Movement(
        account=account,
        amount=amount * sign,
        value_date=_xs_date(
            fields.get("data_valuta_ente"),
            source_name=source_name,
            record=ordinal,
            field="data_valuta_ente",
            required=False,
        ),
        booking_date=_xs_date(
            fields.get("data_movimento"),
            source_name=source_name,
            record=ordinal,
            field="data_movimento",
            required=True,
        ),
        remittance=(fields.get("causale") or "").strip(),
        ordering_party=blank_to_none(customer),
        end_to_end_id=blank_to_none(fields.get("end_to_end_id")),
        bank_reference=blank_to_none(fields.get("codice_riferimento_operazione")),
        bank_movement_id=movement_id,
        reversal=reversal,
        kind=document,
        status=operation,
        ordinal=ordinal,
    )


def read_opi(stream: IO[bytes], *, source_name: str = "") -> Iterator[Movement]:
    """Yield the movements of one Giornale di Cassa page, keeping memory flat whatever its size.

    ``bank_movement_id`` is esercizio/conto/tipo_documento/numero/progressivo/tipo_operazione/bolletta,
    numbers without zero padding: a storno or regularisation of a document is a movement of its own.
    """
    year = ""
    account: str | None = None
    ordinal = 0
    seen_root = False
    with xml_errors(source_name):
        for event, element in iterparse_xml(stream, tag=_TAGS, events=("start", "end")):
            tag = element.tag
            if event == "start":
                if tag == ROOT:
                    seen_root = True
                continue
            if tag == "movimento_conto_evidenza":
                ordinal += 1
                yield _movement(element, ordinal=ordinal, year=year, account=account, source_name=source_name)
                element.clear()
                parent = element.getparent()
                if parent is not None:
                    while element.getprevious() is not None:
                        del parent[0]
            elif tag == "esercizio":
                year = (element.text or "").strip()
            elif tag == "conto_evidenza":
                account = blank_to_none(element.text)
    if not seen_root:
        raise TreasuryFormatError(
            f"not an OPI Giornale di Cassa: no <{ROOT}> element", source_name=source_name, field=ROOT
        )
