"""GovPay API Ragioneria v3: riconciliazioni (submit and read), riscossioni and ricevute.

``PUT /riconciliazioni/{idDominio}/{id}`` is asynchronous, as in GovPay v3: it stores the movement and answers
202 with the riconciliazione IN_ELABORAZIONE (or ERRORE 021401 at once when the causale names nothing);
the next ``reconcile`` flow run decides it (ACQUISITO, or ERRORE/IN_ELABORAZIONE with GovPay's code). It does
not reconcile in the request: ``reconcile_ec`` recomputes the whole EC (seconds on a large EC) and two runs of
it for one EC must not overlap, which the flow guarantees and a web request could not.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from sqlmodel import Session

from models.payments import Receipt
from models.positions import Position
from models.reconciliation import Reconciliation
from models.treasury import TreasuryMovement
from rules.positions import BusinessError
from rules.riconciliazioni import UNKNOWN_EC, RiconciliazionePut, check_id
from store.riconciliazioni import (
    CollectionView,
    RicevutaFilter,
    RiconciliazioneFilter,
    RiscossioneFilter,
    covered_collections,
    creditor_exists,
    find_riconciliazione,
    flow_of_lines,
    list_ricevute,
    list_riconciliazioni,
    list_riscossioni,
    submit_riconciliazione,
)
from web.auth import Principal
from web.errors import forbidden, not_found
from web.pendenze import PrincipalDep, SessionDep
from web.ragioneria import EC_PATTERN, IdDominioPath, RagioneriaRoute, check_period, syntax_error

router = APIRouter(route_class=RagioneriaRoute)

Pagina = Annotated[int, Query(ge=1, le=1_000_000)]
PerPagina = Annotated[int, Query(ge=1, le=500)]
StatoRiconciliazione = Literal["IN_ELABORAZIONE", "ACQUISITO", "ERRORE"]
StatoRiscossione = Literal["RISCOSSA", "INCASSATA"]
TipoRiscossione = Literal["ENTRATA", "MBT", "ALTRO_INTERMEDIARIO"]


async def _json_body(request: Request) -> Any:
    """The request body as JSON; a malformed body is GovPay's syntax error 021408, not FastAPI's."""
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise syntax_error(f"il corpo della richiesta non e' JSON valido: {exc}") from exc


JsonBody = Annotated[Any, Depends(_json_body)]


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _envelope(total: int, page: int, size: int, path: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    pages = math.ceil(total / size) if total else 0
    return {
        "numRisultati": total,
        "numPagine": pages,
        "risultatiPerPagina": size,
        "pagina": page,
        "prossimiRisultati": f"{path}?pagina={page + 1}&risultatiPerPagina={size}" if page < pages else None,
        "risultati": results,
    }


def _check_visible(who: Principal, id_dominio: str) -> None:
    if not who.can_see(id_dominio):
        raise forbidden(f"{who.name} non e' abilitato al dominio {id_dominio}")


def _pendenza_json(position: Position | None) -> dict[str, Any] | None:
    if position is None:
        return None
    return {
        "idA2A": position.id_a2a,
        "idPendenza": position.id_pendenza,
        "idDominio": position.id_dominio,
        "numeroAvviso": position.nav,
        "iuv": position.iuv,
        "causale": position.causale,
        "stato": position.state,
        "importo": _money(position.amount),
        "idTipoPendenza": position.debt_type,
    }


def _ricevuta_json(
    receipt: Receipt | None, position: Position | None = None, with_position: bool = False
) -> dict[str, Any] | None:
    if receipt is None:
        return None
    out = {
        "idDominio": receipt.id_dominio,
        "iuv": receipt.iuv,
        "idRicevuta": receipt.receipt_id,
        "numeroAvviso": receipt.nav,
        "ccp": receipt.ccp,
        "esito": receipt.outcome,
        "stato": receipt.state,
        "fonte": receipt.source,
        "importo": _money(receipt.amount),
        "commissioni": _money(receipt.fee),
        "psp": {"idPsp": receipt.psp_id, "ragioneSociale": receipt.psp_name},
        "canale": receipt.channel_id,
        "metodoPagamento": receipt.payment_method,
        "standIn": receipt.standin,
        "dataPagamento": _iso(receipt.payment_at),
        "dataApplicativa": _iso(receipt.application_date),
        "dataAcquisizione": _iso(receipt.received_at),
    }
    if with_position:
        out["pendenza"] = _pendenza_json(position)
    return out


def _riscossione_json(view: CollectionView, flows: dict[int, Any]) -> dict[str, Any]:
    if view.collection is None:
        assert view.line is not None
        flow = flows.get(view.line.flow_id)
        return {
            "idDominio": flow.id_dominio if flow else None,
            "iuv": view.line.iuv,
            "iur": view.line.iur,
            "indice": view.line.transfer_index,
            "importo": _money(view.line.amount),
            "tipo": view.tipo,
            "stato": "INCASSATA" if flow is not None and flow.reconciled else "RISCOSSA",
            "data": _iso(view.line.pay_date),
            "idFlusso": flow.id_flusso if flow else None,
            "idRiconciliazione": view.reconciliation_id,
            "ricevuta": None,
            "pendenza": None,
        }
    c = view.collection
    return {
        "idDominio": c.id_dominio,
        "iuv": c.iuv,
        "iur": c.iur,
        "indice": c.transfer_index,
        "importo": _money(c.amount),
        "tipo": view.tipo,
        "stato": c.state,
        "data": _iso(c.paid_at),
        "dataIncasso": _iso(c.cashed_at),
        "iban": c.iban,
        "senzaRicevuta": c.without_receipt,
        "tipoContabilita": view.item.accounting_type if view.item else None,
        "codiceContabilita": c.accounting_code or (view.item.accounting_code if view.item else None),
        "idVocePendenza": view.item.id_voce if view.item else None,
        "idRiconciliazione": view.reconciliation_id,
        "ricevuta": _ricevuta_json(view.receipt),
        "pendenza": _pendenza_json(view.position),
    }


def _riscossioni_json(session: Session, views: list[CollectionView]) -> list[dict[str, Any]]:
    flows = flow_of_lines(session, lines=[v.line for v in views if v.line is not None])
    return [_riscossione_json(v, flows) for v in views]


def riconciliazione_json(
    rec: Reconciliation, movement: TreasuryMovement | None, *, riscossioni: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A riconciliazione in GovPay's shape, with the movement it stands for and (detail) its riscossioni."""
    request = rec.request or {}
    kind = movement.reference_kind if movement else None
    out: dict[str, Any] = {
        "idDominio": rec.id_dominio,
        "id": rec.external_id,
        "importo": _money(movement.amount if movement else rec.amount),
        "dataValuta": _iso(movement.value_date if movement else rec.value_date),
        "dataContabile": _iso(movement.booking_date) if movement else request.get("dataContabile"),
        "contoAccredito": movement.account if movement else request.get("contoAccredito"),
        "sct": (movement.bank_reference if movement else None) or request.get("sct"),
        "causale": movement.remittance if movement else request.get("causale"),
        "iuv": rec.iuv or (movement.reference if movement and kind == "iuv" else None),
        "idFlusso": rec.id_flusso or (movement.reference if movement and kind == "flow" else None),
        "stato": rec.state,
        "codiceEsito": rec.outcome_code,
        "descrizioneStato": rec.description,
        "origine": "API" if rec.request_hash else "GIORNALE_DI_CASSA",
        "dataRichiesta": _iso(rec.created_at),
        "dataElaborazione": _iso(rec.processed_at),
    }
    if riscossioni is not None:
        out["riscossioni"] = riscossioni
    return out


