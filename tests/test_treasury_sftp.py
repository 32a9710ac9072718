"""The treasury SFTP connector against a real OpenSSH server and, for faults, an in-process paramiko one."""

from __future__ import annotations

import hashlib
import logging
import os
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paramiko
import pytest
from pydantic import SecretStr
from sqlmodel import select

from connectors.journal import EventJournal
from connectors.treasury.sftp import (
    HostKeyMismatchError,
    SftpAuthError,
    SftpConfig,
    SftpConfigError,
    SftpNotFoundError,
    SftpRetriableError,
    SftpSource,
    UnknownHostKeyError,
    classify_error,
)
from models.journal import Event, Outcome
from tests.conftest import Database
from tests.sftp_server import (
    FakeSftpServer,
    Faults,
    OpenSshServer,
    fake_sftp_server,
    free_port,
    openssh_server,
    sshd_missing_reason,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def openssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSshServer]:
    """A real OpenSSH server for this module."""
    reason = sshd_missing_reason()
    if reason:
        pytest.skip(reason)
    with openssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSftpServer]:
    """An in-process paramiko SFTP server over tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    with fake_sftp_server(root) as server:
        yield server


def journal_of(db: Database) -> EventJournal:
    """A journal writing into the test database."""
    return EventJournal(session_factory=db.session)


def events(db: Database) -> list[Event]:
    """Every journaled event, oldest first."""
    with db.session() as session:
        return list(session.exec(select(Event).order_by(Event.id)))  # type: ignore[arg-type]


def fake_config(
    server: FakeSftpServer,
    tmp_path: Path,
    *,
    known_hosts: str | None = None,
    password: str | None = None,
    **overrides: object,
) -> SftpConfig:
    """A config reaching the fake server with its password, pinned to its host key unless told otherwise."""
    path = tmp_path / "known_hosts"
    path.write_text(server.known_hosts_line() if known_hosts is None else known_hosts)
    values: dict[str, object] = {
        "name": "fake-tesoreria",
        "id_dominio": "01234567897",
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "password": SecretStr(password or server.password),
        "known_hosts": path,
        "remote_dir": "/giornale",
        "pattern": "GDC_*.xml",
        "archive_dir": "/giornale/archivio",
        "timeout": 10,
    }
    values.update(overrides)
    return SftpConfig(**values)  # type: ignore[arg-type]


def openssh_config(server: OpenSshServer, remote_dir: Path, **overrides: object) -> SftpConfig:
    """A config reaching the real OpenSSH server with the client key text."""
    values: dict[str, object] = {
        "name": "openssh-tesoreria",
        "id_dominio": "01234567897",
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "private_key": SecretStr(server.client_key_text),
        "known_hosts": server.known_hosts,
        "remote_dir": server.remote(remote_dir),
        "pattern": "GDC_*.xml",
        "archive_dir": server.remote(remote_dir / "archivio"),
        "timeout": 10,
    }
    values.update(overrides)
    return SftpConfig(**values)  # type: ignore[arg-type]


class Peer:
    """One SFTP peer of the contract tests: where its files live and how to reach them."""

    def __init__(
        self, directory: Path, config: SftpConfig, make_dir: Callable[[Path], object] = Path.mkdir
    ) -> None:
        self.directory, self.config, self._make_dir = directory, config, make_dir

    def mkdir(self, name: str) -> Path:
        """A subdirectory that the peer's login user can write to."""
        self._make_dir(self.directory / name)
        return self.directory / name


@pytest.fixture(params=[pytest.param("openssh", marks=pytest.mark.sftp), "paramiko"])
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Peer]:
    """The contract runs against the real OpenSSH server and against the fake."""
    if request.param == "openssh":
        server: OpenSshServer = request.getfixturevalue("openssh")
        directory = server.drop(f"giornale-{request.node.name.replace('[', '-').rstrip(']')}")
        yield Peer(directory, openssh_config(server, directory), make_dir=server.drop)
    else:
        fake_server: FakeSftpServer = request.getfixturevalue("fake")
        directory = fake_server.root / "giornale"
        directory.mkdir()
        yield Peer(directory, fake_config(fake_server, tmp_path))


