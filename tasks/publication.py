"""Tasks of the publish-positions flow: cut the queue in windows, publish one window to GPD/ACA.

``publish_batch`` is the whole unit of work without Prefect: claim the window's queued positions
(``store.publication``: a lease, committed at once), decide per position (``rules.publication.plan``), hold
the conversation with GPD or ACA from ``publish_concurrency`` workers on one event loop (409 → GET → compare,
404 → create, see ``rules.publication``) with no database transaction open, journal every call in one
insert, and record the outcomes and release the claims in one short transaction.
Transient faults left after the connector's own retries make the task fail with PublicationIncompleteError
once the rest is recorded, so Prefect retries it (only those positions are still queued); a run of them
(pagoPA down) stops the batch early. Refused credentials stop the calls for that key.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from connectors.journal import BufferedJournal
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.errors import (
    PagopaAuthError,
    PagopaBusinessError,
    PagopaError,
    PagopaNotFoundError,
    PagopaRetriableError,
)
from connectors.pagopa.gpd import AcaClient, GpdClient, aca_request_from, gpd_position_from
from connectors.pagopa.http import subscription_key
from connectors.secrets import SecretNotFoundError
from models.db import session_scope
from models.types import utcnow
from rules.publication import (
    ACA,
    GPD,
    Action,
    Candidate,
    Outcome,
    RemoteCopy,
    Result,
    Step,
    after_aca_refusal,
    after_conflict,
    after_not_found,
    done,
    outcome_of,
    plan,
    today_in_rome,
)
from store.publication import (
    CLAIM_LEASE,
    Window,
    claim_batch,
    pending_windows,
    record_outcomes,
    release_claims,
)

if TYPE_CHECKING:
    import httpx

MAX_STEPS = 8  # create → 409 → update → …: a conversation never needs more
FAILED_SAMPLE = 50
AUTH = "credenziali rifiutate"
UNAVAILABLE = "non inviata, servizio non disponibile"
BREAKER_MIN = 10
T = TypeVar("T")
PHASES = ("claim", "send", "journal", "record")  # the seconds of a batch, in order


# --- one position --------------------------------------------------------------------------------------


async def _gpd_call(client: GpdClient, c: Candidate, step: Step) -> Step:
    ec, iupd, iuv, nav = c.id_dominio, step.iupd or "", c.iuv, c.nav
    if step.action is Action.CREATE:
        await client.create(ec=ec, position=gpd_position_from(c, iupd=iupd))
        return done(Result.CREATED, iupd=iupd)
    if step.action is Action.UPDATE:
        await client.update(ec=ec, iupd=iupd, position=gpd_position_from(c, iupd=iupd))
        return done(Result.UPDATED, iupd=iupd)
    if step.action is Action.PUBLISH:
        await client.publish(ec=ec, iupd=iupd, iuv=iuv, nav=nav)
        return done(Result.UPDATED, iupd=iupd)
    if step.action is Action.INVALIDATE:
        await client.invalidate(ec=ec, iupd=iupd, iuv=iuv, nav=nav)
        return done(Result.INVALIDATED, iupd=iupd)
    if step.action is Action.DELETE:
        await client.delete(ec=ec, iupd=iupd, iuv=iuv, nav=nav)
        return done(Result.INVALIDATED, "bozza eliminata da GPD", iupd=iupd)
    raise ValueError(f"no call for {step.action}")


async def _remote(client: GpdClient, c: Candidate, iupd: str) -> RemoteCopy | None:
    try:
        copy = await client.get(ec=c.id_dominio, iupd=iupd, iuv=c.iuv, nav=c.nav)
    except PagopaNotFoundError:
        return None
    same = copy.content_key() == gpd_position_from(c, iupd=iupd).content_key()
    return RemoteCopy(status=copy.status, iuvs=copy.iuvs, same_content=same)


async def _converse_gpd(client: GpdClient, c: Candidate, step: Step) -> Step:
    for _ in range(MAX_STEPS):
        if step.action is Action.DONE:
            return step
        iupd = step.iupd or ""
        try:
            step = await _gpd_call(client, c, step)
        except PagopaNotFoundError:
            step = after_not_found(step.action, iupd=iupd)
        except PagopaBusinessError as exc:
            if exc.status != 409:
                raise
            remote = await _remote(client, c, iupd)
            step = after_conflict(step.action, iuv=c.iuv or "", iupd=iupd, remote=remote)
        if step.action is Action.DONE and step.iupd is None:
            step = done(step.result or Result.FAILED, step.reason, iupd=iupd)
    return done(Result.FAILED, "GPD: troppi passaggi per pubblicare la posizione")


async def _converse_aca(client: AcaClient, c: Candidate, step: Step) -> Step:
    invalidate = step.action is Action.INVALIDATE
    try:
        await client.create_position(request=aca_request_from(c, invalidate=invalidate))
    except (PagopaBusinessError, PagopaNotFoundError) as exc:
        return after_aca_refusal(invalidate=invalidate, status=exc.status)
    if invalidate:
        return done(Result.INVALIDATED)
    return done(Result.CREATED if c.published_version == 0 else Result.UPDATED)


def _error(c: Candidate, reason: str, *, retriable: bool = False) -> Outcome:
    return Outcome(position_id=c.id, version=c.version, result=Result.ERROR, reason=reason,
                   retriable=retriable, id_dominio=c.id_dominio, iuv=c.iuv)  # fmt: skip


async def publish_one(c: Candidate, *, today: Any, gpd: GpdClient | None, aca: AcaClient | None) -> Outcome:
    """Decide and hold the conversation for one position; never raises for a pagoPA fault."""
    step = plan(c, today=today)
    if step.action is Action.DONE:
        return outcome_of(c, step)
    try:
        if c.target == ACA:
            if aca is None:
                raise ValueError("no ACA client")
            step = await _converse_aca(aca, c, step)
        else:
            if gpd is None:
                raise ValueError("no GPD client")
            step = await _converse_gpd(gpd, c, step)
    except PagopaAuthError as exc:
        return _error(c, f"{AUTH}: {exc}")
    except PagopaRetriableError as exc:
        return _error(c, str(exc), retriable=True)
    except PagopaError as exc:
        return outcome_of(c, done(Result.FAILED, str(exc)))
    except (ValueError, ValidationError) as exc:  # a message that cannot be built from this position
        return outcome_of(c, done(Result.FAILED, f"messaggio non costruibile: {exc}"))
    return outcome_of(c, step)


# --- a batch ---------------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What one window's publication did."""

    first_id: int
    last_id: int
    claimed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str | None]] = field(default_factory=list)
    retriable: int = 0
    calls_journaled: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def reason_group(reason: str | None) -> str:
    """A skip reason without its particulars, for counting (``scaduta il 2024-01-31`` → ``scaduta``)."""
    text = reason or "-"
    for cut in (" il ", " ("):
        text = text.split(cut)[0]
    return text


