"""Seeded fault injection for the sandbox's HTTP endpoints: latency, errors, dropped connections, bad bodies.

A rule matches requests by path prefix, optionally by HTTP method and by operation (the SOAPAction
header, so one SOAP operation can be targeted on an endpoint shared by many). Each rule owns a
``random.Random`` seeded from (config seed, rule index), so the sequence of outcomes a rule produces is
reproducible whatever other endpoints are called in between. For every matching request the rule draws
one number ``u``: ``u < drop_rate`` drops the connection, the next ``error_rate`` answers an error, the
next ``malformed_rate`` truncates the real answer; latency (fixed + uniform jitter) applies to all.

Dropping a connection with uvicorn: the ASGI ``send`` callable is a bound method of uvicorn's
request/response cycle, which holds the asyncio transport (outer middlewares leave that original
``send`` in the scope under ``RAW_SEND_KEY``). The middleware closes that transport before
anything is written and waits one loop tick so uvicorn sees the disconnect and does not write its own
500; the client reads EOF without a status line (httpx: ``RemoteProtocolError``, "Server disconnected
without sending a response"). Under another ASGI server without that attribute, the middleware sends the
response head and then raises, which also ends the connection without a complete answer.

The control API (``/sandbox/...``) is never faulted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ERROR_KINDS = ("http_500", "http_502", "http_503", "http_504", "http_429", "soap_fault")
CONTROL_PREFIX = "/sandbox/"
RAW_SEND_KEY = "sandbox.raw_send"  # scope key where an outer middleware leaves the server's own send


class DroppedConnection(Exception):
    """Raised to end a connection when the transport cannot be closed directly."""


@dataclass
class FaultRule:
    """Faults for the requests whose path starts with ``path`` (and method/operation, when given)."""

    path: str = "/"
    operation: str | None = None
    method: str | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error: str = "http_500"
    retry_after: int = 1
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    times: int | None = None
    hits: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f"error must be one of {', '.join(ERROR_KINDS)}")
        for name in ("error_rate", "drop_rate", "malformed_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.drop_rate + self.error_rate + self.malformed_rate > 1.0 + 1e-9:
            raise ValueError("drop_rate + error_rate + malformed_rate must not exceed 1")

    def matches(self, *, method: str, path: str, operation: str | None) -> bool:
        """Whether this rule applies to a request."""
        if self.times is not None and self.hits >= self.times:
            return False
        if not path.startswith(self.path):
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return not (self.operation and self.operation != operation)

    def as_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready data."""
        return {
            "path": self.path,
            "operation": self.operation,
            "method": self.method,
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "error_rate": self.error_rate,
            "error": self.error,
            "retry_after": self.retry_after,
            "drop_rate": self.drop_rate,
            "malformed_rate": self.malformed_rate,
            "times": self.times,
            "hits": self.hits,
        }


@dataclass
class Decision:
    """What to do with one request."""

    rule: FaultRule
    action: str  # pass | drop | error | malformed
    delay: float


