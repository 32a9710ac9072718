"""The production shape end to end, in one command: what ran where, and that nothing ran twice.

    .venv/bin/python bench/production.py [--workers 2] [--cycles 2] [--positions 300] [--paid 0.6] [--keep]

PostgreSQL for the platform and for a Prefect server of its own (``prefect server start``), a process work
pool, ``prefect deploy --all`` from prefect.yaml, ``--workers`` process workers, the secrets in Prefect Secret
blocks; a day prepared against the local pagoPA sandbox (positions, payments by three PSPs through the
station, reporting flows and treasury journals on an SFTP server); then ``--cycles`` runs of the
``daily-cycle`` deployment scheduled for the same instant. It prints the timeline, each run with its worker,
process and stages, and what the day left: positions published, notifications delivered, flows and files
stored, money cashed, and every duplicate found (none expected).

Needs ``PAGOFLOW_TEST_POSTGRES_URL`` (a server where the user may create databases): two databases are created
and dropped at the end (``--keep`` keeps them, with the Prefect server's and workers' logs, and prints where).
The scheduler of the Prefect server is off (``--schedules`` turns it on): with it, the cron runs of
prefect.yaml would start beside the cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from sqlalchemy import func  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from models.db import make_engine  # noqa: E402
from models.journal import Event  # noqa: E402
from models.notifications import Notification  # noqa: E402
from models.payments import Collection, Receipt  # noqa: E402
from models.positions import Position  # noqa: E402
from models.reporting import ReportingFlow  # noqa: E402
from models.treasury import TreasuryFile, TreasuryMovement  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from tests.production_env import production_shape, soap_flow_id  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=2, help="daily-cycle runs scheduled at one instant")
    parser.add_argument("--positions", type=int, default=300)
    parser.add_argument("--paid", type=float, default=0.6, help="share of positions paid before the cycles")
    parser.add_argument("--schedules", action="store_true", help="run the server's scheduler (cron runs too)")
    parser.add_argument("--ui", action="store_true", help="serve the Prefect UI (see the URL printed)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the logs")
    args = parser.parse_args()
    if not os.environ.get("PAGOFLOW_TEST_POSTGRES_URL"):
        print("set PAGOFLOW_TEST_POSTGRES_URL to a PostgreSQL server where you may create databases")
        return 2
    platform_url = create_pg_database("pf_production")
    prefect_url = create_pg_database("pf_production_prefect")
    workdir = Path(tempfile.mkdtemp(prefix="pagoflow-production-"))
    started = time.monotonic()
    try:
        with production_shape(workdir, platform_url=platform_url, prefect_database_url=prefect_url,
                              workers=args.workers, positions=args.positions, paid_share=args.paid,
                              concurrent_daily_cycles=args.cycles, schedules=args.schedules, ui=args.ui,
                              say=print) as shape:  # fmt: skip
            database = platform_url.rsplit("/", 1)[-1]
            print(f"\nPrefect API {shape.api_url}; platform database {database}; "
                  f"{args.cycles} daily-cycle run(s) scheduled now on {args.workers} worker(s)\n")
            cycle_started = time.monotonic()
            runs = shape.run_deployment("daily-cycle/daily-cycle", count=args.cycles, timeout=900)
            cycle_seconds = time.monotonic() - cycle_started
            print("\n".join(shape.describe(runs)))
            starts = sorted(r.start_time for r in runs if r.start_time)
            ends = sorted(r.end_time for r in runs if r.end_time)
            overlap = (ends[0] - starts[-1]).total_seconds() if starts and ends else 0.0
            print(f"\nthe runs ran side by side for {max(overlap, 0):.1f}s; all ended {cycle_seconds:.1f}s "
                  f"after being scheduled")  # fmt: skip
            print("\n" + "\n".join(outcome(shape)))
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {**shape.group.cpu, "this process (sandbox, station, SFTP, app)": own.ru_utime + own.ru_stime}
        print("\nCPU seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items()))
    finally:
        if args.keep:
            print(f"\nkept: {platform_url}, {prefect_url}, logs in {workdir / 'logs'}")
        else:
            drop_pg_database(platform_url)
            drop_pg_database(prefect_url)
    print(f"\ntotal {time.monotonic() - started:.1f}s")
    return 0


def outcome(shape) -> list[str]:  # type: ignore[no-untyped-def]
    """What the day left, counted in the database, the sandbox's journal and the application's endpoint."""
    creates = Counter(json.loads(e["request"])["iupd"] for e in shape.exchanges(operation="createPosition")
                      if e["status"].startswith("201"))  # fmt: skip
    aca = Counter(json.loads(e["request"])["iuv"] for e in shape.exchanges(operation="newDebtPosition"))
    fdr_gets = shape.exchanges(operation="IOrganizationsController_getSinglePublishedFlow")
    fdr = Counter(e["endpoint"] for e in fdr_gets)
    soap_gets = shape.exchanges(operation="nodoChiediFlussoRendicontazione")
    soap = Counter(soap_flow_id(e["request"]) for e in soap_gets)
    notified = Counter(shape.notified.calls)
    engine = make_engine(shape.platform_url)
    try:
        with Session(engine) as s:
            states = Counter(s.exec(select(Position.publication_state)).all())
            receipts = s.exec(select(func.count()).select_from(Receipt)).one()
            notes = Counter(s.exec(select(Notification.state)).all())
            flows = s.exec(select(ReportingFlow.id_dominio, ReportingFlow.id_flusso)).all()
            files = s.exec(select(TreasuryFile.name)).all()
            fetched = Counter(s.exec(select(Event.file_name).where(Event.component == "sftp",
                                                                   Event.operation == "download")).all())
            movements = s.exec(select(func.count()).select_from(TreasuryMovement)).one()
            paid = s.exec(select(func.sum(Receipt.amount))).one()
            cashed = s.exec(select(func.sum(Collection.amount)).where(Collection.state == "INCASSATA")).one()
            cashed_positions = s.exec(select(func.count()).select_from(Position)
                                      .where(Position.state == "INCASSATA")).one()
    finally:
        engine.dispose()

    def twice(counter: Counter) -> int:  # type: ignore[type-arg]
        return sum(1 for n in counter.values() if n > 1)

    return [
        f"positions by publication state: {dict(states)}",
        f"GPD creates: {sum(creates.values())} for {len(creates)} positions ({twice(creates)} sent twice); "
        f"ACA creates: {sum(aca.values())} for {len(aca)} ({twice(aca)} twice)",
        f"receipts {receipts}; notifications {dict(notes)}; the application received "
        f"{sum(notified.values())} for {len(notified)} receipts ({twice(notified)} twice)",
        f"reporting flows stored {len(flows)} ({len(flows) - len(set(flows))} twice); downloaded over FdR "
        f"REST {sum(fdr.values())} for {len(fdr)} flows ({twice(fdr)} twice), over SOAP "
        f"{sum(soap.values())} for {len(soap)} ({twice(soap)} twice)",
        f"treasury files stored {len(files)} ({len(files) - len(set(files))} twice), fetched "
        f"{sum(fetched.values())} times ({twice(fetched)} twice); movements {movements}",
        f"paid {paid}, cashed {cashed} ({cashed_positions} positions INCASSATA)",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