class TestSftpSourceContract:
    """What every SFTP peer gives the connector: listing by pattern, hashed download, idempotent archive."""

    def test_lists_regular_files_matching_the_pattern_oldest_first(
        self, peer: Peer, sqlite_db: Database
    ) -> None:
        (peer.directory / "GDC_20240726_001.xml").write_bytes(b"<a/>" * 10)
        (peer.directory / "GDC_20240725_001.xml").write_bytes(b"<b/>")
        (peer.directory / "RH_20240726.txt").write_bytes(b" RH")
        (peer.directory / "GDC_dir.xml").mkdir()
        os.utime(peer.directory / "GDC_20240725_001.xml", (1_700_000_000, 1_700_000_000))
        with SftpSource(peer.config, journal=journal_of(sqlite_db)) as sftp:
            files = sftp.list_files()
        assert [f.name for f in files] == ["GDC_20240725_001.xml", "GDC_20240726_001.xml"]
        assert files[0].size == 4 and files[1].size == 40
        assert files[0].mtime == datetime.fromtimestamp(1_700_000_000, UTC)
        (event,) = events(sqlite_db)
        assert (event.component, event.operation, event.outcome) == ("sftp", "list", Outcome.OK)
        assert event.id_dominio == "01234567897" and event.keys["files"] == "2"

    def test_download_streams_to_disk_with_matching_sha256(
        self, peer: Peer, sqlite_db: Database, tmp_path: Path
    ) -> None:
        data = os.urandom(3 * MIB + 12345)
        (peer.directory / "GDC_1.xml").write_bytes(data)
        target = tmp_path / "inbox" / "GDC_1.xml"
        with SftpSource(peer.config, journal=journal_of(sqlite_db)) as sftp:
            got = sftp.download(name="GDC_1.xml", target=target)
        assert target.read_bytes() == data
        assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
        assert got.attempts == 1 and got.resumed_bytes == 0
        assert not target.with_name("GDC_1.xml.part").exists()
        (event,) = events(sqlite_db)
        assert event.operation == "download" and event.file_name == "GDC_1.xml"
        assert event.keys["sha256"] == got.sha256

    def test_archive_moves_the_file_and_is_idempotent(self, peer: Peer, sqlite_db: Database) -> None:
        (peer.directory / "GDC_1.xml").write_bytes(b"journal")
        with SftpSource(peer.config, journal=journal_of(sqlite_db)) as sftp:
            assert sftp.archive(name="GDC_1.xml") is True
            assert sftp.archive(name="GDC_1.xml") is False
            assert sftp.list_files() == []
        assert (peer.directory / "archivio" / "GDC_1.xml").read_bytes() == b"journal"
        assert not (peer.directory / "GDC_1.xml").exists()

    def test_archive_keeps_an_earlier_file_of_the_same_name(self, peer: Peer, sqlite_db: Database) -> None:
        peer.mkdir("archivio")
        (peer.directory / "archivio" / "GDC_1.xml").write_bytes(b"yesterday")
        (peer.directory / "GDC_1.xml").write_bytes(b"today")
        with SftpSource(peer.config, journal=journal_of(sqlite_db)) as sftp:
            assert sftp.archive(name="GDC_1.xml") is True
        archived = sorted(p.name for p in (peer.directory / "archivio").iterdir())
        assert archived[0] == "GDC_1.xml" and archived[1].startswith("GDC_1.xml.")
        assert (peer.directory / "archivio" / "GDC_1.xml").read_bytes() == b"yesterday"

    def test_missing_file_is_fatal_not_found(self, peer: Peer, sqlite_db: Database, tmp_path: Path) -> None:
        with SftpSource(peer.config, journal=journal_of(sqlite_db)) as sftp:
            with pytest.raises(SftpNotFoundError) as caught:
                sftp.download(name="GDC_missing.xml", target=tmp_path / "x")
        assert caught.value.retriable is False
        (event,) = events(sqlite_db)
        assert event.outcome == Outcome.FAIL and event.fault_code == "SFTP_NOT_FOUND"


@pytest.mark.sftp
def test_openssh_download_keeps_memory_flat(
    openssh: OpenSshServer, sqlite_db: Database, tmp_path: Path
) -> None:
    directory = openssh.drop("big")
    data = os.urandom(40 * MIB)
    (directory / "GDC_big.xml").write_bytes(data)
    config = openssh_config(openssh, directory)
    with SftpSource(config, journal=journal_of(sqlite_db)) as sftp:
        sftp.list_files()  # connect outside the measurement
        tracemalloc.start()
        try:
            got = sftp.download(name="GDC_big.xml", target=tmp_path / "big.xml")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert peak < 16 * MIB, f"download peaked at {peak / MIB:.1f} MiB for a {len(data) / MIB:.0f} MiB file"


