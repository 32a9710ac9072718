"""Notifications to the EC applications (GovPay API Ente v2): ``PUT {url}/ricevute/{dominio}/{iuv}/{id}``.

The body is the receipt in the Ente v2 spirit, built from the stored receipt, its collections and position::

    {"idDominio": "01234567897", "iuv": "01000000000000144", "idRicevuta": "…",
     "dominio": {"idDominio": "01234567897", "ragioneSociale": "Comune di Esempio"},
     "importo": 25.0, "commissioni": 1.0, "dataPagamento": "2026-07-01T10:00:00+00:00", "esito": "OK",
     "stato": "ACCEPTED" | "DUPLICATE", "standIn": false, "fonte": "PUSH" | "PULL",
     "psp": {"idPsp": "BCITITMM", "ragioneSociale": "Banca Sandbox", "idCanale": "BCITITMM_01"},
     "versante": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
     "riscossioni": [{"indice": 1, "idDominio": "…", "iur": null, "importo": 25.0, "ibanAccredito": "…",
                      "stato": "RISCOSSA", "idVocePendenza": "V1"}],
     "pendenza": {"idA2A", "idPendenza", "idTipoPendenza", "numeroAvviso", "iuv", "causale", "importo",
                  "stato", "dataScadenza", "soggettoPagatore": {"tipo", "identificativo", "anagrafica"},
                  "voci": [{"idVocePendenza", "indice", "idDominio", "descrizione", "importo", "stato"}]},
     "rt": {"formato": "XML" | "JSON", "contenuto": "<the receipt as pagoPA sent it>"}}

Amounts are JSON numbers with two decimals, as in the API Pendenze. ``pendenza`` is null for a receipt of an
unknown notice; ``rt`` is present when the original message was kept. There is no ``rpt`` in Modello Unico.

Authentication per application (``notification_auth``): NONE; BASIC with ``notification_user`` and the secret;
API_KEY sends ``X-Api-Key: <secret>`` (and ``X-Api-Id: <notification_user>`` when set), the same header pair
our API accepts; BEARER sends ``Authorization: Bearer <secret>``. The secret comes from
``notification_secret_ref`` and is registered for redaction. A 2xx answer is a delivery; anything else
(4xx, 5xx, timeout, connection error, a secret that cannot be resolved) is a failure to retry later.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.journal import EventJournal
from connectors.secrets import resolve_secret
from models.journal import Outcome, Role
from models.payments import Collection, Receipt
from models.positions import Position, PositionItem
from models.registry import Application
from rules.positions import visible_state

log = logging.getLogger(__name__)

COMPONENT = "ente"
OPERATION = "notificaRicevuta"
API_ID_HEADER = "X-Api-Id"
API_KEY_HEADER = "X-Api-Key"
_ERROR_LIMIT = 500


class NotificationAuth(StrEnum):
    """How we authenticate to an application's notification endpoint."""

    NONE = "NONE"
    BASIC = "BASIC"
    API_KEY = "API_KEY"
    BEARER = "BEARER"


class AppEndpoint(BaseModel):
    """Where and how one application receives notifications (the secret already resolved)."""

    model_config = ConfigDict(frozen=True)

    id_a2a: str
    url: str
    auth: NotificationAuth = NotificationAuth.NONE
    user: str | None = None
    secret: SecretStr | None = None


class RicevutaMessage(BaseModel):
    """One receipt notification: its path keys and JSON body."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    iuv: str
    receipt_id: str
    body: dict[str, Any]


class Delivery(BaseModel):
    """What one delivery did: delivered (2xx) or not, with the HTTP status and the error."""

    model_config = ConfigDict(frozen=True)

    delivered: bool
    status: int | None = None
    error: str | None = None


def endpoint_for(application: Application) -> AppEndpoint:
    """The application's endpoint with its secret resolved (SecretNotFoundError, ValueError if unusable)."""
    if not application.notification_url:
        raise ValueError(f"application {application.id_a2a} has no notification endpoint")
    auth = NotificationAuth(application.notification_auth or "NONE")
    secret = resolve_secret(application.notification_secret_ref) if auth != NotificationAuth.NONE else None
    if auth != NotificationAuth.NONE and secret is None:
        raise ValueError(f"application {application.id_a2a}: auth {auth} needs notification_secret_ref")
    if auth == NotificationAuth.BASIC and not application.notification_user:
        raise ValueError(f"application {application.id_a2a}: BASIC auth needs notification_user")
    return AppEndpoint(
        id_a2a=application.id_a2a,
        url=application.notification_url,
        auth=auth,
        user=application.notification_user,
        secret=secret,
    )


