"""Reconciliation scenarios end to end: the sandbox's PSPs pay through our station, the sandbox settles (flows
on FdR, OPI journals on the bank's SFTP), and the platform's flows, run by Prefect, download, ingest and
reconcile; each scenario ends in the labels and states of DOMAIN §10 and of the operator guide.

The flows work on every EC at once, as their schedules do, so the scenarios share one world per database
(platform, sandbox and bank SFTP started once) and go through the stages together: each scenario has its own
positions, amounts and settlement days (so its own flows and journals) and looks only at its own rows. The
stages run in their daily order with a reconciliation between them, so the labels are seen as inputs arrive:

1. the PSPs pay every scenario's notices (receipts pushed to the station); reconcile → checkpoint "receipt";
2. the sandbox settles each scenario's day; download-reporting-flows, reconcile → "flow";
3. ingest-treasury, reconcile → "money";
4. what comes later: a late flow is published, a credit is reversed, an operator confirms a suggestion or says
   a credit is not pagoPA money; download, ingest, reconcile → "final";
5. the three flows once more → "rerun": nothing may change, in any scenario nor in any table.

Eleven flow runs per database, whatever the number of scenarios, keep the module within its time budget on
SQLite and on PostgreSQL. Scenarios whose outcome shows a platform bug are ``xfail(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import col, or_, select

from models.payments import Collection, Receipt
from models.positions import Position
from models.reconciliation import MatchSuggestion, Reconciliation, TransferLabel
from models.reporting import ReportingFlow, ReportingLine
from models.treasury import TreasuryMovement
from rules.positions import italian_today
from tests.conftest import BACKENDS, Database
from tests.settlement_env import COMUNE, IBANS, PROVINCIA, PSPS, World, settlement_world

pytestmark = [pytest.mark.prefect]

BASE = italian_today() - timedelta(days=60)  # the first scenario's payment day; each one has four days
OPERATOR = "operatore.comune"
SECOND_PSP = list(PSPS)[1]  # the first one pays unless told otherwise
CASHED = {"RT_IUF", "RT_IUF_TES"}  # DOMAIN §10: after the money
CHECKPOINTS = ("receipt", "flow", "money", "final", "rerun")


# --- a scenario and what the platform made of it -------------------------------------------------------

# (EC, amount, reference kind, match state, storno, integrative transfer number)
Movement = tuple[str, Decimal, str | None, str, bool, int | None]


@dataclass
class View:
    """A scenario's rows at one checkpoint: labels of its transfers, flows and movements, and their states."""

    labels: set[str]
    label_rows: list[tuple[str, str, str | None, str | None]]  # (subject, label, iuv, id_flusso)
    positions: dict[str, tuple[str, bool]]  # key -> (state, paid without receipt)
    receipts: list[tuple[str, str]]  # (iuv, state)
    collections: list[tuple[str, str, int, str, bool]]  # (EC, iuv, transfer, state, without receipt)
    lines: list[tuple[str, int, int, str, tuple[str, ...]]]  # (iuv, transfer, outcome, state, anomaly codes)
    flows: dict[str, tuple[str, bool]]  # id_flusso -> (state, reconciled)
    movements: list[Movement]
    reconciliations: list[tuple[str, Decimal, str, str | None]]  # (EC, amount, state, code)
    suggestions: list[tuple[str, str, list[str]]]  # (suggested id_flusso, state, reasons)


