"""upsert_positions on the database: outcomes, the columns of positions and voci, own notices, dense IUVs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session, col, select

from models.counters import IuvCounter
from models.positions import Position, PositionItem
from rules.identifiers import check_digits, nav_to_iuv
from rules.positions import PendenzaPut, PositionData, validate_position
from store import positions as store
from store.positions import CREATED, UNCHANGED, UPDATED, CreatedPosition, items_of, upsert_positions
from tests.conftest import Database
from tests.factories import load_example_registry

COMUNE, SCUOLA_EC = "01234567897", "80001234568"
TREASURY_IBAN, POSTAL_IBAN = "IT21X0306909606000000123456", "IT66X0760103200000012345678"
SCUOLA_IBAN = "IT65X0306909606000000654321"


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    """A session on a clean database holding the example registry."""
    with db.session() as s:
        load_example_registry(s)
        yield s


def pendenza(session: Session, id_pendenza: str, *, id_a2a: str = "A2A-TRIBUTI",
             **overrides: Any) -> PositionData:
    """A validated position of the example registry: TARI of the Comune with an IBAN and a revenue voce."""
    body: dict[str, Any] = {
        "idTipoPendenza": "TARI", "idDominio": COMUNE, "causale": "TARI 2026", "importo": "150.50",
        "soggettoPagatore": {"identificativo": "rssmra80a01h501u", "anagrafica": "Mario Rossi",
                             "email": "mario@example.org"},
        "dataScadenza": "2030-12-31", "datiAllegati": {"utenza": id_pendenza},
        "documento": {"identificativo": "DOC-1", "descrizione": "Avviso TARI", "rata": 1},
        "voci": [{"idVocePendenza": "V1", "importo": "100.00", "descrizione": "Quota fissa",
                  "ibanAccredito": TREASURY_IBAN, "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010",
                  "datiAllegati": {"quota": "fissa"}},
                 {"idVocePendenza": "V2", "importo": "50.50", "descrizione": "Quota variabile",
                  "codEntrata": "TARI"}],
    } | overrides  # fmt: skip
    caller = store.load_caller(session, id_a2a=id_a2a)
    assert caller is not None
    return validate_position(PendenzaPut.model_validate(body), id_a2a=id_a2a, id_pendenza=id_pendenza,
                             caller=caller, registry=store.load_registry_view(session))


def mensa(session: Session, id_pendenza: str, *, nav: str | None = None, debt_type: str = "MENSA",
          importo: str = "42.00") -> PositionData:
    """A position of the school, which may bring its own notice number."""
    return pendenza(session, id_pendenza, id_a2a="A2A-SCUOLA", idTipoPendenza=debt_type, idDominio=SCUOLA_EC,
                    importo=importo, numeroAvviso=nav, documento=None,
                    voci=[{"idVocePendenza": "M1", "importo": importo, "descrizione": "Mensa",
                           "ibanAccredito": SCUOLA_IBAN, "tipoContabilita": "ALTRO",
                           "codiceContabilita": "MENSA"}])


def own_nav(progressive: int) -> str:
    """A valid notice number in the school's IUV space (aux digit 3, segregation code 02)."""
    head = f"302999{progressive:010d}"
    return head + check_digits(head)


def stored(db: Database) -> tuple[list[Position], dict[int, list[PositionItem]]]:
    """What a fresh session reads back: every position by id and the voci of each."""
    with db.session() as s:
        rows = list(s.exec(select(Position).order_by(col(Position.id))).all())
        return rows, items_of(s, position_ids=[p.id or 0 for p in rows])


