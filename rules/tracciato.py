"""Bulk files of positions (tracciati): the GovPay CSV and JSON layouts, read row by row into typed inputs.

Both layouts are read from an open text stream (UTF-8, a BOM is dropped) and yield ``(row_number, RowInput)``
one row at a time, so a file of any size is read in constant memory. A bad row never stops the file: it
comes out as a :class:`RowError` naming the row and the field. Only a file that cannot be a tracciato at
all (empty, a CSV header without ``idPendenza`` or ``importo``, a JSON that is not an object) raises
:class:`TracciatoError`.

**CSV.** The first line is the header; the delimiter is ``;`` or ``,``, whichever the header uses more. Column
names are matched without regard to case and may come in any order; unknown columns are ignored. The position
columns are :data:`POSITION_COLUMNS` (GovPay's default layout). Voce *n* (1..5) uses the names of
:data:`VOCE_FIELDS` followed by *n*: ``idVoce1, importoVoce1, descrizioneVoce1, idDominioVoce1,
ibanAccredito1, ibanAppoggio1, tipoEntrata1, tipoBollo1, tipoContabilita1, codiceContabilita1, hashBollo1,
provinciaBollo1``; ``idDominioVoceN`` (beneficiary EC of a multi-beneficiary voce) is our addition to
GovPay's list. A voce whose columns are all empty is absent. Rows are numbered 1, 2, … after the header; a
row with more fields than the header is rejected, a shorter one is padded with empty fields. Amounts take
``.`` or ``,`` as decimal separator (``1234.5``, ``1234,50``, ``1.234,50``, ``1,234.50``), ASCII digits, at
most two written decimals (``1.000`` is refused: a thousand to an Italian, one to a machine) and 15 integer
digits; dates are ``YYYY-MM-DD`` or ``DD/MM/YYYY``; ``datiAllegati`` is JSON text.

**JSON.** ``{"inserimenti": [PendenzaPut + idA2A + idPendenza, …], "annullamenti": [{idA2A, idPendenza,
motivoAnnullamento}, …]}``; both lists are optional, other keys are ignored. Elements are numbered 1, 2, … in
document order across both lists. Malformed JSON cannot be resynchronised: it yields one error row and ends.

**Rules common to both.** ``idA2A``, ``idDominio`` and ``tipoPendenza``/``idTipoPendenza`` fall back to the
defaults given for the file. A row with ``importo`` 0 annuls the position (the reason is ``causale`` or, in
JSON, ``motivoAnnullamento``). A blank line (or a CSV line of empty fields) is rejected as ``riga vuota``.
:func:`flag_duplicates` rejects a row repeating the ``idA2A`` + ``idPendenza`` of an earlier readable row of
the same file with ``VER_015``, whatever became of the earlier row: the outcome of a file never depends on
how it was cut into batches or resumed.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TextIO

from pydantic import ValidationError

from rules.positions import PendenzaPut

POSITION_COLUMNS: tuple[str, ...] = (
    "idA2A",
    "idPendenza",
    "idDominio",
    "numeroAvviso",
    "tipoPendenza",
    "idUnitaOperativa",
    "causale",
    "annoRiferimento",
    "cartellaPagamento",
    "datiAllegati",
    "direzione",
    "divisione",
    "importo",
    "dataValidita",
    "dataScadenza",
    "tassonomiaAvviso",
    "tipoSoggettoPagatore",
    "identificativoPagatore",
    "anagraficaPagatore",
    "indirizzo",
    "civico",
    "cap",
    "localita",
    "provincia",
    "nazione",
    "email",
    "cellulare",
)
VOCE_FIELDS: tuple[str, ...] = (
    "idVoce",
    "importoVoce",
    "descrizioneVoce",
    "idDominioVoce",
    "ibanAccredito",
    "ibanAppoggio",
    "tipoEntrata",
    "tipoBollo",
    "tipoContabilita",
    "codiceContabilita",
    "hashBollo",
    "provinciaBollo",
)
MAX_VOCI = 5
VOCE_COLUMNS: tuple[str, ...] = tuple(f"{name}{n}" for n in range(1, MAX_VOCI + 1) for name in VOCE_FIELDS)
CSV_COLUMNS: tuple[str, ...] = POSITION_COLUMNS + VOCE_COLUMNS
REQUIRED_COLUMNS: tuple[str, ...] = ("idPendenza", "importo")

SYNTAX = "SINTASSI"
DUPLICATE = "VER_015"

_ID = re.compile(r"^[A-Za-z0-9\-_]{1,35}$")
# ASCII digits only: Decimal would read other scripts' digits too ("١٢" is 12)
_PLAIN = re.compile(r"^\d+(?:[.,]\d+)?$", re.ASCII)
_IT_GROUPED = re.compile(r"^\d{1,3}(?:\.\d{3})+(?:,\d+)?$", re.ASCII)
_EN_GROUPED = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$", re.ASCII)
_DECIMALS = re.compile(r"[.,](\d+)$", re.ASCII)
_MAX_INTEGER_DIGITS = 15  # far above any real amount (the API allows 11 digits), far below Decimal's 28
_DMY = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$", re.ASCII)
_CENT = Decimal("0.01")
_MAX_REASON = 255


class TracciatoError(ValueError):
    """The file cannot be read as a tracciato at all (not one bad row: those become RowError)."""


@dataclass(frozen=True)
class RowDefaults:
    """Values for the rows that leave them out: the application, the EC and the debt type of the file."""

    id_a2a: str | None = None
    id_dominio: str | None = None
    debt_type: str | None = None


@dataclass(frozen=True)
class InsertRow:
    """A row creating or updating a position."""

    id_a2a: str
    id_pendenza: str
    body: PendenzaPut


@dataclass(frozen=True)
class AnnulRow:
    """A row annulling a position (JSON annullamenti, or importo 0)."""

    id_a2a: str
    id_pendenza: str
    reason: str | None = None
    id_dominio: str | None = None


@dataclass(frozen=True)
class RowError:
    """A row rejected before any business rule: syntax, blank line or duplicate, with what is known of it."""

    code: str
    message: str
    field: str | None = None
    id_a2a: str | None = None
    id_pendenza: str | None = None
    id_dominio: str | None = None

    def describe(self) -> str:
        """The outcome description: code, message and field."""
        return describe(self.code, self.message, self.field)


RowInput = InsertRow | AnnulRow | RowError


def describe(code: str, message: str, field: str | None = None) -> str:
    """``CODE: message (field)``, the shape of every rejection in the outcome file."""
    return f"{code}: {message}" + (f" ({field})" if field else "")


# --- amounts and dates ---------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    """A value quoted for a rejection, cut short: a hostile file may put a whole megabyte in one field."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_amount(text: str) -> Decimal:
    """A non-negative euro amount with ``.`` or ``,`` decimals (thousands groups allowed), two places."""
    value = text.strip().replace(" ", "")
    if "," in value and "." in value:
        italian = value.rfind(",") > value.rfind(".")
        if not (_IT_GROUPED if italian else _EN_GROUPED).match(value):
            raise ValueError(f"importo non valido: {_quoted(text)}")
        value = value.replace(".", "").replace(",", ".") if italian else value.replace(",", "")
    elif _PLAIN.match(value):
        value = value.replace(",", ".")
    else:
        raise ValueError(f"importo non valido: {_quoted(text)}")
    decimals = _DECIMALS.search(value)
    # "1.000" is 1000 to an Italian and 1.00 to a machine: more than two written decimals are refused
    if decimals and len(decimals.group(1)) > 2:
        raise ValueError(f"importo con piu' di due decimali: {_quoted(text)}")
    if len(value.partition(".")[0].lstrip("0")) > _MAX_INTEGER_DIGITS:
        raise ValueError(f"importo troppo grande: {_quoted(text)}")
    try:
        return Decimal(value).quantize(_CENT)
    except InvalidOperation as exc:  # pragma: no cover - the patterns and the bound admit only small numbers
        raise ValueError(f"importo non valido: {_quoted(text)}") from exc


