"""GovPay-compatible API Pagamento v2: a portal starts a payment of 1–5 notices (Checkout cart or RPT cart).

A session is the set of ``PaymentAttempt`` rows sharing ``cart_id`` (our payment id, one row per notice); its
state is derived from those attempts and their positions (``rules.pagamenti.session_state``). The EC's
station decides the route: ``checkout`` → a Checkout cart (the outcome then comes through the station),
``legacy_rpt`` → RPTs sent with ``nodoInviaRPT``/``nodoInviaCarrelloRPT`` (the RTs come to ``paaInviaRT``).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import Session, col, select

from connectors.pagopa.checkout import CartNotice, CartRequest, CheckoutClient, ReturnUrls
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import PagopaError
from connectors.pagopa.nodo_rpt import NodoRptClient, RptRefusedError, RptToSend, rpt_rt_errors
from connectors.secrets import SecretNotFoundError, resolve_secret
from models.payments import AttemptKind, AttemptState, PaymentAttempt
from models.positions import Position
from models.registry import Creditor, DebtType, Station
from models.types import utcnow
from rules.pagamenti import CHECKOUT, MAX_CART, RPT, NoticeAttempt, payment_mode, session_state
from rules.positions import BusinessError, PendenzaPut, SoggettoPagatore, validate_position, visible_state
from rules.rpt import ROME, RptError, RptSubject, build_rpt
from rules.station import payability_fault
from store.positions import get_position, get_position_by_nav, items_of, load_registry_view, upsert_positions
from store.rpt import (
    create_attempts,
    new_payment_id,
    open_rpt_positions,
    receipts_of,
    record_sent,
    rpt_data_for,
    session_attempts,
    station_attempts,
)
from web.auth import Principal
from web.errors import ApiError, forbidden, not_found
from web.pendenze import PrincipalDep, SessionDep

router = APIRouter()


class PortalSettings(BaseSettings):
    """Where the API Pagamento and the paaInviaRT endpoint listen, and where debtors go back by default."""

    model_config = SettingsConfigDict(env_prefix="PAGOFLOW_", env_file=".env", extra="ignore")

    pagamento_base_path: str = Field(
        default="/api/pagamento/v2", description="Where the GovPay-compatible API Pagamento v2 is mounted."
    )
    rt_legacy_path: str = Field(
        default="/pagopa/PaPerNodo",
        description="Where paaInviaRT (PaPerNodo SOAP) listens: the station's RT URL.",
    )
    portal_return_url: str = Field(
        default="http://127.0.0.1:8000/pagamento-concluso",
        description="Where Checkout sends the debtor back when the portal names no urlRitorno.",
    )


@lru_cache(maxsize=1)
def get_portal_settings() -> PortalSettings:
    """The process-wide portal settings (cached; tests clear it with get_portal_settings.cache_clear())."""
    return PortalSettings()


def pagamento_prefix() -> str:
    """The mount point of the API Pagamento ('' for the root)."""
    path = get_portal_settings().pagamento_base_path.strip("/")
    return "/" + path if path else ""


def rt_legacy_prefix() -> str:
    """The mount point of paaInviaRT."""
    return "/" + get_portal_settings().rt_legacy_path.strip("/")


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)


class NuovoPagamento(_In):
    """Body of POST /pagamenti: 1–5 positions, by key, by notice or new, and how the debtor comes back."""

    pendenze: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_CART)
    urlRitorno: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=400)
    soggettoVersante: SoggettoPagatore | None = None
    autenticazioneSoggetto: Literal["CNS", "USR", "OTH", "N/A"] = "N/A"
    email: str | None = Field(default=None, max_length=256, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# --- resolving the cart ----------------------------------------------------------------------------------


def _syntax(detail: str) -> ApiError:
    return ApiError(400, "RICHIESTA", "SINTASSI", "Richiesta non valida", detail)


def _may_pay(who: Principal, position: Position) -> None:
    if who.kind == "application":
        assert who.caller is not None
        if position.id_a2a != who.name and not who.caller.may_use(position.id_dominio, position.debt_type):
            raise forbidden(
                f"l'applicazione {who.name} non puo' pagare la pendenza {position.id_dominio}/{position.nav}"
            )
        return
    if who.role == "READONLY":
        raise forbidden("ruolo in sola lettura")
    if not who.can_see(position.id_dominio):
        raise forbidden(f"l'operatore {who.name} non e' abilitato al dominio {position.id_dominio}")


def _may_read(who: Principal, position: Position) -> None:
    if who.kind == "application":
        assert who.caller is not None
        if position.id_a2a != who.name and not who.caller.may_use(position.id_dominio, position.debt_type):
            raise forbidden(f"l'applicazione {who.name} non puo' vedere questo pagamento")
    elif not who.can_see(position.id_dominio):
        raise forbidden(f"l'operatore {who.name} non e' abilitato al dominio {position.id_dominio}")


def _resolve(session: Session, who: Principal, item: dict[str, Any], index: int) -> Position:
    where = f"pendenze[{index}]"
    if "voci" in item:
        if who.kind != "application" or who.caller is None:
            raise forbidden("solo le applicazioni possono caricare pendenze")
        id_a2a, id_pendenza = item.get("idA2A"), item.get("idPendenza")
        if not (isinstance(id_a2a, str) and id_a2a and isinstance(id_pendenza, str) and id_pendenza):
            raise _syntax(f"{where}: idA2A e idPendenza obbligatori per una nuova pendenza")
        try:
            body = PendenzaPut.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise _syntax(f"{where}.{loc}: {first['msg']}") from exc
        data = validate_position(
            body,
            id_a2a=id_a2a,
            id_pendenza=id_pendenza,
            caller=who.caller,
            registry=load_registry_view(session),
        )
        (result,) = upsert_positions(session, batch=[data])
        if result.error is not None:
            raise result.error
        assert result.position is not None
        return result.position
    if item.get("idDominio") and item.get("numeroAvviso"):
        found = get_position_by_nav(session, id_dominio=str(item["idDominio"]), nav=str(item["numeroAvviso"]))
        ref = f"{item['idDominio']}/{item['numeroAvviso']}"
    elif item.get("idA2A") and item.get("idPendenza"):
        found = get_position(session, id_a2a=str(item["idA2A"]), id_pendenza=str(item["idPendenza"]))
        ref = f"{item['idA2A']}/{item['idPendenza']}"
    else:
        raise _syntax(
            f"{where}: indicare idA2A e idPendenza, idDominio e numeroAvviso, oppure una nuova pendenza"
        )
    if found is None:
        raise BusinessError("PAG_001", f"Pendenza {ref} inesistente", field=where)
    return found


_PAYABILITY = {
    "PAA_PAGAMENTO_ANNULLATO": ("PAG_002", "risulta annullata"),
    "PAA_PAGAMENTO_DUPLICATO": ("PAG_003", "risulta gia' pagata"),
    "PAA_PAGAMENTO_SCADUTO": ("PAG_004", "risulta scaduta"),
    "PAA_PAGAMENTO_SCONOSCIUTO": ("PAG_001", "e' sconosciuta"),
}


def _check_payable(session: Session, positions: list[Position], today: date) -> None:
    seen: set[tuple[str, str | None]] = set()
    # an RPT still in the debtor's hands: a second one could be paid too (GovPay's "pagamento in corso")
    in_progress = open_rpt_positions(session, position_ids=[p.id or 0 for p in positions], now=utcnow())
    for i, p in enumerate(positions):
        if (p.id_dominio, p.nav) in seen:
            raise BusinessError(
                "PAG_007",
                f"La pendenza {p.id_dominio}/{p.nav} compare due volte nel carrello",
                field=f"pendenze[{i}]",
            )
        seen.add((p.id_dominio, p.nav))
        fault = payability_fault(state=p.state, due_date=p.due_date, today=today)
        if fault:
            code, what = _PAYABILITY[fault]
            raise BusinessError(
                code, f"La pendenza {p.id_a2a}/{p.id_pendenza} ({p.nav}) {what}", field=f"pendenze[{i}]"
            )
        if p.id in in_progress:
            raise BusinessError(
                "PAG_010",
                f"La pendenza {p.id_a2a}/{p.id_pendenza} ({p.nav}) ha un pagamento in corso",
                field=f"pendenze[{i}]",
            )


def _route(session: Session, positions: list[Position]) -> tuple[str, Station, dict[str, Creditor]]:
    creditors = {
        c.id_dominio: c
        for c in session.exec(
            select(Creditor).where(col(Creditor.id_dominio).in_({p.id_dominio for p in positions}))
        ).all()
    }
    stations = {
        s.id_stazione: s
        for s in session.exec(
            select(Station).where(col(Station.id_stazione).in_({c.id_stazione for c in creditors.values()}))
        ).all()
    }
    modes = set()
    for i, p in enumerate(positions):
        station = stations[creditors[p.id_dominio].id_stazione]
        mode = (
            payment_mode(checkout=station.checkout, legacy_rpt=station.legacy_rpt)
            if station.enabled
            else None
        )
        if mode is None:
            raise BusinessError(
                "PAG_005",
                f"Il dominio {p.id_dominio} non accetta pagamenti avviati dal portale",
                field=f"pendenze[{i}]",
            )
        modes.add(mode)
    first = stations[creditors[positions[0].id_dominio].id_stazione]
    if len(modes) > 1:
        raise BusinessError(
            "PAG_006", "Il carrello unisce enti pagati con Checkout e con RPT", field="pendenze"
        )
    if modes == {RPT} and any(creditors[p.id_dominio].id_stazione != first.id_stazione for p in positions):
        raise BusinessError("PAG_006", "Un carrello di RPT appartiene a una sola stazione", field="pendenze")
    return modes.pop(), first, creditors


def _failed(payment_id: str, exc: PagopaError, what: str) -> ApiError:
    return ApiError(
        502,
        "PAGOPA",
        exc.code or "PAGOPA_ERRORE",
        what,
        f"{exc.reason}",
        headers={"Location": f"{pagamento_prefix()}/pagamenti/{payment_id}"},
    )


# --- the two routes --------------------------------------------------------------------------------------


def _return_urls(base: str | None, payment_id: str) -> ReturnUrls:
    target = base or get_portal_settings().portal_return_url
    sep = "&" if "?" in target else "?"

    def url(esito: str) -> str:
        return f"{target}{sep}{urlencode({'idPagamento': payment_id, 'esito': esito})}"

    return ReturnUrls(returnOkUrl=url("OK"), returnCancelUrl=url("ANNULLATO"), returnErrorUrl=url("ERRORE"))


def _start_checkout(
    session: Session,
    *,
    positions: list[Position],
    station: Station,
    creditors: dict[str, Creditor],
    body: NuovoPagamento,
    payment_id: str,
) -> tuple[str, str]:
    attempts = create_attempts(session, positions=positions, kind=AttemptKind.CHECKOUT, payment_id=payment_id)
    session.commit()  # the attempts exist before Checkout hears of the cart
    cart = CartRequest(
        paymentNotices=[
            CartNotice(
                noticeNumber=p.nav or "",
                fiscalCode=p.id_dominio,
                amount=int((p.amount * 100).to_integral_value()),
                companyName=creditors[p.id_dominio].name[:140],
                description=p.causale[:140],
            )
            for p in positions
        ],
        returnUrls=_return_urls(body.urlRitorno, payment_id),
        idCart=attempts[0].payment_note,
        emailNotice=body.email or next((p.debtor_email for p in positions if p.debtor_email), None),
    )
    try:
        with CheckoutClient.from_settings(subscription_key_ref=station.api_key_ref) as checkout:
            redirect = checkout.create_cart(cart)
    except PagopaError as exc:
        record_sent(session, attempts=attempts, state=AttemptState.FAILED, error=str(exc))
        session.commit()
        raise _failed(payment_id, exc, "Checkout ha rifiutato il carrello") from exc
    record_sent(session, attempts=attempts, session_id=redirect.cart_id, redirect_url=redirect.location)
    return redirect.location, redirect.cart_id


def _start_rpt(
    session: Session,
    *,
    positions: list[Position],
    station: Station,
    creditors: dict[str, Creditor],
    body: NuovoPagamento,
    payment_id: str,
) -> tuple[str, str]:
    for i, p in enumerate(positions):
        if p.iuv is None:
            raise BusinessError("PAG_009", f"La pendenza {p.nav} non ha uno IUV", field=f"pendenze[{i}]")
    items = items_of(session, position_ids=[p.id or 0 for p in positions])
    for i, p in enumerate(positions):
        if any(item.id_dominio != p.id_dominio for item in items[p.id or 0]):
            raise BusinessError(
                "PAG_008", "Una pendenza multibeneficiario non si paga con una RPT", field=f"pendenze[{i}]"
            )
    taxonomies = {
        (d.id_dominio, d.code): d.taxonomy
        for d in session.exec(
            select(DebtType).where(col(DebtType.id_dominio).in_({p.id_dominio for p in positions}))
        ).all()
    }
    try:
        password = resolve_secret(station.password_ref)
    except SecretNotFoundError:
        password = None
    if password is None:
        raise ApiError(
            500,
            "INTERNO",
            "CONFIGURAZIONE",
            "Stazione non configurata",
            f"la stazione {station.id_stazione} non ha la password del Nodo",
        )
    payer = body.soggettoVersante
    versante = (
        RptSubject(
            kind=payer.tipo,
            identifier=payer.identificativo,
            name=payer.anagrafica,
            address=payer.indirizzo,
            civic=payer.civico,
            cap=payer.cap,
            locality=payer.localita,
            province=payer.provincia,
            nation=payer.nazione,
            email=payer.email,
        )
        if payer
        else None
    )
    now = utcnow()
    attempts = create_attempts(
        session, positions=positions, kind=AttemptKind.RPT, payment_id=payment_id, now=now
    )
    rpts = []
    for p, a in zip(positions, attempts, strict=True):
        data = rpt_data_for(
            position=p,
            items=items[p.id or 0],
            creditor_name=creditors[p.id_dominio].name,
            station_id=station.id_stazione,
            ccp=a.ccp or "",
            message_id=uuid.uuid4().hex,
            now=now,
            taxonomy=taxonomies.get((p.id_dominio, p.debt_type)),
            payer=versante,
            authentication=body.autenticazioneSoggetto,
            payment_date=now.astimezone(ROME).date(),
        )
        try:
            xml = build_rpt(data)
            errors = rpt_rt_errors(xml)
        except RptError as exc:
            errors = [str(exc)]
        if errors:  # nothing leaves: the attempts roll back with the request
            raise ApiError(500, "INTERNO", "RPT_NON_VALIDA", "RPT non valida", f"{p.nav}: {errors[0]}")
        rpts.append(RptToSend(id_dominio=p.id_dominio, iuv=p.iuv or "", ccp=a.ccp or "", xml=xml))
    session.commit()  # RPT_ATTIVATA before the Node hears of them: a crash leaves them to the recovery
    cfg = get_endpoints()
    try:
        with NodoRptClient(
            url=cfg.nodo_url,
            broker_id=station.id_intermediario,
            station_id=station.id_stazione,
            password=password,
            timeout=cfg.timeout_seconds,
            attempts=cfg.call_attempts,
            backoff=cfg.retry_backoff_seconds,
        ) as nodo:
            accepted = (
                nodo.send_rpt(rpts[0]) if len(rpts) == 1 else nodo.send_cart(cart_id=payment_id, rpts=rpts)
            )
    except RptRefusedError as exc:
        codes = ", ".join(sorted({f.code for f in exc.faults})) or exc.code or "KO"
        record_sent(
            session, attempts=attempts, state=AttemptState.RPT_RIFIUTATA_NODO, error=f"{codes}: {exc}"
        )
        session.commit()
        raise _failed(payment_id, exc, "Il Nodo ha rifiutato la richiesta di pagamento") from exc
    except PagopaError as exc:
        record_sent(session, attempts=attempts, state=AttemptState.RPT_ERRORE_INVIO_A_NODO, error=str(exc))
        session.commit()
        raise _failed(payment_id, exc, "Invio della richiesta di pagamento al Nodo non riuscito") from exc
    node_session = accepted.session_id or payment_id
    record_sent(
        session,
        attempts=attempts,
        state=AttemptState.RPT_ACCETTATA_NODO,
        session_id=node_session,
        redirect_url=accepted.url,
    )
    return accepted.url or "", node_session


@router.post("/pagamenti", status_code=201)
def post_pagamento(body: NuovoPagamento, session: SessionDep, who: PrincipalDep) -> dict[str, Any]:
    """Start paying 1–5 positions: the payment id, its location, the debtor's redirect, the session."""
    positions = [_resolve(session, who, item, i) for i, item in enumerate(body.pendenze)]
    for p in positions:
        _may_pay(who, p)
    _check_payable(session, positions, datetime.now(ROME).date())
    mode, station, creditors = _route(session, positions)
    payment_id = new_payment_id()
    start = _start_checkout if mode == CHECKOUT else _start_rpt
    redirect, id_session = start(
        session, positions=positions, station=station, creditors=creditors, body=body, payment_id=payment_id
    )
    return {
        "id": payment_id,
        "location": f"{pagamento_prefix()}/pagamenti/{payment_id}",
        "redirect": redirect,
        "idSession": id_session,
    }


