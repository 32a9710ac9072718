"""Work claims shared by the stages: leases on coarse units of work and transaction-long named locks.

Two concurrent runs of a stage (two workers, or a schedule overlapping the daily cycle) must not do the same
work twice. Row-level work claims its rows where it lives (``store.publication``, ``store.notifications``,
``store.receipts``); this module holds the two shapes that are not about one table's rows:

* **Leases** (``work_claim`` rows) on a unit of work that spans network calls: an EC's reporting-flow
  download, a treasury source's SFTP directory. A run takes the leases that are free (never taken,
  released, or past ``claimed_until`` because their holder died) in one short transaction and skips the
  others; it releases them when done. One ``INSERT … ON CONFLICT DO UPDATE … WHERE`` per name: on
  PostgreSQL a second run inserting the same name waits for the first to commit, then finds the lease held;
  on SQLite the write lock makes the statements take turns.
* **Named locks** (``serialize``) for work done in one transaction (reconciling an EC): on PostgreSQL an
  advisory transaction lock, on SQLite the database's write lock taken at once, so a second transaction
  waits (``busy_timeout``) and then reads what the first committed, instead of failing on stale reads.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models.counters import WorkClaim

HOLDER_LENGTH = 120


def new_holder(label: str | None = None) -> str:
    """A holder id naming this process (host and pid, so an operator can tell who holds a lease)."""
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return (f"{label}@{base}" if label else base)[:HOLDER_LENGTH]


def holder_is_dead_here(holder: str | None) -> bool:
    """Whether ``holder`` names a process of this host that no longer runs (killed, crashed).

    Only a holder of this host can be judged; one of another host, or whose process runs (or whose pid was
    reused by another process), is alive as far as we know and keeps its lease until ``claimed_until``.
    """
    if not holder:
        return False
    parts = holder.rsplit("@", 1)[-1].split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def claim_leases(
    session: Session, *, names: Sequence[str], holder: str, now: datetime, lease: timedelta
) -> list[str]:
    """Take the free leases among ``names`` (or renew those already ours) until ``now + lease``.

    A lease is free when never taken, released, past ``claimed_until``, or held by a process of this host
    that is gone (a run killed with -9 does not make the next one wait for its lease to run out).
    Returns the names taken, in the order given; the caller commits at once so other runs see them.
    """
    if lease <= timedelta(0):
        raise ValueError("a lease must last a positive time")
    table = WorkClaim.__table__  # type: ignore[attr-defined]
    held = session.exec(select(WorkClaim.holder).where(
        col(WorkClaim.name).in_(list(names)), col(WorkClaim.claimed_until) >= now,
        col(WorkClaim.holder) != holder)).all()
    dead = sorted({h for h in held if holder_is_dead_here(h)})
    builder = postgresql.insert if _is_pg(session) else sqlite.insert
    until = now + lease
    taken = []
    for name in dict.fromkeys(names):
        stmt = builder(table).values(name=name, holder=holder, claimed_at=now, claimed_until=until)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": holder, "claimed_at": now, "claimed_until": until},
            where=or_(
                table.c.claimed_until.is_(None), table.c.claimed_until < now, table.c.holder == holder,
                table.c.holder.in_(dead),
            ),
        ).returning(table.c.name)
        if session.execute(stmt).first() is not None:
            taken.append(name)
    return taken


def release_leases(session: Session, *, names: Sequence[str], holder: str) -> int:
    """Give back leases this holder took (others' are left alone); returns how many were released."""
    if not names:
        return 0
    result = session.execute(
        update(WorkClaim)
        .where(col(WorkClaim.name).in_(list(names)), col(WorkClaim.holder) == holder)
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def lease_holders(session: Session, *, now: datetime, prefix: str = "") -> dict[str, str | None]:
    """The leases held right now (name → holder), optionally only those whose name starts with ``prefix``."""
    rows = session.exec(
        select(WorkClaim.name, WorkClaim.holder).where(
            col(WorkClaim.claimed_until).is_not(None),
            col(WorkClaim.claimed_until) >= now,
            col(WorkClaim.name).startswith(prefix),
        )
    ).all()
    return {name: holder for name, holder in rows}


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def try_serialize(session: Session, *, name: str) -> bool:
    """Take the lock ``name`` until this transaction ends if nobody holds it; whether it was taken.

    On PostgreSQL an advisory transaction lock, not waited for. On SQLite writers take turns anyway, so the
    caller's own conditional writes decide, and this says yes.
    """
    if not _is_pg(session):
        return True
    taken = session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(name)}).scalar()
    return bool(taken)


def serialize(session: Session, *, name: str) -> None:
    """Hold the lock ``name`` until this transaction ends; a concurrent holder makes the caller wait.

    Call it first in the transaction: on SQLite it takes the write lock now (a write that changes nothing),
    so everything read afterwards is current and no other writer can slip in before this one commits.
    """
    if _is_pg(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})
    else:
        session.execute(
            update(WorkClaim)
            .where(col(WorkClaim.name) == name)
            .values(name=WorkClaim.name)
            .execution_options(synchronize_session=False)
        )
