"""pagoPA Checkout for ECs (``openapi/checkout_v1.json``): carts of up to 5 notices, and the debtor paying.

``POST /checkout/ec/v1/carts`` (base path of the spec's server URL) validates the CartRequest against the
spec (400 ProblemJson otherwise) and answers 302 with ``Location: <sandbox>/c/<cartId>``, the page where the
debtor would pay. ``GET /c/{cartId}`` describes the cart. ``POST /sandbox/checkout/{cartId}/pay
{psp?, payDate?, outcome?}`` simulates the debtor paying: for every notice the Node verifies and activates it
(``paVerifyPaymentNotice``, ``paGetPaymentV2`` with the cart id in ``paymentNote``, via the station or GPD as
``sandbox.psp.Node`` decides); only when every notice is activated are they all closed (receipts issued,
``paSendRTV2`` to the stations, transfers booked for settlement). The answer carries the return URL the
debtor would be sent to (``returnOkUrl``, ``returnErrorUrl`` on a failure, ``returnCancelUrl`` when
``outcome`` is ``CANCEL``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from sandbox.nodo_soap import legacy_state
from sandbox.openapi import base_path, schema_errors
from sandbox.psp import get_node
from sandbox.rest import ApiError, authorize, error_response, json_response, problem, read_json
from sandbox.soap import NodeFault
from sandbox.state import SandboxState, get_state

CHECKOUT_SPEC = "openapi/checkout_v1.json"
CHECKOUT_BASE = "/checkout/ec/v1"

router = APIRouter(tags=["Checkout"])


@dataclass
class CartNotice:
    """One notice in a cart."""

    notice_number: str
    fiscal_code: str
    amount_cents: int
    company_name: str
    description: str


@dataclass
class Cart:
    """A cart handed to Checkout, and what became of it."""

    cart_id: str
    notices: list[CartNotice]
    return_ok: str
    return_cancel: str
    return_error: str
    email: str | None
    id_cart: str | None
    all_ccp: bool
    created: datetime
    status: str = "CREATED"  # CREATED | PAID | FAILED | CANCELLED
    results: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "cartId": self.cart_id,
            "idCart": self.id_cart,
            "status": self.status,
            "emailNotice": self.email,
            "created": self.created.isoformat(),
            "paymentNotices": [
                {
                    "noticeNumber": n.notice_number,
                    "fiscalCode": n.fiscal_code,
                    "amount": n.amount_cents,
                    "companyName": n.company_name,
                    "description": n.description,
                }
                for n in self.notices
            ],
            "returnUrls": {
                "returnOkUrl": self.return_ok,
                "returnCancelUrl": self.return_cancel,
                "returnErrorUrl": self.return_error,
            },
            "results": self.results,
        }


def _carts(state: SandboxState) -> dict[str, Cart]:
    return legacy_state(state).checkout_carts


def create_cart(state: SandboxState, body: dict[str, Any]) -> Cart:
    """Validate a CartRequest (as the spec defines it) and store the cart."""
    errors = schema_errors(CHECKOUT_SPEC, "CartRequest", body)
    notices = body.get("paymentNotices") if isinstance(body, dict) else None
    if not errors and isinstance(notices, list):
        keys = [(n.get("fiscalCode"), n.get("noticeNumber")) for n in notices]
        if len(set(keys)) != len(keys):
            errors.append("paymentNotices: the same notice appears twice")
        errors += [
            f"paymentNotices[{i}].noticeNumber: 18 digits"
            for i, n in enumerate(notices)
            if not str(n.get("noticeNumber")).isdigit()
        ]
    if errors:
        raise problem(400, "Bad Request", "; ".join(errors[:10]))
    urls = body["returnUrls"]
    with state.lock:
        cart_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
        cart = Cart(
            cart_id=cart_id,
            notices=[
                CartNotice(
                    notice_number=n["noticeNumber"],
                    fiscal_code=n["fiscalCode"],
                    amount_cents=n["amount"],
                    company_name=n["companyName"],
                    description=n["description"],
                )
                for n in body["paymentNotices"]
            ],
            return_ok=urls["returnOkUrl"],
            return_cancel=urls["returnCancelUrl"],
            return_error=urls["returnErrorUrl"],
            email=body.get("emailNotice"),
            id_cart=body.get("idCart"),
            all_ccp=bool(body.get("allCCP", False)),
            created=datetime.now(UTC),
        )
        _carts(state)[cart_id] = cart
    return cart


@router.post(f"{CHECKOUT_BASE}/carts", operation_id="PostCarts", status_code=302)
async def post_carts(request: Request) -> Response:
    """Create a cart; 302 to the page where the debtor pays it."""
    state = get_state(request)
    try:
        authorize(state, request, None)
        cart = create_cart(state, await read_json(request))
    except ApiError as exc:
        return error_response(exc)
    location = f"{str(request.base_url).rstrip('/')}/c/{cart.cart_id}"
    return Response(status_code=302, headers={"Location": location})


@router.get("/c/{cart_id}", tags=["Checkout"])
def cart_page(cart_id: str, request: Request) -> Response:
    """What the debtor sees at the redirect: the cart and how to pay it in the sandbox."""
    state = get_state(request)
    with state.lock:
        cart = _carts(state).get(cart_id)
        if cart is None:
            return json_response(
                {"title": "Not Found", "status": 404, "detail": f"cart {cart_id} unknown"}, status=404
            )
        return json_response(
            cart.as_dict() | {"pay": {"method": "POST", "path": f"/sandbox/checkout/{cart_id}/pay"}}
        )


class CartPayRequest(BaseModel):
    """How the debtor pays the cart."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    psp: str | None = None
    pay_date: date | None = Field(default=None, alias="payDate")
    outcome: str = Field(default="OK", pattern="^(OK|CANCEL)$")


