"""Reading bulk files (tracciati): CSV and JSON layouts, every kind of bad row, duplicates and batching."""

from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from rules.tracciato import (
    CSV_COLUMNS,
    VOCE_COLUMNS,
    AnnulRow,
    InsertRow,
    RowDefaults,
    RowError,
    TracciatoError,
    batched,
    count_rows,
    detect_format,
    flag_duplicates,
    iter_json_elements,
    parse_amount,
    parse_tracciato,
    read_header,
    read_tracciato,
)

HEADER = [
    "idA2A",
    "idPendenza",
    "idDominio",
    "tipoPendenza",
    "causale",
    "importo",
    "identificativoPagatore",
    "anagraficaPagatore",
    "dataScadenza",
    "idVoce1",
    "importoVoce1",
    "descrizioneVoce1",
    "tipoEntrata1",
    "idVoce2",
    "importoVoce2",
    "descrizioneVoce2",
    "ibanAccredito2",
    "tipoContabilita2",
    "codiceContabilita2",
]


def row(**values: str) -> dict[str, str]:
    base = {
        "idA2A": "A2A-TRIBUTI",
        "idPendenza": "P1",
        "idDominio": "01234567897",
        "tipoPendenza": "TARI",
        "causale": "TARI 2025",
        "importo": "100,00",
        "identificativoPagatore": "RSSMRA80A01H501U",
        "anagraficaPagatore": "Mario Rossi",
        "idVoce1": "V1",
        "importoVoce1": "100,00",
        "descrizioneVoce1": "Quota",
        "tipoEntrata1": "TARI",
    }
    base.update(values)
    return base


def csv_text(
    *rows: dict[str, str] | str, header: list[str] = HEADER, delimiter: str = ";", bom: bool = False
) -> str:
    lines = [delimiter.join(header)]
    for r in rows:
        if isinstance(r, str):
            lines.append(r)
        else:
            cells = [r.get(name, "") for name in header]
            lines.append(delimiter.join(f'"{c}"' if delimiter in c or "\n" in c else c for c in cells))
    return ("\ufeff" if bom else "") + "\r\n".join(lines) + "\r\n"


def parse(text: str, **defaults: Any) -> list[tuple[int, Any]]:
    return list(read_tracciato(io.StringIO(text, newline=""), defaults=RowDefaults(**defaults)))


def only(text: str, **defaults: Any) -> Any:
    rows = parse(text, **defaults)
    assert len(rows) == 1
    return rows[0][1]


# --- CSV -----------------------------------------------------------------------------------------------


def test_csv_valid_row_becomes_pendenza_put() -> None:
    result = only(
        csv_text(
            row(
                dataScadenza="31/12/2026",
                importo="150,50",
                importoVoce2="50,50",
                idVoce2="V2",
                descrizioneVoce2="Addizionale",
                ibanAccredito2="IT21X0306909606000000123456",
                tipoContabilita2="CAPITOLO",
                codiceContabilita2="1010",
            )
        )
    )
    assert isinstance(result, InsertRow)
    assert (result.id_a2a, result.id_pendenza) == ("A2A-TRIBUTI", "P1")
    body = result.body
    assert body.importo == Decimal("150.50") and body.idTipoPendenza == "TARI"
    assert body.dataScadenza == date(2026, 12, 31)
    assert body.soggettoPagatore.identificativo == "RSSMRA80A01H501U" and body.soggettoPagatore.tipo == "F"
    assert [(v.idVocePendenza, v.importo, v.codEntrata, v.ibanAccredito) for v in body.voci] == [
        ("V1", Decimal("100.00"), "TARI", None),
        ("V2", Decimal("50.50"), None, "IT21X0306909606000000123456"),
    ]


def test_csv_bom_and_semicolon_delimiter() -> None:
    text = csv_text(row(causale="Rata; unica"), bom=True)
    result = only(text)
    assert isinstance(result, InsertRow) and result.body.causale == "Rata; unica"
    assert read_header(";".join(HEADER)).delimiter == ";"


