"""The pure reporting rules: streaming FR parse, every check code, IUV space, linking decisions, revisions."""

from __future__ import annotations

import io
import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from models.reporting import FlowState, LineState
from models.settings import get_settings
from rules.identifiers import build_notice
from rules.reporting import (
    ALREADY_REPORTED,
    AMOUNT_MISMATCH,
    COUNT_MISMATCH,
    CURRENT,
    DUPLICATE_LINE,
    NAMESPACE,
    NO_RPT_UNKNOWN_DEBT,
    OBSOLETE,
    PAYMENT_UNKNOWN,
    SEVERAL_PAYMENTS,
    SKIP,
    TOTAL_MISMATCH,
    UNKNOWN_OUTCOME,
    WRONG_EC,
    Anomaly,
    Candidate,
    FlowChecker,
    FlowFormatError,
    FlowHeader,
    FlowLine,
    decide_line,
    fdr_line,
    flow_state,
    iuv_in_space,
    read_flow,
    render_flow_xml,
    revision_action,
    watermark_after,
)
from sandbox.builders.reporting import FlowPayment, FlowSpec, build_flow_xml, validate_flow_xml

EC = "01234567897"
PSP = "PPAYITR1XXX"
DAY = date(2024, 7, 26)


def flow_xml(
    lines: list[tuple[str, str, int, str, str]],
    *,
    count: int | None = None,
    total: str | None = None,
    ec: str = EC,
    prefix: str = "",
    root: str = "FlussoRiversamento",
    namespace: str = NAMESPACE,
    head: str = '<?xml version="1.0" encoding="UTF-8"?>\n',
) -> bytes:
    """A hand-made FR: ``lines`` of (iuv, iur, index, amount, outcome code)."""
    p = f"{prefix}:" if prefix else ""
    xmlns = f'xmlns:{prefix}="{namespace}"' if prefix else f'xmlns="{namespace}"'
    total = total if total is not None else f"{sum(Decimal(a) for _i, _r, _x, a, _o in lines):.2f}"
    body = "".join(
        f"<{p}datiSingoliPagamenti><{p}identificativoUnivocoVersamento>{iuv}</{p}identificativoUnivocoVersamento>"
        f"<{p}identificativoUnivocoRiscossione>{iur}</{p}identificativoUnivocoRiscossione>"
        f"<{p}indiceDatiSingoloPagamento>{index}</{p}indiceDatiSingoloPagamento>"
        f"<{p}singoloImportoPagato>{amount}</{p}singoloImportoPagato>"
        f"<{p}codiceEsitoSingoloPagamento>{outcome}</{p}codiceEsitoSingoloPagamento>"
        f"<{p}dataEsitoSingoloPagamento>2024-07-26</{p}dataEsitoSingoloPagamento></{p}datiSingoliPagamenti>\n"
        for iuv, iur, index, amount, outcome in lines
    )
    return (
        f"{head}<{p}{root} {xmlns}><{p}versioneOggetto>1.0</{p}versioneOggetto>"
        f"<{p}identificativoFlusso>2024-07-26{PSP}-S1</{p}identificativoFlusso>"
        f"<{p}dataOraFlusso>2024-07-27T10:00:00</{p}dataOraFlusso>"
        f"<{p}identificativoUnivocoRegolamento>TRN1</{p}identificativoUnivocoRegolamento>"
        f"<{p}dataRegolamento>2024-07-27</{p}dataRegolamento>"
        f"<{p}istitutoMittente><{p}identificativoUnivocoMittente><{p}tipoIdentificativoUnivoco>B"
        f"</{p}tipoIdentificativoUnivoco><{p}codiceIdentificativoUnivoco>{PSP}</{p}codiceIdentificativoUnivoco>"
        f"</{p}identificativoUnivocoMittente><{p}denominazioneMittente>PayPal</{p}denominazioneMittente>"
        f"</{p}istitutoMittente><{p}istitutoRicevente><{p}identificativoUnivocoRicevente>"
        f"<{p}tipoIdentificativoUnivoco>G</{p}tipoIdentificativoUnivoco>"
        f"<{p}codiceIdentificativoUnivoco>{ec}</{p}codiceIdentificativoUnivoco></{p}identificativoUnivocoRicevente>"
        f"</{p}istitutoRicevente><{p}numeroTotalePagamenti>{count if count is not None else len(lines)}"
        f"</{p}numeroTotalePagamenti><{p}importoTotalePagamenti>{total}</{p}importoTotalePagamenti>\n"
        f"{body}</{p}{root}>\n"
    ).encode()


