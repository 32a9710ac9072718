"""In-memory state of the sandbox: configuration, positions, receipts, the transfer ledger, exchanges.

The shared contract of sandbox/CONTRACT.md; sandbox-core owns it. Only data lives here: the rules that
change it are in gpd.py (positions), psp.py (payments, receipts) and control.py (configuration).
Every mutation happens under ``SandboxState.lock``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sandbox.faults import FaultConfig


@dataclass
class StationConfig:
    """A broker's station as the Node knows it."""

    id_station: str
    id_broker: str
    password: str
    url: str | None = None
    legacy_url: str | None = None
    version: int = 2
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class CreditorConfig:
    """A creditor EC as the Node knows it; ``gpd_hosted`` = GPD answers for it (asynchronous mode)."""

    fiscal_code: str
    name: str
    id_station: str
    id_broker: str
    iban: str
    treasury_format: str = "opi"
    treasury_dir: str | None = None
    gpd_hosted: bool = False


@dataclass
class PspConfig:
    """A payment service provider that pays and reports; ``password`` None accepts any on nodeForPsp."""

    psp_id: str
    name: str
    bic: str
    channel: str
    broker_id: str | None = None
    password: str | None = None


@dataclass
class PaidTransfer:
    """One transfer of one paid notice, as the PSP will report it."""

    ec_fiscal_code: str
    iuv: str
    iur: str
    transfer_index: int
    amount: Decimal
    outcome: int
    pay_date: date
    psp_id: str
    receipt_id: str | None
    settled: bool = False


@dataclass
class Exchange:
    """One message received ("in") or sent ("out") by the sandbox."""

    at: datetime
    direction: str
    endpoint: str
    operation: str
    status: str
    request: str | None = None
    response: str | None = None
    duration_ms: float | None = None


@dataclass
class PositionTransfer:
    """A transfer (voce) of a payment option held at GPD/ACA; amounts in euro cents as on the wire."""

    id_transfer: int
    amount_cents: int
    organization_fiscal_code: str
    remittance_information: str
    category: str
    iban: str | None = None
    postal_iban: str | None = None
    stamp: dict[str, str] | None = None
    company_name: str | None = None
    metadata: list[dict[str, str]] = field(default_factory=list)
    reported: bool = False


@dataclass
class PaymentOption:
    """One payable notice (IUV/NAV) of a position."""

    iuv: str
    nav: str
    amount_cents: int
    description: str
    is_partial_payment: bool
    due_date: datetime
    transfers: list[PositionTransfer]
    retention_date: datetime | None = None
    metadata: list[dict[str, str]] = field(default_factory=list)
    paid_at: datetime | None = None
    receipt_id: str | None = None
    psp_company: str | None = None
    reported_at: datetime | None = None
    flow_id: str | None = None


@dataclass
class Position:
    """A debt position held at GPD (``source="gpd"``) or created through ACA (``source="aca"``).

    ``stored_status`` is DRAFT, PUBLISHED or INVALID; the status seen by clients (VALID, EXPIRED,
    PARTIALLY_PAID, PAID, REPORTED) is computed on read by ``sandbox.gpd.position_status``.
    """

    organization_fiscal_code: str
    iupd: str
    source: str
    stored_status: str
    debtor: dict[str, str]
    company_name: str
    options: list[PaymentOption]
    office_name: str | None = None
    validity_date: datetime | None = None
    switch_to_expired: bool = False
    pay_stand_in: bool = True
    inserted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    published_at: datetime | None = None
    last_updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class ReceiptTransfer:
    """A transfer as written in a receipt."""

    id_transfer: int
    amount: Decimal
    fiscal_code_pa: str
    remittance_information: str
    transfer_category: str
    iban: str | None = None
    stamp: bool = False
    company_name: str | None = None


@dataclass
class ReceiptDelivery:
    """Delivery of one receipt to one EC's station: pending, delivered, rejected, or not_sent."""

    ec_fiscal_code: str
    id_station: str | None
    status: str = "pending"
    attempts: int = 0
    last_fault: str | None = None
    last_attempt_at: datetime | None = None


@dataclass
class PaymentData:
    """What the Node learned about a notice from paGetPayment(V2) or from GPD: enough to write a receipt."""

    ec_fiscal_code: str
    nav: str
    iuv: str
    amount: Decimal
    description: str
    company_name: str
    debtor: dict[str, str]
    transfers: list[ReceiptTransfer]
    due_date: date | None = None
    office_name: str | None = None
    source: str = "station"


