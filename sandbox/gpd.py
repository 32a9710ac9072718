"""GPD debt positions (REST v1) and ACA paCreatePosition: the central archive the Node pays from.

Base paths are the path part of each spec's server URL: GPD ``/gpd/debt-positions-service/v1``
(``openapi/gpd.json``), ACA ``/aca/v1`` (``openapi/paCreatePosition.json``).

State machine (``position_status``): DRAFT --publish--> PUBLISHED (VALID once ``validityDate`` is
reached, at once without one) --payments--> PARTIALLY_PAID (some instalments) --> PAID --all options
reported--> REPORTED; PUBLISHED/VALID/EXPIRED --invalidate--> INVALID (terminal: the IUPD and its IUVs
stay taken); VALID --past the last due date with ``switchToExpired``--> EXPIRED. Only DRAFT, PUBLISHED
and VALID positions can be updated or deleted; only DRAFT can be published.
Dates without an offset are read as UTC; dates are written as UTC with ``Z`` (ACA's ``expirationDate``,
a ``local-date-time``, as UTC without offset).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response

from sandbox.openapi import ACA_SPEC, GPD_SPEC, base_path, parse_datetime, schema_errors
from sandbox.rest import ApiError, authorize, json_response, problem, query_bool, read_json
from sandbox.state import PaymentOption, Position, PositionTransfer, SandboxState, get_state

logger = logging.getLogger(__name__)

GPD_BASE = "/gpd/debt-positions-service/v1"
ACA_BASE = "/aca/v1"
UPDATABLE = frozenset({"DRAFT", "PUBLISHED", "VALID"})
INVALIDABLE = frozenset({"PUBLISHED", "VALID", "EXPIRED"})
PAID_STATES = frozenset({"PARTIALLY_PAID", "PAID", "REPORTED"})
IUV_RE = re.compile(r"[0-9A-Za-z]{1,35}")
NAV_RE = re.compile(r"[0-9]{18}")
FISCAL_CODE_RE = re.compile(r"[0-9]{11}")
MAX_CENTS = 99_999_999_999

gpd_router = APIRouter(prefix=GPD_BASE, tags=["GPD"])
aca_router = APIRouter(prefix=ACA_BASE, tags=["ACA"])


def now_utc() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """UTC ISO-8601 with ``Z`` (None stays None)."""
    if value is None:
        return None
    return _aware(value).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_iso(value: datetime) -> str:
    """UTC ISO-8601 without offset, for the spec fields typed ``local-date-time``."""
    return _aware(value).astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


def cents(value: Decimal) -> int:
    """Euro → integer cents."""
    return int((value * 100).to_integral_value())


def euro(value_cents: int) -> Decimal:
    """Integer cents → euro with two places."""
    return (Decimal(value_cents) / 100).quantize(Decimal("0.01"))


# --- state machine -------------------------------------------------------------------------------------


def position_status(position: Position, now: datetime | None = None) -> str:
    """The GPD status of ``position`` at ``now`` (computed: only DRAFT/PUBLISHED/INVALID are stored)."""
    now = now or now_utc()
    if position.stored_status in ("DRAFT", "INVALID"):
        return position.stored_status
    paid = [option for option in position.options if option.paid_at]
    if paid:
        partials = [option for option in position.options if option.is_partial_payment]
        complete = any(not option.is_partial_payment for option in paid) or (
            bool(partials) and all(option.paid_at for option in partials)
        )
        if not complete:
            return "PARTIALLY_PAID"
        return "REPORTED" if all(option.reported_at for option in paid) else "PAID"
    if position.switch_to_expired and position.options and now > max(o.due_date for o in position.options):
        return "EXPIRED"
    if position.validity_date and now < position.validity_date:
        return "PUBLISHED"
    return "VALID"


def option_status(option: PaymentOption) -> str:
    """PO_UNPAID, PO_PAID, PO_PARTIALLY_REPORTED or PO_REPORTED."""
    if not option.paid_at:
        return "PO_UNPAID"
    reported = [t.reported for t in option.transfers]
    if all(reported):
        return "PO_REPORTED"
    return "PO_PARTIALLY_REPORTED" if any(reported) else "PO_PAID"


def find_option(state: SandboxState, *, fiscal_code: str, iuv: str) -> tuple[Position, PaymentOption] | None:
    """The position and option holding (EC, IUV), or None. Call under ``state.lock``."""
    key = state.iuv_index.get((fiscal_code, iuv))
    if key is None:
        return None
    position = state.positions.get(key)
    if position is None:
        return None
    for option in position.options:
        if option.iuv == iuv:
            return position, option
    return None


def payability_fault(position: Position, option: PaymentOption, now: datetime | None = None) -> str | None:
    """The PAA_ fault GPD answers for paying ``option`` now, or None when it can be paid."""
    status = position_status(position, now)
    if option.paid_at or status in ("PAID", "REPORTED"):
        return "PAA_PAGAMENTO_DUPLICATO"
    if status == "INVALID":
        return "PAA_PAGAMENTO_ANNULLATO"
    if status == "EXPIRED":
        return "PAA_PAGAMENTO_SCADUTO"
    if status in ("DRAFT", "PUBLISHED"):
        return "PAA_PAGAMENTO_SCONOSCIUTO"
    if status == "PARTIALLY_PAID" and not option.is_partial_payment:
        return "PAA_SEMANTICA"
    return None


def mark_paid(
    state: SandboxState, *, fiscal_code: str, iuv: str, receipt_id: str, psp_company: str, paid_at: datetime
) -> bool:
    """Record at GPD/ACA that (EC, IUV) was paid (first receipt wins); False when no copy exists."""
    with state.lock:
        found = find_option(state, fiscal_code=fiscal_code, iuv=iuv)
        if found is None:
            return False
        position, option = found
        if option.paid_at is None:
            option.paid_at = paid_at
            option.receipt_id = receipt_id
            option.psp_company = psp_company
            position.last_updated_at = paid_at
        return True


def mark_reported(
    state: SandboxState,
    *,
    fiscal_code: str,
    iuv: str,
    transfer_index: int,
    flow_id: str,
    reported_at: datetime | None = None,
) -> bool:
    """Record that a transfer of (EC, IUV) appeared in a reporting flow (for sandbox-reporting)."""
    reported_at = reported_at or now_utc()
    with state.lock:
        found = find_option(state, fiscal_code=fiscal_code, iuv=iuv)
        if found is None:
            return False
        position, option = found
        for transfer in option.transfers:
            if transfer.id_transfer == transfer_index:
                transfer.reported = True
        if option.paid_at and all(t.reported for t in option.transfers):
            option.reported_at = reported_at
        option.flow_id = flow_id
        position.last_updated_at = reported_at
        return True


# --- wire format ---------------------------------------------------------------------------------------


def _datetime_field(value: str | None) -> datetime | None:
    return _aware(parse_datetime(value)) if value else None


def parse_position(body: Any, *, fiscal_code: str, now: datetime, source: str = "gpd") -> Position:
    """A Position from a PaymentPositionModel body, or a 400 problem naming the offending field."""
    errors = schema_errors(GPD_SPEC, "PaymentPositionModel", body)
    if errors:
        raise problem(400, "Bad Request", "; ".join(errors[:10]))
    options_raw = body.get("paymentOption") or []
    if not options_raw:
        raise problem(400, "Bad Request", "paymentOption: at least one payment option is required")
    validity = _datetime_field(body.get("validityDate"))
    if validity is not None and validity < now:
        raise problem(400, "Bad Request", "validityDate: must not be in the past")
    options: list[PaymentOption] = []
    seen_iuv: set[str] = set()
    for i, raw in enumerate(options_raw):
        where = f"paymentOption[{i}]"
        iuv = raw["iuv"]
        # the Node must be able to write these into XSD-valid receipts (stText35, stNoticeNumber, stAmount)
        if not IUV_RE.fullmatch(iuv):
            raise problem(400, "Bad Request", f"{where}.iuv: 1 to 35 letters or digits")
        if raw.get("nav") and not NAV_RE.fullmatch(raw["nav"]):
            raise problem(400, "Bad Request", f"{where}.nav: 18 digits")
        if raw["amount"] > MAX_CENTS:
            raise problem(400, "Bad Request", f"{where}.amount: at most {MAX_CENTS}")
        if iuv in seen_iuv:
            raise problem(400, "Bad Request", f"{where}.iuv: duplicate IUV {iuv} in the position")
        seen_iuv.add(iuv)
        due = _aware(parse_datetime(raw["dueDate"]))
        if due < now:
            raise problem(400, "Bad Request", f"{where}.dueDate: must not be in the past")
        if validity is not None and due < validity:
            raise problem(400, "Bad Request", f"{where}.dueDate: must not precede validityDate")
        transfers_raw = raw.get("transfer") or []
        if not 1 <= len(transfers_raw) <= 5:
            raise problem(400, "Bad Request", f"{where}.transfer: between 1 and 5 transfers are required")
        transfers: list[PositionTransfer] = []
        ids: set[int] = set()
        for j, traw in enumerate(transfers_raw):
            twhere = f"{where}.transfer[{j}]"
            id_transfer = int(traw["idTransfer"])
            beneficiary = traw.get("organizationFiscalCode")
            if beneficiary and not FISCAL_CODE_RE.fullmatch(beneficiary):
                raise problem(400, "Bad Request", f"{twhere}.organizationFiscalCode: 11 digits")
            if id_transfer in ids:
                raise problem(400, "Bad Request", f"{twhere}.idTransfer: duplicate {id_transfer}")
            ids.add(id_transfer)
            iban, stamp = traw.get("iban"), traw.get("stamp")
            if bool(iban) == bool(stamp):
                raise problem(400, "Bad Request", f"{twhere}: exactly one of iban and stamp is required")
            if stamp and traw.get("postalIban"):
                raise problem(400, "Bad Request", f"{twhere}.postalIban: not allowed with a stamp")
            transfers.append(
                PositionTransfer(
                    id_transfer=id_transfer,
                    amount_cents=traw["amount"],
                    organization_fiscal_code=traw.get("organizationFiscalCode") or fiscal_code,
                    remittance_information=traw["remittanceInformation"],
                    category=traw["category"],
                    iban=iban,
                    postal_iban=traw.get("postalIban") or None,
                    stamp=stamp,
                    company_name=traw.get("companyName"),
                    metadata=list(traw.get("transferMetadata") or []),
                )
            )
        total = sum(t.amount_cents for t in transfers)
        if total != raw["amount"]:
            raise problem(
                400,
                "Bad Request",
                f"{where}.amount: {raw['amount']} differs from the sum of its transfers {total}",
            )
        options.append(
            PaymentOption(
                iuv=iuv,
                nav=raw.get("nav") or f"3{iuv}",
                amount_cents=raw["amount"],
                description=raw["description"],
                is_partial_payment=raw["isPartialPayment"],
                due_date=due,
                retention_date=_datetime_field(raw.get("retentionDate")),
                transfers=transfers,
                metadata=list(raw.get("paymentOptionMetadata") or []),
            )
        )
    debtor = {
        name: body[name]
        for name in (
            "type",
            "fiscalCode",
            "fullName",
            "streetName",
            "civicNumber",
            "postalCode",
            "city",
            "province",
            "region",
            "country",
            "email",
            "phone",
        )
        if body.get(name)
    }
    return Position(
        organization_fiscal_code=fiscal_code,
        iupd=body["iupd"],
        source=source,
        stored_status="DRAFT",
        debtor=debtor,
        company_name=body["companyName"],
        office_name=body.get("officeName"),
        options=options,
        validity_date=validity,
        switch_to_expired=body["switchToExpired"],
        pay_stand_in=body.get("payStandIn", True) is not False,
        inserted_at=now,
        last_updated_at=now,
    )


def _transfer_model(transfer: PositionTransfer) -> dict[str, Any]:
    data: dict[str, Any] = {
        "idTransfer": str(transfer.id_transfer),
        "amount": transfer.amount_cents,
        "organizationFiscalCode": transfer.organization_fiscal_code,
        "remittanceInformation": transfer.remittance_information,
        "category": transfer.category,
        "transferMetadata": transfer.metadata,
    }
    for key, value in (
        ("iban", transfer.iban),
        ("postalIban", transfer.postal_iban),
        ("stamp", transfer.stamp),
        ("companyName", transfer.company_name),
    ):
        if value:
            data[key] = value
    return data


def position_model(position: Position, now: datetime | None = None) -> dict[str, Any]:
    """PaymentPositionModel (answer of create, update, publish, invalidate)."""
    data: dict[str, Any] = {
        "iupd": position.iupd,
        **position.debtor,
        "companyName": position.company_name,
        "switchToExpired": position.switch_to_expired,
        "payStandIn": position.pay_stand_in,
        "status": position_status(position, now),
        "paymentOption": [
            {
                "nav": option.nav,
                "iuv": option.iuv,
                "amount": option.amount_cents,
                "description": option.description,
                "isPartialPayment": option.is_partial_payment,
                "dueDate": iso(option.due_date),
                "fee": 0,
                "notificationFee": 0,
                "transfer": [_transfer_model(t) for t in option.transfers],
                "paymentOptionMetadata": option.metadata,
                **({"retentionDate": iso(option.retention_date)} if option.retention_date else {}),
            }
            for option in position.options
        ],
    }
    if position.office_name:
        data["officeName"] = position.office_name
    if position.validity_date:
        data["validityDate"] = iso(position.validity_date)
    paid = [o.paid_at for o in position.options if o.paid_at]
    if paid:
        data["paymentDate"] = iso(max(paid))
    return data


def position_response(position: Position, now: datetime | None = None) -> dict[str, Any]:
    """PaymentPositionModelBaseResponse (answer of GET)."""
    fc = position.organization_fiscal_code
    options = []
    for option in position.options:
        item: dict[str, Any] = {
            "nav": option.nav,
            "iuv": option.iuv,
            "organizationFiscalCode": fc,
            "amount": option.amount_cents,
            "description": option.description,
            "isPartialPayment": option.is_partial_payment,
            "dueDate": iso(option.due_date),
            "insertedDate": iso(position.inserted_at),
            "fee": 0,
            "notificationFee": 0,
            "status": option_status(option),
            "lastUpdatedDate": iso(position.last_updated_at),
            "paymentOptionMetadata": option.metadata,
            "transfer": [
                {
                    "organizationFiscalCode": t.organization_fiscal_code,
                    "idTransfer": str(t.id_transfer),
                    "amount": t.amount_cents,
                    "remittanceInformation": t.remittance_information,
                    "category": t.category,
                    "insertedDate": iso(position.inserted_at),
                    "status": "T_REPORTED" if t.reported else "T_UNREPORTED",
                    "lastUpdatedDate": iso(position.last_updated_at),
                    "transferMetadata": t.metadata,
                    **{
                        k: v
                        for k, v in (
                            ("iban", t.iban),
                            ("postalIban", t.postal_iban),
                            ("stamp", t.stamp),
                            ("companyName", t.company_name),
                        )
                        if v
                    },
                }
                for t in option.transfers
            ],
        }
        for key, value in (
            ("retentionDate", option.retention_date),
            ("paymentDate", option.paid_at),
            ("reportingDate", option.reported_at),
        ):
            if value:
                item[key] = iso(value)
        if option.paid_at:
            item.update(
                idReceipt=option.receipt_id, pspCompany=option.psp_company, paymentMethod="creditCard"
            )
        if option.flow_id:
            item["idFlowReporting"] = option.flow_id
        options.append(item)
    data: dict[str, Any] = {
        "iupd": position.iupd,
        "organizationFiscalCode": fc,
        "type": position.debtor.get("type", "F"),
        "companyName": position.company_name,
        "insertedDate": iso(position.inserted_at),
        "status": position_status(position, now),
        "lastUpdatedDate": iso(position.last_updated_at),
        "paymentOption": options,
    }
    if position.office_name:
        data["officeName"] = position.office_name
    for key, moment in (("publishDate", position.published_at), ("validityDate", position.validity_date)):
        if moment:
            data[key] = iso(moment)
    paid = [o.paid_at for o in position.options if o.paid_at]
    if paid:
        data["paymentDate"] = iso(max(paid))
    return data


# --- operations (plain functions over the state; the routes below only translate HTTP) -------------------


def _publish(position: Position, now: datetime) -> None:
    position.stored_status = "PUBLISHED"
    position.published_at = now
    position.last_updated_at = now


def _index(state: SandboxState, position: Position) -> None:
    key = (position.organization_fiscal_code, position.iupd)
    state.positions[key] = position
    for option in position.options:
        state.iuv_index[(position.organization_fiscal_code, option.iuv)] = key


def _unindex(state: SandboxState, position: Position) -> None:
    for option in position.options:
        state.iuv_index.pop((position.organization_fiscal_code, option.iuv), None)


def create_position(state: SandboxState, *, position: Position, to_publish: bool) -> Position:
    """Store a new position (409 when its IUPD or one of its IUVs is taken)."""
    fc = position.organization_fiscal_code
    with state.lock:
        if (fc, position.iupd) in state.positions:
            raise problem(409, "Conflict", f"debt position {position.iupd} already exists for {fc}")
        for option in position.options:
            if (fc, option.iuv) in state.iuv_index:
                raise problem(409, "Conflict", f"IUV {option.iuv} already exists for {fc}")
        if to_publish:
            _publish(position, position.inserted_at)
        _index(state, position)
    return position


def get_position(state: SandboxState, *, fiscal_code: str, iupd: str) -> Position:
    """The stored position or a 404 problem."""
    with state.lock:
        position = state.positions.get((fiscal_code, iupd))
    if position is None:
        raise problem(404, "Not Found", f"no debt position {iupd} for {fiscal_code}")
    return position


def update_position(
    state: SandboxState, *, fiscal_code: str, iupd: str, new: Position, to_publish: bool, now: datetime
) -> Position:
    """Replace a DRAFT/PUBLISHED/VALID position (409 otherwise, or when a new IUV is taken)."""
    with state.lock:
        old = get_position(state, fiscal_code=fiscal_code, iupd=iupd)
        status = position_status(old, now)
        if status not in UPDATABLE:
            raise problem(409, "Conflict", f"debt position {iupd} is {status} and cannot be updated")
        for option in new.options:
            holder = state.iuv_index.get((fiscal_code, option.iuv))
            if holder is not None and holder != (fiscal_code, iupd):
                raise problem(409, "Conflict", f"IUV {option.iuv} already exists for {fiscal_code}")
        new.iupd = iupd
        new.source = old.source
        new.inserted_at = old.inserted_at
        new.last_updated_at = now
        if to_publish:
            _publish(new, now)
        _unindex(state, old)
        _index(state, new)
    return new


def delete_position(state: SandboxState, *, fiscal_code: str, iupd: str, now: datetime) -> None:
    """Delete a DRAFT/PUBLISHED/VALID position and free its IUVs."""
    with state.lock:
        position = get_position(state, fiscal_code=fiscal_code, iupd=iupd)
        status = position_status(position, now)
        if status not in UPDATABLE:
            raise problem(409, "Conflict", f"debt position {iupd} is {status} and cannot be deleted")
        _unindex(state, position)
        del state.positions[(fiscal_code, iupd)]


def publish_position(state: SandboxState, *, fiscal_code: str, iupd: str, now: datetime) -> Position:
    """DRAFT → PUBLISHED (VALID from its validity date)."""
    with state.lock:
        position = get_position(state, fiscal_code=fiscal_code, iupd=iupd)
        status = position_status(position, now)
        if status != "DRAFT":
            raise problem(409, "Conflict", f"debt position {iupd} is {status}, not in a publishable state")
        if any(option.due_date < now for option in position.options):
            raise problem(409, "Conflict", f"debt position {iupd} has a past due date")
        _publish(position, now)
    return position


def invalidate_position(state: SandboxState, *, fiscal_code: str, iupd: str, now: datetime) -> Position:
    """PUBLISHED/VALID/EXPIRED → INVALID (terminal)."""
    with state.lock:
        position = get_position(state, fiscal_code=fiscal_code, iupd=iupd)
        status = position_status(position, now)
        if status not in INVALIDABLE:
            raise problem(409, "Conflict", f"debt position {iupd} is {status}, not in an invalidable state")
        position.stored_status = "INVALID"
        position.last_updated_at = now
    return position


# --- GPD routes ----------------------------------------------------------------------------------------


@gpd_router.post("/organizations/{organizationfiscalcode}/debtpositions", operation_id="createPosition")
async def gpd_create(organizationfiscalcode: str, request: Request) -> Response:
    """Create a debt position (``?toPublish=true`` publishes it at once)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    to_publish = query_bool(request, "toPublish", default=False)
    body = await read_json(request)
    now = now_utc()
    position = parse_position(body, fiscal_code=organizationfiscalcode, now=now)
    create_position(state, position=position, to_publish=to_publish)
    return json_response(position_model(position, now), status=201)


