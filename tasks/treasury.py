"""Tasks of the treasury ingestion: list a source, fetch one file, parse and store it, archive, report."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from connectors.treasury.formats import HEAD_BYTES, detect_format, read_movements
from connectors.treasury.movement import CsvMapping, Movement, TreasuryFormat, TreasuryFormatError
from connectors.treasury.sftp import RemoteFile, SftpConfig, SftpError, SftpSource
from models.db import get_engine
from models.registry import TreasurySource
from models.settings import get_settings
from models.treasury import TreasuryFileState
from store import treasury as store
from store.movement_dedupe import link_api_movements

SKIPPED = "SKIPPED"
ARTIFACT_ROWS = 1_000  # a table artifact is for eyes, not for export: the rest stays in the database
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ERROR_LIMIT = 2_000


class SourceInfo(BaseModel):
    """What the flow needs to know of a source to orchestrate it."""

    model_config = ConfigDict(frozen=True)

    name: str
    id_dominio: str
    archive: bool


class FetchedFile(BaseModel):
    """A file downloaded from a source into the local inbox."""

    model_config = ConfigDict(frozen=True)

    source: str
    name: str
    path: str
    size: int
    mtime: datetime | None = None
    sha256: str


class FileOutcome(BaseModel):
    """What became of one file: PROCESSED, QUARANTINED or SKIPPED (seen before, ``previous`` says how).

    ``linked``: new movements that are money already posted through the API Ragioneria, joined to it.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    name: str
    sha256: str
    state: str
    file_id: int | None = None
    format: str | None = None
    movements: int = 0
    duplicates: int = 0
    linked: int = 0
    conflicts: tuple[str, ...] = ()  # movements repeating a stored bank id with other money (not stored)
    error: str | None = None
    previous: str | None = None

    @property
    def archivable(self) -> bool:
        """Whether the file may leave the bank's directory: stored now or before (never a quarantined one)."""
        return self.state == TreasuryFileState.PROCESSED or self.previous == TreasuryFileState.PROCESSED


class UnreadableFileError(Exception):
    """The file's content cannot be read as its format; ``reason`` names the record and field."""

    def __init__(self, reason: str) -> None:
        self.reason = reason[:_ERROR_LIMIT]
        super().__init__(self.reason)


