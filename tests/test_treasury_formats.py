"""Treasury file readers: every sample, one day in four formats, malformed and hostile files, a big file."""

from __future__ import annotations

import io
import re
import time
import tracemalloc
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.treasury.formats import HEAD_BYTES, detect_format, read_movements
from connectors.treasury.movement import CsvMapping, Movement, TreasuryFormat, TreasuryFormatError
from models.settings import get_settings
from rules.remittance import parse_remittance
from rules.xmlsafe import UnsafeXMLError, parse_xml
from tests.factories_treasury import (
    CamtEntry,
    OpiRow,
    camt053,
    cbi_movement,
    cbi_rh,
    opi_flow_row,
    write_opi_giornale,
)

SPECS = get_settings().treasury_specs_dir
SYNTHETIC = SPECS / "synthetic"
OPI_SYNTHETIC = SYNTHETIC / "opi_giornale_di_cassa_1_8_pagopa.xml"
CAMT_SYNTHETIC = SYNTHETIC / "camt053.001.02_tesoreria_pagopa.xml"
CBI_SYNTHETIC = SYNTHETIC / "cbi_rh_tesoreria_pagopa.txt"
MT940_SYNTHETIC = SYNTHETIC / "mt940_tesoreria_pagopa.sta"
OPI_SAMPLES = sorted((SPECS / "opi-giornale-di-cassa" / "samples").glob("*.xml"))
CAMT_SAMPLES = sorted((SPECS / "camt" / "samples").glob("*.xml"))
MT940_SAMPLES = sorted((SPECS / "mt940" / "samples").glob("*.sta"))

needs_specs = pytest.mark.skipif(not SYNTHETIC.is_dir(), reason="treasury specs directory not available")
FLOW_ID = re.compile(r"URI/([A-Za-z0-9_-]+)")


def read_file(path: Path, fmt: TreasuryFormat | None = None) -> list[Movement]:
    with path.open("rb") as stream:
        head = stream.read(HEAD_BYTES)
        stream.seek(0)
        detected = detect_format(head=head, name=path.name)
        return list(read_movements(stream, fmt=fmt or detected, source_name=path.name))


def read_bytes(data: bytes, fmt: TreasuryFormat, **options: object) -> list[Movement]:
    return list(read_movements(io.BytesIO(data), fmt=fmt, source_name="test-file", **options))  # type: ignore[arg-type]


def flows_in(movements: list[Movement]) -> list[str]:
    refs = [parse_remittance(movement.remittance) for movement in movements]
    return [ref.reference for ref in refs if ref.kind == "flow" and ref.reference]


# --- detection ---------------------------------------------------------------------------------------


@needs_specs
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (OPI_SYNTHETIC, TreasuryFormat.OPI),
        (CAMT_SYNTHETIC, TreasuryFormat.CAMT053),
        (CBI_SYNTHETIC, TreasuryFormat.CBI_RH),
        (MT940_SYNTHETIC, TreasuryFormat.MT940),
        *((path, TreasuryFormat.OPI) for path in OPI_SAMPLES),
        *(
            (path, TreasuryFormat.CAMT054 if "camt054" in path.name else TreasuryFormat.CAMT053)
            for path in CAMT_SAMPLES
        ),
        *((path, TreasuryFormat.MT940) for path in MT940_SAMPLES),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_detect_format_of_every_sample(path: Path, expected: TreasuryFormat) -> None:
    assert detect_format(head=path.read_bytes()[:HEAD_BYTES], name=path.name) is expected


def test_detect_format_csv_by_name_and_refuses_the_unknown() -> None:
    assert detect_format(head=b"data;importo\n", name="export.CSV") is TreasuryFormat.CSV
    with pytest.raises(TreasuryFormatError) as caught:
        detect_format(head=b"%PDF-1.7\n", name="giornale.pdf")
    assert caught.value.source_name == "giornale.pdf"
    assert "giornale.pdf" in str(caught.value)
    with pytest.raises(TreasuryFormatError):
        detect_format(head=b"<?xml version='1.0'?><FlussoRiversamento/>", name="fr.xml")