def auth_headers(endpoint: AppEndpoint) -> dict[str, str]:
    """The headers that authenticate us to the endpoint."""
    secret = endpoint.secret.get_secret_value() if endpoint.secret is not None else ""
    if endpoint.auth == NotificationAuth.BASIC:
        token = base64.b64encode(f"{endpoint.user or ''}:{secret}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    if endpoint.auth == NotificationAuth.API_KEY:
        headers = {API_KEY_HEADER: secret}
        if endpoint.user:
            headers[API_ID_HEADER] = endpoint.user
        return headers
    if endpoint.auth == NotificationAuth.BEARER:
        return {"Authorization": f"Bearer {secret}"}
    return {}


def ricevuta_path(*, id_dominio: str, iuv: str, receipt_id: str) -> str:
    """``/ricevute/{idDominio}/{iuv}/{idRicevuta}`` with each segment escaped."""
    return "/ricevute/" + "/".join(quote(part, safe="") for part in (id_dominio, iuv, receipt_id))


def _money(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def pendenza_summary(position: Position, *, items: Sequence[PositionItem], today: date) -> dict[str, Any]:
    """The position as the notification carries it (a subset of the API Pendenze shape)."""
    return {
        "idA2A": position.id_a2a,
        "idPendenza": position.id_pendenza,
        "idTipoPendenza": position.debt_type,
        "numeroAvviso": position.nav,
        "iuv": position.iuv,
        "causale": position.causale,
        "importo": _money(position.amount),
        "stato": visible_state(state=position.state, due_date=position.due_date, today=today),
        "dataScadenza": position.due_date.isoformat() if position.due_date else None,
        "annoRiferimento": position.year,
        "cartellaPagamento": position.cartella,
        "datiAllegati": position.attached_data,
        "soggettoPagatore": {
            "tipo": position.debtor_type,
            "identificativo": position.debtor_id,
            "anagrafica": position.debtor_name,
        },
        "voci": [
            {
                "idVocePendenza": i.id_voce,
                "indice": i.item_index,
                "idDominio": i.id_dominio,
                "descrizione": i.description,
                "importo": _money(i.amount),
                "stato": i.state,
                "codiceContabilita": i.accounting_code,
                "datiAllegati": i.attached_data,
            }
            for i in items
        ],
    }


def ricevuta_message(
    *,
    receipt: Receipt,
    position: Position | None,
    items: Sequence[PositionItem],
    collections: Sequence[Collection],
    creditor_name: str | None,
    today: date,
) -> RicevutaMessage:
    """The notification of a stored receipt (see the module docstring for the shape)."""
    voci = {i.id: i.id_voce for i in items}
    rt: dict[str, Any] | None = None
    if receipt.payload:
        rt = {"formato": receipt.payload_format or "XML", "contenuto": receipt.payload}
    body: dict[str, Any] = {
        "idDominio": receipt.id_dominio,
        "iuv": receipt.iuv,
        "idRicevuta": receipt.receipt_id,
        "dominio": {"idDominio": receipt.id_dominio, "ragioneSociale": creditor_name},
        "numeroAvviso": receipt.nav,
        "importo": _money(receipt.amount),
        "commissioni": _money(receipt.fee),
        "dataPagamento": receipt.payment_at.isoformat() if receipt.payment_at else None,
        "esito": receipt.outcome,
        "stato": receipt.state,
        "standIn": receipt.standin,
        "fonte": receipt.source,
        "psp": {
            "idPsp": receipt.psp_id,
            "ragioneSociale": receipt.psp_name,
            "idCanale": receipt.channel_id,
            "tipoVersamento": receipt.payment_method,
        },
        "versante": {"identificativo": receipt.payer_id, "anagrafica": receipt.payer_name},
        "riscossioni": [
            {
                "indice": c.transfer_index,
                "idDominio": c.id_dominio,
                "iur": c.iur,
                "importo": _money(c.amount),
                "ibanAccredito": c.iban,
                "stato": c.state,
                "idVocePendenza": voci.get(c.item_id),
            }
            for c in collections
        ],
        "pendenza": pendenza_summary(position, items=items, today=today) if position is not None else None,
    }
    if rt is not None:
        body["rt"] = rt
    return RicevutaMessage(
        id_dominio=receipt.id_dominio, iuv=receipt.iuv, receipt_id=receipt.receipt_id, body=body
    )


class NotificationClient:
    """Delivers notifications to any application endpoint; the httpx transport is injected (or built)."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        journal: EventJournal | None = None,
    ) -> None:
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._journal = journal or EventJournal()

    def __enter__(self) -> NotificationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def send_receipt(self, *, endpoint: AppEndpoint, message: RicevutaMessage) -> Delivery:
        """PUT the receipt to ``{url}/ricevute/…``; never raises for the peer's faults."""
        url = endpoint.url.rstrip("/") + ricevuta_path(
            id_dominio=message.id_dominio, iuv=message.iuv, receipt_id=message.receipt_id
        )
        return self._call(
            OPERATION,
            "PUT",
            url,
            endpoint=endpoint,
            body=message.body,
            keys={
                "id_a2a": endpoint.id_a2a,
                "id_dominio": message.id_dominio,
                "iuv": message.iuv,
                "receipt_id": message.receipt_id,
            },
        )

    def _call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        endpoint: AppEndpoint,
        body: dict[str, Any],
        keys: dict[str, Any],
    ) -> Delivery:
        """One request: timed, journaled, classified (2xx delivered; anything else retried later)."""
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json", **auth_headers(endpoint)}
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            ex.request = f"{method} {url}\n".encode() + content
            try:
                response = self._http.request(method, url, content=content, headers=headers)
            except httpx.TimeoutException as exc:
                ex.outcome, ex.error = Outcome.FAIL, f"timeout: {exc}"
                return Delivery(delivered=False, error=ex.error[:_ERROR_LIMIT])
            except httpx.HTTPError as exc:
                ex.outcome, ex.error = Outcome.FAIL, f"{type(exc).__name__}: {exc}"
                return Delivery(delivered=False, error=ex.error[:_ERROR_LIMIT])
            ex.http_status, ex.response = response.status_code, response.content
            if response.is_success:
                return Delivery(delivered=True, status=response.status_code)
            error = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code < 500:
                ex.ko(fault_code=f"HTTP_{response.status_code}", error=error)
            else:
                ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, f"HTTP_{response.status_code}", error
            return Delivery(delivered=False, status=response.status_code, error=error[:_ERROR_LIMIT])