def retry_if_retriable(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect retry condition: only SFTP faults classified retriable (link dropped, timeout) are retried."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, SftpError) and exc.retriable


def _db_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a store only for a lost or busy database connection."""
    return isinstance(state.result(raise_on_failure=False), OperationalError)


def _safe(name: str) -> str:
    return _SAFE.sub("_", name).strip("._") or "file"


def treasury_dir(kind: str, source: str, *, work_dir: Path | None = None) -> Path:
    """``<work_dir>/treasury/<kind>/<source>`` (inbox, quarantine)."""
    base = work_dir if work_dir is not None else get_settings().work_dir
    return Path(base) / "treasury" / kind / _safe(source)


def load_source(session: Session, *, name: str) -> TreasurySource:
    """The treasury source of that name (LookupError if none)."""
    found = store.enabled_sources(session, name=name)
    if not found:
        raise LookupError(f"no treasury source named {name!r}")
    return found[0]


def source_format(source: TreasurySource, *, head: bytes, name: str) -> TreasuryFormat:
    """The configured format of the source, else the one the file's first bytes show."""
    if source.format:
        try:
            return TreasuryFormat[source.format.upper()]
        except KeyError:
            return TreasuryFormat(source.format.lower())
    return detect_format(head=head, name=name)


def _checked(movements: Iterator[Movement]) -> Iterator[Movement]:
    """The reader's movements; what the reader chokes on becomes UnreadableFileError (database errors not)."""
    while True:
        try:
            movement = next(movements)
        except StopIteration:
            return
        except TreasuryFormatError as exc:
            raise UnreadableFileError(str(exc)) from exc
        except (ValueError, UnicodeError, SyntaxError) as exc:  # a reader's unwrapped complaint is the file's
            raise UnreadableFileError(f"{type(exc).__name__}: {exc}") from exc
        yield movement


def _outcome(fetched: FetchedFile, **values: Any) -> FileOutcome:
    return FileOutcome(source=fetched.source, name=fetched.name, sha256=fetched.sha256, **values)


def process_file(
    *,
    fetched: FetchedFile,
    engine: Engine | None = None,
    work_dir: Path | None = None,
    batch_size: int = store.BATCH_SIZE,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> FileOutcome:
    """Parse a fetched file and store its movements in one transaction, or quarantine it.

    The file row is claimed (inserted) first in the same transaction as its movements, so a crash leaves
    nothing behind and a re-run redoes the file; a file already recorded is skipped; a bad file is recorded
    QUARANTINED with the reader's reason, keeps none of its movements and is kept under quarantine/.
    """
    log = logger or logging.getLogger(__name__)
    engine = engine or get_engine()
    path = Path(fetched.path)
    with Session(engine, expire_on_commit=False) as session:
        source = load_source(session, name=fetched.source)
        seen = store.find_file(session, source=fetched.source, sha256=fetched.sha256)
        if seen is not None:
            log.info(
                "treasury %s: %s already %s as file %s, skipped",
                fetched.source,
                fetched.name,
                seen.state,
                seen.id,
            )
            path.unlink(missing_ok=True)
            return _outcome(fetched, state=SKIPPED, file_id=seen.id, format=seen.format, previous=seen.state)
        mapping = CsvMapping(**source.csv_mapping) if source.csv_mapping else None
        fmt: TreasuryFormat | None = None
        try:
            with path.open("rb") as stream:
                fmt = source_format(source, head=stream.read(HEAD_BYTES), name=fetched.name)
                stream.seek(0)
                claimed = store.claim_file(
                    session,
                    source=fetched.source,
                    name=fetched.name,
                    size=fetched.size,
                    mtime=fetched.mtime,
                    sha256=fetched.sha256,
                    fmt=fmt.value,
                )
                if claimed is None:  # another worker stored it meanwhile
                    session.rollback()
                    path.unlink(missing_ok=True)
                    return _outcome(
                        fetched, state=SKIPPED, format=fmt.value, previous=TreasuryFileState.PROCESSED.value
                    )
                movements = read_movements(stream, fmt=fmt, csv_mapping=mapping, source_name=fetched.name)
                read, inserted, conflicts = store.store_movements(
                    session,
                    movements=_checked(movements),
                    source=source,
                    file_id=claimed.id,
                    fmt=fmt.value,
                    batch_size=batch_size,
                )
                linked = link_api_movements(
                    session, id_dominio=source.id_dominio, account=source.account, file_id=claimed.id
                )
                described = tuple(c.describe() for c in conflicts)
                store.finish_file(session, file=claimed, movements=inserted, duplicates=read - inserted,
                                  conflicts=described)
                session.commit()
        except (UnreadableFileError, TreasuryFormatError) as exc:
            session.rollback()
            reason = exc.reason if isinstance(exc, UnreadableFileError) else str(exc)
            kept = treasury_dir("quarantine", fetched.source, work_dir=work_dir) / (
                f"{fetched.sha256[:12]}-{_safe(fetched.name)}"
            )
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), kept)
            row = store.record_quarantine(
                session,
                source=fetched.source,
                name=fetched.name,
                size=fetched.size,
                mtime=fetched.mtime,
                sha256=fetched.sha256,
                fmt=fmt.value if fmt else None,
                error=reason[:_ERROR_LIMIT],
            )
            session.commit()
            log.warning(
                "treasury %s: %s quarantined (%s), kept at %s", fetched.source, fetched.name, reason, kept
            )
            return _outcome(
                fetched,
                state=TreasuryFileState.QUARANTINED.value,
                file_id=row.id,
                format=row.format,
                error=reason,
            )
    path.unlink(missing_ok=True)
    for conflict in described[:20]:  # all of them are counted in the file's row and the artifact
        log.warning("treasury %s: %s repeats a stored movement with other money, the stored one stands: %s",
                    fetched.source, fetched.name, conflict)
    log.info(
        "treasury %s: %s (%s) stored as file %s: %d new movements (%d already posted through the API), "
        "%d already known",
        fetched.source,
        fetched.name,
        fmt.value,
        claimed.id,
        inserted,
        len(linked),
        read - inserted,
    )
    return _outcome(
        fetched,
        state=TreasuryFileState.PROCESSED.value,
        file_id=claimed.id,
        format=fmt.value,
        movements=inserted,
        duplicates=read - inserted,
        linked=len(linked),
        conflicts=described,
    )


