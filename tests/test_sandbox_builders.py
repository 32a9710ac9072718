"""Tests of the sandbox's message builders: reporting flows (XML, JSON) and treasury journals."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.settings import get_settings
from rules.xmlsafe import parse_xml
from sandbox.builders import (
    Credit,
    FlowPayment,
    FlowSpec,
    FlowSpecError,
    FlowValidationError,
    JournalFormat,
    JournalSpecError,
    JournalValidationError,
    build_flow_json,
    build_flow_xml,
    build_journal,
    flow_header_json,
    flow_list_item_json,
    flow_totals,
    journal_filename,
    payment_to_json,
    validate_flow_xml,
    validate_journal,
)
from sandbox.builders.reporting import LEGACY_FLOW_XSD

NS = {"p": "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"}
CAMT = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"}
IBAN = "IT60X0542811101000000123456"
EC = "01234567890"
DAY = date(2024, 7, 26)


# --- factories ------------------------------------------------------------------------------------


def make_payment(**overrides: object) -> FlowPayment:
    values: dict[str, object] = {
        "iuv": "01000000000000144",
        "iur": "IUR-0001",
        "transfer_index": 1,
        "amount": Decimal("100.00"),
        "outcome": 0,
        "pay_date": date(2024, 7, 25),
    }
    values.update(overrides)
    return FlowPayment(**values)  # type: ignore[arg-type]


def make_flow(**overrides: object) -> FlowSpec:
    values: dict[str, object] = {
        "id_flusso": "2024-07-25ABCDITRRXXX-0000012345",
        "revision": 1,
        "flow_datetime": datetime(2024, 7, 25, 21, 10, tzinfo=UTC),
        "settlement_ref": "SCT-0000012345",
        "settlement_date": DAY,
        "psp_id": "ABCDITRRXXX",
        "psp_name": "ABCD BANCA SPA",
        "bic": "ABCDITRRXXX",
        "ec_fiscal_code": EC,
        "ec_name": "COMUNE DI ESEMPIO & C.",
        "payments": (make_payment(),),
    }
    values.update(overrides)
    return FlowSpec(**values)  # type: ignore[arg-type]


ALL_OUTCOMES = (
    make_payment(iuv="000000000000101", iur="IUR-1", amount=Decimal("50.00"), outcome=0),
    make_payment(iuv="000000000000101", iur="IUR-1", transfer_index=2, amount=Decimal("15.50"), outcome=0),
    make_payment(iuv="000000000000102", iur="IUR-2", amount=Decimal("20.00"), outcome=3),
    make_payment(iuv="000000000000103", iur="IUR-3", amount=Decimal("30.01"), outcome=4),
    make_payment(iuv="000000000000104", iur="IUR-4", amount=Decimal("0.01"), outcome=8),
    make_payment(iuv="000000000000105", iur="IUR-5", amount=Decimal("999.99"), outcome=9),
)


def make_credit(n: int, **overrides: object) -> Credit:
    values: dict[str, object] = {
        "amount": Decimal(f"{n}.{n % 100:02d}"),
        "value_date": DAY,
        "booking_date": DAY,
        "remittance": f"/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25ABCDITRRXXX-{n:010d}",
        "ordering_party": "ABCD BANCA SPA SERVIZIO PAGOPA",
        "end_to_end_id": f"E2E-{n:08d}",
        "bank_reference": f"0306924207260000000{n:09d}IT",
        "bank_movement_id": f"BT{n:014d}",
    }
    values.update(overrides)
    return Credit(**values)  # type: ignore[arg-type]


LONG_REMITTANCE = (
    "/ZZ2/ACCREDITO DA PSP ABCD BANCA SPA SERVIZIO PAGOPA PER CONTO DEL COMUNE DI ESEMPIO"
    "/ZZ3/RIVERSAMENTO CUMULATIVO/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25ABCDITRRXXX-0000012345"
)
SAMPLE_CREDITS = (
    make_credit(1, remittance="/PUR/LGPE-RIVERSAMENTO/TXT/0/URI/2024-07-25ABCDITRRXXX-0000012345"),
    make_credit(2, end_to_end_id=None, remittance="/RFB/000000000012345/25.00/TXT/Diritti & <segreteria>"),
    make_credit(3, remittance=LONG_REMITTANCE, ordering_party="A" * 60),
    make_credit(
        4, reversal=True, remittance="STORNO /PUR/LGPE-RIVERSAMENTO/URI/2024-07-24DEMOITMMXXX-S0000000"
    ),
    make_credit(5, amount=Decimal("1000.00"), remittance="TRASFERIMENTO FONDI L.R. 12/2024 ACCONTO"),
)


def journal(fmt: JournalFormat, credits: tuple[Credit, ...] = SAMPLE_CREDITS, **overrides: object) -> bytes:
    values: dict[str, object] = {
        "fmt": fmt,
        "account_iban": IBAN,
        "ec_fiscal_code": EC,
        "ec_name": "COMUNE DI ESEMPIO",
        "day": DAY,
        "sequence": 1,
        "credits": credits,
    }
    values.update(overrides)
    return build_journal(**values)  # type: ignore[arg-type]


def union_flow_xsd():  # type: ignore[no-untyped-def]
    return (
        get_settings().treasury_specs_dir
        / "pagopa-fr"
        / "FlussoRiversamento_1_0_4_esiti_0-3-4-8-9_from_p4pa.xsd"
    )


# --- reporting flows: XML -------------------------------------------------------------------------


def test_flow_with_every_outcome_is_valid_and_totals_match() -> None:
    spec = make_flow(payments=ALL_OUTCOMES)
    data = build_flow_xml(spec)
    validate_flow_xml(data, xsd_path=union_flow_xsd())
    root = parse_xml(data)
    assert root.findtext("p:numeroTotalePagamenti", namespaces=NS) == "6"
    assert root.findtext("p:importoTotalePagamenti", namespaces=NS) == "1115.51"
    assert flow_totals(spec) == (6, Decimal("1115.51"))
    lines = root.findall("p:datiSingoliPagamenti", namespaces=NS)
    assert [x.findtext("p:codiceEsitoSingoloPagamento", namespaces=NS) for x in lines] == list("003489")
    assert sum(Decimal(x.findtext("p:singoloImportoPagato", namespaces=NS)) for x in lines) == Decimal(
        "1115.51"
    )
    assert root.findtext("p:dataOraFlusso", namespaces=NS) == "2024-07-25T23:10:00"  # Italian time, no offset
    assert (
        root.findtext("p:istitutoRicevente/p:denominazioneRicevente", namespaces=NS)
        == "COMUNE DI ESEMPIO & C."
    )


def test_current_schema_takes_flows_without_revoked_lines_only() -> None:
    current = make_flow(payments=tuple(p for p in ALL_OUTCOMES if p.outcome != 3))
    validate_flow_xml(build_flow_xml(current))  # 1.0.5 by default
    with pytest.raises(FlowValidationError, match="codiceEsitoSingoloPagamento") as caught:
        validate_flow_xml(build_flow_xml(make_flow(payments=ALL_OUTCOMES)))
    assert caught.value.errors
    legacy = make_flow(payments=tuple(p for p in ALL_OUTCOMES if p.outcome in (0, 3, 9)))
    validate_flow_xml(build_flow_xml(legacy), xsd_path=get_settings().spec_path(LEGACY_FLOW_XSD))


def test_rebuild_gives_identical_bytes() -> None:
    first = build_flow_xml(make_flow(payments=ALL_OUTCOMES))
    again = build_flow_xml(make_flow(payments=tuple(replace(p) for p in ALL_OUTCOMES)))
    assert first == again
    assert build_flow_json(make_flow()) == build_flow_json(make_flow())


def test_optional_bic_is_left_out() -> None:
    data = build_flow_xml(make_flow(bic=None))
    validate_flow_xml(data)
    assert parse_xml(data).find("p:codiceBicBancaDiRiversamento", namespaces=NS) is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"payments": (make_payment(amount=Decimal("-20.00"), outcome=3),)}, "payment 1 amount"),
        ({"payments": (make_payment(amount=Decimal("0.00")),)}, "payment 1 amount"),
        ({"payments": (make_payment(amount=Decimal("1.005")),)}, "two decimal places"),
        ({"id_flusso": "X" * 36}, "id_flusso"),
        ({"id_flusso": "2024-07-25 BAD"}, "id_flusso"),
        ({"payments": ()}, "at least one payment"),
        ({"payments": (make_payment(transfer_index=6),)}, "transfer_index"),
        ({"payments": (make_payment(outcome=5),)}, "outcome"),
        ({"payments": (make_payment(iuv="1" * 36),)}, "iuv"),
        ({"psp_name": "AB"}, "psp_name"),
        ({"flow_datetime": datetime(2024, 7, 25, 23, 10)}, "timezone-aware"),
        ({"revision": 0}, "revision"),
        ({"declared_total": Decimal("-1.00")}, "header total"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_error(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(FlowSpecError, match=fragment) as caught:
        build_flow_xml(make_flow(**overrides))
    assert caught.value.problems
    with pytest.raises(FlowSpecError):
        build_flow_json(make_flow(**overrides))


def test_every_problem_is_listed() -> None:
    with pytest.raises(FlowSpecError) as caught:
        build_flow_xml(
            make_flow(id_flusso="X" * 40, payments=(make_payment(amount=Decimal("-1.00"), iur=""),))
        )
    assert len(caught.value.problems) == 3


def test_non_strict_mode_writes_what_some_psps_send() -> None:
    revoked = make_payment(iuv="000000000000801", amount=Decimal("-20.00"), outcome=3)
    spec = make_flow(payments=(make_payment(amount=Decimal("50.00")), revoked))
    data = build_flow_xml(spec, strict=False)
    root = parse_xml(data)
    assert root.findtext("p:importoTotalePagamenti", namespaces=NS) == "30.00"
    with pytest.raises(FlowValidationError, match="singoloImportoPagato"):
        validate_flow_xml(data, xsd_path=union_flow_xsd())


def test_declared_totals_stage_header_anomalies() -> None:
    spec = make_flow(declared_count=3, declared_total=Decimal("99.00"))
    root = parse_xml(build_flow_xml(spec))
    assert root.findtext("p:numeroTotalePagamenti", namespaces=NS) == "3"
    assert root.findtext("p:importoTotalePagamenti", namespaces=NS) == "99.00"
    header = flow_header_json(spec, datetime(2024, 7, 26, tzinfo=UTC))
    assert (header["totPayments"], header["sumPayments"]) == (3, 99.0)
    assert (header["computedTotPayments"], header["computedSumPayments"]) == (1, 100.0)


def test_malformed_document_is_a_validation_error() -> None:
    with pytest.raises(FlowValidationError, match="malformed"):
        validate_flow_xml(b"<FlussoRiversamento>")


# --- reporting flows: JSON ------------------------------------------------------------------------


def _openapi(path: str) -> dict:  # type: ignore[type-arg]
    return json.loads(path_text(path))


def path_text(path: str) -> str:
    return get_settings().spec_path(path).read_text(encoding="utf-8")


def test_flow_json_follows_the_fdr_openapi() -> None:
    schemas = _openapi("openapi/fdr_organization.json")["components"]["schemas"]
    master = json.loads(
        (get_settings().treasury_specs_dir / "pagopa-fr" / "fdr_organization_openapi.json").read_text("utf-8")
    )["components"]["schemas"]
    spec = make_flow(payments=ALL_OUTCOMES)
    published = datetime(2024, 7, 26, 6, 0, tzinfo=UTC)
    flow = build_flow_json(spec, published=published)
    json.dumps(flow)  # serialisable as is
    header = flow["header"]
    assert set(header) == set(schemas["SingleFlowResponse"]["properties"])
    assert set(schemas["Sender"]["required"]) <= set(header["sender"])
    assert set(schemas["Receiver"]["required"]) <= set(header["receiver"])
    assert header["sender"]["type"] in schemas["SenderTypeEnum"]["enum"]
    assert header["status"] in schemas["ReportingFlowStatusEnum"]["enum"]
    assert header["published"] == "2024-07-26T06:00:00Z"
    assert header["fdrDate"] == "2024-07-25T21:10:00Z"
    assert (header["totPayments"], header["sumPayments"]) == (6, 1115.51)
    statuses = set(master["Payment"]["properties"]["payStatus"]["enum"])
    for n, payment in enumerate(flow["payments"], start=1):
        assert set(payment) == set(schemas["Payment"]["required"])
        assert payment["index"] == n
        assert payment["payStatus"] in statuses
    assert [p["payStatus"] for p in flow["payments"]] == [
        "EXECUTED",
        "EXECUTED",
        "REVOKED",
        "STAND_IN",
        "STAND_IN_NO_RPT",
        "NO_RPT",
    ]
    assert set(flow_list_item_json(spec, published)) == set(schemas["FlowByPSP"]["properties"])


def test_payment_to_json_for_paging() -> None:
    assert payment_to_json(make_payment(amount=Decimal("15.50"), transfer_index=2), 7) == {
        "index": 7,
        "iuv": "01000000000000144",
        "iur": "IUR-0001",
        "idTransfer": 2,
        "pay": 15.5,
        "payStatus": "EXECUTED",
        "payDate": "2024-07-25T00:00:00Z",
    }


# --- treasury journals ----------------------------------------------------------------------------


def _opi_movements(data: bytes) -> list[tuple[Decimal, str, bool]]:
    root = parse_xml(data)
    return [
        (Decimal(m.findtext("importo")), m.findtext("causale"), m.findtext("tipo_operazione") == "STORNATO")
        for m in root.xpath("//movimento_conto_evidenza")
    ]


def _camt_entries(data: bytes) -> list[tuple[Decimal, str, bool]]:
    root = parse_xml(data)
    return [
        (
            Decimal(e.xpath("string(c:Amt)", namespaces=CAMT)),
            "".join(e.xpath(".//c:RmtInf/c:Ustrd/text()", namespaces=CAMT)),
            e.xpath("string(c:CdtDbtInd)", namespaces=CAMT) == "DBIT",
        )
        for e in root.xpath("//c:Ntry", namespaces=CAMT)
    ]


def _cbi_records(data: bytes) -> list[str]:
    assert data.endswith(b"\r\n")
    return data.decode("latin-1").split("\r\n")[:-1]


def _cbi_movements(data: bytes) -> list[tuple[Decimal, str, bool]]:
    found: list[tuple[Decimal, str, bool]] = []
    for record in _cbi_records(data):
        kind = record[1:3]
        if kind == "62":
            amount = Decimal(record[26:41].replace(",", "."))
            found.append((amount, "", record[25] == "D"))
        elif kind == "63" and record[13:16] == "RI1":
            found[-1] = (found[-1][0], record[16:120], found[-1][2])
        elif kind == "63" and record[13:16] == "RI2":
            found[-1] = (found[-1][0], found[-1][1] + record[16:120], found[-1][2])
    return [(amount, text.rstrip(), reversal) for amount, text, reversal in found]


def expected(credits: tuple[Credit, ...]) -> list[tuple[Decimal, str, bool]]:
    return [(c.amount, c.remittance, c.reversal) for c in credits]


def test_opi_journal_is_valid_and_reads_back() -> None:
    data = journal(JournalFormat.OPI_1_8)
    validate_journal(data, fmt=JournalFormat.OPI_1_8)
    assert _opi_movements(data) == expected(SAMPLE_CREDITS)
    root = parse_xml(data)
    assert root.findtext("testata_messaggio/codice_ABI_BT") == "05428"
    assert root.findtext("identificativo_flusso_BT") == f"GDC-20240727{EC}20240726#001#001"
    assert {m.findtext("tipo_documento") for m in root.iter("movimento_conto_evidenza")} == {
        "SOSPESO ENTRATA"
    }
    second = root.xpath("//movimento_conto_evidenza")[1]
    assert second.findtext("end_to_end_id") == "NOTPROVIDED"
    assert second.findtext("codice_riferimento_interno") == "BT00000000000002"
    assert second.findtext("codice_riferimento_operazione") == SAMPLE_CREDITS[1].bank_reference
    info = root.find("informazioni_conto_evidenza")
    assert info.findtext("totale_entrate_conto_evidenza") == "1006.06"
    assert info.findtext("totale_uscite_conto_evidenza") == "4.04"
    assert info.findtext("saldo_finale_conto_evidenza") == "1002.02"


def test_opi_journal_without_the_signature_is_not_schema_valid() -> None:
    # Documents why a dummy signature is written: the 1.8 XSD requires ds:Signature.
    data = journal(JournalFormat.OPI_1_8)
    root = parse_xml(data)
    for signature in root.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        root.remove(signature)
    from lxml import etree

    with pytest.raises(JournalValidationError, match="Signature"):
        validate_journal(etree.tostring(root), fmt=JournalFormat.OPI_1_8)


def test_camt053_journal_is_valid_and_reads_back() -> None:
    data = journal(JournalFormat.CAMT053, opening_balance=Decimal("100000.00"))
    validate_journal(data, fmt=JournalFormat.CAMT053)
    assert _camt_entries(data) == expected(SAMPLE_CREDITS)
    root = parse_xml(data)
    balances = {
        b.xpath("string(c:Tp/c:CdOrPrtry/c:Cd)", namespaces=CAMT): b.xpath("string(c:Amt)", namespaces=CAMT)
        for b in root.xpath("//c:Bal", namespaces=CAMT)
    }
    assert balances == {"OPBD": "100000.00", "CLBD": "101002.02"}
    reversal = root.xpath("//c:Ntry", namespaces=CAMT)[3]
    assert reversal.xpath("string(c:RvslInd)", namespaces=CAMT) == "true"
    assert reversal.xpath("string(.//c:Cdtr/c:Nm)", namespaces=CAMT) == SAMPLE_CREDITS[3].ordering_party
    second = root.xpath("//c:Ntry", namespaces=CAMT)[1]
    assert second.xpath("string(.//c:Refs/c:EndToEndId)", namespaces=CAMT) == "NOTPROVIDED"
    assert second.xpath("string(.//c:Refs/c:TxId)", namespaces=CAMT) == SAMPLE_CREDITS[1].bank_reference


def test_camt053_negative_closing_balance_is_a_debit() -> None:
    data = journal(JournalFormat.CAMT053, credits=(make_credit(4, reversal=True),))
    validate_journal(data, fmt=JournalFormat.CAMT053)
    closing = parse_xml(data).xpath("//c:Bal[c:Tp/c:CdOrPrtry/c:Cd='CLBD']", namespaces=CAMT)[0]
    assert closing.xpath("string(c:CdtDbtInd)", namespaces=CAMT) == "DBIT"
    assert closing.xpath("string(c:Amt)", namespaces=CAMT) == "4.04"


def test_cbi_journal_has_120_character_records_and_reads_back() -> None:
    data = journal(JournalFormat.CBI_RH, opening_balance=Decimal("100000.00"))
    validate_journal(data, fmt=JournalFormat.CBI_RH)
    records = _cbi_records(data)
    assert all(len(r) == 120 for r in records)
    assert [r[1:3] for r in records[:6]] == ["RH", "61", "62", "63", "63", "63"]
    assert records[-1][1:3] == "EF" and records[-2][1:3] == "64"
    assert _cbi_movements(data) == expected(SAMPLE_CREDITS)
    first_62 = records[2]
    assert first_62[41:43] == "48" and first_62[61:77] == "BT00000000000001"
    reversal_62 = next(r for r in records if r[1:3] == "62" and r[25] == "D")
    assert reversal_62[41:43] == "26"
    id1 = next(r for r in records if r[1:3] == "63" and r[10:13] == "002" and r[13:16] == "ID1")
    assert id1[16:51].rstrip() == SAMPLE_CREDITS[1].bank_reference and id1[51:86].rstrip() == "NOTPROVIDED"
    yyy = next(r for r in records if r[1:3] == "63" and r[10:13] == "003" and r[13:16] == "YYY")
    assert yyy[40:80] == "A" * 40  # the ordering party is cut to the field
    assert records[-2][19:35] == "C000000101002,02"
    assert records[-1][82:89] == f"{len(records):07d}"


def test_long_remittance_is_split_and_rejoins() -> None:
    assert len(LONG_REMITTANCE) > 140
    camt = parse_xml(journal(JournalFormat.CAMT053))
    pieces = camt.xpath("//c:Ntry[3]//c:Ustrd/text()", namespaces=CAMT)
    assert len(pieces) == 2 and all(len(p) <= 140 for p in pieces)
    assert "".join(pieces) == LONG_REMITTANCE
    cbi = [
        r
        for r in _cbi_records(journal(JournalFormat.CBI_RH))
        if r[10:13] == "003" and r[13:16] in ("RI1", "RI2")
    ]
    assert len(cbi) == 2 and (cbi[0][16:] + cbi[1][16:]).rstrip() == LONG_REMITTANCE
    opi = parse_xml(journal(JournalFormat.OPI_1_8))
    assert opi.xpath("string(//movimento_conto_evidenza[3]/causale)") == LONG_REMITTANCE


def test_journals_are_deterministic() -> None:
    for fmt in JournalFormat:
        assert journal(fmt) == journal(fmt, credits=tuple(replace(c) for c in SAMPLE_CREDITS))


def test_empty_journal_is_valid() -> None:
    for fmt in JournalFormat:
        validate_journal(journal(fmt, credits=()), fmt=fmt)


def test_cbi_starts_a_new_statement_every_999_movements() -> None:
    credits = tuple(make_credit(n) for n in range(1, 1201))
    data = journal(JournalFormat.CBI_RH, credits=credits)
    validate_journal(data, fmt=JournalFormat.CBI_RH)
    records = _cbi_records(data)
    assert [r[3:10] for r in records if r[1:3] == "61"] == ["0000001", "0000002"]
    assert records[-1][45:52] == "0000002"
    assert _cbi_movements(data) == expected(credits)
    openings = [r for r in records if r[1:3] == "61"]
    closings = [r for r in records if r[1:3] == "64"]
    assert openings[1][83:99] == closings[0][19:35]  # carried balance


@pytest.mark.parametrize(
    ("overrides", "credits", "fragment"),
    [
        ({}, (make_credit(1, amount=Decimal("-5.00")),), "must be positive"),
        ({}, (make_credit(1, amount=Decimal("5.001")),), "two decimal places"),
        ({}, (make_credit(1), make_credit(2, bank_movement_id="BT00000000000001")), "not unique"),
        ({}, (make_credit(1, remittance=""),), "remittance"),
        ({}, (make_credit(1, remittance="line\nbreak"),), "control characters"),
        ({}, (make_credit(1, end_to_end_id="E" * 36),), "end_to_end_id"),
        ({"account_iban": "IT61X0542811101000000123456"}, (make_credit(1),), "IBAN"),
        ({"ec_fiscal_code": "0123"}, (make_credit(1),), "ec_fiscal_code"),
        ({"sequence": 1000}, (make_credit(1),), "sequence"),
    ],
)
def test_invalid_journals_are_refused(
    overrides: dict[str, object], credits: tuple[Credit, ...], fragment: str
) -> None:
    for fmt in JournalFormat:
        with pytest.raises(JournalSpecError, match=fragment) as caught:
            journal(fmt, credits=credits, **overrides)
        assert caught.value.problems


def test_cbi_limits_are_enforced_for_cbi_only() -> None:
    credits = (make_credit(1, remittance="R" * 209, bank_movement_id="M" * 17),)
    with pytest.raises(JournalSpecError) as caught:
        journal(JournalFormat.CBI_RH, credits=credits)
    assert len(caught.value.problems) == 2
    for fmt in (JournalFormat.OPI_1_8, JournalFormat.CAMT053):
        validate_journal(journal(fmt, credits=credits), fmt=fmt)


def test_cbi_validation_reports_bad_records() -> None:
    with pytest.raises(JournalValidationError, match="121 characters"):
        validate_journal(b" RH" + b" " * 118 + b"\r\n", fmt=JournalFormat.CBI_RH)


def test_journal_filename() -> None:
    names = {fmt: journal_filename(fmt=fmt, ec_fiscal_code=EC, day=DAY, sequence=2) for fmt in JournalFormat}
    assert names == {
        JournalFormat.OPI_1_8: "GDC_01234567890_20240726_002.xml",
        JournalFormat.CAMT053: "CAMT053_01234567890_20240726_002.xml",
        JournalFormat.CBI_RH: "RH_01234567890_20240726_002.txt",
    }
    assert journal_filename(fmt="cbi", ec_fiscal_code=EC, day=DAY, sequence=2) == names[JournalFormat.CBI_RH]


def test_ten_thousand_credits_build_quickly() -> None:
    credits = tuple(make_credit(n, reversal=n % 97 == 0) for n in range(1, 10_001))
    for fmt in JournalFormat:
        started = time.perf_counter()
        data = journal(fmt, credits=credits)
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0, f"{fmt}: {elapsed:.2f}s"
        assert len(data) > 10_000 * 120
    camt = journal(JournalFormat.CAMT053, credits=credits)
    validate_journal(camt, fmt=JournalFormat.CAMT053)
    assert _camt_entries(camt) == expected(credits)


SEPA_TEXT = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/-?:().,'+ &<>",
    min_size=1,
    max_size=208,
).filter(lambda s: s == s.strip())


@settings(max_examples=60, deadline=None)
@given(remittance=SEPA_TEXT, cents=st.integers(min_value=1, max_value=10**14 - 1))
def test_any_sepa_remittance_and_amount_read_back_in_every_format(remittance: str, cents: int) -> None:
    credits = (make_credit(1, remittance=remittance, amount=Decimal(cents).scaleb(-2)),)
    want = expected(credits)
    assert _opi_movements(journal(JournalFormat.OPI_1_8, credits=credits)) == want
    assert _camt_entries(journal(JournalFormat.CAMT053, credits=credits)) == want
    assert _cbi_movements(journal(JournalFormat.CBI_RH, credits=credits)) == want


# --- shapes of the synthetic day ------------------------------------------------------------------


def _tags(element) -> list[str]:  # type: ignore[no-untyped-def]
    from lxml import etree

    return [etree.QName(e).localname for e in element.iter() if isinstance(e.tag, str)]


def _synthetic(name: str) -> bytes:
    return (get_settings().treasury_specs_dir / "synthetic" / name).read_bytes()


def test_shapes_follow_the_synthetic_day() -> None:
    credit = (make_credit(1),)
    sample_opi = parse_xml(_synthetic("opi_giornale_di_cassa_1_8_pagopa.xml"))
    ours_opi = parse_xml(journal(JournalFormat.OPI_1_8, credits=credit))
    assert _tags(ours_opi.find("testata_messaggio")) == _tags(sample_opi.find("testata_messaggio"))
    first = "//movimento_conto_evidenza[1]"
    assert _tags(ours_opi.xpath(first)[0]) == _tags(sample_opi.xpath(first)[0])
    sample_camt = parse_xml(_synthetic("camt053.001.02_tesoreria_pagopa.xml"))
    ours_camt = parse_xml(journal(JournalFormat.CAMT053, credits=credit))
    entry = "//c:Ntry[1]"
    assert _tags(ours_camt.xpath(entry, namespaces=CAMT)[0]) == _tags(
        sample_camt.xpath(entry, namespaces=CAMT)[0]
    )
    sample_cbi = _cbi_records(_synthetic("cbi_rh_tesoreria_pagopa.txt"))
    ours_cbi = _cbi_records(journal(JournalFormat.CBI_RH, credits=credit))
    kinds = [r[1:3] + (r[13:16] if r[1:3] == "63" else "") for r in ours_cbi]
    assert kinds == ["RH", "61", "62", "63YYY", "63ID1", "63RI1", "64", "EF"]
    # Same account, same day: the opening record differs from the sample's only by the balance.
    assert ours_cbi[1][:83] == sample_cbi[1][:83]
    assert ours_cbi[2][41:43] == sample_cbi[2][41:43] == "48"
