"""The treasury bank's SFTP drop box (paramiko): list journals, download them resumably, archive them.

Exceptions, classified once at the boundary (``SftpError.retriable`` drives the Prefect retries)::

    SftpError
    ├── SftpRetriableError          connection refused or dropped, timeout, short read
    └── SftpFatalError
        ├── SftpConfigError         known_hosts missing, no credential, unreadable private key
        ├── SftpAuthError           the server refused our credentials
        ├── HostKeyError
        │   ├── UnknownHostKeyError     host not in the pinned known_hosts
        │   └── HostKeyMismatchError    host key differs from the pinned one
        ├── SftpPermissionError     the server denied access to a path
        ├── SftpNotFoundError       the path does not exist
        └── SftpOperationError      any other refusal of an SFTP request

Credentials: ``password_ref`` names the password; ``private_key_ref`` names the private key **text**
(OpenSSH or PEM, unencrypted: Ed25519, ECDSA or RSA), so it can live in a Prefect Secret block or an
environment variable like any other secret. Neither is ever logged or journaled. Host keys come only from the
source's known_hosts file (OpenSSH format, hashed entries allowed, ``[host]:port`` for non-22 ports); the
system and user known_hosts files are never read and an unknown key is never added.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import logging
import os
import posixpath
import socket
import stat as statmod
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.journal import EventJournal, Exchange
from connectors.secrets import resolve_secret
from models.journal import Role
from models.registry import TreasurySource

log = logging.getLogger(__name__)

T = TypeVar("T")

COMPONENT = "sftp"
CHUNK_SIZE = 256 * 1024
# Reads are pipelined (paramiko prefetch) a window at a time: memory stays bounded by the window whatever
# the file size. paramiko's own request cap (max_concurrent_requests) polls with sleeps and is 10x slower.
PREFETCH_WINDOW = 8 * 1024 * 1024
_RETRIABLE_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ENOTCONN,
    }
)


# --- errors ---------------------------------------------------------------------------------------------


class SftpError(Exception):
    """An SFTP operation failed; ``retriable`` says whether trying again later may help."""

    retriable = False
    code = "SFTP_ERROR"

    def __init__(
        self, message: str, *, host: str = "", port: int = 0, operation: str = "", path: str | None = None
    ) -> None:
        self.host, self.port, self.operation, self.path = host, port, operation, path
        self.reason = message
        where = f"{host}:{port}" if host else "sftp"
        target = f" {path}" if path else ""
        super().__init__(f"{where} {operation}{target}: {message}" if operation else f"{where}: {message}")


class SftpRetriableError(SftpError):
    """A transient fault: connection refused or dropped, timeout, incomplete transfer."""

    retriable = True
    code = "SFTP_RETRIABLE"


class SftpFatalError(SftpError):
    """A fault that retrying will not fix."""

    code = "SFTP_FATAL"


class SftpConfigError(SftpFatalError):
    """The source is misconfigured (known_hosts, credentials, key text)."""

    code = "SFTP_CONFIG"


class SftpAuthError(SftpFatalError):
    """The server refused the credentials."""

    code = "SFTP_AUTH"


class HostKeyError(SftpFatalError):
    """The server's host key is not the pinned one; ``fingerprint`` is the key it presented (SHA256:...)."""

    code = "SFTP_HOST_KEY"

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        fingerprint: str,
        key_type: str,
        operation: str = "connect",
    ) -> None:
        self.fingerprint, self.key_type = fingerprint, key_type
        super().__init__(message, host=host, port=port, operation=operation)


class UnknownHostKeyError(HostKeyError):
    """The host is not in the pinned known_hosts file."""

    code = "SFTP_HOST_KEY_UNKNOWN"


class HostKeyMismatchError(HostKeyError):
    """The host presented a key different from the pinned one (possible man in the middle)."""

    code = "SFTP_HOST_KEY_MISMATCH"

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        fingerprint: str,
        key_type: str,
        expected_fingerprint: str,
        operation: str = "connect",
    ) -> None:
        self.expected_fingerprint = expected_fingerprint
        super().__init__(
            message, host=host, port=port, fingerprint=fingerprint, key_type=key_type, operation=operation
        )


