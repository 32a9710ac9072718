"""The Italian calendar the platform reasons in: due dates, day filters and the operating day are Italian days."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

ROME = ZoneInfo("Europe/Rome")


def italian_today() -> date:
    """Today's date in Italy."""
    return datetime.now(ROME).date()


def day_start(day: date) -> datetime:
    """Midnight of an Italian calendar day, as an aware UTC datetime."""
    return datetime.combine(day, time.min, tzinfo=ROME).astimezone(UTC)
