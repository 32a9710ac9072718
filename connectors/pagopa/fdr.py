"""FdR REST for creditor institutions (``openapi/fdr_organization.json``): published flows, headers, payments.

One method per operation, all through the shared call path of ``connectors.pagopa.http`` (timed and
journaled, retriable faults retried honouring ``Retry-After``, errors classified once).
Amounts are read as Decimal straight from the JSON text, never through binary floats.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.pagopa.errors import PagopaSchemaError
from connectors.pagopa.http import SyncConnector

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


class FdrClient(SyncConnector):
    """FdR REST for one EC's subscription key; the httpx transport is injected (or a real one is built)."""

    component = "fdr"

    # --- operations ----------------------------------------------------------------------------------

    def list_flows(
        self, *, ec: str, published_gt: datetime | None = None, page: int = 1, size: int = 1000
    ) -> FdrFlowPage:
        """One page of the EC's published flows (latest revisions), oldest publication first."""
        params: dict[str, Any] = {"page": page, "size": size}
        if published_gt is not None:
            params["publishedGt"] = published_gt.astimezone(UTC).isoformat().replace("+00:00", "Z")
        body = self._call(
            "getAllPublishedFlows", "GET", f"/organizations/{ec}/fdrs", params=params, keys={"id_dominio": ec}
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
            "GET",
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
            "GET",
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
        except (KeyError, TypeError, ArithmeticError, ValidationError) as exc:  # Arithmetic: pay of 1e30
            raise PagopaSchemaError(
                f"unexpected payments page: {exc}", operation="getPaymentsFromPublishedFlow"
            ) from exc
