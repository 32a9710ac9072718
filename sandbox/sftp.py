"""The treasury bank's SFTP server of the sandbox: a small paramiko server over a directory, in a thread.

It serves the journals that `POST /sandbox/settle` writes, with password or public-key authentication and a
host key the client pins. It can misbehave on purpose (drop the connection after N bytes served) for fault
tests. Pure Python, so the demo and the tests need no OpenSSH.
"""

from __future__ import annotations

import os
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
    """What the fake server does wrong; ``drop_after_bytes`` fires once, then the server behaves."""

    drop_after_bytes: int | None = None
    dropped: int = 0


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
            sock = transport.sock
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the client sees the link vanish mid-transfer
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
def sftp_server(root: Path, **kwargs: object) -> Iterator[SandboxSftpServer]:
    """Run a SandboxSftpServer over ``root`` for the duration of the block."""
    server = SandboxSftpServer(root=root, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
