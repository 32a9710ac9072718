"""The load-positions flow end to end: every row's outcome, crash and resume, re-runs, outputs."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import func
from sqlmodel import Session, col, select

from models.bulk import BulkFile, BulkRow
from models.positions import Position, PositionItem, PositionState
from rules.identifiers import format_nav
from rules.positions import validate_position
from rules.tracciato import AnnulRow, InsertRow, RowDefaults, read_tracciato
from store import bulk as store_bulk
from store.positions import load_caller, load_registry_view, upsert_positions
from tests.conftest import Database
from tests.factories import load_example_registry

TRIBUTI, SCUOLA = "A2A-TRIBUTI", "A2A-SCUOLA"
COMUNE, PROVINCIA, SCUOLA_EC = "01234567897", "00987654324", "80001234568"
HEADER = [
    "idA2A",
    "idPendenza",
    "idDominio",
    "tipoPendenza",
    "causale",
    "importo",
    "identificativoPagatore",
    "anagraficaPagatore",
    "indirizzo",
    "dataScadenza",
    "idVoce1",
    "importoVoce1",
    "descrizioneVoce1",
    "tipoEntrata1",
    "ibanAccredito1",
    "tipoContabilita1",
    "codiceContabilita1",
]


def line(
    id_pendenza: str,
    *,
    importo: str = "100,00",
    voce: str | None = None,
    id_dominio: str = COMUNE,
    tipo: str = "TARI",
    causale: str = "TARI 2026",
    id_a2a: str = TRIBUTI,
    entrata: str = "TARI",
    iban: str = "",
) -> str:
    values = {
        "idA2A": id_a2a,
        "idPendenza": id_pendenza,
        "idDominio": id_dominio,
        "tipoPendenza": tipo,
        "causale": causale,
        "importo": importo,
        "identificativoPagatore": "RSSMRA80A01H501U",
        "anagraficaPagatore": "Mario Rossi",
        "indirizzo": "Via Roma 1",
        "dataScadenza": "2030-12-31",
        "idVoce1": "V1",
        "importoVoce1": voce or importo,
        "descrizioneVoce1": "Quota",
        "tipoEntrata1": "" if iban else entrata,
        "ibanAccredito1": iban,
        "tipoContabilita1": "CAPITOLO" if iban else "",
        "codiceContabilita1": "9999" if iban else "",
    }
    if importo in ("0", "0,00"):
        values.update({k: "" for k in HEADER[6:]})
    return ";".join(values[h] for h in HEADER)


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text(";".join(HEADER) + "\r\n" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


@pytest.fixture
def env(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """The flow's settings pointed at the test database and a temporary work directory, registry loaded."""
    from models.db import get_engine
    from models.settings import get_settings

    monkeypatch.setenv("PAGOFLOW_DATABASE_URL", db.url)
    monkeypatch.setenv("PAGOFLOW_WORK_DIR", str(tmp_path / "work"))
    get_settings.cache_clear()
    get_engine.cache_clear()
    with db.session() as session:
        load_example_registry(session)
    yield db
    get_engine(db.url).dispose()
    get_engine.cache_clear()
    get_settings.cache_clear()


def existing(session: Session, *lines_: str) -> None:
    """Store positions directly (as the REST API would have), from CSV lines."""
    text = ";".join(HEADER) + "\r\n" + "\r\n".join(lines_) + "\r\n"
    registry = load_registry_view(session)
    batch = []
    for _, row in read_tracciato(io.StringIO(text, newline=""), defaults=RowDefaults()):
        assert isinstance(row, InsertRow)
        caller = load_caller(session, id_a2a=row.id_a2a)
        assert caller is not None
        batch.append(
            validate_position(
                row.body, id_a2a=row.id_a2a, id_pendenza=row.id_pendenza, caller=caller, registry=registry
            )
        )
    assert all(r.error is None for r in upsert_positions(session, batch=batch))
    session.commit()


