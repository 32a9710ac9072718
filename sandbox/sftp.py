"""The treasury bank's SFTP server of the sandbox: a small paramiko server over a directory, in a thread.

It serves the journals that `POST /sandbox/settle` writes, with password or public-key authentication and a
host key the client pins. It can misbehave on purpose for fault tests: drop the connection once after N bytes
served, or drop it in the middle of a seeded fraction of the downloads (``Faults``). Pure Python, so the demo
and the tests need no OpenSSH.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    """A known_hosts entry for host:port from a public key line ('type base64 [comment]')."""
    kind, data = public_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {kind} {data}\n"


@dataclass
class Faults:
    """What the fake server does wrong.

    ``drop_after_bytes`` drops the connection once the server has served that many bytes, once; then the
    server behaves. ``drop_rate`` cuts that fraction of the downloads in the middle of the file: every
    opening of a file for reading draws from a generator seeded with ``seed`` (so a campaign is repeatable),
    and a drawn download gets the file's bytes up to a random point (at least one, never the whole file)
    before the connection goes down; ``cut_first`` cuts the first downloads that way whatever the draw (a
    campaign is sure to see one). ``opened`` counts the openings, ``dropped`` the drops of either kind.
    """

    drop_after_bytes: int | None = None
    dropped: int = 0
    drop_rate: float = 0.0
    seed: int = 0
    cut_first: int = 0
    opened: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError("drop_rate must be between 0 and 1")
        self.rng = random.Random(f"sftp:{self.seed}")  # noqa: S311 - reproducible, not secret

    def cut_point(self, size: int) -> int | None:
        """Where to cut the download of a ``size``-byte file now opened, or None to serve it whole."""
        self.opened += 1
        if size < 2:
            return None
        forced = self.opened <= self.cut_first
        if not forced and (not self.drop_rate or self.rng.random() >= self.drop_rate):
            return None
        return self.rng.randint(1, size - 1)


@dataclass
class SandboxSftpServer:
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

    def start(self) -> SandboxSftpServer:
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
            _hang_up(transport)

    def cut_point(self, size: int) -> int | None:
        """Where the download of a file just opened is to be cut (``Faults.drop_rate``), or None."""
        with self._lock:
            return self.faults.cut_point(size)

    def cut(self, transport: paramiko.Transport, *, delay: float = 0.0) -> None:
        """Drop a connection cut mid-file: now, or once the partial answer had ``delay`` s to leave."""
        with self._lock:
            self.faults.dropped += 1
        if delay:
            timer = threading.Timer(delay, _hang_up, args=(transport,))
            timer.daemon = True
            timer.start()
        else:
            _hang_up(transport)


def _hang_up(transport: paramiko.Transport) -> None:
    try:
        transport.sock.shutdown(socket.SHUT_RDWR)  # the client sees the link vanish mid-transfer
    except OSError:
        pass
    transport.close()


class _FakeAuth(paramiko.ServerInterface):
    def __init__(self, server: SandboxSftpServer, transport: paramiko.Transport, number: int) -> None:
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
    def __init__(self, sftp: _FakeSftp, path: Path, flags: int, *, cut: int | None = None) -> None:
        super().__init__(flags)
        self._sftp, self._path = sftp, path
        self._cut = cut  # serve the file up to this byte, then drop the connection
        self._dropping = False

    def stat(self) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def read(self, offset: int, length: int) -> bytes | int:
        auth = self._sftp.auth
        if self._dropping:  # the client asks past the cut: the link is going down anyway
            _hang_up(auth.transport)
            return paramiko.SFTP_CONNECTION_LOST
        self.readfile.seek(offset)
        data = self.readfile.read(length)
        if self._cut is not None and offset + len(data) > self._cut:
            data = data[: max(0, self._cut - offset)]
            self._dropping = True
            if not data:
                self._sftp.fake.cut(auth.transport)
                return paramiko.SFTP_CONNECTION_LOST
            # the bytes before the cut reach the client (a short read), then the connection goes down
            self._sftp.fake.cut(auth.transport, delay=0.05)
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
        cut = self.fake.cut_point(os.fstat(f.fileno()).st_size)
        handle = _Handle(self, self._local(path), flags, cut=cut)
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
def sftp_server(root: Path, **kwargs: object) -> Iterator[SandboxSftpServer]:
    """Run a SandboxSftpServer over ``root`` for the duration of the block."""
    server = SandboxSftpServer(root=root, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