@gpd_router.get(
    "/organizations/{organizationfiscalcode}/debtpositions", operation_id="getOrganizationDebtPositions"
)
async def gpd_list(organizationfiscalcode: str, request: Request) -> Response:
    """Page through an EC's positions (``limit`` ≤ 50, ``page`` from 0, optional ``status``)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    try:
        limit = int(request.query_params.get("limit", "10"))
        page = int(request.query_params.get("page", "0"))
    except ValueError as exc:
        raise problem(400, "Bad Request", "limit and page must be integers") from exc
    if not 1 <= limit <= 50 or page < 0:
        raise problem(400, "Bad Request", "limit must be 1..50 and page ≥ 0")
    wanted = request.query_params.get("status")
    now = now_utc()
    with state.lock:
        items = [p for (fc, _), p in state.positions.items() if fc == organizationfiscalcode]
        if wanted:
            items = [p for p in items if position_status(p, now) == wanted]
        items.sort(key=lambda p: (p.inserted_at, p.iupd))
        found = len(items)
        chunk = [position_response(p, now) for p in items[page * limit : (page + 1) * limit]]
    return json_response(
        {
            "payment_position_list": chunk,
            "page_info": {
                "page": page,
                "limit": limit,
                "items_found": len(chunk),
                "total_pages": (found + limit - 1) // limit,
            },
        }
    )


@gpd_router.get(
    "/organizations/{organizationfiscalcode}/debtpositions/{iupd}",
    operation_id="getOrganizationDebtPositionByIUPD",
)
async def gpd_get(organizationfiscalcode: str, iupd: str, request: Request) -> Response:
    """One position with its options, transfers and payment state."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    with state.lock:
        position = get_position(state, fiscal_code=organizationfiscalcode, iupd=iupd)
        body = position_response(position)
    return json_response(body)


