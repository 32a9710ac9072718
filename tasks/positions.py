"""Tasks of the bulk load of positions: register the file, load a batch, write the outcome and notices."""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from models.bulk import BulkState
from models.db import session_scope
from models.positions import Position, PositionItem
from models.registry import Creditor
from models.settings import get_settings
from reports.notice import NoticeContext, NoticeCreditor, NoticeDebtor, NoticeOption, render_notice_pdf
from rules.tracciato import (
    RowDefaults,
    RowInput,
    TracciatoError,
    count_rows,
    detect_delimiter,
    read_tracciato,
)
from store import bulk as store
from store.positions import items_of

OUTCOME_COLUMNS = ("numeroRiga", "idA2A", "idPendenza", "idDominio", "numeroAvviso", "esito", "descrizione")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry only what a second attempt can fix: a lost or busy database connection."""
    try:
        state.result()
    except OperationalError:
        return True
    except BaseException:  # any other failure is final
        return False
    return False


@contextmanager
def open_tracciato(path: str | Path) -> Iterator[TextIO]:
    """The file as UTF-8 text (a BOM is dropped), lines left as they are for the CSV reader."""
    with open(path, encoding="utf-8-sig", newline="") as stream:
        yield stream


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def iter_rows(path: str | Path, *, defaults: RowDefaults) -> Iterator[tuple[int, RowInput]]:
    """Every row of the file as the loader processes it (parsed, duplicates flagged), read lazily."""
    with open_tracciato(path) as stream:
        yield from read_tracciato(stream, defaults=defaults)


@dataclass(frozen=True)
class RegisteredFile:
    """A bulk file as registered: identity, defaults and where its processing stands."""

    id: int
    name: str
    format: str
    total_rows: int
    processed_rows: int
    state: str
    created: bool
    id_a2a: str | None
    id_dominio: str | None
    debt_type: str | None

    @property
    def defaults(self) -> RowDefaults:
        """The defaults the file's rows fall back to."""
        return RowDefaults(id_a2a=self.id_a2a, id_dominio=self.id_dominio, debt_type=self.debt_type)


@task(
    name="register-bulk-file",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
)
def register_file(
    *, path: str, id_a2a: str | None, id_dominio: str | None, debt_type: str | None
) -> RegisteredFile:
    """Hash and count the file, then find it (a re-run) or register it as a new bulk file."""
    logger = get_run_logger()
    sha256 = file_sha256(path)
    with session_scope() as session:
        existing = store.find_bulk_file(session, sha256=sha256, id_a2a=id_a2a)
        fmt, total = (existing.format, existing.total_rows) if existing else _count(path)
        bulk, created = store.register_bulk_file(
            session,
            name=Path(path).name,
            sha256=sha256,
            fmt=fmt,
            id_a2a=id_a2a,
            id_dominio=id_dominio,
            debt_type=debt_type,
            total_rows=total,
        )
        registered = RegisteredFile(
            id=bulk.id or 0,
            name=bulk.name,
            format=bulk.format,
            total_rows=bulk.total_rows,
            processed_rows=bulk.processed_rows,
            state=bulk.state,
            created=created,
            id_a2a=bulk.id_a2a,
            id_dominio=bulk.id_dominio,
            debt_type=bulk.debt_type,
        )
    if not created and (registered.id_dominio, registered.debt_type) != (id_dominio, debt_type):
        logger.warning(
            "bulk file %s was registered with dominio=%s tipo=%s: keeping those defaults",
            registered.id,
            registered.id_dominio,
            registered.debt_type,
        )
    logger.info(
        "bulk file %s (%s, %s rows, sha256 %s…): %s at row %s",
        registered.id,
        registered.format,
        registered.total_rows,
        sha256[:12],
        "registered" if created else registered.state,
        registered.processed_rows,
    )
    return registered


def _count(path: str) -> tuple[str, int]:
    try:
        with open_tracciato(path) as stream:
            return count_rows(stream)
    except UnicodeDecodeError as exc:
        raise TracciatoError(f"il file non e' in UTF-8 (byte {exc.start})") from exc


