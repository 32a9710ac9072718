"""Positions: search, the detail page with its timeline, the notice PDF, annulment and restore."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from models.payments import Receipt
from models.positions import Position
from models.registry import Application, Creditor
from reports.notice import render_notice_pdf
from reports.notice_context import notice_context
from rules.calendar import italian_today
from rules.console import clean_reason
from rules.positions import BusinessError, visible_state
from store.console import (
    PositionSearch,
    annul_or_restore,
    position_timeline,
    search_positions,
    visible_creditors,
)
from store.positions import items_of
from web.console.forms import PAGE_SIZE, choice, day, page, text
from web.console.render import flash, redirect, render, render_list
from web.console.security import FormDep, NotFound, SessionDep, UserDep, require, require_ec

router = APIRouter()

STATES = ("NON_ESEGUITA", "ESEGUITA", "ESEGUITA_PARZIALE", "ANNULLATA", "SCADUTA", "INCASSATA", "ANOMALA")


@router.get("/positions", name="positions", response_class=HTMLResponse)
def positions(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Find positions by notice number, IUV, debtor, application, state and dates."""
    q = request.query_params
    errors: dict[str, str] = {}
    creditors = visible_creditors(session, allowed=user.creditors)
    id_dominio = choice(q, "ente", {c.id_dominio for c in creditors})
    search = PositionSearch(
        nav=(text(q, "avviso", limit=40) or "").replace(" ", "")[:18] or None,  # as printed: 3010 0000 …
        iuv=text(q, "iuv", limit=35),
        debtor=text(q, "debitore", limit=35),
        id_a2a=text(q, "applicazione", limit=35),
        stato=choice(q, "stato", STATES),
        data_da=day(q, "dal", errors),
        data_a=day(q, "al", errors),
        id_dominio=id_dominio,
    )
    today = italian_today()
    current = page(q)
    listed = search_positions(
        session, search=search, allowed=user.creditors, today=today, page=current, size=PAGE_SIZE
    )
    applications = session.exec(select(Application.id_a2a).order_by(col(Application.id_a2a))).all()
    return render_list(
        request,
        "positions.html",
        listed=listed,
        current=current,
        title="Ricerca posizioni",
        user=user,
        search=search,
        errors=errors,
        creditors=creditors,
        states=STATES,
        applications=applications,
        today=today,
        visible_state=visible_state,
    )


def _position(session: SessionDep, user: UserDep, position_id: int) -> Position:
    position = session.get(Position, position_id)
    if position is None:
        raise NotFound(f"posizione {position_id}")
    require_ec(user, position.id_dominio)
    return position


def _detail(
    request: Request,
    session: SessionDep,
    user: UserDep,
    position: Position,
    *,
    error: str | None = None,
    reason: str = "",
    status: int = 200,
) -> HTMLResponse:
    position_id = position.id or 0
    items = items_of(session, position_ids=[position_id])[position_id]
    receipts = session.exec(
        select(Receipt)
        .where(Receipt.position_id == position_id, Receipt.id_dominio == position.id_dominio)
        .order_by(col(Receipt.id))
    ).all()
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == position.id_dominio)).one()
    state = visible_state(state=position.state, due_date=position.due_date, today=italian_today())
    return render(
        request,
        "position.html",
        title="Posizione",
        detail=position.nav or position.id_pendenza,
        user=user,
        position=position,
        state=state,
        items=items,
        receipts=receipts,
        creditor=creditor,
        timeline=position_timeline(session, position=position),
        error=error,
        reason=reason,
        status=status,
    )


@router.get("/positions/{position_id}", name="position", response_class=HTMLResponse)
def position_page(request: Request, position_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A position: its data, voci, receipts and the timeline of everything that happened to it."""
    return _detail(request, session, user, _position(session, user, position_id))


@router.get("/positions/{position_id}/notice.pdf", name="position_notice")
def position_notice(position_id: int, session: SessionDep, user: UserDep) -> Response:
    """The payment notice (PDF) of the position."""
    position = _position(session, user, position_id)
    if not position.nav:
        raise NotFound(f"avviso della posizione {position_id}")
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == position.id_dominio)).one()
    items = items_of(session, position_ids=[position_id])[position_id]
    pdf = render_notice_pdf(notice_context(creditor=creditor, positions=[(position, items)]))
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="avviso_{position.id_dominio}_{position.nav}.pdf"'
        },
    )


def _change(
    request: Request, position_id: int, form: FormDep, session: SessionDep, user: UserDep, *, annul: bool
) -> Response:
    require(user, "annul" if annul else "restore")
    position = _position(session, user, position_id)
    try:
        reason = clean_reason(text(form, "motivo", limit=2000))
        changed = annul_or_restore(
            session, position=position, annul=annul, reason=reason, username=user.username
        )
    except (ValueError, BusinessError) as exc:
        session.rollback()
        message = (
            "Il motivo è obbligatorio" if isinstance(exc, ValueError) and "reason" in str(exc) else str(exc)
        )
        return _detail(
            request,
            session,
            user,
            _position(session, user, position_id),
            error=message,
            reason=text(form, "motivo", limit=2000) or "",
            status=422,
        )
    flash(
        request,
        ("Posizione annullata" if annul else "Posizione ripristinata") if changed else "Nessuna modifica",
        "ok",
    )
    return redirect(request, "position", position_id=position_id)


@router.post("/positions/{position_id}/annul", name="position_annul", response_model=None)
def annul(request: Request, position_id: int, form: FormDep, session: SessionDep, user: UserDep) -> Response:
    """Annul the position (ANNULLATA) with a mandatory reason; refused for a paid one."""
    return _change(request, position_id, form, session, user, annul=True)


@router.post("/positions/{position_id}/restore", name="position_restore", response_model=None)
def restore(
    request: Request, position_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> Response:
    """Restore an annulled position (NON_ESEGUITA) with a mandatory reason."""
    return _change(request, position_id, form, session, user, annul=False)
