"""The GovPay-compatible API Pendenze v2: positions, their states, notices."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import or_
from sqlmodel import Session, col, select

from models.db import get_engine
from models.payments import PaymentAttempt, Receipt
from models.positions import Position, PositionItem
from models.registry import Creditor
from reports.notice import render_notice_pdf
from reports.notice_context import notice_context
from rules.positions import BusinessError, PendenzaPut, italian_today, validate_position, visible_state
from store.positions import (
    CREATED,
    UNCHANGED,
    PositionFilter,
    change_state,
    get_position,
    get_position_by_nav,
    items_of,
    list_positions,
    load_registry_view,
    upsert_positions,
)
from web.auth import Principal, authenticate
from web.errors import ApiError, forbidden, not_found

router = APIRouter()


def db_session() -> Iterator[Session]:
    """One session per request, committed when the handler succeeds."""
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session
        session.commit()


# scope="function": commit before the answer leaves, so a client that got 2xx always reads its own write.
SessionDep = Annotated[Session, Depends(db_session, scope="function")]


def principal(request: Request, session: SessionDep) -> Principal:
    """The authenticated caller."""
    return authenticate(request, session)


PrincipalDep = Annotated[Principal, Depends(principal)]


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _item_json(item: PositionItem) -> dict[str, Any]:
    out: dict[str, Any] = {"indice": item.item_index, "idVocePendenza": item.id_voce, "importo": _money(item.amount),
                           "descrizione": item.description, "stato": item.state, "idDominio": item.id_dominio,
                           "datiAllegati": item.attached_data}
    if item.kind == "STAMP":
        out |= {"tipoBollo": item.stamp_type, "hashDocumento": item.stamp_hash,
                "provinciaResidenza": item.stamp_province}
    else:
        out |= {"ibanAccredito": item.iban, "ibanAppoggio": item.support_iban,
                "tipoContabilita": item.accounting_type, "codiceContabilita": item.accounting_code}
        if item.revenue_code:
            out["codEntrata"] = item.revenue_code
    return out


def position_json(position: Position, *, items: list[PositionItem], creditor_name: str | None, today: date,
                  attempts: list[PaymentAttempt] | None = None, receipts: list[Receipt] | None = None,
                  ) -> dict[str, Any]:
    """A position in GovPay's Pendenza shape (with voci, attempts and receipts when given)."""
    documento = None
    if position.document_id:
        documento = {"identificativo": position.document_id, "descrizione": position.document_description,
                     "rata": position.instalment}
    out = {
        "idA2A": position.id_a2a, "idPendenza": position.id_pendenza, "idTipoPendenza": position.debt_type,
        "dominio": {"idDominio": position.id_dominio, "ragioneSociale": creditor_name},
        "idUnitaOperativa": position.unit_code,
        "stato": visible_state(state=position.state, due_date=position.due_date, today=today),
        "descrizioneStato": position.state_description, "causale": position.causale,
        "soggettoPagatore": {"tipo": position.debtor_type, "identificativo": position.debtor_id,
                             "anagrafica": position.debtor_name, "indirizzo": position.debtor_address,
                             "civico": position.debtor_civic, "cap": position.debtor_cap,
                             "localita": position.debtor_locality, "provincia": position.debtor_province,
                             "nazione": position.debtor_nation, "email": position.debtor_email,
                             "cellulare": position.debtor_phone},
        "importo": _money(position.amount), "numeroAvviso": position.nav, "iuv": position.iuv,
        "dataCaricamento": position.created_at.isoformat() if position.created_at else None,
        "dataUltimoAggiornamento": position.updated_at.isoformat() if position.updated_at else None,
        "dataValidita": position.valid_until, "dataScadenza": position.due_date,
        "annoRiferimento": position.year, "cartellaPagamento": position.cartella,
        "datiAllegati": position.attached_data, "tassonomiaAvviso": position.taxonomy,
        "direzione": position.direction, "divisione": position.division, "documento": documento,
        "voci": [_item_json(i) for i in items],
    }
    if attempts is not None or receipts is not None:
        out["rpp"] = [
            {"tipo": "tentativo", "stato": a.state, "dataRichiesta": a.requested_at.isoformat(),
             "importo": _money(a.amount), "ccp": a.ccp} for a in attempts or []
        ] + [
            {"tipo": "ricevuta", "idRicevuta": r.receipt_id, "esito": r.outcome, "importo": _money(r.amount),
             "dataPagamento": r.payment_at.isoformat() if r.payment_at else None, "psp": r.psp_id,
             "ccp": r.ccp or r.receipt_id} for r in receipts or []
        ]
    return out


