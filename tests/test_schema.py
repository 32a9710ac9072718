"""The schema: migrations equal the models on both databases; money and time survive a round trip exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import func, select

from models.counters import Watermark
from models.migrate import current_revision, head_revision, upgrade
from models.payments import Collection
from models.tables import metadata
from tests.conftest import Database


def test_migrations_create_exactly_the_models(db: Database) -> None:
    assert current_revision(db.url) == head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_upgrade_twice_is_a_no_op(db: Database) -> None:
    before, after = upgrade(db.url)
    assert before == after == head_revision()


def test_money_is_exact_and_sums_exactly(db: Database) -> None:
    amounts = [Decimal("0.10"), Decimal("0.20"), Decimal("123456789.99"), Decimal("0.01")] * 250
    with db.session() as s:
        s.add_all(Collection(id_dominio="01234567897", iuv=f"IUV{i}", iur=f"IUR{i}", transfer_index=1, amount=a)
                  for i, a in enumerate(amounts))
        s.commit()
        total = s.exec(select(func.sum(Collection.amount))).one()
        assert isinstance(total, Decimal) and total == sum(amounts)
        first = s.exec(select(Collection).where(Collection.iuv == "IUV2")).one()
        assert first.amount == Decimal("123456789.99") and str(first.amount) == "123456789.99"
        found = s.exec(select(Collection).where(Collection.amount == Decimal("0.10"))).all()
        assert len(found) == 250


def test_timestamps_come_back_aware_utc(db: Database) -> None:
    rome = timezone(timedelta(hours=2))
    with db.session() as s:
        s.add(Watermark(name="w", value="1", updated_at=datetime(2026, 7, 1, 14, 30, tzinfo=rome)))
        s.commit()
        s.expire_all()
        row = s.get(Watermark, "w")
        assert row is not None
        assert row.updated_at == datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
        assert row.updated_at.tzinfo is not None and row.updated_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(db: Database) -> None:
    with db.session() as s:
        s.add(Watermark(name="n", value="1", updated_at=datetime(2026, 7, 1, 14, 30)))
        with pytest.raises(Exception, match="naive datetime"):
            s.commit()