@dataclass
class Scenario:
    """One scenario: its positions and payments, how its day settles, and what happens later."""

    name: str
    slot: int
    pay: Callable[[World, Scenario], None]
    settle_body: dict[str, Any] = field(default_factory=dict)
    later: Callable[[World, Scenario], None] | None = None
    positions: dict[str, Position] = field(default_factory=dict)
    settled: list[dict[str, Any]] = field(default_factory=list)
    views: dict[str, View] = field(default_factory=dict)
    error: Exception | None = None  # a failure in one of its own steps, raised by its tests

    @property
    def day(self) -> date:
        """The day its notices are paid and settled; the journal is dated the day after."""
        return BASE + timedelta(days=4 * self.slot)

    @property
    def later_day(self) -> date:
        """The day of its second settlement, if any."""
        return self.day + timedelta(days=2)

    @property
    def iuvs(self) -> list[str]:
        return [p.iuv or "" for p in self.positions.values()]

    @property
    def flow_ids(self) -> list[str]:
        return [f["idFlusso"] for answer in self.settled for f in answer["flows"]]

    def add(self, w: World, key: str, voci: list[dict[str, Any]]) -> Position:
        self.positions[key] = w.create_position(f"{self.name.upper()}-{key}", voci=voci)
        return self.positions[key]

    def settle(self, w: World, day: date, **body: Any) -> dict[str, Any]:
        answer = w.settle(day, seed=2026, **body)
        self.settled.append(answer)
        return answer

    def step(self, w: World, action: Callable[[World, Scenario], Any]) -> None:
        """Run one of its own steps; a failure is kept for its tests while the other scenarios go on."""
        if self.error is None:
            try:
                action(w, self)
            except Exception as exc:  # noqa: BLE001 - raised again by the scenario's tests
                self.error = exc


def voce(amount: str, *, n: int = 1, ec: str = COMUNE) -> dict[str, Any]:
    """A voce crediting ``ec``'s treasury IBAN (another EC than the position's makes it multi-beneficiary)."""
    return {"idVocePendenza": f"V{n}", "importo": float(amount), "descrizione": f"Voce {n}",
            "ibanAccredito": IBANS[ec], "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010",
            **({"idDominio": ec} if ec != COMUNE else {})}


def view(w: World, sc: Scenario) -> View:
    """The scenario's rows now: by its IUVs, its flows, and the movements of its journals' days."""
    days = [sc.day + timedelta(days=1), sc.later_day + timedelta(days=1)]
    with w.session() as s:
        movements = s.exec(select(TreasuryMovement).where(col(TreasuryMovement.value_date).in_(days))
                           .order_by(col(TreasuryMovement.id))).all()
        movement_ids = [m.id for m in movements]
        flows = s.exec(select(ReportingFlow).where(col(ReportingFlow.id_flusso).in_(sc.flow_ids))
                       .order_by(col(ReportingFlow.id))).all()
        labels = s.exec(select(TransferLabel).where(or_(
            col(TransferLabel.iuv).in_(sc.iuvs), col(TransferLabel.id_flusso).in_(sc.flow_ids),
            col(TransferLabel.movement_id).in_(movement_ids)))).all()
        lines = s.exec(select(ReportingLine).where(col(ReportingLine.iuv).in_(sc.iuvs))
                       .order_by(col(ReportingLine.id))).all()
        collections = s.exec(select(Collection).where(col(Collection.iuv).in_(sc.iuvs))
                             .order_by(col(Collection.id))).all()
        recs = s.exec(select(Reconciliation).where(col(Reconciliation.movement_id).in_(movement_ids))
                      .order_by(col(Reconciliation.movement_id))).all()
        suggestions = s.exec(select(MatchSuggestion, ReportingFlow.id_flusso)
                             .join(ReportingFlow, col(ReportingFlow.id) == MatchSuggestion.flow_id)
                             .where(col(MatchSuggestion.movement_id).in_(movement_ids))).all()
        receipts = s.exec(select(Receipt).where(col(Receipt.iuv).in_(sc.iuvs))
                          .order_by(col(Receipt.id))).all()
        positions = {key: s.get(Position, p.id) for key, p in sc.positions.items()}
        return View(
            labels={t.label for t in labels},
            label_rows=sorted((t.subject, t.label, t.iuv, t.id_flusso) for t in labels),
            positions={k: (p.state, p.paid_without_receipt) for k, p in positions.items() if p is not None},
            receipts=[(r.iuv, r.state) for r in receipts],
            collections=[(c.id_dominio, c.iuv, c.transfer_index, c.state, c.without_receipt)
                         for c in collections],
            lines=[(ln.iuv, ln.transfer_index, ln.outcome, ln.state,
                    tuple(a["codice"] for a in ln.anomalies or [])) for ln in lines],
            flows={f.id_flusso: (f.state, f.reconciled) for f in flows},
            movements=[(m.id_dominio or "", m.amount, m.reference_kind, m.match_state, m.reversal,
                        m.integrative) for m in movements],
            reconciliations=[(r.id_dominio, r.amount, r.state, r.outcome_code) for r in recs],
            suggestions=[(id_flusso, g.state, list(g.reasons or [])) for g, id_flusso in suggestions],
        )