def outcomes(session: Session) -> dict[int, tuple[str, str]]:
    return {r.row_number: (r.outcome, r.reason or "") for r in session.exec(select(BulkRow)).all()}


def snapshot(session: Session) -> list[tuple[Any, ...]]:
    return [
        (p.id_a2a, p.id_pendenza, p.iuv, p.version, p.state, p.causale, p.updated_at)
        for p in session.exec(select(Position).order_by(col(Position.id))).all()
    ]


def read_outcome_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream, delimiter=";"))


MIXED = [
    line("P-NEW"),  # 1 ADDED
    line("P-SUM", importo="100,00", voce="90,00"),  # 2 VER_002
    line("P-SYN", importo="dieci"),  # 3 syntax error
    "",  # 4 blank line
    line("P-OLD", importo="0", causale=""),  # 5 annulment of a stored position
    line("P-NEW", causale="ripetuta"),  # 6 duplicate of row 1
    line("P-SCU", id_dominio=SCUOLA_EC, tipo="MENSA", iban="IT65X0306909606000000654321"),  # 7 EC not granted
    line("P-TEFA", id_dominio=PROVINCIA, tipo="TEFA", iban="IT58X0103014200000000111222"),  # 8 ADDED
    line("P-SAME"),  # 9 UNCHANGED
    line("P-UPD", causale="TARI 2026 rettifica"),  # 10 UPDATED
    line("P-NONE", importo="0"),  # 11 annulment of an unknown position
    line("P-GRP", tipo="LIBERO", entrata="TARI", id_a2a=SCUOLA),  # 12 row of another application
]


