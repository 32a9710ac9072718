"""The platform and the sandbox wired for payments started on the EC's portal (Checkout and legacy RPT/RT)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select

from connectors.pagopa.config import get_endpoints
from models.positions import Position
from models.registry import Creditor, Station
from rules.positions import PendenzaPut, validate_position
from store.positions import load_caller, load_registry_view, upsert_positions
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.platform_env import STATION_KEY, PlatformEnv, platform_and_sandbox, station_password
from web.pagamenti import get_portal_settings, pagamento_prefix, rt_legacy_prefix

BROKER = "77777777777"
STATION_01, STATION_02 = "77777777777_01", "77777777777_02"
ISTITUTO, COMUNE = "80001234568", "01234567897"
ISTITUTO_IBAN = "IT65X0306909606000000654321"
STATION_02_PASSWORD = station_password(STATION_02)
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
SCUOLA = ("gestionale-scuola", "demo-scuola-password")


@contextmanager
def portal_env(
    db: Database, monkeypatch: pytest.MonkeyPatch, *, checkout: dict[str, bool]
) -> Iterator[PlatformEnv]:
    """The example registry with each station's ``checkout`` flag as given, the platform and the sandbox.

    Station 02 (the Istituto) is a legacy RPT station: the sandbox delivers its RTs to our paaInviaRT.
    """
    with db.session() as s:
        load_example_registry(s)
        for station in s.exec(select(Station)).all():
            station.checkout = checkout.get(station.id_stazione, station.checkout)
            s.add(station)
        s.commit()
    get_portal_settings.cache_clear()
    with platform_and_sandbox(db, monkeypatch) as env:
        for name, value in {
            "PAGOFLOW_PAGOPA_NODO_URL": env.sandbox_url + "/nodo/nodoPerPa",
            "PAGOFLOW_PAGOPA_CHECKOUT_URL": env.sandbox_url + "/checkout/ec/v1",
            "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0",
            "PAGOFLOW_PAGOPA_TIMEOUT_SECONDS": "10",
        }.items():
            monkeypatch.setenv(name, value)
        get_endpoints.cache_clear()
        station = {
            "idStation": STATION_02,
            "idBroker": BROKER,
            "password": STATION_02_PASSWORD,
            "url": env.station_url,
            "legacyUrl": env.platform_url + rt_legacy_prefix(),
            "version": 2,
            "headers": {"Ocp-Apim-Subscription-Key": STATION_KEY},
        }
        httpx.put(
            f"{env.sandbox_url}/sandbox/config", json={"stations": [station]}, timeout=10
        ).raise_for_status()
        try:
            yield env
        finally:
            get_endpoints.cache_clear()


def api(env: PlatformEnv, auth: tuple[str, str] | None) -> httpx.Client:
    """A client of the API Pagamento."""
    return httpx.Client(base_url=env.platform_url + pagamento_prefix(), auth=auth, timeout=60)


def school_body(amount: str = "18.00", *, causale: str = "Uscita didattica") -> dict[str, Any]:
    """A GITA position of the Istituto (station 02, legacy RPT)."""
    return {
        "idTipoPendenza": "GITA",
        "idDominio": ISTITUTO,
        "causale": causale,
        "soggettoPagatore": {
            "tipo": "F",
            "identificativo": "VRDLGU80A01H501Z",
            "anagrafica": "Luigi Verdi",
            "email": "luigi.verdi@example.it",
        },
        "importo": amount,
        "dataScadenza": (date.today() + timedelta(days=30)).isoformat(),
        "voci": [
            {
                "idVocePendenza": "GITA-1",
                "importo": amount,
                "descrizione": "Quota gita",
                "ibanAccredito": ISTITUTO_IBAN,
                "tipoContabilita": "CAPITOLO",
                "codiceContabilita": "2020",
            }
        ],
    }


def make_school_position(
    db: Database, id_pendenza: str, amount: str = "18.00", *, scenario: str | None = None
) -> Position:
    """A position of A2A-SCUOLA; ``scenario`` ('01', '02') puts its IUV in the sandbox's 99CC… space."""
    with db.session() as s:
        creditor = s.exec(select(Creditor).where(Creditor.id_dominio == ISTITUTO)).one()
        saved = (creditor.segregation_code, creditor.iuv_prefix)
        if scenario:
            creditor.segregation_code, creditor.iuv_prefix = "99", scenario
            s.add(creditor)
            s.flush()
        caller = load_caller(s, id_a2a="A2A-SCUOLA")
        assert caller is not None
        data = validate_position(
            PendenzaPut.model_validate(school_body(amount)),
            id_a2a="A2A-SCUOLA",
            id_pendenza=id_pendenza,
            caller=caller,
            registry=load_registry_view(s),
        )
        (result,) = upsert_positions(s, batch=[data])
        creditor.segregation_code, creditor.iuv_prefix = saved
        s.add(creditor)
        s.commit()
        assert result.position is not None
        return result.position