# --- reading a session -----------------------------------------------------------------------------------


def _money(value: Decimal) -> float:
    return float(value)


def session_json(session: Session, who: Principal, attempts: list[PaymentAttempt]) -> dict[str, Any]:
    """A payment session in GovPay's Pagamento shape, its state derived from attempts and positions."""
    positions = {
        p.id: p
        for p in session.exec(
            select(Position).where(col(Position.id).in_([a.position_id for a in attempts]))
        ).all()
    }
    for p in positions.values():
        _may_read(who, p)
    receipts = receipts_of(session, attempt_ids=[a.id for a in attempts if a.id is not None])
    now = utcnow()
    notices = [
        NoticeAttempt(
            kind=a.kind,
            attempt_state=a.state,
            position_state=positions[a.position_id].state if a.position_id in positions else None,
            expires_at=a.expires_at,
            paid_by_attempt=(receipts[a.id].outcome == "OK") if a.id in receipts else None,
        )
        for a in attempts
    ]
    first = attempts[0]
    payment_id = first.cart_id or ""
    linked = (
        station_attempts(session, payment_id=payment_id, checkout_cart=first.session_id)
        if first.kind == AttemptKind.CHECKOUT
        else []
    )
    today = datetime.now(ROME).date()
    return {
        "id": payment_id,
        "idSession": first.session_id,
        "modello": first.kind,
        "stato": session_state(notices, now=now),
        "dataRichiestaPagamento": first.requested_at.isoformat(),
        "importo": _money(sum((a.amount for a in attempts), Decimal("0.00"))),
        "pspRedirectUrl": first.redirect_url,
        "pendenze": [
            {
                "idA2A": p.id_a2a if p else None,
                "idPendenza": p.id_pendenza if p else None,
                "idDominio": a.id_dominio,
                "numeroAvviso": a.nav,
                "iuv": a.iuv,
                "importo": _money(a.amount),
                "stato": visible_state(state=p.state, due_date=p.due_date, today=today) if p else None,
                "ccp": a.ccp,
                "statoTentativo": a.state,
                "dettaglio": a.last_error,
                "idRicevuta": receipts[a.id].receipt_id if a.id in receipts else None,
            }
            for a in attempts
            for p in [positions.get(a.position_id)]
        ],
        "tentativiStazione": [
            {
                "idDominio": a.id_dominio,
                "numeroAvviso": a.nav,
                "stato": a.state,
                "dataRichiesta": a.requested_at.isoformat(),
            }
            for a in linked
        ],
    }


@router.get("/pagamenti/byIdSession/{idSession}")
def get_by_session(idSession: str, session: SessionDep, who: PrincipalDep) -> dict[str, Any]:  # noqa: N803
    """A payment session by the id the Node (or Checkout) gave it."""
    attempts = session_attempts(session, node_session=idSession)
    if not attempts:
        raise not_found("Pagamento")
    payment_id = attempts[0].cart_id
    return session_json(session, who, [a for a in attempts if a.cart_id == payment_id])


@router.get("/pagamenti/{id}")
def get_pagamento(id: str, session: SessionDep, who: PrincipalDep) -> dict[str, Any]:  # noqa: A002
    """A payment session by its id."""
    attempts = session_attempts(session, payment_id=id)
    if not attempts:
        raise not_found("Pagamento")
    return session_json(session, who, attempts)
