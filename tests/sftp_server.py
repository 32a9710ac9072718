"""SFTP servers for tests and the bench: a real OpenSSH sshd on loopback and an in-process paramiko server.

OpenSSH (``openssh_server``): a throwaway host key and client key (ssh-keygen, Ed25519), an ``sshd_config``
on a free loopback port, ``sshd -D -e -f cfg`` as a subprocess; key login only, ``ForceCommand internal-sftp``
(no shell). Who logs in depends on who runs the tests:

- root with ``useradd`` (CI, the dev box): a throwaway system user ``pfsftp<hex>`` (no usable password,
  shell nologin), the only one sshd lets in (``AllowUsers``), chrooted into a fresh root-owned directory
  under ``/srv`` (OpenSSH wants the chroot and all its parents root-owned and not group/world writable, so
  not under /tmp), ``StrictModes yes`` with the ``AuthorizedKeysFile`` beside the chroot. The served files
  are ``root`` locally and ``remote(path)`` (under ``/files``) for the client; ``drop(name)`` makes a
  directory there that the user can write to. User and directory are deleted on exit, failed test or not.
- anyone else (a developer's machine): the user running the tests logs in with its key, no chroot
  (``StrictModes no``, the key file sits under /tmp), and remote paths are the local paths.

paramiko (``FakeSftpServer``): a small SFTP server over a directory, in a thread, for the faults a real
server cannot be asked for: drop the connection after N bytes served, present another host key, refuse a
password.
"""

from __future__ import annotations

