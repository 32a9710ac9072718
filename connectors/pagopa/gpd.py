"""GPD debt positions (``openapi/gpd.json``) and ACA ``paCreatePosition`` (``openapi/paCreatePosition.json``).

``GpdClient`` has one method per GPD operation (create, update, publish, invalidate, get, delete) and
``AcaClient`` the single ACA one; both go through the async call path of ``connectors.pagopa.http``, which
times and journals every attempt (component ``gpd``/``aca``, keys id_dominio, iuv, nav, iupd), retries
retriable faults honouring ``Retry-After`` and classifies errors once (a refusal such as 400, 409 or 422 is
``PagopaBusinessError`` with ``status``, the ProblemJson ``title`` as its code). Messages are pydantic
models; amounts are integer euro cents, as GPD and ACA want them. The clients are async
(``httpx.AsyncClient``): a publisher runs a batch's calls on one event loop, with a few worker coroutines
each holding its own client (one keep-alive connection), as the bare client that measures the sandbox's
capacity does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.journal import EventJournal
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaSchemaError
from connectors.pagopa.http import AsyncConnector, client_settings
from rules.publication import Candidate, cents, due_instant
from rules.station import FAR_DUE_DATE, remittance_for

_COUNTRY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


def _aware(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # GPD reads and writes dates without an offset as UTC
    return value


# --- messages sent ---------------------------------------------------------------------------------------


class GpdStamp(_Model):
    """A digital revenue stamp credited by a transfer."""

    hash_document: str = Field(serialization_alias="hashDocument", max_length=72)
    stamp_type: str = Field(serialization_alias="stampType", min_length=2, max_length=2)
    provincial_residence: str = Field(serialization_alias="provincialResidence", pattern=r"^[A-Z]{2}$")


class GpdTransfer(_Model):
    """One transfer (voce) of a payment option: IBAN or stamp, beneficiary EC, remittance, taxonomy."""

    id_transfer: str = Field(serialization_alias="idTransfer", pattern=r"^[1-5]$")
    amount: int = Field(ge=1)
    organization_fiscal_code: str = Field(
        serialization_alias="organizationFiscalCode", pattern=r"^[0-9]{11}$"
    )
    remittance_information: str = Field(serialization_alias="remittanceInformation", max_length=140)
    category: str
    iban: str | None = Field(default=None, max_length=35)
    postal_iban: str | None = Field(default=None, serialization_alias="postalIban", max_length=35)
    stamp: GpdStamp | None = None
    company_name: str | None = Field(default=None, serialization_alias="companyName", max_length=140)
    transfer_metadata: list[dict[str, str]] = Field(
        default_factory=list, serialization_alias="transferMetadata"
    )


class GpdPaymentOption(_Model):
    """The payment option of a position: one IUV/NAV, amount in cents, due date, 1–5 transfers."""

    iuv: str
    nav: str | None = None
    amount: int = Field(ge=1)
    description: str = Field(max_length=140)
    is_partial_payment: bool = Field(default=False, serialization_alias="isPartialPayment")
    due_date: datetime = Field(serialization_alias="dueDate")
    transfer: list[GpdTransfer] = Field(min_length=1, max_length=5)
    payment_option_metadata: list[dict[str, str]] = Field(
        default_factory=list, serialization_alias="paymentOptionMetadata"
    )


class GpdDebtPosition(_Model):
    """PaymentPositionModel: what create and update send."""

    iupd: str
    type: str = Field(pattern=r"^[FG]$")
    fiscal_code: str = Field(serialization_alias="fiscalCode")
    full_name: str = Field(serialization_alias="fullName")
    street_name: str | None = Field(default=None, serialization_alias="streetName")
    civic_number: str | None = Field(default=None, serialization_alias="civicNumber")
    postal_code: str | None = Field(default=None, serialization_alias="postalCode")
    city: str | None = None
    province: str | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    email: str | None = None
    phone: str | None = None
    switch_to_expired: bool = Field(serialization_alias="switchToExpired")
    pay_stand_in: bool = Field(default=True, serialization_alias="payStandIn")
    company_name: str = Field(serialization_alias="companyName", max_length=140)
    office_name: str | None = Field(default=None, serialization_alias="officeName", max_length=140)
    payment_option: list[GpdPaymentOption] = Field(serialization_alias="paymentOption", min_length=1)

    def to_json(self) -> bytes:
        """The request body."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def content_key(self) -> tuple[Any, ...]:
        """What a GET of the stored copy must show for it to hold this message (see GpdPositionState)."""
        return (self.company_name, tuple(sorted(_option_key(o) for o in self.payment_option)))