def test_csv_comma_delimiter_with_quoted_fields_and_dot_decimals() -> None:
    text = csv_text(row(causale="TARI, saldo", importo="1,234.50", importoVoce1="1234.5"), delimiter=",")
    result = only(text)
    assert isinstance(result, InsertRow)
    assert result.body.causale == "TARI, saldo" and result.body.importo == Decimal("1234.50")


def test_csv_header_is_case_insensitive_in_any_order_and_ignores_unknown_columns() -> None:
    header = ["IMPORTO", "note", *[h for h in HEADER if h != "importo"]]
    values = row()
    values["note"] = "ignored"
    values["IMPORTO"] = values.pop("importo")
    result = only(csv_text(values, header=header))
    assert isinstance(result, InsertRow) and result.body.importo == Decimal("100.00")
    assert read_header(";".join(header)).unknown == 1


def test_csv_voce_columns_are_documented_names() -> None:
    assert VOCE_COLUMNS[:4] == ("idVoce1", "importoVoce1", "descrizioneVoce1", "idDominioVoce1")
    assert "provinciaBollo5" in CSV_COLUMNS and "tipoEntrata3" in CSV_COLUMNS and "idVoce6" not in CSV_COLUMNS


def test_csv_multiline_quoted_field_is_one_row() -> None:
    text = csv_text(row(causale="riga uno\nriga due"), row(idPendenza="P2"))
    rows = parse(text)
    assert [n for n, _ in rows] == [1, 2]
    assert rows[0][1].body.causale == "riga uno\nriga due"
    assert count_rows(io.StringIO(text, newline="")) == ("csv", 2)


def test_csv_importo_zero_annuls_with_causale_as_reason() -> None:
    result = only(
        csv_text(
            {"idA2A": "A2A-TRIBUTI", "idPendenza": "P9", "importo": "0,00", "causale": "Emessa per errore"}
        )
    )
    assert result == AnnulRow(
        id_a2a="A2A-TRIBUTI", id_pendenza="P9", reason="Emessa per errore", id_dominio=None
    )


def test_csv_blank_lines_are_rejected_rows() -> None:
    rows = parse(csv_text(row(), "", ";;;;", "   ", row(idPendenza="P2")))
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]
    for _, blank in rows[1:4]:
        assert isinstance(blank, RowError)
        assert blank.describe() == "SINTASSI: riga vuota (riga)"
    assert isinstance(rows[4][1], InsertRow)


def test_csv_defaults_fill_missing_identity_ec_and_type() -> None:
    values = row()
    for name in ("idA2A", "idDominio", "tipoPendenza"):
        values[name] = ""
    result = only(csv_text(values), id_a2a="A2A-X", id_dominio="80001234568", debt_type="MENSA")
    assert isinstance(result, InsertRow)
    assert (result.id_a2a, result.body.idDominio, result.body.idTipoPendenza) == (
        "A2A-X",
        "80001234568",
        "MENSA",
    )
    # A row's own values win over the defaults.
    result = only(csv_text(row()), id_a2a="A2A-X", id_dominio="80001234568", debt_type="MENSA")
    assert (result.id_a2a, result.body.idDominio, result.body.idTipoPendenza) == (
        "A2A-TRIBUTI",
        "01234567897",
        "TARI",
    )


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"idPendenza": ""}, "idPendenza", "obbligatorio"),
        ({"idPendenza": "P 1"}, "idPendenza", "35 caratteri"),
        ({"idA2A": ""}, "idA2A", "obbligatorio"),
        ({"importo": ""}, "importo", "obbligatorio"),
        ({"importo": "12,345"}, "importo", "due decimali"),
        ({"importo": "-5"}, "importo", "non valido"),
        ({"importoVoce1": "abc"}, "importoVoce1", "non valido"),
        ({"causale": ""}, "causale", "required"),
        ({"causale": "x" * 141}, "causale", "140"),
        ({"tipoPendenza": ""}, "tipoPendenza", "required"),
        ({"idDominio": "123"}, "idDominio", "pattern"),
        ({"identificativoPagatore": ""}, "identificativoPagatore", "required"),
        ({"dataScadenza": "31/02/2026"}, "dataScadenza", "date"),
        (
            {"idVoce1": "", "importoVoce1": "", "descrizioneVoce1": "", "tipoEntrata1": ""},
            "idVoce1",
            "at least 1",
        ),
        ({"tipoEntrata1": ""}, "voce1", "exactly one of"),
        (
            {"idVoce2": "V2", "importoVoce2": "5", "descrizioneVoce2": "x", "ibanAccredito2": "IT00X123"},
            "ibanAccredito2",
            "",
        ),
    ],
)
def test_csv_syntax_errors_name_the_column(values: dict[str, str], field: str, fragment: str) -> None:
    result = only(csv_text(row(**values)))
    assert isinstance(result, RowError), result
    assert result.code == "SINTASSI" and result.field == field
    assert fragment.lower() in result.message.lower()
    assert result.describe().startswith("SINTASSI: ") and result.describe().endswith(f"({field})")


