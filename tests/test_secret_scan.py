"""No secret leaves the platform: a realistic slice of a day, then every trace it left is searched for them.

The slice runs in the settlement world (platform, pagoPA sandbox, the bank's SFTP server): a bulk load, an
application's calls with HTTP Basic and with its API key (and with wrong ones), publication to GPD with the
subscription key, a payment through the station with its inbound key, notifications to an application that
authenticates us with a password but is down, reporting flows over FdR REST (subscription key) and the Node's
SOAP (station password), the treasury journal over SFTP with a password, an SFTP login with a wrong
password, and the command line failing on a database URL that carries a password. Every flow runs through
Prefect with the journal keeping every payload (``PAGOFLOW_JOURNAL_PAYLOADS=always``).

Then each secret value, as configured and as it travels (base64 in a Basic header, URL-encoded), is looked
for in the captured log records (the platform's and Prefect's), the Prefect logs and artifacts of the runs,
every row of every table of the database (the event journal first), every file the runs wrote (outcome
files, treasury inbox and quarantine, reports) and every HTTP error body the slice received.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from models.journal import Event
from models.registry import TreasurySource
from models.tables import metadata
from rules.positions import italian_today
from tests.conftest import Database
from tests.platform_env import GPD_KEY, STATION_KEY, station_password
from tests.settlement_env import (
    API,
    COMUNE,
    IBANS,
    SFTP_PASSWORD,
    TRIBUTI,
    settlement_world,
)

NOTIFY_SECRET = "notify-tributi-S3cret-5e6f"  # noqa: S105 - the application's password for our notifications
DB_PASSWORD = "db-conn-P4ssw0rd-7a8b"  # noqa: S105 - in a database URL that the command line cannot reach
WRONG_SFTP_PASSWORD = "wrong-sftp-Pw-9c0d"  # noqa: S105 - sent to the bank's server on purpose
SECRETS = {
    "station inbound key": STATION_KEY,
    "GPD subscription key": GPD_KEY,
    "station 01 password": station_password("77777777777_01"),
    "station 02 password": station_password("77777777777_02"),
    "bank SFTP password": SFTP_PASSWORD,
    "wrong SFTP password": WRONG_SFTP_PASSWORD,
    "notification password": NOTIFY_SECRET,
    "application password": TRIBUTI[1],
    "application API key": "demo-tributi-apikey",
    "operator password": "demo-operator-password",
    "database password": DB_PASSWORD,
}


def forms(secret: str) -> set[str]:
    """The secret as configured and as it travels: in a Basic header (the slice's users), URL-encoded."""
    users = ("gestionale-tributi", "pagoflow", "tesoreria", "admin", "gestionale-scuola")
    basic = {base64.b64encode(f"{user}:{secret}".encode()).decode() for user in users}
    return {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()} | basic


class Collect(logging.Handler):
    """Every record, formatted with its traceback: what a log file would hold."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is itself worth a look
            self.lines.append(
                f"unformattable record from {record.name}: {exc!r} {record.msg!r} {record.args!r}"
            )


@pytest.fixture
def logs() -> Iterator[Collect]:
    handler = Collect()
    loggers = [
        logging.getLogger(),
        logging.getLogger("prefect"),
        logging.getLogger("uvicorn"),
        logging.getLogger("paramiko"),
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def database_text(db: Database) -> dict[str, str]:
    """Every row of every table, as text, by table."""
    out = {}
    with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(table.select()).all()
            out[table.name] = "\n".join(repr(tuple(row)) for row in rows)
    return out


def prefect_traces(since: datetime) -> dict[str, str]:
    """The logs and artifacts of the flow runs started since ``since``, as text, by run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run logs travel to the server in batches: send what is queued
    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        )
        ids = [run.id for run in runs]
        assert len(ids) >= 6, [run.name for run in runs]
        offset = 0
        while batch := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
        ):
            for log in batch:
                out.setdefault(f"prefect log of {log.flow_run_id}", "")
                out[f"prefect log of {log.flow_run_id}"] += log.message + "\n"
            offset += len(batch)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
        for artifact in artifacts:
            out[f"artifact {artifact.key or artifact.id}"] = f"{artifact.description} {artifact.data}"
    assert any(key.startswith("prefect log") for key in out) and any(
        key.startswith("artifact") for key in out
    )
    return out


def files_under(root: Path) -> dict[str, str]:
    return {str(p): p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()}