# --- the scenarios ---------------------------------------------------------------------------------------


def pay_plain(w: World, sc: Scenario) -> None:
    for key, amount in (("a", "12.34"), ("b", "7.66")):
        w.pay(sc.add(w, key, [voce(amount)]), day=sc.day)


def pay_one(amount: str) -> Callable[[World, Scenario], None]:
    def pay(w: World, sc: Scenario) -> None:
        w.pay(sc.add(w, "a", [voce(amount)]), day=sc.day)

    return pay


def pay_several_transfers(w: World, sc: Scenario) -> None:
    revenue = {"idVocePendenza": "V2", "importo": 14.50, "descrizione": "Quota TARI", "codEntrata": "TARI"}
    w.pay(sc.add(w, "a", [voce("30.00"), revenue]), day=sc.day)


def pay_multi_beneficiary(w: World, sc: Scenario) -> None:
    w.pay(sc.add(w, "a", [voce("70.00"), voce("25.40", n=2, ec=PROVINCIA)]), day=sc.day)


def pay_one_and_report_another(w: World, sc: Scenario) -> None:
    w.pay(sc.add(w, "paid", [voce("10.10")]), day=sc.day)
    no_rpt = sc.add(w, "no_rpt", [voce("18.90")])  # never paid through the Node: reported with outcome 9
    sc.settle_body = {"withoutReceipt": [{"fiscalCode": COMUNE, "iuv": no_rpt.iuv, "amount": "18.90"}]}


def pay_twice(w: World, sc: Scenario) -> None:
    two_psps = sc.add(w, "two_psps", [voce("33.30")])  # at a bank, then again in an app
    w.pay(two_psps, day=sc.day)
    w.pay(two_psps, day=sc.day, force=True, psp=SECOND_PSP)
    answer = w.pay(sc.add(w, "same_psp", [voce("36.60")]), day=sc.day, times=2)  # twice at once, one PSP
    assert [p["outcome"] for p in answer["payments"]] == ["OK", "OK"]


def no_payment(w: World, sc: Scenario) -> None:
    return None


def publish_the_late_flow(w: World, sc: Scenario) -> None:
    answer = sc.settle(w, sc.later_day)
    assert [f["idFlusso"] for f in answer["publishedLate"]] == sc.flow_ids[:1]


def reverse_the_credit(w: World, sc: Scenario) -> None:
    answer = sc.settle(w, sc.later_day, noise={"reversal": sc.flow_ids[0]})
    credits = [(c["kind"], c["reversal"]) for j in answer["journals"] for c in j["credits"]]
    assert credits == [("reversal", True)]


def confirm_the_suggestion(w: World, sc: Scenario) -> None:
    from store.reconciliation import confirm_suggestion

    with w.session() as s:
        (suggestion,) = s.exec(select(MatchSuggestion).join(
            TreasuryMovement, col(TreasuryMovement.id) == MatchSuggestion.movement_id).where(
            TreasuryMovement.value_date == sc.day + timedelta(days=1))).all()
        confirm_suggestion(s, suggestion_id=suggestion.id or 0, operator=OPERATOR, accept=True)
        s.commit()


def say_the_comune_credit_is_not_pagopa(w: World, sc: Scenario) -> None:
    from store.reconciliation import mark_not_pagopa

    with w.session() as s:
        (movement,) = s.exec(select(TreasuryMovement).where(
            TreasuryMovement.value_date == sc.day + timedelta(days=1),
            TreasuryMovement.id_dominio == COMUNE)).all()
        mark_not_pagopa(s, movement_id=movement.id or 0, operator=OPERATOR)
        s.commit()


