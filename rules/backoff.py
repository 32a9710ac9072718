"""When to try again: GovPay's rule for notifications and receipt recovery (attempts² minutes, ≤ a day)."""

from __future__ import annotations

from datetime import timedelta

MAX_DELAY = timedelta(hours=24)


def squared_backoff(*, attempts: int, cap: timedelta = MAX_DELAY) -> timedelta:
    """The wait after ``attempts`` failed tries: attempts² minutes, capped (24 h by default)."""
    if attempts < 1:
        return timedelta(0)
    if attempts >= 39:  # 39² minutes is past a day already; avoids squaring huge counters
        return cap
    return min(timedelta(minutes=attempts * attempts), cap)