@router.post("/sandbox/checkout/{cart_id}/pay", tags=["sandbox control"])
async def pay_cart(cart_id: str, body: CartPayRequest, request: Request) -> Response:
    """Simulate the debtor paying every notice of the cart (all activated first, then all closed)."""
    state = get_state(request)
    with state.lock:
        cart = _carts(state).get(cart_id)
        if cart is None:
            return json_response(
                {"title": "Not Found", "status": 404, "detail": f"cart {cart_id} unknown"}, status=404
            )
        if cart.status != "CREATED":
            return json_response(
                {"title": "Conflict", "status": 409, "detail": f"cart {cart_id} is {cart.status}"}, status=409
            )
        cart.status = "PAYING"
    if body.outcome == "CANCEL":
        cart.status = "CANCELLED"
        return json_response(
            {"cartId": cart_id, "outcome": "CANCEL", "redirect": cart.return_cancel, "results": []}
        )
    node = get_node(request)
    results: list[dict[str, Any]] = [
        {"noticeNumber": n.notice_number, "fiscalCode": n.fiscal_code} for n in cart.notices
    ]
    tokens = []
    failed = False
    try:
        psp = node.psp(body.psp)
    except NodeFault as fault:
        cart.status = "FAILED"
        return json_response(
            {
                "cartId": cart_id,
                "outcome": "KO",
                "redirect": cart.return_error,
                "results": [],
                "fault": fault.as_dict(),
            }
        )
    for notice, result in zip(cart.notices, results, strict=True):
        try:
            info = await node.verify(fiscal_code=notice.fiscal_code, nav=notice.notice_number)
            result["amount"] = f"{info.amount:.2f}"
            result["mode"] = info.mode
            token = await node.activate(
                fiscal_code=notice.fiscal_code,
                nav=notice.notice_number,
                amount=info.amount,
                psp=psp,
                channel=psp.channel,
                mode=info.mode,
                payment_note=cart_id,
            )
            tokens.append((token, result))
            result["paymentToken"] = token.token
        except NodeFault as fault:
            result.update(outcome="KO", fault=fault.as_dict())
            failed = True
            break
    if not failed:
        for token, result in tokens:
            try:
                receipt = await node.close(token=token, psp=psp, pay_date=body.pay_date, payment_note=cart_id)
            except NodeFault as fault:
                result.update(outcome="KO", fault=fault.as_dict())
                failed = True
                continue
            result.update(
                outcome="OK",
                receiptId=receipt.receipt_id,
                iur=receipt.iur,
                amountPaid=f"{receipt.amount:.2f}",
                delivery={ec: d.status for ec, d in receipt.deliveries.items()},
            )
    with state.lock:
        cart.status = "FAILED" if failed else "PAID"
        cart.results = results
    total = sum((Decimal(r.get("amountPaid", "0")) for r in results), Decimal("0.00"))
    return json_response(
        {
            "cartId": cart_id,
            "outcome": "KO" if failed else "OK",
            "redirect": cart.return_error if failed else cart.return_ok,
            "total": f"{total:.2f}",
            "results": results,
        }
    )


@router.get("/sandbox/checkout/{cart_id}", tags=["sandbox control"])
def cart_state(cart_id: str, request: Request) -> Response:
    """A cart and the outcome of its payment."""
    state = get_state(request)
    with state.lock:
        cart = _carts(state).get(cart_id)
        if cart is None:
            return json_response(
                {"title": "Not Found", "status": 404, "detail": f"cart {cart_id} unknown"}, status=404
            )
        return json_response(cart.as_dict())


def check_base_path() -> None:
    """Fail loudly if the spec moved the base path this module serves."""
    if base_path(CHECKOUT_SPEC) != CHECKOUT_BASE:
        raise RuntimeError(
            f"{CHECKOUT_SPEC} base path is {base_path(CHECKOUT_SPEC)}, sandbox serves {CHECKOUT_BASE}"
        )


__all__ = ["CHECKOUT_BASE", "Cart", "create_cart", "router"]
