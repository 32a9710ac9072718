"""FdR REST for creditor institutions (``openapi/fdr_organization.json``): published flows, headers, payments.

Base path ``/fdr-org/service/v1`` (the path of the spec's server URL). Routes:

- ``GET /organizations/{organizationId}/fdrs?publishedGt&flowDate&pspId&page&size`` — the latest revision of
  every published flow, oldest publication first, pages of 1..1000 (``count`` is the number of items on the
  page, as the spec says); publications older than the start of the 30th previous day are never listed,
  whatever ``publishedGt`` says;
- ``GET …/fdrs/{fdr}/revisions/{revision}/psps/{pspId}`` — one revision's header (SingleFlowResponse);
- ``GET …/payments?page&size`` — its lines (Payment), paginated (``size`` ≥ 1, no upper bound in the spec).

The subscription key is checked as for GPD (``sandbox.rest.authorize``: 401 missing/invalid, 403 EC not
served). Errors use the spec's ErrorResponse: 400 ``FDR-1000``/``FDR-1002`` bad parameters, 400 ``FDR-2000``
unknown PSP, 400 ``FDR-3008``/``FDR-3009`` flow id not compliant, 404 ``FDR-3001`` flow not found.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from sandbox.builders.reporting import flow_header_json, flow_list_item_json, payment_to_json
from sandbox.rest import ApiError, authorize, error_response, json_response
from sandbox.settlement import PublishedFlow, reporting_state
from sandbox.state import SandboxState, get_state

FDR_SPEC = "openapi/fdr_organization.json"
FDR_BASE = "/fdr-org/service/v1"
MAX_PAGE_SIZE = 1000
WINDOW_DAYS = 30
_FLOW_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")

router = APIRouter(prefix=FDR_BASE, tags=["FdR"])

_STATUS_TEXT = {400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


def fdr_error(status: int, code: str, message: str, *, path: str | None = None) -> ApiError:
    """An ErrorResponse of the FdR spec."""
    error: dict[str, str] = {"message": message}
    if path is not None:
        error = {"path": path, "message": message}
    return ApiError(
        status,
        {
            "errorId": str(uuid.uuid4()),
            "httpStatusCode": status,
            "httpStatusDescription": _STATUS_TEXT.get(status, ""),
            "appErrorCode": code,
            "errors": [error],
        },
    )


def _int_param(request: Request, name: str, *, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise fdr_error(
            400,
            "FDR-1001",
            f"Bad request. Field [{name}] is equals to [{raw}] but this is not a valid value.",
            path=name,
        ) from None
    if value < 1 or (maximum is not None and value > maximum):
        limit = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise fdr_error(
            400, "FDR-1000", f"Bad request. Field [{name}] must be {limit}, got [{raw}].", path=name
        )
    return value


def _instant_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise fdr_error(
            400,
            "FDR-1002",
            f"Bad request. Field [{name}] is equals to [{raw}] but it is expected "
            "to be in ISO-8601 format [yyyy-MM-ddTHH:mm:ssZ] (example: [2025-01-01T12:00:00.123000Z]).",
            path=name,
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def window_start(now: datetime) -> datetime:
    """Start of the previous 30th day at 00:00Z: the oldest publication the list shows."""
    return datetime.combine((now - timedelta(days=WINDOW_DAYS)).date(), datetime.min.time(), UTC)


def _page(items: list[Any], *, page: int, size: int) -> tuple[list[Any], dict[str, int]]:
    chunk = items[(page - 1) * size : page * size]
    return chunk, {"pageSize": size, "pageNumber": page, "totPage": math.ceil(len(items) / size)}


def _check_psp(state: SandboxState, psp_id: str) -> None:
    if psp_id not in {p.psp_id for p in state.psps} and not reporting_state(state).knows_psp(psp_id):
        raise fdr_error(400, "FDR-2000", f"PSP with ID [{psp_id}] is invalid or unknown.")


def _check_flow_name(fdr: str, psp_id: str) -> None:
    match = _FLOW_DATE.match(fdr)
    try:
        ok = match is not None and date.fromisoformat(match.group(1)) is not None
    except ValueError:
        ok = False
    if not ok:
        raise fdr_error(400, "FDR-3008", f"Flow identifier [{fdr}] contains a date that is not compliant.")
    if not fdr[10:].startswith(psp_id):
        raise fdr_error(400, "FDR-3009", f"Flow identifier [{fdr}] contains a PSP ID that is not compliant.")


def _find(state: SandboxState, *, ec: str, fdr: str, revision: int, psp_id: str) -> PublishedFlow:
    _check_flow_name(fdr, psp_id)
    with state.lock:
        flow = reporting_state(state).find(ec=ec, id_flusso=fdr, psp_id=psp_id, revision=revision)
    if flow is None:
        raise fdr_error(404, "FDR-3001", f"Flow with ID [{fdr}] not found.")
    return flow


@router.get(
    "/organizations/{organizationId}/fdrs", operation_id="IOrganizationsController_getAllPublishedFlows"
)
def list_flows(organizationId: str, request: Request) -> Response:  # noqa: N803 - the spec's parameter name
    """The latest revision of the EC's published flows, paginated."""
    state = get_state(request)
    try:
        authorize(state, request, organizationId)
        page = _int_param(request, "page", default=1)
        size = _int_param(request, "size", default=MAX_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        published_gt = _instant_param(request, "publishedGt")
        flow_date = _instant_param(request, "flowDate")
        psp_id = request.query_params.get("pspId") or None
        if psp_id:
            _check_psp(state, psp_id)
        lower = window_start(datetime.now(UTC))
        if published_gt is not None and published_gt > lower:
            lower = published_gt
        with state.lock:
            flows = [
                f
                for f in reporting_state(state).latest_flows(ecs={organizationId}, psp_id=psp_id)
                if f.published is not None
                and f.published > lower
                and (flow_date is None or f.flow_date >= flow_date)
            ]
            items = [flow_list_item_json(f.spec, f.published) for f in flows]  # type: ignore[arg-type]
    except ApiError as exc:
        return error_response(exc)
    data, metadata = _page(items, page=page, size=size)
    return json_response({"metadata": metadata, "count": len(data), "data": data})


@router.get(
    "/organizations/{organizationId}/fdrs/{fdr}/revisions/{revision}/psps/{pspId}",
    operation_id="IOrganizationsController_getSinglePublishedFlow",
)
def get_flow(
    organizationId: str,
    fdr: str,
    revision: str,
    pspId: str,  # noqa: N803 - spec names
    request: Request,
) -> Response:
    """One published revision's header."""
    state = get_state(request)
    try:
        authorize(state, request, organizationId)
        flow = _find(state, ec=organizationId, fdr=fdr, revision=_revision(revision), psp_id=pspId)
    except ApiError as exc:
        return error_response(exc)
    return json_response(flow_header_json(flow.spec, flow.published))  # type: ignore[arg-type]


@router.get(
    "/organizations/{organizationId}/fdrs/{fdr}/revisions/{revision}/psps/{pspId}/payments",
    operation_id="IOrganizationsController_getPaymentsFromPublishedFlow",
)
def get_payments(
    organizationId: str,
    fdr: str,
    revision: str,
    pspId: str,  # noqa: N803 - spec names
    request: Request,
) -> Response:
    """One published revision's payments, paginated."""
    state = get_state(request)
    try:
        authorize(state, request, organizationId)
        page = _int_param(request, "page", default=1)
        size = _int_param(request, "size", default=MAX_PAGE_SIZE)
        flow = _find(state, ec=organizationId, fdr=fdr, revision=_revision(revision), psp_id=pspId)
    except ApiError as exc:
        return error_response(exc)
    start = (page - 1) * size
    chunk = flow.spec.payments[start : start + size]
    data = [payment_to_json(p, start + n) for n, p in enumerate(chunk, start=1)]
    metadata = {"pageSize": size, "pageNumber": page, "totPage": math.ceil(len(flow.spec.payments) / size)}
    return json_response({"metadata": metadata, "count": len(data), "data": data})


def _revision(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise fdr_error(
            400,
            "FDR-1001",
            f"Bad request. Field [revision] is equals to [{raw}] but this is not a valid value.",
            path="revision",
        ) from None
    if value < 1:
        raise fdr_error(400, "FDR-1000", "Bad request. Field [revision] must be at least 1.", path="revision")
    return value


__all__ = ["FDR_BASE", "FDR_SPEC", "fdr_error", "router", "window_start"]