def _date(text: str) -> str:
    match = _DMY.match(text)
    if not match:
        return text
    day, month, year = (int(g) for g in match.groups())
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return text  # pydantic names the field and the problem


# --- rows to inputs ------------------------------------------------------------------------------------


def _identity(
    raw_a2a: Any, raw_id: Any, defaults: RowDefaults, *, names: tuple[str, str]
) -> tuple[str, str] | RowError:
    id_a2a = _text(raw_a2a) or defaults.id_a2a
    id_pendenza = _text(raw_id)
    for name, value in zip(names, (id_a2a, id_pendenza), strict=True):
        if not value:
            return RowError(SYNTAX, "campo obbligatorio", name, id_a2a=id_a2a, id_pendenza=id_pendenza)
        if not _ID.match(value):
            return RowError(
                SYNTAX,
                "al massimo 35 caratteri tra lettere, cifre, '-' e '_'",
                name,
                id_a2a=id_a2a,
                id_pendenza=id_pendenza,
            )
    assert id_a2a is not None and id_pendenza is not None
    return id_a2a, id_pendenza


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _build(document: dict[str, Any], *, id_a2a: str, id_pendenza: str, field_name: Any) -> RowInput:
    try:
        body = PendenzaPut.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        return RowError(
            SYNTAX,
            message,
            field_name(tuple(first["loc"])),
            id_a2a=id_a2a,
            id_pendenza=id_pendenza,
            id_dominio=_text(document.get("idDominio")),
        )
    return InsertRow(id_a2a=id_a2a, id_pendenza=id_pendenza, body=body)