def _report(window: Window, outcomes: Sequence[Outcome], *, journaled: int, seconds: float) -> BatchReport:
    report = BatchReport(
        first_id=window.first_id,
        last_id=window.last_id,
        claimed=len(outcomes),
        calls_journaled=journaled,
        seconds=round(seconds, 3),
    )
    report.counts = dict(Counter(o.result.value for o in outcomes))
    report.skipped = dict(Counter(reason_group(o.reason) for o in outcomes if o.result is Result.SKIPPED))
    report.failed = [
        {"id_dominio": o.id_dominio, "iuv": o.iuv, "result": o.result.value, "reason": o.reason}
        for o in outcomes
        if o.result in (Result.FAILED, Result.ERROR)
    ][:FAILED_SAMPLE]
    report.retriable = sum(1 for o in outcomes if o.retriable)
    return report


Key = tuple[str, str | None]  # (target, subscription key reference)


def _resolve_keys(candidates: Sequence[Candidate]) -> tuple[dict[Key, Any], dict[Key, str]]:
    """The subscription key of every (target, reference) of a batch, and those that cannot be resolved."""
    keys: dict[Key, Any] = {}
    refused: dict[Key, str] = {}
    for c in candidates:
        key = (c.target, c.key_ref)
        if c.target not in (GPD, ACA) or key in keys or key in refused:
            continue
        try:
            keys[key] = subscription_key(c.key_ref)
        except (SecretNotFoundError, ValueError) as exc:
            refused[key] = f"chiave di sottoscrizione non disponibile: {exc}"
    return keys, refused


def send_batch(
    candidates: Sequence[Candidate],
    *,
    today: Any,
    journal: BufferedJournal,
    transport: httpx.AsyncBaseTransport | None = None,
    concurrency: int | None = None,
) -> list[Outcome]:
    """Publish candidates from ``concurrency`` workers on an event loop; refused credentials are not retried.

    Each worker has its own clients (one keep-alive connection each): one pool shared by every worker
    spends more time scanning its connections than the calls take (see ``bench/sandbox.py``).
    """
    workers = min(concurrency or get_endpoints().publish_concurrency, len(candidates))
    if workers < 1:
        return []
    return _run(_send_all(candidates, today=today, journal=journal, transport=transport, workers=workers))


