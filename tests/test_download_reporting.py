"""Downloading reporting flows from the sandbox over FdR REST (httpx) and the legacy SOAP service (zeep):
first run, re-run, revisions, anomalies, unknown ECs, faults and retries, paging, bad and hostile XML,
Ragioneria."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from sqlmodel import Session, col, select

from connectors.pagopa.config import get_endpoints
from models.counters import Watermark
from models.db import get_engine
from models.journal import Event
from models.payments import Collection
from models.reporting import ReportingFlow, ReportingLine
from models.settings import get_settings
from rules.identifiers import build_notice
from sandbox.builders.reporting import FlowPayment, FlowSpec, build_flow_xml, validate_flow_xml
from sandbox.settlement import PublishedFlow, reporting_state
from sandbox.state import CreditorConfig, PaidTransfer, PspConfig, SandboxState, StationConfig
from store.reporting import lines_awaiting_receipt
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_reporting import bulk_paid, make_paid, make_position
from tests.live_server import live_server

COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
BROKER, ST1, ST2 = "77777777777", "77777777777_01", "77777777777_02"
PW1, PW2, FDR_KEY = "Password01", "Password02", "fdr-subscription-key"  # test credentials, not secrets
PSP_A, PSP_B = "PPAYITR1XXX", "ABI03069"
DAY = date.today() - timedelta(days=2)
SEGREGATION = {COMUNE: "01", SCUOLA: "02"}
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
SCUOLA_APP = ("gestionale-scuola", "demo-scuola-password")
ADMIN = ("admin", "demo-operator-password")
RAGIONERIA = "/api/ragioneria/v3"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    from sandbox.server import start_in_thread

    running = start_in_thread(state=SandboxState(seed=11))
    try:
        yield running
    finally:
        running.stop()


def configure_sandbox(st: SandboxState, *, provincia: bool = True) -> None:
    """The sandbox knows our broker's two stations and ECs, two PSPs and our subscription key."""
    st.reset()
    with st.lock:
        st.stations[ST1] = StationConfig(id_station=ST1, id_broker=BROKER, password=PW1)
        st.stations[ST2] = StationConfig(id_station=ST2, id_broker=BROKER, password=PW2)
        for ec, station in ((COMUNE, ST1), (SCUOLA, ST2)) + (((PROVINCIA, ST1),) if provincia else ()):
            st.creditors[ec] = CreditorConfig(
                fiscal_code=ec,
                name=f"EC {ec}",
                id_station=station,
                id_broker=BROKER,
                iban="IT60X0542811101000000123456",
            )
        st.psps.extend(
            [
                PspConfig(PSP_A, "PayPal Pagamenti SpA", "PPAYITR1XXX", f"{PSP_A}_01"),
                PspConfig(PSP_B, "Banca Demo SpA", "BCITITMM", f"{PSP_B}_01"),
            ]
        )
        st.subscription_keys.add(FDR_KEY)


