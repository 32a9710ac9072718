"""The web process: the GovPay-compatible REST API (and, later, the SOAP station) in one FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from models.settings import get_settings
from web.console import MOUNT_PATH as CONSOLE_PATH
from web.console import create_console_app
from web.errors import install_error_handlers
from web.limits import BodySizeLimit
from web.pagamenti import pagamento_prefix, rt_legacy_prefix
from web.pagamenti import router as pagamenti_router
from web.pendenze import router as pendenze_router
from web.ragioneria import ragioneria_prefix, router as ragioneria_router
from web.ragioneria_riconciliazioni import router as riconciliazioni_router
from web.rt_legacy import router as rt_legacy_router
from web.station import router as station_router


def create_app() -> FastAPI:
    """The application, with the API Pendenze mounted under the configured base path."""
    settings = get_settings()
    base = "/" + settings.api_base_path.strip("/") if settings.api_base_path.strip("/") else ""
    app = FastAPI(title="pagoflow", version="0.1.0", openapi_url="/openapi.json",
                  description="GovPay-compatible API Pendenze v2 and the pagoPA station of pagoflow.")
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, paths=(base or "/", ragioneria_prefix(), pagamento_prefix()),
                       soap_paths=("/" + settings.station_path.strip("/"), rt_legacy_prefix()))
    app.include_router(pendenze_router, prefix=base, tags=["pendenze"])
    app.include_router(ragioneria_router, prefix=ragioneria_prefix(), tags=["ragioneria"])
    app.include_router(riconciliazioni_router, prefix=ragioneria_prefix(), tags=["ragioneria"])
    app.include_router(station_router, prefix="/" + settings.station_path.strip("/"), tags=["station"])
    app.include_router(pagamenti_router, prefix=pagamento_prefix(), tags=["pagamenti"])
    app.include_router(rt_legacy_router, prefix=rt_legacy_prefix(), tags=["station"])
    app.mount(CONSOLE_PATH, create_console_app(mount_path=CONSOLE_PATH), name="console")
    return app
