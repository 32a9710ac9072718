"""IUV allocation: distinct, dense progressives under concurrency and across restarts, on both databases."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlmodel import Session, select

from models.db import make_engine
from models.registry import Creditor
from rules.identifiers import nav_to_iuv, verify_nav
from store.iuv import allocate_notices, allocate_progressives
from tests.conftest import PG_URL, Database
from tests.factories import load_example_registry


def test_progressives_are_consecutive_and_blocks_do_not_overlap(db: Database) -> None:
    with db.session() as s:
        assert list(allocate_progressives(s, id_dominio="01234567897")) == [1]
        assert list(allocate_progressives(s, id_dominio="01234567897", count=3)) == [2, 3, 4]
        assert list(allocate_progressives(s, id_dominio="01234567897", prefix="26")) == [1]
        assert list(allocate_progressives(s, id_dominio="80001234568")) == [1]
        s.commit()


def test_a_rolled_back_allocation_is_given_back(db: Database) -> None:
    with db.session() as s:
        allocate_progressives(s, id_dominio="01234567897", count=5)
        s.commit()
    with db.session() as s:
        allocate_progressives(s, id_dominio="01234567897", count=7)
        s.rollback()
    with db.session() as s:
        assert list(allocate_progressives(s, id_dominio="01234567897")) == [6]
        s.commit()


def test_counter_survives_a_restart(db: Database) -> None:
    with db.session() as s:
        allocate_progressives(s, id_dominio="01234567897", count=41)
        s.commit()
    db.engine.dispose()
    fresh = make_engine(db.url)
    with Session(fresh) as s:
        assert list(allocate_progressives(s, id_dominio="01234567897")) == [42]
        s.commit()
    fresh.dispose()


def test_notices_follow_the_creditor_configuration(db: Database) -> None:
    with db.session() as s:
        load_example_registry(s)
        comune = s.exec(select(Creditor).where(Creditor.id_dominio == "01234567897")).one()
        provincia = s.exec(select(Creditor).where(Creditor.id_dominio == "00987654324")).one()
        scuola = s.exec(select(Creditor).where(Creditor.id_dominio == "80001234568")).one()
        first = allocate_notices(s, creditor=comune)[0]
        assert (first.iuv, first.nav) == ("01000000000000144", "301000000000000144")
        legacy = allocate_notices(s, creditor=provincia)[0]
        assert (legacy.iuv, legacy.nav) == ("000000000000141", "001000000000000141")
        school = allocate_notices(s, creditor=scuola, count=2)
        assert [n.nav[:5] for n in school] == ["30226", "30226"]  # segregation 02, EC prefix 26
        for notice in [first, legacy, *school]:
            assert verify_nav(notice.nav) and nav_to_iuv(notice.nav) == notice.iuv
        s.commit()


def _allocate_many(url: str, n: int) -> list[int]:
    engine = make_engine(url)
    got: list[int] = []
    try:
        for _ in range(n):
            with Session(engine) as s:
                got.extend(allocate_progressives(s, id_dominio="01234567897"))
                s.commit()
    finally:
        engine.dispose()
    return got


def _assert_distinct_and_dense(values: list[int], total: int) -> None:
    assert len(values) == total
    assert len(set(values)) == total, "a progressive was handed out twice"
    assert sorted(values) == list(range(1, total + 1)), "the sequence has gaps"


def test_four_threads_on_sqlite_get_distinct_dense_progressives(sqlite_db: Database) -> None:
    total, workers = 20_000, 4
    with ThreadPoolExecutor(workers) as pool:
        chunks = list(pool.map(lambda _: _allocate_many(sqlite_db.url, total // workers), range(workers)))
    _assert_distinct_and_dense([v for chunk in chunks for v in chunk], total)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="PAGOFLOW_TEST_POSTGRES_URL is not set")
def test_four_processes_on_postgres_get_distinct_dense_progressives(_databases: dict[str, Database]) -> None:
    pg = _databases["postgres"]
    pg.truncate()
    total, workers = 20_000, 4
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        chunks = pool.starmap(_allocate_many, [(pg.url, total // workers)] * workers)
    _assert_distinct_and_dense([v for chunk in chunks for v in chunk], total)