@gpd_router.put("/organizations/{organizationfiscalcode}/debtpositions/{iupd}", operation_id="updatePosition")
async def gpd_update(organizationfiscalcode: str, iupd: str, request: Request) -> Response:
    """Replace a position that has not been paid, invalidated or expired."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    to_publish = query_bool(request, "toPublish", default=False)
    body = await read_json(request)
    now = now_utc()
    get_position(state, fiscal_code=organizationfiscalcode, iupd=iupd)  # 404 before 400, as GPD does
    new = parse_position(body, fiscal_code=organizationfiscalcode, now=now)
    if new.iupd != iupd:
        raise problem(400, "Bad Request", "iupd: differs from the path")
    position = update_position(
        state, fiscal_code=organizationfiscalcode, iupd=iupd, new=new, to_publish=to_publish, now=now
    )
    return json_response(position_model(position, now))


@gpd_router.delete(
    "/organizations/{organizationfiscalcode}/debtpositions/{iupd}", operation_id="deletePosition"
)
async def gpd_delete(organizationfiscalcode: str, iupd: str, request: Request) -> Response:
    """Delete a position that has not been paid, invalidated or expired."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    delete_position(state, fiscal_code=organizationfiscalcode, iupd=iupd, now=now_utc())
    return json_response("OK")


