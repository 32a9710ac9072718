"""Rendering console pages: one jinja2 environment (autoescape, strict undefined) and the common context."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from web.console.forms import pages
from web.console.i18n import format_date, format_datetime, format_eur, pick_language, translator
from web.console.security import ConsoleUser, csrf_token

TEMPLATES = Path(__file__).resolve().parent / "templates"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True, default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# (route name, label, action the role needs or None)
NAV = (
    ("home", "Cruscotto", None),
    ("positions", "Posizioni", None),
    ("receipts", "Ricevute", None),
    ("flows", "Flussi", None),
    ("movements", "Movimenti", None),
    ("uploads", "Caricamenti", None),
    ("journal", "Giornale", None),
    ("registry", "Anagrafiche", "registry"),
    ("audit", "Registro attività", "audit"),
)


def language(request: Request) -> str:
    """The language of this session."""
    return pick_language(request.session.get("lang"))


def path_for(request: Request, name: str, **params: Any) -> str:
    """The path of a console route (inside the mount point), with query parameters when given."""
    query = {k: v for k, v in params.items() if k.startswith("q_") and v not in (None, "")}
    path = {k: str(v) for k, v in params.items() if not k.startswith("q_")}
    url = request.scope.get("root_path", "") + str(request.app.url_path_for(name, **path))
    if query:
        url += "?" + urlencode({k[2:]: v for k, v in query.items()})
    return url


def flash(request: Request, text: str, kind: str = "info") -> None:
    """A message shown once on the next page."""
    request.session.setdefault("flash", [])
    request.session["flash"] = [*request.session["flash"], [kind, text]]


def redirect(request: Request, name: str, **params: Any) -> RedirectResponse:
    """303 See Other to a console route (the answer to every successful POST)."""
    return RedirectResponse(path_for(request, name, **params), status_code=303)


def render(
    request: Request,
    template: str,
    *,
    title: str,
    user: ConsoleUser | None,
    detail: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page of the console."""
    lang = language(request)
    _ = translator(lang)
    messages = request.session.pop("flash", []) if "flash" in request.session else []
    page_query = {k: v for k, v in request.query_params.items() if k != "pagina"}

    def page_link(page: int) -> str:
        return request.url.path + "?" + urlencode({**page_query, "pagina": page})

    html = _env.get_template(template).render(
        request=request,
        user=user,
        lang=lang,
        _=_,
        title=title,
        detail=detail,
        csrf=csrf_token(request),
        url=lambda name, **params: path_for(request, name, **params),
        static=lambda file: request.scope.get("root_path", "") + "/static/" + file,
        eur=lambda amount: format_eur(amount, lang),
        dt=lambda value: format_datetime(value, lang),
        day=lambda value: format_date(value, lang),
        page_link=page_link,
        messages=messages,
        nav=[
            (name, label)
            for name, label, action in NAV
            if user is not None and (action is None or user.may(action))
        ],
        here=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def render_list(
    request: Request, template: str, *, listed: tuple[int, Any], current: int, **context: Any
) -> HTMLResponse:
    """A list page: one page of rows (``listed`` is the store's (total, rows)) with what the pager needs."""
    total, rows = listed
    return render(request, template, rows=rows, total=total, page=current, pages=pages(total), **context)