def lines_of(data: bytes, batch_size: int = 1000) -> tuple[FlowHeader, list[list[FlowLine]]]:
    reader = read_flow(io.BytesIO(data), batch_size=batch_size)
    return reader.header, list(reader.batches())


def line(
    iuv: str = "01000000000000144",
    *,
    iur: str = "IUR1",
    index: int = 1,
    amount: str = "10.00",
    outcome: int | None = 0,
) -> FlowLine:
    return FlowLine(
        index=1,
        iuv=iuv,
        iur=iur,
        transfer_index=index,
        amount=Decimal(amount),
        outcome=outcome,
        outcome_raw=str(outcome),
        pay_date=DAY,
    )


# --- parsing --------------------------------------------------------------------------------------


def test_reads_the_sandbox_flow_header_and_lines_in_batches() -> None:
    payments = tuple(
        FlowPayment(
            iuv=f"01{n:015d}",
            iur=f"IUR{n}",
            transfer_index=1 + n % 2,
            amount=Decimal("1.50") + n,
            outcome=(0, 4, 8, 9)[n % 4],
            pay_date=DAY,
        )
        for n in range(7)
    )
    spec = FlowSpec(
        id_flusso=f"2024-07-26{PSP}-S0001",
        revision=1,
        flow_datetime=datetime(2024, 7, 27, 8, 30, tzinfo=UTC),
        settlement_ref="TRN0001",
        settlement_date=DAY + timedelta(days=1),
        psp_id=PSP,
        psp_name="PayPal Pagamenti",
        bic="PPAYITR1XXX",
        ec_fiscal_code=EC,
        ec_name="Comune di Esempio",
        payments=payments,
    )
    data = build_flow_xml(spec)
    validate_flow_xml(data)
    header, batches = lines_of(data, batch_size=3)
    assert header == FlowHeader(
        id_flusso=spec.id_flusso,
        psp_id=PSP,
        ec=EC,
        total_count=7,
        total_amount=sum(p.amount for p in payments),
        flow_at=datetime(2024, 7, 27, 8, 30, tzinfo=UTC),
        settlement_ref="TRN0001",
        settlement_date=date(2024, 7, 27),
        psp_name="PayPal Pagamenti",
        bic="PPAYITR1XXX",
        ec_name="Comune di Esempio",
        version="1.0",
    )
    assert [len(b) for b in batches] == [3, 3, 1]
    got = [ln for b in batches for ln in b]
    assert [
        (ln.index, ln.iuv, ln.iur, ln.transfer_index, ln.amount, ln.outcome, ln.pay_date) for ln in got
    ] == [(n + 1, p.iuv, p.iur, p.transfer_index, p.amount, p.outcome, DAY) for n, p in enumerate(payments)]


def test_reads_prefixed_documents_legacy_outcomes_and_the_official_sample() -> None:
    data = flow_xml(
        [("01000000000000144", "A", 1, "5.00", "3"), ("01000000000000144", "B", 2, "7.10", "9")],
        prefix="pay_i",
    )
    header, (batch,) = lines_of(data)
    assert header.psp_id == PSP and header.ec == EC and header.total_amount == Decimal("12.10")
    assert header.flow_at == datetime(2024, 7, 27, 8, 0, tzinfo=UTC)  # Italian local time, summer
    assert [(ln.outcome, ln.transfer_index) for ln in batch] == [(3, 1), (9, 2)]
    sample = (
        get_settings().specs_dir
        / "samples"
        / "derived"
        / "FlussoRiversamento_from_nodoChiediFlussoRendicontazione_OK.xml"
    )
    header, batches = lines_of(sample.read_bytes(), batch_size=5)
    assert header.id_flusso == "2023-04-01nodo-doc-dev-16818090899" and header.psp_id == "SELBIT2B"
    assert sum(len(b) for b in batches) == 12 and header.total_count == 1


