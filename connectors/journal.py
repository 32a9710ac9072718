"""The event journal helper every connector and endpoint calls: times, classifies, redacts and records.

A journal writes each event as it comes, in a session of its own; a buffered one (``buffered=True``) keeps
them in memory until ``flush`` writes them all with one bulk insert, so a batch of a few hundred calls costs
one statement instead of one transaction per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from models.db import get_engine
from models.journal import Event, Outcome, Role
from models.settings import PayloadPolicy, get_settings
from models.types import utcnow
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

    def __init__(
        self,
        *,
        session_factory: Callable[[], AbstractContextManager[Session]] | None = None,
        policy: PayloadPolicy | None = None,
        max_payload: int | None = None,
        buffered: bool = False,
    ) -> None:
        settings = get_settings()
        self._session_factory = session_factory or (lambda: Session(get_engine()))
        self.policy = policy or settings.journal_payloads
        self.max_payload = settings.journal_payload_max_bytes if max_payload is None else max_payload
        self.buffered = buffered
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def row(
        self,
        *,
        component: str,
        operation: str,
        role: Role,
        outcome: Outcome,
        duration_ms: int | None = None,
        keys: dict[str, Any] | None = None,
        request: str | bytes | None = None,
        response: str | bytes | None = None,
        http_status: int | None = None,
        fault_code: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """The column values of one event: payloads kept per policy, secrets redacted."""
        keys = {k: v for k, v in (keys or {}).items() if v is not None}
        keep = self.policy == PayloadPolicy.ALWAYS or (
            self.policy == PayloadPolicy.ON_ERROR and outcome != Outcome.OK
        )
        extra = redact_mapping({k: str(v) for k, v in keys.items() if k not in KEY_COLUMNS})
        cleaned = redact(error) if error else None
        row: dict[str, Any] = {
            "at": utcnow(),
            "component": component,
            "operation": operation,
            "role": str(role),
            "outcome": str(outcome),
            "duration_ms": duration_ms,
            "http_status": http_status,
            "fault_code": fault_code,
            "error": cleaned[:4000] if cleaned else None,
            "keys": extra or None,
            "request_payload": _text(request, self.max_payload) if keep else None,
            "response_payload": _text(response, self.max_payload) if keep else None,
        }
        row.update({k: (str(keys[k]) if k in keys else None) for k in KEY_COLUMNS})
        return row

    def build(self, **kwargs: Any) -> Event:
        """An Event (see ``row`` for the arguments), not yet stored."""
        return Event(**self.row(**kwargs))

    def record(self, **kwargs: Any) -> None:
        """Store one event (see ``row``), or keep it for ``flush`` when buffered; failures are logged only."""
        if self.buffered:
            row = self.row(**kwargs)
            with self._lock:
                self._pending.append(row)
        else:
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

    def flush(self) -> int:
        """Write the events a buffered journal kept, with one bulk insert; how many (a failure is logged).

        Rows, not Event objects: building an ORM object costs more than an HTTP call's own bookkeeping. A
        process killed before ``flush`` loses the trace of those calls, not their effect: a re-run converges.
        """
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            try:
                with self._session_factory() as session:
                    session.execute(insert(Event.__table__), rows)  # type: ignore[attr-defined]
                    session.commit()
            except Exception:  # the exchanges must not fail because their trace could not be written
                log.exception("could not write %d journal event(s)", len(rows))
        return len(rows)

    @contextmanager
    def exchange(
        self, *, component: str, operation: str, role: Role, keys: dict[str, Any] | None = None
    ) -> Iterator[Exchange]:
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
            self.record(
                component=component,
                operation=operation,
                role=role,
                outcome=ex.outcome,
                duration_ms=int((time.perf_counter() - started) * 1000),
                keys=ex.keys,
                request=ex.request,
                response=ex.response,
                http_status=ex.http_status,
                fault_code=ex.fault_code,
                error=ex.error,
            )


class BufferedJournal(EventJournal):
    """An ``EventJournal(buffered=True)``: keeps events until ``flush``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(buffered=True, **kwargs)