def _sftp_for(name: str) -> SftpSource:
    with Session(get_engine(), expire_on_commit=False) as session:
        source = load_source(session, name=name)
    return SftpSource(SftpConfig.from_source(source))


# --- the tasks ----------------------------------------------------------------------------------------------

_SFTP_RETRIES: dict[str, Any] = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=retry_if_retriable,
    cache_policy=NO_CACHE,
)


@task(name="list-treasury-sources", cache_policy=NO_CACHE)
def list_treasury_sources(source: str | None = None) -> list[SourceInfo]:
    """The sources to ingest: the one named, or every enabled one."""
    with Session(get_engine(), expire_on_commit=False) as session:
        rows = store.enabled_sources(session, name=source)
    if source is not None and not rows:
        raise LookupError(f"no treasury source named {source!r}")
    return [SourceInfo(name=r.name, id_dominio=r.id_dominio, archive=bool(r.archive_dir)) for r in rows]


@task(name="list-treasury-files", task_run_name="list-{source}", **_SFTP_RETRIES)
def list_treasury_files(source: str) -> list[RemoteFile]:
    """The journal files waiting in the source's directory, oldest first."""
    with _sftp_for(source) as sftp:
        files = sftp.list_files()
    get_run_logger().info("treasury %s: %d file(s) waiting", source, len(files))
    return files


@task(name="fetch-treasury-file", task_run_name="fetch-{source}-{file.name}", **_SFTP_RETRIES)
def fetch_treasury_file(source: str, file: RemoteFile) -> FetchedFile:
    """Download one file into the inbox, hashing it on the way."""
    target = treasury_dir("inbox", source) / _safe(file.name)
    with _sftp_for(source) as sftp:
        got = sftp.download(name=file.name, target=target)
    return FetchedFile(
        source=source,
        name=file.name,
        path=str(got.path),
        size=got.size,
        mtime=got.mtime or file.mtime,
        sha256=got.sha256,
    )


@task(
    name="store-treasury-file",
    task_run_name="store-{fetched.source}-{fetched.name}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_db_transient,
)
def store_treasury_file(fetched: FetchedFile) -> FileOutcome:
    """Parse and store one fetched file (or skip or quarantine it)."""
    return process_file(fetched=fetched, logger=get_run_logger())


@task(name="archive-treasury-files", task_run_name="archive-{source}", **_SFTP_RETRIES)
def archive_treasury_files(source: str, names: list[str]) -> list[str]:
    """Move stored files to the source's archive directory; returns those moved now."""
    moved = []
    with _sftp_for(source) as sftp:
        for name in names:
            if sftp.archive(name=name):
                moved.append(name)
    get_run_logger().info("treasury %s: %d file(s) archived", source, len(moved))
    return moved


@task(
    name="join-api-movements",
    task_run_name="join-api-movements-{id_dominio}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_db_transient,
)
def join_api_movements(id_dominio: str) -> int:
    """Join the EC's credits posted through the API Ragioneria to the journal's copies of the same money.

    Ingest-treasury joins them as it stores a file; this catches a journal stored while the API's copy was
    being written (or before this rule existed), so reconciliation never sums the same money twice.
    """
    with Session(get_engine(), expire_on_commit=False) as session:
        linked = link_api_movements(session, id_dominio=id_dominio)
        session.commit()
    if linked:
        get_run_logger().info(
            "EC %s: %d riconciliazioni posted through the API joined to the journal's movements: %s",
            id_dominio,
            len(linked),
            ", ".join(f"{x.id_riconciliazione} -> {x.movement_id} ({x.evidence})" for x in linked[:20]),
        )
    return len(linked)


