"""Small factories for reporting tests: paid positions (position, receipt, collections), in bulk if needed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from models.payments import Collection, Receipt
from models.positions import Position, PositionState

OWNER = {"01234567897": "A2A-TRIBUTI", "00987654324": "A2A-TRIBUTI", "80001234568": "A2A-SCUOLA"}


def _position_row(
    *, id_dominio: str, iuv: str, amount: Decimal, state: str, **overrides: Any
) -> dict[str, Any]:
    key = f"{id_dominio}-{iuv}"
    row: dict[str, Any] = {
        "id_a2a": OWNER.get(id_dominio, "A2A-TRIBUTI"),
        "id_pendenza": f"P-{iuv}",
        "id_dominio": id_dominio,
        "debt_type": "LIBERO",
        "causale": f"Pendenza {iuv}",
        "debtor_type": "F",
        "debtor_id": "RSSMRA80A01H501U",
        "debtor_name": "Mario Rossi",
        "amount": amount,
        "iuv": iuv,
        "nav": f"3{iuv}" if len(iuv) == 17 else None,
        "state": state,
        "content_hash": hashlib.sha256(key.encode()).hexdigest(),
        "version": 1,
        "published_version": 0,
        "publication_state": "NONE",
        "created_at": datetime.now(UTC),
        "paid_without_receipt": False,
        "publication_attempts": 0,
    }
    row.update(overrides)
    return row


def make_position(
    session: Session,
    *,
    id_dominio: str,
    iuv: str,
    amount: Decimal,
    state: str = PositionState.NON_ESEGUITA,
    **overrides: Any,
) -> Position:
    """A position of the EC with that IUV (flushed)."""
    position = Position(
        **_position_row(id_dominio=id_dominio, iuv=iuv, amount=amount, state=state, **overrides)
    )
    session.add(position)
    session.flush()
    return position


def make_receipt(
    session: Session,
    *,
    position: Position,
    amounts: Sequence[Decimal],
    psp_id: str,
    receipt_id: str | None = None,
) -> tuple[Receipt, list[Collection]]:
    """A receipt of the position and one collection per transfer (IUR not known yet), flushed."""
    assert position.iuv is not None and position.id is not None
    receipt = Receipt(
        receipt_id=receipt_id or f"R-{position.iuv}-{psp_id}",
        id_dominio=position.id_dominio,
        iuv=position.iuv,
        nav=position.nav,
        position_id=position.id,
        amount=sum(amounts, Decimal(0)),
        psp_id=psp_id,
        payment_at=datetime.now(UTC),
    )
    session.add(receipt)
    session.flush()
    collections = [
        Collection(
            id_dominio=position.id_dominio,
            iuv=position.iuv,
            transfer_index=n,
            receipt_pk=receipt.id,
            position_id=position.id,
            amount=amount,
            paid_at=receipt.payment_at,
        )
        for n, amount in enumerate(amounts, start=1)
    ]
    session.add_all(collections)
    session.flush()
    return receipt, collections


def make_paid(
    session: Session, *, id_dominio: str, iuv: str, amounts: Sequence[Decimal], psp_id: str
) -> tuple[Position, Receipt, list[Collection]]:
    """A paid position: the position (ESEGUITA), its receipt and its collections."""
    position = make_position(
        session, id_dominio=id_dominio, iuv=iuv, amount=sum(amounts, Decimal(0)), state=PositionState.ESEGUITA
    )
    receipt, collections = make_receipt(session, position=position, amounts=amounts, psp_id=psp_id)
    return position, receipt, collections


def bulk_paid(
    session: Session, *, id_dominio: str, iuvs: Sequence[str], amount: Decimal, psp_id: str, batch: int = 5000
) -> None:
    """Many paid single-transfer positions at once (set-based inserts, for large flows and benchmarks)."""
    now = datetime.now(UTC)
    for start in range(0, len(iuvs), batch):
        chunk = list(iuvs[start : start + batch])
        session.execute(
            insert(Position),
            [
                _position_row(id_dominio=id_dominio, iuv=iuv, amount=amount, state=PositionState.ESEGUITA)
                for iuv in chunk
            ],
        )
        ids = dict(
            session.execute(
                select(Position.iuv, Position.id).where(
                    Position.id_dominio == id_dominio, col(Position.iuv).in_(chunk)
                )
            ).all()
        )
        session.execute(
            insert(Receipt),
            [
                {
                    "receipt_id": f"R-{iuv}",
                    "id_dominio": id_dominio,
                    "iuv": iuv,
                    "position_id": ids[iuv],
                    "amount": amount,
                    "psp_id": psp_id,
                    "outcome": "OK",
                    "state": "ACCEPTED",
                    "source": "PUSH",
                    "standin": False,
                    "received_at": now,
                    "payment_at": now,
                }
                for iuv in chunk
            ],
        )
        receipts = dict(
            session.execute(
                select(Receipt.iuv, Receipt.id).where(
                    Receipt.id_dominio == id_dominio, col(Receipt.iuv).in_(chunk)
                )
            ).all()
        )
        session.execute(
            insert(Collection),
            [
                {
                    "id_dominio": id_dominio,
                    "iuv": iuv,
                    "transfer_index": 1,
                    "receipt_pk": receipts[iuv],
                    "position_id": ids[iuv],
                    "amount": amount,
                    "state": "RISCOSSA",
                    "without_receipt": False,
                    "paid_at": now,
                }
                for iuv in chunk
            ],
        )
