"""The daily-cycle flow through Prefect against the sandbox: one EC's treasury fails, the other's day ends.

Two ECs pay through the real journey (sandbox PSP → our station), the sandbox settles the day (reporting flows
and each EC's treasury journal on SFTP); the school's SFTP password is wrong. The cycle must carry the Comune
to the end (published, notified, flows downloaded, money ingested and cashed, reports written), run every
other stage of the school, report the school's treasury as failed, and end with one summary per EC.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
import yaml
from sqlalchemy import func, select
from sqlmodel import Session

from models.notifications import Notification
from models.positions import Position
from rules.calendar import italian_today
from tests.conftest import Database
from tests.factories import example_registry_data
from tests.factories_payments import Recorder
from tests.live_server import live_server
from tests.platform_env import ECS, PlatformEnv, platform_and_sandbox

COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
SFTP_PASSWORD = "daily-sftp-password"  # noqa: S105 - a test value
PAID = {COMUNE: 5, SCUOLA: 3}  # of 9 and 5 positions


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[Any]:
    """The treasury bank's SFTP server (in-process paramiko), one directory per EC."""
    from sandbox.sftp import SandboxSftpServer

    for ec in (COMUNE, SCUOLA):
        (tmp_path / "bank" / ec).mkdir(parents=True)
    server = SandboxSftpServer(root=tmp_path / "bank", username="tesoreria", password=SFTP_PASSWORD,
                               host_key=paramiko.ECDSAKey.generate()).start()
    yield server
    server.stop()


def _registry(tmp_path: Path, bank: Any, notify_url: str) -> dict[str, Any]:
    data = example_registry_data()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(bank.known_hosts_line() + "\n", encoding="utf-8")
    comune = {**data["treasury_sources"][0], "port": bank.port, "known_hosts": str(known_hosts),
              "remote_dir": f"/{COMUNE}", "archive_dir": None}
    scuola = {**comune, "name": "scuola-tesoreria", "id_dominio": SCUOLA, "account": ECS[SCUOLA][2],
              "remote_dir": f"/{SCUOLA}", "password_ref": "env:PAGOFLOW_SFTP_SCUOLA_PASSWORD"}
    data["treasury_sources"] = [comune, scuola]
    data["applications"][0]["notification"]["url"] = notify_url
    for creditor in data["creditors"]:  # the cycle leaves a disabled EC alone (and the test is quicker)
        creditor["enabled"] = creditor["id_dominio"] != PROVINCIA
    return data


def _positions(db: Database) -> dict[str, list[str]]:
    """Nine TARI positions of the Comune and five MENSA of the school, through the API's store function."""
    from rules.positions import PendenzaPut, validate_position
    from store.positions import load_caller, load_registry_view, upsert_positions

    due = (italian_today() + timedelta(days=30)).isoformat()
    navs: dict[str, list[str]] = {COMUNE: [], SCUOLA: []}
    with Session(db.engine) as s:
        registry = load_registry_view(s)
        for ec, a2a, kind, count, iban in ((COMUNE, "A2A-TRIBUTI", "TARI", 9, None),
                                           (SCUOLA, "A2A-SCUOLA", "MENSA", 5, ECS[SCUOLA][2])):
            caller = load_caller(s, id_a2a=a2a)
            batch = []
            for n in range(count):
                amount = f"{10 + 7 * n}.{n:02d}"
                voce: dict[str, Any] = {"idVocePendenza": "V1", "importo": amount, "descrizione": kind}
                voce.update({"ibanAccredito": iban, "tipoContabilita": "ALTRO", "codiceContabilita": kind}
                            if iban else {"codEntrata": "TARI"})
                body = PendenzaPut.model_validate({
                    "idTipoPendenza": kind, "idDominio": ec, "causale": f"{kind} {n}", "importo": amount,
                    "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": f"Debitore {n}"},
                    "dataScadenza": due, "voci": [voce]})
                batch.append(validate_position(body, id_a2a=a2a, id_pendenza=f"DAY-{kind}-{n}", caller=caller,
                                               registry=registry))
            stored = upsert_positions(s, batch=batch)
            navs[ec] = [r.position.nav for r in stored if r.position and r.position.nav]
        s.commit()
    return navs


