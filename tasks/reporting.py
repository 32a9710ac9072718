"""Tasks of the reporting-flow download: list an EC's new flows, download and store one flow, move the cursor.

Each task wraps a plain function (``list_creditor_flows``, ``download_flow``, ...) that takes a logger, so the
work is tested without Prefect. A listing names only flows not stored yet; a download stores one flow in one
transaction (a crash leaves nothing half-stored) or refuses it when its content is unreadable, with a journal
entry, so one bad flow never stops the others.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from connectors.journal import EventJournal
from connectors.pagopa.config import PagopaEndpoints, get_endpoints
from connectors.pagopa.errors import PagopaError, PagopaSchemaError
from connectors.pagopa.fdr import FdrClient
from connectors.pagopa.nodo import NodoClient
from connectors.secrets import resolve_secret
from models.db import get_engine
from models.journal import Outcome, Role
from models.registry import ReportingMode
from models.settings import get_settings
from rules.reporting import SKIP, FlowFormatError, FlowHeader, FlowLine, fdr_line, watermark_after
from store import reporting as store

Log = logging.Logger | logging.LoggerAdapter[Any]

STORED = "STORED"
SKIPPED = "SKIPPED"
REFUSED = "REFUSED"
BATCH_SIZE = 2000
CURSOR_OVERLAP = timedelta(minutes=10)
SPOOL_MEMORY = 8 * 1024 * 1024  # payments kept in memory up to this size, then on disk
_ERROR_LIMIT = 2000


class EcJob(BaseModel):
    """An EC to download flows for, and how."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    protocol: str


class FlowRef(BaseModel):
    """A flow to download: FdR REST names PSP and revision; a SOAP listing only the id and its date."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    protocol: str
    id_flusso: str
    psp_id: str | None = None
    revision: int = 1
    published_at: datetime | None = None


class EcListing(BaseModel):
    """What one EC's listing found: the flows to download (oldest publication first), those already stored."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    protocol: str
    flows: list[FlowRef]
    listed: int
    already_stored: int
    deferred: int = 0
    stored_published: list[datetime] = []  # publication times of the listed flows found already stored
    resume_from: datetime | None = None  # publication time of the first flow left for the next run


class FlowOutcome(BaseModel):
    """What became of a flow: STORED (with figures), SKIPPED (stored meanwhile) or REFUSED (unreadable)."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    id_flusso: str
    psp_id: str | None
    revision: int
    protocol: str
    status: str
    published_at: datetime | None = None
    flow_id: int | None = None
    state: str | None = None
    lines: int = 0
    amount: Decimal = Decimal("0.00")
    linked: int = 0
    no_receipt: int = 0
    other_broker: int = 0
    line_states: dict[str, int] = {}
    anomalies: dict[str, int] = {}
    flow_anomalies: list[str] = []
    error: str | None = None


# --- clients --------------------------------------------------------------------------------------


def fdr_client(scope: store.CreditorScope, *, cfg: PagopaEndpoints | None = None) -> FdrClient:
    """An FdR REST client with the subscription key of the EC's station."""
    cfg = cfg or get_endpoints()
    return FdrClient(
        base_url=cfg.fdr_url,
        subscription_key=resolve_secret(scope.api_key_ref or cfg.subscription_key_ref),
        timeout=cfg.timeout_seconds,
        attempts=cfg.call_attempts,
        backoff=cfg.retry_backoff_seconds,
        max_retry_after=cfg.max_retry_after_seconds,
    )


def nodo_client(scope: store.CreditorScope, *, cfg: PagopaEndpoints | None = None) -> NodoClient:
    """A Node SOAP client authenticated as the EC's station."""
    cfg = cfg or get_endpoints()
    password = resolve_secret(scope.password_ref)
    if password is None:
        raise PagopaSchemaError(f"station {scope.station_id} has no password_ref", operation="configuration")
    return NodoClient(
        url=cfg.nodo_url,
        broker_id=scope.broker_id,
        station_id=scope.station_id,
        password=password,
        timeout=cfg.timeout_seconds,
        attempts=cfg.call_attempts,
        backoff=cfg.retry_backoff_seconds,
    )


def load_scope(id_dominio: str) -> store.CreditorScope:
    """The EC's scope (LookupError if it is not in the registry)."""
    with Session(get_engine(), expire_on_commit=False) as session:
        found = store.reporting_creditors(session, id_dominio=id_dominio)
    if not found:
        raise LookupError(f"EC {id_dominio} is not in the registry")
    return found[0]