@pytest.mark.prefect
@pytest.mark.sftp
def test_no_secret_reaches_logs_journal_artifacts_files_or_error_bodies(
    sqlite_db: Database, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: Collect
) -> None:
    from cli.demo import write_bulk_file
    from flows.ingest_treasury import ingest_treasury
    from flows.load_positions import load_positions
    from flows.notify_applications import notify_applications
    from flows.publish_positions import publish_positions

    monkeypatch.setenv("PAGOFLOW_JOURNAL_PAYLOADS", "always")  # every payload kept: redaction has to work
    monkeypatch.setenv("PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD", NOTIFY_SECRET)
    monkeypatch.setenv("SCAN_WRONG_SFTP_PASSWORD", WRONG_SFTP_PASSWORD)
    since = datetime.now(UTC)
    bodies: dict[str, str] = {}
    with settlement_world(sqlite_db, tmp_path) as world:
        # a bulk load through the flow, one row refused
        bulk = tmp_path / "tracciato.csv"
        write_bulk_file(bulk, count=4, seed=3)
        with bulk.open("a", encoding="utf-8") as out:
            out.write("A2A-TRIBUTI;BAD-1;01234567897;;TARI;;x;;;;;;1,001\n")
        assert load_positions(path=str(bulk), id_a2a="A2A-TRIBUTI")["counts"]["REJECTED"] >= 1

        # an application's calls: Basic, API key, and wrong or refused ones
        position = world.create_position(
            "SCAN-1",
            voci=[
                {
                    "idVocePendenza": "V1",
                    "importo": 25.0,
                    "descrizione": "Quota",
                    "ibanAccredito": IBANS[COMUNE],
                    "tipoContabilita": "CAPITOLO",
                    "codiceContabilita": "1",
                }
            ],
        )
        with httpx.Client(base_url=world.platform_url + API, timeout=30) as api:
            assert api.get(
                "/pendenze/A2A-TRIBUTI/SCAN-1",
                headers={"X-Api-Id": TRIBUTI[0], "X-Api-Key": "demo-tributi-apikey"},
            ).is_success
            for name, response in {
                "wrong password": api.get(
                    "/pendenze/A2A-TRIBUTI/SCAN-1", auth=(TRIBUTI[0], "x" + TRIBUTI[1])
                ),
                "wrong key": api.get("/pendenze", headers={"X-Api-Id": TRIBUTI[0], "X-Api-Key": GPD_KEY}),
                "secret as a user": api.get("/pendenze", auth=(NOTIFY_SECRET, TRIBUTI[1])),
                "other application": api.get(
                    "/pendenze/A2A-TRIBUTI/SCAN-1", auth=("gestionale-scuola", "demo-scuola-password")
                ),
                "bad body": api.put(
                    "/pendenze/A2A-TRIBUTI/SCAN-2",
                    auth=TRIBUTI,
                    json={"causale": STATION_KEY, "importo": "1.001"},
                ),
            }.items():
                assert response.status_code in (400, 401, 403), (name, response.text)
                bodies[f"API {name}"] = response.text
        station = httpx.post(
            world.platform_url + "/pagopa/paForNode",
            content=b"<x/>",
            timeout=30,
            headers={"Ocp-Apim-Subscription-Key": GPD_KEY},
        )
        bodies["station stranger"] = station.text

        # publication (GPD, subscription key), a payment through the station (inbound key), notifications
        assert publish_positions()["published"] >= 1
        world.pay(position, day=italian_today())
        notified = notify_applications()
        assert notified["failed"] >= 1, notified  # the application's endpoint is down: the failure path

        # reporting flows (FdR REST for station 01, the Node's SOAP with the password for station 02) and SFTP
        world.settle(italian_today())
        world.download()
        assert world.ingest()["processed"] >= 1
        with sqlite_db.session() as session:
            good = session.exec(select(TreasurySource)).first()
            assert good is not None
            session.add(
                TreasurySource(
                    **good.model_dump(exclude={"id", "name", "password_ref", "created_at", "updated_at"}),
                    name="wrong-password",
                    password_ref="env:SCAN_WRONG_SFTP_PASSWORD",
                )
            )
            session.commit()
        state = ingest_treasury(source="wrong-password", return_state=True)
        assert state.is_failed(), state

    # the command line on a database it cannot reach, with a password in the URL
    cli = subprocess.run(  # noqa: S603 - our own command, fixed arguments
        [sys.executable, "-m", "cli.app", "db", "current"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ
        | {"PAGOFLOW_DATABASE_URL": f"postgresql+psycopg://pagoflow:{DB_PASSWORD}@127.0.0.1:1/x"},
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert cli.returncode != 0 and "127.0.0.1" in cli.stdout + cli.stderr, cli.stderr[-500:]
    bodies["command line"] = cli.stdout + cli.stderr

    traces = {"captured logs": "\n".join(logs.lines)} | prefect_traces(since) | bodies
    traces |= {f"table {name}": rows for name, rows in database_text(sqlite_db).items()}
    traces |= files_under(tmp_path / "work")
    leaks = sorted(
        f"{label} in {where}"
        for label, secret in SECRETS.items()
        for where, content in traces.items()
        if any(form in content for form in forms(secret))
    )
    assert leaks == [], leaks

    # The scan looked where the secrets went: every component spoke, payloads were kept, and secrets went
    # through them masked (the Node's password in the SOAP requests of the reporting download).
    assert len(logs.lines) > 50 and any("bulk file" in line for line in logs.lines)
    with sqlite_db.session() as session:
        events = session.exec(select(Event)).all()
    components = {e.component for e in events}
    assert components >= {"station", "gpd", "ente", "fdr", "nodo", "sftp"}, components
    soap_requests = [e.request_payload or "" for e in events if e.component == "nodo"]
    assert any("<password>***</password>" in payload for payload in soap_requests)
    with sqlite_db.engine.connect() as conn:  # the scan read the tables it claims to have read
        assert conn.execute(text("SELECT count(*) FROM event")).scalar_one() == len(events)
