"""GovPay API Ragioneria v3: reads of reporting flows (the list, one flow as JSON or XML) and what every
Ragioneria route shares (base path, the 021408 answer to a bad parameter, EC and period checks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterator
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import Session, col, select

from models.db import get_engine
from models.payments import Collection, Receipt
from models.positions import Position
from models.registry import Creditor
from models.reporting import ReportingFlow, ReportingLine
from rules.reporting import UNKNOWN_OUTCOME_VALUE, FlowHeader, FlowLine, render_flow_xml
from rules.riconciliazioni import SYNTAX
from store.reporting import FlowFilter, find_flow, iter_lines, line_details, list_flows
from web.auth import Principal
from web.errors import ApiError, forbidden, not_found
from web.pendenze import PrincipalDep, SessionDep


def syntax_error(detail: str) -> ApiError:
    """GovPay Ragioneria's answer to a malformed request: 400 with code 021408, naming the field."""
    return ApiError(400, "RICHIESTA", SYNTAX, "Richiesta non valida", detail)


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("query", "path", "body", "header")]
    return ".".join(parts) or "richiesta"


class RagioneriaRoute(APIRoute):
    """A route of the API Ragioneria: bad parameters answer GovPay's 021408, not the API Pendenze's SINTASSI.

    FastAPI validates query and path parameters before the endpoint runs; this turns its error into the
    Ragioneria body, naming each offending parameter and why.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint, with FastAPI's validation errors turned into 021408."""
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise syntax_error(
                    "; ".join(
                        f"{_where(tuple(e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
                        for e in exc.errors()
                    )
                ) from exc

        return checked


router = APIRouter(route_class=RagioneriaRoute)

EC_PATTERN = r"^[0-9]{11}$"
IdDominioPath = Annotated[str, Path(pattern=EC_PATTERN)]


def check_period(data_da: date | None, data_a: date | None) -> None:
    """A period filter must not end before it starts (021408 naming dataA)."""
    if data_da is not None and data_a is not None and data_a < data_da:
        raise syntax_error(f"dataA: {data_a.isoformat()} precede dataDa {data_da.isoformat()}")

FlowStato = Literal["ACCETTATA", "ANOMALA", "OBSOLETA"]


class RagioneriaSettings(BaseSettings):
    """Where the API Ragioneria is mounted (PAGOFLOW_RAGIONERIA_BASE_PATH)."""

    model_config = SettingsConfigDict(env_prefix="PAGOFLOW_RAGIONERIA_", env_file=".env", extra="ignore")

    base_path: str = Field(
        default="/api/ragioneria/v3", description="Base path of the GovPay-compatible API Ragioneria."
    )


@lru_cache(maxsize=1)
def get_ragioneria_settings() -> RagioneriaSettings:
    """The API Ragioneria settings (cached; tests clear it)."""
    return RagioneriaSettings()


def ragioneria_prefix() -> str:
    """The configured base path, normalised ('' or '/x/y')."""
    path = get_ragioneria_settings().base_path.strip("/")
    return "/" + path if path else ""


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def flow_json(flow: ReportingFlow, *, creditor_name: str | None) -> dict[str, Any]:
    """A flow in the shape of GovPay's FlussoRendicontazione (index)."""
    anomalies = flow.anomalies or {}
    return {
        "idFlusso": flow.id_flusso,
        "dataFlusso": _iso(flow.flow_at),
        "trn": flow.settlement_ref,
        "dataRegolamento": _iso(flow.settlement_date),
        "idPsp": flow.psp_id,
        "ragioneSocialePsp": flow.psp_name,
        "bicRiversamento": flow.bic,
        "idDominio": flow.id_dominio,
        "ragioneSocialeDominio": creditor_name,
        "numeroPagamenti": flow.total_count,
        "importoTotale": _money(flow.total_amount),
        "stato": flow.state,
        "anomalie": anomalies.get("flusso", []),
        "anomalieRendicontazioni": anomalies.get("righe", {}),
        "revisione": flow.revision,
        "obsoleto": flow.state == "OBSOLETA",
        "origine": flow.source,
        "dataAcquisizione": _iso(flow.downloaded_at),
        "dataPubblicazione": _iso(flow.published_at),
    }


def _line_json(
    line: ReportingLine, collection: Collection | None, receipt: Receipt | None, position: Position | None
) -> dict[str, Any]:
    return {
        "indice": line.line_index,
        "iuv": line.iuv,
        "iur": line.iur,
        "indiceDati": line.transfer_index,
        "importo": _money(line.amount),
        "esito": None if line.outcome == UNKNOWN_OUTCOME_VALUE else line.outcome,
        "data": _iso(line.pay_date),
        "stato": line.state,
        "anomalie": line.anomalies or [],
        "riscossione": None
        if collection is None
        else {
            "idDominio": collection.id_dominio,
            "iuv": collection.iuv,
            "iur": collection.iur,
            "indice": collection.transfer_index,
            "importo": _money(collection.amount),
            "stato": collection.state,
            "iban": collection.iban,
            "data": _iso(collection.paid_at),
        },
        "ricevuta": None
        if receipt is None
        else {
            "idRicevuta": receipt.receipt_id,
            "idDominio": receipt.id_dominio,
            "iuv": receipt.iuv,
            "esito": receipt.outcome,
            "importo": _money(receipt.amount),
            "psp": receipt.psp_id,
            "dataPagamento": _iso(receipt.payment_at),
        },
        "pendenza": None
        if position is None
        else {
            "idA2A": position.id_a2a,
            "idPendenza": position.id_pendenza,
            "idDominio": position.id_dominio,
            "numeroAvviso": position.nav,
            "iuv": position.iuv,
            "stato": position.state,
            "importo": _money(position.amount),
            "causale": position.causale,
        },
    }