@task(
    name="load-positions-batch",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_transient,
)
def load_rows(
    *, bulk_file_id: int, rows: Sequence[tuple[int, RowInput]], only_a2a: str | None
) -> store.BatchReport:
    """Validate, upsert/annul and record one batch of rows in one transaction."""
    # The long-lived objects of the imports (Prefect, SQLAlchemy, pydantic) need no collecting: freezing them
    # spares the full collections that a batch's many small objects trigger (measured: a quarter of the time).
    gc.freeze()
    with session_scope() as session:
        report = store.load_batch(session, bulk_file_id=bulk_file_id, rows=rows, only_a2a=only_a2a)
    logger = get_run_logger()
    if report.skipped:
        logger.warning(
            "rows %s-%s of bulk file %s were already processed by another run: skipped",
            report.first_row,
            report.last_row,
            bulk_file_id,
        )
    else:
        logger.info(
            "rows %s-%s of bulk file %s: %s", report.first_row, report.last_row, bulk_file_id, report.counts
        )
    return report


def output_path(*, bulk_file_id: int, name: str, suffix: str) -> Path:
    """Where a product of a bulk file goes: ``<work_dir>/bulk/<id>-<name stem><suffix>``."""
    stem = _SAFE.sub("_", Path(name).stem)[:80] or "tracciato"
    return get_settings().work_dir / "bulk" / f"{bulk_file_id}-{stem}{suffix}"