class AcaPositionRequest(_Model):
    """NewDebtPositionRequest of ``paCreatePosition``: amount 0 invalidates."""

    pa_fiscal_code: str = Field(serialization_alias="paFiscalCode", pattern=r"^[0-9]{11}$")
    entity_type: str = Field(serialization_alias="entityType", pattern=r"^[FG]$")
    entity_fiscal_code: str = Field(serialization_alias="entityFiscalCode", min_length=2)
    entity_full_name: str = Field(serialization_alias="entityFullName", min_length=1, max_length=255)
    iuv: str
    nav: str | None = None
    amount: int = Field(ge=0, le=99_999_999_999)
    description: str = Field(min_length=1, max_length=255)
    expiration_date: datetime = Field(serialization_alias="expirationDate")
    iban: str | None = Field(default=None, min_length=27, max_length=27)
    postal_iban: str | None = Field(
        default=None, serialization_alias="postalIban", min_length=27, max_length=27
    )
    switch_to_expired: bool = Field(default=False, serialization_alias="switchToExpired")
    pay_stand_in: bool = Field(default=True, serialization_alias="payStandIn")

    def to_json(self) -> bytes:
        """The request body."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


# --- messages received -----------------------------------------------------------------------------------


class GpdTransferState(_Model):
    """A transfer as GPD holds it."""

    id_transfer: str = Field(alias="idTransfer")
    amount: int
    organization_fiscal_code: str | None = Field(default=None, alias="organizationFiscalCode")
    remittance_information: str | None = Field(default=None, alias="remittanceInformation")
    category: str | None = None
    iban: str | None = None
    postal_iban: str | None = Field(default=None, alias="postalIban")
    stamp: dict[str, Any] | None = None


class GpdOptionState(_Model):
    """A payment option as GPD holds it."""

    iuv: str
    nav: str | None = None
    amount: int
    description: str | None = None
    due_date: datetime = Field(alias="dueDate")
    transfer: list[GpdTransferState] = Field(default_factory=list)

    _aware = field_validator("due_date", mode="before")(_aware)


class GpdPositionState(_Model):
    """A position as GPD answers it (create, update, publish, invalidate, get)."""

    iupd: str
    status: str
    company_name: str | None = Field(default=None, alias="companyName")
    payment_option: list[GpdOptionState] = Field(default_factory=list, alias="paymentOption")

    @property
    def iuvs(self) -> frozenset[str]:
        """The IUVs the copy holds (GPD keeps them taken even once INVALID)."""
        return frozenset(o.iuv for o in self.payment_option)

    def content_key(self) -> tuple[Any, ...]:
        """Comparable with ``GpdDebtPosition.content_key`` (GET does not return the debtor: not compared)."""
        return (self.company_name, tuple(sorted(_option_key(o) for o in self.payment_option)))


class AcaPositionState(_Model):
    """DebtPositionResponse of ``paCreatePosition``."""

    iuv: str
    nav: str | None = None
    amount: int | None = None
    status: str | None = None


def _option_key(option: GpdPaymentOption | GpdOptionState) -> tuple[Any, ...]:
    transfers = tuple(
        sorted(
            (
                int(t.id_transfer),
                t.amount,
                t.organization_fiscal_code,
                t.remittance_information,
                t.category,
                t.iban,
                t.postal_iban,
                bool(t.stamp),
            )
            for t in option.transfer
        )
    )
    return (
        option.iuv,
        option.nav,
        option.amount,
        option.description,
        option.due_date.astimezone(UTC).replace(microsecond=0),
        transfers,
    )


# --- building the messages from a position ---------------------------------------------------------------


def _country(value: str | None) -> str | None:
    code = (value or "").strip().upper()
    return code if len(code) == 2 and set(code) <= _COUNTRY else None


def gpd_position_from(candidate: Candidate, *, iupd: str) -> GpdDebtPosition:
    """The GPD message of a position: one payment option, one transfer per voce, amounts in cents."""
    c = candidate
    if not c.iuv:
        raise ValueError("a position without IUV cannot be published")
    transfers = []
    for item in c.items:
        stamp = None
        if item.kind == "STAMP":
            stamp = GpdStamp(
                hash_document=item.stamp_hash or "",
                stamp_type=item.stamp_type or "",
                provincial_residence=(item.stamp_province or "").upper(),
            )
        transfers.append(
            GpdTransfer(
                id_transfer=str(item.index),
                amount=cents(item.amount),
                organization_fiscal_code=item.id_dominio,
                remittance_information=remittance_for(
                    iuv=c.iuv, amount=item.amount, description=item.description
                ),
                category=c.category,
                iban=None if stamp else item.iban,
                postal_iban=item.iban if item.postal and not stamp else None,
                stamp=stamp,
                company_name=item.company_name[:140] if item.company_name else None,
            )
        )
    option = GpdPaymentOption(
        iuv=c.iuv,
        nav=c.nav,
        amount=cents(c.amount),
        description=c.causale[:140],
        due_date=due_instant(c.due_date or FAR_DUE_DATE).astimezone(UTC),
        transfer=transfers,
    )
    return GpdDebtPosition(
        iupd=iupd,
        type=c.debtor_type if c.debtor_type in ("F", "G") else "F",
        fiscal_code=c.debtor_id,
        full_name=c.debtor_name,
        street_name=c.debtor_address,
        civic_number=c.debtor_civic,
        postal_code=c.debtor_cap,
        city=c.debtor_locality,
        province=c.debtor_province,
        country=_country(c.debtor_nation),
        email=c.debtor_email,
        phone=c.debtor_phone,
        # past its due date a notice is not payable (our station answers PAA_PAGAMENTO_SCADUTO): GPD likewise
        switch_to_expired=c.due_date is not None,
        company_name=c.company_name[:140],
        office_name=c.office_name[:140] if c.office_name else None,
        payment_option=[option],
    )


def aca_request_from(candidate: Candidate, *, invalidate: bool = False) -> AcaPositionRequest:
    """The ``paCreatePosition`` message of a position (single IBAN, see ``rules.publication.aca_problem``)."""
    c = candidate
    if not c.iuv:
        raise ValueError("a position without IUV cannot be published")
    iban = c.items[0].iban if c.items and not invalidate else None
    postal = bool(c.items) and all(i.postal for i in c.items)
    return AcaPositionRequest(
        pa_fiscal_code=c.id_dominio,
        entity_type=c.debtor_type if c.debtor_type in ("F", "G") else "F",
        entity_fiscal_code=c.debtor_id,
        entity_full_name=c.debtor_name[:255],
        iuv=c.iuv,
        nav=c.nav,
        amount=0 if invalidate else cents(c.amount),
        description=c.causale[:255],
        expiration_date=due_instant(c.due_date or FAR_DUE_DATE).astimezone(UTC),
        iban=iban,
        postal_iban=iban if postal and iban else None,
        switch_to_expired=c.due_date is not None,
    )


# --- the clients -----------------------------------------------------------------------------------------


class _RestConnector(AsyncConnector):
    """What the GPD and ACA clients share on top of the async call path of ``connectors.pagopa.http``."""

    content_type = "application/json"
    error_code_field = "title"  # ProblemJson

    @classmethod
    def from_endpoints(
        cls,
        *,
        base_url: str | None = None,
        subscription_key: SecretStr | None,
        transport: httpx.AsyncBaseTransport | None = None,
        journal: EventJournal | None = None,
        connections: int | None = None,
    ) -> Any:
        """A client configured by the PAGOFLOW_PAGOPA_* settings (``connections``: its pool size)."""
        return cls(
            base_url=base_url or cls._default_url(),
            subscription_key=subscription_key,
            transport=transport,
            journal=journal,
            connections=connections or get_endpoints().publish_concurrency,
            **client_settings(),
        )

    @staticmethod
    def _default_url() -> str:
        raise NotImplementedError


def _state(body: Any, operation: str) -> GpdPositionState:
    try:
        return GpdPositionState.model_validate(body)
    except ValidationError as exc:
        raise PagopaSchemaError(f"unexpected debt position: {exc}", operation=operation) from exc


def _keys(ec: str, iupd: str, iuv: str | None, nav: str | None) -> dict[str, Any]:
    return {"id_dominio": ec, "iupd": iupd, "iuv": iuv, "nav": nav}


def _publish(to_publish: bool) -> str:
    return f"?toPublish={'true' if to_publish else 'false'}"


class GpdClient(_RestConnector):
    """GPD debt positions for one subscription key; paths are relative to ``gpd_url``."""

    component = "gpd"

    @staticmethod
    def _default_url() -> str:
        return get_endpoints().gpd_url

    async def create(
        self, *, ec: str, position: GpdDebtPosition, to_publish: bool = True
    ) -> GpdPositionState:
        """Create a position (201); 409 when its IUPD or one of its IUVs exists for the EC."""
        option = position.payment_option[0]
        body = await self._call(
            "createPosition", "POST", f"/organizations/{ec}/debtpositions{_publish(to_publish)}",
            content=position.to_json(), keys=_keys(ec, position.iupd, option.iuv, option.nav),
        )  # fmt: skip
        return _state(body, "createPosition")

    async def update(
        self, *, ec: str, iupd: str, position: GpdDebtPosition, to_publish: bool = True
    ) -> GpdPositionState:
        """Replace a DRAFT/PUBLISHED/VALID position; 409 for any other status, 404 when unknown."""
        option = position.payment_option[0]
        body = await self._call(
            "updatePosition", "PUT", f"/organizations/{ec}/debtpositions/{iupd}{_publish(to_publish)}",
            content=position.to_json(), keys=_keys(ec, iupd, option.iuv, option.nav),
        )  # fmt: skip
        return _state(body, "updatePosition")

    async def publish(
        self, *, ec: str, iupd: str, iuv: str | None = None, nav: str | None = None
    ) -> GpdPositionState:
        """Publish a DRAFT position."""
        body = await self._call(
            "publishPosition", "POST", f"/organizations/{ec}/debtpositions/{iupd}/publish",
            keys=_keys(ec, iupd, iuv, nav),
        )  # fmt: skip
        return _state(body, "publishPosition")

    async def invalidate(
        self, *, ec: str, iupd: str, iuv: str | None = None, nav: str | None = None
    ) -> GpdPositionState:
        """Invalidate a PUBLISHED/VALID/EXPIRED position (terminal: its IUPD and IUVs stay taken)."""
        body = await self._call(
            "invalidatePosition", "POST", f"/organizations/{ec}/debtpositions/{iupd}/invalidate",
            keys=_keys(ec, iupd, iuv, nav),
        )  # fmt: skip
        return _state(body, "invalidatePosition")

    async def get(
        self, *, ec: str, iupd: str, iuv: str | None = None, nav: str | None = None
    ) -> GpdPositionState:
        """One position with its options and status; ``PagopaNotFoundError`` when unknown."""
        body = await self._call(
            "getOrganizationDebtPositionByIUPD", "GET", f"/organizations/{ec}/debtpositions/{iupd}",
            keys=_keys(ec, iupd, iuv, nav),
        )  # fmt: skip
        return _state(body, "getOrganizationDebtPositionByIUPD")

    async def delete(self, *, ec: str, iupd: str, iuv: str | None = None, nav: str | None = None) -> None:
        """Delete a DRAFT/PUBLISHED/VALID position, freeing its IUPD and IUVs."""
        await self._call(
            "deletePosition",
            "DELETE",
            f"/organizations/{ec}/debtpositions/{iupd}",
            keys=_keys(ec, iupd, iuv, nav),
        )


class AcaClient(_RestConnector):
    """ACA ``paCreatePosition``; paths are relative to ``aca_url``."""

    component = "aca"

    @staticmethod
    def _default_url() -> str:
        return get_endpoints().aca_url

    async def create_position(self, *, request: AcaPositionRequest) -> AcaPositionState:
        """Create, update (same IUV) or invalidate (amount 0) a single-IUV position."""
        keys = {"id_dominio": request.pa_fiscal_code, "iuv": request.iuv, "nav": request.nav,
                "amount": request.amount}  # fmt: skip
        body = await self._call(
            "newDebtPosition", "POST", "/paCreatePosition", content=request.to_json(), keys=keys
        )
        try:
            return AcaPositionState.model_validate(body)
        except ValidationError as exc:
            raise PagopaSchemaError(f"unexpected ACA answer: {exc}", operation="newDebtPosition") from exc
