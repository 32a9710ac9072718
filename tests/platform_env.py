"""A running platform (web process) and sandbox wired together, for end-to-end tests over real HTTP/SOAP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from models import db as models_db
from models.settings import get_settings
from tests.conftest import Database
from tests.live_server import live_server

STATION_KEY = "station-inbound-test-key"
GPD_KEY = "gpd-test-subscription-key"
ECS = {
    "01234567897": ("Comune di Esempio", "77777777777_01", "IT21X0306909606000000123456"),
    "80001234568": ("Istituto Comprensivo Dimostrativo", "77777777777_02", "IT65X0306909606000000654321"),
    "00987654324": ("Provincia Dimostrativa", "77777777777_01", "IT58X0103014200000000111222"),
}


def station_password(id_station: str) -> str:
    """The Node password of a test station (8 to 15 characters, as the Node's schema wants)."""
    return f"pwd{id_station[-2:]}Station"


@dataclass
class PlatformEnv:
    """URLs of the platform's web process and of the sandbox, and the sandbox's live state."""

    platform_url: str
    station_url: str
    sandbox_url: str
    sandbox: Any

    def pay(self, nav: str, fiscal_code: str, **extra: Any) -> dict[str, Any]:
        """Make the sandbox PSP pay a notice; returns the sandbox's answer."""
        r = httpx.post(f"{self.sandbox_url}/sandbox/pay", json={"noticeNumber": nav, "fiscalCode": fiscal_code,
                                                               **extra}, timeout=60)
        r.raise_for_status()
        return r.json()


def sandbox_config(station_url: str, *, treasury_dir: str | None = None) -> dict[str, Any]:
    """The sandbox's view of the example registry: our stations at our URL, with the inbound key."""
    legacy_url = station_url.replace(get_settings().station_path, "/pagopa/PaPerNodo")
    stations = [{"idStation": sid, "idBroker": "77777777777", "password": station_password(sid), "url": station_url,
                 "legacyUrl": legacy_url, "version": 2, "headers": {"Ocp-Apim-Subscription-Key": STATION_KEY}}
                for sid in ("77777777777_01", "77777777777_02")]
    creditors = [{"fiscalCode": fc, "name": name, "idStation": sid, "idBroker": "77777777777", "iban": iban,
                  "treasuryFormat": "opi", "treasuryDir": treasury_dir}
                 for fc, (name, sid, iban) in ECS.items()]
    return {"replace": True, "stations": stations, "creditors": creditors, "subscriptionKeys": [GPD_KEY],
            "node": {"verifyTimeout": 5, "getPaymentTimeout": 5, "sendRtTimeout": 10, "sendRtAttempts": 3,
                     "sendRtBackoff": 0.05}}


@contextmanager
def platform_and_sandbox(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformEnv]:
    """Start the web process on ``db`` and a configured sandbox; stop both afterwards."""
    from sandbox.server import start_in_thread
    from web.app import create_app

    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.setenv("PAGOFLOW_STATION_INBOUND_KEY", STATION_KEY)
    monkeypatch.setenv("PAGOFLOW_GPD_SUBSCRIPTION_KEY", GPD_KEY)
    for sid, variable in (("77777777777_01", "PAGOFLOW_STATION_01_PASSWORD"),
                          ("77777777777_02", "PAGOFLOW_STATION_02_PASSWORD")):
        monkeypatch.setenv(variable, station_password(sid))
    clear_platform_caches()
    sandbox = start_in_thread(seed=7)
    try:
        with live_server(create_app()) as url:
            station_url = url + get_settings().station_path
            httpx.put(f"{sandbox.url}/sandbox/config", json=sandbox_config(station_url), timeout=10).raise_for_status()
            yield PlatformEnv(platform_url=url, station_url=station_url, sandbox_url=sandbox.url, sandbox=sandbox)
    finally:
        sandbox.stop()
        clear_platform_caches()


def clear_platform_caches() -> None:
    """Forget the settings, engine, registry and portal settings read so far (after the environment changed)."""
    from web.pagamenti import get_portal_settings
    from web.station import registry_cache

    get_settings.cache_clear()
    models_db.get_engine.cache_clear()
    registry_cache.clear()
    get_portal_settings.cache_clear()


@contextmanager
def web_on(database: Database, *, env: dict[str, str | None], registry: Any) -> Iterator[tuple[str, Any]]:
    """The web process (API, console and station) in a thread on ``database``, emptied first; its URL and app.

    ``env`` is set for the block (None removes a variable); ``registry(session)`` fills the registry. Every
    cache that read the settings is cleared before and after, so the next test starts from its own.
    """
    from web.app import create_app

    database.truncate()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        clear_platform_caches()
        with database.session() as session:
            registry(session)
            session.commit()
        try:
            app = create_app()
            with live_server(app) as url:
                yield url, app
        finally:
            clear_platform_caches()