# --- OPI ---------------------------------------------------------------------------------------------


@needs_specs
@pytest.mark.parametrize("path", [*OPI_SAMPLES, OPI_SYNTHETIC], ids=lambda path: path.name)
def test_opi_sample_matches_its_xml(path: Path) -> None:
    root = parse_xml(path.read_bytes())
    expected = root.xpath("//movimento_conto_evidenza")
    movements = read_file(path)
    assert len(movements) == len(expected) > 0
    for movement, element in zip(movements, expected, strict=True):
        importo = Decimal(element.findtext("importo"))
        negative = (element.findtext("tipo_movimento") == "USCITA") != (
            element.findtext("tipo_operazione") == "STORNATO"
        )
        assert movement.amount == (-importo if negative else importo)
        assert movement.booking_date == date.fromisoformat(element.findtext("data_movimento"))
        assert movement.value_date == date.fromisoformat(element.findtext("data_valuta_ente"))
        assert movement.remittance == element.findtext("causale").strip()
        assert movement.ordering_party == element.findtext("cliente/anagrafica_cliente")
        assert movement.end_to_end_id == element.findtext("end_to_end_id")
        assert movement.bank_reference == element.findtext("codice_riferimento_operazione")
        assert movement.kind == element.findtext("tipo_documento")
        assert movement.status == element.findtext("tipo_operazione")
        assert movement.reversal is (element.findtext("tipo_operazione") == "STORNATO")
        assert movement.account == element.getparent().findtext("conto_evidenza")
    assert [movement.ordinal for movement in movements] == list(range(1, len(movements) + 1))
    assert len({movement.bank_movement_id for movement in movements}) == len(movements)


@needs_specs
def test_opi_synthetic_carries_the_pagopa_credits_and_the_storno() -> None:
    movements = read_file(OPI_SYNTHETIC)
    text = OPI_SYNTHETIC.read_text(encoding="utf-8")
    # Every id after a URI marker in the file is found, and only those.
    assert sorted(flows_in(movements)) == sorted(FLOW_ID.findall(text))
    sospesi = [movement for movement in movements if movement.kind == "SOSPESO ENTRATA"]
    assert len(sospesi) == text.count("<tipo_documento>SOSPESO ENTRATA</tipo_documento>")
    (storno,) = [movement for movement in movements if movement.reversal]
    assert storno.amount < 0
    assert storno.status == "STORNATO"
    assert parse_remittance(storno.remittance).kind == "flow"


@needs_specs
def test_opi_versions_agree_on_the_same_movements() -> None:
    by_version = {path.name: read_file(path) for path in OPI_SAMPLES}
    shapes = {
        name: [(m.amount, m.booking_date, m.remittance, m.account) for m in movements]
        for name, movements in by_version.items()
    }
    first = next(iter(shapes.values()))
    assert all(shape == first for shape in shapes.values())


# --- camt --------------------------------------------------------------------------------------------


def _local(element: object, name: str) -> list:  # type: ignore[type-arg]
    return element.xpath(f"./*[local-name()='{name}']")  # type: ignore[attr-defined]


@needs_specs
@pytest.mark.parametrize("path", [*CAMT_SAMPLES, CAMT_SYNTHETIC], ids=lambda path: path.name)
def test_camt_sample_matches_its_xml(path: Path) -> None:
    root = parse_xml(path.read_bytes())
    entries = root.xpath("//*[local-name()='Ntry']")
    movements = read_file(path)
    assert len(movements) == len(entries) > 0
    for movement, entry in zip(movements, entries, strict=True):
        amount = Decimal(_local(entry, "Amt")[0].text)
        indicator = _local(entry, "CdtDbtInd")[0].text
        assert movement.amount == (amount if indicator == "CRDT" else -amount)
        assert movement.currency == _local(entry, "Amt")[0].get("Ccy")
        ustrd = [line.text for line in entry.xpath(".//*[local-name()='Ustrd']")]
        for line in ustrd:
            assert line in movement.remittance
        refs = entry.xpath(".//*[local-name()='EndToEndId']/text()")
        assert movement.end_to_end_id == (refs[0] if len(set(refs)) == 1 else None)
        servicer_ref = entry.xpath("./*[local-name()='AcctSvcrRef']/text()")
        assert movement.bank_movement_id == (servicer_ref[0] if servicer_ref else None)
        value_date = entry.xpath("./*[local-name()='ValDt']/*[local-name()='Dt']/text()")
        assert movement.value_date == date.fromisoformat(value_date[0])
    iban = root.xpath("//*[local-name()='Stmt' or local-name()='Ntfctn']/*[local-name()='Acct']//text()")
    assert movements[0].account in [text.strip() for text in iban]


