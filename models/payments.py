"""Payment attempts, receipts (RT) and the per-transfer collections (riscossioni)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, money_field, ts_field


class AttemptKind(StrEnum):
    """How a payment attempt started."""

    NODE = "NODE"
    CHECKOUT = "CHECKOUT"
    RPT = "RPT"


class AttemptState(StrEnum):
    """Where a payment attempt stands; RPT_* states track the legacy model."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"
    RPT_ATTIVATA = "RPT_ATTIVATA"
    RPT_ACCETTATA_NODO = "RPT_ACCETTATA_NODO"
    RPT_RIFIUTATA_NODO = "RPT_RIFIUTATA_NODO"
    RPT_ERRORE_INVIO_A_NODO = "RPT_ERRORE_INVIO_A_NODO"
    RT_ACCETTATA_PA = "RT_ACCETTATA_PA"
    RPT_SCADUTA = "RPT_SCADUTA"


class PaymentAttempt(SQLModel, table=True):
    """One attempt to pay a notice (paGetPayment, a Checkout cart item or an RPT)."""

    __tablename__ = "payment_attempt"
    __table_args__ = (
        Index("ix_attempt_notice", "id_dominio", "iuv"),
        Index("ix_attempt_state_expiry", "state", "expires_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = enum_field(AttemptKind, default=AttemptKind.NODE)
    state: str = enum_field(AttemptState, default=AttemptState.PENDING)
    id_dominio: str = Field(max_length=11)
    iuv: str = Field(max_length=35)
    nav: str | None = Field(default=None, max_length=18)
    position_id: int | None = Field(default=None, foreign_key="position.id", index=True)
    amount: Decimal = money_field()
    ccp: str | None = Field(default=None, max_length=35)
    session_id: str | None = Field(default=None, max_length=100, index=True)
    cart_id: str | None = Field(default=None, max_length=100, index=True)
    psp_id: str | None = Field(default=None, max_length=35)
    payment_note: str | None = Field(default=None, max_length=210)
    redirect_url: str | None = Field(default=None, max_length=500)
    recovery_attempts: int = Field(default=0)
    next_recovery_at: datetime | None = ts_field()
    recovery_claimed_until: datetime | None = ts_field()  # a receipts run is asking pagoPA for it until then
    last_error: str | None = Field(default=None, max_length=500)
    requested_at: datetime = created_field()
    expires_at: datetime | None = ts_field()
    completed_at: datetime | None = ts_field()


class ReceiptSource(StrEnum):
    """How a receipt reached us."""

    PUSH = "PUSH"
    PULL = "PULL"
    RT = "RT"
    REPORTING = "REPORTING"


class ReceiptState(StrEnum):
    """What we did with a receipt."""

    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    REJECTED = "REJECTED"


class Receipt(SQLModel, table=True):
    """A receipt (RT) of a paid notice, as pagoPA sent it."""

    __tablename__ = "receipt"
    __table_args__ = (
        UniqueConstraint("id_dominio", "receipt_id", name="uq_receipt"),
        Index("ix_receipt_notice", "id_dominio", "iuv"),
    )
    id: int | None = Field(default=None, primary_key=True)
    receipt_id: str = Field(max_length=35)
    id_dominio: str = Field(max_length=11)
    iuv: str = Field(max_length=35)
    nav: str | None = Field(default=None, max_length=18)
    ccp: str | None = Field(default=None, max_length=35)
    position_id: int | None = Field(default=None, foreign_key="position.id", index=True)
    attempt_id: int | None = Field(default=None, foreign_key="payment_attempt.id")
    outcome: str = Field(default="OK", max_length=2)
    state: str = enum_field(ReceiptState, default=ReceiptState.ACCEPTED)
    source: str = enum_field(ReceiptSource, default=ReceiptSource.PUSH)
    amount: Decimal = money_field()
    fee: Decimal | None = money_field(nullable=True, default=None)
    psp_id: str | None = Field(default=None, max_length=35)
    psp_name: str | None = Field(default=None, max_length=140)
    channel_id: str | None = Field(default=None, max_length=50)
    payment_method: str | None = Field(default=None, max_length=35)
    payer_id: str | None = Field(default=None, max_length=35)
    payer_name: str | None = Field(default=None, max_length=140)
    debtor_id: str | None = Field(default=None, max_length=35)
    standin: bool = Field(default=False)
    payment_at: datetime | None = ts_field()
    application_date: datetime | None = ts_field()
    transfer_date: datetime | None = ts_field()
    payload: str | None = Field(default=None, sa_type=Text)
    payload_format: str | None = Field(default=None, max_length=8)
    received_at: datetime = created_field()


class CollectionState(StrEnum):
    """A collection is RISCOSSA when paid and INCASSATA once the money is on the treasury account."""

    RISCOSSA = "RISCOSSA"
    INCASSATA = "INCASSATA"


class Collection(SQLModel, table=True):
    """One transfer of a payment (riscossione): what one voce collected, by IUV, IUR and transfer index."""

    __tablename__ = "collection"
    __table_args__ = (
        # A receipt-born collection is identified by its receipt and transfer; the IUR arrives with the flow.
        UniqueConstraint("receipt_pk", "transfer_index", name="uq_collection_receipt"),
        UniqueConstraint("id_dominio", "iuv", "iur", "transfer_index", name="uq_collection"),
        # no index on state (migration 0009): cashing a collection then touches fewer indexes
    )
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(max_length=11)
    iuv: str = Field(max_length=35)
    iur: str | None = Field(default=None, max_length=35)
    transfer_index: int
    receipt_pk: int | None = Field(default=None, foreign_key="receipt.id")  # uq_collection_receipt serves it
    position_id: int | None = Field(default=None, foreign_key="position.id", index=True)
    item_id: int | None = Field(default=None, foreign_key="position_item.id")
    amount: Decimal = money_field()
    iban: str | None = Field(default=None, max_length=34)
    remittance: str | None = Field(default=None, max_length=140)
    transfer_category: str | None = Field(default=None, max_length=140)
    accounting_code: str | None = Field(default=None, max_length=140)
    without_receipt: bool = Field(default=False)
    state: str = enum_field(CollectionState, default=CollectionState.RISCOSSA)
    paid_at: datetime | None = ts_field()
    cashed_at: datetime | None = ts_field()
    # the treasury movement that cashed it: neither indexed nor a foreign key (migration 0009), so cashing a
    # collection rewrites no index entry and checks no reference; see store.reconciliation.cashed_by
    movement_id: int | None = Field(default=None)
    flow_line_id: int | None = Field(default=None, index=True)  # no FK: reporting_line points back here
    details: Any = json_field()
