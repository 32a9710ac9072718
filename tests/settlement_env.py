"""One intermediary's world for end-to-end reconciliation scenarios: platform, sandbox and the bank's SFTP.

``settlement_world(db, base)`` starts the platform's web process (API Pendenze and station) on ``db``, the
pagoPA sandbox configured with our stations, ECs and two PSPs, and the treasury bank's SFTP server (the
sandbox's) whose directories receive the OPI journals the sandbox writes when it settles a day. The registry
is the example one, with one treasury source per EC on that server (journals archived once stored, as in the
example). A ``World`` then drives it as the outside world would: an application creates positions over the
API, the sandbox's PSPs pay them through our station, the sandbox settles; and it runs the platform's flows
``download-reporting-flows``, ``ingest-treasury`` and ``reconcile`` (Prefect is the caller's to set up: the
``prefect_harness`` fixture).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from models.positions import Position
from models.tables import metadata
from rules.positions import italian_today
from tests.conftest import Database
from tests.factories import example_registry_data

COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
IBANS = {
    COMUNE: "IT21X0306909606000000123456",
    SCUOLA: "IT65X0306909606000000654321",
    PROVINCIA: "IT58X0103014200000000111222",
}
# The sandbox's PSPs: the first one pays unless a payment names another.
PSPS = {"BCITITMM": "Banca Sandbox S.p.A.", "PPAYITR1XXX": "PayPal Pagamenti SpA"}
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
SCUOLA_APP = ("gestionale-scuola", "demo-scuola-password")
SFTP_USER, SFTP_PASSWORD_ENV = "tesoreria", "PAGOFLOW_TEST_BANK_SFTP_PASSWORD"
SFTP_PASSWORD = "bank-sftp-test-password"  # noqa: S105 - a throwaway credential of the test SFTP server
API = "/api/pendenze/v2"
# Tables a run may change without changing anything: the event journal records each run's own conversations,
# work claims are the leases a run takes on its stage.
UNSNAPPED = {"event", "work_claim"}


@dataclass
class World:
    """What a scenario talks to, with helpers that drive it the way the outside world would."""

    db: Database
    platform_url: str
    sandbox_url: str
    bank_root: Path
    http: httpx.Client

    # --- the outside world ---------------------------------------------------------------------------

    def create_position(self, id_pendenza: str, *, voci: list[dict[str, Any]], id_dominio: str = COMUNE,
                        debt_type: str = "TARI") -> Position:
        """An application creates a position over the API Pendenze; returns it as stored."""
        id_a2a, auth = ("A2A-SCUOLA", SCUOLA_APP) if id_dominio == SCUOLA else ("A2A-TRIBUTI", TRIBUTI)
        body = {
            "idTipoPendenza": debt_type, "idDominio": id_dominio, "causale": f"Scenario {id_pendenza}",
            "soggettoPagatore": {"tipo": "F", "identificativo": "RSSMRA80A01H501U",
                                 "anagrafica": "Mario Rossi"},
            "importo": float(sum(Decimal(str(v["importo"])) for v in voci)),
            "dataScadenza": (italian_today() + timedelta(days=60)).isoformat(), "voci": voci,
        }
        r = self.http.put(f"{self.platform_url}{API}/pendenze/{id_a2a}/{id_pendenza}", json=body, auth=auth)
        assert r.status_code == 201, r.text
        with self.session() as s:
            return s.exec(select(Position).where(Position.id_a2a == id_a2a,
                                                 Position.id_pendenza == id_pendenza)).one()

    def pay(self, position: Position, *, day: date, **extra: Any) -> dict[str, Any]:
        """A sandbox PSP pays the notice on ``day``, calling our station; the receipt is delivered."""
        body = {"noticeNumber": position.nav, "fiscalCode": position.id_dominio, "payDate": day.isoformat(),
                **extra}
        r = self.http.post(f"{self.sandbox_url}/sandbox/pay", json=body)
        r.raise_for_status()
        answer = r.json()
        assert answer["outcome"] == "OK", answer
        assert set(answer["delivery"].values()) <= {"delivered", "rejected"}, answer  # the station answered
        return answer

    def settle(self, day: date, **body: Any) -> dict[str, Any]:
        """The PSPs report ``day`` (flows published) and credit the ECs (journals on the bank's SFTP)."""
        r = self.http.post(f"{self.sandbox_url}/sandbox/settle", json={"date": day.isoformat(), **body})
        assert r.status_code == 200, r.text
        return r.json()

    # --- the platform's flows, run by Prefect --------------------------------------------------------

    def download(self) -> dict[str, Any]:
        """Run the download-reporting-flows flow for every EC."""
        from flows.download_reporting_flows import download_reporting_flows

        return download_reporting_flows()

    def ingest(self) -> dict[str, Any]:
        """Run the ingest-treasury flow for every source."""
        from flows.ingest_treasury import ingest_treasury

        return ingest_treasury()

    def reconcile(self) -> list[dict[str, Any]]:
        """Run the reconcile flow for every EC (without its reports: tested elsewhere, PDF rendering here)."""
        from flows.reconcile import reconcile

        return reconcile(reports=False)

    def chain(self) -> None:
        """Download the flows, ingest the journals, reconcile: the stages in their daily order."""
        self.download()
        self.ingest()
        self.reconcile()

    # --- the platform's database ---------------------------------------------------------------------

    def session(self) -> Session:
        """A new session on the platform's database."""
        return self.db.session()

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table but ``UNSNAPPED``, in primary key order."""
        with self.db.engine.connect() as conn:
            return {
                table.name: [tuple(r) for r in conn.execute(sa_select(table).order_by(*table.primary_key))]
                for table in metadata.sorted_tables
                if table.name not in UNSNAPPED
            }


def _registry(bank: Any, known_hosts: Path) -> dict[str, Any]:
    data = example_registry_data()
    data["treasury_sources"] = [
        {"name": f"tesoreria-{ec}", "id_dominio": ec, "account": iban, "host": bank.host, "port": bank.port,
         "username": SFTP_USER, "password_ref": f"env:{SFTP_PASSWORD_ENV}", "known_hosts": str(known_hosts),
         "remote_dir": f"/{ec}", "pattern": f"GDC_{ec}_*.xml", "archive_dir": f"/{ec}/archivio",
         "format": "OPI"}
        for ec, iban in IBANS.items()
    ]
    return data


@contextmanager
def settlement_world(db: Database, base: Path) -> Iterator[World]:
    """Empty ``db``, apply the registry, start bank SFTP, sandbox and platform; stop them all afterwards."""
    import paramiko

    from cli.demo import sandbox_endpoints
    from connectors.pagopa.config import get_endpoints
    from models import db as models_db
    from models.settings import get_settings
    from rules.registry import parse_registry
    from sandbox.sftp import SandboxSftpServer
    from store.registry import apply_registry
    from tests.platform_env import platform_and_sandbox, sandbox_config

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients hanging up are not news here
    db.truncate()
    bank_root = base / "bank"
    for ec in IBANS:
        (bank_root / ec / "archivio").mkdir(parents=True)
    bank = SandboxSftpServer(root=bank_root, username=SFTP_USER, password=SFTP_PASSWORD,
                             host_key=paramiko.ECDSAKey.generate()).start()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(bank.known_hosts_line(), encoding="utf-8")
    with db.session() as s:
        apply_registry(s, spec=parse_registry(_registry(bank, known_hosts)))
        s.commit()
    with pytest.MonkeyPatch.context() as mp, httpx.Client(timeout=60) as http:
        mp.setenv(SFTP_PASSWORD_ENV, SFTP_PASSWORD)
        mp.setenv("PAGOFLOW_WORK_DIR", str(base / "work"))
        mp.setenv("PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS", "0")
        mp.setenv("PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS", "0")
        try:
            with platform_and_sandbox(db, mp) as env:
                for name, value in sandbox_endpoints(env.sandbox_url).items():
                    mp.setenv(name, value)
                get_settings.cache_clear()
                models_db.get_engine.cache_clear()
                get_endpoints.cache_clear()
                config = sandbox_config(env.station_url)
                for creditor in config["creditors"]:
                    creditor["treasuryDir"] = str(bank_root / creditor["fiscalCode"])
                config["psps"] = [{"pspId": psp, "name": name, "bic": psp, "channel": f"{psp}_01"}
                                  for psp, name in PSPS.items()]
                http.put(f"{env.sandbox_url}/sandbox/config", json=config).raise_for_status()
                yield World(db=db, platform_url=env.platform_url, sandbox_url=env.sandbox_url,
                            bank_root=bank_root, http=http)
        finally:
            bank.stop()
            get_endpoints.cache_clear()
