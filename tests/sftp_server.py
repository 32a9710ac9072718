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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

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


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    """A known_hosts entry for host:port from a public key line ('type base64 [comment]')."""
    kind, data = public_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {kind} {data}\n"


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


# --- in-process paramiko server -------------------------------------------------------------------------


@dataclass
class Faults:
    """What the fake server does wrong; ``drop_after_bytes`` fires once, then the server behaves."""

    drop_after_bytes: int | None = None
    dropped: int = 0


@dataclass
class FakeSftpServer:
    """A paramiko SFTP server over ``root`` on a loopback port (password and public-key auth)."""

    root: Path
    username: str = "tesoreria"
    password: str = "s3cret-Passw0rd!"  # noqa: S105 - a throwaway credential of the fake server
    host_key: paramiko.PKey = field(default_factory=lambda: paramiko.ECDSAKey.generate())
    authorized_key: paramiko.PKey | None = None
    faults: Faults = field(default_factory=Faults)
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    bytes_served: int = 0
    reads: list[tuple[int, int, int]] = field(default_factory=list)  # (connection number, offset, length)
    _listener: socket.socket | None = None
    _thread: threading.Thread | None = None
    _transports: list[paramiko.Transport] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        """A known_hosts entry pinning ``key`` (this server's host key by default) for this host:port."""
        key = key or self.host_key
        return known_hosts_line(self.host, self.port, f"{key.get_name()} {key.get_base64()}")

    def start(self) -> FakeSftpServer:
        """Listen and serve in a daemon thread."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(16)
        listener.settimeout(0.05)  # accept() wakes up to notice stop()
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="fake-sftp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        for transport in list(self._transports):
            transport.close()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            number = self.connections
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _FakeSftp)
            self._transports.append(transport)
            try:
                transport.start_server(server=_FakeAuth(self, transport, number))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def served(self, *, connection: int, offset: int, n: int, transport: paramiko.Transport) -> None:
        """Count bytes served; drop the connection once past the configured threshold."""
        with self._lock:
            self.reads.append((connection, offset, n))
            self.bytes_served += n
            limit = self.faults.drop_after_bytes
            drop = limit is not None and self.faults.dropped == 0 and self.bytes_served >= limit
            if drop:
                self.faults.dropped += 1
        if drop:
            sock = transport.sock
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the client sees the link vanish mid-transfer
            except OSError:
                pass
            transport.close()


class _FakeAuth(paramiko.ServerInterface):
    def __init__(self, server: FakeSftpServer, transport: paramiko.Transport, number: int) -> None:
        self.server, self.transport, self.number = server, transport, number

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = username == self.server.username and password == self.server.password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = (
            username == self.server.username
            and self.server.authorized_key is not None
            and key == self.server.authorized_key
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    def __init__(self, sftp: _FakeSftp, path: Path, flags: int) -> None:
        super().__init__(flags)
        self._sftp, self._path = sftp, path

    def stat(self) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def read(self, offset: int, length: int) -> bytes | int:
        self.readfile.seek(offset)
        data = self.readfile.read(length)
        auth = self._sftp.auth
        self._sftp.fake.served(connection=auth.number, offset=offset, n=len(data), transport=auth.transport)
        return data


class _FakeSftp(paramiko.SFTPServerInterface):
    def __init__(self, server: _FakeAuth, *args: object, **kwargs: object) -> None:
        super().__init__(server, *args, **kwargs)
        self.auth = server
        self.fake = server.server

    def _local(self, path: str) -> Path:
        relative = os.path.normpath("/" + path).lstrip("/")
        return self.fake.root / relative

    @staticmethod
    def _error(exc: OSError) -> int:
        return paramiko.SFTPServer.convert_errno(exc.errno)

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        try:
            local = self._local(path)
            out = []
            for name in sorted(os.listdir(local)):
                attr = paramiko.SFTPAttributes.from_stat(os.stat(local / name))
                attr.filename = name
                out.append(attr)
            return out
        except OSError as exc:
            return self._error(exc)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return self._error(exc)

    lstat = stat

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            return paramiko.SFTP_PERMISSION_DENIED  # the fake only serves downloads
        try:
            f = open(self._local(path), "rb")  # noqa: SIM115 - closed by SFTPHandle.close
        except OSError as exc:
            return self._error(exc)
        handle = _Handle(self, self._local(path), flags)
        handle.readfile = f
        return handle

    def rename(self, oldpath: str, newpath: str) -> int:
        old, new = self._local(oldpath), self._local(newpath)
        if new.exists():
            return paramiko.SFTP_FAILURE
        try:
            old.rename(new)
        except OSError as exc:
            return self._error(exc)
        return paramiko.SFTP_OK

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        try:
            self._local(path).mkdir()
        except OSError as exc:
            return self._error(exc)
        return paramiko.SFTP_OK


@contextmanager
def fake_sftp_server(root: Path, **kwargs: object) -> Iterator[FakeSftpServer]:
    """Run a FakeSftpServer over ``root`` for the duration of the block."""
    server = FakeSftpServer(root=root, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
