"""GovPay-shaped error answers: {categoria, codice, descrizione, dettaglio}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rules.positions import BusinessError


class ApiError(Exception):
    """An error answer with its HTTP status and GovPay category/code."""

    def __init__(self, status: int, categoria: str, codice: str, descrizione: str,
                 dettaglio: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.categoria, self.codice = status, categoria, codice
        self.descrizione, self.dettaglio, self.headers = descrizione, dettaglio, headers
        super().__init__(descrizione)


def not_found(what: str) -> ApiError:
    """404 for an unknown resource."""
    return ApiError(404, "RICHIESTA", "404000", f"{what} inesistente")


def forbidden(detail: str) -> ApiError:
    """403 for a caller that may not do this."""
    return ApiError(403, "AUTORIZZAZIONE", "403000", "Operazione non autorizzata", detail)


def _body(categoria: str, codice: str, descrizione: str, dettaglio: str | None) -> dict[str, Any]:
    return {"categoria": categoria, "codice": codice, "descrizione": descrizione, "dettaglio": dettaglio}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or ".".join(map(str, loc))


def install_error_handlers(app: FastAPI) -> None:
    """Map validation, business and authorisation errors onto GovPay's error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.categoria, exc.codice, exc.descrizione, exc.dettaglio),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _syntax(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_loc(tuple(e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]
        return JSONResponse(_body("RICHIESTA", "SINTASSI", "Richiesta non valida", "; ".join(problems)),
                            status_code=400)

    @app.exception_handler(BusinessError)
    async def _business(_: Request, exc: BusinessError) -> JSONResponse:
        detail = f"{exc.field}: {exc.message}" if exc.field else exc.message
        return JSONResponse(_body("RICHIESTA", exc.code, exc.message, detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON or not UTF-8, unknown route, wrong method) in
        # GovPay's shape rather than {"detail": ...}; the status and headers (Allow, …) are kept.
        categoria = "AUTORIZZAZIONE" if exc.status_code in (401, 403) else "RICHIESTA"
        codice = "SINTASSI" if exc.status_code in (400, 422) else f"{exc.status_code}000"
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(_body(categoria, codice, detail, detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(PermissionError)
    async def _forbidden(_: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse(_body("AUTORIZZAZIONE", "403000", "Operazione non autorizzata", str(exc)),
                            status_code=403)
