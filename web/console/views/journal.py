"""The event journal: search by IUV, notice number, flow id, receipt, file, day; one exchange's payloads."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from models.journal import Event, Outcome
from store.console import event_visible, visible_creditors
from store.journal import JournalQuery, search_events
from web.console.forms import choice, day, text
from web.console.render import render
from web.console.security import NotFound, SessionDep, UserDep, require_ec

router = APIRouter()
LIMIT = 500


@router.get("/journal", name="journal", response_class=HTMLResponse)
def journal(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Events matching every key given, oldest first, among the operator's ECs."""
    q = request.query_params
    errors: dict[str, str] = {}
    creditors = visible_creditors(session, allowed=user.creditors)
    query = JournalQuery(
        id_dominio=choice(q, "ente", {c.id_dominio for c in creditors}),
        iuv=text(q, "iuv", limit=35),
        nav=text(q, "avviso", limit=18),
        id_flusso=text(q, "flusso", limit=35),
        receipt_id=text(q, "ricevuta", limit=35),
        file_name=text(q, "file", limit=255),
        component=text(q, "componente", limit=40),
        outcome=choice(q, "esito", {o.value for o in Outcome}),
        day=day(q, "giorno", errors),
    )
    searched = any(
        k in q for k in ("iuv", "avviso", "flusso", "ricevuta", "file", "giorno", "ente", "componente")
    )
    events: list[Event] = []
    if query != JournalQuery() and not errors:
        if user.creditors is None or query.id_dominio is not None:
            events = search_events(session, query=query, limit=LIMIT)
        else:
            # a restricted operator: one search per granted EC (events of no EC are not theirs to read)
            for id_dominio in sorted(user.creditors):
                events += search_events(session, query=replace(query, id_dominio=id_dominio), limit=LIMIT)
            events = sorted(events, key=lambda e: (e.at, e.id or 0))[:LIMIT]
    elif searched and not errors:
        errors["_"] = "Indica almeno un criterio di ricerca"
    return render(
        request,
        "journal.html",
        title="Giornale degli eventi",
        user=user,
        query=query,
        events=events,
        creditors=creditors,
        errors=errors,
        limit=LIMIT,
        outcomes=[o.value for o in Outcome],
    )


@router.get("/journal/{event_id}", name="event", response_class=HTMLResponse)
def event_page(request: Request, event_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """One exchange: keys, outcome, timing, and the payloads when the policy kept them."""
    event = session.get(Event, event_id)
    if event is None:
        raise NotFound(f"evento {event_id}")
    if not event_visible(event, user.creditors):
        require_ec(user, event.id_dominio)
    return render(
        request,
        "event.html",
        title="Scambio",
        detail=f"{event.component} {event.operation}",
        user=user,
        event=event,
    )
