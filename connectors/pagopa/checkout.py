"""pagoPA Checkout for ECs (``openapi/checkout_v1.json``): hand a cart of up to 5 notices to Checkout.

``POST /carts`` answers 302 with the page where the debtor pays; the outcome then reaches the station
(``paGetPaymentV2`` with the cart in ``paymentNote``, then ``paSendRTV2``), never this client. One method,
through ``_call``, which times and journals every attempt, retries retriable faults and classifies errors
once (``connectors.pagopa.fdr.classify_response``). A repeated POST after a lost answer makes a second cart
at most: no money moves until the debtor pays one of them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.journal import EventJournal, Exchange
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaError, PagopaRetriableError, PagopaSchemaError
from connectors.pagopa.fdr import SUBSCRIPTION_KEY_HEADER, classify_response
from connectors.secrets import resolve_secret
from models.journal import Outcome, Role
from rules.redaction import register_secret

log = logging.getLogger(__name__)

COMPONENT = "checkout"
POST_CARTS = "PostCarts"


class CartNotice(BaseModel):
    """One notice of a cart (PaymentNotice): amount in euro cents, as the spec wants."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    notice_number: str = Field(alias="noticeNumber", min_length=18, max_length=18, pattern=r"^[0-9]{18}$")
    fiscal_code: str = Field(alias="fiscalCode", min_length=11, max_length=11)
    amount_cents: int = Field(alias="amount", ge=1)
    company_name: str = Field(alias="companyName", max_length=140)
    description: str = Field(max_length=140)


class ReturnUrls(BaseModel):
    """Where Checkout sends the debtor back."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    ok: str = Field(alias="returnOkUrl")
    cancel: str = Field(alias="returnCancelUrl")
    error: str = Field(alias="returnErrorUrl")


class CartRequest(BaseModel):
    """The body of POST /carts."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    notices: list[CartNotice] = Field(alias="paymentNotices", min_length=1, max_length=5)
    return_urls: ReturnUrls = Field(alias="returnUrls")
    id_cart: str | None = Field(default=None, alias="idCart")
    email: str | None = Field(default=None, alias="emailNotice")
    all_ccp: bool | None = Field(default=None, alias="allCCP")


class CartRedirect(BaseModel):
    """Where the debtor pays the cart, and the cart's id at Checkout (the last segment of that URL)."""

    model_config = ConfigDict(frozen=True)

    location: str
    cart_id: str


class CheckoutClient:
    """Checkout for ECs with one subscription key; the httpx transport is injected (or built)."""

    def __init__(
        self,
        *,
        base_url: str,
        subscription_key: SecretStr | None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        max_retry_after: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if subscription_key is not None:
            register_secret(subscription_key.get_secret_value())
            headers[SUBSCRIPTION_KEY_HEADER] = subscription_key.get_secret_value()
        self._base_url = base_url.rstrip("/")
        # the 302 is the answer: never follow it
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )
        self._journal = journal or EventJournal()
        self._attempts, self._backoff, self._max_retry_after = max(1, attempts), backoff, max_retry_after
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls,
        *,
        subscription_key_ref: str | None = None,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
    ) -> CheckoutClient:
        """A client for the configured Checkout URL, with the station's key (or the default one)."""
        cfg = get_endpoints()
        return cls(
            base_url=cfg.checkout_url,
            subscription_key=resolve_secret(subscription_key_ref or cfg.subscription_key_ref),
            timeout=cfg.timeout_seconds,
            transport=transport,
            journal=journal,
            attempts=cfg.call_attempts,
            backoff=cfg.retry_backoff_seconds,
            max_retry_after=cfg.max_retry_after_seconds,
        )

    def __enter__(self) -> CheckoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- operations ----------------------------------------------------------------------------------

    def create_cart(self, cart: CartRequest) -> CartRedirect:
        """Hand the cart to Checkout; the redirect (302 Location) where the debtor pays it."""
        body = cart.model_dump(mode="json", by_alias=True, exclude_none=True)
        keys = {
            "id_dominio": cart.notices[0].fiscal_code,
            "nav": cart.notices[0].notice_number,
            "id_cart": cart.id_cart,
            "notices": len(cart.notices),
        }
        return self._call(POST_CARTS, "/carts", body, _redirect, keys=keys)

    # --- the one call path ---------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        parse: Callable[[httpx.Response, str], CartRedirect],
        *,
        keys: dict[str, Any],
    ) -> CartRedirect:
        """POST ``path``: journaled per attempt, retried on retriable faults (Retry-After honoured)."""
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._attempt(operation, path, body, parse, keys=keys | {"attempt": attempt})
            except PagopaError as exc:
                if not exc.retriable or attempt == self._attempts:
                    raise
                wait = delay if exc.retry_after is None else min(exc.retry_after, self._max_retry_after)
                log.info(
                    "checkout %s attempt %d failed (%s), again in %.1fs", operation, attempt, exc.reason, wait
                )
                self._sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _attempt(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        parse: Callable[[httpx.Response, str], CartRedirect],
        *,
        keys: dict[str, Any],
    ) -> CartRedirect:
        url = self._base_url + path
        content = json.dumps(body, separators=(",", ":"))
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            ex.request = f"POST {url}\n{content}"
            try:
                response = self._http.post(url, content=content)
            except httpx.TimeoutException as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except httpx.TransportError as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = response.status_code
            ex.response = response.content or response.headers.get("location")
            error = classify_response(response, operation=operation) if response.status_code >= 400 else None
            if error is not None:
                _mark(ex, error, status=response.status_code)
                raise error
            try:
                return parse(response, operation)
            except PagopaError as exc:
                _mark(ex, exc, status=response.status_code)
                raise


def _redirect(response: httpx.Response, operation: str) -> CartRedirect:
    location = response.headers.get("location")
    if response.status_code not in (301, 302, 303, 307) or not location:
        raise PagopaSchemaError(
            f"expected a 302 with Location, got HTTP {response.status_code}",
            operation=operation,
            status=response.status_code,
        )
    parts = urlsplit(location)
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if parts.scheme not in ("http", "https") or not segment:
        raise PagopaSchemaError(f"Location {location!r} is not a Checkout page", operation=operation)
    return CartRedirect(location=location, cart_id=segment)


def _mark(ex: Exchange, error: PagopaError, *, status: int) -> None:
    code = error.code or (f"HTTP_{status}" if status >= 300 else type(error).__name__)
    if error.retriable:
        ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, error.reason
    else:
        ex.ko(fault_code=code, error=error.reason)