@pytest.mark.sftp
def test_openssh_rejects_a_wrong_key_as_fatal_auth(
    openssh: OpenSshServer, sqlite_db: Database, tmp_path: Path
) -> None:
    stranger = paramiko.ECDSAKey.generate()
    text = tmp_path / "stranger"
    stranger.write_private_key_file(str(text))
    config = openssh_config(openssh, openssh.root, private_key=SecretStr(text.read_text()))
    with pytest.raises(SftpAuthError) as caught, SftpSource(config, journal=journal_of(sqlite_db)) as sftp:
        sftp.list_files()
    assert caught.value.retriable is False


# --- faults, on the in-process paramiko server -------------------------------------------------------------


def test_dropped_connection_resumes_and_gives_the_same_file(
    fake: FakeSftpServer, sqlite_db: Database, tmp_path: Path
) -> None:
    (fake.root / "giornale").mkdir()
    data = os.urandom(20 * MIB + 777)
    (fake.root / "giornale" / "GDC_1.xml").write_bytes(data)
    fake.faults = Faults(drop_after_bytes=9 * MIB)
    connections: list[paramiko.Transport] = []

    def counting_transport(sock: object, **kwargs: object) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)  # type: ignore[arg-type]
        connections.append(transport)
        return transport

    sleeps: list[float] = []
    config = fake_config(fake, tmp_path)
    with SftpSource(
        config,
        journal=journal_of(sqlite_db),
        transport_factory=counting_transport,
        sleep=sleeps.append,
        backoff_seconds=0.5,
    ) as sftp:
        got = sftp.download(name="GDC_1.xml", target=tmp_path / "GDC_1.xml")
    assert (tmp_path / "GDC_1.xml").read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert fake.faults.dropped == 1 and len(connections) == 2 and sleeps == [0.5]
    assert got.attempts == 2 and 0 < got.resumed_bytes < len(data)
    # The second connection asked only for what was missing: it resumed, it did not start over.
    second = [offset for connection, offset, _ in fake.reads if connection == 2]
    assert min(second) == got.resumed_bytes
    (event,) = events(sqlite_db)
    assert event.outcome == Outcome.OK and event.keys["attempts"] == "2"
    assert event.keys["resumed_from"] == str(got.resumed_bytes)


