"""The ingest-treasury flow run by Prefect against a real OpenSSH server, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.states import Failed
from sqlalchemy import func
from sqlmodel import Session, select

from connectors.treasury.sftp import SftpAuthError, SftpRetriableError, UnknownHostKeyError
from models.db import get_engine
from models.journal import Event
from models.reconciliation import Reconciliation
from models.registry import IbanAccount, TreasurySource
from models.settings import get_settings
from models.treasury import TreasuryFile, TreasuryFileState, TreasuryMovement
from rules.riconciliazioni import RiconciliazionePut
from sandbox.builders.treasury import Credit, JournalFormat, build_journal
from store.riconciliazioni import submit_riconciliazione
from tasks.treasury import artifact_key, retry_if_retriable
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.sftp_server import OpenSshServer, free_port, openssh_server, sshd_missing_reason

COMUNE = "01234567897"
IBAN = "IT60X0542811101000000123456"
KEY_ENV = "PAGOFLOW_TEST_SFTP_KEY"
SYNTHETIC = {
    "opi": "opi_giornale_di_cassa_1_8_pagopa.xml",
    "camt053": "camt053.001.02_tesoreria_pagopa.xml",
    "cbi_rh": "cbi_rh_tesoreria_pagopa.txt",
    "mt940": "mt940_tesoreria_pagopa.sta",
}


@pytest.fixture(scope="module")
def openssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSshServer]:
    """A real OpenSSH server for this module."""
    reason = sshd_missing_reason()
    if reason:
        pytest.skip(reason)
    with openssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def env(
    db: Database, openssh: OpenSshServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Database]:
    """The flow's settings point at the test database, a temporary work dir and the client key secret."""
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv(KEY_ENV, openssh.client_key_text)
    get_settings.cache_clear()
    get_engine.cache_clear()
    with db.session() as session:
        load_example_registry(session)
        for example in session.exec(select(TreasurySource)):
            example.enabled = False  # the example points at a demo server that is not running here
            session.add(example)
        session.commit()
    yield db
    get_engine.cache_clear()
    get_settings.cache_clear()


def synthetic(name: str) -> bytes:
    """A file of ``<treasury_specs_dir>/synthetic``."""
    return (get_settings().treasury_specs_dir / "synthetic" / name).read_bytes()


def add_source(
    db: Database,
    server: OpenSshServer,
    *,
    name: str,
    fmt: str | None,
    account: str,
    pattern: str = "*",
    archive: bool = True,
) -> Path:
    """A treasury source on the OpenSSH server with its own empty directory; returns that directory."""
    directory = server.drop(name)  # writable by the server's login user: the flow archives there
    with db.session() as session:
        session.add(
            TreasurySource(
                name=name,
                id_dominio=COMUNE,
                account=account,
                host=server.host,
                port=server.port,
                username=server.username,
                private_key_ref=f"env:{KEY_ENV}",
                known_hosts=str(server.known_hosts),
                remote_dir=server.remote(directory),
                pattern=pattern,
                archive_dir=server.remote(directory / "archivio") if archive else None,
                format=fmt,
            )
        )
        session.commit()
    return directory


def count(session: Session, *, account: str | None = None) -> int:
    """Stored movements (of one account)."""
    stmt = select(func.count()).select_from(TreasuryMovement)
    if account is not None:
        stmt = stmt.where(TreasuryMovement.account == account)
    return int(session.exec(stmt).one())


def table_artifact(key: str) -> list[dict[str, str]]:
    """The rows of the latest table artifact with that key."""
    from prefect.artifacts import Artifact

    artifact = cast(Any, Artifact.get(key))
    assert artifact is not None, f"no artifact {key}"
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


def corrupt_opi() -> bytes:
    """The synthetic OPI journal with the third movement's amount mistyped."""
    text = synthetic(SYNTHETIC["opi"]).decode("utf-8")
    amounts = list(re.finditer(r"<importo>([^<]*)</importo>", text))
    third = amounts[2]
    return (text[: third.start(1)] + "1O.00" + text[third.end(1) :]).encode("utf-8")


