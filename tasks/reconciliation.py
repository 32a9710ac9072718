"""Reconciliation tasks: one EC per task, the whole recomputation in one transaction."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from sqlmodel import select

from models.db import session_scope
from models.registry import Creditor
from store.claims import serialize
from store.reconciliation import reconcile_ec


@task(name="list-creditors")
def list_creditors(id_dominio: str | None = None) -> list[str]:
    """The ECs to reconcile: one, or every enabled EC."""
    with session_scope() as session:
        stmt = select(Creditor.id_dominio).where(Creditor.enabled)
        if id_dominio:
            stmt = stmt.where(Creditor.id_dominio == id_dominio)
        return list(session.exec(stmt).all())


@task(name="reconcile-ec", retries=2, retry_delay_seconds=5)
def reconcile_creditor(id_dominio: str) -> dict[str, Any]:
    """Recompute cashing and labels of one EC (idempotent: a re-run converges to the same state)."""
    logger = get_run_logger()
    with session_scope() as session:
        # two runs of one EC at once (two workers) take turns: concurrent recomputations would collide
        serialize(session, name=f"reconcile:{id_dominio}")
        summary = reconcile_ec(session, id_dominio=id_dominio)
    logger.info("EC %s: %d flows cashed, %d waiting, %d in error, %d singles, %d suggestions", id_dominio,
                summary.flows_cashed, summary.flows_waiting, summary.flows_in_error, summary.singles_cashed,
                summary.suggestions)
    return asdict(summary)