def test_created_positions_carry_every_column_and_their_voci(db: Database, session: Session) -> None:
    # One row fills an optional column the others leave empty: it is written for that row only.
    batch = [pendenza(session, "P-0"), pendenza(session, "P-1", idUnitaOperativa="UO-TRIBUTI"),
             pendenza(session, "P-2")]
    before = datetime.now(UTC)
    results = upsert_positions(session, batch=batch)
    session.commit()

    assert [r.outcome for r in results] == [CREATED] * 3 and all(r.error is None for r in results)
    assert all(isinstance(r.position, Position) for r in results)
    rows, voci = stored(db)
    assert [p.id for p in rows] == [r.position.id for r in results if r.position]  # ids follow the batch
    assert [p.id_pendenza for p in rows] == ["P-0", "P-1", "P-2"]
    for row, data, result in zip(rows, batch, results, strict=True):
        assert result.position is not None
        assert (result.position.nav, result.position.iuv) == (row.nav, row.iuv)
        for name, value in data.columns().items():
            if name != "nav":
                assert getattr(row, name) == value, name
        assert row.nav is not None and row.iuv == nav_to_iuv(row.nav) and row.iupd == f"{COMUNE}-{row.iuv}"
        assert (row.state, row.publication_state) == ("NON_ESEGUITA", "PENDING")
        assert (row.version, row.published_version, row.publication_attempts) == (1, 0, 0)
        assert row.paid_without_receipt is False and row.attached_data == {"utenza": row.id_pendenza}
        assert row.debtor_id == "RSSMRA80A01H501U" and row.document_id == "DOC-1" and row.instalment == 1
        assert row.unit_code == ("UO-TRIBUTI" if row.id_pendenza == "P-1" else None)
        assert row.created_at == row.updated_at and before - timedelta(seconds=1) <= row.created_at
        assert row.created_at.tzinfo is not None
        assert (row.state_description, row.anomaly, row.published_at, row.publication_error, row.paid_at,
                row.cashed_at, row.annulled_at) == (None,) * 7
        items = voci[row.id or 0]
        assert [i.item_index for i in items] == [1, 2]
        for item, expected in zip(items, data.items, strict=True):
            assert item.position_id == row.id and item.state == "NON_ESEGUITO"
            for name, value in expected.__dict__.items():
                assert getattr(item, name) == value, name
        iban, revenue = items
        assert (iban.kind, iban.iban, iban.accounting_type, iban.accounting_code, iban.revenue_code) == (
            "IBAN", TREASURY_IBAN, "CAPITOLO", "1010", None)
        assert (revenue.kind, revenue.revenue_code, revenue.iban, revenue.amount) == (
            "REVENUE", "TARI", TREASURY_IBAN, Decimal("50.50"))
        assert iban.attached_data == {"quota": "fissa"} and revenue.attached_data is None


def test_without_rows_created_positions_come_back_as_their_keys(db: Database, session: Session) -> None:
    upsert_positions(session, batch=[pendenza(session, "P-0")])
    session.commit()

    results = upsert_positions(session, batch=[pendenza(session, "P-0"), pendenza(session, "P-1")],
                               want_rows=False)
    session.commit()

    unchanged, created = results
    assert unchanged.outcome == UNCHANGED and isinstance(unchanged.position, Position)
    assert created.outcome == CREATED and isinstance(created.position, CreatedPosition)
    rows, _ = stored(db)
    row = rows[-1]
    assert created.position == CreatedPosition(
        id=row.id or 0, id_a2a="A2A-TRIBUTI", id_pendenza="P-1", id_dominio=COMUNE, debt_type="TARI",
        iuv=row.iuv or "", nav=row.nav or "", iupd=row.iupd or "", amount=Decimal("150.50"),
        due_date=row.due_date, state="NON_ESEGUITA", version=1)


def test_updated_unchanged_and_refused_updates(db: Database, session: Session) -> None:
    upsert_positions(session, batch=[pendenza(session, f"P-{i}") for i in range(3)])
    session.commit()
    first, _ = stored(db)
    with db.session() as s:  # as if published since
        published = s.exec(select(Position).where(Position.id_pendenza == "P-1")).one()
        published.publication_state, published.published_version = "PUBLISHED", 1
        s.add(published)
        s.commit()

    changed_voci = [{"idVocePendenza": "V1", "importo": "110.00", "descrizione": "Quota rettificata",
                     "ibanAccredito": TREASURY_IBAN, "ibanAppoggio": POSTAL_IBAN, "tipoContabilita": "SIOPE",
                     "codiceContabilita": "2020"},
                    {"idVocePendenza": "V2", "importo": "50.50", "descrizione": "Quota variabile",
                     "codEntrata": "TARI"}]
    one_voce = [{"idVocePendenza": "V1", "importo": "150.50", "descrizione": "Quota unica",
                 "ibanAccredito": TREASURY_IBAN, "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"}]
    results = upsert_positions(session, batch=[
        pendenza(session, "P-0"),
        pendenza(session, "P-1", causale="TARI 2026 rettificata", importo="160.50", voci=changed_voci),
        pendenza(session, "P-2", voci=one_voce),
        pendenza(session, "P-1"),
    ])

    assert [r.outcome for r in results] == [UNCHANGED, UPDATED, None, None]
    assert [r.error.code if r.error else None for r in results] == [None, None, "VER_004", "VER_015"]
    updated = results[1].position
    assert isinstance(updated, Position)
    # Before the commit, the session's row and voci already show the update.
    assert (updated.causale, updated.amount, updated.version) == (
        "TARI 2026 rettificata", Decimal("160.50"), 2)
    assert updated.publication_state == "PENDING" and updated.nav == first[1].nav
    in_session = items_of(session, position_ids=[updated.id or 0])[updated.id or 0]
    assert [(i.description, i.amount, i.support_iban) for i in in_session] == [
        ("Quota rettificata", Decimal("110.00"), POSTAL_IBAN), ("Quota variabile", Decimal("50.50"), None)]
    session.commit()

    rows, voci = stored(db)
    p0, p1, p2 = rows
    assert (p0.version, p0.updated_at, p0.causale) == (1, first[0].updated_at, "TARI 2026")
    assert (p1.version, p1.published_version, p1.publication_state) == (2, 1, "PENDING")
    assert (p1.causale, p1.amount, p1.nav, p1.iuv, p1.created_at) == (
        "TARI 2026 rettificata", Decimal("160.50"), first[1].nav, first[1].iuv, first[1].created_at)
    assert p1.updated_at is not None and first[1].updated_at is not None
    assert p1.updated_at > first[1].updated_at
    assert p1.content_hash != first[1].content_hash
    v1, v2 = voci[p1.id or 0]
    assert (v1.amount, v1.description, v1.support_iban, v1.accounting_type, v1.accounting_code,
            v1.attached_data) == (Decimal("110.00"), "Quota rettificata", POSTAL_IBAN, "SIOPE", "2020", None)
    assert (v2.amount, v2.kind, v2.revenue_code) == (Decimal("50.50"), "REVENUE", "TARI")
    assert (p2.version, len(voci[p2.id or 0])) == (1, 2)


