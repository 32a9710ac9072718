"""REST wire helpers shared by the sandbox's JSON APIs: problem answers, subscription keys, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response

from sandbox.state import SandboxState

SUBSCRIPTION_HEADER = "Ocp-Apim-Subscription-Key"


class ApiError(Exception):
    """An HTTP error answer; ``body`` is sent as JSON."""

    def __init__(self, status: int, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        super().__init__(f"{status}: {body}")


def problem(status: int, title: str, detail: str) -> ApiError:
    """A ProblemJson error (the shape every pagoPA REST spec declares)."""
    return ApiError(status, {"title": title, "status": status, "detail": detail})


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer (no pydantic round trip: the sandbox answers many small requests)."""
    return Response(
        content=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(exc: ApiError) -> Response:
    """The Response for an ApiError."""
    return json_response(exc.body, status=exc.status, headers=exc.headers)


def authorize(state: SandboxState, request: Request, fiscal_code: str | None) -> None:
    """Check the APIM subscription key (401) and that the EC is served here (403).

    An empty ``subscription_keys`` accepts any non-empty key; an empty ``creditors`` serves every EC.
    """
    key = request.headers.get(SUBSCRIPTION_HEADER) or request.query_params.get("subscription-key")
    if not key:
        raise ApiError(
            401,
            {
                "statusCode": 401,
                "message": "Access denied due to missing subscription key. "
                "Make sure to include subscription key when making requests to an API.",
            },
        )
    with state.lock:
        known_keys = bool(state.subscription_keys)
        key_ok = key in state.subscription_keys
        served = not state.creditors or fiscal_code is None or fiscal_code in state.creditors
    if known_keys and not key_ok:
        raise ApiError(
            401,
            {
                "statusCode": 401,
                "message": "Access denied due to invalid subscription key. "
                "Make sure to provide a valid key for an active subscription.",
            },
        )
    if not served:
        raise ApiError(403, {"statusCode": 403, "message": "You are not allowed to access this resource."})


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 400 problem."""
    raw = await request.body()
    if not raw:
        raise problem(400, "Bad Request", "the request body is required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise problem(400, "Bad Request", f"malformed JSON: {exc}") from exc


def query_bool(request: Request, name: str, *, default: bool) -> bool:
    """A boolean query parameter (``true``/``false``), or a 400 problem."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise problem(400, "Bad Request", f"{name} must be true or false")