def test_retries_give_up_with_a_retriable_error(sqlite_db: Database, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = SftpConfig(
        name="down",
        host="127.0.0.1",
        port=free_port(),
        username="x",
        password=SecretStr("irrelevant-pw"),
        known_hosts=known_hosts,
        timeout=2,
    )
    sftp = SftpSource(config, journal=journal_of(sqlite_db))
    with pytest.raises(SftpRetriableError) as caught, sftp:
        sftp.list_files()
    assert caught.value.retriable is True
    (event,) = events(sqlite_db)
    assert event.outcome == Outcome.FAIL and event.fault_code == "SFTP_RETRIABLE"


def test_changed_host_key_is_refused(fake: FakeSftpServer, sqlite_db: Database, tmp_path: Path) -> None:
    impostor_pin = fake.known_hosts_line(paramiko.ECDSAKey.generate())
    config = fake_config(fake, tmp_path, known_hosts=impostor_pin)
    sftp = SftpSource(config, journal=journal_of(sqlite_db))
    with pytest.raises(HostKeyMismatchError) as caught, sftp:
        sftp.list_files()
    error = caught.value
    assert error.retriable is False and error.fingerprint == fake.host_key.fingerprint
    assert "127.0.0.1" in str(error) and fake.host_key.fingerprint in str(error)
    (event,) = events(sqlite_db)
    assert event.fault_code == "SFTP_HOST_KEY_MISMATCH" and fake.host_key.fingerprint in (event.error or "")


def test_unknown_host_is_refused(fake: FakeSftpServer, sqlite_db: Database, tmp_path: Path) -> None:
    config = fake_config(fake, tmp_path, known_hosts="# nobody pinned yet\n")
    sftp = SftpSource(config, journal=journal_of(sqlite_db))
    with pytest.raises(UnknownHostKeyError) as caught, sftp:
        sftp.list_files()
    assert caught.value.retriable is False
    assert f"[127.0.0.1]:{fake.port}" in str(caught.value) and fake.host_key.fingerprint in str(caught.value)
    assert fake.reads == []


def test_missing_known_hosts_is_a_config_error(
    fake: FakeSftpServer, sqlite_db: Database, tmp_path: Path
) -> None:
    nowhere = tmp_path / "nowhere" / "known_hosts"
    config = fake_config(fake, tmp_path).model_copy(update={"known_hosts": nowhere})
    with (
        pytest.raises(SftpConfigError, match="known_hosts"),
        SftpSource(config, journal=journal_of(sqlite_db)) as sftp,
    ):
        sftp.list_files()
    assert fake.connections == 0


def test_bad_password_is_fatal_and_no_secret_reaches_journal_or_logs(
    fake: FakeSftpServer, sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-but-secret-passw0rd"
    (fake.root / "giornale").mkdir()
    (fake.root / "giornale" / "GDC_1.xml").write_bytes(b"<x/>")
    with (
        pytest.raises(SftpAuthError) as caught,
        SftpSource(fake_config(fake, tmp_path, password=wrong), journal=journal_of(sqlite_db)) as sftp,
    ):
        sftp.list_files()
    assert caught.value.retriable is False
    # A successful session too: its events must not carry the good password either.
    with SftpSource(fake_config(fake, tmp_path), journal=journal_of(sqlite_db)) as sftp:
        sftp.download(name="GDC_1.xml", target=tmp_path / "GDC_1.xml")
    recorded = events(sqlite_db)
    assert [(e.operation, e.outcome, e.fault_code) for e in recorded] == [
        ("list", Outcome.FAIL, "SFTP_AUTH"),
        ("download", Outcome.OK, None),
    ]
    dumped = "\n".join(repr(e.model_dump()) for e in recorded)
    assert wrong not in dumped and fake.password not in dumped
    assert wrong not in caplog.text and fake.password not in caplog.text
    assert wrong not in str(caught.value) and wrong not in repr(fake_config(fake, tmp_path, password=wrong))


@pytest.mark.sftp
def test_private_key_text_never_reaches_the_journal(
    openssh: OpenSshServer, sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with SftpSource(openssh_config(openssh, openssh.root), journal=journal_of(sqlite_db)) as sftp:
        sftp.list_files()
    key_body = [line for line in openssh.client_key_text.splitlines() if "PRIVATE KEY" not in line]
    dumped = "\n".join(repr(e.model_dump()) for e in events(sqlite_db)) + caplog.text
    assert not any(line in dumped for line in key_body)


def test_unreadable_private_key_is_a_config_error_without_the_key(
    sqlite_db: Database, tmp_path: Path
) -> None:
    body = "bm90LWEta2V5LWF0LWFsbA=="
    secret = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = SftpConfig(
        name="k",
        host="127.0.0.1",
        port=free_port(),
        username="x",
        private_key=SecretStr(secret),
        known_hosts=known_hosts,
    )
    with pytest.raises(SftpConfigError) as caught, SftpSource(config, journal=journal_of(sqlite_db)) as sftp:
        sftp.list_files()
    assert body not in str(caught.value)


@pytest.mark.parametrize(
    ("exc", "retriable", "code"),
    [
        (TimeoutError("timed out"), True, "SFTP_RETRIABLE"),
        (ConnectionResetError(104, "reset"), True, "SFTP_RETRIABLE"),
        (EOFError(), True, "SFTP_RETRIABLE"),
        (paramiko.SSHException("Server connection dropped: "), True, "SFTP_RETRIABLE"),
        (paramiko.AuthenticationException("Authentication failed."), False, "SFTP_AUTH"),
        (PermissionError(13, "Permission denied"), False, "SFTP_PERMISSION"),
        (FileNotFoundError(2, "No such file"), False, "SFTP_NOT_FOUND"),
        (OSError("Failure"), False, "SFTP_FAILURE"),
    ],
)
def test_errors_are_classified_once(exc: Exception, retriable: bool, code: str) -> None:
    error = classify_error(exc, host="h", port=22, operation="download", path="/x")
    assert (error.retriable, error.code) == (retriable, code)
    assert classify_error(error, host="h", port=22, operation="download") is error
