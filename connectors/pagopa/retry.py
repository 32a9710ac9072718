"""The short retry loop every pagoPA connector runs around one call (sync and async share its decisions)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from connectors.pagopa.errors import PagopaError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often one call is tried and how long it waits between attempts.

    Only retriable errors are tried again; the wait is the ``Retry-After`` the peer asked for (at most
    ``max_retry_after``), else ``backoff`` doubled after every attempt.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_retry_after: float = 30.0

    def wait(self, error: PagopaError, attempt: int) -> float | None:
        """Seconds to wait after attempt number ``attempt`` failed with ``error``; None: raise it."""
        if not error.retriable or attempt >= self.attempts:
            return None
        if error.retry_after is not None:
            return min(error.retry_after, self.max_retry_after)
        return self.backoff * 2 ** (attempt - 1)

    def run(self, call: Callable[[int], T], *, label: str, sleep: Callable[[float], None] | None = None) -> T:
        """``call(attempt)`` until it succeeds or fails for good; ``label`` names the call in the log."""
        for attempt in itertools.count(1):
            try:
                return call(attempt)
            except PagopaError as exc:
                wait = self.wait(exc, attempt)
                if wait is None:
                    raise
                _log_retry(label, attempt, exc, wait)
                (sleep or time.sleep)(wait)
        raise AssertionError("unreachable")

    async def arun(self, call: Callable[[int], Awaitable[T]], *, label: str) -> T:
        """The same loop for a coroutine; the waits do not block the event loop."""
        for attempt in itertools.count(1):
            try:
                return await call(attempt)
            except PagopaError as exc:
                wait = self.wait(exc, attempt)
                if wait is None:
                    raise
                _log_retry(label, attempt, exc, wait)
                if wait > 0:
                    await asyncio.sleep(wait)
        raise AssertionError("unreachable")


def _log_retry(label: str, attempt: int, error: PagopaError, wait: float) -> None:
    log.info("%s attempt %d failed (%s), again in %.1fs", label, attempt, error.reason, wait)
