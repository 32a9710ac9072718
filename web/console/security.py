"""Who is signed in to the console, what they may see and do, and the CSRF check of every form."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from sqlmodel import Session
from starlette.datastructures import FormData

from models.db import get_engine
from models.registry import Operator
from models.settings import Settings
from rules.console import may
from store.console import find_operator, operator_creditors

log = logging.getLogger(__name__)

SESSION_COOKIE = "pagoflow_console"
SESSION_MAX_AGE = 8 * 3600
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):  # noqa: N818  (a signal, not an error)
    """The request needs a signed-in operator: the console answers with the login page."""


class Refused(Exception):  # noqa: N818
    """The operator may not see this page or do this (403), with the reason shown to them."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotFound(Exception):  # noqa: N818
    """No such object (404)."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


class CsrfRefused(Exception):  # noqa: N818
    """A form came without this session's CSRF token, or from another site (403)."""


class TooLarge(Exception):  # noqa: N818
    """A request body over the console's limit (413)."""


def session_secret(settings: Settings) -> str:
    """The key that signs console sessions: PAGOFLOW_SECRET_KEY, or one generated once per install.

    The generated key lives in ``<work_dir>/console-secret.key`` (mode 0600). It is written to a private file
    first and linked into place, so worker processes starting together all read the one complete key.
    """
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    path = Path(settings.work_dir) / "console-secret.key"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as stream:
                stream.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(staging, path)
                log.info("generated the console's session key in %s", path)
            except FileExistsError:
                pass  # another worker was first: use its key
            finally:
                staging.unlink()
        key = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        # A read-only work dir: sessions still work, but only in this process and until it restarts.
        log.warning("cannot keep the console's session key in %s (%s): set PAGOFLOW_SECRET_KEY", path, exc)
        return secrets.token_urlsafe(48)
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable key: delete it or set PAGOFLOW_SECRET_KEY")
    return key


def db_session() -> Iterator[Session]:
    """One session per request, committed when the handler succeeds."""
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session
        session.commit()


SessionDep = Annotated[Session, Depends(db_session, scope="function")]


def password_fingerprint(password_hash: str | None) -> str:
    """A short digest of the operator's password hash: a session dies when the password changes."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in operator: role and the ECs it may see (None: every EC)."""

    username: str
    full_name: str
    role: str
    creditors: frozenset[str] | None

    def can_see(self, id_dominio: str | None) -> bool:
        """Whether this operator may see data of the EC (data of no EC only with every EC granted)."""
        return self.creditors is None or (id_dominio is not None and id_dominio in self.creditors)

    def may(self, action: str) -> bool:
        """Whether the role allows the action."""
        return may(self.role, action)

    @property
    def all_creditors(self) -> bool:
        """Whether the operator sees every EC."""
        return self.creditors is None


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return str(token)


def sign_in(request: Request, operator: Operator) -> None:
    """Start a fresh session for the operator (a new CSRF token; language kept)."""
    lang = request.session.get("lang")
    request.session.clear()
    request.session.update(
        {
            "user": operator.username,
            "pw": password_fingerprint(operator.password_hash),
            "csrf": secrets.token_urlsafe(32),
        }
    )
    if lang:
        request.session["lang"] = lang


def current_user(request: Request, session: SessionDep) -> ConsoleUser:
    """The signed-in operator, read from the registry on every request (a revoked grant applies at once)."""
    username = request.session.get("user")
    if not username:
        raise LoginRequired()
    operator = find_operator(session, username=str(username))
    if (
        operator is None
        or not operator.enabled
        or not hmac.compare_digest(
            str(request.session.get("pw", "")), password_fingerprint(operator.password_hash)
        )
    ):
        request.session.clear()
        raise LoginRequired()
    return ConsoleUser(
        username=operator.username,
        full_name=operator.full_name,
        role=operator.role,
        creditors=operator_creditors(session, operator=operator),
    )


UserDep = Annotated[ConsoleUser, Depends(current_user)]


def require(user: ConsoleUser, action: str) -> None:
    """Refuse (403) an action the operator's role does not allow."""
    if not user.may(action):
        raise Refused(f"il ruolo {user.role} non consente questa operazione")


def require_ec(user: ConsoleUser, id_dominio: str | None) -> None:
    """Refuse (403) data of an EC the operator is not granted."""
    if not user.can_see(id_dominio):
        raise Refused(f"l'operatore {user.username} non e' abilitato al dominio {id_dominio or '-'}")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def checked_form(request: Request) -> FormData:
    """The submitted form, once its CSRF token matches this session's and it comes from this site."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
        raise TooLarge()
    if not _same_origin(request):
        raise CsrfRefused()
    form = await request.form(max_files=1, max_fields=200)
    token = form.get("csrf_token")
    expected = request.session.get("csrf")
    if not isinstance(token, str) or not expected or not hmac.compare_digest(token, str(expected)):
        raise CsrfRefused()
    return form


async def enforce_csrf(request: Request) -> None:
    """Router-wide guard: no state-changing request passes without a valid token, whatever the route."""
    if request.method not in SAFE_METHODS:
        await checked_form(request)


FormDep = Annotated[FormData, Depends(checked_form)]


def login_url(request: Request) -> str:
    """The login page, remembering where the operator was going."""
    root = request.scope.get("root_path", "")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{root}/login?next={quote(target, safe='')}"
