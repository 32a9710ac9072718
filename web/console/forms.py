"""Reading query and form values the way operators type them: trimmed, optional, dates and pages checked."""

from __future__ import annotations

from datetime import date
from typing import Any

from starlette.datastructures import FormData, QueryParams

PAGE_SIZE = 25


def text(source: QueryParams | FormData, name: str, *, limit: int = 140) -> str | None:
    """A trimmed text value, None when empty."""
    value = source.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] or None


def day(source: QueryParams | FormData, name: str, errors: dict[str, str]) -> date | None:
    """A date typed as YYYY-MM-DD (what <input type=date> sends); a bad one is reported in ``errors``."""
    value = text(source, name, limit=10)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[name] = "data non valida (AAAA-MM-GG)"
        return None


def page(source: QueryParams) -> int:
    """The page number asked for (1 when missing or not a positive number)."""
    value = source.get("pagina", "1")
    return int(value) if value.isdigit() and 0 < int(value) < 100_000 else 1


def choice(source: QueryParams | FormData, name: str, allowed: Any) -> str | None:
    """A value among ``allowed`` (None otherwise)."""
    value = text(source, name)
    return value if value in allowed else None


def flag(source: QueryParams | FormData, name: str) -> bool:
    """A checkbox: present and not '0'."""
    value = source.get(name)
    return isinstance(value, str) and value not in ("", "0", "false")


def pages(total: int, size: int = PAGE_SIZE) -> int:
    """How many pages ``total`` rows take."""
    return max(1, -(-total // size))