class SftpPermissionError(SftpFatalError):
    """The server denied access to a path."""

    code = "SFTP_PERMISSION"


class SftpNotFoundError(SftpFatalError):
    """The remote path does not exist."""

    code = "SFTP_NOT_FOUND"


class SftpOperationError(SftpFatalError):
    """The server refused an SFTP request for another reason."""

    code = "SFTP_FAILURE"


def classify_error(
    exc: BaseException, *, host: str, port: int, operation: str, path: str | None = None
) -> SftpError:
    """The SftpError an exception raised by paramiko or the network stands for."""
    if isinstance(exc, SftpError):
        return exc
    ctx: dict[str, Any] = {"host": host, "port": port, "operation": operation, "path": path}
    text = str(exc) or type(exc).__name__
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyMismatchError(
            f"host key mismatch: the server presented {exc.key.get_name()} {exc.key.fingerprint}, "
            f"known_hosts pins {exc.expected_key.fingerprint}",
            host=host,
            port=port,
            fingerprint=exc.key.fingerprint,
            key_type=exc.key.get_name(),
            expected_fingerprint=exc.expected_key.fingerprint,
            operation=operation,
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return SftpAuthError(f"authentication refused ({type(exc).__name__}: {text})", **ctx)
    if isinstance(exc, paramiko.ssh_exception.IncompatiblePeer):
        return SftpFatalError(f"incompatible SSH server: {text}", **ctx)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return SftpRetriableError(f"timed out ({text})", **ctx)
    if isinstance(exc, (ConnectionError, EOFError, paramiko.ssh_exception.NoValidConnectionsError)):
        return SftpRetriableError(f"connection lost or refused ({type(exc).__name__}: {text})", **ctx)
    if isinstance(exc, FileNotFoundError):
        return SftpNotFoundError(f"no such file ({text})", **ctx)
    if isinstance(exc, PermissionError):
        return SftpPermissionError(f"permission denied ({text})", **ctx)
    if isinstance(exc, paramiko.SSHException):
        # Banner read errors, "Server connection dropped", channel open failures: the link, not the request.
        return SftpRetriableError(f"SSH transport error ({type(exc).__name__}: {text})", **ctx)
    if isinstance(exc, OSError):
        if exc.errno in _RETRIABLE_ERRNOS:
            return SftpRetriableError(f"network error ({text})", **ctx)
        return SftpOperationError(f"refused ({text})", **ctx)
    return SftpFatalError(f"unexpected {type(exc).__name__}: {text}", **ctx)


# --- configuration and results ---------------------------------------------------------------------------


class SftpConfig(BaseModel):
    """Everything needed to reach one treasury source, secrets resolved (never printed: SecretStr)."""

    model_config = ConfigDict(frozen=True)

    name: str
    id_dominio: str | None = None
    host: str
    port: int = 22
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    known_hosts: Path
    remote_dir: str = "."
    pattern: str = "*"
    archive_dir: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_source(
        cls,
        source: TreasurySource,
        *,
        resolve: Callable[[str | None], SecretStr | None] = resolve_secret,
        timeout: float = 30.0,
    ) -> SftpConfig:
        """The config of a registry row, its secret references resolved."""
        return cls(
            name=source.name,
            id_dominio=source.id_dominio,
            host=source.host,
            port=source.port,
            username=source.username,
            password=resolve(source.password_ref),
            private_key=resolve(source.private_key_ref),
            known_hosts=Path(source.known_hosts),
            remote_dir=source.remote_dir,
            pattern=source.pattern,
            archive_dir=source.archive_dir,
            timeout=timeout,
        )


class RemoteFile(BaseModel):
    """A regular file in the remote directory."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    mtime: datetime | None = None


class Download(BaseModel):
    """A file downloaded to ``path`` with the SHA-256 of its bytes."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    size: int
    sha256: str
    mtime: datetime | None = None
    attempts: int = 1
    resumed_bytes: int = 0


TransportFactory = Callable[..., paramiko.Transport]


class _PinnedHostPolicy(paramiko.RejectPolicy):
    """Reject any host not in the pinned known_hosts, naming it and the key it presented."""

    def __init__(self, *, host: str, port: int) -> None:
        self.host, self.port = host, port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKeyError(
            f"unknown host key: {hostname} is not in the pinned known_hosts (it presented "
            f"{key.get_name()} {key.fingerprint}); add the bank's key after checking it out of band",
            host=self.host,
            port=self.port,
            fingerprint=key.fingerprint,
            key_type=key.get_name(),
        )


def load_private_key(text: str) -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM; Ed25519, ECDSA or RSA, unencrypted)."""
    last: Exception | None = None
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException as exc:
            raise SftpConfigError("the private key is encrypted; store it unencrypted in the secret") from exc
        except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
            last = exc
    # The key text itself is never put in the message.
    raise SftpConfigError(
        f"the private key secret is not an OpenSSH/PEM Ed25519, ECDSA or RSA key ({type(last).__name__})"
    )


# --- the connector ---------------------------------------------------------------------------------------


class SftpSource:
    """One treasury SFTP source: ``list_files``, ``download``, ``archive``; use as a context manager."""

    def __init__(
        self,
        config: SftpConfig,
        *,
        journal: EventJournal | None = None,
        transport_factory: TransportFactory | None = None,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
        chunk_size: int = CHUNK_SIZE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if config.password is None and config.private_key is None:
            raise SftpConfigError(
                "no credential: set password_ref or private_key_ref", host=config.host, port=config.port
            )
        self.config = config
        self._journal = journal or EventJournal()
        self._transport_factory = transport_factory
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._chunk_size = chunk_size
        self._sleep = sleep
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pkey: paramiko.PKey | None = None

    def __enter__(self) -> SftpSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return f"SftpSource({c.name!r}, {c.username}@{c.host}:{c.port}{c.remote_dir})"

    def close(self) -> None:
        """Close the SSH connection, if open."""
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken link must not mask the real error
                pass
        if self._client is not None:
            self._client.close()
        self._sftp = self._client = None

    # -- public operations ---------------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        """Regular files of the remote directory whose name matches the pattern, oldest first."""
        cfg = self.config

        def run(ex: Exchange) -> list[RemoteFile]:
            found = []
            for attr in self._session(ex).listdir_attr(cfg.remote_dir):
                if attr.st_mode is not None and not statmod.S_ISREG(attr.st_mode):
                    continue
                if not fnmatch.fnmatchcase(attr.filename, cfg.pattern):
                    continue
                mtime = datetime.fromtimestamp(attr.st_mtime, UTC) if attr.st_mtime is not None else None
                found.append(RemoteFile(name=attr.filename, size=attr.st_size or 0, mtime=mtime))
            found.sort(key=lambda f: (f.mtime or datetime.min.replace(tzinfo=UTC), f.name))
            ex.keys["files"] = len(found)
            ex.response = "\n".join(f"{f.name} {f.size}" for f in found)
            return found

        return self._call("list", path=cfg.remote_dir, request=f"LIST {cfg.remote_dir} {cfg.pattern}", fn=run)

    def download(self, *, name: str, target: Path) -> Download:
        """Stream ``name`` to ``target`` hashing it; a dropped link is retried from the bytes already held."""
        remote = self._remote_path(name)

        def run(ex: Exchange) -> Download:
            return self._download(ex, name=name, remote=remote, target=target)

        return self._call("download", path=remote, file_name=name, request=f"GET {remote}", fn=run)

    def archive(self, *, name: str) -> bool:
        """Move a processed file to the archive directory; False if it was already there (idempotent)."""
        cfg = self.config
        if not cfg.archive_dir:
            raise SftpConfigError(
                "no archive_dir configured", host=cfg.host, port=cfg.port, operation="archive"
            )
        source = self._remote_path(name)
        target = posixpath.join(cfg.archive_dir, name)

        def run(ex: Exchange) -> bool:
            sftp = self._session(ex)
            self._ensure_dir(sftp, cfg.archive_dir or "")
            try:
                sftp.rename(source, target)
                return True
            except OSError:
                there = self._exists(sftp, source)
                archived = self._exists(sftp, target)
                if not there and archived:
                    ex.keys["already_archived"] = True
                    return False
                if there and archived:
                    # A later file with the same name: keep both rather than overwrite the archived one.
                    stamped = f"{target}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
                    sftp.rename(source, stamped)
                    ex.keys["archived_as"] = posixpath.basename(stamped)
                    return True
                raise

        return self._call("archive", path=source, file_name=name, request=f"RENAME {source} {target}", fn=run)

    # -- the one call path ---------------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        *,
        path: str | None,
        fn: Callable[[Exchange], T],
        file_name: str | None = None,
        request: str | None = None,
    ) -> T:
        cfg = self.config
        keys = {
            "file_name": file_name,
            "id_dominio": cfg.id_dominio,
            "source": cfg.name,
            "host": f"{cfg.host}:{cfg.port}",
        }
        started = time.perf_counter()
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            ex.request = request
            try:
                result = fn(ex)
            except Exception as exc:
                error = classify_error(exc, host=cfg.host, port=cfg.port, operation=operation, path=path)
                ex.fault_code = error.code
                if error.retriable:
                    self.close()  # the link is suspect: the next operation reconnects
                log.warning("sftp %s %s failed: %s", cfg.name, operation, error)
                if error is exc:
                    raise
                raise error from exc
        log.debug("sftp %s %s %s done in %.3f s", cfg.name, operation, path, time.perf_counter() - started)
        return result

    # -- internals -----------------------------------------------------------------------------------------

    def _session(self, ex: Exchange | None = None) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._connect()
            if ex is not None:
                ex.keys["connected"] = True
        if self._sftp is None:  # pragma: no cover - _connect either sets it or raises
            raise SftpRetriableError("no SFTP session", host=self.config.host, port=self.config.port)
        return self._sftp

    def _connect(self) -> None:
        cfg = self.config
        if not cfg.known_hosts.is_file():
            raise SftpConfigError(
                f"known_hosts file {cfg.known_hosts} not found: host keys are pinned, never learnt",
                host=cfg.host,
                port=cfg.port,
                operation="connect",
            )
        if cfg.private_key is not None and self._pkey is None:
            self._pkey = load_private_key(cfg.private_key.get_secret_value())
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(cfg.known_hosts))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise SftpConfigError(
                f"known_hosts file {cfg.known_hosts} unreadable: {exc}",
                host=cfg.host,
                port=cfg.port,
                operation="connect",
            ) from exc
        client.set_missing_host_key_policy(_PinnedHostPolicy(host=cfg.host, port=cfg.port))
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                pkey=self._pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=cfg.timeout,
                banner_timeout=cfg.timeout,
                auth_timeout=cfg.timeout,
                channel_timeout=cfg.timeout,
                transport_factory=self._transport_factory,
            )
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(cfg.timeout)
        except BaseException:
            client.close()
            raise
        self._client, self._sftp = client, sftp
        log.info("sftp %s connected to %s@%s:%d", cfg.name, cfg.username, cfg.host, cfg.port)

    def _remote_path(self, name: str) -> str:
        if not name or "/" in name or name in {".", ".."}:
            raise SftpConfigError(
                f"not a plain file name: {name!r}", host=self.config.host, port=self.config.port
            )
        return posixpath.join(self.config.remote_dir, name)

    @staticmethod
    def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.stat(path)
            return True
        except FileNotFoundError:
            return False

    def _ensure_dir(self, sftp: paramiko.SFTPClient, path: str) -> None:
        if self._exists(sftp, path):
            return
        try:
            sftp.mkdir(path)
        except OSError:
            if not self._exists(sftp, path):  # another worker may have made it meanwhile
                raise

    def _download(self, ex: Exchange, *, name: str, remote: str, target: Path) -> Download:
        cfg = self.config
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        hasher = hashlib.sha256()
        received = 0
        expected: tuple[int, float | None] | None = None
        resumed = 0
        attempt = 0
        try:
            with part.open("wb") as out:
                while True:
                    attempt += 1
                    try:
                        received, mtime = self._fetch(
                            out, hasher, remote=remote, offset=received, expected=expected
                        )
                        break
                    except _Restart as restart:
                        # The remote file changed between attempts: start over, never splice two versions.
                        if attempt >= self._max_attempts:
                            raise SftpRetriableError(
                                "the file keeps changing on the server",
                                host=cfg.host,
                                port=cfg.port,
                                operation="download",
                                path=remote,
                            ) from None
                        out.seek(0)
                        out.truncate()
                        hasher, received, expected, resumed = hashlib.sha256(), 0, restart.identity, 0
                        log.warning("sftp %s %s changed on the server; downloading it again", cfg.name, name)
                    except _Progress as progress:
                        received, expected = progress.received, progress.identity
                        cause = progress.cause
                        error = classify_error(
                            cause, host=cfg.host, port=cfg.port, operation="download", path=remote
                        )
                        if not error.retriable or attempt >= self._max_attempts:
                            ex.keys.update(attempts=attempt, bytes=received)
                            raise error from (None if error is cause else cause)
                        self.close()
                        resumed = received
                        delay = self._backoff * 2 ** (attempt - 1)
                        log.warning(
                            "sftp %s %s: %s; attempt %d/%d resumes at byte %d in %.1f s",
                            cfg.name,
                            name,
                            error.reason,
                            attempt + 1,
                            self._max_attempts,
                            received,
                            delay,
                        )
                        self._sleep(delay)
        except BaseException:
            part.unlink(missing_ok=True)  # a failed download leaves no half file behind
            raise
        os.replace(part, target)
        digest = hasher.hexdigest()
        mtime_dt = datetime.fromtimestamp(mtime, UTC) if mtime is not None else None
        ex.keys.update(bytes=received, sha256=digest, attempts=attempt)
        if resumed:
            ex.keys["resumed_from"] = resumed
        log.info(
            "sftp %s downloaded %s: %d bytes, sha256 %s, %d attempt(s)",
            cfg.name,
            name,
            received,
            digest,
            attempt,
        )
        return Download(
            name=name,
            path=target,
            size=received,
            sha256=digest,
            mtime=mtime_dt,
            attempts=attempt,
            resumed_bytes=resumed,
        )

    def _fetch(
        self,
        out: io.BufferedWriter,
        hasher: Any,
        *,
        remote: str,
        offset: int,
        expected: tuple[int, float | None] | None,
    ) -> tuple[int, float | None]:
        """Append the remote bytes from ``offset`` to ``out``; returns (size, mtime) of the remote file."""
        received = offset
        identity = expected
        try:
            sftp = self._session()
            with sftp.open(remote, "rb") as remote_file:
                attr = remote_file.stat()
                identity = (attr.st_size or 0, attr.st_mtime)
                if expected is not None and identity != expected:
                    raise _Restart(identity)
                size = identity[0]
                if offset:
                    remote_file.seek(offset)
                while received < size:
                    window_end = min(received + PREFETCH_WINDOW, size)
                    remote_file.prefetch(window_end)
                    while received < window_end:
                        chunk = remote_file.read(min(self._chunk_size, window_end - received))
                        if not chunk:
                            break
                        out.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                    if received < window_end:
                        break
                if received != size:
                    raise SftpRetriableError(
                        f"short read: {received} of {size} bytes",
                        host=self.config.host,
                        port=self.config.port,
                        operation="download",
                        path=remote,
                    )
                return identity
        except _Restart:
            raise
        except Exception as exc:
            out.flush()
            raise _Progress(received=received, identity=identity, cause=exc) from exc


class _Restart(Exception):  # noqa: N818 - internal control flow, never escapes the connector
    def __init__(self, identity: tuple[int, float | None]) -> None:
        self.identity = identity


class _Progress(Exception):  # noqa: N818 - carries how far a failed attempt got
    def __init__(self, *, received: int, identity: tuple[int, float | None] | None, cause: Exception) -> None:
        self.received, self.identity, self.cause = received, identity, cause