@pytest.mark.prefect
def test_mixed_file_gives_each_row_its_outcome_and_a_rerun_changes_nothing(
    env: Database, prefect_harness: None, tmp_path: Path
) -> None:
    from flows.load_positions import load_positions

    with env.session() as session:
        existing(session, line("P-OLD"), line("P-SAME"), line("P-UPD"))
    path = write_csv(tmp_path / "tributi.csv", *MIXED)

    summary = load_positions(path=str(path), id_a2a=TRIBUTI, batch_size=4)

    with env.session() as session:
        got = outcomes(session)
        assert {n: o for n, (o, _) in got.items()} == {
            1: "ADDED",
            2: "REJECTED",
            3: "REJECTED",
            4: "REJECTED",
            5: "ANNULLED",
            6: "REJECTED",
            7: "REJECTED",
            8: "ADDED",
            9: "UNCHANGED",
            10: "UPDATED",
            11: "REJECTED",
            12: "REJECTED",
        }
        assert got[2][1].startswith("VER_002: ") and got[2][1].endswith("(importo)")
        assert got[3][1] == "SINTASSI: importo non valido: 'dieci' (importo)"
        assert got[4][1] == "SINTASSI: riga vuota (riga)"
        assert got[6][1] == "VER_015: Pendenza ripetuta nel tracciato (riga 1) (idPendenza)"
        assert got[7][1].startswith(
            f"AUTORIZZAZIONE: Applicazione A2A-TRIBUTI non abilitata per il dominio {SCUOLA_EC}"
        )
        assert got[11][1].startswith("PND_001: ")
        assert got[12][1].startswith("AUTORIZZAZIONE: ") and got[12][1].endswith("(idA2A)")
        positions = {p.id_pendenza: p for p in session.exec(select(Position)).all()}
        assert set(positions) == {"P-OLD", "P-SAME", "P-UPD", "P-NEW", "P-TEFA"}
        assert positions["P-OLD"].state == PositionState.ANNULLATA
        assert positions["P-OLD"].state_description == "Annullata da tracciato"
        assert positions["P-UPD"].causale == "TARI 2026 rettifica" and positions["P-UPD"].version == 2
        assert positions["P-SAME"].version == 1
        assert positions["P-NEW"].causale == "TARI 2026"  # the duplicate row did not overwrite it
        assert positions["P-TEFA"].nav is not None and positions["P-TEFA"].nav.startswith(
            "001"
        )  # aux 0, code 01
        bulk = session.exec(select(BulkFile)).one()
        assert (bulk.state, bulk.total_rows, bulk.processed_rows) == ("DONE", 12, 12)
        before = snapshot(session)

    assert summary["counts"] == {"ADDED": 2, "UPDATED": 1, "UNCHANGED": 1, "ANNULLED": 1, "REJECTED": 7}
    assert summary["state"] == "DONE"
    outcome_path = summary["outcome_path"]
    assert Path(outcome_path).parent == tmp_path / "work" / "bulk"
    records = read_outcome_csv(outcome_path)
    assert [r["numeroRiga"] for r in records] == [str(n) for n in range(1, 13)]
    assert list(records[0]) == [
        "numeroRiga",
        "idA2A",
        "idPendenza",
        "idDominio",
        "numeroAvviso",
        "esito",
        "descrizione",
    ]
    assert records[0] | {"numeroAvviso": ""} == {
        "numeroRiga": "1",
        "idA2A": TRIBUTI,
        "idPendenza": "P-NEW",
        "idDominio": COMUNE,
        "numeroAvviso": "",
        "esito": "ADDED",
        "descrizione": "",
    }
    assert records[0]["numeroAvviso"] == positions["P-NEW"].nav
    assert records[4]["esito"] == "ANNULLED" and records[4]["numeroAvviso"] == positions["P-OLD"].nav
    assert records[1]["descrizione"] == got[2][1]
    first_content = Path(outcome_path).read_bytes()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    # Other tests in this Prefect session write the same key (bulk file ids restart per database):
    # the newest artifact is the one this flow run just wrote.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"bulk-file-{summary['bulk_file_id']}-summary"])
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert artifacts and "| REJECTED | 7 |" in str(artifacts[0].data)

    again = load_positions(path=str(path), id_a2a=TRIBUTI, batch_size=4)

    assert again["bulk_file_id"] == summary["bulk_file_id"] and again["counts"] == summary["counts"]
    with env.session() as session:
        assert snapshot(session) == before
        assert session.exec(select(func.count()).select_from(BulkRow)).one() == 12
        assert session.exec(select(func.count()).select_from(BulkFile)).one() == 1
    assert Path(again["outcome_path"]).read_bytes() == first_content