def test_an_own_notice_number_is_used_once(db: Database, session: Session) -> None:
    taken = own_nav(100)
    results = upsert_positions(session, batch=[mensa(session, "M-1", nav=taken),
                                               mensa(session, "M-2", nav=taken)])
    assert [r.outcome for r in results] == [CREATED, None]
    assert results[1].error is not None and results[1].error.code == "VER_014"
    assert results[1].error.field == "numeroAvviso"
    session.commit()

    again = upsert_positions(session, batch=[mensa(session, "M-3", nav=taken),
                                             mensa(session, "M-4", nav=own_nav(101)),
                                             mensa(session, "M-1", nav=taken, importo="43.00")])
    session.commit()

    assert [r.outcome for r in again] == [None, CREATED, UPDATED]
    assert again[0].error is not None and again[0].error.code == "VER_014"
    rows, _ = stored(db)
    assert [(p.id_pendenza, p.nav, p.iuv) for p in rows] == [
        ("M-1", taken, nav_to_iuv(taken)), ("M-4", own_nav(101), nav_to_iuv(own_nav(101)))]
    assert session.exec(select(IuvCounter)).all() == []  # own notices draw no progressive


def test_iuvs_are_dense_per_creditor_and_prefix(db: Database, session: Session) -> None:
    for first in (0, 4):
        batch: list[PositionData] = []
        for i in range(first, first + 4):
            batch += [pendenza(session, f"P-{i}"), mensa(session, f"M-{i}"),
                      mensa(session, f"G-{i}", debt_type="GITA")]
        batch.append(pendenza(session, f"P-{first}"))  # refused (VER_015): takes no IUV
        assert all(r.outcome == CREATED for r in upsert_positions(session, batch=batch)[:-1])
        session.commit()

    rows, _ = stored(db)
    progressives: dict[tuple[str, str], list[int]] = defaultdict(list)
    for p in rows:
        assert p.iuv is not None
        prefix = {"TARI": "", "MENSA": "27", "GITA": "26"}[p.debt_type]
        base = p.iuv[2:15]  # segregation code, 13-digit base, two check digits
        assert base.startswith(prefix)
        progressives[(p.id_dominio, prefix)].append(int(base[len(prefix):]))
    assert progressives == {(COMUNE, ""): list(range(1, 9)), (SCUOLA_EC, "27"): list(range(1, 9)),
                            (SCUOLA_EC, "26"): list(range(1, 9))}


def test_nothing_is_committed_inside(db: Database, session: Session) -> None:
    results = upsert_positions(session, batch=[pendenza(session, "P-0"), mensa(session, "M-0")])
    assert all(r.outcome == CREATED for r in results)
    session.rollback()

    assert stored(db) == ([], {})
    again = upsert_positions(session, batch=[pendenza(session, "P-0")])
    assert again[0].position is not None and again[0].position.iuv is not None
    assert again[0].position.iuv[2:15] == "0000000000001"  # the rolled-back progressive is handed out again


def test_created_rows_are_read_back_in_chunks(db: Database, session: Session,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_IN_CHUNK", 2)
    results = upsert_positions(session, batch=[pendenza(session, f"P-{i}") for i in range(5)])
    assert [r.position.id_pendenza for r in results if isinstance(r.position, Position)] == [
        f"P-{i}" for i in range(5)]
