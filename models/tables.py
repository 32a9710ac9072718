"""Imports every table module so that SQLModel.metadata knows the whole schema."""

from models import bulk, counters, journal, notifications, payments, positions, reconciliation, registry  # noqa: F401
from models import console, reporting, treasury  # noqa: F401
from sqlmodel import SQLModel

metadata = SQLModel.metadata
