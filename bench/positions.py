"""Bulk load of positions: rows/s of our load against a raw batched insert, on SQLite and (if set) PostgreSQL.

Run: .venv/bin/python bench/positions.py [--rows 100000] [--batch-size 1000] [--flow]

It writes a GovPay CSV of ``--rows`` positions (one voce each, half by revenue type, half by IBAN), then
per database: (a) a raw baseline, SQLAlchemy Core ``insert().values()`` executemany of the same rows into
``position`` and ``position_item`` in batches of 1000, IUVs and ids computed beforehand (no RETURNING);
(b) our load on a fresh database: the task functions of the load-positions flow called directly (``.fn``:
parse, validate, IUV allocation, upsert, outcome rows, outcome file), or with ``--flow`` the flow itself
under Prefect. Ours runs first, so the peak RSS printed after it is its own. PostgreSQL: set
PAGOFLOW_TEST_POSTGRES_URL to a server URL; a throwaway database is created and dropped there.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import Session  # noqa: E402

from bench.pgdb import create_pg_database, drop_database  # noqa: E402
from models.db import make_engine  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.positions import Position, PositionItem  # noqa: E402
from rules.identifiers import build_notice  # noqa: E402
from rules.registry import parse_registry  # noqa: E402
from store.registry import apply_registry  # noqa: E402

REGISTRY = Path(__file__).resolve().parent.parent / "examples" / "registry.yaml"
EC, A2A = "01234567897", "A2A-TRIBUTI"
IBAN = "IT21X0306909606000000123456"
HEADER = [
    "idA2A", "idPendenza", "idDominio", "tipoPendenza", "causale", "importo", "dataScadenza",
    "tipoSoggettoPagatore", "identificativoPagatore", "anagraficaPagatore", "indirizzo", "civico", "cap",
    "localita", "provincia", "email", "idVoce1", "importoVoce1", "descrizioneVoce1", "tipoEntrata1",
    "ibanAccredito1", "tipoContabilita1", "codiceContabilita1",
]  # fmt: skip
TARGET_RATIO = 1 / 3
DUE = datetime(2030, 12, 31).date()
TARGET_RSS_MB = 500


def _amount(i: int) -> Decimal:
    return Decimal(50 + i % 400) + Decimal(i % 100) / 100


def write_csv(path: Path, *, rows: int) -> None:
    """A GovPay CSV of ``rows`` valid positions for the example registry."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(";".join(HEADER) + "\r\n")
        for i in range(rows):
            amount = f"{_amount(i):.2f}".replace(".", ",")
            by_iban = i % 2 == 1
            values = [
                A2A, f"TARI-2026-{i:07d}", EC, "TARI", f"TARI 2026 utenza {i}", amount, "2030-12-31", "F",
                "RSSMRA80A01H501U", f"Mario Rossi {i}", "Via Roma", str(i % 200), "00100", "Roma", "RM",
                f"utente{i}@example.org", "1", amount, "Tassa rifiuti", "" if by_iban else "TARI",
                IBAN if by_iban else "", "CAPITOLO" if by_iban else "", "1010" if by_iban else "",
            ]  # fmt: skip
            out.write(";".join(values) + "\r\n")


def _database(backend: str, tmp: Path, label: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/{label}.db"
    return create_pg_database(f"pf_bench_{label}")


def _prepare(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        apply_registry(session, spec=parse_registry(yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))))
        session.commit()
    engine.dispose()