import getpass
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The in-process paramiko server lives in the sandbox (the treasury bank's SFTP server); tests use it there.
from sandbox.sftp import Faults, known_hosts_line
from sandbox.sftp import SandboxSftpServer as FakeSftpServer
from sandbox.sftp import sftp_server as fake_sftp_server

__all__ = ["Faults", "FakeSftpServer", "fake_sftp_server", "known_hosts_line"]

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"
USERADD = shutil.which("useradd") or "/usr/sbin/useradd"
USERDEL = shutil.which("userdel") or "/usr/sbin/userdel"
NOLOGIN = shutil.which("nologin") or "/usr/sbin/nologin"
# Where the chroot may live: a directory whose whole chain is root-owned and not group/world writable.
JAIL_PARENTS = (Path("/srv"), Path("/var/lib"), Path("/opt"))


def sshd_missing_reason() -> str | None:
    """Why a real OpenSSH server cannot run here, or None if it can."""
    if not SSHD.is_file():
        return f"{SSHD} not installed (apt-get install openssh-server; .ci/run does it)"
    if not Path(SSH_KEYGEN).is_file():
        return "ssh-keygen not installed (openssh-client)"
    return None


def throwaway_user_possible() -> bool:
    """True when the server can log in a throwaway chrooted user (root, with useradd and userdel)."""
    return os.geteuid() == 0 and Path(USERADD).is_file() and Path(USERDEL).is_file()


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
    """A running OpenSSH server: where it listens, who may log in, and the files that pin and authenticate.

    ``root`` is the served directory on this machine; ``remote_root`` is the same directory as the client sees
    it (``/files`` in the chroot, else the local path). ``owner`` is the login user's (uid, gid) when it is a
    throwaway user, None when it is the user running the tests.
    """

    host: str
    port: int
    username: str
    root: Path
    remote_root: str
    client_key: Path
    client_key_text: str
    known_hosts: Path
    host_public: str
    log: Path
    owner: tuple[int, int] | None = None

    def remote(self, path: Path) -> str:
        """The client's path for ``path``, a local path under ``root``."""
        return str(PurePosixPath(self.remote_root) / path.relative_to(self.root).as_posix())

    def drop(self, path: Path | str) -> Path:
        """Make ``path`` (under ``root``, relative or not) a directory that the login user can write to."""
        target = self.root / path
        current = self.root
        for part in target.relative_to(self.root).parts:
            current = current / part
            current.mkdir(exist_ok=True)
            if self.owner is not None:
                os.chown(current, *self.owner)
        return target

    def sftp_batch(self, commands: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the OpenSSH ``sftp`` client in batch mode with the client key (host key checked)."""
        batch = self.log.parent / "batch.sftp"
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


@dataclass(frozen=True)
class _Login:
    """Who logs in and where: the part of the server that differs between root and everyone else."""

    user: str
    authorized_keys: Path
    root: Path
    remote_root: str
    owner: tuple[int, int] | None
    config: str


def _root_owned_chain(path: Path) -> bool:
    """True if ``path`` and all its parents are root-owned and not group/world writable (ChrootDirectory)."""
    path = path.resolve()
    for part in (path, *path.parents):
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
    return True


@contextmanager
def _throwaway_login(client_public: str) -> Iterator[_Login]:
    """A fresh system user chrooted into a fresh root-owned directory; both are deleted on exit."""
    parent = next((p for p in JAIL_PARENTS if p.is_dir() and _root_owned_chain(p)), None)
    if parent is None:
        raise RuntimeError(
            f"no root-owned, not group/world-writable directory for a chroot in {JAIL_PARENTS}"
        )
    top = Path(tempfile.mkdtemp(prefix="pagoflow-sftp-", dir=parent))
    user = f"pfsftp{secrets.token_hex(4)}"
    try:
        top.chmod(0o755)
        useradd = [USERADD, "--system", "--user-group", "--no-create-home", "--home-dir", "/"]
        # '*' is no usable password without being a locked '!' account, which sshd (UsePAM no) would refuse.
        useradd += ["--shell", NOLOGIN, "--password", "*", user]
        subprocess.run(useradd, check=True, capture_output=True)  # noqa: S603 - fixed argv, test tooling
        try:
            entry = pwd.getpwnam(user)
            owner = (entry.pw_uid, entry.pw_gid)
            jail = top / "jail"  # the chroot: root-owned, holds only the user's drop area
            jail.mkdir(mode=0o755)
            root = jail / "files"
            root.mkdir(mode=0o755)
            os.chown(root, *owner)
            authorized = top / "authorized_keys"  # outside the chroot, root-owned, read-only for others
            authorized.write_text(client_public + "\n")
            authorized.chmod(0o644)
            config = f"PermitRootLogin no\nStrictModes yes\nMatch User {user}\n    ChrootDirectory {jail}\n"
            yield _Login(user, authorized, root, "/files", owner, config)
        finally:
            userdel = [USERDEL, "--force", user]  # --force: also if a session is still open
            subprocess.run(userdel, check=True, capture_output=True)  # noqa: S603 - fixed argv
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextmanager
def _own_login(etc: Path, client_public: str) -> Iterator[_Login]:
    """The user running the tests, without a chroot (root: ``PermitRootLogin prohibit-password``)."""
    root = etc.parent / "files"
    root.mkdir(exist_ok=True)
    authorized = etc / "authorized_keys"
    authorized.write_text(client_public + "\n")
    authorized.chmod(0o600)
    # StrictModes no: the key file sits under the world-writable /tmp, which StrictModes refuses.
    config = "PermitRootLogin prohibit-password\nStrictModes no\n"
    yield _Login(getpass.getuser(), authorized, root, str(root), None, config)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop sshd and the session processes it forked (sshd leaves them running on SIGTERM)."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(int(child), 15)
        except OSError:
            pass
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def openssh_server(base: Path) -> Iterator[OpenSshServer]:
    """Start sshd on a free loopback port, keys and config under ``base``; stop it (and clean up) on exit."""
    reason = sshd_missing_reason()
    if reason:
        raise RuntimeError(reason)
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    host_key = etc / "ssh_host_ed25519_key"
    _, host_public = keygen(host_key)
    client_key = etc / "client_ed25519"
    client_text, client_public = keygen(client_key)
    port = free_port()
    known_hosts = etc / "known_hosts"
    known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_public))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation directory
    with ExitStack() as stack:
        if throwaway_user_possible():
            login = stack.enter_context(_throwaway_login(client_public))
        else:
            login = stack.enter_context(_own_login(etc, client_public))
        config = etc / "sshd_config"
        config.write_text(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"PidFile {etc / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {login.authorized_keys}\n"
            f"AllowUsers {login.user}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "Subsystem sftp internal-sftp\n"
            "ForceCommand internal-sftp\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "PermitTTY no\n"
            "MaxStartups 50\n"
            "LogLevel VERBOSE\n" + login.config  # last: it may end in a Match block
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
                username=login.user,
                root=login.root,
                remote_root=login.remote_root,
                client_key=client_key,
                client_key_text=client_text,
                known_hosts=known_hosts,
                host_public=host_public,
                log=log,
                owner=login.owner,
            )
        finally:
            _stop(proc)
