"""The audit trail of operator actions: logins, annulments, match decisions, uploads (administrators)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from store.console import list_actions
from web.console.forms import page, pages, text
from web.console.render import render
from web.console.security import SessionDep, UserDep, require

router = APIRouter()
PAGE = 50


@router.get("/audit", name="audit", response_class=HTMLResponse)
def audit(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Who did what and when, newest first, filtered by operator or object."""
    require(user, "audit")
    q = request.query_params
    filters = {
        "username": text(q, "operatore"),
        "entity": text(q, "oggetto", limit=40),
        "entity_key": text(q, "chiave", limit=200),
    }
    current = page(q)
    total, rows = list_actions(session, allowed=user.creditors, page=current, size=PAGE, **filters)
    return render(
        request,
        "audit.html",
        title="Registro attività",
        user=user,
        rows=rows,
        total=total,
        page=current,
        pages=pages(total, PAGE),
        filters=filters,
    )