def baseline(url: str, *, rows: int, batch: int = 1000) -> float:
    """Seconds for a plain Core executemany of the same positions and voci (IUVs and ids precomputed)."""
    notices = [build_notice(aux_digit=3, progressive=i + 1, segregation_code="01") for i in range(rows)]
    engine = make_engine(url)
    positions, items = Position.__table__, PositionItem.__table__  # type: ignore[attr-defined]
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, rows, batch):
            now = datetime.now(UTC)
            chunk: list[dict[str, Any]] = []
            for i in range(start, min(start + batch, rows)):
                notice = notices[i]
                chunk.append({
                    "id": i + 1, "id_a2a": A2A, "id_pendenza": f"TARI-2026-{i:07d}", "id_dominio": EC,
                    "debt_type": "TARI", "causale": f"TARI 2026 utenza {i}", "debtor_type": "F",
                    "debtor_id": "RSSMRA80A01H501U", "debtor_name": f"Mario Rossi {i}",
                    "debtor_address": "Via Roma", "debtor_civic": str(i % 200),
                    "debtor_cap": "00100", "debtor_locality": "Roma", "debtor_province": "RM",
                    "debtor_email": f"utente{i}@example.org", "amount": _amount(i), "iuv": notice.iuv,
                    "nav": notice.nav, "iupd": f"{EC}-{notice.iuv}", "due_date": DUE,
                    "state": "NON_ESEGUITA", "paid_without_receipt": False, "content_hash": "0" * 64,
                    "version": 1, "published_version": 0, "publication_state": "PENDING",
                    "publication_attempts": 0, "created_at": now, "updated_at": now,
                })  # fmt: skip
            conn.execute(insert(positions), chunk)
            conn.execute(insert(items), [
                {"position_id": row["id"], "item_index": 1, "id_voce": "1", "id_dominio": EC,
                 "description": "Tassa rifiuti", "amount": row["amount"], "kind": "IBAN", "iban": IBAN,
                 "postal": False, "accounting_type": "CAPITOLO", "accounting_code": "1010",
                 "state": "NON_ESEGUITO"}
                for row in chunk
            ])  # fmt: skip
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def ours(
    url: str, *, path: Path, batch_size: int, work: Path, flow: bool
) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Seconds for our load of the file, with the time of each phase and the final summary."""
    os.environ["PAGOFLOW_DATABASE_URL"] = url
    os.environ["PAGOFLOW_WORK_DIR"] = str(work)
    from models.db import get_engine
    from models.settings import get_settings

    get_settings.cache_clear()
    get_engine.cache_clear()
    phases: dict[str, float] = {}
    if flow:
        from prefect import flow as prefect_flow

        from flows.load_positions import load_positions

        prefect_flow(name="bench-warm-up")(lambda: None)()  # starts the temporary server outside the timing
        started = time.perf_counter()
        summary = load_positions(path=str(path), id_a2a=A2A, batch_size=batch_size)
        elapsed = time.perf_counter() - started
    else:
        from prefect.logging import disable_run_logger

        from rules.tracciato import batched
        from tasks.positions import finish_file, iter_rows, load_rows, register_file, write_outcome_file

        with disable_run_logger():
            started = time.perf_counter()
            bulk = register_file.fn(path=str(path), id_a2a=A2A, id_dominio=None, debt_type=None)
            phases["register (hash + count)"] = time.perf_counter() - started
            mark = time.perf_counter()
            for rows in batched(iter_rows(path, defaults=bulk.defaults), size=batch_size, after=0):
                load_rows.fn(bulk_file_id=bulk.id, rows=rows, only_a2a=A2A)
            phases["batches (parse, validate, upsert, outcomes)"] = time.perf_counter() - mark
            mark = time.perf_counter()
            outcome = write_outcome_file.fn(
                bulk_file_id=bulk.id, path=str(path), name=bulk.name, fmt=bulk.format
            )
            summary = finish_file.fn(bulk_file_id=bulk.id, state="DONE", outcome_path=outcome).as_dict()
            phases["outcome file + finish"] = time.perf_counter() - mark
            elapsed = time.perf_counter() - started
    get_engine(url).dispose()
    get_engine.cache_clear()
    return elapsed, phases, summary


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Generate the file, run both loads on every configured database, print rows/s, ratio and peak memory."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--flow", action="store_true", help="run the Prefect flow instead of the task functions"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    backends = ["sqlite"] + (["postgres"] if os.environ.get("PAGOFLOW_TEST_POSTGRES_URL") else [])
    missed = False
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = tmp / "tracciato.csv"
        started = time.perf_counter()
        write_csv(path, rows=args.rows)
        print(
            f"file: {args.rows} rows, {path.stat().st_size / 1e6:.1f} MB, written in "
            f"{time.perf_counter() - started:.1f} s; mode: {'flow (Prefect)' if args.flow else 'task .fn'}"
        )
        for backend in backends:
            ours_url, base_url = _database(backend, tmp, "ours"), _database(backend, tmp, "base")
            try:
                _prepare(ours_url)
                _prepare(base_url)
                elapsed, phases, summary = ours(
                    ours_url, path=path, batch_size=args.batch_size, work=tmp / "work", flow=args.flow
                )
                rss = _rss_mb()
                counts = summary["counts"]
                if counts.get("ADDED") != args.rows:
                    print(f"  unexpected outcome counts: {counts}")
                    missed = True
                raw = baseline(base_url, rows=args.rows)
            finally:
                drop_database(ours_url)
                drop_database(base_url)
            ours_rate, raw_rate = args.rows / elapsed, args.rows / raw
            ratio = ours_rate / raw_rate
            ok = ratio >= TARGET_RATIO and rss < TARGET_RSS_MB
            missed |= not ok
            print(f"{backend}:")
            print(f"  raw baseline : {raw:7.2f} s  {raw_rate:9.0f} rows/s")
            print(
                f"  our load     : {elapsed:7.2f} s  {ours_rate:9.0f} rows/s  ratio {ratio:.2f} "
                f"(target >= {TARGET_RATIO:.2f})  peak RSS {rss:.0f} MB (target < {TARGET_RSS_MB})  "
                f"{'OK' if ok else 'MISSED'}"
            )
            for phase, seconds in phases.items():
                print(f"    {phase:<45} {seconds:7.2f} s")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