@pytest.mark.prefect
@pytest.mark.sftp
def test_four_formats_stored_corrupt_file_quarantined_rerun_adds_nothing(
    env: Database, openssh: OpenSshServer, prefect_harness: None, tmp_path: Path
) -> None:
    from flows.ingest_treasury import ingest_treasury

    prefix = f"t-{env.backend}"
    accounts = {fmt: f"ACC-{fmt.upper()}-{env.backend}" for fmt in SYNTHETIC}
    dirs = {}
    for fmt, filename in SYNTHETIC.items():
        # OPI is configured explicitly; the other sources let the file's first bytes tell the format.
        dirs[fmt] = add_source(
            env, openssh, name=f"{prefix}-{fmt}", fmt="OPI" if fmt == "opi" else None, account=accounts[fmt]
        )
        (dirs[fmt] / filename).write_bytes(synthetic(filename))
    (dirs["opi"] / "GDC_corrotto.xml").write_bytes(corrupt_opi())
    (dirs["mt940"] / "README.not-a-journal").write_text(
        "the pattern is *, so this is fetched, and unreadable"
    )

    summary = ingest_treasury(source=None, archive=True)

    assert summary["processed"] == 4 and summary["quarantined"] == 2 and summary["failures"] == {}
    assert summary["movements"] == 44 and summary["duplicates"] == 0
    with env.session() as session:
        for fmt in SYNTHETIC:
            assert count(session, account=accounts[fmt]) == 11, fmt
        files = {(f.source, f.name): f for f in session.exec(select(TreasuryFile))}
        bad = files[(f"{prefix}-opi", "GDC_corrotto.xml")]
        assert bad.state == TreasuryFileState.QUARANTINED and bad.movements == 0
        assert "record 3" in (bad.error or "") and "importo" in (bad.error or "")
        unknown = files[(f"{prefix}-mt940", "README.not-a-journal")]
        assert unknown.state == TreasuryFileState.QUARANTINED and "unknown treasury file format" in (
            unknown.error or ""
        )
        good = files[(f"{prefix}-opi", SYNTHETIC["opi"])]
        assert (good.state, good.format, good.movements) == (TreasuryFileState.PROCESSED, "opi", 11)
        stored = session.exec(
            select(TreasuryMovement).where(TreasuryMovement.account == accounts["opi"])
        ).all()
        assert all(m.id_dominio == COMUNE and m.file_id == good.id for m in stored)

        def by(prefix: str) -> TreasuryMovement:
            return next(m for m in stored if m.remittance.startswith(prefix))

        integrative = by("/PUR/LGPE-RIVERSAMENTO/TXT/1/")
        assert (integrative.reference_kind, integrative.integrative) == ("flow", 1)
        assert integrative.reference == "2024-07-25ABCDITRRXXX-0000012346"
        assert integrative.reference_lower == integrative.reference.lower()
        assert (by("/RFS/").reference_kind, by("/RFS/").reference) == ("iuv", "RF9700000000000123456")
        assert (by("/RFB/").reference_kind, by("/RFB/").reference) == ("iuv", "000000000012345")
        assert by("STORNO").reversal is True and by("STORNO").amount == Decimal("-12.00")
        assert integrative.dedupe_key.startswith("id:2024/")
    # Quarantined files are kept locally and left on the server; stored ones are archived there.
    quarantine = tmp_path / "work" / "treasury" / "quarantine" / f"{prefix}-opi"
    assert [p.read_bytes() for p in quarantine.iterdir()] == [corrupt_opi()]
    assert sorted(p.name for p in dirs["opi"].iterdir()) == ["GDC_corrotto.xml", "archivio"]
    assert (dirs["camt053"] / "archivio" / SYNTHETIC["camt053"]).is_file()
    assert not list((tmp_path / "work" / "treasury" / "inbox").rglob("*.*"))
    # The artifact: the day's movements per source.
    rows = table_artifact(artifact_key(f"{prefix}-cbi_rh"))
    assert len(rows) == 11 and set(rows[0]) == {"date", "amount", "reference", "kind"}
    assert {
        "date": "2024-07-26",
        "amount": "215.50",
        "reference": "2024-07-25ABCDITRRXXX-0000012345",
        "kind": "flow",
    } in rows

    again = ingest_treasury(source=None, archive=True)

    assert again["processed"] == 0 and again["movements"] == 0 and again["skipped"] == 2
    assert {f["previous"] for f in again["files"]} == {"QUARANTINED"}
    with env.session() as session:
        assert count(session) == 44
        assert len(session.exec(select(TreasuryFile)).all()) == 6
        sftp_events = session.exec(select(Event).where(Event.component == "sftp")).all()
    assert {e.operation for e in sftp_events} == {"list", "download", "archive"}
    assert all(e.id_dominio == COMUNE for e in sftp_events)
    assert not any(openssh.client_key_text.splitlines()[1] in repr(e.model_dump()) for e in sftp_events)