def scenarios() -> list[Scenario]:
    """Every scenario, in settlement order: the late flow's day settles last (its flow waits for the next)."""
    return [
        Scenario("plain", 0, pay_plain),
        Scenario("several_transfers", 1, pay_several_transfers, {"noise": {"split": True}}),
        Scenario("integrative", 2, pay_multi_beneficiary, {"noise": {"integrative": True}}),
        Scenario("mismatch", 3, pay_one("41.10"), {"noise": {"mismatch": "1.50"}}),
        Scenario("unknown_flow", 4, no_payment, {"noise": {"unknown": 1}}),
        Scenario("not_pagopa", 5, no_payment, {"noise": {"unrelated": 1}},
                 say_the_comune_credit_is_not_pagopa),
        Scenario("reversal", 6, pay_one("55.20"), later=reverse_the_credit),
        Scenario("without_receipt", 7, pay_one_and_report_another),
        Scenario("paid_twice", 8, pay_twice),
        Scenario("truncated", 9, pay_one("61.20"), {"noise": {"remittance": ["truncated"]}},
                 confirm_the_suggestion),
        Scenario("late_flow", 10, pay_one("23.45"), {"noise": {"early": True}}, publish_the_late_flow),
    ]


@dataclass
class Book:
    """The scenarios after the whole chain, and a snapshot of the database before and after the last run."""

    scenarios: dict[str, Scenario]
    before: dict[str, list[tuple[Any, ...]]]
    after: dict[str, list[tuple[Any, ...]]]
    reruns: dict[str, Any]

    def of(self, name: str) -> Scenario:
        """A scenario whose own steps all went through."""
        sc = self.scenarios[name]
        if sc.error is not None:
            raise sc.error
        return sc

    def final(self, name: str) -> View:
        """A scenario's rows at the end, after checking that the last run changed none of them."""
        sc = self.of(name)
        assert sc.views["rerun"] == sc.views["final"]
        return sc.views["final"]


def run_the_book(w: World) -> Book:
    """Every scenario through the stages (the module docstring says which, in which order)."""
    book = scenarios()

    def checkpoint(name: str) -> None:
        for sc in book:
            sc.views[name] = view(w, sc)

    for sc in book:
        sc.step(w, sc.pay)
    w.reconcile()
    checkpoint("receipt")
    for sc in book:
        sc.step(w, lambda w, sc: sc.settle(w, sc.day, **sc.settle_body))
    w.download()
    w.reconcile()
    checkpoint("flow")
    w.ingest()
    w.reconcile()
    checkpoint("money")
    for sc in sorted(book, key=lambda s: s.name != "late_flow"):  # the late flow's settlement comes first
        if sc.later:
            sc.step(w, sc.later)
    w.chain()
    checkpoint("final")
    before = w.snapshot()
    reruns = {"download": w.download(), "ingest": w.ingest(), "reconcile": w.reconcile()}
    checkpoint("rerun")
    return Book({sc.name: sc for sc in book}, before, w.snapshot(), reruns)


@pytest.fixture(scope="module", params=BACKENDS)
def book(request: pytest.FixtureRequest, _databases: dict[str, Database], prefect_harness: None,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Book]:
    """The scenarios, run once per database in a world of their own (the session's migrated databases,
    emptied first: the ``db`` fixture is per test, the world lives as long as the module)."""
    if request.param not in _databases:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    # the runs' logs stay local: nothing here reads them from the API, and shipping them costs the budget
    base = tmp_path_factory.mktemp(f"world-{request.param}")
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):
        with settlement_world(_databases[request.param], base) as w:
            yield run_the_book(w)


# --- the tests -------------------------------------------------------------------------------------------


def test_a_second_run_of_the_flows_changes_nothing(book: Book) -> None:
    assert book.reruns["download"]["counts"].get("STORED", 0) == 0
    assert (book.reruns["ingest"]["processed"], book.reruns["ingest"]["movements"]) == (0, 0)
    assert sum(s["collections_cashed"] + s["collections_uncashed"] for s in book.reruns["reconcile"]) == 0
    changed = {table: (sorted(set(rows) - set(book.after[table]), key=repr)[:3],
                       sorted(set(book.after[table]) - set(rows), key=repr)[:3])
               for table, rows in book.before.items() if book.after[table] != rows}
    assert changed == {}


