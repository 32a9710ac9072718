"""Receipt pull APIs: Biz-Events (JSON, ``biz_events.json``) and GPD receipts (XML, ``gpd_payments.json``).

Base paths from the specs' servers: ``/bizevents/service/v1`` and ``/gpd/payments-receipts-service/v1``.
Biz-Events describes its ``{iur}`` as the payment token, which is the receiptId; the FdR lines carry the
PSP's IUR: both are accepted. GPD receipts answers the paSendRTV2Request (paSendRTReq) XML of the
first receipt issued for the IUV, as ``application/xml``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response

from sandbox.gpd import iso
from sandbox.psp import mbd_attachment
from sandbox.rest import authorize, json_response, problem
from sandbox.state import Receipt, SandboxState, get_state

BIZ_EVENTS_BASE = "/bizevents/service/v1"
GPD_RECEIPTS_BASE = "/gpd/payments-receipts-service/v1"

biz_events_router = APIRouter(prefix=BIZ_EVENTS_BASE, tags=["Biz-Events"])
gpd_receipts_router = APIRouter(prefix=GPD_RECEIPTS_BASE, tags=["GPD receipts"])


def _concerns(receipt: Receipt, fiscal_code: str) -> bool:
    return receipt.ec_fiscal_code == fiscal_code or any(
        t.fiscal_code_pa == fiscal_code for t in receipt.transfers
    )


def find_receipts(
    state: SandboxState, *, fiscal_code: str, iuv: str | None = None, iur: str | None = None
) -> list[Receipt]:
    """Receipts of an EC (primary or beneficiary), by IUV and/or IUR/receiptId, oldest first."""
    with state.lock:
        found = [
            r
            for r in state.receipts.values()
            if _concerns(r, fiscal_code)
            and (iuv is None or r.iuv == iuv)
            and (iur is None or iur in (r.iur, r.receipt_id))
        ]
    return sorted(found, key=lambda r: r.payment_date_time)


def _subject(debtor: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "entityUniqueIdentifierType": debtor.get("type", "F"),
        "entityUniqueIdentifierValue": debtor.get("fiscalCode", "ANONIMO"),
        "fullName": debtor.get("fullName", "ANONIMO"),
    }
    for key, wire in (
        ("streetName", "streetName"),
        ("civicNumber", "civicNumber"),
        ("postalCode", "postalCode"),
        ("city", "city"),
        ("province", "stateProvinceRegion"),
        ("country", "country"),
        ("email", "email"),
    ):
        if debtor.get(key):
            data[wire] = debtor[key]
    return data


def _number(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01")))


def receipt_json(receipt: Receipt, *, psp_name: str) -> dict[str, Any]:
    """CtReceiptModelResponse for a receipt."""
    data: dict[str, Any] = {
        "receiptId": receipt.receipt_id,
        "noticeNumber": receipt.nav,
        "fiscalCode": receipt.ec_fiscal_code,
        "outcome": receipt.outcome,
        "creditorReferenceId": receipt.iuv,
        "paymentAmount": _number(receipt.amount),
        "description": receipt.description,
        "companyName": receipt.company_name,
        "debtor": _subject(receipt.debtor),
        "transferList": [
            {
                "idTransfer": t.id_transfer,
                "transferAmount": _number(t.amount),
                "fiscalCodePA": t.fiscal_code_pa,
                "iban": t.iban or "",
                "mbdAttachment": mbd_attachment(t, receipt.receipt_id) if t.stamp else "",
                "remittanceInformation": t.remittance_information,
                "transferCategory": t.transfer_category,
            }
            for t in receipt.transfers
        ],
        "idPSP": receipt.psp_id,
        "pspCompanyName": psp_name,
        "idChannel": receipt.channel,
        "channelDescription": "app",
        "payer": _subject(receipt.debtor),
        "paymentMethod": "creditCard",
        "paymentDateTime": receipt.payment_date_time.strftime("%Y-%m-%dT%H:%M:%S"),
        "paymentDateTimeFormatted": iso(receipt.payment_date_time),
        "applicationDate": (receipt.pay_date or receipt.payment_date_time.date()).isoformat(),
        "transferDate": (receipt.pay_date or receipt.payment_date_time.date()).isoformat(),
        "metadata": [{"key": "standIn", "value": "true" if receipt.standin else "false"}],
    }
    if receipt.office_name:
        data["officeName"] = receipt.office_name
    if receipt.fee is not None:
        data["fee"] = _number(receipt.fee)
    return data


def _psp_name(state: SandboxState, psp_id: str) -> str:
    with state.lock:
        return next((p.name for p in state.psps if p.psp_id == psp_id), psp_id)


@biz_events_router.get(
    "/organizations/{organizationfiscalcode}/receipts/{iur}/paymentoptions/{iuv}",
    operation_id="getOrganizationReceiptIuvIur",
)
async def biz_receipt_by_iuv(organizationfiscalcode: str, iur: str, iuv: str, request: Request) -> Response:
    """The receipt of (EC, IUR, IUV)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    found = find_receipts(state, fiscal_code=organizationfiscalcode, iuv=iuv, iur=iur)
    if not found:
        raise problem(404, "Not Found", f"no receipt for {organizationfiscalcode} iur {iur} iuv {iuv}")
    return json_response(receipt_json(found[0], psp_name=_psp_name(state, found[0].psp_id)))


