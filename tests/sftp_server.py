"""SFTP servers for tests and the bench: a real OpenSSH sshd on loopback and an in-process paramiko server.

OpenSSH (``openssh_server``): a throwaway host key and client key (ssh-keygen, Ed25519), an ``sshd_config``
on a free loopback port, ``sshd -D -e -f cfg`` as a subprocess. It logs in the user running the tests with
its key only: as root (CI) that is ``PermitRootLogin prohibit-password`` with an ``AuthorizedKeysFile`` in
the temporary directory, so no system user is created; the privilege separation directory ``/run/sshd`` is
created if missing. ``ForceCommand internal-sftp`` gives no shell. There is no chroot (sshd refuses a chroot
under the world-writable /tmp), so remote paths are the absolute paths of ``root`` on this machine.

paramiko (``FakeSftpServer``): a small SFTP server over a directory, in a thread, for the faults a real
server cannot be asked for: drop the connection after N bytes served, present another host key, refuse a
password.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The in-process paramiko server lives in the sandbox (the treasury bank's SFTP server); tests use it from there.
from sandbox.sftp import Faults, known_hosts_line
from sandbox.sftp import SandboxSftpServer as FakeSftpServer
from sandbox.sftp import sftp_server as fake_sftp_server

__all__ = ["Faults", "FakeSftpServer", "fake_sftp_server", "known_hosts_line"]

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"


def sshd_missing_reason() -> str | None:
    """Why a real OpenSSH server cannot run here, or None if it can."""
    if not SSHD.is_file():
        return f"{SSHD} not installed (apt-get install openssh-server; .ci/run does it)"
    if not Path(SSH_KEYGEN).is_file():
        return "ssh-keygen not installed (openssh-client)"
    return None


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, *, kind: str = "ed25519") -> tuple[str, str]:
    """Make a key pair at ``path`` with ssh-keygen; returns (private key text, public key line)."""
    argv = [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "pagoflow-test", "-f", str(path)]
    subprocess.run(argv, check=True, capture_output=True)  # noqa: S603 - fixed argv, test tooling
    return path.read_text(), path.with_name(path.name + ".pub").read_text().strip()


def _wait_for_banner(
    port: int, *, deadline: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SSH banner on 127.0.0.1:{port}: {log.read_text() if log else ''}")
        time.sleep(0.05)


@dataclass
class OpenSshServer:
    """A running OpenSSH server: where it listens, who may log in, and the files that pin and authenticate."""

    host: str
    port: int
    username: str
    root: Path
    client_key: Path
    client_key_text: str
    known_hosts: Path
    host_public: str
    log: Path

    def sftp_batch(self, commands: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the OpenSSH ``sftp`` client in batch mode with the client key (host key checked)."""
        batch = self.root.parent / "batch.sftp"
        batch.write_text(commands)
        return subprocess.run(  # noqa: S603 - fixed argv, test tooling
            [
                SFTP,
                "-q",
                "-b",
                str(batch),
                "-i",
                str(self.client_key),
                "-P",
                str(self.port),
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                f"{self.username}@{self.host}",
            ],
            check=True,
            capture_output=True,
            cwd=cwd,
        )


@contextmanager
def openssh_server(base: Path) -> Iterator[OpenSshServer]:
    """Start sshd on a free loopback port serving ``base/files``; stop it on exit."""
    reason = sshd_missing_reason()
    if reason:
        raise RuntimeError(reason)
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    root = base / "files"
    root.mkdir(exist_ok=True)
    host_key = etc / "ssh_host_ed25519_key"
    _, host_public = keygen(host_key)
    client_key = etc / "client_ed25519"
    client_text, client_public = keygen(client_key)
    authorized = etc / "authorized_keys"
    authorized.write_text(client_public + "\n")
    authorized.chmod(0o600)
    port = free_port()
    known_hosts = etc / "known_hosts"
    known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_public))
    user = getpass.getuser()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation directory
    config = etc / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {etc / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"AllowUsers {user}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        "ForceCommand internal-sftp\n"
        "AllowTcpForwarding no\n"
        "X11Forwarding no\n"
        "PermitTTY no\n"
        "MaxStartups 50\n"
        "LogLevel VERBOSE\n"
    )
    log = etc / "sshd.log"
    with log.open("wb") as stderr:
        argv = [str(SSHD), "-D", "-e", "-f", str(config)]
        proc = subprocess.Popen(argv, stderr=stderr, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        _wait_for_banner(port, deadline=time.monotonic() + 15, proc=proc, log=log)
        yield OpenSshServer(
            host="127.0.0.1",
            port=port,
            username=user,
            root=root,
            client_key=client_key,
            client_key_text=client_text,
            known_hosts=known_hosts,
            host_public=host_public,
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