def test_plain_case_goes_through_the_expected_label_sets(book: Book) -> None:
    sc = book.of("plain")
    receipt, flow, money = (sc.views[name] for name in CHECKPOINTS[:3])
    assert receipt.labels == {"RT_NO_IUF"}
    assert receipt.positions == {"a": ("ESEGUITA", False), "b": ("ESEGUITA", False)}
    assert flow.labels == {"RT_IUF", "IUF_NO_TES"}
    assert [line[3:] for line in flow.lines] == [("LINKED", ())] * 2
    assert money.labels == CASHED
    final = book.final("plain")
    assert final.labels == CASHED
    assert final.positions == {"a": ("INCASSATA", False), "b": ("INCASSATA", False)}
    assert {c[3] for c in final.collections} == {"INCASSATA"}
    (flow_id,) = sc.flow_ids
    assert final.flows == {flow_id: ("ACCETTATA", True)}
    assert final.movements == [(COMUNE, Decimal("20.00"), "flow", "MATCHED", False, 0)]
    assert final.reconciliations == [(COMUNE, Decimal("20.00"), "ACQUISITO", None)]


def test_late_flow_money_first_then_the_flow(book: Book) -> None:
    sc = book.of("late_flow")
    assert sc.settled[0]["flows"][0]["deferred"] is True
    flow, money = sc.views["flow"], sc.views["money"]
    assert flow.flows == {} and flow.labels == {"RT_NO_IUF"}
    assert money.labels == {"RT_NO_IUF", "TES_NO_IUF_OR_IUV"}  # money naming a flow we do not have yet
    assert money.reconciliations == [(COMUNE, Decimal("23.45"), "IN_ELABORAZIONE", "021405")]
    assert money.positions == {"a": ("ESEGUITA", False)}
    final = book.final("late_flow")
    assert final.labels == CASHED
    assert final.positions == {"a": ("INCASSATA", False)}
    assert [m[3] for m in final.movements] == ["MATCHED"]
    assert final.reconciliations == [(COMUNE, Decimal("23.45"), "ACQUISITO", None)]


def test_split_transfer_of_a_position_with_several_transfers(book: Book) -> None:
    sc = book.of("several_transfers")
    iuv = sc.iuvs[0]
    assert sc.views["receipt"].collections == [(COMUNE, iuv, 1, "RISCOSSA", False),
                                               (COMUNE, iuv, 2, "RISCOSSA", False)]
    assert sc.views["flow"].labels == {"RT_IUF", "IUF_NO_TES"}
    final = book.final("several_transfers")
    assert final.labels == CASHED
    assert final.lines == [(iuv, 1, 0, "LINKED", ()), (iuv, 2, 0, "LINKED", ())]
    assert final.collections == [(COMUNE, iuv, 1, "INCASSATA", False), (COMUNE, iuv, 2, "INCASSATA", False)]
    assert final.positions == {"a": ("INCASSATA", False)}
    assert len(final.movements) == 2 and sum(m[1] for m in final.movements) == Decimal("44.50")
    assert {m[3] for m in final.movements} == {"MATCHED"}
    # one riconciliazione per transfer, each for its own amount (not the flow's total), both ACQUISITO
    assert sorted((r[1], r[2]) for r in final.reconciliations) == sorted(
        (m[1], "ACQUISITO") for m in final.movements)


def test_multi_beneficiary_position_paid_with_integrative_transfers(book: Book) -> None:
    sc = book.of("integrative")
    iuv = sc.iuvs[0]
    both = sorted([(COMUNE, iuv, 1), (PROVINCIA, iuv, 2)])  # the secondary EC gets its receipt too
    assert sorted(c[:3] for c in sc.views["receipt"].collections) == both
    assert sc.views["receipt"].labels == {"RT_NO_IUF"}
    assert len(sc.flow_ids) == 2  # one flow per beneficiary EC
    final = book.final("integrative")
    assert final.labels == CASHED
    assert sorted(final.collections) == [(*key, "INCASSATA", False) for key in both]
    assert final.positions == {"a": ("INCASSATA", False)}
    by_ec: dict[str, list[Movement]] = {}
    for m in final.movements:
        by_ec.setdefault(m[0], []).append(m)
    assert {ec: sum(m[1] for m in ms) for ec, ms in by_ec.items()} == {COMUNE: Decimal("70.00"),
                                                                       PROVINCIA: Decimal("25.40")}
    for ms in by_ec.values():  # paid short (TXT/0), completed by an integrative transfer (TXT/1)
        assert [(m[2], m[3], m[5]) for m in ms] == [("flow", "MATCHED", 0), ("flow", "MATCHED", 1)]
    assert sorted(r[:3] for r in final.reconciliations) == sorted(
        (m[0], m[1], "ACQUISITO") for m in final.movements)


