"""FdR REST for creditor institutions (``openapi/fdr_organization.json``): published flows, headers, payments.

One method per operation, all through ``_call``, which times and journals the exchange, retries retriable
faults a few times (honouring ``Retry-After``) and classifies errors (``connectors.pagopa.errors``).
Amounts are read as Decimal straight from the JSON text, never through binary floats.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.journal import EventJournal
from connectors.pagopa.errors import (
    PagopaAuthError,
    PagopaBusinessError,
    PagopaError,
    PagopaNotFoundError,
    PagopaRetriableError,
    PagopaSchemaError,
)
from models.journal import Outcome, Role
from rules.redaction import register_secret

log = logging.getLogger(__name__)

COMPONENT = "fdr"
SUBSCRIPTION_KEY_HEADER = "Ocp-Apim-Subscription-Key"
_ROME = ZoneInfo("Europe/Rome")
_CENT = Decimal("0.01")


def _instant(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class FdrFlowRef(_Model):
    """One published flow as the listing names it (the latest revision only)."""

    fdr: str
    psp_id: str = Field(alias="pspId")
    revision: int = Field(ge=1)
    published: datetime
    flow_date: datetime | None = Field(default=None, alias="flowDate")

    _aware = field_validator("published", "flow_date", mode="before")(_instant)


class FdrFlowPage(_Model):
    """One page of the listing."""

    flows: list[FdrFlowRef]
    page: int
    total_pages: int


class FdrFlowHeader(_Model):
    """The header of one published revision (SingleFlowResponse)."""

    fdr: str
    revision: int = Field(ge=1)
    status: str
    psp_id: str
    psp_name: str | None = None
    ec: str
    ec_name: str | None = None
    flow_date: datetime
    regulation: str
    regulation_date: date
    bic: str | None = None
    total_count: int
    total_amount: Decimal
    published: datetime | None = None

    _aware = field_validator("flow_date", "published", mode="before")(_instant)


class FdrPayment(_Model):
    """One line of a flow (Payment)."""

    index: int
    iuv: str = Field(min_length=1, max_length=35)
    iur: str = Field(min_length=1, max_length=35)
    transfer_index: int = Field(alias="idTransfer")
    amount: Decimal = Field(alias="pay")
    pay_status: str = Field(alias="payStatus")
    pay_date: date | None = Field(default=None, alias="payDate")

    @field_validator("amount")
    @classmethod
    def _cents(cls, value: Decimal) -> Decimal:
        return value.quantize(_CENT)

    @field_validator("pay_date", mode="before")
    @classmethod
    def _business_day(cls, value: Any) -> Any:
        # payDate is an instant; the business day is the Italian one.
        if isinstance(value, str) and "T" in value:
            return _instant(value).astimezone(_ROME).date()
        return value


class FdrPaymentPage(_Model):
    """One page of a flow's payments."""

    payments: list[FdrPayment]
    page: int
    total_pages: int


def _json(response: httpx.Response, operation: str) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        # A cut or garbled body is a transport accident: asking again usually gives the whole answer.
        raise PagopaRetriableError(
            f"answer is not JSON ({exc})", operation=operation, status=response.status_code
        ) from exc


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None