@pytest.fixture
def env(db: Database, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """Registry loaded, settings pointing at the test database and the sandbox, secrets in the environment."""
    with db.session() as session:
        load_example_registry(session)
    settings = {
        "PAGOFLOW_DATABASE_URL": db.url,
        "PAGOFLOW_PAGOPA_FDR_URL": f"{sandbox.url}/fdr-org/service/v1",
        "PAGOFLOW_PAGOPA_NODO_URL": f"{sandbox.url}/nodo/nodoPerPa",
        "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0",
        "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0",
        "PAGOFLOW_STATION_01_PASSWORD": PW1,
        "PAGOFLOW_STATION_02_PASSWORD": PW2,
        "PAGOFLOW_GPD_SUBSCRIPTION_KEY": FDR_KEY,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    configure_sandbox(sandbox.state)
    yield db
    clear_caches()


def clear_caches() -> None:
    get_settings.cache_clear()
    get_engine.cache_clear()
    get_endpoints.cache_clear()


# --- scenario helpers -----------------------------------------------------------------------------


def iuv(ec: str, n: int, *, segregation: str | None = None) -> str:
    return build_notice(aux_digit=3, progressive=n, segregation_code=segregation or SEGREGATION[ec]).iuv


def report(
    st: SandboxState,
    *,
    ec: str,
    iuv: str,
    amounts: list[str],
    psp: str = PSP_A,
    outcome: int = 0,
    iur: str | None = None,
) -> str:
    """The PSP reports a payment of ``iuv`` (a line per transfer) at the next settlement; returns the IUR."""
    iur = iur or f"IUR{iuv[-9:]}{psp[:3]}"
    with st.lock:
        for n, amount in enumerate(amounts, start=1):
            st.transfers.append(
                PaidTransfer(
                    ec_fiscal_code=ec,
                    iuv=iuv,
                    iur=iur,
                    transfer_index=n,
                    amount=Decimal(amount),
                    outcome=outcome,
                    pay_date=DAY,
                    psp_id=psp,
                    receipt_id=None if outcome in (8, 9) else f"R-{iuv}",
                )
            )
    return iur


def paid(session: Session, st: SandboxState, *, ec: str, n: int, amounts: list[str], psp: str = PSP_A) -> str:
    """A notice paid at ``psp``: our position, receipt and collections, and the PSP's report of it."""
    code = iuv(ec, n)
    make_paid(session, id_dominio=ec, iuv=code, amounts=[Decimal(a) for a in amounts], psp_id=psp)
    report(st, ec=ec, iuv=code, amounts=amounts, psp=psp)
    return code


def settle(sandbox: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("date", DAY.isoformat())
    answer = httpx.post(f"{sandbox.url}/sandbox/settle", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def run(id_dominio: str | None = None, *, days: int = 30, max_flows: int = 150) -> Any:
    """One download run with the flow's orchestration, without Prefect."""
    from flows.download_reporting_flows import run_download
    from tasks.reporting import advance_fdr_cursor, creditors_to_download, download_flow, list_creditor_flows

    return run_download(
        jobs=creditors_to_download(id_dominio),
        days=days,
        max_flows=max_flows,
        list_flows=lambda job, d, limit: list_creditor_flows(job, days=d, limit=limit),
        download=download_flow,
        advance=lambda ec, handled, failed: advance_fdr_cursor(ec, handled=handled, failed=failed),
    )


def lines_by_iuv(session: Session, flow_id: int | None) -> dict[str, list[ReportingLine]]:
    out: dict[str, list[ReportingLine]] = {}
    for ln in session.exec(
        select(ReportingLine).where(ReportingLine.flow_id == flow_id).order_by(col(ReportingLine.line_index))
    ):
        out.setdefault(ln.iuv, []).append(ln)
    return out


def events(session: Session, **where: Any) -> list[Event]:
    stmt = select(Event)
    for name, value in where.items():
        stmt = stmt.where(getattr(Event, name) == value)
    return list(session.exec(stmt.order_by(col(Event.id))).all())


def publish(st: SandboxState, spec: FlowSpec, xml: bytes | None = None) -> None:
    """Put a flow (possibly broken) straight into the sandbox's published flows."""
    flow = PublishedFlow(
        spec=spec,
        xml=xml if xml is not None else build_flow_xml(spec, strict=False),
        published=datetime.now(UTC),
    )
    with st.lock:
        reporting_state(st).revisions.setdefault(
            (spec.ec_fiscal_code, spec.psp_id, spec.id_flusso), []
        ).append(flow)


def spec_of(
    ec: str, psp: str, suffix: str, payments: list[tuple[str, str, str]], **overrides: Any
) -> FlowSpec:
    """A flow of (iuv, iur, amount) single-transfer lines."""
    base = FlowSpec(
        id_flusso=f"{DAY.isoformat()}{psp}-{suffix}",
        revision=1,
        flow_datetime=datetime.combine(DAY + timedelta(days=1), datetime.min.time(), UTC)
        + timedelta(hours=7),
        settlement_ref=f"TRN{suffix}",
        settlement_date=DAY + timedelta(days=1),
        psp_id=psp,
        psp_name="Banca Demo SpA",
        bic=None,
        ec_fiscal_code=ec,
        ec_name=f"EC {ec}",
        payments=tuple(
            FlowPayment(iuv=i, iur=r, transfer_index=1, amount=Decimal(a), outcome=0, pay_date=DAY)
            for i, r, a in payments
        ),
    )
    return dataclasses.replace(base, **overrides)


# --- FdR REST -------------------------------------------------------------------------------------


def test_fdr_first_run_rerun_and_new_revision(env: Database, sandbox: Any) -> None:
    st = sandbox.state
    with env.session() as s:
        single = [paid(s, st, ec=COMUNE, n=n, amounts=["10.00"]) for n in range(1, 5)]
        double = paid(s, st, ec=COMUNE, n=5, amounts=["10.00", "2.50"])
        by_b = paid(s, st, ec=COMUNE, n=6, amounts=["7.77"], psp=PSP_B)
        awaiting = iuv(COMUNE, 7)
        make_position(s, id_dominio=COMUNE, iuv=awaiting, amount=Decimal("3.00"))
        no_rpt_known = iuv(COMUNE, 8)
        make_position(s, id_dominio=COMUNE, iuv=no_rpt_known, amount=Decimal("4.00"))
        wrong_amount = iuv(COMUNE, 9)
        make_paid(s, id_dominio=COMUNE, iuv=wrong_amount, amounts=[Decimal("10.00")], psp_id=PSP_A)
        s.commit()
    report(st, ec=COMUNE, iuv=awaiting, amounts=["3.00"])
    report(st, ec=COMUNE, iuv=no_rpt_known, amounts=["4.00"], outcome=9)
    report(st, ec=COMUNE, iuv=wrong_amount, amounts=["10.01"])
    unknown = iuv(COMUNE, 10)
    report(st, ec=COMUNE, iuv=unknown, amounts=["1.00"])
    unknown_no_rpt = iuv(COMUNE, 11)
    report(st, ec=COMUNE, iuv=unknown_no_rpt, amounts=["1.00"], outcome=8)
    elsewhere = iuv(COMUNE, 12, segregation="47")
    report(st, ec=COMUNE, iuv=elsewhere, amounts=["5.00"])
    settled = settle(sandbox)
    ids = {f["psp"]: f["idFlusso"] for f in settled["flows"]}

    partial = run(COMUNE, max_flows=1)  # a run takes at most max_flows; the cursor waits for the rest
    assert (len(partial.outcomes), partial.listings[0].deferred, partial.failures) == (1, 1, {})
    with env.session() as s:
        assert s.get(Watermark, f"fdr:{COMUNE}") is None  # both flows share one publication instant
    rest = run(COMUNE)
    assert rest.failures == {} and len(rest.outcomes) == 1
    outcomes = partial.outcomes + rest.outcomes
    assert sorted((o.psp_id, o.status, o.state) for o in outcomes) == [
        (PSP_B, "STORED", "ACCETTATA"),
        (PSP_A, "STORED", "ACCETTATA"),
    ]
    with env.session() as s:
        flows = {f.psp_id: f for f in s.exec(select(ReportingFlow))}
        flow_a = flows[PSP_A]
        assert (flow_a.id_flusso, flow_a.revision, flow_a.source, flow_a.total_count) == (
            ids[PSP_A],
            1,
            "FDR_REST",
            12,
        )
        assert (
            flow_a.anomalies["righe"] == {"007101": 1, "007104": 1, "007111": 1}
            and flow_a.anomalies["flusso"] == []
        )
        lines = lines_by_iuv(s, flow_a.id)
        states = {code: [ln.state for ln in lines[code]] for code in lines}
        assert all(states[code] == ["LINKED"] for code in single)
        assert states[double] == ["LINKED", "LINKED"]
        assert states[awaiting] == ["NO_RECEIPT"] and states[no_rpt_known] == ["NO_RECEIPT"]
        assert (
            states[wrong_amount] == ["ANOMALA"] and lines[wrong_amount][0].anomalies[0]["codice"] == "007104"
        )
        assert states[unknown] == ["UNKNOWN"] and lines[unknown][0].anomalies[0]["codice"] == "007101"
        assert (
            states[unknown_no_rpt] == ["UNKNOWN"]
            and lines[unknown_no_rpt][0].anomalies[0]["codice"] == "007111"
        )
        assert states[elsewhere] == ["ALTRO_INTERMEDIARIO"] and lines[elsewhere][0].anomalies is None
        # Linked lines and their collections point at each other; the IUR arrived with the flow.
        for ln in lines[double] + lines[single[0]]:
            collection = s.get(Collection, ln.collection_id)
            assert collection is not None and collection.flow_line_id == ln.id and collection.iur == ln.iur
            assert collection.transfer_index == ln.transfer_index and ln.position_id == collection.position_id
        assert lines[awaiting][0].position_id is not None and lines[awaiting][0].collection_id is None
        assert lines_by_iuv(s, flows[PSP_B].id)[by_b][0].state == "LINKED"
        # The receipts flow's queue: known positions reported with outcome 0/4 and no receipt.
        assert [ln.iuv for ln in lines_awaiting_receipt(s, id_dominio=COMUNE)] == [awaiting]
        mark = s.get(Watermark, f"fdr:{COMUNE}")
        assert mark is not None and datetime.fromisoformat(mark.value) == max(
            o.published_at for o in outcomes
        )
        calls = events(s, component="fdr")
        assert {e.operation for e in calls} == {
            "getAllPublishedFlows",
            "getSinglePublishedFlow",
            "getPaymentsFromPublishedFlow",
        }
        assert all(e.outcome == "OK" and e.id_dominio == COMUNE for e in calls)
        assert {e.id_flusso for e in calls if e.operation != "getAllPublishedFlows"} == set(ids.values())

    again = run(COMUNE)
    assert again.outcomes == [] and again.listings[0].already_stored == 2  # re-listed (overlap), skipped
    with env.session() as s:
        s.delete(s.get(Watermark, f"fdr:{COMUNE}"))
        s.commit()
    without_cursor = run(COMUNE)
    assert without_cursor.outcomes == [] and without_cursor.listings[0].already_stored == 2
    with env.session() as s:
        assert s.get(Watermark, f"fdr:{COMUNE}") is not None  # flows found already stored move it too

    settle(sandbox, reissue=[{"idFlusso": ids[PSP_A], "dropIuvs": [single[1]]}])
    revised = run(COMUNE)
    assert [(o.id_flusso, o.revision, o.status, o.lines) for o in revised.outcomes] == [
        (ids[PSP_A], 2, "STORED", 11)
    ]
    with env.session() as s:
        revisions = {
            f.revision: f for f in s.exec(select(ReportingFlow).where(ReportingFlow.psp_id == PSP_A))
        }
        assert (revisions[1].state, revisions[2].state) == ("OBSOLETA", "ACCETTATA")
        new_lines = lines_by_iuv(s, revisions[2].id)
        kept = s.exec(select(Collection).where(Collection.iuv == single[0])).one()
        assert kept.flow_line_id == new_lines[single[0]][0].id and new_lines[single[0]][0].state == "LINKED"
        dropped = s.exec(select(Collection).where(Collection.iuv == single[1])).one()
        assert dropped.flow_line_id is None and dropped.iur is not None  # released, IUR kept
        assert new_lines[wrong_amount][0].state == "ANOMALA"


# --- SOAP -----------------------------------------------------------------------------------------


def test_soap_download_anomalies_bad_xml_and_revision(env: Database, sandbox: Any) -> None:
    st = sandbox.state
    with env.session() as s:
        good = [paid(s, st, ec=SCUOLA, n=n, amounts=["20.00"]) for n in range(1, 4)]
        in_anomalous = [iuv(SCUOLA, n) for n in (20, 21)]
        for code in in_anomalous:
            make_paid(s, id_dominio=SCUOLA, iuv=code, amounts=[Decimal("5.00")], psp_id=PSP_B)
        s.commit()
    good_id = settle(sandbox)["flows"][0]["idFlusso"]
    anomalous = spec_of(
        SCUOLA,
        PSP_B,
        "S0000000777",
        [(c, f"IURX{c[-6:]}", "5.00") for c in in_anomalous],
        declared_count=3,
        declared_total=Decimal("12.00"),
    )
    publish(st, anomalous)
    broken = spec_of(SCUOLA, PSP_B, "S0000000888", [(iuv(SCUOLA, 30), "IURBAD", "1.00")])
    publish(st, broken, xml=build_flow_xml(broken)[:400])
    alien = spec_of(SCUOLA, PSP_B, "S0000000999", [(iuv(SCUOLA, 31), "IURALIEN", "1.00")])
    publish(
        st, alien, xml=build_flow_xml(alien).replace(b"digitpa.gov.it/schemas/2011", b"example.org/other")
    )

    first = run(SCUOLA)
    assert first.failures == {}
    outcome = {o.id_flusso: o for o in first.outcomes}
    assert (outcome[good_id].status, outcome[good_id].state, outcome[good_id].linked) == (
        "STORED",
        "ACCETTATA",
        3,
    )
    assert (outcome[anomalous.id_flusso].status, outcome[anomalous.id_flusso].state) == ("STORED", "ANOMALA")
    assert [a.split()[0] for a in outcome[anomalous.id_flusso].flow_anomalies] == ["007107", "007106"]
    assert outcome[anomalous.id_flusso].linked == 2  # line checks still link what they can
    assert outcome[broken.id_flusso].status == "REFUSED" and outcome[broken.id_flusso].error.startswith(
        "malformed"
    )
    assert outcome[alien.id_flusso].status == "REFUSED" and outcome[alien.id_flusso].error.startswith(
        "not_a_flow"
    )
    with env.session() as s:
        stored = s.exec(select(ReportingFlow).where(ReportingFlow.id_flusso == good_id)).one()
        assert stored.source == "SOAP" and stored.psp_id == PSP_A and stored.revision == 1
        assert stored.payload is not None and stored.payload.encode() == next(
            f.xml for revs in reporting_state(st).revisions.values() for f in revs if f.id_flusso == good_id
        )
        assert all(ln[0].state == "LINKED" for code, ln in lines_by_iuv(s, stored.id).items() if code in good)
        refused = events(s, component="reporting", id_flusso=broken.id_flusso)
        assert [(e.outcome, e.fault_code) for e in refused] == [("KO", "FR_MALFORMED")]
        assert refused[0].response_payload is not None  # the bad document is kept for the operator
        soap_calls = events(s, component="nodo")
        assert {e.operation for e in soap_calls} == {
            "nodoChiediElencoFlussiRendicontazione",
            "nodoChiediFlussoRendicontazione",
        }
        assert all("Password02" not in (e.request_payload or "") for e in soap_calls)

    again = run(SCUOLA)
    assert again.listings[0].already_stored == 2
    assert sorted(o.status for o in again.outcomes) == ["REFUSED", "REFUSED"]  # broken flows stay refused

    settle(sandbox, reissue=[{"idFlusso": good_id, "dropIuvs": [good[0]]}])
    revised = run(SCUOLA)
    [new] = [o for o in revised.outcomes if o.status == "STORED"]
    assert (new.id_flusso, new.revision, new.lines, new.linked) == (good_id, 2, 2, 2)
    with env.session() as s:
        states = dict(
            s.exec(
                select(ReportingFlow.revision, ReportingFlow.state).where(ReportingFlow.id_flusso == good_id)
            ).all()
        )
        assert states == {1: "OBSOLETA", 2: "ACCETTATA"}
        released = s.exec(select(Collection).where(Collection.iuv == good[0])).one()
        assert released.flow_line_id is None


def test_unknown_ecs(env: Database, sandbox: Any) -> None:
    from tasks.reporting import creditors_to_download

    with pytest.raises(LookupError, match="99999999999"):
        creditors_to_download("99999999999")
    configure_sandbox(sandbox.state, provincia=False)
    with env.session() as s:
        paid(s, sandbox.state, ec=COMUNE, n=1, amounts=["1.00"])
        s.commit()
    settle(sandbox)
    summary = run()  # every EC: the Provincia is unknown to pagoPA, the others go on
    assert list(summary.failures) == [f"{PROVINCIA} (list)"]
    assert "PagopaAuthError" in summary.failures[f"{PROVINCIA} (list)"]
    assert [o.id_dominio for o in summary.outcomes] == [COMUNE]
    with env.session() as s:
        [refusal] = events(s, component="fdr", id_dominio=PROVINCIA)
        assert (refusal.outcome, refusal.http_status) == ("KO", 403)
    with sandbox.state.lock:
        sandbox.state.stations[ST2] = StationConfig(id_station=ST2, id_broker=BROKER, password="Cambiata99")
    wrong_password = run(SCUOLA)
    assert "PPT_AUTENTICAZIONE" in wrong_password.failures[f"{SCUOLA} (list)"]


# --- faults, retries, paging ----------------------------------------------------------------------


def test_faults_are_retried_and_a_failed_flow_holds_the_cursor(env: Database, sandbox: Any) -> None:
    st = sandbox.state
    with env.session() as s:
        for n in range(1, 4):
            paid(s, st, ec=COMUNE, n=n, amounts=["3.00"])
        paid(s, st, ec=SCUOLA, n=1, amounts=["4.00"])
        s.commit()
    settle(sandbox)
    faults = {
        "seed": 5,
        "rules": [
            {"path": "/fdr-org/", "errorRate": 1, "error": "http_503", "times": 1},
            {"path": "/fdr-org/", "dropRate": 1, "times": 1},
            {
                "path": "/nodo/",
                "operation": "nodoChiediFlussoRendicontazione",
                "errorRate": 1,
                "error": "soap_fault",
                "times": 1,
            },
            {"path": "/nodo/", "malformedRate": 1, "times": 1},
        ],
    }
    assert httpx.put(f"{sandbox.url}/sandbox/faults", json=faults).status_code == 200
    summary = run()
    assert summary.failures == {} and sorted(o.id_dominio for o in summary.outcomes) == [COMUNE, SCUOLA]
    with env.session() as s:
        failed = [
            (e.component, e.fault_code or e.error.split(":")[0]) for e in events(s) if e.outcome == "FAIL"
        ]
        assert sorted(failed) == sorted(
            [
                ("fdr", "HTTP_503"),
                ("fdr", "PagopaRetriableError"),
                ("nodo", "PPT_SYSTEM_ERROR"),
                ("nodo", "PagopaRetriableError"),
            ]
        )
        cursor = s.get(Watermark, f"fdr:{COMUNE}")
        assert cursor is not None
        first_cursor = cursor.value
    # A flow whose payments keep failing: the run ends with that failure, the cursor stays before it.
    later = DAY + timedelta(days=1)
    with env.session() as s:
        code = iuv(COMUNE, 50)
        make_paid(s, id_dominio=COMUNE, iuv=code, amounts=[Decimal("9.00")], psp_id=PSP_A)
        s.commit()
    with st.lock:
        st.transfers.append(
            PaidTransfer(
                ec_fiscal_code=COMUNE,
                iuv=code,
                iur="IURLATE",
                transfer_index=1,
                amount=Decimal("9.00"),
                outcome=0,
                pay_date=later,
                psp_id=PSP_A,
                receipt_id="R",
            )
        )
    late_id = settle(sandbox, date=later.isoformat())["flows"][0]["idFlusso"]
    stuck = {
        "seed": 1,
        "rules": [
            {
                "path": f"/fdr-org/service/v1/organizations/{COMUNE}/fdrs/{late_id}",
                "errorRate": 1,
                "error": "http_500",
            }
        ],
    }
    assert httpx.put(f"{sandbox.url}/sandbox/faults", json=stuck).status_code == 200
    blocked = run(COMUNE)
    assert list(blocked.failures) == [f"{COMUNE}/{late_id} r1"] and blocked.outcomes == []
    with env.session() as s:
        assert s.get(Watermark, f"fdr:{COMUNE}").value == first_cursor  # type: ignore[union-attr]
        assert len([e for e in events(s, id_flusso=late_id) if e.outcome == "FAIL"]) == 3  # call_attempts
    assert httpx.delete(f"{sandbox.url}/sandbox/faults").status_code == 200
    unblocked = run(COMUNE)
    assert [(o.id_flusso, o.status, o.linked) for o in unblocked.outcomes] == [(late_id, "STORED", 1)]
    with env.session() as s:
        assert s.get(Watermark, f"fdr:{COMUNE}").value > first_cursor  # type: ignore[union-attr]


def test_flow_larger_than_one_page(env: Database, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGOFLOW_PAGOPA_FDR_PAGE_SIZE", "500")
    get_endpoints.cache_clear()
    st = sandbox.state
    codes = [iuv(COMUNE, n) for n in range(1, 1201)]
    with env.session() as s:
        bulk_paid(s, id_dominio=COMUNE, iuvs=codes, amount=Decimal("2.00"), psp_id=PSP_A)
        s.commit()
    with st.lock:
        st.transfers.extend(
            PaidTransfer(
                ec_fiscal_code=COMUNE,
                iuv=c,
                iur=f"IUR{n:06d}",
                transfer_index=1,
                amount=Decimal("2.00"),
                outcome=0,
                pay_date=DAY,
                psp_id=PSP_A,
                receipt_id="R",
            )
            for n, c in enumerate(codes)
        )
    settle(sandbox)
    summary = run(COMUNE)
    [outcome] = summary.outcomes
    assert (outcome.lines, outcome.linked, outcome.amount, outcome.state) == (
        1200,
        1200,
        Decimal("2400.00"),
        "ACCETTATA",
    )
    with env.session() as s:
        pages = [e for e in events(s, operation="getPaymentsFromPublishedFlow")]
        assert len(pages) == 3 and {e.keys["page"] for e in pages} == {"1", "2", "3"}
        linked = s.exec(select(Collection).where(col(Collection.flow_line_id).is_not(None))).all()
        assert len(linked) == 1200 and len({c.iur for c in linked}) == 1200


# --- Prefect --------------------------------------------------------------------------------------


@pytest.mark.prefect
def test_the_flow_run_by_prefect_publishes_its_report(
    sqlite_db: Database, sandbox: Any, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.artifacts import Artifact

    from flows.download_reporting_flows import download_reporting_flows

    env_db = sqlite_db
    with env_db.session() as s:
        load_example_registry(s)
    for name, value in {
        "PAGOFLOW_DATABASE_URL": env_db.url,
        "PAGOFLOW_PAGOPA_FDR_URL": f"{sandbox.url}/fdr-org/service/v1",
        "PAGOFLOW_PAGOPA_NODO_URL": f"{sandbox.url}/nodo/nodoPerPa",
        "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0",
        "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0",
        "PAGOFLOW_STATION_01_PASSWORD": PW1,
        "PAGOFLOW_STATION_02_PASSWORD": PW2,
        "PAGOFLOW_GPD_SUBSCRIPTION_KEY": FDR_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    configure_sandbox(sandbox.state)
    st = sandbox.state
    with env_db.session() as s:
        paid(s, st, ec=COMUNE, n=1, amounts=["11.00", "1.00"])
        paid(s, st, ec=COMUNE, n=2, amounts=["5.00"], psp=PSP_B)
        paid(s, st, ec=SCUOLA, n=1, amounts=["8.00"])
        s.commit()
    report(st, ec=COMUNE, iuv=iuv(COMUNE, 3), amounts=["1.00"])
    settle(sandbox)
    result = download_reporting_flows()
    assert result["counts"] == {"lines": 5, "failures": 0, "STORED": 3}
    artifact = Artifact.get("reporting-flows")
    assert artifact is not None
    rows = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)  # type: ignore[arg-type]
    by = {(r["ec"], r["psp"]): r for r in rows}
    assert set(by) == {(COMUNE, PSP_A), (COMUNE, PSP_B), (SCUOLA, PSP_A)}
    assert by[(COMUNE, PSP_A)] == {
        "ec": COMUNE,
        "psp": PSP_A,
        "flows": 1,
        "anomalous_flows": 0,
        "refused": 0,
        "lines": 3,
        "amount": "13.00",
        "linked": 2,
        "no_receipt": 0,
        "other_broker": 0,
        "anomalies": "007101×1",
    }
    assert download_reporting_flows(id_dominio=SCUOLA)["counts"] == {"lines": 0, "failures": 0}
    clear_caches()


# --- API Ragioneria -------------------------------------------------------------------------------


def test_ragioneria_reads_over_http(env: Database, sandbox: Any) -> None:
    st = sandbox.state
    with env.session() as s:
        rest_iuv = paid(s, st, ec=COMUNE, n=1, amounts=["10.00", "0.50"])
        waiting = iuv(COMUNE, 2)
        make_position(s, id_dominio=COMUNE, iuv=waiting, amount=Decimal("2.00"))
        soap_iuv = paid(s, st, ec=SCUOLA, n=1, amounts=["6.00"])
        s.commit()
    report(st, ec=COMUNE, iuv=waiting, amounts=["2.00"])
    ids = {f["ec"]: f["idFlusso"] for f in settle(sandbox)["flows"]}
    assert run().failures == {}
    settle(sandbox, reissue=[{"idFlusso": ids[COMUNE], "dropIuvs": [waiting]}])
    assert run(COMUNE).failures == {}
    from web.app import create_app

    with live_server(create_app()) as url:

        def get(path: str, auth: tuple[str, str] | None = ADMIN, **kw: Any) -> httpx.Response:
            return httpx.get(url + RAGIONERIA + path, auth=auth, timeout=30, **kw)

        assert get("/flussiRendicontazione", auth=None).status_code == 401
        everything = get("/flussiRendicontazione").json()
        assert everything["numRisultati"] == 3
        assert sorted((r["idDominio"], r["revisione"], r["stato"]) for r in everything["risultati"]) == [
            (COMUNE, 1, "OBSOLETA"),
            (COMUNE, 2, "ACCETTATA"),
            (SCUOLA, 1, "ACCETTATA"),
        ]
        assert get("/flussiRendicontazione", params={"escludiObsoleti": True}).json()["numRisultati"] == 2
        assert get("/flussiRendicontazione", params={"stato": "OBSOLETA"}).json()["numRisultati"] == 1
        tributi = get("/flussiRendicontazione", auth=TRIBUTI).json()
        assert [r["idDominio"] for r in tributi["risultati"]] == [COMUNE, COMUNE]
        assert get("/flussiRendicontazione", auth=TRIBUTI, params={"idDominio": SCUOLA}).status_code == 403
        assert get(f"/flussiRendicontazione/{SCUOLA}/{ids[SCUOLA]}", auth=TRIBUTI).status_code == 403
        scuola = get("/flussiRendicontazione", auth=SCUOLA_APP).json()
        assert [r["idFlusso"] for r in scuola["risultati"]] == [ids[SCUOLA]]
        assert get("/flussiRendicontazione", params={"iuv": soap_iuv}).json()["numRisultati"] == 1
        assert (
            get("/flussiRendicontazione", params={"idFlusso": ids[COMUNE].lower()}).json()["numRisultati"]
            == 2
        )
        assert get("/flussiRendicontazione", params={"stato": "ANOMALA"}).json()["numRisultati"] == 0
        day = (DAY + timedelta(days=1)).isoformat()
        assert get("/flussiRendicontazione", params={"dataDa": day, "dataA": day}).json()["numRisultati"] == 3
        assert (
            get("/flussiRendicontazione", params={"dataDa": (DAY + timedelta(days=3)).isoformat()}).json()[
                "numRisultati"
            ]
            == 0
        )
        paged = get("/flussiRendicontazione", params={"risultatiPerPagina": 1}).json()
        assert (paged["numPagine"], len(paged["risultati"]), paged["prossimiRisultati"] is not None) == (
            3,
            1,
            True,
        )
        assert get("/flussiRendicontazione", params={"idDominio": "123"}).status_code == 400

        detail = get(f"/flussiRendicontazione/{COMUNE}/{ids[COMUNE]}", auth=TRIBUTI).json()
        assert (detail["revisione"], detail["stato"], detail["numeroPagamenti"]) == (2, "ACCETTATA", 2)
        [first, second] = detail["rendicontazioni"]
        assert (first["iuv"], first["stato"], first["importo"]) == (rest_iuv, "LINKED", 10.0)
        assert (
            first["ricevuta"]["idRicevuta"] == f"R-{rest_iuv}-{PSP_A}"
            and first["riscossione"]["iur"] == first["iur"]
        )
        assert first["pendenza"]["idPendenza"] == f"P-{rest_iuv}" and second["indiceDati"] == 2
        assert get(f"/flussiRendicontazione/{COMUNE}/nope").status_code == 404
        older = get(f"/flussiRendicontazione/{COMUNE}/{ids[COMUNE]}", params={"revisione": 1}).json()
        assert (older["stato"], older["obsoleto"], len(older["rendicontazioni"])) == ("OBSOLETA", True, 3)
        [waiting_line] = [r for r in older["rendicontazioni"] if r["iuv"] == waiting]
        assert waiting_line["stato"] == "NO_RECEIPT" and waiting_line["ricevuta"] is None
        assert waiting_line["pendenza"]["idPendenza"] == f"P-{waiting}"
        xml = get(f"/flussiRendicontazione/{COMUNE}/{ids[COMUNE]}", headers={"Accept": "application/xml"})
        assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
        validate_flow_xml(xml.content)
        assert xml.content.count(b"<datiSingoliPagamenti>") == 2
        soap_xml = get(
            f"/flussiRendicontazione/{SCUOLA}/{ids[SCUOLA]}",
            auth=SCUOLA_APP,
            headers={"Accept": "application/xml"},
        )
        assert soap_xml.content == next(
            f.xml
            for revs in reporting_state(st).revisions.values()
            for f in revs
            if f.id_flusso == ids[SCUOLA]
        )


# --- hostile XML over the legacy SOAP service -----------------------------------------------------

LOL_BOMB = (  # "billion laughs": &lol9; is 10^9 times "lol"
    '<!DOCTYPE FlussoRiversamento [\n<!ENTITY lol0 "lol">\n'
    + "".join(f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">\n' for n in range(1, 10))
    + "]>\n"
).encode()
XXE = b'<!DOCTYPE FlussoRiversamento [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'


def hostile(spec: FlowSpec, *, doctype: bytes, entity: bytes, padding: int = 0) -> bytes:
    """The spec's flow with ``doctype`` in its prolog and ``&entity;`` as the PSP's name and first IUR.

    ``padding`` bytes of comment before the DOCTYPE hide it from a look at the document's first 64 KiB.
    """
    xml = build_flow_xml(spec)
    declaration, rest = xml.split(b"\n", 1)
    comment = b"<!--" + b"x" * padding + b"-->\n" if padding else b""
    reference = b"&" + entity + b";"
    rest = rest.replace(
        f"<denominazioneMittente>{spec.psp_name}<".encode(), b"<denominazioneMittente>" + reference + b"<"
    ).replace(
        f"<identificativoUnivocoRiscossione>{spec.payments[0].iur}<".encode(),
        b"<identificativoUnivocoRiscossione>" + reference + b"<",
    )
    assert reference in rest
    return declaration + b"\n" + comment + doctype + rest


def database_text(db: Database) -> str:
    """Every row of every table (the journal included) as text, to search for leaked content."""
    from sqlalchemy import select as sa_select

    from models.tables import metadata

    with db.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row)) for table in metadata.sorted_tables for row in conn.execute(sa_select(table))
        )


def test_hostile_xml_flows_are_refused_and_the_run_goes_on(env: Database, sandbox: Any) -> None:
    """An entity bomb and an external entity (file:///etc/passwd) served over nodoChiediFlussoRendicontazione
    are refused with a journal entry; nothing of theirs is stored, the run's other flows are."""
    st = sandbox.state
    with env.session() as s:
        good = [paid(s, st, ec=SCUOLA, n=n, amounts=["20.00"]) for n in (1, 2)]
        later = iuv(SCUOLA, 3)
        make_paid(s, id_dominio=SCUOLA, iuv=later, amounts=[Decimal("9.00")], psp_id=PSP_B)
        s.commit()
    settled_id = settle(sandbox)["flows"][0]["idFlusso"]
    bomb = spec_of(SCUOLA, PSP_B, "S0000000101", [(iuv(SCUOLA, 40), "IURBOMB", "1.00")])
    bomb_xml = hostile(bomb, doctype=LOL_BOMB, entity=b"lol9")
    publish(st, bomb, xml=bomb_xml)
    xxe = spec_of(SCUOLA, PSP_B, "S0000000102", [(iuv(SCUOLA, 41), "IURXXE", "1.00")])
    xxe_xml = hostile(xxe, doctype=XXE, entity=b"xxe", padding=70_000)
    publish(st, xxe, xml=xxe_xml)
    after = spec_of(SCUOLA, PSP_B, "S0000000103", [(later, "IURLATER", "9.00")])  # listed after both
    publish(st, after)
    passwd = Path("/etc/passwd").read_text(encoding="utf-8").splitlines()[0]
    # The document really is hostile: a parser that resolves entities reads the file into the flow.
    naive = etree.fromstring(xxe_xml, etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=True))
    assert passwd in etree.tostring(naive, encoding="unicode")

    summary = run(SCUOLA)
    assert summary.failures == {}
    outcome = {o.id_flusso: o for o in summary.outcomes}
    assert [o.id_flusso for o in summary.outcomes].index(after.id_flusso) > [
        o.id_flusso for o in summary.outcomes
    ].index(xxe.id_flusso)  # the run carried on past the refused flows
    for spec in (bomb, xxe):
        refused = outcome[spec.id_flusso]
        assert (refused.status, refused.lines) == ("REFUSED", 0)
        assert refused.error.startswith("unsafe: ") and "DOCTYPE" in refused.error
    assert (outcome[settled_id].status, outcome[settled_id].linked) == ("STORED", 2)
    assert (outcome[after.id_flusso].status, outcome[after.id_flusso].linked) == ("STORED", 1)
    with env.session() as s:
        stored = {f.id_flusso for f in s.exec(select(ReportingFlow))}
        assert stored == {settled_id, after.id_flusso}
        assert s.exec(select(ReportingLine).where(col(ReportingLine.iuv).in_(good))).all()
        hostile_lines = select(ReportingLine).where(
            col(ReportingLine.iuv).in_([bomb.payments[0].iuv, xxe.payments[0].iuv])
        )
        assert s.exec(hostile_lines).all() == []
        for spec, document in ((bomb, bomb_xml), (xxe, xxe_xml)):
            [entry] = events(s, component="reporting", id_flusso=spec.id_flusso)
            assert (entry.outcome, entry.fault_code, entry.id_dominio) == ("KO", "FR_UNSAFE", SCUOLA)
            assert entry.id_flusso == spec.id_flusso and "DOCTYPE" in (entry.error or "")
            # The document is kept for the operator exactly as received: never expanded, never resolved.
            assert entry.response_payload == document.decode()
    everything = database_text(env)
    assert passwd not in everything and "root:x:0:0" not in everything
    assert "lol" * 10 not in everything  # the bomb's declarations hold references ("&lol0;"), never "lollol"


# --- anomalies 007115 and 007116 through a download run ---------------------------------------------


def test_duplicate_line_and_wrong_receiver_through_a_run(env: Database, sandbox: Any) -> None:
    """007115 over both protocols (FdR checks only that payment indexes are unique; the FR XSD has no key),
    007116 over SOAP (the Node files a legacy flow under the EC of the request, the XML names its own)."""
    st = sandbox.state
    with env.session() as s:
        rest_dup, rest_other = iuv(COMUNE, 60), iuv(COMUNE, 61)
        soap_dup, soap_other, misrouted = iuv(SCUOLA, 60), iuv(SCUOLA, 61), iuv(SCUOLA, 62)
        for ec, code, amount in (
            (COMUNE, rest_dup, "5.00"),
            (COMUNE, rest_other, "6.00"),
            (SCUOLA, soap_dup, "5.00"),
            (SCUOLA, soap_other, "6.00"),
            (SCUOLA, misrouted, "7.00"),
        ):
            make_paid(s, id_dominio=ec, iuv=code, amounts=[Decimal(amount)], psp_id=PSP_B)
        s.commit()
    duplicated = {
        ec: spec_of(
            ec, PSP_B, f"D{n}", [(dup, "IURDUP", "5.00"), (dup, "IURDUP", "5.00"), (other, "IUROTH", "6.00")]
        )
        for n, (ec, dup, other) in enumerate(((COMUNE, rest_dup, rest_other), (SCUOLA, soap_dup, soap_other)))
    }
    for spec in duplicated.values():
        publish(st, spec)
    # Listed by the Node for the Scuola, but the document is addressed to the Comune.
    to_scuola = spec_of(SCUOLA, PSP_B, "W0000000116", [(misrouted, "IURMIS", "7.00")])
    publish(st, to_scuola, xml=build_flow_xml(dataclasses.replace(to_scuola, ec_fiscal_code=COMUNE)))

    summary = run()
    assert summary.failures == {}
    outcome = {o.id_flusso: o for o in summary.outcomes}
    with env.session() as s:
        for ec, dup, other in ((COMUNE, rest_dup, rest_other), (SCUOLA, soap_dup, soap_other)):
            spec = duplicated[ec]
            assert (outcome[spec.id_flusso].status, outcome[spec.id_flusso].state) == ("STORED", "ANOMALA")
            flow = s.exec(select(ReportingFlow).where(ReportingFlow.id_flusso == spec.id_flusso)).one()
            assert (flow.id_dominio, flow.source, flow.state) == (
                ec,
                "FDR_REST" if ec == COMUNE else "SOAP",
                "ANOMALA",
            )
            assert [a["codice"] for a in flow.anomalies["flusso"]] == ["007115"]
            assert flow.anomalies["righe"] == {"007115": 1}
            lines = lines_by_iuv(s, flow.id)
            first, repeated = lines[dup]
            assert (first.state, first.anomalies, repeated.state) == ("LINKED", None, "ANOMALA")
            assert [a["codice"] for a in repeated.anomalies] == ["007115"]
            assert "IURDUP" in repeated.anomalies[0]["descrizione"]
            assert repeated.collection_id is None and repeated.position_id == first.position_id
            assert lines[other][0].state == "LINKED"
            collection = s.exec(select(Collection).where(Collection.iuv == dup)).one()
            assert collection.flow_line_id == first.id  # the payment is reported once, by the first line

        misrouted_flow = s.exec(
            select(ReportingFlow).where(ReportingFlow.id_flusso == to_scuola.id_flusso)
        ).one()
        assert (misrouted_flow.id_dominio, misrouted_flow.state) == (SCUOLA, "ANOMALA")
        [wrong_ec] = misrouted_flow.anomalies["flusso"]
        assert wrong_ec["codice"] == "007116" and COMUNE in wrong_ec["descrizione"]
        assert outcome[to_scuola.id_flusso].flow_anomalies[0].startswith("007116 ")
        [line] = lines_by_iuv(s, misrouted_flow.id)[misrouted]
        assert (line.state, line.anomalies, line.collection_id) == ("UNKNOWN", None, None)
        # Kept for the record, never linked: the Scuola's payment of that IUV is still unreported.
        assert s.exec(select(Collection).where(Collection.iuv == misrouted)).one().flow_line_id is None
        assert s.exec(select(ReportingFlow).where(ReportingFlow.id_dominio == COMUNE)).all() == [
            s.exec(select(ReportingFlow).where(ReportingFlow.id_flusso == duplicated[COMUNE].id_flusso)).one()
        ]


def test_a_node_answer_against_the_schema_fails_that_ec_only(
    env: Database, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Node's answers are checked against nodeForPa.xsd before zeep reads them (zeep alone is lenient)
    from tests.test_rpt_legacy import mangling_node

    def not_a_count(answer: etree._Element) -> None:
        listing = answer.find("elencoFlussiRendicontazione")
        assert listing is not None, etree.tostring(answer)
        listing.find("totRestituiti").text = "molti"  # type: ignore[union-attr]  # an xsd:int

    with env.session() as s:
        paid(s, sandbox.state, ec=SCUOLA, n=1, amounts=["3.00"])
        s.commit()
    settle(sandbox)
    mangles = {"nodoChiediElencoFlussiRendicontazione": not_a_count}
    with live_server(mangling_node(sandbox.url, mangles)) as node:
        monkeypatch.setenv("PAGOFLOW_PAGOPA_NODO_URL", f"{node}/nodo/nodoPerPa")
        clear_caches()
        refused = run(SCUOLA)
        assert list(refused.failures) == [f"{SCUOLA} (list)"]
        failure = refused.failures[f"{SCUOLA} (list)"]
        assert "PagopaSchemaError" in failure and "invalid against" in failure, failure
        with env.session() as s:
            (event,) = events(s, component="nodo", id_dominio=SCUOLA)
            assert event.outcome == "FAIL" and (event.error or "").startswith("PagopaSchemaError")
        mangles.clear()
        again = run(SCUOLA)  # the same Node answering as it should: the flow comes
    assert again.failures == {} and [o.id_dominio for o in again.outcomes] == [SCUOLA]
