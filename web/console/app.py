"""The console as an ASGI sub-application mounted in the web process: sessions, headers, errors, routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.settings import get_settings
from web.console.render import render
from web.console.security import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    CsrfRefused,
    LoginRequired,
    NotFound,
    Refused,
    TooLarge,
    enforce_csrf,
    login_url,
    session_secret,
)
from web.console.views import (
    audit,
    auth,
    flows,
    journal,
    movements,
    overview,
    positions,
    receipts,
    registry,
    uploads,
)

STATIC = Path(__file__).resolve().parent / "static"
MOUNT_PATH = "/console"

_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds the console's security headers (CSP without inline script, no framing, no caching) to answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *[(k, v) for k, v in _HEADERS if k not in present],
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_console_app(*, mount_path: str = MOUNT_PATH) -> FastAPI:
    """The operator console, to be mounted at ``mount_path`` in the web process."""
    settings = get_settings()
    app = FastAPI(title="pagoflow console", docs_url=None, redoc_url=None, openapi_url=None)
    for module in (auth, overview, positions, receipts, flows, movements, uploads, journal, registry, audit):
        app.include_router(module.router, dependencies=[Depends(enforce_csrf)])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        path=mount_path,
        same_site="lax",
        https_only=settings.console_https_only,
    )
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        return RedirectResponse(login_url(request), status_code=303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> HTMLResponse:
        return render(request, "error.html", title="Accesso negato", user=None, status=403, reason=exc.reason)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, _: CsrfRefused) -> HTMLResponse:
        return render(
            request,
            "error.html",
            title="Accesso negato",
            user=None,
            status=403,
            reason="Sessione scaduta o modulo non valido: riprova.",
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> HTMLResponse:
        return render(request, "error.html", title="Non trovato", user=None, status=404, reason=exc.what)

    @app.exception_handler(TooLarge)
    async def _too_large(request: Request, _: TooLarge) -> HTMLResponse:
        return render(
            request, "error.html", title="Richiesta troppo grande", user=None, status=413, reason=""
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, _: RequestValidationError) -> HTMLResponse:
        # only path parameters are validated by FastAPI here (forms are read by the views): /positions/abc
        path = request.url.path
        return render(request, "error.html", title="Non trovato", user=None, status=404, reason=path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = "Non trovato" if exc.status_code == 404 else "Operazione non consentita"
        return render(
            request, "error.html", title=title, user=None, status=exc.status_code, reason=str(exc.detail)
        )

    return app