@needs_specs
def test_camt054_batch_entry_joins_its_transactions() -> None:
    (path,) = [path for path in CAMT_SAMPLES if "camt054" in path.name]
    (movement,) = read_file(path)
    assert movement.amount < 0
    assert movement.ordering_party == "MUELLER"
    assert movement.remittance.index("block 1") < movement.remittance.index("block 2")


def test_camt_long_ustrd_lines_continue_and_versions_read_alike() -> None:
    flow = "2024-07-25DEMOITMMXXX-S0000001"
    causale = "X" * 113 + f"/PUR/LGPE-RIVERSAMENTO/URI/{flow}"
    first, second = causale[:140], causale[140:]
    entries = [
        CamtEntry(amount="150.00", ustrd=(first, second), end_to_end_ids=("E2E-1",)),
        CamtEntry(
            amount="12.00", indicator="DBIT", reversal=True, booking="<DtTm>2024-07-26T10:00:00+02:00</DtTm>"
        ),
        CamtEntry(amount="5.00", ustrd=("a", "b"), end_to_end_ids=("A", "B")),
    ]
    for version in ("02", "08"):
        movements = read_bytes(camt053(entries, version=version), TreasuryFormat.CAMT053)
        assert [m.amount for m in movements] == [Decimal("150.00"), Decimal("-12.00"), Decimal("5.00")]
        assert parse_remittance(movements[0].remittance).reference == flow
        assert movements[0].end_to_end_id == "E2E-1"
        assert movements[0].ordering_party == "PSP DEMO SPA"
        assert movements[1].reversal is True
        assert movements[1].booking_date == date(2024, 7, 26)
        assert movements[2].remittance == "a b"
        assert movements[2].end_to_end_id is None


# --- CBI RH ------------------------------------------------------------------------------------------

_CBI_62 = re.compile(r"^ 62\d{10}(\d{6})(\d{6})([CD])(\d{12},\d{2})", re.MULTILINE)


@needs_specs
def test_cbi_rh_sample_matches_its_records() -> None:
    text = CBI_SYNTHETIC.read_text(encoding="latin-1")
    expected = _CBI_62.findall(text)
    movements = read_file(CBI_SYNTHETIC)
    assert len(movements) == len(expected) > 0
    for movement, (value, booking, sign, amount) in zip(movements, expected, strict=True):
        number = Decimal(amount.replace(",", "."))
        assert movement.amount == (number if sign == "C" else -number)
        assert movement.value_date.strftime("%d%m%y") == value  # type: ignore[union-attr]
        assert movement.booking_date.strftime("%d%m%y") == booking  # type: ignore[union-attr]
    ri1 = [line[16:].strip() for line in text.splitlines() if line[13:16] == "RI1"]
    assert [m.remittance for m in movements] == ri1
    assert sorted(flows_in(movements)) == sorted(FLOW_ID.findall(text))
    e2e = [line[51:86].strip() for line in text.splitlines() if line[13:16] == "ID1"]
    assert [m.end_to_end_id for m in movements] == e2e
    iban_record = next(line for line in text.splitlines() if line.startswith(" 61"))
    assert movements[0].account == iban_record[99:103] + iban_record[51:74]