def _owned(who: Principal, id_a2a: str) -> None:
    if who.kind == "application" and who.name != id_a2a:
        raise forbidden(f"l'applicazione {who.name} non puo' accedere alle pendenze di {id_a2a}")


def _visible(who: Principal, position: Position) -> None:
    if who.kind == "application":
        _owned(who, position.id_a2a)
    elif not who.can_see(position.id_dominio):
        raise forbidden(f"l'operatore {who.name} non e' abilitato al dominio {position.id_dominio}")


def _creditor_name(session: Session, id_dominio: str) -> str | None:
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == id_dominio)).first()
    return creditor.name if creditor else None


def _full_json(session: Session, position: Position) -> dict[str, Any]:
    attempts = session.exec(select(PaymentAttempt).where(PaymentAttempt.position_id == position.id)
                            .order_by(PaymentAttempt.id)).all()
    receipts = session.exec(select(Receipt).where(Receipt.position_id == position.id,
                                                  Receipt.id_dominio == position.id_dominio)
                            .order_by(Receipt.id)).all()
    items = items_of(session, position_ids=[position.id or 0])[position.id or 0]
    return position_json(position, items=items, creditor_name=_creditor_name(session, position.id_dominio),
                         today=italian_today(), attempts=list(attempts), receipts=list(receipts))


def _notice_pdf(session: Session, positions: list[Position]) -> bytes:
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == positions[0].id_dominio)).one()
    items = items_of(session, position_ids=[p.id or 0 for p in positions])
    return render_notice_pdf(notice_context(creditor=creditor,
                                            positions=[(p, items[p.id or 0]) for p in positions]))


@router.put("/pendenze/{idA2A}/{idPendenza}", status_code=201)
def put_pendenza(idA2A: str, idPendenza: str, body: PendenzaPut, response: Response, session: SessionDep,
                 who: PrincipalDep, stampaAvviso: bool = False) -> dict[str, Any]:
    """Create (201) or update (200) a position; the same PUT twice changes nothing."""
    if who.kind != "application" or who.caller is None:
        raise forbidden("solo le applicazioni possono caricare pendenze")
    _owned(who, idA2A)
    data = validate_position(body, id_a2a=idA2A, id_pendenza=idPendenza, caller=who.caller,
                             registry=load_registry_view(session))
    (result,) = upsert_positions(session, batch=[data])
    if result.error is not None:
        raise result.error
    assert result.position is not None
    response.status_code = 201 if result.outcome == CREATED else 200
    if result.outcome != UNCHANGED:
        response.headers["X-Pagoflow-Outcome"] = result.outcome or ""
    out: dict[str, Any] = {"idDominio": result.position.id_dominio, "numeroAvviso": result.position.nav}
    if stampaAvviso:
        out["pdf"] = base64.b64encode(_notice_pdf(session, [result.position])).decode("ascii")
    return out


class PatchOp(BaseModel):
    """One JSON-patch-like operation of GovPay's PATCH."""

    op: Literal["REPLACE", "replace"]
    path: Literal["/stato", "/descrizioneStato"]
    value: str | None = None


@router.patch("/pendenze/{idA2A}/{idPendenza}")
def patch_pendenza(idA2A: str, idPendenza: str, ops: list[PatchOp], session: SessionDep,
                   who: PrincipalDep) -> dict[str, Any]:
    """Annul (ANNULLATA) or restore (NON_ESEGUITA) a position, with an optional description."""
    if who.kind == "operator" and who.role == "READONLY":
        raise forbidden("ruolo in sola lettura")
    position = get_position(session, id_a2a=idA2A, id_pendenza=idPendenza)
    _owned(who, idA2A)
    if position is None:
        raise not_found("Pendenza")
    _visible(who, position)
    state = next((o.value for o in ops if o.path == "/stato"), None)
    description = next((o.value for o in ops if o.path == "/descrizioneStato"), None)
    if state is None:
        if description is not None:
            position.state_description = description
            session.add(position)
    elif state in ("ANNULLATA", "NON_ESEGUITA"):
        change_state(session, position=position, annul=state == "ANNULLATA", description=description)
    else:
        raise BusinessError("VER_016", f"Stato {state} non impostabile (ammessi ANNULLATA, NON_ESEGUITA)",
                            field="value")
    session.flush()
    return _full_json(session, position)


@router.get("/pendenze/byAvviso/{idDominio}/{numeroAvviso}")
def get_by_avviso(idDominio: str, numeroAvviso: str, session: SessionDep, who: PrincipalDep) -> dict[str, Any]:
    """A position by EC and notice number."""
    position = get_position_by_nav(session, id_dominio=idDominio, nav=numeroAvviso)
    if position is None:
        raise not_found("Pendenza")
    _visible(who, position)
    return _full_json(session, position)


