"""Leases on coarse units of work for the flows: taken at the start of a run, given back at its end.

A stage whose unit of work spans network calls (an EC's reporting-flow download, a treasury source) takes a
lease per unit (``store.claims``) before it starts and skips the units another run holds, so two workers, or a
schedule overlapping the daily cycle, never download the same flows or fetch the same files at once. A lease
is released when the run ends, or runs out after ``lease`` if the worker dies mid-way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import OperationalError

from models.db import session_scope
from models.types import utcnow
from store.claims import claim_leases, new_holder, release_leases

DEFAULT_LEASE = timedelta(hours=1)


def reporting_lease(id_dominio: str) -> str:
    """The lease name of an EC's reporting-flow download."""
    return f"download-reporting-flows:{id_dominio}"


def treasury_lease(source: str) -> str:
    """The lease name of a treasury source."""
    return f"ingest-treasury:{source}"


def _db_transient(_task: Any, _run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


_RETRY: dict[str, Any] = dict(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_db_transient
)


@task(name="claim-work", **_RETRY)
def claim_work(names: list[str], holder: str, lease_seconds: float) -> list[str]:
    """Take the free leases among ``names`` for this run; the others are held by another run."""
    with session_scope() as session:
        taken = claim_leases(
            session, names=names, holder=holder, now=utcnow(), lease=timedelta(seconds=lease_seconds)
        )
    busy = [n for n in names if n not in taken]
    if busy:
        get_run_logger().info("held by another run, skipped: %s", ", ".join(busy))
    return taken


@task(name="release-work", **_RETRY)
def release_work(names: list[str], holder: str) -> int:
    """Give back this run's leases."""
    with session_scope() as session:
        return release_leases(session, names=names, holder=holder)


@contextmanager
def leased(names: Sequence[str], *, lease: timedelta = DEFAULT_LEASE) -> Iterator[set[str]]:
    """The leases among ``names`` this run could take, held for the block and released after it."""
    if not names:
        yield set()
        return
    holder = _holder()
    taken = claim_work(list(names), holder, lease.total_seconds())
    try:
        yield set(taken)
    finally:
        if taken:
            release_work(taken, holder)


def _holder() -> str:
    """``<flow run name>@<host>:<pid>:<nonce>``: who holds a lease, for an operator reading ``work_claim``."""
    try:
        from prefect.runtime import flow_run

        label = flow_run.get_name()
    except Exception:  # noqa: BLE001 - outside a run the host and pid are enough
        label = None
    return new_holder(label)
