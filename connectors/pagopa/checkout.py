"""pagoPA Checkout for ECs (``openapi/checkout_v1.json``): hand a cart of up to 5 notices to Checkout.

``POST /carts`` answers 302 with the page where the debtor pays; the outcome then reaches the station
(``paGetPaymentV2`` with the cart in ``paymentNote``, then ``paSendRTV2``), never this client. One method,
through the shared call path of ``connectors.pagopa.http`` (timed and journaled per attempt, retriable faults
retried, errors classified once; the 302 is the answer, never followed). A repeated POST after a lost answer
makes a second cart at most: no money moves until the debtor pays one of them.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.journal import EventJournal
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaSchemaError
from connectors.pagopa.http import SyncConnector, client_settings, subscription_key

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


class CheckoutClient(SyncConnector):
    """Checkout for ECs with one subscription key; the httpx transport is injected (or built)."""

    component = "checkout"
    content_type = "application/json"
    redirect_is_answer = True  # the 302 is the answer: never follow it
    journal_answers = True

    @classmethod
    def from_settings(
        cls,
        *,
        subscription_key_ref: str | None = None,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
    ) -> CheckoutClient:
        """A client for the configured Checkout URL, with the station's key (or the default one)."""
        return cls(
            base_url=get_endpoints().checkout_url,
            subscription_key=subscription_key(subscription_key_ref),
            transport=transport,
            journal=journal,
            **client_settings(),
        )

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
        content = json.dumps(body, separators=(",", ":")).encode()
        return self._call(POST_CARTS, "POST", "/carts", content=content, parse=_redirect, keys=keys)


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
