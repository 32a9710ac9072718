"""The one HTTP call path of the pagoPA REST connectors (FdR, GPD/ACA, receipts, Checkout).

A client subclasses ``SyncConnector`` (``httpx.Client``) or ``AsyncConnector`` (``httpx.AsyncClient``) and
sends every operation through ``_call``, which

* sends the subscription key (``Ocp-Apim-Subscription-Key``, registered for redaction);
* times and journals every attempt (``EventJournal.exchange``; the request text is built only when the
  journal keeps it);
* classifies the answer once, into ``connectors.pagopa.errors``: 2xx ok; 401/403 ``PagopaAuthError``;
  404 ``PagopaNotFoundError``; 429, 5xx, timeouts, dropped connections and cut answers
  ``PagopaRetriableError``; any other refusal ``PagopaBusinessError`` with ``status``;
* tries a retriable fault again, honouring ``Retry-After`` (``connectors.pagopa.retry.RetryPolicy``).

The sync and async paths share everything but the send and the sleep.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from connectors.journal import EventJournal, Exchange
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import (
    PagopaAuthError,
    PagopaBusinessError,
    PagopaError,
    PagopaNotFoundError,
    PagopaRetriableError,
)
from connectors.pagopa.retry import RetryPolicy
from connectors.secrets import resolve_secret
from models.journal import Outcome, Role
from models.settings import PayloadPolicy
from rules.redaction import register_secret

SUBSCRIPTION_KEY_HEADER = "Ocp-Apim-Subscription-Key"


# --- pieces of the call path -----------------------------------------------------------------------------


def subscription_key(ref: str | None) -> SecretStr | None:
    """The subscription key of a station (its ``api_key_ref``), else the endpoints' default reference."""
    return resolve_secret(ref or get_endpoints().subscription_key_ref)


def client_settings() -> dict[str, Any]:
    """The timeout and retry keywords of a connector's constructor, from the PAGOFLOW_PAGOPA_* settings."""
    ep = get_endpoints()
    return {
        "timeout": ep.timeout_seconds,
        "attempts": ep.call_attempts,
        "backoff": ep.retry_backoff_seconds,
        "max_retry_after": ep.max_retry_after_seconds,
    }


def request_headers(
    key: SecretStr | None, *, accept: str = "application/json", content_type: str | None = None
) -> dict[str, str]:
    """The headers every request of a client carries; the key is registered so the journal redacts it."""
    headers = {"Accept": accept}
    if content_type:
        headers["Content-Type"] = content_type
    if key is not None:
        register_secret(key.get_secret_value())
        headers[SUBSCRIPTION_KEY_HEADER] = key.get_secret_value()
    return headers


def retry_after(response: httpx.Response) -> float | None:
    """The seconds of a ``Retry-After`` header (None when absent or not a number)."""
    raw = response.headers.get("Retry-After")
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None


def classify_response(
    response: httpx.Response, *, operation: str, code_field: str = "appErrorCode"
) -> PagopaError | None:
    """The error an HTTP answer stands for (None for a 2xx); ``code_field`` of a JSON body is its code."""
    status = response.status_code
    if status < 300:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    value = body.get(code_field) if isinstance(body, dict) else None
    code = str(value)[:60] if value else None
    message = f"HTTP {status}: {response.text[:300]}"
    if status == 429 or status >= 500:
        return PagopaRetriableError(
            message, operation=operation, status=status, code=code, retry_after=retry_after(response)
        )
    if status in (401, 403):
        return PagopaAuthError(message, operation=operation, status=status, code=code)
    if status == 404:
        return PagopaNotFoundError(message, operation=operation, status=status, code=code)
    return PagopaBusinessError(message, operation=operation, status=status, code=code)


def transport_error(exc: httpx.TransportError, *, operation: str) -> PagopaRetriableError:
    """A timeout, refused, reset or dropped connection, or a cut body: always worth another attempt."""
    if isinstance(exc, httpx.TimeoutException):
        return PagopaRetriableError(f"timeout: {exc}", operation=operation)
    return PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation)