# --- plain functions ------------------------------------------------------------------------------


def creditors_to_download(id_dominio: str | None) -> list[EcJob]:
    """The ECs of this run: the one named (LookupError if unknown), or every one with reporting enabled."""
    with Session(get_engine(), expire_on_commit=False) as session:
        scopes = store.reporting_creditors(session, id_dominio=id_dominio)
    if id_dominio is not None and not scopes:
        raise LookupError(f"EC {id_dominio} is not in the registry")
    return [EcJob(id_dominio=s.id_dominio, protocol=s.protocol) for s in scopes]


def fdr_watermark_name(id_dominio: str) -> str:
    """Name of the FdR listing cursor of an EC."""
    return f"fdr:{id_dominio}"


def list_creditor_flows(
    job: EcJob, *, days: int, now: datetime | None = None, limit: int | None = None, logger: Log | None = None
) -> EcListing:
    """The EC's flows published in the last ``days`` (FdR: after the cursor too) and not stored yet."""
    log = logger or logging.getLogger(__name__)
    cfg = get_endpoints()
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    scope = load_scope(job.id_dominio)
    refs: list[FlowRef] = []
    if scope.protocol == ReportingMode.SOAP:
        with nodo_client(scope, cfg=cfg) as nodo:
            listed = nodo.list_flows(ec=scope.id_dominio)
        for item in listed:
            if item.flow_at is None or item.flow_at >= since:
                refs.append(
                    FlowRef(
                        id_dominio=scope.id_dominio,
                        protocol=scope.protocol,
                        id_flusso=item.id_flusso,
                        published_at=item.flow_at,
                    )
                )
    else:
        with Session(get_engine()) as session:
            mark = store.get_watermark(session, name=fdr_watermark_name(scope.id_dominio))
        if mark is not None:
            # A little overlap: FdR's listing is eventually consistent; flows seen twice are skipped below.
            since = max(since, datetime.fromisoformat(mark) - CURSOR_OVERLAP)
        with fdr_client(scope, cfg=cfg) as fdr:
            page, pages = 1, 1
            while page <= pages:
                answer = fdr.list_flows(
                    ec=scope.id_dominio, published_gt=since, page=page, size=cfg.fdr_page_size
                )
                refs += [
                    FlowRef(
                        id_dominio=scope.id_dominio,
                        protocol=scope.protocol,
                        id_flusso=f.fdr,
                        psp_id=f.psp_id,
                        revision=f.revision,
                        published_at=f.published,
                    )
                    for f in answer.flows
                ]
                pages, page = answer.total_pages, page + 1
    with Session(get_engine()) as session:
        stored = store.stored_revisions(session, id_dominio=scope.id_dominio, ids=[r.id_flusso for r in refs])
    revised = [_soap_revision(r, stored) if r.protocol == ReportingMode.SOAP else r for r in refs]
    todo = [r for r in revised if _is_new(r, stored)]
    known = [r.published_at for r in revised if r.published_at is not None and not _is_new(r, stored)]
    todo.sort(key=lambda r: (r.published_at or now, r.id_flusso))
    deferred, resume_from = 0, None
    if limit is not None and len(todo) > limit:
        resume_from = todo[limit].published_at or now
        todo, deferred = todo[:limit], len(todo) - limit
    log.info(
        "reporting %s (%s): %d flows listed, %d new%s",
        scope.id_dominio,
        scope.protocol,
        len(refs),
        len(todo),
        f", {deferred} left for the next run" if deferred else "",
    )
    return EcListing(
        id_dominio=scope.id_dominio,
        protocol=scope.protocol,
        flows=todo,
        listed=len(refs),
        already_stored=len(refs) - len(todo) - deferred,
        deferred=deferred,
        stored_published=known,
        resume_from=resume_from,
    )


def _soap_revision(ref: FlowRef, stored: dict[str, list[tuple[str, int, datetime | None]]]) -> FlowRef:
    # The Node's list names no revision: a flow re-issued under the same id shows a newer date.
    rows = stored.get(ref.id_flusso, [])
    if not rows:
        return ref
    if any(published == ref.published_at for _psp, _rev, published in rows):
        return ref.model_copy(
            update={"revision": max(rev for _p, rev, pub in rows if pub == ref.published_at)}
        )
    return ref.model_copy(update={"revision": max(rev for _p, rev, _pub in rows) + 1})