@dataclass
class PaymentToken:
    """An activated payment attempt (paymentToken, which becomes the receiptId)."""

    token: str
    ec_fiscal_code: str
    nav: str
    created_at: datetime
    expires_at: datetime
    psp_id: str
    channel: str
    data: PaymentData
    standin: bool = False
    closed: bool = False


@dataclass
class Receipt:
    """A receipt the Node issued; ``xml`` is the paSendRTV2Request (or paSendRTReq) element, UTF-8."""

    receipt_id: str
    ec_fiscal_code: str
    iuv: str
    nav: str
    iur: str
    amount: Decimal
    transfers: list[ReceiptTransfer]
    xml: bytes
    version: int
    standin: bool
    psp_id: str
    channel: str
    payment_date_time: datetime
    description: str
    company_name: str
    debtor: dict[str, str]
    outcome: str = "OK"
    office_name: str | None = None
    fee: Decimal | None = None
    pay_date: date | None = None
    payment_note: str | None = None
    deliveries: dict[str, ReceiptDelivery] = field(default_factory=dict)


@dataclass
class NodeSettings:
    """Tunable behaviour of the Node (timeouts in seconds); the defaults are pagoPA's."""

    verify_timeout: float = 7.0
    get_payment_timeout: float = 7.0
    send_rt_timeout: float = 15.0
    send_rt_attempts: int = 3
    send_rt_backoff: float = 1.0
    token_expiry_seconds: float = 1800.0
    standin_on_timeout: bool = False
    max_exchanges: int = 20_000
    max_payload_chars: int = 64_000


@dataclass
class SandboxState:
    """Everything the sandbox remembers; guard mutations with ``lock``."""

    seed: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    rng: random.Random = field(init=False)
    stations: dict[str, StationConfig] = field(default_factory=dict)
    creditors: dict[str, CreditorConfig] = field(default_factory=dict)
    subscription_keys: set[str] = field(default_factory=set)
    psps: list[PspConfig] = field(default_factory=list)
    # (organization fiscal code, iupd) -> Position; iuv_index maps (fc, iuv) to the same key
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    iuv_index: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    receipts: dict[str, Receipt] = field(default_factory=dict)
    transfers: list[PaidTransfer] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    faults: FaultConfig = field(default_factory=FaultConfig)
    node: NodeSettings = field(default_factory=NodeSettings)
    tokens: dict[str, PaymentToken] = field(default_factory=dict)
    # (ec, nav) -> the last PaymentData seen, so a forced second payment needs no station
    payment_data: dict[tuple[str, str], PaymentData] = field(default_factory=dict)
    iurs: set[str] = field(default_factory=set)
    reporting: Any = None
    legacy: Any = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - reproducible ids, not secrets

    def record(
        self,
        *,
        direction: str,
        endpoint: str,
        operation: str,
        status: str,
        request: str | None = None,
        response: str | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """Remember one exchange (payloads cut to ``node.max_payload_chars``; oldest dropped past the cap)."""
        cap = self.node.max_payload_chars
        if request is not None and len(request) > cap:
            request = request[:cap]
        if response is not None and len(response) > cap:
            response = response[:cap]
        with self.lock:
            self.exchanges.append(
                Exchange(
                    datetime.now(UTC), direction, endpoint, operation, status, request, response, duration_ms
                )
            )
            overflow = len(self.exchanges) - self.node.max_exchanges
            if overflow > 0:
                del self.exchanges[:overflow]

    def next_hex(self, bits: int = 128) -> str:
        """A seeded random hex id (reproducible for a given seed and call order)."""
        with self.lock:
            return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def reset(self) -> None:
        """Forget all data (configuration, faults and Node settings included) and reseed."""
        with self.lock:
            self.stations.clear()
            self.creditors.clear()
            self.subscription_keys.clear()
            self.psps.clear()
            self.positions.clear()
            self.iuv_index.clear()
            self.receipts.clear()
            self.transfers.clear()
            self.exchanges.clear()
            self.tokens.clear()
            self.payment_data.clear()
            self.iurs.clear()
            self.faults = FaultConfig()
            self.node = NodeSettings()
            self.reporting = None
            self.legacy = None
            self.rng = random.Random(self.seed)  # noqa: S311 - reproducible ids, not secrets


def get_state(request: Any) -> SandboxState:
    """The state of the running app (``app.state.sandbox``)."""
    return request.app.state.sandbox