def json_body(response: httpx.Response, operation: str) -> Any:
    """The JSON of an answer, numbers with a fraction as Decimal (never through binary floats)."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        # A cut or garbled body is a transport accident: asking again usually gives the whole answer.
        raise PagopaRetriableError(
            f"answer is not JSON ({exc})", operation=operation, status=response.status_code
        ) from exc


def mark(ex: Exchange, error: PagopaError, *, status: int) -> None:
    """Record an error in the exchange: FAIL when retriable, else KO (a refusal by the peer)."""
    code = error.code or (f"HTTP_{status}" if status >= 300 else type(error).__name__)
    if error.retriable:
        ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, error.reason
    else:
        ex.ko(fault_code=code, error=error.reason)


@dataclass(frozen=True)
class _Request:
    """One operation as ``_call`` was asked for it."""

    operation: str
    method: str
    url: str
    keys: dict[str, Any]
    params: dict[str, Any] | None
    content: bytes | None
    parse: Callable[[httpx.Response, str], Any]
    result_keys: Callable[[Any], dict[str, Any]] | None

    def text(self) -> str:
        """The request as the journal shows it."""
        text = f"{self.method} {self.url}" + (f"?{httpx.QueryParams(self.params)}" if self.params else "")
        return text + (f"\n\n{self.content.decode('utf-8', errors='replace')}" if self.content else "")


def _answer_text(response: httpx.Response) -> bytes | str:
    if not response.content and "location" in response.headers:
        return response.headers["location"]  # a redirect's answer is where it points
    return response.content


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """The default certificate-checking TLS context, built once: loading the CAs costs ~25 ms a client."""
    return ssl.create_default_context()


# --- the connectors ---------------------------------------------------------------------------------------


class _Connector:
    """What the sync and async call paths share: journal, retry policy, classification of an answer."""

    component: ClassVar[str]
    accept: ClassVar[str] = "application/json"
    content_type: ClassVar[str | None] = None
    error_code_field: ClassVar[str] = "appErrorCode"
    # Checkout answers a cart with a 302: below 400 that is the answer, not an error.
    redirect_is_answer: ClassVar[bool] = False
    # Keep successful answers too (per journal policy); FRs and GPD positions are big, receipts small.
    journal_answers: ClassVar[bool] = False

    def __init__(
        self, *, journal: EventJournal | None, attempts: int, backoff: float, max_retry_after: float
    ) -> None:
        self.journal = journal or EventJournal()
        self._retry = RetryPolicy(attempts=attempts, backoff=backoff, max_retry_after=max_retry_after)

    def _headers(self, key: SecretStr | None) -> dict[str, str]:
        return request_headers(key, accept=self.accept, content_type=self.content_type)

    def _call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        keys: dict[str, Any],
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        parse: Callable[[httpx.Response, str], Any] = json_body,
        result_keys: Callable[[Any], dict[str, Any]] | None = None,
    ) -> Any:
        """One operation: journaled per attempt, retried on retriable faults, classified; ``parse`` of it.

        ``parse(response, operation)`` reads a successful answer (JSON by default); ``result_keys`` adds
        business keys of the result to the journal. An ``AsyncConnector`` answers an awaitable.
        """
        request = _Request(operation, method, url, keys, params, content, parse, result_keys)
        return self._run(request)

    def _run(self, request: _Request) -> Any:
        raise NotImplementedError

    @contextmanager
    def _exchange(self, request: _Request, attempt: int) -> Iterator[Exchange]:
        """One journaled attempt; transport failures classified, the request text built only if kept."""
        with self.journal.exchange(
            component=self.component,
            operation=request.operation,
            role=Role.CLIENT,
            keys=request.keys | {"attempt": attempt},
        ) as ex:
            if self.journal.policy == PayloadPolicy.ALWAYS:
                ex.request = request.text()
            try:
                yield ex
            except httpx.TransportError as exc:
                ex.request = request.text()
                raise transport_error(exc, operation=request.operation) from exc
            except BaseException:
                ex.request = request.text()
                raise

    def _answer(self, ex: Exchange, response: httpx.Response, request: _Request) -> Any:
        """Classify an answer and parse it, recording the outcome in the exchange."""
        status, operation = response.status_code, request.operation
        ex.http_status = status
        if self.journal_answers:
            ex.response = _answer_text(response)
        refused = status >= (400 if self.redirect_is_answer else 300)
        error = (
            classify_response(response, operation=operation, code_field=self.error_code_field)
            if refused
            else None
        )
        try:
            if error is not None:
                raise error
            result = request.parse(response, operation)
        except PagopaError as exc:
            ex.response = _answer_text(response)
            mark(ex, exc, status=status)
            raise
        if request.result_keys is not None:
            ex.keys |= request.result_keys(result)
        return result

    def _label(self, request: _Request) -> str:
        return f"{self.component} {request.operation}"


class SyncConnector(_Connector):
    """The call path of a pagoPA REST client on ``httpx.Client`` (transport injected, or a real one)."""

    def __init__(
        self,
        *,
        base_url: str = "",
        subscription_key: SecretStr | None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=self._headers(subscription_key), timeout=timeout,
            transport=transport, follow_redirects=False,
        )  # fmt: skip
        super().__init__(journal=journal, attempts=attempts, backoff=backoff, max_retry_after=max_retry_after)
        self._sleep = sleep or time.sleep

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _run(self, request: _Request) -> Any:
        def attempt(n: int) -> Any:
            with self._exchange(request, n) as ex:
                response = self._http.request(
                    request.method, request.url, params=request.params, content=request.content
                )
                return self._answer(ex, response, request)

        return self._retry.run(attempt, label=self._label(request), sleep=self._sleep)


class AsyncConnector(_Connector):
    """The call path of a pagoPA REST client on ``httpx.AsyncClient``: a batch runs its calls on one loop."""

    def __init__(
        self,
        *,
        base_url: str = "",
        subscription_key: SecretStr | None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        journal: EventJournal | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        max_retry_after: float = 30.0,
        connections: int = 8,
    ) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=self._headers(subscription_key), timeout=timeout,
            transport=transport, limits=limits, verify=_tls_context(),
        )  # fmt: skip
        super().__init__(journal=journal, attempts=attempts, backoff=backoff, max_retry_after=max_retry_after)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def _run(self, request: _Request) -> Any:
        async def attempt(n: int) -> Any:
            with self._exchange(request, n) as ex:
                response = await self._http.request(
                    request.method, request.url, params=request.params, content=request.content
                )
                return self._answer(ex, response, request)

        return await self._retry.arun(attempt, label=self._label(request))