def _is_new(ref: FlowRef, stored: dict[str, list[tuple[str, int, datetime | None]]]) -> bool:
    rows = stored.get(ref.id_flusso, [])
    if ref.protocol == ReportingMode.SOAP:
        return not any(published == ref.published_at for _psp, _rev, published in rows)
    return not any(psp == ref.psp_id and rev == ref.revision for psp, rev, _pub in rows)


def spool_fdr_payments(fdr: FdrClient, ref: FlowRef, *, size: int) -> IO[str]:
    """Every payment page of a flow, fetched before any database work and spooled (to disk when large)."""
    spool: IO[str] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, mode="w+", encoding="utf-8")  # noqa: SIM115
    page, pages = 1, 1
    while page <= pages:
        answer = fdr.get_payments(
            ec=ref.id_dominio,
            fdr=ref.id_flusso,
            revision=ref.revision,
            psp=ref.psp_id or "",
            page=page,
            size=size,
        )
        for p in answer.payments:
            spool.write(
                json.dumps(
                    [
                        p.index,
                        p.iuv,
                        p.iur,
                        p.transfer_index,
                        str(p.amount),
                        p.pay_status,
                        p.pay_date.isoformat() if p.pay_date else None,
                    ]
                )
                + "\n"
            )
        pages, page = answer.total_pages, page + 1
    spool.seek(0)
    return spool


def spooled_batches(spool: IO[str], *, batch_size: int) -> Iterator[list[FlowLine]]:
    """The spooled payments as lines, ``batch_size`` at a time."""
    batch: list[FlowLine] = []
    for text in spool:
        index, iuv, iur, transfer_index, amount, status, day = json.loads(text)
        batch.append(
            fdr_line(
                index=index,
                iuv=iuv,
                iur=iur,
                transfer_index=transfer_index,
                amount=Decimal(amount),
                pay_status=status,
                pay_date=date.fromisoformat(day) if day else None,
            )
        )
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fdr_header(fdr: FdrClient, ref: FlowRef) -> FlowHeader:
    h = fdr.get_flow(ec=ref.id_dominio, fdr=ref.id_flusso, revision=ref.revision, psp=ref.psp_id or "")
    return FlowHeader(
        id_flusso=h.fdr,
        psp_id=h.psp_id,
        ec=h.ec,
        total_count=h.total_count,
        total_amount=h.total_amount,
        flow_at=h.flow_date,
        settlement_ref=h.regulation,
        settlement_date=h.regulation_date,
        psp_name=h.psp_name,
        bic=h.bic,
        ec_name=h.ec_name,
    )


def _outcome(ref: FlowRef, result: store.IngestResult, *, psp_id: str) -> FlowOutcome:
    states = result.states
    return FlowOutcome(
        id_dominio=ref.id_dominio,
        id_flusso=ref.id_flusso,
        psp_id=psp_id,
        revision=ref.revision,
        protocol=ref.protocol,
        published_at=ref.published_at,
        status=SKIPPED if result.action == SKIP else STORED,
        flow_id=result.flow_id,
        state=result.state,
        lines=result.lines,
        amount=result.amount,
        linked=states.get("LINKED", 0),
        no_receipt=states.get("NO_RECEIPT", 0),
        other_broker=states.get("ALTRO_INTERMEDIARIO", 0),
        line_states=dict(states),
        anomalies=dict(result.anomalies),
        flow_anomalies=[f"{a.code} {a.description}" for a in result.flow_anomalies],
    )


def refuse_flow(
    ref: FlowRef,
    *,
    error: Exception,
    payload: bytes | None,
    journal: EventJournal | None = None,
    psp_id: str | None = None,
) -> FlowOutcome:
    """Record an unreadable flow in the event journal and describe it as REFUSED."""
    kind = error.kind if isinstance(error, FlowFormatError) else "schema"
    (journal or EventJournal()).record(
        component="reporting",
        operation="checkFlussoRendicontazione",
        role=Role.CLIENT,
        outcome=Outcome.KO,
        keys={
            "id_dominio": ref.id_dominio,
            "id_flusso": ref.id_flusso,
            "psp": psp_id or ref.psp_id,
            "revision": ref.revision,
        },
        response=payload,
        fault_code=f"FR_{kind.upper()}",
        error=str(error)[:_ERROR_LIMIT],
    )
    return FlowOutcome(
        id_dominio=ref.id_dominio,
        id_flusso=ref.id_flusso,
        psp_id=psp_id or ref.psp_id,
        revision=ref.revision,
        protocol=ref.protocol,
        status=REFUSED,
        published_at=ref.published_at,
        error=f"{kind}: {error}"[:_ERROR_LIMIT],
    )