@router.get("/pendenze/{idA2A}/{idPendenza}")
def get_pendenza(idA2A: str, idPendenza: str, session: SessionDep, who: PrincipalDep) -> dict[str, Any]:
    """A position with its voci, payment attempts and receipts."""
    _owned(who, idA2A)
    position = get_position(session, id_a2a=idA2A, id_pendenza=idPendenza)
    if position is None:
        raise not_found("Pendenza")
    _visible(who, position)
    return _full_json(session, position)


@router.get("/pendenze")
def list_pendenze(
    session: SessionDep, who: PrincipalDep,
    pagina: Annotated[int, Query(ge=1, le=1_000_000)] = 1,  # bounded: a huge page overflowed the OFFSET
    risultatiPerPagina: Annotated[int, Query(ge=1, le=500)] = 25,
    idDominio: Annotated[str | None, Query(pattern=r"^[0-9]{11}$")] = None,
    idA2A: str | None = None, idDebitore: str | None = None,
    stato: Literal["NON_ESEGUITA", "ESEGUITA", "ESEGUITA_PARZIALE", "ANNULLATA", "SCADUTA", "INCASSATA",
                   "ANOMALA"] | None = None,
    dataDa: date | None = None, dataA: date | None = None, direzione: str | None = None,
    divisione: str | None = None, idDocumento: str | None = None,
) -> dict[str, Any]:
    """Positions the caller may see, filtered and paged, in GovPay's list envelope."""
    owner = who.name if who.kind == "application" else None
    if owner and idA2A and idA2A != owner:
        raise forbidden(f"l'applicazione {owner} non puo' elencare le pendenze di {idA2A}")
    today = italian_today()
    total, rows = list_positions(
        session, filters=PositionFilter(id_dominio=idDominio, id_a2a=idA2A, id_debitore=idDebitore, stato=stato,
                                        data_da=dataDa, data_a=dataA, direzione=direzione, divisione=divisione,
                                        id_documento=idDocumento),
        allowed_creditors=who.visible_creditors(), owner=owner, today=today, page=pagina, size=risultatiPerPagina)
    items = items_of(session, position_ids=[p.id or 0 for p in rows])
    names = {c.id_dominio: c.name for c in session.exec(
        select(Creditor).where(col(Creditor.id_dominio).in_({p.id_dominio for p in rows}))).all()}
    pages = math.ceil(total / risultatiPerPagina) if total else 0
    return {
        "numRisultati": total, "numPagine": pages, "risultatiPerPagina": risultatiPerPagina, "pagina": pagina,
        "prossimiRisultati": (f"pendenze?pagina={pagina + 1}&risultatiPerPagina={risultatiPerPagina}"
                              if pagina < pages else None),
        "risultati": [position_json(p, items=items[p.id or 0], creditor_name=names.get(p.id_dominio), today=today)
                      for p in rows],
    }