def test_csv_syntax_error_keeps_identity_for_the_outcome_file() -> None:
    result = only(csv_text(row(importo="x")))
    assert isinstance(result, RowError)
    assert (result.id_a2a, result.id_pendenza, result.id_dominio) == ("A2A-TRIBUTI", "P1", "01234567897")


def test_csv_dati_allegati_must_be_json() -> None:
    header = [*HEADER, "datiAllegati"]
    good = only(csv_text(row(datiAllegati='{"pratica": 7}'), header=header))
    assert isinstance(good, InsertRow) and good.body.datiAllegati == {"pratica": 7}
    bad = only(csv_text(row(datiAllegati="{pratica"), header=header))
    assert isinstance(bad, RowError) and bad.field == "datiAllegati"


def test_csv_row_with_too_many_fields_is_rejected_and_the_file_goes_on() -> None:
    text = csv_text(";".join(["x"] * (len(HEADER) + 2)), row(idPendenza="P2"))
    rows = parse(text)
    assert isinstance(rows[0][1], RowError) and "campi" in rows[0][1].message
    assert isinstance(rows[1][1], InsertRow)


def test_csv_short_row_is_padded() -> None:
    values = row()
    text = csv_text(";".join(values.get(h, "") for h in HEADER[:13]))
    result = only(text)
    assert isinstance(result, InsertRow) and result.body.voci[0].codEntrata == "TARI"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "vuoto"),
        ("\r\n\r\n", "vuoto"),
        ("idA2A;causale\r\nA;b\r\n", "idPendenza, importo"),
        ("idPendenza;importo;IMPORTO\r\n", "ripetute"),
    ],
)
def test_csv_header_problems_fail_the_file(text: str, message: str) -> None:
    with pytest.raises(TracciatoError, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", "12.00"),
        ("12,5", "12.50"),
        ("12.50", "12.50"),
        ("1.234,56", "1234.56"),
        ("1,234.56", "1234.56"),
        ("1.234.567,00", "1234567.00"),
        ("0", "0.00"),
        (" 7,10 ", "7.10"),
    ],
)
def test_amounts_take_either_decimal_separator(text: str, expected: str) -> None:
    assert parse_amount(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["1.234", "12,345", "-1", "1,2,3", "abc", "", "1.234.56", "1e3"])
def test_ambiguous_or_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


# --- JSON ----------------------------------------------------------------------------------------------


