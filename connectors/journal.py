"""The event journal helper every connector and endpoint calls: times, classifies, redacts and records."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from models.db import get_engine
from models.journal import Event, Outcome, Role
from models.settings import PayloadPolicy, get_settings
from rules.redaction import redact, redact_mapping

log = logging.getLogger(__name__)

KEY_COLUMNS = ("id_dominio", "iuv", "nav", "receipt_id", "id_flusso", "file_name", "id_a2a")


@dataclass
class Exchange:
    """What one exchange produced; fill it in inside ``EventJournal.exchange``."""

    keys: dict[str, Any] = field(default_factory=dict)
    request: str | bytes | None = None
    response: str | bytes | None = None
    outcome: Outcome = Outcome.OK
    http_status: int | None = None
    fault_code: str | None = None
    error: str | None = None

    def ko(self, *, fault_code: str | None = None, error: str | None = None) -> None:
        """Mark the exchange as a business error answered by the peer."""
        self.outcome, self.fault_code, self.error = Outcome.KO, fault_code, error


def _text(payload: str | bytes | None, limit: int) -> str | None:
    if payload is None:
        return None
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more characters]"
    return redact(text)


class EventJournal:
    """Writes events in a session of its own, so an exchange is recorded even when the caller rolls back."""

    def __init__(self, *, session_factory: Callable[[], AbstractContextManager[Session]] | None = None,
                 policy: PayloadPolicy | None = None, max_payload: int | None = None) -> None:
        settings = get_settings()
        self._session_factory = session_factory or (lambda: Session(get_engine()))
        self.policy = policy or settings.journal_payloads
        self.max_payload = settings.journal_payload_max_bytes if max_payload is None else max_payload

    def build(self, *, component: str, operation: str, role: Role, outcome: Outcome,
              duration_ms: int | None = None, keys: dict[str, Any] | None = None,
              request: str | bytes | None = None, response: str | bytes | None = None,
              http_status: int | None = None, fault_code: str | None = None,
              error: str | None = None) -> Event:
        """An Event row with payloads kept per policy and secrets redacted (not yet stored)."""
        keys = {k: v for k, v in (keys or {}).items() if v is not None}
        keep = self.policy == PayloadPolicy.ALWAYS or (
            self.policy == PayloadPolicy.ON_ERROR and outcome != Outcome.OK)
        extra = redact_mapping({k: str(v) for k, v in keys.items() if k not in KEY_COLUMNS})
        return Event(
            component=component, operation=operation, role=role, outcome=outcome, duration_ms=duration_ms,
            http_status=http_status, fault_code=fault_code, error=redact(error)[:4000] if error else None,
            keys=extra or None,
            request_payload=_text(request, self.max_payload) if keep else None,
            response_payload=_text(response, self.max_payload) if keep else None,
            **{k: str(keys[k]) for k in KEY_COLUMNS if k in keys},
        )

    def record(self, **kwargs: Any) -> None:
        """Store one event (see ``build`` for the arguments); a journal failure is logged, never raised."""
        self.record_many([self.build(**kwargs)])

    def record_many(self, events: list[Event]) -> None:
        """Store several events in one transaction."""
        if not events:
            return
        try:
            with self._session_factory() as session:
                session.add_all(events)
                session.commit()
        except Exception:  # the exchange itself must not fail because its trace could not be written
            log.exception("could not write %d journal event(s)", len(events))

    @contextmanager
    def exchange(self, *, component: str, operation: str, role: Role,
                 keys: dict[str, Any] | None = None) -> Iterator[Exchange]:
        """Time an exchange and record it on exit; an exception is recorded as FAIL and re-raised."""
        ex = Exchange(keys=dict(keys or {}))
        started = time.perf_counter()
        try:
            yield ex
        except BaseException as exc:
            if ex.outcome == Outcome.OK:
                ex.outcome = Outcome.FAIL
            ex.error = ex.error or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.record(component=component, operation=operation, role=role, outcome=ex.outcome,
                        duration_ms=int((time.perf_counter() - started) * 1000), keys=ex.keys,
                        request=ex.request, response=ex.response, http_status=ex.http_status,
                        fault_code=ex.fault_code, error=ex.error)