def test_amount_mismatch_is_never_cashed(book: Book) -> None:
    final = book.final("mismatch")
    assert final.labels == {"RT_IUF", "IUF_TES_DIV_IMP"}
    assert final.positions == {"a": ("ESEGUITA", False)}
    assert [c[3] for c in final.collections] == ["RISCOSSA"]
    assert final.movements == [(COMUNE, Decimal("42.60"), "flow", "UNMATCHED", False, 0)]
    assert final.reconciliations == [(COMUNE, Decimal("42.60"), "ERRORE", "021407")]
    assert list(final.flows.values()) == [("ACCETTATA", False)]


def test_money_for_a_flow_nobody_reported(book: Book) -> None:
    sc = book.of("unknown_flow")
    assert {tuple(c["kind"] for c in j["credits"]) for j in sc.settled[0]["journals"]} == {("unknown",)}
    final = book.final("unknown_flow")
    assert final.labels == {"TES_NO_IUF_OR_IUV"}
    assert sorted(m[0] for m in final.movements) == sorted(IBANS)  # one in each EC's journal
    assert {(m[2], m[3]) for m in final.movements} == {("flow", "UNMATCHED")}
    assert {(r[2], r[3]) for r in final.reconciliations} == {("IN_ELABORAZIONE", "021405")}
    assert final.suggestions == []


def test_credit_that_is_not_pagopa(book: Book) -> None:
    money = book.of("not_pagopa").views["money"]
    assert money.labels == {"TES_NO_MATCH"}
    assert sorted(m[0] for m in money.movements) == sorted(IBANS)
    assert {(m[2], m[3]) for m in money.movements} == {("none", "UNMATCHED")}  # looked at, not explained
    final = book.final("not_pagopa")  # the operator said the Comune's credit is not pagoPA: it leaves
    states = {m[0]: m[3] for m in final.movements}
    assert states[COMUNE] == "NOT_PAGOPA" and set(states.values()) == {"NOT_PAGOPA", "UNMATCHED"}
    assert [row[:2] for row in final.label_rows] == [("movement", "TES_NO_MATCH")] * 2


def test_reversal_takes_the_cashing_back(book: Book) -> None:
    sc = book.of("reversal")
    assert sc.views["money"].labels == CASHED
    assert sc.views["money"].positions == {"a": ("INCASSATA", False)}
    final = book.final("reversal")
    assert final.positions == {"a": ("ESEGUITA", False)}
    assert [c[3] for c in final.collections] == ["RISCOSSA"]
    assert "RT_IUF_TES" not in final.labels and "RT_IUF" in final.labels
    assert [(m[1], m[4]) for m in final.movements] == [(Decimal("55.20"), False), (Decimal("-55.20"), True)]
    assert list(final.flows.values()) == [("ACCETTATA", False)]


def test_reversed_flow_is_labelled_as_a_flow_without_money(book: Book) -> None:
    # the flow's money was reversed: the flow is without money again, so the operator asks the PSP
    assert book.final("reversal").labels == {"RT_IUF", "IUF_NO_TES"}