@pytest.mark.prefect
def test_crash_mid_file_resumes_without_duplicates_or_lost_outcomes(
    env: Database, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.load_positions import load_positions

    path = write_csv(tmp_path / "rate.csv", *[line(f"R{i:02d}") for i in range(1, 12)], "")
    real = store_bulk.record_rows
    calls = {"n": 0}

    def crash_on_third_batch(session: Session, **kwargs: Any) -> None:
        calls["n"] += 1
        real(session, **kwargs)
        if calls["n"] == 3:
            raise RuntimeError("power cut")

    monkeypatch.setattr(store_bulk, "record_rows", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="power cut"):
        load_positions(path=str(path), id_a2a=TRIBUTI, batch_size=4)

    with env.session() as session:
        bulk = session.exec(select(BulkFile)).one()
        assert (bulk.state, bulk.processed_rows) == ("FAILED", 8)
        assert sorted(outcomes(session)) == list(range(1, 9))
        assert (
            session.exec(select(func.count()).select_from(Position)).one() == 8
        )  # batch 3 rolled back whole

    monkeypatch.setattr(store_bulk, "record_rows", real)
    summary = load_positions(path=str(path), id_a2a=TRIBUTI, batch_size=5)  # another batch size: no matter

    assert summary["counts"] == {"ADDED": 11, "UPDATED": 0, "UNCHANGED": 0, "ANNULLED": 0, "REJECTED": 1}
    with env.session() as session:
        got = outcomes(session)
        assert sorted(got) == list(range(1, 13)) and got[12][0] == "REJECTED"
        positions = session.exec(select(Position).order_by(col(Position.iuv))).all()
        assert sorted(p.id_pendenza for p in positions) == [f"R{i:02d}" for i in range(1, 12)]
        # The rolled-back batch gave its IUV progressives back: 1..11, none skipped, none twice.
        assert [int(p.iuv[2:15]) for p in positions] == list(range(1, 12))  # type: ignore[index]
        assert session.exec(select(func.count()).select_from(PositionItem)).one() == 11
        rows = session.exec(select(BulkRow)).all()
        assert {r.nav for r in rows if r.outcome == "ADDED"} == {p.nav for p in positions}
    assert [r["numeroRiga"] for r in read_outcome_csv(summary["outcome_path"])] == [
        str(n) for n in range(1, 13)
    ]


@pytest.mark.prefect
def test_json_file_with_notices(env: Database, prefect_harness: None, tmp_path: Path) -> None:
    from flows.load_positions import load_positions

    def pendenza(
        id_a2a: str, id_pendenza: str, id_dominio: str, tipo: str, voce: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        return {
            "idA2A": id_a2a,
            "idPendenza": id_pendenza,
            "idDominio": id_dominio,
            "idTipoPendenza": tipo,
            "causale": f"Pagamento {id_pendenza}",
            "importo": 25.5,
            "dataScadenza": "2030-06-30",
            "soggettoPagatore": {"tipo": "F", "identificativo": "VRDGPP80A01H501X", "anagrafica": "G. Verdi"},
            "voci": [{"idVocePendenza": "V1", "importo": 25.5, "descrizione": "Quota", **voce}],
            **extra,
        }

    with env.session() as session:
        existing(session, line("P-OLD"))
    document = {
        "inserimenti": [
            pendenza(TRIBUTI, "J1", COMUNE, "MULTE", {"codEntrata": "MULTE"}),  # postal IBAN: slip printed
            pendenza(
                SCUOLA,
                "J2",
                SCUOLA_EC,
                "MENSA",
                {
                    "ibanAccredito": "IT65X0306909606000000654321",
                    "tipoContabilita": "ALTRO",
                    "codiceContabilita": "1",
                },
            ),
            pendenza(TRIBUTI, "J3", COMUNE, "TARI", {"codEntrata": "TARI"}, importo=30),  # VER_002
        ],
        "annullamenti": [{"idA2A": TRIBUTI, "idPendenza": "P-OLD", "motivoAnnullamento": "Sgravio"}],
    }
    path = tmp_path / "misto.json"
    path.write_text(json.dumps(document), encoding="utf-8")

    summary = load_positions(path=str(path), notices=True)

    assert summary["counts"] == {"ADDED": 2, "UPDATED": 0, "UNCHANGED": 0, "ANNULLED": 1, "REJECTED": 1}
    result = json.loads(Path(summary["outcome_path"]).read_text(encoding="utf-8"))
    assert summary["outcome_path"].endswith(".json") and result["riepilogo"] == summary["counts"]
    assert [(e["numeroRiga"], e["idPendenza"], e["esito"]) for e in result["esiti"]] == [
        (1, "J1", "ADDED"),
        (2, "J2", "ADDED"),
        (3, "J3", "REJECTED"),
        (4, "P-OLD", "ANNULLED"),
    ]
    assert result["esiti"][2]["descrizione"].startswith("VER_002")
    with env.session() as session:
        navs = {p.id_pendenza: (p.id_dominio, p.nav) for p in session.exec(select(Position)).all()}
        assert session.exec(
            select(Position).where(Position.id_pendenza == "P-OLD")
        ).one().state_description == ("Sgravio")
    with zipfile.ZipFile(summary["notices_path"]) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(f"{navs[k][0]}-{navs[k][1]}.pdf" for k in ("J1", "J2"))
        for key in ("J1", "J2"):
            pdf = archive.read(f"{navs[key][0]}-{navs[key][1]}.pdf")
            assert pdf.startswith(b"%PDF-")
            text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
            assert format_nav(navs[key][1] or "") in text and "25,50" in text and f"Pagamento {key}" in text
        j1_name = f"{navs['J1'][0]}-{navs['J1'][1]}.pdf"
        postal_text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(archive.read(j1_name))).pages)
        assert "BOLLETTINO POSTALE" in postal_text and "000012345678" in postal_text