def spool_document(data: bytes) -> IO[bytes]:
    """A downloaded document moved to a spooled temporary file (on disk beyond SPOOL_MEMORY), rewound."""
    document: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
    document.write(data)
    document.seek(0)
    return document


def download_flow(ref: FlowRef, *, logger: Log | None = None, batch_size: int = BATCH_SIZE) -> FlowOutcome:
    """Download one flow and store it with its lines, checked and linked, in one transaction."""
    log = logger or logging.getLogger(__name__)
    cfg = get_endpoints()
    scope = load_scope(ref.id_dominio)
    engine = get_engine()
    if ref.protocol == ReportingMode.SOAP:
        with nodo_client(scope, cfg=cfg) as nodo:
            xml = nodo.get_flow_xml(ec=ref.id_dominio, id_flusso=ref.id_flusso)
        document = spool_document(xml)
        del xml  # the spool holds it (on disk when large): parse and storage read it back in turn
        with document:
            try:
                with Session(engine, expire_on_commit=False) as session:
                    result = store.ingest_xml(
                        session,
                        scope=scope,
                        stream=document,
                        revision=ref.revision,
                        published_at=ref.published_at,
                        batch_size=batch_size,
                    )
                    session.commit()
            except FlowFormatError as exc:
                log.warning("reporting %s: flow %s refused: %s", ref.id_dominio, ref.id_flusso, exc)
                document.seek(0)
                head = document.read(get_settings().journal_payload_max_bytes + 1)
                return refuse_flow(ref, error=exc, payload=head)
            psp_id = result.psp_id or "?"
    else:
        # Everything is fetched (and journaled) before the transaction opens: a SQLite writer holds the only
        # write lock for its whole transaction, and network waits do not belong inside one anyway.
        try:
            with fdr_client(scope, cfg=cfg) as fdr:
                header = _fdr_header(fdr, ref)
                spool = spool_fdr_payments(fdr, ref, size=cfg.fdr_page_size)
        except PagopaSchemaError as exc:
            log.warning("reporting %s: flow %s refused: %s", ref.id_dominio, ref.id_flusso, exc)
            return refuse_flow(ref, error=exc, payload=None)
        with spool, Session(engine, expire_on_commit=False) as session:
            result = store.ingest_flow(
                session,
                scope=scope,
                header=header,
                batches=spooled_batches(spool, batch_size=batch_size),
                revision=ref.revision,
                source=ReportingMode.FDR_REST.value,
                published_at=ref.published_at,
            )
            session.commit()
        psp_id = header.psp_id
    outcome = _outcome(ref, result, psp_id=psp_id)
    log.info(
        "reporting %s: flow %s rev %d (%s) %s: %d lines, %s, %d linked, %d awaiting receipt%s",
        ref.id_dominio,
        ref.id_flusso,
        ref.revision,
        psp_id,
        outcome.status,
        outcome.lines,
        outcome.amount,
        outcome.linked,
        outcome.no_receipt,
        f", anomalies {outcome.anomalies}" if outcome.anomalies else "",
    )
    return outcome


def advance_fdr_cursor(
    id_dominio: str, *, handled: list[datetime], failed: list[datetime]
) -> datetime | None:
    """Move the EC's FdR cursor over the flows stored (or refused) before the first failure."""
    value = watermark_after(handled=handled, failed=failed)
    if value is None:
        return None
    with Session(get_engine()) as session:
        moved = store.advance_watermark(session, name=fdr_watermark_name(id_dominio), value=value)
        session.commit()
    return value if moved else None


# --- Prefect tasks --------------------------------------------------------------------------------