@biz_events_router.get(
    "/organizations/{organizationfiscalcode}/receipts/{iur}", operation_id="getOrganizationReceiptIur"
)
async def biz_receipt(organizationfiscalcode: str, iur: str, request: Request) -> Response:
    """The receipt of (EC, IUR)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    found = find_receipts(state, fiscal_code=organizationfiscalcode, iur=iur)
    if not found:
        raise problem(404, "Not Found", f"no receipt for {organizationfiscalcode} iur {iur}")
    return json_response(receipt_json(found[0], psp_name=_psp_name(state, found[0].psp_id)))


@gpd_receipts_router.get("/payments/{organizationfiscalcode}/receipts/{iuv}", operation_id="getReceiptByIUV")
async def gpd_receipt(organizationfiscalcode: str, iuv: str, request: Request) -> Response:
    """The receipt XML of (EC, IUV)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    found = find_receipts(state, fiscal_code=organizationfiscalcode, iuv=iuv)
    if not found:
        raise problem(404, "Not Found", f"no receipt for {organizationfiscalcode} iuv {iuv}")
    return Response(content=found[0].xml, media_type="application/xml")


@gpd_receipts_router.get(
    "/payments/{organizationfiscalcode}/receipts", operation_id="getOrganizationReceipts"
)
async def gpd_receipts(organizationfiscalcode: str, request: Request) -> Response:
    """Page through an EC's receipts (``pageNum`` from 0, ``pageSize`` ≤ 100)."""
    state = get_state(request)
    authorize(state, request, organizationfiscalcode)
    try:
        page = int(request.query_params.get("pageNum", "0"))
        size = int(request.query_params.get("pageSize", "20"))
    except ValueError as exc:
        raise problem(400, "Bad Request", "pageNum and pageSize must be integers") from exc
    if page < 0 or not 1 <= size <= 100:
        raise problem(400, "Bad Request", "pageNum ≥ 0 and pageSize 1..100")
    found = find_receipts(state, fiscal_code=organizationfiscalcode)
    if not found:
        raise problem(404, "Not Found", f"no receipts for {organizationfiscalcode}")
    chunk = found[page * size : (page + 1) * size]
    return json_response(
        {
            "currentPageNumber": page,
            "length": len(chunk),
            "totalPages": (len(found) + size - 1) // size,
            "results": [
                {
                    "organizationFiscalCode": r.ec_fiscal_code,
                    "iuv": r.iuv,
                    "receiptId": r.receipt_id,
                    "debtor": r.debtor.get("fiscalCode"),
                    "paymentAmount": _number(r.amount),
                    "paymentDateTime": iso(r.payment_date_time),
                }
                for r in chunk
            ],
        }
    )