def pendenza(id_pendenza: str = "P1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idA2A": "A2A-TRIBUTI",
        "idPendenza": id_pendenza,
        "idDominio": "01234567897",
        "idTipoPendenza": "TARI",
        "causale": "TARI 2025",
        "importo": 100.0,
        "soggettoPagatore": {"tipo": "F", "identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "voci": [{"idVocePendenza": "V1", "importo": 100.0, "descrizione": "Quota", "codEntrata": "TARI"}],
    }
    body.update(overrides)
    return body


def test_json_inserimenti_and_annullamenti_numbered_in_document_order() -> None:
    document = {
        "inserimenti": [pendenza("P1"), pendenza("P2", importo=0, causale="ritirata")],
        "annullamenti": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "P3", "motivoAnnullamento": "errore"}],
    }
    rows = parse(json.dumps(document))
    assert [n for n, _ in rows] == [1, 2, 3]
    assert isinstance(rows[0][1], InsertRow) and rows[0][1].body.importo == Decimal("100.00")
    assert rows[1][1] == AnnulRow("A2A-TRIBUTI", "P2", "ritirata", "01234567897")
    assert rows[2][1] == AnnulRow("A2A-TRIBUTI", "P3", "errore", None)


def test_json_with_bom_and_defaults() -> None:
    body = pendenza()
    for key in ("idA2A", "idDominio", "idTipoPendenza"):
        del body[key]
    result = only(
        "\ufeff" + json.dumps({"inserimenti": [body]}),
        id_a2a="A2A-X",
        id_dominio="80001234568",
        debt_type="GITA",
    )
    assert isinstance(result, InsertRow)
    assert (result.id_a2a, result.body.idDominio, result.body.idTipoPendenza) == (
        "A2A-X",
        "80001234568",
        "GITA",
    )


def test_json_amounts_are_exact() -> None:
    result = only(
        '{"inserimenti": ['
        + json.dumps(pendenza(importo="X"))
        .replace('"importo": "X"', '"importo": 0.1')
        .replace('"importo": 100.0}', '"importo": 0.10}')
        + "]}"
    )
    assert isinstance(result, InsertRow) and result.body.importo == Decimal("0.10")
    too_fine = only(json.dumps({"inserimenti": [pendenza(importo=1.234)]}))
    assert isinstance(too_fine, RowError) and too_fine.field == "importo"


@pytest.mark.parametrize(
    ("element", "field", "fragment"),
    [
        ("5", "riga", "oggetto"),
        (json.dumps({"idA2A": "A2A-TRIBUTI", "importo": 5}), "idPendenza", "obbligatorio"),
        (json.dumps({k: v for k, v in pendenza().items() if k != "importo"}), "importo", "obbligatorio"),
        (json.dumps(pendenza(importo=True)), "importo", "non valido"),
        (
            json.dumps(pendenza(soggettoPagatore={"anagrafica": "x"})),
            "soggettoPagatore.identificativo",
            "required",
        ),
        (
            json.dumps(
                pendenza(
                    voci=[{"idVocePendenza": "V1", "importo": -1, "descrizione": "d", "codEntrata": "T"}]
                )
            ),
            "voci[0].importo",
            "greater than 0",
        ),
        (
            json.dumps(pendenza(voci=[{"idVocePendenza": "V1", "importo": 100, "codEntrata": "T"}])),
            "voci[0].descrizione",
            "required",
        ),
    ],
)
def test_json_syntax_errors_name_the_path(element: str, field: str, fragment: str) -> None:
    result = only('{"inserimenti": [' + element + "]}")
    assert isinstance(result, RowError), result
    assert result.field == field and fragment in result.message.lower()


def test_json_annulment_reason_is_checked() -> None:
    long = only(
        json.dumps({"annullamenti": [{"idA2A": "A", "idPendenza": "P", "motivoAnnullamento": "x" * 256}]})
    )
    assert isinstance(long, RowError) and long.field == "motivoAnnullamento"


def test_malformed_json_yields_one_error_row_and_stops() -> None:
    text = (
        '{"inserimenti": [' + json.dumps(pendenza("P1")) + ", {broken, " + json.dumps(pendenza("P2")) + "]}"
    )
    rows = parse(text)
    assert [n for n, _ in rows] == [1, 2]
    assert isinstance(rows[1][1], RowError) and rows[1][1].message.startswith("JSON non valido")
    assert count_rows(io.StringIO(text)) == ("json", 2)


