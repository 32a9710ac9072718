"""Prefect tasks: one unit of database or connector work over a batch."""