def _pay_and_settle(env: PlatformEnv, navs: dict[str, list[str]]) -> tuple[dict[str, Decimal], Any]:
    """The PSPs pay some notices (station journey) and settle the day; returns the amounts paid per EC."""
    today = italian_today().isoformat()
    payments = [{"noticeNumber": nav, "fiscalCode": ec, "payDate": today}
                for ec, count in PAID.items() for nav in navs[ec][:count]]
    paid = httpx.post(f"{env.sandbox_url}/sandbox/pay-batch", json={"payments": payments, "concurrency": 4},
                      timeout=120).json()
    assert paid["ok"] == len(payments), paid
    amounts = {ec: Decimal("0.00") for ec in PAID}
    for r in paid["results"]:
        amounts[r["fiscalCode"]] += Decimal(r["amount"])
    settled = httpx.post(f"{env.sandbox_url}/sandbox/settle", json={"date": today, "seed": 3}, timeout=60)
    return amounts, settled.json()


def _summary_artifact(flow_run_id: Any) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["daily-cycle-summary"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1, found  # one summary artifact per cycle
    data = found[0].data
    return yaml.safe_load(data) if isinstance(data, str) else data  # JSON is YAML


@pytest.mark.prefect
def test_one_ecs_treasury_fails_and_the_cycle_carries_every_other_stage_through(
        sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None,
        bank: Any) -> None:
    from cli.app import apply_registry_file
    from flows.daily_cycle import DailyCycleError, daily_cycle

    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("PAGOFLOW_SFTP_COMUNE_PASSWORD", SFTP_PASSWORD)
    monkeypatch.setenv("PAGOFLOW_SFTP_SCUOLA_PASSWORD", "not-the-password")  # the school's source is broken
    monkeypatch.setenv("PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD", "notify-secret")
    monkeypatch.setenv("PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS", "0")
    recorder = Recorder()
    from cli.demo import sandbox_endpoints
    from connectors.pagopa.config import get_endpoints

    with platform_and_sandbox(sqlite_db, monkeypatch) as env, live_server(recorder.app()) as app_url:
        creditors = [{"fiscalCode": ec, "name": name, "idStation": sid, "idBroker": "77777777777",
                      "iban": iban, "treasuryFormat": "opi", "treasuryDir": str(tmp_path / "bank" / ec)}
                     for ec, (name, sid, iban) in ECS.items() if ec in PAID]
        httpx.put(f"{env.sandbox_url}/sandbox/config", json={"creditors": creditors},
                  timeout=10).raise_for_status()
        for name, value in sandbox_endpoints(env.sandbox_url).items():
            monkeypatch.setenv(name, value)
        get_endpoints.cache_clear()
        try:
            registry = tmp_path / "registry.yaml"
            registry.write_text(yaml.safe_dump(_registry(tmp_path, bank, f"{app_url}/govpay-ente")),
                                encoding="utf-8")
            apply_registry_file(registry)
            navs = _positions(sqlite_db)
            paid, settled = _pay_and_settle(env, navs)
            money = {ec: sum((Decimal(c["amount"]) for j in settled["journals"] if j["ec"] == ec
                              for c in j["credits"] if c["kind"] == "flow"), Decimal("0.00")) for ec in PAID}
            assert money == paid  # the sandbox's own view: every flow credited in full, one journal per EC

            state = daily_cycle(return_state=True)
        finally:
            get_endpoints.cache_clear()  # cached from the environment: forget the sandbox's URLs

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DailyCycleError)
    failed = [(s.stage, s.ec, s.target) for s in error.failed]
    assert failed == [("ingest-treasury", SCUOLA, "scuola-tesoreria")], error
    assert "SftpAuthError" in error.failed[0].message and "authentication refused" in error.failed[0].message
    summary = error.summary
    ran = {(s["stage"], s["ec"]) for s in summary["stages"] if s["ok"]}
    for ec in (COMUNE, SCUOLA):  # every per-EC stage ran for every enabled EC, the failing one included
        assert {("publish-positions", ec), ("download-reporting-flows", ec), ("reconcile", ec)} <= ran
    assert all(s["ec"] != PROVINCIA for s in summary["stages"])
    assert {("receipts", "*"), ("notify-applications", "*"), ("ingest-treasury", COMUNE)} <= ran

    figures = {f["id_dominio"]: f for f in summary["figures"]}
    comune, scuola = figures[COMUNE], figures[SCUOLA]
    assert (comune["positions"], comune["receipts"], comune["paid"]) == (9, PAID[COMUNE], paid[COMUNE])
    assert (scuola["positions"], scuola["receipts"], scuola["paid"]) == (5, PAID[SCUOLA], paid[SCUOLA])
    assert comune["positions_pending_publication"] == scuola["positions_pending_publication"] == 0
    # the Comune's day is complete: its flow downloaded, its money ingested, every payment cashed
    assert comune["flows"] == 1 and comune["money"] == paid[COMUNE] and comune["cashed"] == paid[COMUNE]
    # the school's flow came (SOAP) but its money did not: nothing cashed, every payment reported not cashed
    assert scuola["flows"] == 1 and scuola["money"] == 0 and scuola["cashed"] == 0

    # unpaid positions are at pagoPA (GPD for the Comune, ACA for the school); notifications reached the app
    sandbox_positions = {(k[0], o.iuv) for k, p in env.sandbox.state.positions.items() for o in p.options}
    with Session(sqlite_db.engine) as s:
        open_ = s.execute(select(Position.id_dominio, Position.iuv)
                          .where(Position.state == "NON_ESEGUITA")).all()
        delivered = s.execute(select(func.count()).select_from(Notification)
                              .where(Notification.state == "DELIVERED")).scalar_one()
    assert len(open_) == 9 - PAID[COMUNE] + 5 - PAID[SCUOLA]
    assert {(ec, iuv) for ec, iuv in open_} <= sandbox_positions
    assert delivered == len(recorder.calls) == PAID[COMUNE]  # only A2A-TRIBUTI has an endpoint

    # reports: written for both ECs, and their totals say what the sandbox paid and settled
    reports = summary["reports"]
    zero = Decimal("0.00")
    for ec, cashed, reported in ((COMUNE, paid[COMUNE], zero), (SCUOLA, zero, paid[SCUOLA])):
        daily = next(Path(p) for p in reports[ec]["files"].values()
                     if Path(p).name.startswith("riconciliazione-") and p.endswith(".csv"))
        totals = {r["etichetta"]: Decimal(r["importo"]) for r in csv.DictReader(daily.open(encoding="utf-8"))
                  if r["sezione"] == "TOTALE"}
        assert (totals["cashed"], totals["reported"], totals["paid"]) == (cashed, reported, zero), ec

    # one summary artifact: the day per EC, the failed stage on the school's row
    rows = {r["EC"]: r for r in _summary_artifact(state.state_details.flow_run_id)}
    assert set(rows) == {COMUNE, SCUOLA}  # the ECs of the cycle (the disabled Provincia is not one)
    assert rows[COMUNE]["failed stages"] == "-"
    assert rows[SCUOLA]["failed stages"].startswith("ingest-treasury (scuola-tesoreria): ")
    for ec, f in ((COMUNE, comune), (SCUOLA, scuola)):
        assert (rows[ec]["positions"], rows[ec]["payments"], rows[ec]["flows"]) == (
            f["positions"], f["receipts"], f["flows"])
        assert (Decimal(rows[ec]["paid"]), Decimal(rows[ec]["money"]), Decimal(rows[ec]["cashed"])) == (
            f["paid"], f["money"], f["cashed"])
        assert rows[ec]["anomalies"] == f["anomalies"]
