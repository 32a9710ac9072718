"""Bulk uploads: upload a CSV/JSON file, follow the load flow's progress, download the outcome and notices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import col, select
from starlette.datastructures import UploadFile

from models.bulk import BulkFile, BulkRow, BulkState
from models.registry import Application
from rules.tracciato import RowDefaults
from store.bulk import count_outcomes
from store.console import list_actions, list_bulk_files, register_upload, visible_creditors
from store.positions import load_caller
from web.console.forms import PAGE_SIZE, flag, page, text
from web.console.loader import UploadRefused, check_scope, start_load, store_upload, upload_path
from web.console.render import flash, redirect, render, render_list
from web.console.security import FormDep, NotFound, Refused, SessionDep, UserDep, require, require_ec

router = APIRouter()
CHUNK = 1 << 20


def _applications(session: SessionDep, creditors: set[str] | None) -> dict[str, list[str]]:
    """The applications that may load positions for each EC (idA2A list per EC)."""
    out: dict[str, list[str]] = {}
    for app in session.exec(
        select(Application).where(Application.enabled).order_by(col(Application.id_a2a))
    ).all():
        caller = load_caller(session, id_a2a=app.id_a2a)
        if caller is None:
            continue
        for id_dominio in creditors or []:
            if caller.may_use(id_dominio) or any(g[0] == id_dominio for g in caller.grants):
                out.setdefault(id_dominio, []).append(app.id_a2a)
    return out


def _page(
    request: Request, session: SessionDep, user: UserDep, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    creditors = visible_creditors(session, allowed=user.creditors)
    current = page(request.query_params)
    return render_list(
        request,
        "uploads.html",
        listed=list_bulk_files(session, allowed=user.creditors, page=current, size=PAGE_SIZE),
        current=current,
        title="Caricamenti",
        user=user,
        creditors=creditors,
        applications=_applications(session, {c.id_dominio for c in creditors}),
        error=error,
        status=status,
    )


@router.get("/uploads", name="uploads", response_class=HTMLResponse)
def uploads(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The upload form and the bulk files of the operator's ECs."""
    return _page(request, session, user)


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(CHUNK):
        yield chunk


@router.post("/uploads", name="upload_submit", response_model=None)
def upload(request: Request, form: FormDep, session: SessionDep, user: UserDep) -> Response:
    """Keep the file, check it, register it and start the load flow; then show its progress."""
    require(user, "upload")
    id_dominio = text(form, "ente", limit=11)
    if id_dominio is None:
        return _page(request, session, user, error="Ente: campo obbligatorio", status=422)
    require_ec(user, id_dominio)
    id_a2a = text(form, "applicazione", limit=35)
    if id_a2a is None or id_a2a not in _applications(session, {id_dominio}).get(id_dominio, []):
        return _page(request, session, user, error="Applicazione non abilitata per l'ente", status=422)
    file = form.get("file")
    if not isinstance(file, UploadFile) or not file.filename:
        return _page(request, session, user, error="Scegli un file", status=422)
    defaults = RowDefaults(id_a2a=id_a2a, id_dominio=id_dominio)
    try:
        stored = store_upload(chunks=_chunks(file), filename=file.filename)
        check_scope(session, upload=stored, defaults=defaults, allowed=user.creditors)
    except UploadRefused as exc:
        return _page(request, session, user, error=str(exc), status=422)
    bulk, created = register_upload(
        session,
        name=stored.name,
        sha256=stored.sha256,
        fmt=stored.format,
        total_rows=stored.total_rows,
        id_a2a=id_a2a,
        id_dominio=id_dominio,
        debt_type=None,
        username=user.username,
    )
    session.commit()
    if not created and bulk.state == BulkState.DONE:
        flash(request, "Tracciato già caricato: ecco il suo stato.")
        return redirect(request, "upload", bulk_file_id=bulk.id)
    how = start_load(
        bulk_file_id=bulk.id or 0,
        parameters={
            "path": str(stored.path),
            "id_a2a": id_a2a,
            "id_dominio": id_dominio,
            "debt_type": None,
            "notices": flag(form, "avvisi"),
        },
    )
    request.session["started_" + str(bulk.id)] = how
    flash(request, "Caricamento avviato", "ok")
    return redirect(request, "upload", bulk_file_id=bulk.id)


