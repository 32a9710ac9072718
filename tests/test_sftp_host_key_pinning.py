"""SFTP host key pinning against a real OpenSSH server: only the key in the source's known_hosts is trusted.

``test_treasury_sftp.py`` shows a changed key and an unknown host refused by the in-process paramiko server;
here the same against OpenSSH, plus what pinning must also mean: no credential is ever offered to a server
that failed the check (sshd's log shows no authentication), the port is part of the pinned name, and the
user's own ``~/.ssh/known_hosts`` is never consulted.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from pydantic import SecretStr

from connectors.journal import EventJournal
from connectors.treasury.sftp import HostKeyMismatchError, SftpConfig, SftpSource, UnknownHostKeyError
from tests.conftest import Database
from tests.sftp_server import SSH_KEYGEN, OpenSshServer, known_hosts_line, openssh_server, sshd_missing_reason

pytestmark = pytest.mark.sftp


@pytest.fixture(scope="module")
def openssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSshServer]:
    """A real OpenSSH server for this module."""
    reason = sshd_missing_reason()
    if reason:
        pytest.skip(reason)
    with openssh_server(tmp_path_factory.mktemp("sshd-pinning")) as server:
        yield server


def config(server: OpenSshServer, known_hosts: Path) -> SftpConfig:
    return SftpConfig(
        name="pinning",
        host=server.host,
        port=server.port,
        username=server.username,
        private_key=SecretStr(server.client_key_text),
        known_hosts=known_hosts,
        remote_dir=server.remote_root,
        timeout=10,
    )


def authentications(server: OpenSshServer) -> int:
    """How many times sshd has seen a client try to authenticate (accepted or not)."""
    log = server.log.read_text(errors="replace")
    return sum(log.count(word) for word in ("Accepted ", "Failed ", "Postponed ", "Invalid user"))


def list_files(db: Database, cfg: SftpConfig) -> None:
    with SftpSource(cfg, journal=EventJournal(session_factory=db.session)) as sftp:
        sftp.list_files()


def test_the_pinned_key_is_trusted(openssh: OpenSshServer, sqlite_db: Database) -> None:
    before = authentications(openssh)
    list_files(sqlite_db, config(openssh, openssh.known_hosts))
    assert authentications(openssh) > before  # the control: a trusted server does see the login


def test_a_hashed_pin_is_trusted_too(openssh: OpenSshServer, sqlite_db: Database, tmp_path: Path) -> None:
    hashed = tmp_path / "known_hosts"
    hashed.write_text(openssh.known_hosts.read_text())
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(hashed)], check=True, capture_output=True)  # noqa: S603
    assert hashed.read_text().startswith("|1|")
    list_files(sqlite_db, config(openssh, hashed))


def test_another_key_for_the_host_is_refused_before_any_credential_is_sent(
    openssh: OpenSshServer, sqlite_db: Database, tmp_path: Path
) -> None:
    impostor = paramiko.Ed25519Key.from_private_key_file(str(openssh.client_key))  # any key but the host's
    pin = tmp_path / "known_hosts"
    pin.write_text(
        known_hosts_line(openssh.host, openssh.port, f"{impostor.get_name()} {impostor.get_base64()}")
    )
    before = authentications(openssh)
    with pytest.raises(HostKeyMismatchError) as caught:
        list_files(sqlite_db, config(openssh, pin))
    assert caught.value.retriable is False
    host_key = paramiko.Ed25519Key(data=base64.b64decode(openssh.host_public.split()[1]))
    assert host_key.fingerprint in str(caught.value)  # the operator is told which key the server showed
    assert authentications(openssh) == before, "a credential was offered to a server that failed the check"


@pytest.mark.parametrize("pinned", ["nothing", "the key for another port", "the key for another host"])
def test_an_unknown_host_is_refused_before_any_credential_is_sent(
    openssh: OpenSshServer, sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned: str
) -> None:
    line = {
        "nothing": "# nothing pinned\n",
        "the key for another port": known_hosts_line(openssh.host, openssh.port + 1, openssh.host_public),
        "the key for another host": known_hosts_line("127.0.0.2", openssh.port, openssh.host_public),
    }[pinned]
    pin = tmp_path / "known_hosts"
    pin.write_text(line)
    # The user's own known_hosts trusts the server: it must make no difference.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(openssh.known_hosts.read_text())
    monkeypatch.setenv("HOME", str(home))
    before = authentications(openssh)
    with pytest.raises(UnknownHostKeyError) as caught:
        list_files(sqlite_db, config(openssh, pin))
    assert caught.value.retriable is False and f"[{openssh.host}]:{openssh.port}" in str(caught.value)
    assert authentications(openssh) == before, "a credential was offered to an unknown server"