@dataclass
class FaultConfig:
    """The active rules (first match wins) and the seed their random sequences derive from."""

    seed: int = 0
    rules: list[FaultRule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_rules(self, *, rules: list[FaultRule], seed: int) -> None:
        """Replace the rules, reseeding each from (seed, index)."""
        with self.lock:
            self.seed = seed
            for index, rule in enumerate(rules):
                rule.rng = random.Random(f"{seed}:{index}")  # noqa: S311 - reproducible, not secret
                rule.hits = 0
            self.rules = rules

    def clear(self) -> None:
        """Remove every rule."""
        with self.lock:
            self.rules = []

    def decide(self, *, method: str, path: str, operation: str | None) -> Decision | None:
        """Draw the fate of one request, or None when no rule matches."""
        with self.lock:
            for rule in self.rules:
                if not rule.matches(method=method, path=path, operation=operation):
                    continue
                rule.hits += 1
                u = rule.rng.random()
                delay = rule.latency_ms / 1000.0
                if rule.jitter_ms:
                    delay += rule.rng.uniform(0.0, rule.jitter_ms) / 1000.0
                if u < rule.drop_rate:
                    action = "drop"
                elif u < rule.drop_rate + rule.error_rate:
                    action = "error"
                elif u < rule.drop_rate + rule.error_rate + rule.malformed_rate:
                    action = "malformed"
                else:
                    action = "pass"
                return Decision(rule=rule, action=action, delay=delay)
        return None

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data."""
        with self.lock:
            return {"seed": self.seed, "rules": [rule.as_dict() for rule in self.rules]}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def soap_action(scope: Scope) -> str | None:
    """The SOAPAction of a request, unquoted, or None."""
    value = _header(scope, b"soapaction")
    if value is None:
        return None
    return value.strip().strip('"') or None


async def _send_simple(
    send: Send, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _drop(scope: Scope, send: Send) -> None:
    cycle = getattr(scope.get(RAW_SEND_KEY, send), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None and hasattr(transport, "close"):
        transport.close()
        # let the loop deliver connection_lost so the server marks the cycle disconnected
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.005)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    raise DroppedConnection("connection dropped by fault injection")


async def _send_error(send: Send, rule: FaultRule, *, operation: str | None) -> None:
    if rule.error == "soap_fault":
        from sandbox import soap

        body, status = soap.system_error_response(operation)
        await _send_simple(send, status, body, "text/xml; charset=utf-8")
        return
    status = int(rule.error.split("_")[1])
    titles = {
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    title = titles[status]
    problem = {"title": title, "status": status, "detail": "fault injected by the sandbox"}
    extra = [(b"retry-after", str(rule.retry_after).encode())] if status == 429 else None
    if operation:
        from sandbox import soap

        body = soap.soap_fault_envelope(faultcode="soapenv:Server", faultstring=title)
        await _send_simple(send, status, body, "text/xml; charset=utf-8", extra)
        return
    await _send_simple(send, status, json.dumps(problem).encode(), "application/problem+json", extra)


async def _send_malformed(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    start: Message | None = None
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    if start is None:
        return
    body = b"".join(chunks)
    truncated = body[: max(1, len(body) // 2)] if body else b"{"
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(truncated)).encode()))
    await send({"type": "http.response.start", "status": start["status"], "headers": headers})
    await send({"type": "http.response.body", "body": truncated, "more_body": False})


class FaultMiddleware:
    """Pure ASGI middleware applying ``app.state.sandbox.faults`` to every non-control request."""

    def __init__(self, app: ASGIApp, *, get_faults: Callable[[], FaultConfig]) -> None:
        self.app = app
        self.get_faults = get_faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        faults = self.get_faults()
        if not faults.rules:
            await self.app(scope, receive, send)
            return
        operation = soap_action(scope)
        decision = faults.decide(method=scope["method"], path=scope["path"], operation=operation)
        if decision is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["sandbox_fault"] = decision.action
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.action == "drop":
            logger.info("fault: dropping %s %s", scope["method"], scope["path"])
            await _drop(scope, send)
        elif decision.action == "error":
            await _send_error(send, decision.rule, operation=operation)
        elif decision.action == "malformed":
            await _send_malformed(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


def rules_from_payload(payload: dict[str, Any]) -> tuple[list[FaultRule], int]:
    """Build rules from the ``PUT /sandbox/faults`` body ({seed, rules: [...]}, camelCase accepted)."""
    aliases = {
        "latencyMs": "latency_ms",
        "jitterMs": "jitter_ms",
        "errorRate": "error_rate",
        "retryAfter": "retry_after",
        "dropRate": "drop_rate",
        "malformedRate": "malformed_rate",
        "endpoint": "path",
    }
    allowed = {
        "path",
        "operation",
        "method",
        "latency_ms",
        "jitter_ms",
        "error_rate",
        "error",
        "retry_after",
        "drop_rate",
        "malformed_rate",
        "times",
    }
    rules: list[FaultRule] = []
    raw_rules = payload.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ValueError("rules must be a list")
    for index, raw in enumerate(raw_rules):
        if not isinstance(raw, dict):
            raise ValueError(f"rules[{index}] must be an object")
        values = {aliases.get(str(key), str(key)): value for key, value in raw.items()}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"rules[{index}]: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            rules.append(FaultRule(**values))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"rules[{index}]: {exc}") from exc
    seed = payload.get("seed", 0)
    if not isinstance(seed, int):
        raise ValueError("seed must be an integer")
    return rules, seed