@gpd_router.post(
    "/organizations/{organizationfiscalcode}/debtpositions/{iupd}/publish", operation_id="publishPosition"
)
async def gpd_publish(organizationfiscalcode: str, iupd: str, request: Request) -> Response:
    """Publish a DRAFT position."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    now = now_utc()
    position = publish_position(state, fiscal_code=organizationfiscalcode, iupd=iupd, now=now)
    return json_response(position_model(position, now))


@gpd_router.post(
    "/organizations/{organizationfiscalcode}/debtpositions/{iupd}/invalidate",
    operation_id="invalidatePosition",
)
async def gpd_invalidate(organizationfiscalcode: str, iupd: str, request: Request) -> Response:
    """Invalidate a published position (terminal)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    now = now_utc()
    position = invalidate_position(state, fiscal_code=organizationfiscalcode, iupd=iupd, now=now)
    return json_response(position_model(position, now))


# --- ACA -----------------------------------------------------------------------------------------------


def aca_iupd(fiscal_code: str, iuv: str) -> str:
    """The IUPD ACA gives the positions it creates."""
    return f"ACA_{fiscal_code}_{iuv}"


def _aca_response(state: SandboxState, position: Position, now: datetime) -> dict[str, Any]:
    option = position.options[0]
    transfer = option.transfers[0]
    return {
        "paFiscalCode": position.organization_fiscal_code,
        "companyName": position.company_name,
        "entityType": position.debtor.get("type"),
        "entityFiscalCode": position.debtor.get("fiscalCode"),
        "entityFullName": position.debtor.get("fullName"),
        "iuv": option.iuv,
        "nav": option.nav,
        "amount": option.amount_cents,
        "description": option.description,
        # DebtPositionResponse declares a local-date-time (a Java LocalDateTime): UTC without offset.
        "expirationDate": local_iso(option.due_date),
        "iban": transfer.iban,
        **({"postalIban": transfer.postal_iban} if transfer.postal_iban else {}),
        "switchToExpired": position.switch_to_expired,
        "status": position_status(position, now),
    }


