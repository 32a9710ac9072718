"""Login (with lockout), logout and the choice of language."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from models.types import utcnow
from rules.console import is_locked, safe_next
from rules.credentials import hash_secret, verify_secret
from store.console import find_operator, record_action, record_login_failure, record_login_success
from web.console.i18n import format_datetime, pick_language, translator
from web.console.render import flash, language, path_for, redirect, render
from web.console.security import FormDep, SessionDep, sign_in

router = APIRouter()
_DUMMY_HASH: list[str] = []


def _dummy_hash() -> str:
    # Checking a password against a throwaway hash when the username is unknown makes both answers take as
    # long, so the timing does not tell which usernames exist.
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_secret(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


def _root(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.get("/login", name="login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002
    """The login form."""
    return render(request, "login.html", title="Accesso", user=None, next=next or "", error=None, username="")


@router.post("/login", name="login_submit", response_model=None)
def login(request: Request, form: FormDep, session: SessionDep) -> Response:
    """Check the password; five wrong ones in a row lock the account for 15 minutes."""
    username = str(form.get("username") or "").strip()[:140]
    password = str(form.get("password") or "")
    target = safe_next(str(form.get("next") or ""), root=_root(request), default=path_for(request, "home"))
    _ = translator(language(request))
    now = utcnow()
    operator = find_operator(session, username=username) if username else None
    error = _("Credenziali non valide")
    if operator is not None and operator.enabled and operator.password_hash:
        if is_locked(operator.locked_until, now):
            error = (
                f"{_('Account bloccato per troppi tentativi falliti fino alle')} "
                f"{format_datetime(operator.locked_until, language(request))}"
            )
            record_action(
                session,
                username=operator.username,
                action="login_refused_locked",
                entity="operator",
                entity_key=operator.username,
            )
        elif verify_secret(password, operator.password_hash):
            record_login_success(session, operator=operator)
            sign_in(request, operator)
            return RedirectResponse(target, status_code=303)
        else:
            locked_until = record_login_failure(session, operator=operator, now=now)
            if locked_until is not None:
                error = (
                    f"{_('Account bloccato per troppi tentativi falliti fino alle')} "
                    f"{format_datetime(locked_until, language(request))}"
                )
    else:
        verify_secret(password, _dummy_hash())
    session.commit()
    return render(
        request,
        "login.html",
        title="Accesso",
        user=None,
        next=str(form.get("next") or ""),
        error=error,
        username=username,
        status=401,
    )


@router.post("/logout", name="logout")
def logout(request: Request, form: FormDep, session: SessionDep) -> RedirectResponse:
    """End the session."""
    username = request.session.get("user")
    if username:
        record_action(
            session, username=str(username), action="logout", entity="operator", entity_key=str(username)
        )
    lang = request.session.get("lang")
    request.session.clear()
    if lang:
        request.session["lang"] = lang
    flash(request, "Disconnesso")
    return redirect(request, "login")


@router.post("/lang", name="set_language")
def set_language(request: Request, form: FormDep) -> RedirectResponse:
    """Switch the console's language (Italian or English) and go back to the page."""
    request.session["lang"] = pick_language(str(form.get("lang") or ""))
    target = safe_next(str(form.get("back") or ""), root=_root(request), default=path_for(request, "home"))
    return RedirectResponse(target, status_code=303)