def test_outcome_9_line_closes_the_debt_without_receipt(book: Book) -> None:
    sc = book.of("without_receipt")
    paid, no_rpt = sc.positions["paid"].iuv, sc.positions["no_rpt"].iuv
    flow = sc.views["flow"]
    assert flow.labels == {"RT_IUF", "IUV_NO_RT", "IUF_NO_TES"}
    assert ("line", "IUV_NO_RT", no_rpt, sc.flow_ids[0]) in flow.label_rows
    assert sorted(line[:4] for line in flow.lines) == sorted([(paid, 1, 0, "LINKED"),
                                                              (no_rpt, 1, 9, "NO_RECEIPT")])
    assert flow.positions["no_rpt"] == ("NON_ESEGUITA", False)
    final = book.final("without_receipt")
    assert final.labels == CASHED
    assert final.positions == {"paid": ("INCASSATA", False), "no_rpt": ("INCASSATA", True)}
    assert (COMUNE, no_rpt, 1, "INCASSATA", True) in final.collections
    # with its collection the line waits for no receipt any more (it left the receipts backlog)
    assert sorted(line[:4] for line in final.lines) == sorted([(paid, 1, 0, "LINKED"), (no_rpt, 1, 9, "LINKED")])
    assert final.receipts == [(paid, "ACCEPTED")]


def test_double_payment_at_two_psps_is_doppi_and_cashed_twice(book: Book) -> None:
    sc = book.of("paid_twice")
    iuv = sc.positions["two_psps"].iuv
    receipt = sc.views["receipt"]
    assert [r for r in receipt.receipts if r[0] == iuv] == [(iuv, "ACCEPTED"), (iuv, "DUPLICATE")]
    assert receipt.positions["two_psps"] == ("ANOMALA", False)  # paid twice: the debtor is owed a refund
    final = book.final("paid_twice")
    assert [line[3:] for line in final.lines if line[0] == iuv] == [("LINKED", ())] * 2  # a line per PSP
    assert [row for row in final.label_rows if row[2] == iuv] == sorted(
        [("collection", "RT_IUF", iuv, None)] * 2 + [("collection", "RT_IUF_TES", iuv, None)] * 2
        + [("line", "DOPPI", iuv, flow_id) for flow_id in sc.flow_ids])
    assert [c[3] for c in final.collections if c[1] == iuv] == ["INCASSATA", "INCASSATA"]
    assert final.positions["two_psps"] == ("ANOMALA", False)  # cashed twice, still to be refunded
    assert len(final.movements) == 2 and {m[3] for m in final.movements} == {"MATCHED"}  # a credit a flow


def test_double_payment_at_one_psp_is_doppi_and_left_to_the_operator(book: Book) -> None:
    iuv = book.of("paid_twice").positions["same_psp"].iuv
    final = book.final("paid_twice")
    assert [r for r in final.receipts if r[0] == iuv] == [(iuv, "ACCEPTED"), (iuv, "DUPLICATE")]
    # the PSP's two lines match two receipts that nothing tells apart (GovPay 007102)
    assert [line[3:] for line in final.lines if line[0] == iuv] == [("ANOMALA", ("007102",))] * 2
    doppi = [row[:3] for row in final.label_rows if row[1] == "DOPPI" and row[2] == iuv]
    assert doppi == [("line", "DOPPI", iuv)] * 2
    assert final.positions["same_psp"] == ("ANOMALA", False)
    assert {c[3] for c in final.collections if c[1] == iuv} == {"RISCOSSA"}


def test_truncated_remittance_is_recovered_through_a_suggestion(book: Book) -> None:
    sc = book.of("truncated")
    (flow_id,) = sc.flow_ids
    (credit,) = sc.settled[0]["journals"][0]["credits"]
    assert credit["kind"] == "truncated" and flow_id not in credit["remittance"]
    money = sc.views["money"]
    assert money.positions == {"a": ("ESEGUITA", False)}
    assert money.labels == {"RT_IUF", "IUF_NO_TES", "TES_NO_IUF_OR_IUV"}  # the cut id names no flow
    ((suggested, state, reasons),) = money.suggestions
    assert suggested == flow_id and state == "PROPOSED" and "causale troncata compatibile" in reasons
    final = book.final("truncated")  # the operator confirmed the suggestion
    assert final.labels == CASHED
    assert final.positions == {"a": ("INCASSATA", False)}
    assert [s[:2] for s in final.suggestions] == [(flow_id, "CONFIRMED")]