def _names(session: Session, ecs: set[str]) -> dict[str, str]:
    if not ecs:
        return {}
    return {
        c.id_dominio: c.name for c in session.exec(select(Creditor).where(col(Creditor.id_dominio).in_(ecs)))
    }


def _check_visible(who: Principal, id_dominio: str) -> None:
    if not who.can_see(id_dominio):
        raise forbidden(f"{who.name} non e' abilitato al dominio {id_dominio}")


@router.get("/flussiRendicontazione")
def list_flussi(
    session: SessionDep,
    who: PrincipalDep,
    idDominio: Annotated[str | None, Query(pattern=EC_PATTERN)] = None,  # noqa: N803 - GovPay's names
    dataDa: date | None = None,
    dataA: date | None = None,  # noqa: N803
    stato: FlowStato | None = None,
    iuv: Annotated[str | None, Query(max_length=35)] = None,
    idFlusso: Annotated[str | None, Query(max_length=35)] = None,  # noqa: N803
    escludiObsoleti: bool = False,  # noqa: N803
    pagina: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    risultatiPerPagina: Annotated[int, Query(ge=1, le=500)] = 25,  # noqa: N803
) -> dict[str, Any]:
    """The reporting flows the caller may see, filtered and paged, in GovPay's list envelope."""
    check_period(dataDa, dataA)
    if idDominio is not None:
        _check_visible(who, idDominio)
    total, rows = list_flows(
        session,
        filters=FlowFilter(
            id_dominio=idDominio,
            data_da=dataDa,
            data_a=dataA,
            stato=stato,
            iuv=iuv,
            id_flusso=idFlusso,
            escludi_obsoleti=escludiObsoleti,
        ),
        allowed_creditors=who.visible_creditors(),
        page=pagina,
        size=risultatiPerPagina,
    )
    names = _names(session, {f.id_dominio for f in rows})
    pages = math.ceil(total / risultatiPerPagina) if total else 0
    return {
        "numRisultati": total,
        "numPagine": pages,
        "risultatiPerPagina": risultatiPerPagina,
        "pagina": pagina,
        "prossimiRisultati": (
            f"flussiRendicontazione?pagina={pagina + 1}&risultatiPerPagina={risultatiPerPagina}"
            if pagina < pages
            else None
        ),
        "risultati": [flow_json(f, creditor_name=names.get(f.id_dominio)) for f in rows],
    }


def _header_of(flow: ReportingFlow, ec_name: str | None) -> FlowHeader:
    return FlowHeader(
        id_flusso=flow.id_flusso,
        psp_id=flow.psp_id,
        ec=flow.id_dominio,
        total_count=flow.total_count,
        total_amount=flow.total_amount,
        flow_at=flow.flow_at,
        settlement_ref=flow.settlement_ref,
        settlement_date=flow.settlement_date,
        psp_name=flow.psp_name,
        bic=flow.bic,
        ec_name=ec_name,
    )


def _rendered_xml(flow_id: int, header: FlowHeader) -> Iterator[bytes]:
    # The request's session is closed once the handler returns: streaming reads with its own.
    with Session(get_engine()) as session:

        def lines() -> Iterator[FlowLine]:
            for batch in iter_lines(session, flow_id=flow_id):
                for ln in batch:
                    yield FlowLine(
                        index=ln.line_index,
                        iuv=ln.iuv,
                        iur=ln.iur,
                        transfer_index=ln.transfer_index,
                        amount=ln.amount,
                        outcome=None if ln.outcome == UNKNOWN_OUTCOME_VALUE else ln.outcome,
                        outcome_raw="?",
                        pay_date=ln.pay_date,
                    )

        yield from render_flow_xml(header, lines())


@router.get("/flussiRendicontazione/{idDominio}/{idFlusso}", response_model=None)
def get_flusso(
    idDominio: IdDominioPath,
    idFlusso: str,
    request: Request,
    session: SessionDep,  # noqa: N803
    who: PrincipalDep,
    revisione: Annotated[int | None, Query(ge=1)] = None,
) -> Response | dict[str, Any]:
    """One flow (the newest revision unless ``revisione``): JSON with each line's collection, receipt and
    position, or with ``Accept: application/xml`` the FlussoRiversamento as received (rebuilt for FdR)."""
    _check_visible(who, idDominio)
    flow = find_flow(session, id_dominio=idDominio, id_flusso=idFlusso, revision=revisione)
    if flow is None or flow.id is None:
        raise not_found("Flusso di rendicontazione")
    name = _names(session, {flow.id_dominio}).get(flow.id_dominio)
    if "application/xml" in request.headers.get("accept", ""):
        filename = f'attachment; filename="{flow.id_flusso}.xml"'
        if flow.payload is not None:
            return Response(
                flow.payload.encode("utf-8"),
                media_type="application/xml",
                headers={"Content-Disposition": filename},
            )
        return StreamingResponse(
            _rendered_xml(flow.id, _header_of(flow, name)),
            media_type="application/xml",
            headers={"Content-Disposition": filename},
        )
    out = flow_json(flow, creditor_name=name)
    lines: list[dict[str, Any]] = []
    for batch in iter_lines(session, flow_id=flow.id):
        collections, receipts, positions = line_details(session, lines=batch)
        for ln in batch:
            collection = collections.get(ln.collection_id) if ln.collection_id is not None else None
            receipt = receipts.get(collection.receipt_pk) if collection and collection.receipt_pk else None
            position = positions.get(ln.position_id) if ln.position_id is not None else None
            lines.append(_line_json(ln, collection, receipt, position))
    out["rendicontazioni"] = lines
    return out
