"""Registry pages (administrators): ECs, stations, IBANs, debt types, applications and operators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from models.registry import RegistryAudit
from store.common import page_of
from store.registry import replace_grants, upsert_entry
from web.console.forms import page, pages, text
from web.console.registry_forms import ENTITIES, GRANTS, Entity, FormErrors, read_form
from web.console.render import flash, redirect, render
from web.console.security import (
    FormDep,
    NotFound,
    Refused,
    SessionDep,
    UserDep,
    password_fingerprint,
    require,
    require_ec,
)

router = APIRouter()
AUDIT_PAGE = 50


def _entity(user: UserDep, slug: str) -> Entity:
    require(user, "registry")
    entity = ENTITIES.get(slug)
    if entity is None:
        raise NotFound(f"anagrafica {slug}")
    if entity.every_ec_only and not user.all_creditors:
        raise Refused("solo gli amministratori di tutti gli enti gestiscono questa anagrafica")
    return entity


def _actor(user: UserDep) -> str:
    return f"console:{user.username}"


@router.get("/registry", name="registry", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The registry's entities and its latest changes."""
    require(user, "registry")
    entities = [e for e in ENTITIES.values() if user.all_creditors or not e.every_ec_only]
    latest = (
        session.exec(select(RegistryAudit).order_by(col(RegistryAudit.id).desc()).limit(10)).all()
        if user.all_creditors
        else []
    )
    return render(
        request, "registry/index.html", title="Anagrafiche", user=user, entities=entities, latest=latest
    )


@router.get("/registry/audit", name="registry_audit", response_class=HTMLResponse)
def registry_audit(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Every change of the registry (config apply and console), newest first."""
    require(user, "registry")
    if not user.all_creditors:
        raise Refused("solo gli amministratori di tutti gli enti leggono tutte le modifiche all'anagrafica")
    q = request.query_params
    entity, key = text(q, "entita", limit=40), text(q, "chiave", limit=200)
    stmt = select(RegistryAudit)
    if entity:
        stmt = stmt.where(RegistryAudit.entity == entity)
    if key:
        stmt = stmt.where(RegistryAudit.key == key)
    current = page(q)
    total, rows = page_of(
        session, stmt, order_by=(col(RegistryAudit.id).desc(),), page=current, size=AUDIT_PAGE
    )
    return render(
        request,
        "registry/audit.html",
        title="Modifiche all'anagrafica",
        user=user,
        rows=rows,
        total=int(total),
        page=current,
        pages=pages(int(total), AUDIT_PAGE),
        entity=entity or "",
        key=key or "",
    )


@router.get("/registry/{slug}", name="registry_list", response_class=HTMLResponse)
def entity_list(request: Request, slug: str, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The rows of one entity (those of the administrator's ECs)."""
    entity = _entity(user, slug)
    rows = [
        r
        for r in session.exec(select(entity.model).order_by(col(entity.model.id))).all()  # type: ignore[attr-defined]
        if user.can_see(entity.ec_of(r)) or entity.every_ec_only
    ]
    return render(request, "registry/list.html", title=entity.title, user=user, entity=entity, rows=rows)


def _row(session: SessionDep, user: UserDep, entity: Entity, row_id: int) -> Any:
    row = session.get(entity.model, row_id)
    if row is None:
        raise NotFound(f"{entity.slug} {row_id}")
    if not entity.every_ec_only:
        require_ec(user, entity.ec_of(row))
    return row


def _form(
    request: Request,
    session: SessionDep,
    user: UserDep,
    entity: Entity,
    row: Any,
    values: dict[str, Any],
    *,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    choices = {f.name: f.choices(session, user) for f in entity.fields if f.choices is not None}
    history: list[RegistryAudit] = []
    if row is not None:
        history = list(
            session.exec(
                select(RegistryAudit)
                .where(
                    RegistryAudit.entity == entity.model.__tablename__,  # type: ignore[attr-defined]
                    RegistryAudit.key == entity.audit_key(row),
                )
                .order_by(col(RegistryAudit.id).desc())
                .limit(50)
            ).all()
        )
    detail = entity.audit_key(row) if row is not None else "+"
    return render(
        request,
        "registry/form.html",
        title=entity.title,
        detail=detail,
        user=user,
        entity=entity,
        row=row,
        values=values,
        errors=errors or {},
        choices=choices,
        history=history,
        status=status,
    )


@router.get("/registry/{slug}/new", name="registry_new", response_class=HTMLResponse)
def new_form(request: Request, slug: str, session: SessionDep, user: UserDep) -> HTMLResponse:
    """An empty form for a new row."""
    entity = _entity(user, slug)
    if entity.slug == "creditors" and not user.all_creditors:
        raise Refused("solo gli amministratori di tutti gli enti creano nuovi enti")
    return _form(request, session, user, entity, None, {"enabled": True, "reporting_enabled": True})


@router.get("/registry/{slug}/{row_id}", name="registry_edit", response_class=HTMLResponse)
def edit_form(request: Request, slug: str, row_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A row's form, with its history from the registry audit."""
    entity = _entity(user, slug)
    row = _row(session, user, entity, row_id)
    return _form(request, session, user, entity, row, entity.initial(session, row))


def _save(
    request: Request, session: SessionDep, user: UserDep, entity: Entity, row: Any, form: FormDep
) -> Response:
    submitted = read_form(entity, form)
    try:
        valid = entity.validate(session, user, submitted, row)
    except FormErrors as exc:
        session.rollback()
        shown = {k: v for k, v in submitted.items() if not k.startswith("new_")}
        if row is not None:
            shown = {**entity.initial(session, row), **shown}
        return _form(request, session, user, entity, row, shown, errors=exc.errors, status=422)
    outcome = upsert_entry(
        session, model=entity.model, key=valid.key, values=valid.values, actor=_actor(user)
    )
    if valid.grants is not None and entity.slug in GRANTS:
        model, owner = GRANTS[entity.slug]
        if (
            replace_grants(
                session, model=model, owner={owner: valid.key[owner]}, wanted=valid.grants, actor=_actor(user)
            )
            and outcome == "unchanged"
        ):
            outcome = "updated"
    saved = session.exec(
        select(entity.model).where(*[getattr(entity.model, k) == v for k, v in valid.key.items()])
    ).one()
    if entity.slug == "operators" and saved.username == user.username and "password_hash" in valid.values:
        request.session["pw"] = password_fingerprint(saved.password_hash)  # keep one's own session
    flash(
        request,
        "Creato"
        if outcome == "created"
        else "Modifiche salvate"
        if outcome == "updated"
        else "Nessuna modifica",
        "ok",
    )
    return redirect(request, "registry_edit", slug=entity.slug, row_id=saved.id)


@router.post("/registry/{slug}/new", name="registry_create", response_model=None)
def create(request: Request, slug: str, form: FormDep, session: SessionDep, user: UserDep) -> Response:
    """Create a row (validated by the registry's rules, recorded in registry_audit)."""
    entity = _entity(user, slug)
    if entity.slug == "creditors" and not user.all_creditors:
        raise Refused("solo gli amministratori di tutti gli enti creano nuovi enti")
    return _save(request, session, user, entity, None, form)


@router.post("/registry/{slug}/{row_id}", name="registry_update", response_model=None)
def update(
    request: Request, slug: str, row_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> Response:
    """Change a row (validated by the registry's rules, recorded in registry_audit)."""
    entity = _entity(user, slug)
    row = _row(session, user, entity, row_id)
    return _save(request, session, user, entity, row, form)