def rss() -> int:
    """Resident memory of this process in bytes (libxml2's allocations included, unlike tracemalloc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_on_a_large_flow() -> None:
    data = flow_xml([(f"01{n:015d}", f"IUR{n:010d}", 1, "1.00", "0") for n in range(30_000)])
    reader = read_flow(io.BytesIO(data), batch_size=1000)
    before, seen, growth = rss(), 0, 0
    for batch in reader.batches():
        seen += len(batch)
        growth = max(growth, rss() - before)
    assert seen == 30_000
    assert growth < 8_000_000, growth  # a batch's worth, not the tree of 30,000 lines (~40 MB)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (
            b"<FlussoRiversamento xmlns='" + NAMESPACE.encode() + b"'><versioneOggetto>1.0",
            FlowFormatError.MALFORMED,
        ),
        (b"", FlowFormatError.MALFORMED),
        (b"not xml at all", FlowFormatError.MALFORMED),
        (flow_xml([("1", "A", 1, "1.00", "0")], namespace="urn:wrong"), FlowFormatError.NOT_A_FLOW),
        (flow_xml([("1", "A", 1, "1.00", "0")], root="RT"), FlowFormatError.NOT_A_FLOW),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            + flow_xml([("1", "&lol2;", 1, "1.00", "0")], head=""),
            FlowFormatError.UNSAFE,
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + flow_xml([("1", "&xxe;", 1, "1.00", "0")], head=""),
            FlowFormatError.UNSAFE,
        ),
        # A DOCTYPE pushed past the first 64 KB by a comment still never reaches the parser's entity table.
        (
            b"<!--"
            + b" " * 70_000
            + b'--><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + flow_xml([("1", "&xxe;", 1, "1.00", "0")], head=""),
            FlowFormatError.UNSAFE,
        ),
        (flow_xml([("1", "A", 1, "1.0x", "0")], total="1.00"), FlowFormatError.INVALID),
        (flow_xml([("1", "A", 1, "1.001", "0")]), FlowFormatError.INVALID),
        (flow_xml([("", "A", 1, "1.00", "0")]), FlowFormatError.INVALID),
        (
            flow_xml([("1", "A", 1, "1.00", "0")]).replace(
                b"<numeroTotalePagamenti>1</numeroTotalePagamenti>", b""
            ),
            FlowFormatError.INVALID,
        ),
    ],
    ids=[
        "truncated",
        "empty",
        "text",
        "namespace",
        "root",
        "entity-expansion",
        "external-entity",
        "late-doctype",
        "amount",
        "three-decimals",
        "no-iuv",
        "no-count",
    ],
)
def test_bad_documents_are_refused_with_their_kind(data: bytes, kind: str) -> None:
    with pytest.raises(FlowFormatError) as caught:
        lines_of(data)
    assert caught.value.kind == kind, caught.value


# --- checks ---------------------------------------------------------------------------------------


def check(data: bytes, *, expected_ec: str = EC) -> tuple[list[list[str]], list[str]]:
    header, batches = lines_of(data)
    checker = FlowChecker(header, expected_ec=expected_ec)
    per_line = [[a.code for a in checker.line_anomalies(ln)] for b in batches for ln in b]
    return per_line, [a.code for a in checker.finish()]


def test_flow_level_checks() -> None:
    good = [("01000000000000144", "A", 1, "5.00", "0"), ("01000000000000144", "A", 2, "7.00", "4")]
    assert check(flow_xml(good)) == ([[], []], [])
    assert check(flow_xml(good, count=3))[1] == [COUNT_MISMATCH]
    assert check(flow_xml(good, total="12.01"))[1] == [TOTAL_MISMATCH]
    assert check(flow_xml(good, ec="80001234568"))[1] == [WRONG_EC]
    per_line, flow = check(flow_xml(good + [good[0]], count=3, total="17.00"))
    assert per_line == [[], [], [DUPLICATE_LINE]] and flow == [DUPLICATE_LINE]
    per_line, flow = check(flow_xml([("01000000000000144", "A", 1, "5.00", "5")]))
    assert per_line == [[UNKNOWN_OUTCOME]] and flow == []
    header, (batch,) = lines_of(flow_xml(good, count=5))
    checker = FlowChecker(header, expected_ec=EC)
    assert flow_state([a for ln in batch for a in checker.line_anomalies(ln)]) == FlowState.ACCETTATA
    assert flow_state(checker.finish()) == FlowState.ANOMALA
    assert flow_state([Anomaly(UNKNOWN_OUTCOME, "a line-level finding")]) == FlowState.ACCETTATA


def test_fdr_pay_status_maps_to_outcome_codes() -> None:
    made = [
        fdr_line(
            index=1, iuv="1", iur="2", transfer_index=1, amount=Decimal("1.00"), pay_status=s, pay_date=None
        )
        for s in ("EXECUTED", "REVOKED", "STAND_IN", "STAND_IN_NO_RPT", "NO_RPT", "LOST")
    ]
    assert [m.outcome for m in made] == [0, 3, 4, 8, 9, None]


def test_linking_decisions_cover_every_line_code() -> None:
    def cand(
        cid: int,
        amount: str = "10.00",
        *,
        iur: str | None = None,
        psp: str | None = PSP,
        linked: bool = False,
    ) -> Candidate:
        return Candidate(id=cid, iur=iur, amount=Decimal(amount), position_id=100, psp_id=psp, linked=linked)

    ours = dict(in_space=True, psp_id=PSP)
    linked = decide_line(line(), candidates=[cand(1)], position_id=100, **ours)
    assert (linked.state, linked.collection_id, linked.position_id, linked.claim) == (
        LineState.LINKED,
        1,
        100,
        True,
    )
    # An exact IUR wins over amount-only matches; a collection with another IUR is another payment.
    exact = decide_line(
        line(), candidates=[cand(1), cand(2, iur="IUR1"), cand(3, iur="OTHER")], position_id=100, **ours
    )
    assert exact.collection_id == 2
    assert (
        decide_line(line(), candidates=[cand(1, amount="9.99")], position_id=100, **ours).anomalies[0].code
        == AMOUNT_MISMATCH
    )
    several = decide_line(line(), candidates=[cand(1, psp="X"), cand(2, psp="Y")], position_id=100, **ours)
    assert (several.state, several.anomalies[0].code) == (LineState.ANOMALA, SEVERAL_PAYMENTS)
    by_psp = decide_line(line(), candidates=[cand(1, psp="X"), cand(2)], position_id=100, **ours)
    assert by_psp.collection_id == 2  # the reporting PSP's own receipt breaks the tie
    twice = decide_line(line(), candidates=[cand(1, iur="IUR1", linked=True)], position_id=100, **ours)
    assert twice.anomalies[0].code == ALREADY_REPORTED and not twice.claim
    waiting = decide_line(line(), candidates=[cand(1, iur="OTHER", linked=True)], position_id=100, **ours)
    assert (waiting.state, waiting.position_id) == (LineState.NO_RECEIPT, 100)
    no_rpt = decide_line(line(outcome=9), candidates=[], position_id=100, **ours)
    assert no_rpt.state == LineState.NO_RECEIPT
    assert decide_line(line(), candidates=[], position_id=None, **ours).anomalies[0].code == PAYMENT_UNKNOWN
    assert (
        decide_line(line(outcome=8), candidates=[], position_id=None, **ours).anomalies[0].code
        == NO_RPT_UNKNOWN_DEBT
    )
    other = decide_line(
        line("02000000000000127"), candidates=[], position_id=None, in_space=False, psp_id=PSP
    )
    assert (other.state, other.anomalies) == (LineState.ALTRO_INTERMEDIARIO, ())
    revoked = decide_line(
        line(outcome=3), candidates=[cand(1, iur="IUR1", linked=True)], position_id=100, **ours
    )
    assert (revoked.state, revoked.collection_id, revoked.claim) == (LineState.LINKED, 1, False)
    flagged = decide_line(
        line(outcome=None),
        candidates=[cand(1)],
        position_id=100,
        in_space=True,
        psp_id=PSP,
        anomalies=[Anomaly(UNKNOWN_OUTCOME, "x")],
    )
    assert (flagged.state, flagged.claim, flagged.position_id) == (LineState.ANOMALA, False, 100)


def test_iuv_space_by_aux_digit_and_codes() -> None:
    ours3 = build_notice(aux_digit=3, progressive=1, segregation_code="01").iuv
    theirs3 = build_notice(aux_digit=3, progressive=1, segregation_code="47").iuv
    assert iuv_in_space(ours3, aux_digit=3, segregation_code="01")
    assert not iuv_in_space(theirs3, aux_digit=3, segregation_code="01")
    ours0 = build_notice(aux_digit=0, progressive=1, application_code="01").iuv
    theirs0 = build_notice(aux_digit=0, progressive=1, application_code="02").iuv
    assert iuv_in_space(ours0, aux_digit=0, application_code="01")
    assert not iuv_in_space(theirs0, aux_digit=0, application_code="01")  # only the check digits differ
    assert not iuv_in_space(ours3, aux_digit=0, application_code="01")
    assert iuv_in_space("RF18539007547034", aux_digit=3, segregation_code="01")
    assert not iuv_in_space("ABC", aux_digit=3, segregation_code="01")


# --- revisions, cursor, rendering -----------------------------------------------------------------


def test_revision_ordering() -> None:
    assert revision_action(revision=1, stored=set()) == CURRENT
    assert revision_action(revision=1, stored={1}) == SKIP
    assert revision_action(revision=3, stored={1, 2}) == CURRENT
    assert revision_action(revision=2, stored={1, 3}) == OBSOLETE


def test_cursor_stops_before_the_first_failure() -> None:
    t = [datetime(2024, 7, 27, h, tzinfo=UTC) for h in range(5)]
    assert watermark_after(handled=t, failed=[]) == t[4]
    assert watermark_after(handled=[t[0], t[1], t[3]], failed=[t[2]]) == t[1]
    assert watermark_after(handled=[t[2]], failed=[t[2]]) is None
    assert watermark_after(handled=[], failed=[]) is None


def test_rendered_xml_of_a_rest_flow_is_a_valid_fr_that_reads_back() -> None:
    header = FlowHeader(
        id_flusso=f"2024-07-26{PSP}-S9",
        psp_id=PSP,
        ec=EC,
        total_count=2,
        total_amount=Decimal("3.50"),
        flow_at=datetime(2024, 7, 27, 6, tzinfo=UTC),
        settlement_ref="TRN<&>",
        settlement_date=DAY,
        psp_name="PSP & Co",
        ec_name="Comune",
    )
    lines = [line(iur="A", amount="1.25"), line(iur="B", index=2, amount="2.25", outcome=4)]
    data = b"".join(render_flow_xml(header, lines))
    validate_flow_xml(data)
    back, (batch,) = lines_of(data)
    assert back.settlement_ref == "TRN<&>" and back.psp_name == "PSP & Co" and back.flow_at == header.flow_at
    assert [(b.iur, b.amount, b.outcome) for b in batch] == [
        ("A", Decimal("1.25"), 0),
        ("B", Decimal("2.25"), 4),
    ]