# --- CSV -----------------------------------------------------------------------------------------------

_CANONICAL = {name.lower(): name for name in CSV_COLUMNS}
_PAYER = {
    "tipo": "tipoSoggettoPagatore",
    "identificativo": "identificativoPagatore",
    "anagrafica": "anagraficaPagatore",
}
_VOCE_TO_CSV = {
    "idVocePendenza": "idVoce",
    "importo": "importoVoce",
    "descrizione": "descrizioneVoce",
    "idDominio": "idDominioVoce",
    "codEntrata": "tipoEntrata",
    "hashDocumento": "hashBollo",
    "provinciaResidenza": "provinciaBollo",
}

# CSV column -> PendenzaPut field, for building the body from the non-empty columns only.
_DOCUMENT_COLUMNS = (("tipoPendenza", "idTipoPendenza"),) + tuple((name, name) for name in (
    "numeroAvviso", "idUnitaOperativa", "causale", "annoRiferimento", "cartellaPagamento", "datiAllegati",
    "direzione", "divisione", "dataValidita", "dataScadenza", "tassonomiaAvviso"))  # fmt: skip
_PAYER_COLUMNS = tuple((_PAYER.get(f, f), f) for f in (
    "tipo", "identificativo", "anagrafica", "indirizzo", "civico", "cap", "localita", "provincia", "nazione",
    "email", "cellulare"))  # fmt: skip
_CSV_TO_VOCE = {column: field for field, column in _VOCE_TO_CSV.items()}
_VOCE_COLUMNS_BY_NUMBER = tuple(
    tuple((f"{name}{n}", _CSV_TO_VOCE.get(name, name)) for name in VOCE_FIELDS)
    for n in range(1, MAX_VOCI + 1)
)
_VOCE_COLUMN_SETS = tuple(frozenset(column for column, _ in columns) for columns in _VOCE_COLUMNS_BY_NUMBER)


@dataclass(frozen=True)
class CsvLayout:
    """What the header of a CSV says: the delimiter and the canonical name of each column (None = ignored)."""

    delimiter: str
    columns: tuple[str | None, ...]

    @property
    def unknown(self) -> int:
        """How many header columns are not part of the layout."""
        return sum(1 for c in self.columns if c is None)


def detect_delimiter(header: str) -> str:
    """``;`` or ``,``: whichever the header line uses more (``;`` on a tie, as Italian spreadsheets write)."""
    return "," if header.count(",") > header.count(";") else ";"