def aca_upsert(state: SandboxState, *, body: dict[str, Any], now: datetime) -> dict[str, Any]:
    """paCreatePosition: create, update (same IUV) or invalidate (amount 0) a single-IUV position."""
    fc, iuv, amount = body["paFiscalCode"], body["iuv"], body["amount"]
    if not FISCAL_CODE_RE.fullmatch(fc) or not IUV_RE.fullmatch(iuv):
        raise problem(400, "Bad Request", "paFiscalCode: 11 digits; iuv: 1 to 35 letters or digits")
    if body.get("nav") and not NAV_RE.fullmatch(body["nav"]):
        raise problem(400, "Bad Request", "nav: 18 digits")
    with state.lock:
        found = find_option(state, fiscal_code=fc, iuv=iuv)
        if found is not None and found[0].source != "aca":
            raise problem(409, "Unauthorized action", f"Unauthorized action on debt position with iuv {iuv}")
        if amount == 0:
            if found is None:
                raise problem(
                    404,
                    "Invocation exception",
                    f"Error while invalidate debit position. Debit position not found with {iuv}",
                )
            position = found[0]
            status = position_status(position, now)
            if status in PAID_STATES:
                raise problem(
                    422, "Unprocessable request", "Can not perform the requested action on debit position"
                )
            if status != "INVALID":
                position.stored_status = "INVALID"
                position.last_updated_at = now
            return _aca_response(state, position, now)
        if not body.get("iban"):
            raise problem(400, "Bad Request", "iban: required to create or update a position")
        due = _aware(parse_datetime(body["expirationDate"]))
        creditor = state.creditors.get(fc)
        position = Position(
            organization_fiscal_code=fc,
            iupd=aca_iupd(fc, iuv),
            source="aca",
            stored_status="PUBLISHED",
            debtor={
                "type": body["entityType"],
                "fiscalCode": body["entityFiscalCode"],
                "fullName": body["entityFullName"],
            },
            company_name=creditor.name if creditor else fc,
            options=[
                PaymentOption(
                    iuv=iuv,
                    nav=body.get("nav") or f"3{iuv}",
                    amount_cents=amount,
                    description=body["description"],
                    is_partial_payment=False,
                    due_date=due,
                    transfers=[
                        PositionTransfer(
                            id_transfer=1,
                            amount_cents=amount,
                            organization_fiscal_code=fc,
                            remittance_information=body["description"][:140],
                            category="9/0101108TS/",
                            iban=body["iban"],
                            postal_iban=body.get("postalIban"),
                        )
                    ],
                )
            ],
            switch_to_expired=bool(body.get("switchToExpired", False)),
            pay_stand_in=body.get("payStandIn", True) is not False,
            inserted_at=now,
            published_at=now,
            last_updated_at=now,
        )
        if found is not None:
            old = found[0]
            status = position_status(old, now)
            if status in PAID_STATES or status == "INVALID":
                raise problem(
                    422, "Unprocessable request", "Can not perform the requested action on debit position"
                )
            position.inserted_at = old.inserted_at
            _unindex(state, old)
            del state.positions[(fc, old.iupd)]
        _index(state, position)
        return _aca_response(state, position, now)


@aca_router.post("/paCreatePosition", operation_id="newDebtPosition")
async def aca_create(request: Request) -> Response:
    """Create / update / invalidate (amount 0) a debt position for Stand-In."""
    state = get_state(request)
    body = await read_json(request)
    if isinstance(body, dict) and isinstance(body.get("paFiscalCode"), str):
        authorize(state, request, body["paFiscalCode"])
    else:
        authorize(state, request, None)
    errors = schema_errors(ACA_SPEC, "NewDebtPositionRequest", body)
    if errors:
        raise problem(400, "Bad Request", "; ".join(errors[:10]))
    return json_response(aca_upsert(state, body=body, now=now_utc()))


def check_base_paths() -> None:
    """Fail loudly if the specs moved the base paths this module serves."""
    for spec, expected in ((GPD_SPEC, GPD_BASE), (ACA_SPEC, ACA_BASE)):
        actual = base_path(spec)
        if actual != expected:
            raise ApiError(500, {"detail": f"{spec} base path is {actual}, sandbox serves {expected}"})
