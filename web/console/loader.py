"""Bulk uploads from the console: keep the file, check it is the operator's to load, start the load flow.

The request never waits for the flow: with a Prefect server configured the console asks for a run of the
`load-positions` deployment (a worker picks it up); without one, or when that deployment does not exist, the
flow runs in a background thread of the web process. Either way the progress is read from the bulk_file table.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from models.db import session_scope
from models.settings import get_settings
from rules.tracciato import AnnulRow, InsertRow, RowDefaults, TracciatoError, count_rows, read_tracciato
from store.console import bulk_fail_if_stuck
from store.positions import find_positions

log = logging.getLogger(__name__)
DEPLOYMENT = "load-positions/load-positions"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_threads: dict[int, threading.Thread] = {}
_threads_lock = threading.Lock()


class UploadRefused(ValueError):
    """The file cannot be loaded by this operator: unreadable, or rows of an EC it may not load for."""


@dataclass(frozen=True)
class StoredUpload:
    """An uploaded file kept under the work dir, with what the bulk_file registration needs."""

    path: Path
    name: str
    sha256: str
    format: str
    total_rows: int


def safe_name(filename: str | None) -> str:
    """The file's base name with only safe characters (never a path)."""
    base = Path((filename or "").replace("\\", "/")).name
    cleaned = _SAFE.sub("_", base).strip("._")[:120]
    return cleaned or "tracciato.csv"


def upload_path(*, sha256: str, name: str) -> Path:
    """Where an uploaded file is kept: by content hash, so a resumed load finds it again."""
    return get_settings().work_dir / "uploads" / sha256[:24] / name


def store_upload(*, chunks: Iterable[bytes], filename: str | None) -> StoredUpload:
    """Write the upload under the work dir (atomically), and count its rows; UploadRefused when unreadable."""
    name = safe_name(filename)
    staging = get_settings().work_dir / "uploads" / ".incoming"
    staging.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    temp = staging / f"{threading.get_ident()}-{name}"
    with open(temp, "wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size == 0:
        temp.unlink(missing_ok=True)
        raise UploadRefused("Il file è vuoto")
    sha256 = digest.hexdigest()
    final = upload_path(sha256=sha256, name=name)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp.replace(final)
    try:
        with open(final, encoding="utf-8-sig", newline="") as stream:
            fmt, total = count_rows(stream)
    except (TracciatoError, UnicodeDecodeError) as exc:
        raise UploadRefused(f"Il file non è un tracciato leggibile: {exc}") from exc
    return StoredUpload(path=final, name=name, sha256=sha256, format=fmt, total_rows=total)


def check_scope(
    session: Session, *, upload: StoredUpload, defaults: RowDefaults, allowed: frozenset[str] | None
) -> None:
    """Refuse a file that names an EC the operator may not load for, or that would change (update or
    annul) a stored position of such an EC: a row's key (idA2A, idPendenza) finds it whatever EC it names."""
    if allowed is None:
        return
    pending: list[tuple[int, str, str]] = []

    def check_stored() -> None:
        found = find_positions(session, keys=[(a2a, pid) for _, a2a, pid in pending])
        for number, a2a, pid in pending:
            position = found.get((a2a, pid))
            if position is not None and position.id_dominio not in allowed:
                raise UploadRefused(
                    f"riga {number}: la pendenza {a2a}/{pid} e' del dominio "
                    f"{position.id_dominio}, non abilitato per l'operatore"
                )
        pending.clear()

    try:
        with open(upload.path, encoding="utf-8-sig", newline="") as stream:
            for number, row in read_tracciato(stream, defaults=defaults):
                id_dominio = row.body.idDominio if isinstance(row, InsertRow) else row.id_dominio
                if id_dominio is not None and id_dominio not in allowed:
                    raise UploadRefused(
                        f"riga {number}: idDominio {id_dominio} non abilitato per l'operatore"
                    )
                if isinstance(row, InsertRow | AnnulRow):
                    pending.append((number, row.id_a2a, row.id_pendenza))
                    if len(pending) >= 1000:
                        check_stored()
    except (TracciatoError, UnicodeDecodeError) as exc:
        raise UploadRefused(f"Il file non è un tracciato leggibile: {exc}") from exc
    check_stored()


def start_load(*, bulk_file_id: int, parameters: dict[str, Any]) -> str:
    """Start the load flow for a registered file without waiting; returns how ('deployment' or 'thread')."""
    from web.console.stages import clear_cache, prefect_api_url

    clear_cache()
    if prefect_api_url():
        try:
            from prefect.deployments import run_deployment
            from prefect.exceptions import ObjectNotFound

            try:
                run_deployment(name=DEPLOYMENT, parameters=parameters, timeout=0)
                return "deployment"
            except ObjectNotFound:
                log.info(
                    "no %s deployment on the Prefect server: running the flow in the web process", DEPLOYMENT
                )
        except Exception:  # the server is configured but unusable: the thread still records the run locally
            log.exception("could not submit a %s run: running the flow in the web process", DEPLOYMENT)
    with _threads_lock:
        running = _threads.get(bulk_file_id)
        if running is not None and running.is_alive():
            return "thread"
        thread = threading.Thread(
            target=_run,
            kwargs={"bulk_file_id": bulk_file_id, "parameters": parameters},
            name=f"load-positions-{bulk_file_id}",
            daemon=True,
        )
        _threads[bulk_file_id] = thread
    thread.start()
    return "thread"


def _run(*, bulk_file_id: int, parameters: dict[str, Any]) -> None:
    from flows.load_positions import load_positions

    try:
        load_positions(**parameters)
    except Exception:
        log.exception("load-positions for bulk file %s failed", bulk_file_id)
        with session_scope() as session:
            bulk_fail_if_stuck(session, bulk_file_id=bulk_file_id)
    finally:
        from web.console.stages import clear_cache

        clear_cache()


def wait_for(bulk_file_id: int, timeout: float) -> bool:
    """Wait for a background load of this process to end (tests, orderly shutdown); True if it ended."""
    with _threads_lock:
        thread = _threads.get(bulk_file_id)
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