def test_cbi_rh_remittance_over_two_records_and_containers() -> None:
    flow = "2024-07-25DEMOITMMXXX-S0000001"
    causale = "BONIFICO " + "Z" * 80 + f" /PUR/LGPE-RIVERSAMENTO/URI/{flow}"
    records = [
        "61" + "0000001".ljust(21) + "05428",
        *cbi_movement(
            number=1, sign="C", amount="150,00", remittance=[causale[:104], causale[104:]], e2e="E2E-1"
        ),
        *cbi_movement(number=2, sign="D", amount="12,00", remittance=[]),
    ]
    # Movement 2 carries its causale in bank containers instead of RI records.
    records.append("630000001002ZZ1QUOTA PSP")
    records.append(f"630000001002ZZ3/PUR/LGPE-RIVERSAMENTO/URI/{flow}")
    movements = read_bytes(cbi_rh(records), TreasuryFormat.CBI_RH)
    assert [m.amount for m in movements] == [Decimal("150.00"), Decimal("-12.00")]
    assert movements[0].remittance == causale
    assert movements[0].end_to_end_id == "E2E-1"
    assert movements[0].bank_movement_id == "BT00000000000001"
    assert movements[1].remittance.startswith("/ZZ1QUOTA PSP/ZZ3/PUR/")
    assert flows_in(movements) == [flow, flow]


def test_cbi_rh_without_line_breaks_reads_the_same() -> None:
    records = cbi_movement(number=1, sign="C", amount="1,00", remittance=["/RFB/01000000000000144/1.00"])
    with_breaks = cbi_rh(records)
    without = with_breaks.replace(b"\r\n", b"")
    assert read_bytes(without, TreasuryFormat.CBI_RH) == read_bytes(with_breaks, TreasuryFormat.CBI_RH)


# --- MT940 -------------------------------------------------------------------------------------------

_MT940_61 = re.compile(r"^:61:\d{6}\d{0,4}(R?[CD])[A-Z]?(\d+,\d{0,2})", re.MULTILINE)