async def _send_all(
    candidates: Sequence[Candidate],
    *,
    today: Any,
    journal: BufferedJournal,
    transport: httpx.AsyncBaseTransport | None,
    workers: int,
) -> list[Outcome]:
    keys, refused = _resolve_keys(candidates)
    results: list[Outcome | None] = [None] * len(candidates)
    pending = iter(enumerate(candidates))  # shared by the workers: one event loop, no lock needed

    # pagoPA down: after this many transient failures in a row, the rest of the batch stays queued unsent
    trip = max(2 * workers, BREAKER_MIN)
    streak: dict[Key, int] = {}

    async def one(c: Candidate, own: dict[Key, Any]) -> Outcome:
        key = (c.target, c.key_ref)
        if plan(c, today=today).action is not Action.DONE:
            if key in refused:
                return _error(c, refused[key])
            if streak.get(key, 0) >= trip:
                return _error(c, f"{UNAVAILABLE}: {trip} errori transitori di seguito", retriable=True)
        client = own.get(key)
        if client is None and key in keys:
            cls = AcaClient if c.target == ACA else GpdClient
            client = own[key] = cls.from_endpoints(subscription_key=keys[key], transport=transport,
                                                   journal=journal, connections=1)  # fmt: skip
        outcome = await publish_one(c, today=today, gpd=client if c.target != ACA else None,
                                    aca=client if c.target == ACA else None)  # fmt: skip
        if outcome.result is Result.ERROR and (outcome.reason or "").startswith(AUTH):
            refused.setdefault(key, f"non inviata: {outcome.reason}")
        elif outcome.retriable:
            streak[key] = streak.get(key, 0) + 1
        elif outcome.result is not Result.SKIPPED:
            streak[key] = 0
        return outcome

    async def work() -> None:
        own: dict[Key, Any] = {}
        try:
            for index, candidate in pending:
                results[index] = await one(candidate, own)
        finally:
            for client in own.values():
                await client.aclose()

    await asyncio.gather(*(work() for _ in range(workers)))
    return [r for r in results if r is not None]


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def publish_batch(
    *,
    first_id: int,
    last_id: int,
    id_dominio: str | None = None,
    now: datetime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_claimed: Callable[[list[Candidate]], None] | None = None,
) -> BatchReport:
    """Claim the window's queued positions, publish them, journal the calls and record the outcomes.

    Three short transactions, none open while GPD/ACA is called: the claim, the journal, the outcomes with
    the claims' release. If the calls stop short (an unexpected error), the claims are given back at once.
    """
    marks = [time.perf_counter()]
    today = today_in_rome(now or utcnow())
    window = Window(first_id=first_id, last_id=last_id, size=0)
    claimed_at = utcnow()
    with session_scope() as session:  # committed on leaving: other publishers now skip these positions
        candidates = claim_batch(session, first_id=first_id, last_id=last_id, id_dominio=id_dominio,
                                 now=claimed_at, until=claimed_at + CLAIM_LEASE)  # fmt: skip
    claimed = [c.id for c in candidates]
    if on_claimed is not None:
        on_claimed(candidates)
    marks.append(time.perf_counter())
    journal = BufferedJournal()
    try:
        outcomes = send_batch(candidates, today=today, journal=journal, transport=transport)
    except BaseException:
        with session_scope() as session:
            release_claims(session, ids=claimed)
        raise
    finally:
        marks.append(time.perf_counter())
        journaled = journal.flush()
    marks.append(time.perf_counter())
    with session_scope() as session:
        record_outcomes(session, outcomes=outcomes, now=utcnow())
        release_claims(session, ids=claimed)
    marks.append(time.perf_counter())
    report = _report(window, outcomes, journaled=journaled, seconds=marks[-1] - marks[0])
    report.phases = {name: round(b - a, 3) for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    return report


class PublicationIncompleteError(PagopaRetriableError):
    """Some positions of a batch met transient faults; the rest is recorded and a retry re-sends those."""

    def __init__(self, report: BatchReport) -> None:
        self.report = report
        super().__init__(
            f"{report.retriable} posizioni non pubblicate per errori transitori",
            operation="publish-positions-batch",
        )


# --- Prefect -----------------------------------------------------------------------------------------------


def retry_if_retriable(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect retry condition: transient pagoPA faults and a lost or busy database connection only."""
    exc = state.result(raise_on_failure=False)
    return (isinstance(exc, PagopaError) and exc.retriable) or isinstance(exc, OperationalError)


@dataclass(frozen=True)
class PublicationPlan:
    """The windows of this run and how many queued positions wait beyond them."""

    windows: list[Window]
    backlog: int


@task(
    name="plan-publication",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_if_retriable,
)
def plan_publication(*, id_dominio: str | None, batch_size: int, max_batches: int) -> PublicationPlan:
    """Cut the publication queue in windows of ``batch_size`` positions."""
    with session_scope() as session:
        windows, backlog = pending_windows(
            session, id_dominio=id_dominio, batch_size=batch_size, max_batches=max_batches
        )
    get_run_logger().info(
        "%d queued positions in %d batches (%d more left for the next run)",
        sum(w.size for w in windows),
        len(windows),
        backlog,
    )
    return PublicationPlan(windows=windows, backlog=backlog)


@task(
    name="publish-positions-batch",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=retry_if_retriable,
)
def publish_positions_batch(*, first_id: int, last_id: int, id_dominio: str | None = None) -> BatchReport:
    """Publish one window; raises PublicationIncompleteError (retried) when transient faults remain."""
    report = publish_batch(first_id=first_id, last_id=last_id, id_dominio=id_dominio)
    logger = get_run_logger()
    logger.info(
        "positions %d-%d: %s in %.1fs (%d calls)",
        first_id,
        last_id,
        report.counts,
        report.seconds,
        report.calls_journaled,
    )
    for failure in report.failed[:5]:
        logger.warning(
            "%s/%s %s: %s", failure["id_dominio"], failure["iuv"], failure["result"], failure["reason"]
        )
    if report.retriable:
        raise PublicationIncompleteError(report)
    return report


# --- summary -----------------------------------------------------------------------------------------------


@dataclass
class PublicationSummary:
    """A run's totals: published (new or already there), updated, invalidated, skipped by reason, failed."""

    batches: int = 0
    positions: int = 0
    published: int = 0
    updated: int = 0
    invalidated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    failures: list[dict[str, str | None]] = field(default_factory=list)
    batch_errors: list[str] = field(default_factory=list)
    backlog: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, report: BatchReport) -> None:
        """Fold one batch in."""
        counts = report.counts
        self.batches += 1
        self.positions += report.claimed
        self.published += counts.get(Result.CREATED, 0) + counts.get(Result.UNCHANGED, 0)
        self.updated += counts.get(Result.UPDATED, 0)
        self.invalidated += counts.get(Result.INVALIDATED, 0)
        self.failed += counts.get(Result.FAILED, 0) + counts.get(Result.ERROR, 0)
        for reason, n in report.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.failures.extend(report.failed[: max(0, FAILED_SAMPLE - len(self.failures))])
        for phase, seconds in report.phases.items():
            self.phases[phase] = round(self.phases.get(phase, 0.0) + seconds, 3)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "/").replace("\n", " ")[:200]


