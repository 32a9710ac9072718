"""Helpers every table module uses: typed column shortcuts and the shared enums."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, String
from sqlmodel import Field

from models.types import JSONText, Money, UTCDateTime, utcnow


def money_field(*, nullable: bool = False, default: Any = ..., **kwargs: Any) -> Any:
    """A Decimal euro amount column (two places)."""
    return Field(default=default, sa_column=Column(Money(), nullable=nullable), **kwargs)


def ts_field(*, nullable: bool = True, default: Any = None, index: bool = False) -> Any:
    """An aware UTC timestamp column."""
    return Field(default=default, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def created_field() -> Any:
    """A creation timestamp set on insert."""
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def json_field(*, default: Any = None) -> Any:
    """A JSON-as-text column."""
    return Field(default=default, sa_column=Column(JSONText(), nullable=True))


def enum_field(enum: type[StrEnum], *, default: Any = ..., index: bool = False, nullable: bool = False) -> Any:
    """An enum stored as its string value (portable, readable in SQL, no native enum types to migrate)."""
    length = max(len(m.value) for m in enum)
    return Field(default=default, sa_column=Column(String(max(length, 16)), nullable=nullable, index=index))


__all__ = [
    "Decimal",
    "datetime",
    "money_field",
    "ts_field",
    "created_field",
    "json_field",
    "enum_field",
    "utcnow",
]
