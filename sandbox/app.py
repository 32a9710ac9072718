"""The sandbox's FastAPI application: every router, fault injection and the exchange journal."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from sandbox import control, gpd, psp, receipts
from sandbox.faults import (
    CONTROL_PREFIX,
    RAW_SEND_KEY,
    FaultMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    soap_action,
)
from sandbox.rest import ApiError, error_response
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

# routers of the other sandbox modules, included when the module exists
OPTIONAL_ROUTERS = ("sandbox.fdr", "sandbox.nodo_soap", "sandbox.checkout", "sandbox.settlement")


class ExchangeRecorder:
    """Pure ASGI middleware journaling every non-control request and its answer in ``state.exchanges``.

    It also stamps each answer with an ``X-Request-Id`` (the caller's, or a new one), as the pagoPA APIs do.
    """

    def __init__(self, app: Any, *, get_state: Any) -> None:
        self.app = app
        self.get_state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        request_chunks: list[bytes] = []
        response_chunks: list[bytes] = []
        status: list[int] = []
        request_id = (
            next(
                (v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"x-request-id"),
                None,
            )
            or uuid.uuid4().hex
        )

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_chunks.append(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))],
                }
            elif message["type"] == "http.response.body":
                response_chunks.append(message.get("body", b""))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            route = scope.get("route")
            operation = (
                soap_action(scope)
                or getattr(route, "operation_id", None)
                or getattr(scope.get("endpoint"), "__name__", "")
                or ""
            )
            fault = scope.get("state", {}).get("sandbox_fault")
            outcome = str(status[0]) if status else "dropped"
            if fault and fault != "pass":
                outcome = f"{outcome} ({fault})"
            self.get_state().record(
                direction="in",
                endpoint=scope["path"],
                operation=operation,
                status=outcome,
                request=b"".join(request_chunks).decode("utf-8", "replace"),
                response=b"".join(response_chunks).decode("utf-8", "replace"),
                duration_ms=(time.perf_counter() - started) * 1000,
            )


class SandboxApp(FastAPI):
    """FastAPI, plus the server's own ``send`` left in the scope (see ``sandbox.faults`` on dropping)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's outermost middleware wraps ``send``; the server's original holds the transport
        scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


def _include_optional(app: FastAPI) -> list[str]:
    included = []
    for name in OPTIONAL_ROUTERS:
        if importlib.util.find_spec(name) is None:
            logger.info("sandbox: %s not present, its endpoints are not served", name)
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"sandbox module {name} exists but cannot be imported: {exc}") from exc
        router = getattr(module, "router", None)
        if router is None:
            raise ImportError(f"sandbox module {name} has no `router` to include")
        app.include_router(router)
        included.append(name)
    return included


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    node = getattr(app.state, "node", None)
    if node is not None:
        await node.client.aclose()
        app.state.node = None


def create_app(*, state: SandboxState | None = None, seed: int = 0) -> FastAPI:
    """The sandbox app over ``state`` (a fresh one seeded with ``seed`` by default)."""
    state = state if state is not None else SandboxState(seed=seed)
    app = SandboxApp(
        title="pagoflow pagoPA sandbox",
        version="1",
        lifespan=_lifespan,
        docs_url="/sandbox/docs",
        redoc_url=None,
        openapi_url="/sandbox/openapi.json",
    )
    app.state.sandbox = state
    app.state.node = None

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    app.include_router(gpd.gpd_router)
    app.include_router(gpd.aca_router)
    app.include_router(receipts.biz_events_router)
    app.include_router(receipts.gpd_receipts_router)
    app.include_router(psp.router)
    app.include_router(psp.node_for_psp_router)
    app.include_router(control.router)
    app.state.optional_modules = _include_optional(app)
    # added last = outermost: the journal sees what fault injection did to each request
    app.add_middleware(FaultMiddleware, get_faults=lambda: app.state.sandbox.faults)
    app.add_middleware(ExchangeRecorder, get_state=lambda: app.state.sandbox)
    return app