@router.get("/avvisi/{idDominio}/{numeroAvviso}", response_model=None)
def get_avviso(idDominio: str, numeroAvviso: str, request: Request, session: SessionDep,
               who: PrincipalDep) -> Response | dict[str, Any]:
    """The payment notice: PDF with Accept: application/pdf, its data as JSON otherwise."""
    position = get_position_by_nav(session, id_dominio=idDominio, nav=numeroAvviso)
    if position is None:
        raise not_found("Avviso")
    _visible(who, position)
    if "application/pdf" in request.headers.get("accept", ""):
        return Response(_notice_pdf(session, [position]), media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{idDominio}_{numeroAvviso}.pdf"'})
    return {"idDominio": idDominio, "numeroAvviso": numeroAvviso, "iuv": position.iuv,
            "stato": visible_state(state=position.state, due_date=position.due_date, today=italian_today()),
            "importo": _money(position.amount), "dataValidita": position.valid_until,
            "dataScadenza": position.due_date, "descrizione": position.causale,
            "tassonomiaAvviso": position.taxonomy,
            "qrcode": f"PAGOPA|002|{position.nav}|{idDominio}|{int(position.amount * 100)}"}


@router.get("/documenti/{idDominio}/{numeroDocumento}/avvisi", response_model=None)
def get_documento_avvisi(idDominio: str, numeroDocumento: str, session: SessionDep, who: PrincipalDep) -> Response:
    """All instalments (and the single-payment option) of a document in one PDF."""
    positions = list(session.exec(select(Position).where(Position.id_dominio == idDominio,
                                                         Position.document_id == numeroDocumento)).all())
    if who.kind == "application":
        positions = [p for p in positions if p.id_a2a == who.name]
    if not positions:
        raise not_found("Documento")
    for p in positions:
        _visible(who, p)
    live = [p for p in positions if p.state != "ANNULLATA"] or positions
    return Response(_notice_pdf(session, live), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{idDominio}_{numeroDocumento}.pdf"'})


def _receipt_json(receipt: Receipt, position: Position | None, collections: list[Any]) -> dict[str, Any]:
    return {
        "idDominio": receipt.id_dominio, "iuv": receipt.iuv, "idRicevuta": receipt.receipt_id,
        "numeroAvviso": receipt.nav, "esito": receipt.outcome, "stato": receipt.state, "importo": _money(receipt.amount),
        "commissioni": _money(receipt.fee), "dataPagamento": receipt.payment_at.isoformat() if receipt.payment_at
        else None, "psp": {"idPsp": receipt.psp_id, "ragioneSociale": receipt.psp_name, "idCanale": receipt.channel_id},
        "tipoVersamento": receipt.payment_method, "standIn": receipt.standin,
        "debitore": {"identificativo": receipt.debtor_id}, "versante": {"identificativo": receipt.payer_id,
                                                                      "anagrafica": receipt.payer_name},
        "pendenza": {"idA2A": position.id_a2a, "idPendenza": position.id_pendenza, "causale": position.causale}
        if position else None,
        "riscossioni": [{"indice": c.transfer_index, "importo": _money(c.amount), "iban": c.iban, "iur": c.iur,
                         "stato": c.state} for c in collections],
    }


@router.get("/rpp/{idDominio}/{iuv}/{ccp}/rt", response_model=None)
def get_receipt(idDominio: str, iuv: str, ccp: str, request: Request, session: SessionDep,
                who: PrincipalDep) -> Response | dict[str, Any]:
    """A receipt (ccp = receiptId) as XML (as pagoPA sent it), JSON, or PDF, by the Accept header."""
    from models.payments import Collection
    from reports.receipt import ReceiptContext, ReceiptLine, render_receipt_pdf
    from web.soap import body_payload, envelope

    receipt = session.exec(select(Receipt).where(Receipt.id_dominio == idDominio, Receipt.iuv == iuv,
                                                 or_(Receipt.receipt_id == ccp, Receipt.ccp == ccp))).first()
    if receipt is None:
        raise not_found("Ricevuta")
    position = session.get(Position, receipt.position_id) if receipt.position_id else None
    if position is not None:
        _visible(who, position)
    elif not who.can_see(idDominio) or who.kind == "application":
        raise forbidden("ricevuta non associata a una pendenza visibile")
    accept = request.headers.get("accept", "")
    if "application/xml" in accept or "text/xml" in accept:
        if receipt.payload_format != "XML" or not receipt.payload:
            raise ApiError(406, "RICHIESTA", "406000", "Ricevuta non disponibile in XML",
                           "la ricevuta e' stata recuperata in JSON")
        payload = body_payload(receipt.payload.encode("utf-8"))
        return Response(envelope(payload), media_type="application/xml")
    collections = list(session.exec(select(Collection).where(Collection.receipt_pk == receipt.id)
                                    .order_by(Collection.transfer_index)).all())
    if "application/pdf" in accept:
        creditor = session.exec(select(Creditor).where(Creditor.id_dominio == idDominio)).first()
        names = {c.id_dominio: c.name for c in session.exec(select(Creditor)).all()}
        items = items_of(session, position_ids=[position.id or 0])[position.id or 0] if position else []
        ctx = ReceiptContext(
            creditor_name=creditor.name if creditor else idDominio, creditor_fiscal_code=idDominio,
            receipt_id=receipt.receipt_id, iuv=receipt.iuv, nav=receipt.nav,
            reason=position.causale if position else "", amount=receipt.amount, fee=receipt.fee,
            paid_at=receipt.payment_at, psp=receipt.psp_name or receipt.psp_id or "-",
            debtor=f"{position.debtor_name} ({position.debtor_id})" if position else (receipt.debtor_id or "-"),
            payer=receipt.payer_name, outcome=receipt.outcome,
            lines=tuple(ReceiptLine(index=i.item_index, description=i.description,
                                    beneficiary=names.get(i.id_dominio, i.id_dominio), amount=i.amount)
                        for i in items))
        return Response(render_receipt_pdf(ctx), media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="ricevuta_{iuv}.pdf"'})
    return _receipt_json(receipt, position, collections)