@contextmanager
def _atomic(path: Path, *, binary: bool = False) -> Iterator[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    with open(temporary, "wb") if binary else open(temporary, "w", encoding="utf-8", newline="") as out:
        yield out
    os.replace(temporary, path)


def _outcome_record(row: tuple[Any, ...]) -> dict[str, Any]:
    # store.bulk.OUTCOME_FIELDS, in the order of OUTCOME_COLUMNS
    return dict(zip(OUTCOME_COLUMNS, row, strict=True))


def _input_delimiter(path: str) -> str:
    try:
        with open_tracciato(path) as stream:
            for line in stream:
                if line.strip():
                    return detect_delimiter(line)
    except OSError:
        pass
    return ";"


@task(name="write-outcome-file", cache_policy=NO_CACHE)
def write_outcome_file(*, bulk_file_id: int, path: str, name: str, fmt: str) -> str:
    """Write the esito file (CSV with the input's delimiter, or JSON) with one entry per row."""
    target = output_path(bulk_file_id=bulk_file_id, name=name, suffix=f"-esito.{fmt}")
    with session_scope() as session, _atomic(target) as out:
        rows = store.iter_outcomes(session, bulk_file_id=bulk_file_id)
        if fmt == "json":
            counts = store.count_outcomes(session, bulk_file_id=bulk_file_id)
            out.write('{"riepilogo": ' + json.dumps(counts) + ', "esiti": [')
            for i, row in enumerate(rows):
                out.write(("," if i else "") + "\n" + json.dumps(_outcome_record(row), ensure_ascii=False))
            out.write("\n]}\n")
        else:
            writer = csv.writer(out, delimiter=_input_delimiter(path), lineterminator="\r\n")
            writer.writerow(OUTCOME_COLUMNS)
            for row in rows:
                writer.writerow(["" if value is None else value for value in row])
    get_run_logger().info("outcome file of bulk file %s: %s", bulk_file_id, target)
    return str(target)


def notice_context(*, position: Position, items: Sequence[PositionItem], creditor: Creditor) -> NoticeContext:
    """The payment notice of one position: its creditor, debtor, reason and single payment option."""
    first = items[0] if items else None
    postal = bool(first is not None and first.postal and first.iban)
    address = (
        " ".join(
            p
            for p in (
                position.debtor_address,
                position.debtor_civic,
                position.debtor_cap,
                position.debtor_locality,
                position.debtor_province,
            )
            if p
        )
        or None
    )
    info = " - ".join(p for p in (creditor.address, creditor.contacts) if p) or None
    assert position.nav is not None and position.iuv is not None
    return NoticeContext(
        creditor=NoticeCreditor(
            fiscal_code=creditor.id_dominio,
            name=creditor.name,
            sector=creditor.sector,
            info=info,
            cbill=creditor.cbill,
            logo_path=creditor.logo_path,
            postal_account=first.iban[-12:] if postal and first and first.iban else None,
        ),
        debtor=NoticeDebtor(fiscal_code=position.debtor_id, name=position.debtor_name, address=address),
        reason=position.causale,
        options=(
            NoticeOption(
                nav=position.nav,
                iuv=position.iuv,
                amount=position.amount,
                due_date=position.due_date,
                postal=postal,
            ),
        ),
        document_id=position.document_id,
    )


@task(name="write-notices-zip", cache_policy=NO_CACHE)
def write_notices_zip(*, bulk_file_id: int, name: str) -> str | None:
    """A ZIP with the notice PDF of every position the file added (``<idDominio>-<numeroAvviso>.pdf``)."""
    logger = get_run_logger()
    target = output_path(bulk_file_id=bulk_file_id, name=name, suffix="-avvisi.zip")
    written = 0
    with (
        session_scope() as session,
        _atomic(target, binary=True) as raw,
        zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        creditors: dict[str, Creditor] = {}
        page: list[Position] = []

        def flush() -> int:
            count = 0
            voci = items_of(session, position_ids=[p.id for p in page if p.id is not None])
            for position in page:
                if position.id_dominio not in creditors:
                    creditors[position.id_dominio] = session.exec(
                        select(Creditor).where(Creditor.id_dominio == position.id_dominio)
                    ).one()
                try:
                    ctx = notice_context(
                        position=position,
                        items=voci[position.id or 0],
                        creditor=creditors[position.id_dominio],
                    )
                    pdf = render_notice_pdf(ctx)
                except ValueError as exc:
                    logger.warning("no notice for %s/%s: %s", position.id_a2a, position.id_pendenza, exc)
                    continue
                archive.writestr(f"{position.id_dominio}-{position.nav}.pdf", pdf)
                count += 1
            page.clear()
            return count

        for position in store.iter_added_positions(session, bulk_file_id=bulk_file_id):
            page.append(position)
            if len(page) >= 200:
                written += flush()
        written += flush()
    logger.info("%s notices of bulk file %s in %s", written, bulk_file_id, target)
    return str(target)


@dataclass(frozen=True)
class LoadSummary:
    """The result of loading a file: its id and state, row counts by outcome and the files written."""

    bulk_file_id: int
    name: str
    state: str
    total_rows: int
    processed_rows: int
    counts: dict[str, int]
    outcome_path: str | None
    notices_path: str | None

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (flow result, JSON output)."""
        return asdict(self)


@task(
    name="finish-bulk-file",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
)
def finish_file(
    *, bulk_file_id: int, state: str, outcome_path: str | None = None, notices_path: str | None = None
) -> LoadSummary:
    """Record the final state of a bulk file (DONE counts its rows) and return its summary."""
    with session_scope() as session:
        bulk = store.set_state(
            session,
            bulk_file_id=bulk_file_id,
            state=BulkState(state),
            outcome_path=outcome_path,
            notices_path=notices_path,
        )
        return LoadSummary(
            bulk_file_id=bulk_file_id,
            name=bulk.name,
            state=BulkState(bulk.state).value,
            total_rows=bulk.total_rows,
            processed_rows=bulk.processed_rows,
            counts=dict(bulk.counts or {}),
            outcome_path=bulk.outcome_path,
            notices_path=bulk.notices_path,
        )


def summary_markdown(summary: LoadSummary) -> str:
    """The summary artifact: a table of row counts by outcome."""
    lines = [
        f"# Tracciato {summary.name}",
        "",
        f"Bulk file {summary.bulk_file_id}, state **{summary.state}**, "
        f"{summary.processed_rows}/{summary.total_rows} rows.",
        "",
        "| Esito | Righe |",
        "|---|---:|",
    ]
    lines += [f"| {outcome} | {count} |" for outcome, count in summary.counts.items()]
    lines += [f"| **Totale** | **{sum(summary.counts.values())}** |", ""]
    if summary.outcome_path:
        lines.append(f"Outcome file: `{summary.outcome_path}`")
    if summary.notices_path:
        lines.append(f"Notices: `{summary.notices_path}`")
    return "\n".join(lines) + "\n"


__all__ = [
    "LoadSummary",
    "RegisteredFile",
    "finish_file",
    "load_rows",
    "notice_context",
    "register_file",
    "summary_markdown",
    "write_notices_zip",
    "write_outcome_file",
]