def _bulk(session: SessionDep, user: UserDep, bulk_file_id: int) -> BulkFile:
    bulk = session.get(BulkFile, bulk_file_id)
    if bulk is None:
        raise NotFound(f"tracciato {bulk_file_id}")
    require_ec(user, bulk.id_dominio)
    return bulk


@router.get("/uploads/{bulk_file_id}", name="upload", response_class=HTMLResponse)
def upload_page(request: Request, bulk_file_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """The progress of a bulk file (the page refreshes itself until the load ends) and its products."""
    bulk = _bulk(session, user, bulk_file_id)
    running = bulk.state in (BulkState.RECEIVED, BulkState.RUNNING)
    counts = (
        bulk.counts
        if bulk.state == BulkState.DONE and bulk.counts
        else count_outcomes(session, bulk_file_id=bulk_file_id)
    )
    rejected = session.exec(
        select(BulkRow)
        .where(BulkRow.bulk_file_id == bulk_file_id, BulkRow.outcome == "REJECTED")
        .order_by(col(BulkRow.row_number))
        .limit(50)
    ).all()
    _, actions = list_actions(
        session, allowed=None, entity="bulk_file", entity_key=str(bulk_file_id), size=20
    )
    return render(
        request,
        "upload.html",
        title="Tracciato",
        detail=bulk.name,
        user=user,
        bulk=bulk,
        counts=counts,
        running=running,
        rejected=rejected,
        actions=actions,
        percent=int(100 * bulk.processed_rows / bulk.total_rows) if bulk.total_rows else 100,
        refresh=2 if running else None,
        how=request.session.get("started_" + str(bulk_file_id)),
    )


def _download(path: str | None, *, what: str, media_type: str) -> FileResponse:
    if not path or not Path(path).is_file():
        raise NotFound(what)
    return FileResponse(path, media_type=media_type, filename=Path(path).name)


@router.get("/uploads/{bulk_file_id}/outcome", name="upload_outcome")
def outcome(bulk_file_id: int, session: SessionDep, user: UserDep) -> FileResponse:
    """The outcome file (esito) of a bulk file."""
    bulk = _bulk(session, user, bulk_file_id)
    media = "application/json" if (bulk.outcome_path or "").endswith(".json") else "text/csv"
    return _download(bulk.outcome_path, what=f"esito del tracciato {bulk_file_id}", media_type=media)


@router.get("/uploads/{bulk_file_id}/notices", name="upload_notices")
def notices(bulk_file_id: int, session: SessionDep, user: UserDep) -> FileResponse:
    """The ZIP of the payment notices of the positions the file added."""
    bulk = _bulk(session, user, bulk_file_id)
    return _download(
        bulk.notices_path, what=f"avvisi del tracciato {bulk_file_id}", media_type="application/zip"
    )


@router.post("/uploads/{bulk_file_id}/resume", name="upload_resume")
def resume(
    request: Request, bulk_file_id: int, form: FormDep, session: SessionDep, user: UserDep
) -> RedirectResponse:
    """Start the load flow again on a file whose load failed or stopped: it resumes at the first new row."""
    require(user, "upload")
    bulk = _bulk(session, user, bulk_file_id)
    if bulk.state == BulkState.DONE:
        raise Refused(f"tracciato {bulk_file_id}: gia' caricato")
    path = upload_path(sha256=bulk.sha256, name=bulk.name)
    if not path.is_file():
        raise NotFound(f"file del tracciato {bulk_file_id}")
    how = start_load(
        bulk_file_id=bulk_file_id,
        parameters={
            "path": str(path),
            "id_a2a": bulk.id_a2a,
            "id_dominio": bulk.id_dominio,
            "debt_type": bulk.debt_type,
            "notices": True,
        },
    )
    request.session["started_" + str(bulk_file_id)] = how
    flash(request, "Caricamento ripreso", "ok")
    return redirect(request, "upload", bulk_file_id=bulk_file_id)