@pytest.mark.prefect
def test_cli_load_prints_counts_and_outcome_path(
    env: Database, prefect_harness: None, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.positions import positions_app

    path = write_csv(tmp_path / "cli.csv", line("C1"), line("C2", id_a2a=SCUOLA), line("C3", importo="0"))
    result = CliRunner().invoke(
        positions_app,
        ["load", str(path), "--a2a", TRIBUTI, "--dominio", COMUNE, "--tipo", "TARI", "--batch-size", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "ADDED" in result.output and "REJECTED" in result.output and "-esito.csv" in result.output
    records = read_outcome_csv(result.output.split("outcome file: ")[1].split()[0])
    assert [(r["idPendenza"], r["esito"]) for r in records] == [
        ("C1", "ADDED"),
        ("C2", "REJECTED"),
        ("C3", "REJECTED"),
    ]
    assert records[2]["descrizione"].startswith("PND_001")

    bad = tmp_path / "bad.csv"
    bad.write_text("colonna;altra\r\n1;2\r\n", encoding="utf-8")
    failed = CliRunner().invoke(positions_app, ["load", str(bad)])
    assert failed.exit_code == 2 and "idPendenza" in failed.output


# --- store level, no Prefect ---------------------------------------------------------------------------


def test_a_batch_is_processed_once_even_if_two_runs_race(env: Database) -> None:
    rows: list[tuple[int, Any]] = [(1, AnnulRow(TRIBUTI, "X1")), (2, AnnulRow(TRIBUTI, "X2"))]
    with env.session() as session:
        bulk, created = store_bulk.register_bulk_file(
            session,
            name="f.csv",
            sha256="0" * 64,
            fmt="csv",
            id_a2a=TRIBUTI,
            id_dominio=None,
            debt_type=None,
            total_rows=4,
        )
        again, created_again = store_bulk.register_bulk_file(
            session,
            name="f.csv",
            sha256="0" * 64,
            fmt="csv",
            id_a2a=TRIBUTI,
            id_dominio=None,
            debt_type=None,
            total_rows=4,
        )
        assert created and not created_again and again.id == bulk.id
        session.commit()
        assert bulk.id is not None
        first = store_bulk.load_batch(session, bulk_file_id=bulk.id, rows=rows)
        session.commit()
        second = store_bulk.load_batch(session, bulk_file_id=bulk.id, rows=rows)
        session.commit()
        assert not first.skipped and first.counts == {"REJECTED": 2}
        assert second.skipped
        with pytest.raises(ValueError):
            store_bulk.load_batch(session, bulk_file_id=bulk.id, rows=[])
        # Rows out of order are refused too: row 4 cannot go before row 3.
        assert store_bulk.load_batch(
            session, bulk_file_id=bulk.id, rows=[(4, AnnulRow(TRIBUTI, "X4"))]
        ).skipped
        assert session.exec(select(func.count()).select_from(BulkRow)).one() == 2


def test_effective_batch_size_caps_task_runs() -> None:
    from flows.load_positions import MAX_BATCHES, effective_batch_size

    assert effective_batch_size(batch_size=1000, total_rows=100_000) == 1000
    assert effective_batch_size(batch_size=10, total_rows=100_000) == -(-100_000 // MAX_BATCHES)
    with pytest.raises(ValueError):
        effective_batch_size(batch_size=0, total_rows=1)