def retry_if_retriable(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect retry condition: a pagoPA fault classified retriable, or a lost database connection."""
    exc = state.result(raise_on_failure=False)
    return (isinstance(exc, PagopaError) and exc.retriable) or isinstance(exc, OperationalError)


_RETRIES: dict[str, Any] = dict(
    retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_if_retriable, cache_policy=NO_CACHE
)


@task(name="list-reporting-creditors", cache_policy=NO_CACHE)
def list_reporting_creditors(id_dominio: str | None = None) -> list[EcJob]:
    """The ECs of this run."""
    return creditors_to_download(id_dominio)


@task(name="list-reporting-flows", task_run_name="list-{job.id_dominio}", **_RETRIES)
def list_reporting_flows(job: EcJob, days: int, limit: int | None = None) -> EcListing:
    """One EC's flows not stored yet."""
    return list_creditor_flows(job, days=days, limit=limit, logger=get_run_logger())


@task(
    name="download-reporting-flow",
    task_run_name="download-{ref.id_dominio}-{ref.id_flusso}-r{ref.revision}",
    **_RETRIES,
)
def download_reporting_flow(ref: FlowRef) -> FlowOutcome:
    """Download, check, link and store one flow."""
    return download_flow(ref, logger=get_run_logger())


@task(name="advance-fdr-cursor", task_run_name="cursor-{id_dominio}", cache_policy=NO_CACHE)
def advance_reporting_cursor(
    id_dominio: str, handled: list[datetime], failed: list[datetime]
) -> datetime | None:
    """Move the EC's FdR listing cursor past what this run stored."""
    return advance_fdr_cursor(id_dominio, handled=handled, failed=failed)


# --- report ---------------------------------------------------------------------------------------


def psp_table(outcomes: list[FlowOutcome]) -> list[dict[str, Any]]:
    """Table artifact rows: per EC and PSP, flows, lines, amount, linked, awaiting receipt, anomalies."""
    groups: dict[tuple[str, str], list[FlowOutcome]] = {}
    for o in outcomes:
        if o.status != SKIPPED:
            groups.setdefault((o.id_dominio, o.psp_id or "?"), []).append(o)
    rows = []
    for (ec, psp), items in sorted(groups.items()):
        anomalies: Counter[str] = Counter()
        for o in items:
            anomalies.update(o.anomalies)
            anomalies.update(a.split(" ", 1)[0] for a in o.flow_anomalies)
        rows.append(
            {
                "ec": ec,
                "psp": psp,
                "flows": len(items),
                "anomalous_flows": sum(o.state == "ANOMALA" for o in items),
                "refused": sum(o.status == REFUSED for o in items),
                "lines": sum(o.lines for o in items),
                "amount": f"{sum((o.amount for o in items), Decimal('0.00')):.2f}",
                "linked": sum(o.linked for o in items),
                "no_receipt": sum(o.no_receipt for o in items),
                "other_broker": sum(o.other_broker for o in items),
                "anomalies": ", ".join(f"{code}×{n}" for code, n in sorted(anomalies.items())),
            }
        )
    return rows


def summary_markdown(
    *, outcomes: list[FlowOutcome], listings: list[EcListing], failures: dict[str, str]
) -> str:
    """The run's summary: a line per flow, what each EC listing found, and what failed."""
    lines = ["# Reporting flows", ""]
    if listings:
        lines += [
            "| EC | protocol | listed | already stored | left for next run |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {x.id_dominio} | {x.protocol} | {x.listed} | {x.already_stored} | {x.deferred} |"
            for x in listings
        ]
        lines.append("")
    shown = [o for o in outcomes if o.status != SKIPPED]
    if shown:
        lines += [
            "| EC | flow | rev | PSP | outcome | state | lines | amount | linked | anomalies |",
            "|---|---|---:|---|---|---|---:|---:|---:|---|",
        ]
        for o in shown:
            note = (
                o.error
                or "; ".join(o.flow_anomalies)
                or ", ".join(f"{k}×{v}" for k, v in o.anomalies.items())
            )
            note = note.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(
                f"| {o.id_dominio} | {o.id_flusso} | {o.revision} | {o.psp_id or ''} | {o.status} | "
                f"{o.state or ''} | {o.lines} | {o.amount:.2f} | {o.linked} | {note} |"
            )
    else:
        lines.append("No new flow.")
    if failures:
        lines += ["", "## Failures", ""] + [f"- **{k}**: {v}" for k, v in failures.items()]
    return "\n".join(lines) + "\n"


@task(name="publish-reporting-report", cache_policy=NO_CACHE)
def publish_reporting_report(
    outcomes: list[FlowOutcome], listings: list[EcListing], failures: dict[str, str]
) -> int:
    """A table artifact of the run (per EC and PSP) and a markdown summary per flow."""
    rows = psp_table(outcomes)
    create_table_artifact(
        table=rows,
        key="reporting-flows",
        description="Reporting flows downloaded in this run, per EC and PSP",
    )
    create_markdown_artifact(
        markdown=summary_markdown(outcomes=outcomes, listings=listings, failures=failures),
        key="reporting-flows-summary",
        description="Reporting flows: every flow of the run",
    )
    return len(rows)
