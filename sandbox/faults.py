"""Seeded fault injection for the sandbox's HTTP endpoints: latency, errors, dropped connections, bad bodies.

A rule matches requests by path prefix, optionally by HTTP method and by operation (the SOAPAction
header, so one SOAP operation can be targeted on an endpoint shared by many). Each rule owns a
``random.Random`` seeded from (config seed, rule index), so the sequence of outcomes a rule produces is
reproducible whatever other endpoints are called in between. For every matching request the rule draws
one number ``u``: ``u < drop_rate`` drops the connection, the next ``error_rate`` answers an error, the
next ``malformed_rate`` truncates the real answer, the next ``stall_rate`` holds the real answer back for
``stall_ms`` (beyond the caller's timeout: the work is done, the caller never hears of it in time), the next
``lost_rate`` serves the request and drops the connection instead of answering (the work is done, the answer
is lost); latency (fixed + uniform jitter) applies to all. Each rule counts what it injected, per kind.

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
RATE_FIELDS = ("drop_rate", "error_rate", "malformed_rate", "stall_rate", "lost_rate")
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
    error: str | list[str] = "http_500"  # a list: each error picks one of them (seeded)
    retry_after: int = 1
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    stall_rate: float = 0.0
    stall_ms: float = 0.0
    lost_rate: float = 0.0
    times: int | None = None
    hits: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        kinds = [self.error] if isinstance(self.error, str) else list(self.error)
        if not kinds or any(kind not in ERROR_KINDS for kind in kinds):
            raise ValueError(f"error must be one of {', '.join(ERROR_KINDS)}, or a non-empty list of them")
        for name in RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if sum(getattr(self, name) for name in RATE_FIELDS) > 1.0 + 1e-9:
            raise ValueError(f"{' + '.join(RATE_FIELDS)} must not exceed 1")
        if self.stall_ms < 0 or self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms, jitter_ms and stall_ms must not be negative")
        if self.stall_rate and not self.stall_ms:
            raise ValueError("stall_rate needs stall_ms (how long the answer is held back)")

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
            "error": self.error if isinstance(self.error, str) else list(self.error),
            "retry_after": self.retry_after,
            "drop_rate": self.drop_rate,
            "malformed_rate": self.malformed_rate,
            "stall_rate": self.stall_rate,
            "stall_ms": self.stall_ms,
            "lost_rate": self.lost_rate,
            "times": self.times,
            "hits": self.hits,
            "injected": dict(self.injected),
        }


@dataclass
class Decision:
    """What to do with one request."""

    rule: FaultRule
    action: str  # pass | drop | error | malformed | stall | lost
    delay: float
    error: str | None = None  # the error kind, for action "error"


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
                rule.injected = {}
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
                action = "pass"
                bound = 0.0
                # the order of the bands is part of the seeded contract: new kinds go after the old ones
                for name, rate in (
                    ("drop", rule.drop_rate),
                    ("error", rule.error_rate),
                    ("malformed", rule.malformed_rate),
                    ("stall", rule.stall_rate),
                    ("lost", rule.lost_rate),
                ):
                    bound += rate
                    if u < bound:
                        action = name
                        break
                error = None
                if action == "error":
                    # one more draw only when there is a choice: single-kind rules keep their sequences
                    kinds = [rule.error] if isinstance(rule.error, str) else rule.error
                    error = kinds[0] if len(kinds) == 1 else rule.rng.choice(kinds)
                if action != "pass":
                    kind = error or action
                    rule.injected[kind] = rule.injected.get(kind, 0) + 1
                return Decision(rule=rule, action=action, delay=delay, error=error)
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


async def _send_error(send: Send, rule: FaultRule, *, error: str, operation: str | None) -> None:
    if error == "soap_fault":
        from sandbox import soap

        body, status = soap.system_error_response(operation)
        await _send_simple(send, status, body, "text/xml; charset=utf-8")
        return
    status = int(error.split("_")[1])
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


async def _serve_captured(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[Message | None, bytes]:
    """Run the app to the end, keeping its answer (start message, whole body) instead of sending it."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start, b"".join(chunks)


async def _send_captured(send: Send, start: Message, body: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_stalled(app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, stall: float) -> None:
    # The work is done first, then the answer waits: a caller that times out meanwhile never learns of it.
    start, body = await _serve_captured(app, scope, receive)
    await asyncio.sleep(stall)
    if start is not None:
        await _send_captured(send, start, body)


async def _send_lost(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    # The work is done, then the connection goes down before a byte of the answer is written.
    await _serve_captured(app, scope, receive)
    await _drop(scope, send)


async def _send_malformed(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    start, body = await _serve_captured(app, scope, receive)
    if start is None:
        return
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
            await _send_error(send, decision.rule, error=decision.error or "http_500", operation=operation)
        elif decision.action == "malformed":
            await _send_malformed(self.app, scope, receive, send)
        elif decision.action == "stall":
            logger.info("fault: holding back the answer to %s %s", scope["method"], scope["path"])
            await _send_stalled(self.app, scope, receive, send, stall=decision.rule.stall_ms / 1000.0)
        elif decision.action == "lost":
            logger.info("fault: losing the answer to %s %s", scope["method"], scope["path"])
            await _send_lost(self.app, scope, receive, send)
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
        "stallRate": "stall_rate",
        "stallMs": "stall_ms",
        "lostRate": "lost_rate",
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
        "stall_rate",
        "stall_ms",
        "lost_rate",
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