# --- report -------------------------------------------------------------------------------------------


def movement_table(rows: list[Any]) -> list[dict[str, str]]:
    """Table artifact rows (date, amount, remittance reference, kind) of stored movements."""
    table = []
    for m in rows:
        day = m.value_date or m.booking_date
        table.append(
            {
                "date": day.isoformat() if day else "",
                "amount": f"{m.amount:.2f}",
                "reference": m.reference or "",
                "kind": m.reference_kind or "",
            }
        )
    return table


def summary_markdown(*, outcomes: list[FileOutcome], failures: dict[str, str]) -> str:
    """The markdown summary of one ingestion run: a line per file, then what failed."""
    lines = ["# Treasury ingestion", ""]
    if outcomes:
        lines += [
            "| source | file | outcome | new movements | duplicates | note |",
            "|---|---|---|---:|---:|---|",
        ]
        for o in outcomes:
            note = o.error or (f"seen before ({o.previous})" if o.previous else "")
            if o.linked:
                note = f"{o.linked} already posted through the API Ragioneria, joined to it"
            if o.conflicts:  # beside what the note says already (the API-posted movements joined)
                shown = "; ".join(o.conflicts[:3])
                conflicts = f"{len(o.conflicts)} repeated with other money, not stored: {shown}"
                note = f"{note}; {conflicts}" if note else conflicts
            note = note.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {o.source} | {o.name} | {o.state} | {o.movements} | {o.duplicates} | {note} |")
    else:
        lines.append("No new file.")
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- **{where}**: {why}" for where, why in failures.items()]
    totals = sum(o.movements for o in outcomes), sum(o.duplicates for o in outcomes)
    linked = sum(o.linked for o in outcomes)
    lines += [
        "",
        f"Totals: {totals[0]} new movements"
        + (f" ({linked} joined to riconciliazioni posted through the API)" if linked else "")
        + f", {totals[1]} duplicates, "
        f"{sum(o.state == TreasuryFileState.QUARANTINED for o in outcomes)} file(s) quarantined.",
    ]
    return "\n".join(lines) + "\n"


def artifact_key(source: str) -> str:
    """Prefect artifact key of a source's movement table (lowercase letters, digits and dashes)."""
    return "treasury-movements-" + (re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-") or "source")


@task(name="publish-treasury-report", cache_policy=NO_CACHE)
def publish_treasury_report(outcomes: list[FileOutcome], failures: dict[str, str]) -> dict[str, int]:
    """A table artifact per source of the movements stored in this run, and a markdown summary."""
    per_source: dict[str, list[int]] = {}
    for o in outcomes:
        if o.state == TreasuryFileState.PROCESSED and o.file_id is not None:
            per_source.setdefault(o.source, []).append(o.file_id)
    shown: dict[str, int] = {}
    with Session(get_engine(), expire_on_commit=False) as session:
        for source, file_ids in per_source.items():
            rows = store.movements_of_files(session, file_ids=file_ids, limit=ARTIFACT_ROWS)
            total = sum(o.movements for o in outcomes if o.source == source and o.file_id in file_ids)
            more = f" (first {len(rows)} of {total})" if total > len(rows) else ""
            create_table_artifact(
                table=movement_table(rows),
                key=artifact_key(source),
                description=f"Treasury movements stored from {source}{more}",
            )
            shown[source] = len(rows)
    create_markdown_artifact(
        markdown=summary_markdown(outcomes=outcomes, failures=failures),
        key="treasury-ingest-summary",
        description="Treasury ingestion: files and outcomes",
    )
    return shown