def read_header(header: str) -> CsvLayout:
    """Map the header line to the layout's columns; raise TracciatoError if it is not a tracciato header."""
    delimiter = detect_delimiter(header)
    names = next(csv.reader([header], delimiter=delimiter), [])
    columns = tuple(_CANONICAL.get(n.strip().lower()) for n in names)
    present = [c for c in columns if c]
    repeated = sorted({c for c in present if present.count(c) > 1})
    if repeated:
        raise TracciatoError(f"colonne ripetute nell'intestazione: {', '.join(repeated)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise TracciatoError(f"intestazione CSV senza le colonne {', '.join(missing)}")
    return CsvLayout(delimiter=delimiter, columns=columns)


def _csv_field(loc: tuple[Any, ...], voce_numbers: list[int]) -> str:
    if not loc:
        return "riga"
    head = loc[0]
    if head == "idTipoPendenza":
        return "tipoPendenza"
    if head == "soggettoPagatore":
        return _PAYER.get(loc[1], loc[1]) if len(loc) > 1 else "identificativoPagatore"
    if head == "voci":
        if len(loc) < 2 or not isinstance(loc[1], int):
            return "idVoce1"
        n = voce_numbers[loc[1]] if loc[1] < len(voce_numbers) else loc[1] + 1
        if len(loc) < 3:
            return f"voce{n}"
        return f"{_VOCE_TO_CSV.get(loc[2], loc[2])}{n}"
    return ".".join(str(p) for p in loc)


def csv_row_input(values: dict[str, str], defaults: RowDefaults) -> RowInput:
    """One CSV record (canonical column → stripped text, empty omitted) as an insert, annulment or error."""
    identity = _identity(
        values.get("idA2A"), values.get("idPendenza"), defaults, names=("idA2A", "idPendenza")
    )
    id_dominio = values.get("idDominio") or defaults.id_dominio
    if isinstance(identity, RowError):
        return RowError(
            identity.code, identity.message, identity.field, identity.id_a2a, identity.id_pendenza, id_dominio
        )
    id_a2a, id_pendenza = identity
    where = {"id_a2a": id_a2a, "id_pendenza": id_pendenza, "id_dominio": id_dominio}
    raw_amount = values.get("importo")
    if raw_amount is None:
        return RowError(SYNTAX, "campo obbligatorio", "importo", **where)
    try:
        amount = parse_amount(raw_amount)
    except ValueError as exc:
        return RowError(SYNTAX, str(exc), "importo", **where)
    if amount == 0:
        reason = values.get("causale")
        return AnnulRow(
            id_a2a=id_a2a,
            id_pendenza=id_pendenza,
            reason=reason[:_MAX_REASON] if reason else None,
            id_dominio=id_dominio,
        )
    payer = {field: values[column] for column, field in _PAYER_COLUMNS if column in values}
    document: dict[str, Any] = {
        field: values[column] for column, field in _DOCUMENT_COLUMNS if column in values
    }
    document["importo"] = amount
    document["soggettoPagatore"] = payer
    if id_dominio:
        document["idDominio"] = id_dominio
    if "idTipoPendenza" not in document and defaults.debt_type:
        document["idTipoPendenza"] = defaults.debt_type
    for name in ("dataValidita", "dataScadenza"):
        if name in document:
            document[name] = _date(document[name])
    if "datiAllegati" in document:
        try:
            document["datiAllegati"] = json.loads(document["datiAllegati"])
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            return RowError(SYNTAX, "JSON non valido", "datiAllegati", **where)
    voci: list[dict[str, Any]] = []
    numbers: list[int] = []
    for n, columns in enumerate(_VOCE_COLUMNS_BY_NUMBER, start=1):
        if _VOCE_COLUMN_SETS[n - 1].isdisjoint(values):  # most rows fill one or two of the five voci
            continue
        voce: dict[str, Any] = {field: values[column] for column, field in columns if column in values}
        if "importo" in voce:
            try:
                voce["importo"] = parse_amount(voce["importo"])
            except ValueError as exc:
                return RowError(SYNTAX, str(exc), f"importoVoce{n}", **where)
        voci.append(voce)
        numbers.append(n)
    document["voci"] = voci
    return _build(
        document, id_a2a=id_a2a, id_pendenza=id_pendenza, field_name=lambda loc: _csv_field(loc, numbers)
    )


def iter_csv_records(stream: TextIO) -> Iterator[tuple[CsvLayout, list[str] | str]]:
    """The header's layout with each record's fields, or an error message for a record that cannot be read."""
    lines = iter(stream)
    header = next(lines, None)
    while header is not None and not header.strip():
        header = next(lines, None)
    if header is None:
        raise TracciatoError("file vuoto")
    layout = read_header(header.lstrip("\ufeff").rstrip("\r\n"))
    reader = csv.reader(lines, delimiter=layout.delimiter)
    width = len(layout.columns)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield layout, f"CSV non valido: {exc}"
            continue
        if len(fields) > width:
            yield layout, f"{len(fields)} campi, l'intestazione ne ha {width}"
            continue
        yield layout, fields


def parse_csv(stream: TextIO, *, defaults: RowDefaults = RowDefaults()) -> Iterator[tuple[int, RowInput]]:
    """The rows of a GovPay CSV tracciato, numbered from 1 after the header."""
    for number, (layout, fields) in enumerate(iter_csv_records(stream), start=1):
        if isinstance(fields, str):
            yield number, RowError(SYNTAX, fields, "riga")
            continue
        values = {
            name: text
            for name, raw in zip(layout.columns, fields, strict=False)
            if name is not None and (text := raw.strip())
        }
        if not values:
            yield number, RowError(SYNTAX, "riga vuota", "riga")
            continue
        yield number, csv_row_input(values, defaults)


# --- JSON ----------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\r\n]*")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_SECTIONS = ("inserimenti", "annullamenti")


class _JsonSyntax(ValueError):
    """The JSON text breaks off or is malformed."""


class _JsonReader:
    """Decodes one JSON value at a time from a text stream, keeping only the unread part in memory."""

    def __init__(self, stream: TextIO, *, chunk: int = 1 << 16) -> None:
        self._stream = stream
        self._chunk = chunk
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder(parse_float=Decimal)

    def _fill(self, size: int) -> bool:
        data = self._stream.read(size) if not self._eof else ""
        if not data:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + data
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the text)."""
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill(self._chunk):
                return ""

    def expect(self, char: str) -> None:
        """Consume ``char`` or fail."""
        found = self.peek()
        if found != char:
            raise _JsonSyntax(f"atteso {char!r}, trovato {found or 'fine del file'!r}")
        self._pos += 1

    def value(self) -> Any:
        """Decode the next value, reading more text while it is incomplete."""
        self.peek()
        size = self._chunk
        while True:
            try:
                obj, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if not self._fill(size):
                    raise _JsonSyntax(f"{exc.msg} (carattere {exc.pos - self._pos})") from exc
                size *= 2  # a long element: grow the reads so retries stay linear
                continue
            except RecursionError as exc:  # more data cannot help: the nesting is already too deep
                raise _JsonSyntax("annidamento troppo profondo") from exc
            except ValueError as exc:  # an integer of more than 4300 digits, refused by int()
                raise _JsonSyntax(f"numero non leggibile: {str(exc)[:80]}") from exc
            if end == len(self._buf) and not self._eof and self._fill(size):
                continue  # a number may go on in the next chunk
            self._pos = end
            return obj


def iter_json_elements(stream: TextIO) -> Iterator[tuple[str, Any]]:
    """``(section, element)`` per element of the two lists; ``("", message)`` where the JSON breaks."""
    reader = _JsonReader(stream)
    first = reader.peek()
    if first == "\ufeff":
        reader.expect("\ufeff")
        first = reader.peek()
    if first == "":
        raise TracciatoError("file vuoto")
    if first != "{":
        raise TracciatoError("il tracciato JSON deve essere un oggetto con 'inserimenti' e/o 'annullamenti'")
    try:
        reader.expect("{")
        if reader.peek() == "}":
            reader.expect("}")
        else:
            while True:
                key = reader.value()
                if not isinstance(key, str):
                    raise _JsonSyntax("attesa una chiave")
                reader.expect(":")
                if key in _SECTIONS and reader.peek() == "[":
                    reader.expect("[")
                    if reader.peek() == "]":
                        reader.expect("]")
                    else:
                        while True:
                            yield key, reader.value()
                            if reader.peek() == ",":
                                reader.expect(",")
                                continue
                            reader.expect("]")
                            break
                elif key in _SECTIONS:
                    raise _JsonSyntax(f"'{key}' deve essere una lista")
                else:
                    reader.value()
                if reader.peek() == ",":
                    reader.expect(",")
                    continue
                reader.expect("}")
                break
        if reader.peek() != "":
            raise _JsonSyntax("testo dopo la fine dell'oggetto")
    except _JsonSyntax as exc:
        yield "", f"JSON non valido: {exc}"


def _json_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "riga"


def _json_amount(value: Any) -> Decimal:
    if isinstance(value, str):
        return parse_amount(value)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        amount = Decimal(value)
        if not amount.is_finite() or amount.adjusted() >= _MAX_INTEGER_DIGITS:
            raise ValueError(f"importo non valido: {str(value)[:40]}")
        if amount != amount.quantize(_CENT):
            raise ValueError(f"importo con piu' di due decimali: {value}")
        return amount.quantize(_CENT)
    raise ValueError(f"importo non valido: {str(value)[:40]!r}")


def json_row_input(section: str, element: Any, defaults: RowDefaults) -> RowInput:
    """One element of inserimenti or annullamenti as an insert, annulment or error."""
    if not isinstance(element, dict):
        return RowError(SYNTAX, "atteso un oggetto", "riga")
    identity = _identity(
        element.get("idA2A"), element.get("idPendenza"), defaults, names=("idA2A", "idPendenza")
    )
    id_dominio = _text(element.get("idDominio")) or defaults.id_dominio
    if isinstance(identity, RowError):
        return RowError(
            identity.code, identity.message, identity.field, identity.id_a2a, identity.id_pendenza, id_dominio
        )
    id_a2a, id_pendenza = identity
    where = {"id_a2a": id_a2a, "id_pendenza": id_pendenza, "id_dominio": id_dominio}
    if section == "annullamenti":
        reason = element.get("motivoAnnullamento")
        if reason is not None and not isinstance(reason, str):
            return RowError(SYNTAX, "attesa una stringa", "motivoAnnullamento", **where)
        if reason and len(reason) > _MAX_REASON:
            return RowError(SYNTAX, f"al massimo {_MAX_REASON} caratteri", "motivoAnnullamento", **where)
        return AnnulRow(id_a2a=id_a2a, id_pendenza=id_pendenza, reason=_text(reason), id_dominio=id_dominio)
    document = dict(element)
    if "importo" not in document:
        return RowError(SYNTAX, "campo obbligatorio", "importo", **where)
    try:
        document["importo"] = _json_amount(document["importo"])
    except ValueError as exc:
        return RowError(SYNTAX, str(exc), "importo", **where)
    if document["importo"] == 0:
        reason = _text(document.get("motivoAnnullamento")) or _text(document.get("causale"))
        return AnnulRow(
            id_a2a=id_a2a,
            id_pendenza=id_pendenza,
            reason=reason[:_MAX_REASON] if reason else None,
            id_dominio=id_dominio,
        )
    if id_dominio and not document.get("idDominio"):
        document["idDominio"] = id_dominio
    if defaults.debt_type and not document.get("idTipoPendenza"):
        document["idTipoPendenza"] = defaults.debt_type
    voci = document.get("voci")
    if isinstance(voci, list):
        document["voci"] = voci = [dict(v) if isinstance(v, dict) else v for v in voci]
        for i, voce in enumerate(voci):
            if isinstance(voce, dict) and "importo" in voce:
                try:
                    voce["importo"] = _json_amount(voce["importo"])
                except ValueError as exc:
                    return RowError(SYNTAX, str(exc), f"voci[{i}].importo", **where)
    return _build(document, id_a2a=id_a2a, id_pendenza=id_pendenza, field_name=_json_field)


def parse_json(stream: TextIO, *, defaults: RowDefaults = RowDefaults()) -> Iterator[tuple[int, RowInput]]:
    """The rows of a JSON tracciato, numbered from 1 in document order."""
    for number, (section, element) in enumerate(iter_json_elements(stream), start=1):
        if not section:
            yield number, RowError(SYNTAX, element, "riga")
            return
        yield number, json_row_input(section, element, defaults)


# --- files ---------------------------------------------------------------------------------------------

Format = Literal["csv", "json"]


def detect_format(head: str) -> Format:
    """JSON if the text starts (after a BOM and blanks) with ``{`` or ``[``, CSV otherwise."""
    stripped = head.lstrip("\ufeff \t\r\n")
    return "json" if stripped[:1] in ("{", "[") else "csv"


class _Rewound:
    """A text stream whose first ``head`` characters were already read, served again first."""

    def __init__(self, head: str, stream: TextIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> str:
        if self._head:
            if size < 0:
                out, self._head = self._head + self._stream.read(), ""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._stream.read(size)

    def __iter__(self) -> Iterator[str]:
        if self._head:
            first = self._head + self._stream.readline()
            self._head = ""
            yield from _LINE.findall(first)
        yield from self._stream


def _sniff(stream: TextIO) -> tuple[Format, TextIO]:
    head = stream.read(4096)
    return detect_format(head), _Rewound(head, stream)  # type: ignore[return-value]


def parse_tracciato(
    stream: TextIO, *, defaults: RowDefaults = RowDefaults()
) -> Iterator[tuple[int, RowInput]]:
    """The rows of a CSV or JSON tracciato (format detected), duplicates not yet flagged."""
    fmt, rewound = _sniff(stream)
    parse = parse_json if fmt == "json" else parse_csv
    return parse(rewound, defaults=defaults)


def read_tracciato(
    stream: TextIO, *, defaults: RowDefaults = RowDefaults()
) -> Iterator[tuple[int, RowInput]]:
    """The rows of a tracciato as the loader processes them: parsed, then duplicates flagged."""
    return flag_duplicates(parse_tracciato(stream, defaults=defaults))


def count_rows(stream: TextIO) -> tuple[Format, int]:
    """The format and the number of rows of a tracciato, without validating them (cheap first pass)."""
    fmt, rewound = _sniff(stream)
    records: Iterable[Any] = iter_json_elements(rewound) if fmt == "json" else iter_csv_records(rewound)
    return fmt, sum(1 for _ in records)


def flag_duplicates(rows: Iterable[tuple[int, RowInput]]) -> Iterator[tuple[int, RowInput]]:
    """Replace a row repeating the idA2A + idPendenza of an earlier readable row with a VER_015 rejection."""
    first: dict[tuple[str, str], int] = {}
    for number, row in rows:
        if isinstance(row, InsertRow | AnnulRow):
            key = (row.id_a2a, row.id_pendenza)
            earlier = first.setdefault(key, number)
            if earlier != number:
                id_dominio = row.body.idDominio if isinstance(row, InsertRow) else row.id_dominio
                row = RowError(
                    DUPLICATE,
                    f"Pendenza ripetuta nel tracciato (riga {earlier})",
                    "idPendenza",
                    id_a2a=row.id_a2a,
                    id_pendenza=row.id_pendenza,
                    id_dominio=id_dominio,
                )
        yield number, row


def batched(
    rows: Iterable[tuple[int, RowInput]], *, size: int, after: int = 0
) -> Iterator[list[tuple[int, RowInput]]]:
    """Lists of at most ``size`` rows, leaving out the rows numbered ``after`` or less (already processed)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    batch: list[tuple[int, RowInput]] = []
    for number, row in rows:
        if number <= after:
            continue
        batch.append((number, row))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
