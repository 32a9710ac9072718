"""Where the pagoPA services are and how the platform talks to them (PAGOFLOW_PAGOPA_* settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PagopaEndpoints(BaseSettings):
    """Base URLs of the pagoPA services, timeouts and paging; defaults point at a local sandbox."""

    model_config = SettingsConfigDict(env_prefix="PAGOFLOW_PAGOPA_", env_file=".env", extra="ignore")

    fdr_url: str = Field(
        default="http://127.0.0.1:8090/fdr-org/service/v1",
        description="Base URL of FdR REST for ECs (fdr_organization.json server URL).",
    )
    nodo_url: str = Field(
        default="http://127.0.0.1:8090/nodo/nodoPerPa",
        description="Endpoint of the Node SOAP service for ECs (nodeForPa.wsdl).",
    )
    gpd_url: str = Field(
        default="http://127.0.0.1:8090/gpd/debt-positions-service/v1",
        description="Base URL of GPD debt positions (gpd.json server URL).",
    )
    aca_url: str = Field(
        default="http://127.0.0.1:8090/aca/v1",
        description="Base URL of ACA (paCreatePosition.json server URL).",
    )
    bizevents_url: str = Field(
        default="http://127.0.0.1:8090/bizevents/service/v1",
        description="Base URL of Biz-Events receipts (biz_events.json server URL).",
    )
    gpd_receipts_url: str = Field(
        default="http://127.0.0.1:8090/gpd/payments-receipts-service/v1",
        description="Base URL of GPD receipts (gpd_payments.json server URL).",
    )
    checkout_url: str = Field(
        default="http://127.0.0.1:8090/checkout/ec/v1",
        description="Base URL of Checkout carts (checkout_v1.json server URL).",
    )
    subscription_key_ref: str | None = Field(
        default="env:PAGOFLOW_GPD_SUBSCRIPTION_KEY",
        description="Secret reference of the Ocp-Apim-Subscription-Key used when a station names none.",
    )
    publish_concurrency: int = Field(default=8, ge=1, le=64, description="Parallel GPD/ACA calls per batch.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one HTTP/SOAP call.")
    fdr_page_size: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description="Page size of FdR listings and payment pages (pagoPA allows 1000).",
    )
    call_attempts: int = Field(default=3, ge=1, description="Attempts of one call on a retriable fault.")
    retry_backoff_seconds: float = Field(
        default=1.0, ge=0, description="First wait between attempts of a call; doubles each time."
    )
    max_retry_after_seconds: float = Field(
        default=30.0, ge=0, description="Longest Retry-After (429/503) honoured inside one call."
    )
    task_retries: int = Field(
        default=2, ge=0, description="Prefect retries of a task after a retriable fault."
    )
    task_retry_delay_seconds: float = Field(
        default=30.0, ge=0, description="First delay between task retries; grows exponentially."
    )
    max_flows_per_run: int = Field(
        default=150, ge=1, description="Flows downloaded per run (keeps a run under ~200 task runs)."
    )


@lru_cache(maxsize=1)
def get_endpoints() -> PagopaEndpoints:
    """The process-wide pagoPA endpoints (cached; tests clear it with get_endpoints.cache_clear())."""
    return PagopaEndpoints()