@needs_specs
@pytest.mark.parametrize("path", [*MT940_SAMPLES, MT940_SYNTHETIC], ids=lambda path: path.name)
def test_mt940_sample_matches_its_statement_lines(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    expected = _MT940_61.findall(text)
    movements = read_file(path)
    assert len(movements) == len(expected) > 0
    for movement, (mark, amount) in zip(movements, expected, strict=True):
        number = Decimal(amount.replace(",", "."))
        assert movement.amount == (-number if mark in ("D", "RC") else number)
        assert movement.reversal is mark.startswith("R")


@needs_specs
def test_mt940_synthetic_joins_wrapped_details() -> None:
    movements = read_file(MT940_SYNTHETIC)
    unwrapped = re.sub(r"\r?\n(?!:)", "", MT940_SYNTHETIC.read_text(encoding="utf-8"))
    assert sorted(flows_in(movements)) == sorted(FLOW_ID.findall(unwrapped))
    assert all("\n" not in movement.remittance for movement in movements)
    assert {movement.account for movement in movements} == set(
        re.findall(r"^:25:(\S+)", unwrapped, re.MULTILINE)
    )


# --- the same day in four formats ------------------------------------------------------------------


@needs_specs
def test_four_formats_of_the_same_day_give_the_same_movements() -> None:
    readings = {
        fmt: read_file(path)
        for fmt, path in (
            ("opi", OPI_SYNTHETIC),
            ("camt", CAMT_SYNTHETIC),
            ("cbi", CBI_SYNTHETIC),
            ("mt940", MT940_SYNTHETIC),
        )
    }

    def pagopa(movements: list[Movement]) -> list[tuple[object, ...]]:
        rows = []
        for movement in movements:
            named = parse_remittance(movement.remittance)
            if named.kind in ("flow", "iuv"):
                rows.append(
                    (
                        movement.amount,
                        movement.value_date,
                        movement.booking_date,
                        named.kind,
                        named.reference.casefold() if named.reference else None,
                        named.integrative,
                    )
                )
        return rows

    reference = pagopa(readings["camt"])
    flows_and_two_single_payments = len(FLOW_ID.findall(CAMT_SYNTHETIC.read_text(encoding="utf-8"))) + 2
    assert len(reference) == flows_and_two_single_payments
    for name, movements in readings.items():
        assert pagopa(movements) == reference, name

    def causali(movements: list[Movement]) -> list[str]:
        return [m.remittance for m in movements if parse_remittance(m.remittance).kind in ("flow", "iuv")]

    assert causali(readings["opi"]) == causali(readings["camt"]) == causali(readings["cbi"])
    # MT940 prints the same causale inside its own text (bank prefix, TRN suffix).
    for causale, details in zip(causali(readings["camt"]), causali(readings["mt940"]), strict=True):
        assert causale in details
    # The non-pagoPA credit is in the three bank statements alike.
    others = {
        name: [(m.amount, m.value_date) for m in movements if parse_remittance(m.remittance).kind == "none"]
        for name, movements in readings.items()
        if name != "opi"
    }
    assert others["camt"] == others["cbi"] == others["mt940"] != []

    def end_to_end(movements: list[Movement]) -> list[str | None]:
        return [m.end_to_end_id for m in movements if parse_remittance(m.remittance).kind in ("flow", "iuv")]

    assert end_to_end(readings["opi"]) == end_to_end(readings["camt"]) == end_to_end(readings["cbi"])
    # MT940 carries the end-to-end id in the 16-character customer reference of :61:.
    assert end_to_end(readings["mt940"]) == [e2e[:16] if e2e else e2e for e2e in end_to_end(readings["camt"])]

    def prints(movements: list[Movement]) -> list[str]:
        return [m.fingerprint() for m in movements if parse_remittance(m.remittance).kind in ("flow", "iuv")]

    assert (
        prints(readings["opi"])
        == prints(readings["camt"])
        == prints(readings["cbi"])
        == prints(readings["mt940"])
    )


# --- Movement ---------------------------------------------------------------------------------------


def test_movement_money_and_fingerprint() -> None:
    base = Movement(
        amount=Decimal("150"),
        remittance="/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25A-1",
        ordinal=1,
        value_date=date(2024, 7, 26),
    )
    assert str(base.amount) == "150.00"
    with pytest.raises(ValueError):
        Movement(amount=Decimal("NaN"), ordinal=1)
    with pytest.raises(ValueError):
        base.amount = Decimal("1")  # type: ignore[misc]
    same = base.model_copy(
        update={
            "remittance": "BONIFICO /pur/lgpe-riversamento/uri/2024-07-25a-1 TRN 1",
            "ordinal": 9,
            "bank_reference": "X",
            "account": "IT00",
        }
    )
    assert same.fingerprint() == base.fingerprint()
    assert len(base.fingerprint()) == 64
    for change in (
        {"amount": Decimal("-150.00")},
        {"value_date": date(2024, 7, 27)},
        {"remittance": "/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25A-2"},
        {"currency": "CHF"},
    ):
        assert base.model_copy(update=change).fingerprint() != base.fingerprint(), change
    plain = Movement(amount=Decimal("1000"), remittance="Trasferimento  fondi", ordinal=1)
    assert plain.fingerprint() == plain.model_copy(update={"remittance": "TRASFERIMENTO FONDI"}).fingerprint()


def test_format_error_carries_its_context() -> None:
    error = TreasuryFormatError("amount is not a number", source_name="gdc.xml", record=7, field="importo")
    assert (error.source_name, error.record, error.field) == ("gdc.xml", 7, "importo")
    assert str(error) == "gdc.xml, record 7, field importo: amount is not a number"
    assert isinstance(error, ValueError)


# --- malformed and hostile files ----------------------------------------------------------------------


def _nth_replaced(data: bytes, old: bytes, new: bytes, nth: int) -> bytes:
    start = -1
    for _ in range(nth):
        start = data.index(old, start + 1)
    return data[:start] + new + data[start + len(old) :]


@needs_specs
@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b"<importo>215.50</importo>", b"<importo>215,50</importo>", "importo"),
        (
            b"<tipo_movimento>ENTRATA</tipo_movimento>",
            b"<tipo_movimento>BOH</tipo_movimento>",
            "tipo_movimento",
        ),
        (
            b"<data_movimento>2024-07-26</data_movimento>",
            b"<data_movimento>26/07/2024</data_movimento>",
            "data_movimento",
        ),
        (
            b"<tipo_operazione>ESEGUITO</tipo_operazione>",
            b"<tipo_operazione>FATTO</tipo_operazione>",
            "tipo_operazione",
        ),
    ],
)
def test_opi_bad_field_names_record_and_field(old: bytes, new: bytes, field: str) -> None:
    data = OPI_SYNTHETIC.read_bytes()
    nth = 1 if old.startswith(b"<importo>215") else 2
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(_nth_replaced(data, old, new, nth), TreasuryFormat.OPI)
    assert (caught.value.record, caught.value.field) == (2, field)
    assert "record 2" in str(caught.value) and f"field {field}" in str(caught.value)
    assert caught.value.source_name == "test-file"