def _detail(session: Session, rec: Reconciliation, movement: TreasuryMovement | None) -> dict[str, Any]:
    views = covered_collections(session, reconciliation=rec)
    return riconciliazione_json(rec, movement, riscossioni=_riscossioni_json(session, views))


@router.put(
    "/riconciliazioni/{idDominio}/{id}",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RiconciliazionePut.model_json_schema()}},
        }
    },
)
def put_riconciliazione(
    idDominio: str,
    id: str,
    response: Response,
    session: SessionDep,  # noqa: N803, A002
    who: PrincipalDep,
    body: JsonBody,
) -> dict[str, Any]:
    """Submit a treasury movement to reconcile: 202 once stored, 200 with the current state if resubmitted."""
    if not re.fullmatch(EC_PATTERN, idDominio):
        raise syntax_error("idDominio: 11 cifre")
    problem = check_id(id)
    if problem:
        raise syntax_error(problem)
    try:
        data = RiconciliazionePut.model_validate(body)
    except ValidationError as exc:
        raise syntax_error(
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'corpo'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
        ) from exc
    if not creditor_exists(session, id_dominio=idDominio):
        raise BusinessError(UNKNOWN_EC, f"dominio {idDominio} non gestito", field="idDominio")
    if not who.can_see(idDominio):
        raise forbidden(f"{who.name} non e' abilitato al dominio {idDominio}")
    if who.kind == "operator" and who.role == "READONLY":
        raise forbidden("ruolo in sola lettura")
    submission = submit_riconciliazione(session, id_dominio=idDominio, id_riconciliazione=id, body=data)
    response.status_code = 202 if submission.created else 200
    return _detail(session, submission.reconciliation, submission.movement)


