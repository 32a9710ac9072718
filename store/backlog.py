"""The backlog of each stage, read from the database (which is the queue) for `pagoflow status`."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from models.journal import Event
from models.notifications import Notification
from models.payments import PaymentAttempt
from models.positions import Position
from models.reporting import ReportingLine
from models.treasury import TreasuryFile, TreasuryMovement
from models.types import utcnow

STAGE_COMPONENTS = {
    "publish-positions": ("gpd", "aca"),
    "receipts": ("receipts", "nodo-rpt"),
    "notify-applications": ("ente",),
    "download-reporting-flows": ("fdr", "nodo"),
    "ingest-treasury": ("sftp",),
    "reconcile": (),
}


def stage_backlog(session: Session) -> dict[str, dict[str, int]]:
    """Per stage: the work waiting for it and the technical failures of the last 24 hours."""
    def count(stmt) -> int:  # type: ignore[no-untyped-def]
        return int(session.execute(stmt).scalar_one())

    since = utcnow() - timedelta(hours=24)
    failures = dict(session.execute(select(Event.component, func.count()).where(
        Event.outcome == "FAIL", col(Event.at) >= since).group_by(Event.component)).all())
    backlog = {
        "publish-positions": count(select(func.count()).select_from(Position).where(
            Position.publication_state.in_(["PENDING", "FAILED"]))),  # type: ignore[attr-defined]
        "receipts": count(select(func.count()).select_from(ReportingLine).where(ReportingLine.state == "NO_RECEIPT"))
        + count(select(func.count()).select_from(PaymentAttempt).where(PaymentAttempt.state == "PENDING")),
        "notify-applications": count(select(func.count()).select_from(Notification).where(
            Notification.state == "PENDING")),
        "download-reporting-flows": 0,
        "ingest-treasury": count(select(func.count()).select_from(TreasuryFile).where(
            TreasuryFile.state == "QUARANTINED")),
        "reconcile": count(select(func.count()).select_from(TreasuryMovement).where(
            col(TreasuryMovement.match_state).in_(["PENDING", "PARTIAL", "UNMATCHED"]))),
    }
    return {stage: {"backlog": backlog[stage],
                    "failures_24h": sum(int(failures.get(c, 0)) for c in components)}
            for stage, components in STAGE_COMPONENTS.items()}