def _credit(n: int) -> Credit:
    day = date(2024, 7, 26)
    return Credit(
        amount=Decimal(f"{n}0.00"),
        value_date=day,
        booking_date=day,
        remittance=f"/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25PSPDEMOXXX-{n:010d}",
        ordering_party="PSP DEMO SPA",
        end_to_end_id=f"E2E-{n:06d}",
        bank_reference=f"TRN{n:012d}",
        bank_movement_id=f"BT{n:014d}",
    )


def _camt(credits: list[Credit], sequence: int) -> bytes:
    return build_journal(
        fmt=JournalFormat.CAMT053,
        account_iban=IBAN,
        ec_fiscal_code="01234567890",
        ec_name="Comune di Esempio",
        day=date(2024, 7, 26),
        sequence=sequence,
        credits=credits,
    )


@pytest.mark.prefect
@pytest.mark.sftp
def test_overlapping_journals_store_each_movement_once(
    env: Database, openssh: OpenSshServer, prefect_harness: None
) -> None:
    from flows.ingest_treasury import ingest_treasury

    prefix = f"o-{env.backend}"
    # By bank movement id: two camt.053 statements sharing three entries.
    camt = add_source(env, openssh, name=f"{prefix}-camt", fmt="CAMT053", account=IBAN, archive=False)
    credits = [_credit(n) for n in range(1, 10)]
    (camt / "CAMT053_1.xml").write_bytes(_camt(credits[:6], 1))
    (camt / "CAMT053_2.xml").write_bytes(_camt(credits[3:], 2))
    # The bank sends the ninth credit again under its id, with other money: not stored, but not silent.
    (camt / "CAMT053_3.xml").write_bytes(_camt([replace(credits[8], amount=Decimal("95.00"))], 3))
    # By content fingerprint (MT940 has no movement id): the journal sent again under another reference.
    mt940 = add_source(env, openssh, name=f"{prefix}-mt940", fmt="MT940", account="ACC-MT940", archive=False)
    original = synthetic(SYNTHETIC["mt940"])
    (mt940 / "day.sta").write_bytes(original)
    (mt940 / "day-resent.sta").write_bytes(original.replace(b":20:STMT20240726", b":20:STMT20240726BIS", 1))
    # The EC's accounting posted the fifth credit through the API Ragioneria before the journal came.
    with env.session() as session:
        session.add(IbanAccount(id_dominio=COMUNE, iban=IBAN))
        fifth = _credit(5)
        submit_riconciliazione(
            session,
            id_dominio=COMUNE,
            id_riconciliazione="R-5",
            body=RiconciliazionePut(
                importo=fifth.amount,
                dataValuta=fifth.value_date,
                contoAccredito=IBAN,
                sct=fifth.bank_reference,
                causale=fifth.remittance,
            ),
        )
        session.commit()

    summary = ingest_treasury(source=None, archive=False)

    assert summary["processed"] == 5 and summary["failures"] == {}
    assert summary["movements"] == 9 + 11 and summary["duplicates"] == 3 + 1 + 11
    assert summary["linked"] == 1  # the fifth credit is the API's: one movement, carrying R-5
    assert summary["conflicts"] == 1
    with env.session() as session:
        assert count(session, account=IBAN) == 9
        ninth = session.exec(select(TreasuryMovement).where(
            TreasuryMovement.dedupe_key == "id:BT00000000000009")).one()
        assert ninth.amount == Decimal("90.00")  # the movement stored first stands
        resent = session.exec(select(TreasuryFile).where(TreasuryFile.name == "CAMT053_3.xml")).one()
        assert resent.error is not None and "movimento BT00000000000009: importo 90.00 -> 95.00" in resent.error
        assert count(session, account="ACC-MT940") == 11
        keys = session.exec(select(TreasuryMovement.dedupe_key).where(TreasuryMovement.account == IBAN)).all()
        assert sorted(keys) == [f"id:BT{n:014d}" for n in range(1, 10)]  # AcctSvcrRef, not NtryRef
        (posted,) = session.exec(select(Reconciliation).where(Reconciliation.external_id == "R-5")).all()
        carrier = session.get(TreasuryMovement, posted.movement_id)
        assert carrier is not None and carrier.dedupe_key == "id:BT00000000000005" and carrier.file_id

    # Not archived, so every file is downloaded again and skipped by its hash.
    again = ingest_treasury(source=f"{prefix}-camt", archive=False)

    assert again["skipped"] == 3 and again["movements"] == 0
    assert sorted(p.name for p in camt.iterdir()) == ["CAMT053_1.xml", "CAMT053_2.xml", "CAMT053_3.xml"]
    with env.session() as session:
        assert count(session) == 20