@pytest.mark.parametrize(("text", "message"), [("", "vuoto"), ("  \n", "vuoto"), ("[1, 2]", "oggetto")])
def test_json_that_is_not_a_tracciato_fails_the_file(text: str, message: str) -> None:
    with pytest.raises(TracciatoError, match=message):
        list(iter_json_elements(io.StringIO(text)))


class TinyReads(io.StringIO):
    """A stream that hands out at most 3 characters per read, to exercise the incremental decoder."""

    def read(self, size: int | None = -1) -> str:
        return super().read(3 if size is None or size < 0 else min(size, 3))


def test_json_is_streamed_across_small_reads() -> None:
    document = {
        "altro": {"a": [1, 2, {"b": "c"}]},
        "inserimenti": [
            pendenza(
                f"P{i}",
                importo=12345.67,
                voci=[
                    {"idVocePendenza": "V1", "importo": 12345.67, "descrizione": "d", "codEntrata": "TARI"}
                ],
            )
            for i in range(5)
        ],
        "annullamenti": [],
    }
    text = json.dumps(document, indent=2)
    elements = list(iter_json_elements(TinyReads(text)))
    assert [e["idPendenza"] for _, e in elements] == [f"P{i}" for i in range(5)]
    assert elements[0][1]["importo"] == Decimal("12345.67")  # the number straddles reads and stays whole
    rows = list(parse_tracciato(TinyReads(text)))
    assert all(isinstance(r, InsertRow) and r.body.importo == Decimal("12345.67") for _, r in rows)


def test_detect_format() -> None:
    assert detect_format('\ufeff  {"inserimenti": []}') == "json"
    assert detect_format("idA2A;idPendenza") == "csv"
    assert parse('{"inserimenti": [], "annullamenti": []}') == []


# --- duplicates, batches -------------------------------------------------------------------------------


def test_duplicate_rows_are_rejected_after_the_first_whatever_their_content() -> None:
    text = csv_text(
        row(),
        row(idPendenza="P2"),
        row(causale="diversa"),
        row(importo="0"),
        row(importo="x", idPendenza="P3"),
        row(idPendenza="P3"),
    )
    rows = parse(text)
    assert isinstance(rows[0][1], InsertRow) and isinstance(rows[1][1], InsertRow)
    for number in (3, 4):
        error = rows[number - 1][1]
        assert isinstance(error, RowError) and error.code == "VER_015"
        assert error.describe() == "VER_015: Pendenza ripetuta nel tracciato (riga 1) (idPendenza)"
        assert (error.id_a2a, error.id_pendenza, error.id_dominio) == ("A2A-TRIBUTI", "P1", "01234567897")
    # An unreadable row claims nothing: the corrected row after it goes through.
    assert isinstance(rows[4][1], RowError) and rows[4][1].code == "SINTASSI"
    assert isinstance(rows[5][1], InsertRow)


def test_same_id_pendenza_of_different_applications_is_no_duplicate() -> None:
    rows = list(flag_duplicates([(1, AnnulRow("A", "P")), (2, AnnulRow("B", "P")), (3, AnnulRow("A", "P"))]))
    assert [type(r).__name__ for _, r in rows] == ["AnnulRow", "AnnulRow", "RowError"]


def test_batches_skip_processed_rows() -> None:
    rows = [(n, AnnulRow("A", f"P{n}")) for n in range(1, 11)]
    assert [[n for n, _ in b] for b in batched(rows, size=4)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [[n for n, _ in b] for b in batched(rows, size=4, after=6)] == [[7, 8, 9, 10]]
    assert list(batched(rows, size=4, after=10)) == []
    with pytest.raises(ValueError):
        list(batched(rows, size=0))


def test_count_rows_matches_parsed_rows() -> None:
    text = csv_text(row(), "", row(idPendenza="P2"), row(importo="x"))
    assert count_rows(io.StringIO(text, newline="")) == ("csv", len(parse(text)))
