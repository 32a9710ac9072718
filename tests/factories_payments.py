"""Test helpers for receipts and notifications: scenario notices, stored receipts, a recording application."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from sqlmodel import select

from models import db as models_db
from models.payments import ReceiptSource
from models.positions import Position
from models.registry import Application
from models.settings import get_settings
from rules.receipts import ReceiptIn, ReceiptTransfer
from store.payments import ReceiptOutcome, accept_receipt
from tests.conftest import Database

COMUNE = "01234567897"
IBAN = "IT21X0306909606000000123456"
NOTIFY_SECRET_ENV = "PAGOFLOW_NOTIFY_TRIBUTI_PASSWORD"


def scenario_notice(scenario: str, serial: int) -> tuple[str, str]:
    """(IUV, NAV) of a sandbox scenario notice (aux digit 3, segregation code 99, scenario ``CC``)."""
    base = f"99{scenario}{serial:011d}"
    iuv = base + f"{int('3' + base) % 93:02d}"
    return iuv, "3" + iuv


def renumber(db: Database, position: Position, *, iuv: str, nav: str) -> Position:
    """Give a stored position another IUV/NAV (to make it a sandbox scenario notice)."""
    with db.session() as s:
        row = s.get(Position, position.id)
        assert row is not None
        row.iuv, row.nav = iuv, nav
        s.add(row)
        s.commit()
        s.refresh(row)
        return row


def store_receipt(
    db: Database,
    position: Position,
    *,
    receipt_id: str,
    paid_at: datetime,
    source: ReceiptSource = ReceiptSource.PUSH,
) -> ReceiptOutcome:
    """Accept a receipt paying the position in full (one transfer to the Comune), as the station would."""
    receipt = ReceiptIn(
        receipt_id=receipt_id,
        id_pa=COMUNE,
        fiscal_code=COMUNE,
        notice_number=position.nav or "",
        iuv=position.iuv or "",
        outcome="OK",
        amount=position.amount,
        transfers=(
            ReceiptTransfer(
                id_transfer=1,
                amount=position.amount,
                fiscal_code=COMUNE,
                iban=IBAN,
                remittance=f"/RFB/{position.iuv}/{position.amount}",
                category="9/0101108TS/",
            ),
        ),
        psp_id="BCITITMM",
        psp_name="Banca Sandbox",
        channel_id="BCITITMM_01",
        payment_method="creditCard",
        payer_id="RSSMRA80A01H501U",
        payer_name="Mario Rossi",
        fee=Decimal("1.00"),
        payment_at=paid_at,
        payload="<paSendRTV2Request/>",
        payload_format="XML",
    )
    with db.session() as s:
        outcome = accept_receipt(s, receipt=receipt, source=source, now=paid_at)
        s.commit()
    return outcome


def use_database(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the platform's settings (and so every task) at the test database."""
    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    get_settings.cache_clear()
    models_db.get_engine.cache_clear()


def set_notification_endpoint(
    db: Database,
    *,
    id_a2a: str,
    url: str | None,
    auth: str = "BASIC",
    user: str | None = "pagoflow",
    secret_ref: str | None = f"env:{NOTIFY_SECRET_ENV}",
) -> None:
    """Configure where an application receives notifications."""
    with db.session() as s:
        app = s.exec(select(Application).where(Application.id_a2a == id_a2a)).one()
        app.notification_url, app.notification_auth = url, auth
        app.notification_user, app.notification_secret_ref = user, secret_ref
        s.add(app)
        s.commit()


@dataclass
class Recorder:
    """A stand-in for an application's notification endpoint: records every call, answers as scripted."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)  # statuses answered first, then 200
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        """The FastAPI app (GovPay API Ente v2 path)."""
        api = FastAPI()

        @api.put("/govpay-ente/ricevute/{id_dominio}/{iuv}/{id_ricevuta}")
        async def ricevuta(id_dominio: str, iuv: str, id_ricevuta: str, request: Request) -> Response:
            body = await request.json()
            if self.delay:
                await asyncio.sleep(self.delay)
            with self.lock:
                status = self.script.pop(0) if self.script else 200
                self.calls.append(
                    {
                        "path": (id_dominio, iuv, id_ricevuta),
                        "headers": dict(request.headers),
                        "body": body,
                        "status": status,
                    }
                )
            return Response(
                status_code=status,
                content=b"{}" if status < 300 else b'{"errore": "scripted"}',
                media_type="application/json",
            )

        return api

    def paths(self) -> list[tuple[str, str, str]]:
        """The (idDominio, iuv, idRicevuta) of every call, in order."""
        with self.lock:
            return [c["path"] for c in self.calls]