@pytest.mark.prefect
@pytest.mark.sftp
def test_task_retries_only_retriable_sftp_errors(
    sqlite_db: Database,
    openssh: OpenSshServer,
    prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from prefect import flow

    from tasks.treasury import list_treasury_files

    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv(KEY_ENV, openssh.client_key_text)
    get_settings.cache_clear()
    get_engine.cache_clear()
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    with sqlite_db.session() as session:
        load_example_registry(session)
        example = session.exec(select(TreasurySource)).one()
        example.port = free_port()  # nothing listens there: connection refused, a retriable fault
        example.known_hosts = str(empty_known_hosts)
        example.password_ref, example.private_key_ref = None, f"env:{KEY_ENV}"
        session.add(example)
        session.commit()
        name = example.name

    @flow
    def probe() -> None:
        list_treasury_files.with_options(retry_delay_seconds=0)(name)

    def attempts() -> int:
        with sqlite_db.session() as session:
            return len(session.exec(select(Event).where(Event.operation == "list")).all())

    try:
        with pytest.raises(SftpRetriableError):
            probe()
        assert attempts() == 4  # the first try and three retries
        # The real server, whose host key nobody pinned: fatal, so tried once.
        with sqlite_db.session() as session:
            example = session.exec(select(TreasurySource)).one()
            example.port = openssh.port
            session.add(example)
            session.commit()
        with pytest.raises(UnknownHostKeyError):
            probe()
        assert attempts() == 4 + 1
    finally:
        get_engine.cache_clear()
        get_settings.cache_clear()


def test_crash_mid_file_leaves_nothing_and_the_rerun_converges(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from store import treasury as store_treasury
    from tasks.treasury import FetchedFile, process_file

    with db.session() as session:
        load_example_registry(session)
        session.add(
            TreasurySource(
                name="crash",
                id_dominio=COMUNE,
                account=IBAN,
                host="127.0.0.1",
                username="x",
                known_hosts="/dev/null",
                format="OPI",
            )
        )
        session.commit()
    data = synthetic(SYNTHETIC["opi"])
    inbox = tmp_path / "inbox.xml"
    fetched = FetchedFile(
        source="crash",
        name="GDC.xml",
        path=str(inbox),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    real_insert = store_treasury.insert_movements
    calls = 0

    def dies_on_second_batch(session: Session, *, rows: list[dict[str, object]]) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("worker killed mid-file")
        return real_insert(session, rows=rows)

    inbox.write_bytes(data)
    monkeypatch.setattr(store_treasury, "insert_movements", dies_on_second_batch)
    with pytest.raises(RuntimeError, match="mid-file"):
        process_file(fetched=fetched, engine=db.engine, work_dir=tmp_path, batch_size=4)
    with db.session() as session:
        assert count(session) == 0 and session.exec(select(TreasuryFile)).all() == []
    monkeypatch.setattr(store_treasury, "insert_movements", real_insert)

    outcome = process_file(fetched=fetched, engine=db.engine, work_dir=tmp_path, batch_size=4)

    assert (outcome.state, outcome.movements, outcome.duplicates) == ("PROCESSED", 11, 0)
    with db.session() as session:
        assert count(session) == 11
        (row,) = session.exec(select(TreasuryFile)).all()
        assert (row.state, row.movements, row.sha256) == ("PROCESSED", 11, fetched.sha256)
    inbox.write_bytes(data)  # fetched again later: same bytes, skipped
    again = process_file(fetched=fetched, engine=db.engine, work_dir=tmp_path)
    assert (again.state, again.previous, again.file_id) == ("SKIPPED", "PROCESSED", row.id)
    assert not inbox.exists()


def test_retry_condition_tells_retriable_from_fatal() -> None:
    assert retry_if_retriable(None, None, Failed(data=SftpRetriableError("dropped"))) is True
    assert retry_if_retriable(None, None, Failed(data=SftpAuthError("refused"))) is False
    assert (
        retry_if_retriable(
            None,
            None,
            Failed(
                data=UnknownHostKeyError(
                    "unknown", host="h", port=22, fingerprint="SHA256:x", key_type="ssh-ed25519"
                )
            ),
        )
        is False
    )
    assert retry_if_retriable(None, None, Failed(data=ValueError("bug"))) is False