@needs_specs
def test_opi_cut_file_names_the_line() -> None:
    data = OPI_SYNTHETIC.read_bytes()
    cut = data[: data.index(b"<causale>/RFB/")]
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(cut, TreasuryFormat.OPI)
    assert caught.value.record is not None and caught.value.record >= cut.count(b"\n")


def test_opi_reader_refuses_another_document() -> None:
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(camt053([CamtEntry(amount="1.00")]), TreasuryFormat.OPI)
    assert caught.value.field == "flusso_giornale_di_cassa"


@pytest.mark.parametrize("fmt", [TreasuryFormat.OPI, TreasuryFormat.CAMT053])
def test_doctype_and_entity_expansion_are_refused(fmt: TreasuryFormat) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b"<flusso_giornale_di_cassa><esercizio>&lol2;</esercizio></flusso_giornale_di_cassa>"
    )
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(bomb, fmt)
    assert isinstance(caught.value.__cause__, UnsafeXMLError)
    external = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Document>&x;</Document>'
    )
    with pytest.raises(TreasuryFormatError):
        read_bytes(external, fmt)


def test_camt_bad_indicator_names_the_entry() -> None:
    data = camt053([CamtEntry(amount="1.00"), CamtEntry(amount="2.00", indicator="XXXX")])
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(data, TreasuryFormat.CAMT053)
    assert (caught.value.record, caught.value.field) == (2, "CdtDbtInd")
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(camt053([CamtEntry(amount="1.005")]), TreasuryFormat.CAMT053)
    assert (caught.value.record, caught.value.field) == (1, "Amt")


@pytest.mark.parametrize(
    ("mutate", "line", "field"),
    [
        (
            lambda records: records.__setitem__(
                1, records[1].replace("C000000000150,00", "C0000000001X0,00")
            ),
            3,
            "importo",
        ),
        (lambda records: records.__setitem__(1, records[1].replace("260724C", "260724X")), 3, "segno"),
        (
            lambda records: records.__setitem__(1, records[1].replace("260724260724", "260724310224")),
            3,
            "data contabile",
        ),
        (lambda records: records.insert(1, "630000001001RI1ORFANO"), 3, "tipo record"),
        (
            lambda records: records.__setitem__(2, records[2].replace("630000001001", "630000001009")),
            4,
            "progressivo movimento",
        ),
        (lambda records: records.insert(2, "99XXXX"), 4, "tipo record"),
    ],
)
def test_cbi_rh_bad_record_names_line_and_field(mutate: object, line: int, field: str) -> None:
    records = [
        "61" + "0000001".ljust(21) + "05428",
        *cbi_movement(number=1, sign="C", amount="150,00", remittance=["/RFB/01000000000000144/150.00"]),
    ]
    mutate(records)  # type: ignore[operator]
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(cbi_rh(records), TreasuryFormat.CBI_RH)
    assert (caught.value.record, caught.value.field) == (line, field)


