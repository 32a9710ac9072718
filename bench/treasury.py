"""Treasury ingestion: a 100,000-movement OPI journal over real SFTP, against a raw ``sftp get``.

Run: .venv/bin/python bench/treasury.py [--movements 100000] [--tracemalloc] [--check]

It starts a throwaway OpenSSH server on loopback (as the tests do, ``tests/sftp_server.py``) and writes an
OPI Giornale di Cassa 1.8 of ``--movements`` pagoPA credits into its directory (the sandbox writer). Then:
(a) the raw transfer of that file: OpenSSH's ``sftp -b`` batch ``get`` and paramiko's ``SFTPClient.get``;
(b) ours, per database (SQLite; PostgreSQL too when PAGOFLOW_TEST_POSTGRES_URL is set, in a throwaway
database): the connector's download (streamed, hashed, journaled), then parse + store (the ingest task's
function: read, parse the causale, dedupe keys, batched inserts, one transaction). Each database runs in a
fresh process: memory is its peak RSS (ru_maxrss) minus its resident memory once imports and setup are done.
``--tracemalloc`` adds a second, slower run per database reporting the Python heap peak.
Targets: parse + store <= 20 s, memory <= 200 MB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from models.db import make_engine  # noqa: E402
from sandbox.builders.treasury import Credit, JournalFormat, iter_journal, journal_filename  # noqa: E402
from tests.sftp_server import OpenSshServer, openssh_server, sshd_missing_reason  # noqa: E402

TARGET_SECONDS = 20.0
TARGET_MB = 200.0
IBAN = "IT60X0542811101000000123456"
FISCAL_CODE = "01234567890"
KEY_ENV = "PAGOFLOW_BENCH_SFTP_KEY"
MB = 1024 * 1024


def _credits(n: int) -> list[Credit]:
    day = date(2024, 7, 26)
    out = []
    for i in range(1, n + 1):
        kind = i % 10
        if kind == 0:
            remittance = f"/RFB/{i:015d}/{i % 500 + 1}.00/TXT/Diritti di segreteria"
        elif kind == 1:
            remittance = f"/PUR/LGPE-RIVERSAMENTO/TXT/{i % 3}/URI/2024-07-25PSPBENCHXXX-{i:010d}"
        else:
            remittance = f"/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25PSPBENCHXXX-{i:010d}"
        out.append(
            Credit(
                amount=Decimal(i % 100_000 + 1) / 100 + 1,
                value_date=day - timedelta(days=i % 3),
                booking_date=day,
                remittance=remittance,
                ordering_party=f"PSP BENCH {i % 37} SPA",
                end_to_end_id=f"E2E-BENCH-{i:012d}",
                bank_reference=f"TRN{i:020d}",
                bank_movement_id=f"BT{i:014d}",
            )
        )
    return out


def write_journal(path: Path, *, movements: int) -> int:
    """Stream the OPI journal to ``path``; returns its size."""
    with path.open("wb") as out:
        for part in iter_journal(
            fmt=JournalFormat.OPI_1_8,
            account_iban=IBAN,
            ec_fiscal_code=FISCAL_CODE,
            ec_name="Comune di Esempio",
            day=date(2024, 7, 26),
            sequence=1,
            credits=_credits(movements),
        ):
            out.write(part)
    return path.stat().st_size


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return _maxrss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def _ours(
    url: str, server: dict[str, Any], remote_dir: str, name: str, work: str, trace: bool
) -> dict[str, float]:
    """Download, then parse + store, in this (fresh) process; returns timings and memory."""
    os.environ["PAGOFLOW_DATABASE_URL"] = url
    os.environ["PAGOFLOW_WORK_DIR"] = work
    os.environ[KEY_ENV] = server["key_text"]
    from sqlmodel import Session, select

    from connectors.treasury.sftp import SftpConfig, SftpSource
    from models.db import get_engine
    from models.registry import TreasurySource
    from tasks.treasury import FetchedFile, process_file
    from tests.factories import load_example_registry

    engine = get_engine()
    with Session(engine) as session:
        load_example_registry(session)
        source = session.exec(
            select(TreasurySource).where(TreasurySource.name == "bench")
        ).first() or TreasurySource(
            name="bench",
            id_dominio="01234567897",
            account=IBAN,
            host=server["host"],
            port=server["port"],
            username=server["username"],
            private_key_ref=f"env:{KEY_ENV}",
            known_hosts=server["known_hosts"],
            remote_dir=remote_dir,
            pattern="*.xml",
            format="OPI",
        )
        session.add(source)
        session.commit()
        session.refresh(source)
        config = SftpConfig.from_source(source)
    baseline = _rss_mb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with SftpSource(config) as sftp:
        got = sftp.download(name=name, target=Path(work) / "inbox" / name)
    downloaded = time.perf_counter()
    fetched = FetchedFile(source="bench", name=name, path=str(got.path), size=got.size, sha256=got.sha256)
    outcome = process_file(fetched=fetched, engine=engine, work_dir=Path(work))
    stored = time.perf_counter()
    heap = tracemalloc.get_traced_memory()[1] / MB if trace else 0.0
    if trace:
        tracemalloc.stop()
    engine.dispose()
    if outcome.state != "PROCESSED":
        raise RuntimeError(f"bench file not processed: {outcome}")
    return {
        "download": downloaded - started,
        "store": stored - downloaded,
        "movements": float(outcome.movements),
        "rss_delta": _maxrss_mb() - baseline,
        "rss_peak": _maxrss_mb(),
        "heap": heap,
        "bytes": float(got.size),
    }


def _raw_openssh(server: OpenSshServer, remote: Path, local: Path) -> float:
    started = time.perf_counter()
    server.sftp_batch(f'get "{server.remote(remote)}" "{local}"\n')
    elapsed = time.perf_counter() - started
    local.unlink()
    return elapsed


def _raw_paramiko(server: OpenSshServer, remote: Path, local: Path) -> float:
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.username,
        key_filename=str(server.client_key),
        allow_agent=False,
        look_for_keys=False,
    )
    try:
        started = time.perf_counter()
        client.open_sftp().get(server.remote(remote), str(local))
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    local.unlink()
    return elapsed


def _databases(tmp: Path) -> tuple[list[tuple[str, str]], list[str]]:
    targets = [("sqlite", f"sqlite:///{tmp}/bench.db")]
    made = []
    pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if pg:
        name = f"pf_bench_{uuid.uuid4().hex[:8]}"
        admin = make_engine(str(make_url(pg).set(database="postgres")), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        made.append(name)
        targets.append(("postgres", make_url(pg).set(database=name).render_as_string(hide_password=False)))
    else:
        print("postgres: skipped (PAGOFLOW_TEST_POSTGRES_URL not set)")
    return targets, made


def _drop(names: list[str]) -> None:
    pg = os.environ.get("PAGOFLOW_TEST_POSTGRES_URL")
    if not pg or not names:
        return
    admin = make_engine(str(make_url(pg).set(database="postgres")), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for name in names:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    """Generate, upload, then time the raw get and our download + parse + store per database."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--movements", type=int, default=100_000, help="movements in the journal (100000)")
    parser.add_argument("--tracemalloc", action="store_true", help="also report the Python heap peak")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    reason = sshd_missing_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    from models.migrate import upgrade

    missed = False
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with openssh_server(tmp / "sshd") as server:
            remote_dir = server.drop("giornale")  # local path; server.remote() gives the client's
            name = journal_filename(
                fmt=JournalFormat.OPI_1_8, ec_fiscal_code=FISCAL_CODE, day=date(2024, 7, 26), sequence=1
            )
            started = time.perf_counter()
            size = write_journal(remote_dir / name, movements=args.movements)
            print(
                f"journal: OPI 1.8, {args.movements:,} movements, {size / MB:.1f} MB "
                f"(written in {time.perf_counter() - started:.1f} s), OpenSSH sftp on 127.0.0.1:{server.port}"
            )
            raw_ssh = _raw_openssh(server, remote_dir / name, tmp / "raw-openssh.xml")
            raw_paramiko = _raw_paramiko(server, remote_dir / name, tmp / "raw-paramiko.xml")
            print(f"{'step':<34} {'seconds':>8} {'MB/s':>8} {'movements/s':>12} {'memory MB':>10}")
            print(f"{'raw get, OpenSSH sftp -b':<34} {raw_ssh:>8.2f} {size / MB / raw_ssh:>8.1f}")
            label = "raw get, paramiko SFTPClient.get"
            print(f"{label:<34} {raw_paramiko:>8.2f} {size / MB / raw_paramiko:>8.1f}")
            info = {
                "host": server.host,
                "port": server.port,
                "username": server.username,
                "known_hosts": str(server.known_hosts),
                "key_text": server.client_key_text,
            }
            targets, made = _databases(tmp)
            context = multiprocessing.get_context("spawn")
            try:
                for label, url in targets:
                    upgrade(url)
                    runs = [False, True] if args.tracemalloc else [False]
                    for trace in runs:
                        if trace:  # a fresh database for the traced run, so it stores everything again
                            _reset(url)
                        work = tmp / f"work-{label}-{int(trace)}"
                        with context.Pool(1) as pool:
                            job = (url, info, server.remote(remote_dir), name, str(work), trace)
                            r = pool.apply(_ours, job)
                        if trace:
                            traced = f"  {label} (tracemalloc run)"
                            print(
                                f"{traced:<34} {r['download'] + r['store']:>8.2f} {'':>8} {'':>12} "
                                f"{r['heap']:>10.1f}  (Python heap peak; timing inflated by tracing)"
                            )
                            missed |= r["heap"] > TARGET_MB
                            continue
                        total = r["download"] + r["store"]
                        print(
                            f"{'ours ' + label + ': download':<34} {r['download']:>8.2f} "
                            f"{size / MB / r['download']:>8.1f}"
                        )
                        print(
                            f"{'ours ' + label + ': parse + store':<34} {r['store']:>8.2f} {'':>8} "
                            f"{r['movements'] / r['store']:>12,.0f}"
                        )
                        print(
                            f"{'ours ' + label + ': total':<34} {total:>8.2f} {size / MB / total:>8.1f} "
                            f"{r['movements'] / total:>12,.0f} {r['rss_delta']:>10.1f}  "
                            f"(peak RSS {r['rss_peak']:.0f} MB)"
                        )
                        missed |= r["store"] > TARGET_SECONDS or r["rss_delta"] > TARGET_MB
            finally:
                _drop(made)
    print(
        f"targets: parse + store <= {TARGET_SECONDS:.0f} s, memory <= {TARGET_MB:.0f} MB "
        f"-> {'MISSED' if missed else 'met'}"
    )
    return 1 if args.check and missed else 0


def _reset(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM treasury_movement"))
        conn.execute(text("DELETE FROM treasury_file"))
        conn.execute(text("DELETE FROM event"))
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
