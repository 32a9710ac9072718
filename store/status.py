"""Figures per EC for the daily summary and `pagoflow status`: positions, payments, flows, money, anomalies."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlmodel import Session, col

from models.notifications import Notification
from models.payments import Collection, Receipt
from models.positions import Position
from models.reconciliation import TransferLabel
from models.registry import Creditor
from models.reporting import ReportingFlow
from models.treasury import TreasuryMovement

ANOMALY_LABELS = ("IUV_NO_RT", "IUF_NO_TES", "IUF_TES_DIV_IMP", "TES_NO_IUF_OR_IUV", "TES_NO_MATCH", "DOPPI")


@dataclass(frozen=True)
class EcFigures:
    """One EC's figures."""

    id_dominio: str
    name: str
    positions: int
    positions_pending_publication: int
    receipts: int
    paid: Decimal
    flows: int
    flows_anomalous: int
    money: Decimal
    cashed: Decimal
    anomalies: int
    notifications_pending: int


def ec_figures(session: Session) -> list[EcFigures]:
    """Figures of every EC, a handful of grouped queries."""
    def grouped(stmt) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return {k: v for k, v in session.execute(stmt).all()}

    positions = grouped(select(Position.id_dominio, func.count()).group_by(Position.id_dominio))
    pending = grouped(select(Position.id_dominio, func.count()).where(Position.publication_state == "PENDING")
                      .group_by(Position.id_dominio))
    receipts = grouped(select(Receipt.id_dominio, func.count()).where(Receipt.state == "ACCEPTED")
                       .group_by(Receipt.id_dominio))
    paid = grouped(select(Collection.id_dominio, func.sum(Collection.amount)).group_by(Collection.id_dominio))
    cashed = grouped(select(Collection.id_dominio, func.sum(Collection.amount))
                     .where(Collection.state == "INCASSATA").group_by(Collection.id_dominio))
    flows = grouped(select(ReportingFlow.id_dominio, func.count()).where(ReportingFlow.state != "OBSOLETA")
                    .group_by(ReportingFlow.id_dominio))
    bad_flows = grouped(select(ReportingFlow.id_dominio, func.count()).where(ReportingFlow.state == "ANOMALA")
                        .group_by(ReportingFlow.id_dominio))
    money = grouped(select(TreasuryMovement.id_dominio, func.sum(TreasuryMovement.amount))
                    .where(TreasuryMovement.reference_kind.in_(["flow", "iuv"]))  # type: ignore[union-attr]
                    .group_by(TreasuryMovement.id_dominio))
    anomalies = grouped(select(TransferLabel.id_dominio, func.count())
                        .where(col(TransferLabel.label).in_(ANOMALY_LABELS)).group_by(TransferLabel.id_dominio))
    notes = grouped(select(Notification.id_dominio, func.count()).where(Notification.state == "PENDING")
                    .group_by(Notification.id_dominio))
    zero = Decimal("0.00")
    return [
        EcFigures(id_dominio=c.id_dominio, name=c.name, positions=int(positions.get(c.id_dominio, 0)),  # type: ignore[arg-type]
                  positions_pending_publication=int(pending.get(c.id_dominio, 0)),  # type: ignore[arg-type]
                  receipts=int(receipts.get(c.id_dominio, 0)), paid=paid.get(c.id_dominio) or zero,  # type: ignore[arg-type]
                  flows=int(flows.get(c.id_dominio, 0)), flows_anomalous=int(bad_flows.get(c.id_dominio, 0)),  # type: ignore[arg-type]
                  money=money.get(c.id_dominio) or zero, cashed=cashed.get(c.id_dominio) or zero,  # type: ignore[arg-type]
                  anomalies=int(anomalies.get(c.id_dominio, 0)),  # type: ignore[arg-type]
                  notifications_pending=int(notes.get(c.id_dominio, 0)))  # type: ignore[arg-type]
        for c in session.exec(select(Creditor).order_by(Creditor.id_dominio)).scalars()
    ]