def test_cbi_rh_needs_its_header_and_fixed_width() -> None:
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(b"hello\r\n", TreasuryFormat.CBI_RH)
    assert caught.value.field == "RH"
    too_long = cbi_rh([]).replace(b"\r\n", b"X" * 7 + b"\r\n", 1)
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(too_long, TreasuryFormat.CBI_RH)
    assert (caught.value.record, caught.value.field) == (1, "record length")


@needs_specs
@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b":61:2407260726C215,50", b":61:2407260726C21X5,50", ":61: amount"),
        (b":61:2407260726C215,50", b":61:2413260726C215,50", ":61: value date"),
        (b":61:2407260726C215,50", b":61:24072607Z6C215,50", ":61:"),
    ],
)
def test_mt940_bad_statement_line_names_line_and_field(old: bytes, new: bytes, field: str) -> None:
    data = MT940_SYNTHETIC.read_bytes()
    line = data[: data.index(old)].count(b"\n") + 1
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(data.replace(old, new), TreasuryFormat.MT940)
    assert (caught.value.record, caught.value.field) == (line, field)


def test_mt940_without_statement_is_refused() -> None:
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(b"nothing here\n", TreasuryFormat.MT940)
    assert caught.value.field == ":20:"


# --- CSV ---------------------------------------------------------------------------------------------

CSV_HEADER = "Id;IBAN;Data contabile;Data valuta;Importo;Causale;Causale 2;Ordinante;E2E\n"
SIGNED = CsvMapping(
    amount="Importo",
    account="IBAN",
    value_date="Data valuta",
    booking_date="Data contabile",
    remittance=("Causale", "Causale 2"),
    ordering_party="Ordinante",
    end_to_end_id="E2E",
    bank_movement_id="Id",
)


def test_csv_signed_amount_with_decimal_comma() -> None:
    data = (
        "Id;IBAN;Data contabile;Data valuta;Importo;Causale;Causale 2;Ordinante;E2E\r\n"
        "1;IT60X0542811101000000123456;26/07/2024;26/07/2024;1.150,00;"
        '"/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25DEMOITMMXXX-S0000001";;PSP DEMO;E2E-1\r\n'
    )
    data += '2;IT60X0542811101000000123456;26/07/2024;;-12,00;"STORNO";"riga\ndue";;\r\n'
    data += ";;;;;;;;\r\n"
    movements = read_bytes(data.encode("utf-8-sig"), TreasuryFormat.CSV, csv_mapping=SIGNED)
    assert [m.amount for m in movements] == [Decimal("1150.00"), Decimal("-12.00")]
    assert flows_in(movements) == ["2024-07-25DEMOITMMXXX-S0000001"]
    assert movements[0].account == "IT60X0542811101000000123456"
    assert movements[0].booking_date == date(2024, 7, 26)
    assert movements[1].value_date is None
    assert movements[1].remittance == "STORNO riga\ndue"
    assert (movements[0].end_to_end_id, movements[1].end_to_end_id) == ("E2E-1", None)
    assert [m.ordinal for m in movements] == [1, 2]
    assert movements[0].bank_movement_id == "1"


def test_csv_credit_debit_columns_and_point_decimals() -> None:
    mapping = CsvMapping(
        delimiter=",",
        decimal_comma=False,
        date_format="%Y-%m-%d",
        credit="Avere",
        debit="Dare",
        booking_date="Data",
        remittance=("Descrizione",),
        skip_lines=2,
    )
    data = "Banca Esempio\nEstratto conto\nData,Dare,Avere,Descrizione\n"
    data += "2024-07-26,,25.00,/RFB/000000000012345/25.00\n"
    data += "2024-07-26,12.00,,COMMISSIONI\n"
    movements = read_bytes(data.encode(), TreasuryFormat.CSV, csv_mapping=mapping)
    assert [m.amount for m in movements] == [Decimal("25.00"), Decimal("-12.00")]
    assert parse_remittance(movements[0].remittance).reference == "000000000012345"


