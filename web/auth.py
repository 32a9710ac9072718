"""Authentication of API callers (HTTP Basic, or an id + API key header pair) and what each may see."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from sqlmodel import Session, select

from models.registry import Application, Operator, OperatorGrant
from rules.credentials import verify_secret
from rules.positions import Caller
from store.positions import load_caller
from web.errors import ApiError

API_ID_HEADER = "X-Api-Id"
API_KEY_HEADER = "X-Api-Key"
_CACHE_TTL = 300.0


@dataclass(frozen=True)
class Principal:
    """Who is calling: an application (with its grants) or an operator (with role and ECs)."""

    kind: str
    name: str
    caller: Caller | None = None
    role: str | None = None
    creditors: frozenset[str] | None = None  # None: every EC

    def can_see(self, id_dominio: str) -> bool:
        """Whether the caller may read positions of this EC."""
        if self.caller is not None:
            return self.caller.may_use(id_dominio) or any(g[0] == id_dominio for g in self.caller.grants)
        return self.creditors is None or id_dominio in self.creditors

    def visible_creditors(self) -> set[str] | None:
        """The ECs whose data the caller may read (None: all)."""
        if self.caller is not None:
            return None if self.caller.all_creditors else {g[0] for g in self.caller.grants}
        return None if self.creditors is None else set(self.creditors)


class _VerifiedCache:
    """Remembers recent successful checks: scrypt is deliberately slow, and callers repeat their credentials."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], float] = {}

    def hit(self, kind: str, name: str, secret: str, hashed: str) -> bool:
        key = (kind, name, hashlib.sha256((secret + "\0" + hashed).encode()).hexdigest())
        with self._lock:
            expires = self._entries.get(key)
            return expires is not None and expires > time.monotonic()

    def remember(self, kind: str, name: str, secret: str, hashed: str) -> None:
        key = (kind, name, hashlib.sha256((secret + "\0" + hashed).encode()).hexdigest())
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = time.monotonic() + _CACHE_TTL


_cache = _VerifiedCache()


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "AUTORIZZAZIONE", "401000", "Autenticazione richiesta", detail,
                    headers={"WWW-Authenticate": 'Basic realm="pagoflow"'})


def _check(kind: str, name: str, secret: str, hashed: str | None) -> bool:
    if not hashed:
        return False
    if _cache.hit(kind, name, secret, hashed):
        return True
    if verify_secret(secret, hashed):
        _cache.remember(kind, name, secret, hashed)
        return True
    return False


def _credentials(request: Request) -> tuple[str, str, str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _unauthorized("credenziali Basic malformate") from exc
        return "password", user, password
    api_id, api_key = request.headers.get(API_ID_HEADER), request.headers.get(API_KEY_HEADER)
    if api_id and api_key:
        return "api_key", api_id, api_key
    raise _unauthorized("fornire HTTP Basic oppure le intestazioni X-Api-Id e X-Api-Key")


def authenticate(request: Request, session: Session) -> Principal:
    """The caller of this request, or 401; applications by principal, operators by username."""
    method, name, secret = _credentials(request)
    app = session.exec(select(Application).where(Application.principal == name)).first()
    if app is not None and app.enabled:
        hashed = app.password_hash if method == "password" else app.api_key_hash
        if _check("app-" + method, name, secret, hashed):
            caller = load_caller(session, id_a2a=app.id_a2a)
            assert caller is not None
            return Principal(kind="application", name=app.id_a2a, caller=caller)
        raise _unauthorized("credenziali non valide")
    if method == "password":
        operator = session.exec(select(Operator).where(Operator.username == name)).first()
        if operator is not None and operator.enabled and _check("operator", name, secret, operator.password_hash):
            creditors = None if operator.all_creditors else frozenset(
                g.id_dominio for g in session.exec(select(OperatorGrant).where(OperatorGrant.username == name)))
            return Principal(kind="operator", name=name, role=operator.role, creditors=creditors)
    raise _unauthorized("credenziali non valide")
