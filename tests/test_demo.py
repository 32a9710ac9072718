"""The README's main job, end to end: every stage against the sandbox, and totals that add up."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from cli.demo import run_demo

COMUNE, SCUOLA, PROVINCIA = "01234567897", "80001234568", "00987654324"
ZERO = Decimal("0.00")


@pytest.fixture
def restore_env():  # type: ignore[no-untyped-def]
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    from cli.demo import _clear_caches

    _clear_caches()


def _euro(amount: Decimal) -> str:
    """An amount as an Italian reader sees it in the report (``20.285,72 €``), written here independently."""
    whole, cents = f"{amount:.2f}".split(".")
    return ".".join(f"{int(whole):,}".split(",")) + f",{cents} €"


def _expected(sandbox: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each EC's report must say, from pagoPA's side alone: the sandbox's payments and settlement.

    Every payment the PSPs made is either cashed (its flow's money arrived) or still open; the notice paid
    twice is reported on two lines of one IUV, which the flow check cannot tell apart (GovPay 007102), so both
    its payments stay "paid, not reported" (labelled DOPPI). Credits outside pagoPA are unexplained money.
    """
    paid: dict[str, list[tuple[str, Decimal]]] = defaultdict(list)
    for answer in sandbox["payments"]:
        for p in answer["payments"]:
            if p["outcome"] == "OK":
                paid[answer["fiscalCode"]].append((answer["iuv"], Decimal(p["amount"])))
    settlement = sandbox["settlement"]
    credits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for journal in settlement["journals"]:
        credits[journal["ec"]].extend(journal["credits"])
    expected: dict[str, dict[str, Any]] = {}
    for ec in (COMUNE, SCUOLA, PROVINCIA):
        flows = [f for f in settlement["flows"] if f["ec"] == ec]
        flow_credits = {c["idFlusso"]: Decimal(c["amount"]) for c in credits[ec] if c["kind"] == "flow"}
        # the scenario itself: the PSPs reported every payment and credited every flow in full
        assert sum((Decimal(f["total"]) for f in flows), ZERO) == sum((a for _, a in paid[ec]), ZERO)
        assert all(flow_credits[f["idFlusso"]] == Decimal(f["total"]) for f in flows)
        times: dict[str, int] = defaultdict(int)
        for iuv, _ in paid[ec]:
            times[iuv] += 1
        once = [a for iuv, a in paid[ec] if times[iuv] == 1]
        twice = [a for iuv, a in paid[ec] if times[iuv] > 1]
        unrelated = [Decimal(c["amount"]) for c in credits[ec] if c["kind"] == "unrelated"]
        expected[ec] = {
            "payments": len(paid[ec]), "paid": sum((a for _, a in paid[ec]), ZERO),
            "cashed": (len(once), sum(once, ZERO)), "reported": (0, ZERO),
            "open": (len(twice), sum(twice, ZERO)),
            # the Provincia's bank drops no journal we fetch (no treasury source in the registry)
            "unexplained": (len(unrelated), sum(unrelated, ZERO)) if ec != PROVINCIA else (0, ZERO),
        }  # fmt: skip
    return expected


def _report_totals(path: Path) -> dict[str, tuple[int, Decimal]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {r["etichetta"]: (int(r["nota"].split()[0]), Decimal(r["importo"]))
                for r in csv.DictReader(fh) if r["sezione"] == "TOTALE"}


@pytest.mark.prefect
def test_the_demo_runs_the_whole_day_and_its_totals_add_up(tmp_path: Path, prefect_harness: None,
                                                           restore_env: None) -> None:
    # pagoPA faults (latency, 10% errors, 5% dropped connections) on GPD, ACA, FdR, Biz-Events and the Node
    result = run_demo(workdir=tmp_path / "demo", positions=120, seed=7, prefect_server=False, faults=0.10)
    counts = result.counts
    assert counts["bulk"]["total_rows"] == 120
    assert counts["publication"]["published"] == 120, counts["publication"]
    paid_ok = counts["payments"]["ok"]
    web_log = tmp_path / "demo" / "web.log"  # the station's side, should the PSPs be refused
    assert paid_ok >= 100, (counts["payments"], web_log.read_text(errors="replace")[-4000:])  # 85%, one twice
    assert result.sandbox["expired"]["faultCode"] == "PPT_TOKEN_SCADUTO"  # one citizen took too long
    figures = {f["id_dominio"]: f for f in counts["figures"]}
    comune, scuola = figures[COMUNE], figures[SCUOLA]
    assert comune["positions"] + scuola["positions"] == 120
    receipts = comune["receipts"] + scuola["receipts"]
    assert receipts == paid_ok  # one accepted receipt per paid notice; one's second payment is a duplicate
    # only A2A-TRIBUTI has an endpoint
    assert counts["notifications received by the application"] == comune["receipts"]
    for ec in (comune, scuola):
        assert ec["flows"] >= 1
        assert ec["cashed"] > Decimal("0") and ec["cashed"] <= ec["paid"]
    assert scuola["cashed"] == scuola["paid"]  # nothing odd happened to the school: all its money explained
    assert (result.workdir / "pagoflow.db").exists()
    from models.db import session_scope
    from models.notifications import Notification
    from models.payments import Receipt
    from models.positions import Position
    from models.reporting import ReportingFlow

    with session_scope() as s:  # exactly once: no receipt, notification or flow stored twice
        assert s.exec(select(func.count()).select_from(Receipt)
                      .where(Receipt.state == "ACCEPTED")).one() == receipts
        assert s.exec(select(func.count()).select_from(Notification).where(
            Notification.state == "DELIVERED")).one() == comune["receipts"]
        flows = s.exec(select(ReportingFlow.id_flusso)).all()
        assert len(flows) == len(set(flows))
        late = result.sandbox["expired"]["noticeNumber"]
        assert s.exec(select(Position.state).where(Position.nav == late)).one() == "NON_ESEGUITA"

    # the reports: written under the demo folder, and their totals are what the sandbox paid and settled
    expected = _expected(result.sandbox)
    reports = [Path(p) for p in result.reports]
    assert reports and all(p.is_file() and p.stat().st_size > 0 for p in reports)
    assert all(p.is_relative_to(result.workdir / "reports") for p in reports)
    for ec, want in expected.items():
        mine = [p for p in reports if p.parent.parent.name == ec]
        assert sorted(p.suffix for p in mine) == [".csv", ".csv", ".html", ".pdf", ".pdf"], mine
        daily = next(p for p in mine if p.name.startswith("riconciliazione-") and p.suffix == ".csv")
        totals = _report_totals(daily)
        assert totals["cashed"] == want["cashed"], ec
        assert totals["reported"] == want["reported"], ec
        assert totals["paid"] == want["open"], ec
        assert totals["unexplained"] == want["unexplained"], ec
        html = next(p for p in mine if p.suffix == ".html").read_text(encoding="utf-8")
        assert _euro(want["cashed"][1]) in html and _euro(want["unexplained"][1]) in html
        assert next(p for p in mine if p.suffix == ".pdf").read_bytes().startswith(b"%PDF")
        prospetto = next(p for p in mine if p.name.startswith("prospetto-") and p.suffix == ".csv")
        with prospetto.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sum(int(r["riscossioni"]) for r in rows) == want["payments"], ec
        assert sum((Decimal(r["importo"]) for r in rows), ZERO) == want["paid"], ec
        assert sum((Decimal(r["incassato"]) for r in rows), ZERO) == want["cashed"][1], ec
