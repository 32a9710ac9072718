"""Receipts: list, detail with the collections and their reporting, and the receipt PDF."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from models.payments import Collection, Receipt
from models.positions import Position
from reports.receipt import render_receipt_pdf
from store.console import labels_of, list_receipts, position_receipt_context, visible_creditors
from web.console.forms import PAGE_SIZE, choice, day, page, text
from web.console.render import render, render_list
from web.console.security import NotFound, SessionDep, UserDep, require_ec

router = APIRouter()


@router.get("/receipts", name="receipts", response_class=HTMLResponse)
def receipts(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Receipts of the operator's ECs, by IUV, notice number, receipt id and day."""
    q = request.query_params
    errors: dict[str, str] = {}
    creditors = visible_creditors(session, allowed=user.creditors)
    filters = {
        "id_dominio": choice(q, "ente", {c.id_dominio for c in creditors}),
        "iuv": text(q, "iuv", limit=35),
        "nav": text(q, "avviso", limit=18),
        "receipt_id": text(q, "ricevuta", limit=35),
        "day": day(q, "giorno", errors),
    }
    current = page(q)
    return render_list(
        request,
        "receipts.html",
        listed=list_receipts(session, allowed=user.creditors, page=current, size=PAGE_SIZE, **filters),
        current=current,
        title="Ricevute",
        user=user,
        creditors=creditors,
        filters=filters,
        errors=errors,
    )


def _receipt(session: SessionDep, user: UserDep, receipt_id: int) -> Receipt:
    receipt = session.get(Receipt, receipt_id)
    if receipt is None:
        raise NotFound(f"ricevuta {receipt_id}")
    require_ec(user, receipt.id_dominio)
    return receipt


@router.get("/receipts/{receipt_id}", name="receipt", response_class=HTMLResponse)
def receipt_page(request: Request, receipt_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A receipt with its collections (per transfer), their reporting line and labels."""
    receipt = _receipt(session, user, receipt_id)
    position = session.get(Position, receipt.position_id) if receipt.position_id else None
    collections = list(
        session.exec(
            select(Collection)
            .where(Collection.receipt_pk == receipt.id)
            .order_by(col(Collection.transfer_index))
        ).all()
    )
    labels = labels_of(
        session, id_dominio=receipt.id_dominio, subject="collection", keys=[str(c.id) for c in collections]
    )
    return render(
        request,
        "receipt.html",
        title="Ricevuta",
        detail=receipt.receipt_id,
        user=user,
        receipt=receipt,
        position=position,
        collections=collections,
        labels=labels,
    )


@router.get("/receipts/{receipt_id}/pdf", name="receipt_pdf")
def receipt_pdf(receipt_id: int, session: SessionDep, user: UserDep) -> Response:
    """The receipt as PDF."""
    receipt = _receipt(session, user, receipt_id)
    pdf = render_receipt_pdf(position_receipt_context(session, receipt=receipt))
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="ricevuta_{receipt.iuv}.pdf"'},
    )
