"""Searching the event journal by the correlation keys an operator has at hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import or_
from sqlmodel import Session, col, select

from models.journal import Event

ROME = ZoneInfo("Europe/Rome")


@dataclass(frozen=True)
class JournalQuery:
    """What to look for; every given key must match (IUV also matches the notice number's IUV)."""

    id_dominio: str | None = None
    iuv: str | None = None
    nav: str | None = None
    id_flusso: str | None = None
    receipt_id: str | None = None
    file_name: str | None = None
    component: str | None = None
    outcome: str | None = None
    day: date | None = None


def search_events(session: Session, *, query: JournalQuery, limit: int = 200) -> list[Event]:
    """Events matching the query, oldest first."""
    stmt = select(Event)
    q = query
    for column, value in ((Event.id_dominio, q.id_dominio), (Event.id_flusso, q.id_flusso),
                          (Event.receipt_id, q.receipt_id), (Event.file_name, q.file_name),
                          (Event.component, q.component), (Event.outcome, q.outcome)):
        if value:
            stmt = stmt.where(column == value)
    if q.iuv:
        stmt = stmt.where(or_(Event.iuv == q.iuv, Event.nav.endswith(q.iuv)))  # type: ignore[union-attr]
    if q.nav:
        stmt = stmt.where(or_(Event.nav == q.nav, Event.iuv == q.nav[1:], Event.iuv == q.nav[3:]))
    if q.day:
        start = datetime.combine(q.day, time.min, tzinfo=ROME)
        stmt = stmt.where(col(Event.at) >= start, col(Event.at) < start + timedelta(days=1))
    return list(session.exec(stmt.order_by(col(Event.at), col(Event.id)).limit(limit)).all())