def _app_code(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("appErrorCode") if isinstance(body, dict) else None


def classify_response(response: httpx.Response, *, operation: str) -> PagopaError | None:
    """The error an HTTP answer stands for (None for a 2xx)."""
    status = response.status_code
    if status < 300:
        return None
    code = _app_code(response)
    text = response.text[:300]
    if status == 429 or status >= 500:
        return PagopaRetriableError(
            f"HTTP {status}: {text}",
            operation=operation,
            status=status,
            code=code,
            retry_after=_retry_after(response),
        )
    if status in (401, 403):
        return PagopaAuthError(f"HTTP {status}: {text}", operation=operation, status=status, code=code)
    if status == 404:
        return PagopaNotFoundError(f"HTTP 404: {text}", operation=operation, status=status, code=code)
    return PagopaBusinessError(f"HTTP {status}: {text}", operation=operation, status=status, code=code)


class FdrClient:
    """FdR REST for one EC's subscription key; the httpx transport is injected (or a real one is built)."""

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
    ) -> None:
        headers = {"Accept": "application/json"}
        if subscription_key is not None:
            register_secret(subscription_key.get_secret_value())
            headers[SUBSCRIPTION_KEY_HEADER] = subscription_key.get_secret_value()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self._journal = journal or EventJournal()
        self._attempts, self._backoff, self._max_retry_after = attempts, backoff, max_retry_after

    def __enter__(self) -> FdrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- operations ----------------------------------------------------------------------------------

    def list_flows(
        self, *, ec: str, published_gt: datetime | None = None, page: int = 1, size: int = 1000
    ) -> FdrFlowPage:
        """One page of the EC's published flows (latest revisions), oldest publication first."""
        params: dict[str, Any] = {"page": page, "size": size}
        if published_gt is not None:
            params["publishedGt"] = published_gt.astimezone(UTC).isoformat().replace("+00:00", "Z")
        body = self._call(
            "getAllPublishedFlows", f"/organizations/{ec}/fdrs", params=params, keys={"id_dominio": ec}
        )
        try:
            return FdrFlowPage(
                flows=[FdrFlowRef.model_validate(d) for d in body["data"]],
                page=body["metadata"]["pageNumber"],
                total_pages=body["metadata"]["totPage"],
            )
        except (KeyError, TypeError, ValidationError) as exc:
            raise PagopaSchemaError(f"unexpected listing: {exc}", operation="getAllPublishedFlows") from exc

    def get_flow(self, *, ec: str, fdr: str, revision: int, psp: str) -> FdrFlowHeader:
        """The header of one published revision."""
        body = self._call(
            "getSinglePublishedFlow",
            f"/organizations/{ec}/fdrs/{fdr}/revisions/{revision}/psps/{psp}",
            keys={"id_dominio": ec, "id_flusso": fdr, "psp": psp, "revision": revision},
        )
        try:
            sender, receiver = body["sender"], body["receiver"]
            return FdrFlowHeader(
                fdr=body["fdr"],
                revision=body["revision"],
                status=body["status"],
                psp_id=sender["pspId"],
                psp_name=sender.get("pspName"),
                ec=receiver["organizationId"],
                ec_name=receiver.get("organizationName"),
                flow_date=body["fdrDate"],
                regulation=body["regulation"],
                regulation_date=body["regulationDate"],
                bic=body.get("bicCodePouringBank"),
                total_count=body["totPayments"],
                total_amount=Decimal(body["sumPayments"]).quantize(_CENT),
                published=body.get("published"),
            )
        except (KeyError, TypeError, ArithmeticError, ValidationError) as exc:
            raise PagopaSchemaError(
                f"unexpected flow header: {exc}", operation="getSinglePublishedFlow"
            ) from exc

    def get_payments(
        self, *, ec: str, fdr: str, revision: int, psp: str, page: int = 1, size: int = 1000
    ) -> FdrPaymentPage:
        """One page of a published revision's payments."""
        body = self._call(
            "getPaymentsFromPublishedFlow",
            f"/organizations/{ec}/fdrs/{fdr}/revisions/{revision}/psps/{psp}/payments",
            params={"page": page, "size": size},
            keys={"id_dominio": ec, "id_flusso": fdr, "psp": psp, "revision": revision, "page": page},
        )
        try:
            return FdrPaymentPage(
                payments=[FdrPayment.model_validate(d) for d in body["data"]],
                page=body["metadata"]["pageNumber"],
                total_pages=body["metadata"]["totPage"],
            )
        except (KeyError, TypeError, ValidationError) as exc:
            raise PagopaSchemaError(
                f"unexpected payments page: {exc}", operation="getPaymentsFromPublishedFlow"
            ) from exc

    # --- the one call path -------------------------------------------------------------------------------

    def _call(
        self, operation: str, path: str, *, params: dict[str, Any] | None = None, keys: dict[str, Any]
    ) -> Any:
        """GET ``path``: journaled per attempt, retried on retriable faults, errors classified."""
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._attempt(operation, path, params=params, keys=keys | {"attempt": attempt})
            except PagopaError as exc:
                if not exc.retriable or attempt == self._attempts:
                    raise
                wait = delay if exc.retry_after is None else min(exc.retry_after, self._max_retry_after)
                log.info(
                    "fdr %s attempt %d failed (%s), again in %.1fs", operation, attempt, exc.reason, wait
                )
                time.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _attempt(
        self, operation: str, path: str, *, params: dict[str, Any] | None, keys: dict[str, Any]
    ) -> Any:
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            ex.request = f"GET {path}" + (f"?{httpx.QueryParams(params)}" if params else "")
            try:
                response = self._http.get(path, params=params)
            except httpx.TimeoutException as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except httpx.TransportError as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = response.status_code
            error = classify_response(response, operation=operation)
            if error is not None:
                ex.response = response.content
                if error.retriable:
                    ex.outcome = Outcome.FAIL
                    ex.fault_code, ex.error = error.code or f"HTTP_{response.status_code}", error.reason
                else:
                    ex.ko(fault_code=error.code or f"HTTP_{response.status_code}", error=error.reason)
                raise error
            try:
                return _json(response, operation)
            except PagopaError:
                ex.response = response.content
                raise