def summary_markdown(summary: PublicationSummary) -> str:
    """The run's summary as a Prefect markdown artifact."""
    s = summary
    lines = [
        "# Pubblicazione posizioni (GPD/ACA)",
        "",
        "| esito | posizioni |",
        "|---|---:|",
        f"| pubblicate | {s.published} |",
        f"| aggiornate | {s.updated} |",
        f"| invalidate | {s.invalidated} |",
        f"| saltate | {sum(s.skipped.values())} |",
        f"| fallite | {s.failed} |",
        "",
        f"{s.positions} posizioni in {s.batches} lotti; {s.backlog} in coda per la prossima esecuzione.",
    ]
    if s.skipped:
        lines += ["", "## Saltate", "", "| motivo | posizioni |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(s.skipped.items(), key=lambda kv: -kv[1])]
    if s.failures:
        lines += ["", "## Fallite (prime)", "", "| ente | IUV | esito | motivo |", "|---|---|---|---|"]
        lines += [
            f"| {f['id_dominio']} | {f['iuv']} | {f['result']} | {_cell(f['reason'])} |" for f in s.failures
        ]
    if s.batch_errors:
        lines += ["", "## Lotti in errore", ""] + [f"- {e}" for e in s.batch_errors]
    return "\n".join(lines) + "\n"
