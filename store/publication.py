"""The publication queue: windows of queued positions, claiming a batch, recording what GPD/ACA acknowledged.

A position is queued while ``publication_state`` is PENDING (``store.positions`` sets it on every change).
Two publishers (two workers, or the daily cycle beside the scheduled run) never send the same position at
once: ``claim_batch`` claims a batch's queued positions with a lease, ``publication_claimed_until``, in one
``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` (on SQLite the statement holds the single
write lock), and the caller commits at once. No transaction stays open while GPD or ACA is called: the station
and the API never wait for a publication (a receipt for a position being published is stored at once). The
outcomes are recorded and the claim released in a second short transaction (``record_outcomes``,
``release_claims``); a position changed meanwhile keeps its new version queued (``record_outcomes`` compares
versions). A publisher that dies leaves its claims to run out (``CLAIM_LEASE``); the next one converges with
GPD's copies (409 → GET → same content → acknowledged).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, or_, update
from sqlmodel import Session, col, select

from models.positions import Position, PositionItem, PublicationState
from models.registry import Creditor, DebtType, Station
from rules.publication import ACKNOWLEDGED, Candidate, CandidateItem, Outcome, Result
from rules.station import transfer_category

ERROR_LENGTH = 500
CLAIM_LEASE = timedelta(minutes=30)  # far beyond a batch's calls, the breaker stopping it early


@dataclass(frozen=True)
class Window:
    """A range of position ids holding up to one batch of queued positions."""

    first_id: int
    last_id: int
    size: int


def _queued(id_dominio: str | None) -> list[Any]:
    where = [Position.publication_state == PublicationState.PENDING]
    if id_dominio is not None:
        where.append(Position.id_dominio == id_dominio)
    return where


def pending_windows(
    session: Session, *, id_dominio: str | None, batch_size: int, max_batches: int
) -> tuple[list[Window], int]:
    """The queue cut in id windows of ``batch_size`` (at most ``max_batches``) and how many wait beyond."""
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be at least 1")
    limit = batch_size * max_batches
    ids: list[int] = list(
        session.exec(  # type: ignore[arg-type]
            select(Position.id).where(*_queued(id_dominio)).order_by(col(Position.id)).limit(limit)
        ).all()
    )
    windows = [
        Window(first_id=chunk[0], last_id=chunk[-1], size=len(chunk))
        for chunk in (ids[i : i + batch_size] for i in range(0, len(ids), batch_size))
    ]
    backlog = 0
    if len(ids) == limit:
        backlog = int(
            session.exec(
                select(func.count())
                .select_from(Position)
                .where(*_queued(id_dominio), col(Position.id) > ids[-1])
            ).one()
        )
    return windows, backlog


_POSITION_COLUMNS = (
    "id",
    "version",
    "published_version",
    "id_dominio",
    "iuv",
    "nav",
    "iupd",
    "state",
    "amount",
    "causale",
    "due_date",
    "taxonomy",
    "debt_type",
    "debtor_type",
    "debtor_id",
    "debtor_name",
    "debtor_address",
    "debtor_civic",
    "debtor_cap",
    "debtor_locality",
    "debtor_province",
    "debtor_nation",
    "debtor_email",
    "debtor_phone",
)
_ITEM_COLUMNS = (
    "position_id",
    "item_index",
    "id_dominio",
    "description",
    "amount",
    "kind",
    "iban",
    "postal",
    "stamp_type",
    "stamp_hash",
    "stamp_province",
)


def claim_batch(
    session: Session,
    *,
    first_id: int,
    last_id: int,
    id_dominio: str | None = None,
    now: datetime,
    until: datetime,
) -> list[Candidate]:
    """Claim the window's queued positions not claimed by another publisher, until ``until``; as candidates.

    The caller commits at once (the claim is what other publishers see) and releases the claims with the
    outcomes (``release_claims``).
    """
    # Column rows, not ORM objects: building hundreds of full Position objects costs more than the query.
    table = Position.__table__  # type: ignore[attr-defined]
    free = or_(table.c.publication_claimed_until.is_(None), table.c.publication_claimed_until < now)
    window = [*_queued(id_dominio), table.c.id >= first_id, table.c.id <= last_id, free]
    if session.get_bind().dialect.name == "postgresql":
        # Lock once, then update what was locked: rows another publisher is claiming right now are skipped. As
        # a materialised CTE the locking scan runs once; as an IN subquery the planner, misled by the stale
        # statistics of a freshly loaded queue, ran it again for every row (150 ms for 500 rows).
        picked = (select(table.c.id).where(*window).with_for_update(skip_locked=True)
                  .cte("picked").prefix_with("MATERIALIZED"))
        claim = update(table).where(table.c.id == picked.c.id, *window)
    else:  # SQLite: one writer at a time, nothing to skip
        claim = update(table).where(*window)
    claimed = session.execute(
        claim.values(publication_claimed_until=until)
        .returning(*(table.c[name] for name in _POSITION_COLUMNS))
    )
    positions = sorted(claimed.mappings().all(), key=lambda p: p["id"])
    if not positions:
        return []
    item_table = PositionItem.__table__  # type: ignore[attr-defined]
    voci: dict[int, list[Any]] = defaultdict(list)
    for item in session.execute(
        select(*(item_table.c[name] for name in _ITEM_COLUMNS))
        .where(item_table.c.position_id.in_([p["id"] for p in positions]))
        .order_by(item_table.c.position_id, item_table.c.item_index)
    ).mappings():
        voci[item["position_id"]].append(item)
    ecs = {p["id_dominio"] for p in positions} | {i["id_dominio"] for items in voci.values() for i in items}
    creditors = {
        c.id_dominio: c for c in session.exec(select(Creditor).where(col(Creditor.id_dominio).in_(ecs))).all()
    }
    stations = {
        s.id_stazione: s
        for s in session.exec(
            select(Station).where(col(Station.id_stazione).in_({c.id_stazione for c in creditors.values()}))
        ).all()
    }
    taxonomies = {
        (d.id_dominio, d.code): d.taxonomy
        for d in session.exec(
            select(DebtType).where(col(DebtType.id_dominio).in_({p["id_dominio"] for p in positions}))
        ).all()
    }
    out = []
    for p in positions:
        creditor = creditors.get(p["id_dominio"])
        station = stations.get(creditor.id_stazione) if creditor else None
        items = tuple(
            CandidateItem(
                index=i["item_index"],
                id_dominio=i["id_dominio"],
                company_name=creditors[i["id_dominio"]].name if i["id_dominio"] in creditors else None,
                description=i["description"],
                amount=i["amount"],
                kind=i["kind"],
                iban=i["iban"],
                postal=bool(i["postal"]),
                stamp_type=i["stamp_type"],
                stamp_hash=i["stamp_hash"],
                stamp_province=i["stamp_province"],
            )
            for i in voci.get(p["id"], [])
        )
        taxonomy = p["taxonomy"] or taxonomies.get((p["id_dominio"], p["debt_type"]))
        out.append(
            Candidate(
                id=p["id"],
                version=p["version"],
                published_version=p["published_version"],
                id_dominio=p["id_dominio"],
                company_name=creditor.name if creditor else p["id_dominio"],
                office_name=creditor.sector if creditor else None,
                target=station.publication if station is not None and station.enabled else "NONE",
                key_ref=station.api_key_ref if station else None,
                creditor_enabled=creditor is not None and creditor.enabled,
                iuv=p["iuv"],
                nav=p["nav"],
                iupd=p["iupd"],
                state=p["state"],
                amount=p["amount"],
                causale=p["causale"],
                due_date=p["due_date"],
                category=transfer_category(item_taxonomy=None, position_taxonomy=taxonomy),
                debtor_type=p["debtor_type"],
                debtor_id=p["debtor_id"],
                debtor_name=p["debtor_name"],
                debtor_address=p["debtor_address"],
                debtor_civic=p["debtor_civic"],
                debtor_cap=p["debtor_cap"],
                debtor_locality=p["debtor_locality"],
                debtor_province=p["debtor_province"],
                debtor_nation=p["debtor_nation"],
                debtor_email=p["debtor_email"],
                debtor_phone=p["debtor_phone"],
                items=items,
            )
        )
    return out


def _cut(reason: str | None) -> str | None:
    return reason[:ERROR_LENGTH] if reason else None


def record_outcomes(session: Session, *, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Mark a batch's outcomes in the caller's transaction.

    Acknowledged positions become PUBLISHED (INVALIDATED) with ``published_version`` = the version sent;
    SKIPPED and FAILED settle the position until it changes; an ERROR leaves it queued with the error and one
    more attempt. A position whose version moved on since it was read stays PENDING whatever the outcome.
    """
    table = Position.__table__  # type: ignore[attr-defined]
    c = table.c
    settled_or_pending = case(
        (c.version == bindparam("b_sent"), bindparam("b_state")), else_=PublicationState.PENDING.value
    )
    acknowledged = [o for o in outcomes if o.result in ACKNOWLEDGED]
    if acknowledged:
        session.execute(
            update(table)
            .where(c.id == bindparam("b_id"))
            .values(
                publication_state=settled_or_pending,
                published_version=bindparam("b_sent"),
                published_at=now,
                publication_error=None,  # notes such as "not at GPD" are in the journal
                publication_attempts=0,
                iupd=func.coalesce(bindparam("b_iupd"), c.iupd),
            ),
            [
                {
                    "b_id": o.position_id,
                    "b_sent": o.version,
                    "b_iupd": o.iupd,
                    "b_state": (
                        PublicationState.INVALIDATED
                        if o.result is Result.INVALIDATED
                        else PublicationState.PUBLISHED
                    ).value,
                }
                for o in acknowledged
            ],
        )
    settled = [o for o in outcomes if o.result in (Result.SKIPPED, Result.FAILED)]
    if settled:
        session.execute(
            update(table)
            .where(c.id == bindparam("b_id"))
            .values(
                publication_state=settled_or_pending,
                publication_error=bindparam("b_error"),
                publication_attempts=c.publication_attempts + bindparam("b_add"),
            ),
            [
                {
                    "b_id": o.position_id,
                    "b_sent": o.version,
                    "b_error": _cut(o.reason),
                    "b_state": (
                        PublicationState.SKIPPED if o.result is Result.SKIPPED else PublicationState.FAILED
                    ).value,
                    "b_add": 1 if o.result is Result.FAILED else 0,
                }
                for o in settled
            ],
        )
    errors = [o for o in outcomes if o.result is Result.ERROR]
    if errors:
        session.execute(
            update(table)
            .where(c.id == bindparam("b_id"))
            .values(publication_error=bindparam("b_error"), publication_attempts=c.publication_attempts + 1),
            [{"b_id": o.position_id, "b_error": _cut(o.reason)} for o in errors],
        )


def release_claims(session: Session, *, ids: Sequence[int]) -> None:
    """Give back the claims on these positions (with their outcomes, or when a batch stops short)."""
    if not ids:
        return
    table = Position.__table__  # type: ignore[attr-defined]
    session.execute(
        update(table).where(table.c.id.in_(list(ids))).values(publication_claimed_until=None)
    )