@router.get("/riconciliazioni")
def get_riconciliazioni(
    session: SessionDep,
    who: PrincipalDep,
    idDominio: Annotated[str | None, Query(pattern=EC_PATTERN)] = None,  # noqa: N803 - GovPay's names
    dataDa: date | None = None,
    dataA: date | None = None,  # noqa: N803
    stato: StatoRiconciliazione | None = None,
    idFlusso: Annotated[str | None, Query(max_length=35)] = None,  # noqa: N803
    iuv: Annotated[str | None, Query(max_length=35)] = None,
    sct: Annotated[str | None, Query(max_length=70)] = None,
    pagina: Pagina = 1,
    risultatiPerPagina: PerPagina = 25,  # noqa: N803
) -> dict[str, Any]:
    """The riconciliazioni the caller may see (submitted here or read from the journal), newest first."""
    check_period(dataDa, dataA)
    if idDominio is not None:
        _check_visible(who, idDominio)
    total, rows = list_riconciliazioni(
        session,
        filters=RiconciliazioneFilter(
            id_dominio=idDominio,
            data_da=dataDa,
            data_a=dataA,
            stato=stato,
            id_flusso=idFlusso,
            iuv=iuv,
            sct=sct,
        ),
        allowed_creditors=who.visible_creditors(),
        page=pagina,
        size=risultatiPerPagina,
    )
    return _envelope(
        total, pagina, risultatiPerPagina, "riconciliazioni", [riconciliazione_json(r, m) for r, m in rows]
    )


@router.get("/riconciliazioni/{idDominio}/{id}")
def get_riconciliazione(
    idDominio: IdDominioPath,
    id: str,
    session: SessionDep,  # noqa: N803, A002
    who: PrincipalDep,
) -> dict[str, Any]:
    """One riconciliazione: state, GovPay outcome code and description, and the riscossioni it cashed."""
    _check_visible(who, idDominio)
    found = find_riconciliazione(session, id_dominio=idDominio, id_riconciliazione=id)
    if found is None:
        raise not_found("Riconciliazione")
    return _detail(session, *found)


@router.get("/riscossioni")
def get_riscossioni(
    session: SessionDep,
    who: PrincipalDep,
    idDominio: Annotated[str | None, Query(pattern=EC_PATTERN)] = None,  # noqa: N803
    dataDa: date | None = None,
    dataA: date | None = None,  # noqa: N803
    stato: StatoRiscossione | None = None,
    tipo: TipoRiscossione | None = None,
    iuv: Annotated[str | None, Query(max_length=35)] = None,
    pagina: Pagina = 1,
    risultatiPerPagina: PerPagina = 25,  # noqa: N803
) -> dict[str, Any]:
    """Riscossioni (one per transfer paid) with their receipt and position; other brokers' lines last."""
    check_period(dataDa, dataA)
    if idDominio is not None:
        _check_visible(who, idDominio)
    total, views = list_riscossioni(
        session,
        filters=RiscossioneFilter(
            id_dominio=idDominio, data_da=dataDa, data_a=dataA, stato=stato, tipo=tipo, iuv=iuv
        ),
        allowed_creditors=who.visible_creditors(),
        page=pagina,
        size=risultatiPerPagina,
    )
    return _envelope(total, pagina, risultatiPerPagina, "riscossioni", _riscossioni_json(session, views))


@router.get("/ricevute")
def get_ricevute(
    session: SessionDep,
    who: PrincipalDep,
    idDominio: Annotated[str | None, Query(pattern=EC_PATTERN)] = None,  # noqa: N803
    dataDa: date | None = None,
    dataA: date | None = None,  # noqa: N803
    esito: Literal["OK", "KO"] | None = None,
    iuv: Annotated[str | None, Query(max_length=35)] = None,
    idRicevuta: Annotated[str | None, Query(max_length=35)] = None,  # noqa: N803
    pagina: Pagina = 1,
    risultatiPerPagina: PerPagina = 25,  # noqa: N803
) -> dict[str, Any]:
    """Receipts the caller may see, newest payment first, each with its position."""
    check_period(dataDa, dataA)
    if idDominio is not None:
        _check_visible(who, idDominio)
    total, rows = list_ricevute(
        session,
        filters=RicevutaFilter(
            id_dominio=idDominio, data_da=dataDa, data_a=dataA, esito=esito, iuv=iuv, id_ricevuta=idRicevuta
        ),
        allowed_creditors=who.visible_creditors(),
        page=pagina,
        size=risultatiPerPagina,
    )
    return _envelope(
        total,
        pagina,
        risultatiPerPagina,
        "ricevute",
        [_ricevuta_json(r, p, with_position=True) or {} for r, p in rows],
    )
