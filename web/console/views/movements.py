"""Treasury movements: match status, suggested matches to confirm or reject, credits that are not pagoPA."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from models.reconciliation import MatchSuggestion
from models.treasury import MovementMatch, TreasuryMovement
from store.console import (
    decide_suggestion,
    list_actions,
    list_movements,
    movement_details,
    set_not_pagopa,
    visible_creditors,
)
from web.console.forms import PAGE_SIZE, choice, day, flag, page, text
from web.console.render import flash, redirect, render, render_list
from web.console.security import FormDep, NotFound, Refused, SessionDep, UserDep, require, require_ec

router = APIRouter()


@router.get("/movements", name="movements", response_class=HTMLResponse)
def movements(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Movements of the operator's ECs by match status and value date; those with open suggestions first."""
    q = request.query_params
    errors: dict[str, str] = {}
    creditors = visible_creditors(session, allowed=user.creditors)
    filters = {
        "id_dominio": choice(q, "ente", {c.id_dominio for c in creditors}),
        "match_state": choice(q, "stato", {s.value for s in MovementMatch}),
        "day": day(q, "giorno", errors),
        "with_suggestions": flag(q, "suggerimenti"),
    }
    current = page(q)
    return render_list(
        request,
        "movements.html",
        listed=list_movements(session, allowed=user.creditors, page=current, size=PAGE_SIZE, **filters),
        current=current,
        title="Movimenti di tesoreria",
        user=user,
        creditors=creditors,
        filters=filters,
        errors=errors,
        states=[s.value for s in MovementMatch],
    )


def _movement(session: SessionDep, user: UserDep, movement_id: int) -> TreasuryMovement:
    movement = session.get(TreasuryMovement, movement_id)
    if movement is None:
        raise NotFound(f"movimento {movement_id}")
    require_ec(user, movement.id_dominio)
    return movement


@router.get("/movements/{movement_id}", name="movement", response_class=HTMLResponse)
def movement_page(request: Request, movement_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A movement: its data, the reconciliation outcome, labels, suggestions and the actions taken on it."""
    movement = _movement(session, user, movement_id)
    reconciliation, labels, suggestions = movement_details(session, movement=movement)
    _, actions = list_actions(session, allowed=None, entity="movement", entity_key=str(movement_id), size=100)
    return render(
        request,
        "movement.html",
        title="Movimento",
        detail=str(movement_id),
        user=user,
        movement=movement,
        reconciliation=reconciliation,
        labels=labels,
        suggestions=suggestions,
        actions=actions,
    )


def _decide(
    request: Request, suggestion_id: int, session: SessionDep, user: UserDep, *, accept: bool
) -> RedirectResponse:
    require(user, "decide_match")
    suggestion = session.get(MatchSuggestion, suggestion_id)
    if suggestion is None:
        raise NotFound(f"suggerimento {suggestion_id}")
    movement = _movement(session, user, suggestion.movement_id)
    try:
        decide_suggestion(
            session, suggestion=suggestion, movement=movement, accept=accept, username=user.username
        )
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    flash(
        request,
        "Abbinamento confermato: la prossima riconciliazione incassa il flusso."
        if accept
        else "Suggerimento rifiutato",
        "ok",
    )
    return redirect(request, "movement", movement_id=movement.id)


@router.post("/suggestions/{suggestion_id}/confirm", name="suggestion_confirm")
def confirm(
    request: Request, suggestion_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> RedirectResponse:
    """Confirm a suggested movement ↔ flow match (recorded with who and when)."""
    return _decide(request, suggestion_id, session, user, accept=True)


@router.post("/suggestions/{suggestion_id}/reject", name="suggestion_reject")
def reject(
    request: Request, suggestion_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> RedirectResponse:
    """Reject a suggested match (recorded with who and when)."""
    return _decide(request, suggestion_id, session, user, accept=False)


@router.post("/movements/{movement_id}/not-pagopa", name="movement_not_pagopa")
def not_pagopa(
    request: Request, movement_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> RedirectResponse:
    """Mark a credit as not pagoPA money: it leaves reconciliation (recorded with who, when and the note)."""
    require(user, "not_pagopa")
    movement = _movement(session, user, movement_id)
    if movement.match_state == MovementMatch.NOT_PAGOPA:
        raise Refused(f"movimento {movement_id}: gia' segnato come non pagoPA")
    set_not_pagopa(session, movement=movement, username=user.username, reason=text(form, "nota", limit=500))
    flash(request, "Movimento segnato come non pagoPA", "ok")
    return redirect(request, "movement", movement_id=movement_id)
