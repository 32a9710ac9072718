"""A bound on request bodies, before any handler reads them: 413 with the error shape of the surface called.

Every body the web process accepts is small (a position, a cart of five notices, one SOAP message, a
reconciliation): :data:`MAX_BODY_BYTES` is far above all of them. A request that declares a longer
``Content-Length`` is refused without reading it; one sent in chunks is read here up to the bound (then handed
on in one piece) and refused as soon as it passes it. The rest of an oversized body is read and thrown away
(up to :data:`MAX_DISCARD_BYTES`), so that a client that sends its whole body before reading gets the 413
instead of a broken connection; memory stays within the bound either way.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from web.soap import soap_fault

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_DISCARD_BYTES = 128 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` under ``paths`` gets 413 (a SOAP fault on soap_paths)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: tuple[str, ...],
        soap_paths: tuple[str, ...] = (),
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = tuple(p.rstrip("/") for p in paths + soap_paths)
        self.soap_paths = tuple(p.rstrip("/") for p in soap_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under(scope["path"], self.paths):
            await self.app(scope, receive, send)  # other surfaces (the console's uploads) bound their own
            return
        declared = _content_length(scope)
        if declared is not None:
            # the HTTP layer holds a body to its declared length, so only the declaration needs checking
            if declared > self.max_bytes:
                await self._refuse(scope, receive, send, already=0, finished=False)
            else:
                await self.app(scope, receive, send)
            return
        # No length declared (chunked): read it here, up to the bound, and hand it on in one piece.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            received += len(chunk)
            finished = not message.get("more_body", False)
            if received > self.max_bytes:
                chunks.clear()
                await self._refuse(scope, receive, send, already=received, finished=finished)
                return
            chunks.append(chunk)
            if finished:
                break
        body = b"".join(chunks)
        chunks.clear()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, *, already: int, finished: bool
    ) -> None:
        discarded = already
        while not finished and discarded <= MAX_DISCARD_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            discarded += len(message.get("body", b""))
            finished = not message.get("more_body", False)
        detail = f"corpo della richiesta oltre {self.max_bytes} byte"
        if _under(scope["path"], self.soap_paths):
            body = soap_fault(code="Client", message=f"request body larger than {self.max_bytes} bytes")
            content_type = b"text/xml; charset=utf-8"
        else:
            body = json.dumps({"categoria": "RICHIESTA", "codice": "SINTASSI",
                               "descrizione": "Richiesta troppo grande", "dettaglio": detail}).encode()
            content_type = b"application/json"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if not finished:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