def test_csv_sign_column() -> None:
    mapping = CsvMapping(amount="Importo", sign="Segno", remittance=("Causale",))
    data = "Importo;Segno;Causale\n10,00;D;a\n10,00;AVERE;b\n"
    assert [m.amount for m in read_bytes(data.encode(), TreasuryFormat.CSV, csv_mapping=mapping)] == [
        Decimal("-10.00"),
        Decimal("10.00"),
    ]
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(b"Importo;Segno;Causale\n10,00;?;a\n", TreasuryFormat.CSV, csv_mapping=mapping)
    assert (caught.value.record, caught.value.field) == (2, "Segno")


@pytest.mark.parametrize(
    ("data", "line", "field"),
    [
        ("Id;IBAN;Data contabile;Data valuta;Importo;Causale;Ordinante;E2E\n", 1, "Causale 2"),
        (
            CSV_HEADER + "1;;26/07/2024;;abc;;;;\n",
            2,
            "Importo",
        ),
        (
            CSV_HEADER + "1;;26/07/2024;;1,00;;;;\n2;;2024-07-26;;1,00;;;;\n",
            3,
            "Data contabile",
        ),
    ],
)
def test_csv_errors_name_line_and_column(data: str, line: int, field: str) -> None:
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(data.encode(), TreasuryFormat.CSV, csv_mapping=SIGNED)
    assert (caught.value.record, caught.value.field) == (line, field)


def test_csv_in_the_wrong_encoding_names_the_line() -> None:
    data = CSV_HEADER.encode() + "1;;26/07/2024;;1,00;Città;;;\n".encode("latin-1")
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(data, TreasuryFormat.CSV, csv_mapping=SIGNED)
    assert (caught.value.record, caught.value.field) == (2, "encoding")
    latin = SIGNED.model_copy(update={"encoding": "latin-1"})
    (movement,) = read_bytes(data, TreasuryFormat.CSV, csv_mapping=latin)
    assert movement.remittance == "Città"


def test_csv_mapping_is_validated_and_required() -> None:
    with pytest.raises(ValueError):
        CsvMapping(amount="Importo", credit="Avere", debit="Dare")
    with pytest.raises(ValueError):
        CsvMapping(credit="Avere")
    with pytest.raises(ValueError):
        CsvMapping()
    with pytest.raises(TreasuryFormatError) as caught:
        read_bytes(b"a;b\n", TreasuryFormat.CSV)
    assert caught.value.field == "csv_mapping"


# --- a big file -------------------------------------------------------------------------------------


def test_opi_100k_movements_stream_in_bounded_memory(tmp_path: Path) -> None:
    count = 100_000
    path = tmp_path / "gdc-100k.xml"
    expected_total = Decimal("0.00")

    def rows() -> Iterator[OpiRow]:
        nonlocal expected_total
        for index in range(1, count + 1):
            row = opi_flow_row(index)
            debit = (row.tipo_movimento == "USCITA") != (row.tipo_operazione == "STORNATO")
            expected_total += -row.importo if debit else row.importo
            yield row

    with path.open("wb") as out:
        assert write_opi_giornale(out, rows()) == count
    seen = 0
    total = Decimal("0.00")
    last: Movement | None = None
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with path.open("rb") as stream:
            for movement in read_movements(stream, fmt=TreasuryFormat.OPI, source_name=path.name):
                seen += 1
                total += movement.amount
                last = movement
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert seen == count
    assert total == expected_total
    assert last is not None and last.ordinal == count
    assert parse_remittance(last.remittance).reference == opi_flow_row(count).causale.rsplit("/", 1)[1]
    # The file is over 100 MB; a reader that kept the tree would hold hundreds of MB of proxies.
    assert path.stat().st_size > 50 * 2**20
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert elapsed < 60, f"{elapsed:.1f} s under tracemalloc"


def test_opi_row_factory_shapes() -> None:
    row = OpiRow(importo=Decimal("1.00"), causale="x")
    buffer = io.BytesIO()
    write_opi_giornale(buffer, [row, row])
    assert len(read_bytes(buffer.getvalue(), TreasuryFormat.OPI)) == 2
