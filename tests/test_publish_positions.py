"""publish-positions against the sandbox's GPD/ACA over real HTTP, on SQLite and PostgreSQL.

Creates, updates, invalidations and skips end to end (the flow under Prefect); faults injected by the
sandbox (5xx, 429, dropped connections, cut answers) still end with every position created exactly once;
two publishers at once never send the same position.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from connectors.pagopa.config import get_endpoints
from models import db as models_db
from models.journal import Event
from models.positions import Position
from models.settings import get_settings
from rules.positions import PendenzaPut, validate_position
from sandbox.gpd import ACA_BASE, GPD_BASE
from sandbox.server import RunningSandbox, start_in_thread
from store.positions import change_state, get_position, load_caller, load_registry_view, upsert_positions
from store.publication import pending_windows
from tasks.publication import BatchReport, publish_batch
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.platform_env import GPD_KEY, sandbox_config

COMUNE, PROVINCIA, SCUOLA = "01234567897", "00987654324", "80001234568"
IBAN_COMUNE, IBAN_PROVINCIA = "IT21X0306909606000000123456", "IT58X0103014200000000111222"
IBAN_SCUOLA = "IT65X0306909606000000654321"


@dataclass
class Env:
    """The test database and a configured sandbox."""

    db: Database
    sandbox: RunningSandbox

    @property
    def gpd(self) -> str:
        return self.sandbox.url + GPD_BASE

    def get_gpd(self, ec: str, iupd: str) -> httpx.Response:
        return httpx.get(
            f"{self.gpd}/organizations/{ec}/debtpositions/{iupd}",
            headers={"Ocp-Apim-Subscription-Key": GPD_KEY},
            timeout=10,
        )

    def exchanges(self, operation: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.sandbox.url}/sandbox/exchanges", params={"operation": operation, "limit": 0}, timeout=30
        )
        r.raise_for_status()
        return list(r.json())

    def received(self) -> int:
        r = httpx.get(
            f"{self.sandbox.url}/sandbox/exchanges", params={"direction": "in", "limit": 0}, timeout=30
        )
        return len(r.json())

    def faults(self, rules: list[dict[str, Any]], *, seed: int) -> None:
        httpx.put(
            f"{self.sandbox.url}/sandbox/faults", json={"seed": seed, "rules": rules}, timeout=10
        ).raise_for_status()

    def position(self, id_a2a: str, id_pendenza: str) -> Position:
        with self.db.session() as s:
            found = get_position(s, id_a2a=id_a2a, id_pendenza=id_pendenza)
            assert found is not None
            return found


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    sandbox = start_in_thread(seed=11)
    try:
        httpx.put(
            f"{sandbox.url}/sandbox/config", json=sandbox_config("http://127.0.0.1:9/not-called"), timeout=10
        ).raise_for_status()
        for name, value in {
            "PAGOFLOW_DATABASE_URL": db.url,
            "PAGOFLOW_GPD_SUBSCRIPTION_KEY": GPD_KEY,
            "PAGOFLOW_PAGOPA_GPD_URL": sandbox.url + GPD_BASE,
            "PAGOFLOW_PAGOPA_ACA_URL": sandbox.url + ACA_BASE,
            "PAGOFLOW_PAGOPA_RETRY_BACKOFF_SECONDS": "0",
            "PAGOFLOW_PAGOPA_MAX_RETRY_AFTER_SECONDS": "0",
            "PAGOFLOW_PAGOPA_TASK_RETRY_DELAY_SECONDS": "0",
            "PAGOFLOW_PAGOPA_TIMEOUT_SECONDS": "10",
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        get_endpoints.cache_clear()
        models_db.get_engine.cache_clear()
        with db.session() as s:
            load_example_registry(s)
        yield Env(db=db, sandbox=sandbox)
    finally:
        sandbox.stop()
        models_db.get_engine(db.url).dispose()
        models_db.get_engine.cache_clear()
        get_endpoints.cache_clear()
        get_settings.cache_clear()


def voce(amount: str, *, iban: str = IBAN_COMUNE, ec: str | None = None, n: int = 1) -> dict[str, Any]:
    body = {
        "idVocePendenza": f"V{n}",
        "importo": amount,
        "descrizione": f"Voce {n}",
        "ibanAccredito": iban,
        "tipoContabilita": "CAPITOLO",
        "codiceContabilita": "1010",
    }
    return body | ({"idDominio": ec} if ec else {})


def body(
    *,
    ec: str = COMUNE,
    debt_type: str = "TARI",
    amount: str = "25.00",
    causale: str = "TARI 2026",
    due: date | None = None,
    voci: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "idTipoPendenza": debt_type,
        "idDominio": ec,
        "causale": causale,
        "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "importo": amount,
        "dataScadenza": (due or date.today() + timedelta(days=30)).isoformat(),
        "voci": voci or [voce(amount)],
    }


def put_positions(db: Database, id_a2a: str, bodies: dict[str, dict[str, Any]]) -> None:
    """Create or update positions as the API would (validated, versioned, queued)."""
    with db.session() as s:
        caller = load_caller(s, id_a2a=id_a2a)
        registry = load_registry_view(s)
        assert caller is not None
        batch = [
            validate_position(
                PendenzaPut.model_validate(b),
                id_a2a=id_a2a,
                id_pendenza=key,
                caller=caller,
                registry=registry,
            )
            for key, b in bodies.items()
        ]
        assert all(r.error is None for r in upsert_positions(s, batch=batch))
        s.commit()


def annul(db: Database, id_a2a: str, id_pendenza: str, *, restore: bool = False) -> None:
    with db.session() as s:
        found = get_position(s, id_a2a=id_a2a, id_pendenza=id_pendenza)
        assert found is not None
        assert change_state(s, position=found, annul=not restore, description=None)
        s.commit()


def publish_all(*, batch_size: int = 500, rounds: int = 1, hook: Any = None) -> list[BatchReport]:
    """What the flow does, without Prefect: every window of the queue, ``rounds`` times."""
    reports = []
    for _ in range(rounds):
        with models_db.session_scope() as s:
            windows, _backlog = pending_windows(s, id_dominio=None, batch_size=batch_size, max_batches=100)
        for w in windows:
            reports.append(publish_batch(first_id=w.first_id, last_id=w.last_id, on_claimed=hook))
    return reports


def states(db: Database) -> dict[str, tuple[str, int, int]]:
    with db.session() as s:
        return {
            p.id_pendenza: (p.publication_state, p.version, p.published_version)
            for p in s.exec(select(Position).order_by(col(Position.id))).all()
        }


def creates_by_iupd(env: Env) -> Counter[str]:
    """How many creates the sandbox accepted (201, even when the answer was then cut) per IUPD."""
    import json

    accepted = [e for e in env.exchanges("createPosition") if e["status"].startswith("201")]
    return Counter(json.loads(e["request"])["iupd"] for e in accepted)


# --- the flow, end to end ---------------------------------------------------------------------------------


@pytest.mark.prefect
def test_flow_creates_updates_invalidates_skips_and_a_rerun_sends_nothing(
    env: Env, prefect_harness: None
) -> None:
    from flows.publish_positions import publish_positions

    put_positions(
        env.db,
        "A2A-TRIBUTI",
        {
            "P1": body(),
            "P2": body(
                amount="30.00", voci=[voce("20.00"), voce("10.00", iban=IBAN_PROVINCIA, ec=PROVINCIA, n=2)]
            ),
            "OLD": body(due=date.today() - timedelta(days=1)),
        },
    )
    put_positions(
        env.db,
        "A2A-SCUOLA",
        {"M1": body(ec=SCUOLA, debt_type="MENSA", amount="12.50", voci=[voce("12.50", iban=IBAN_SCUOLA)])},
    )

    first = publish_positions(batch_size=2)

    assert (first["published"], first["updated"], first["invalidated"], first["failed"]) == (3, 0, 0, 0)
    assert first["skipped"] == {"scaduta": 1} and first["batches"] == 2
    p1, p2, old, m1 = (
        env.position(a, k)
        for a, k in (
            ("A2A-TRIBUTI", "P1"),
            ("A2A-TRIBUTI", "P2"),
            ("A2A-TRIBUTI", "OLD"),
            ("A2A-SCUOLA", "M1"),
        )
    )
    assert (p1.publication_state, p1.published_version, p1.published_at is not None) == ("PUBLISHED", 1, True)
    assert (old.publication_state, old.publication_error) == ("SKIPPED", f"scaduta il {old.due_date}")
    copy = env.get_gpd(COMUNE, p2.iupd or "").json()
    assert copy["status"] == "VALID"
    option = copy["paymentOption"][0]
    assert (option["nav"], option["amount"]) == (p2.nav, 3000)
    assert [(t["organizationFiscalCode"], t["amount"], t["iban"]) for t in option["transfer"]] == [
        (COMUNE, 2000, IBAN_COMUNE),
        (PROVINCIA, 1000, IBAN_PROVINCIA),
    ]
    aca = env.sandbox.state.positions[(SCUOLA, f"ACA_{SCUOLA}_{m1.iuv}")]  # type: ignore[union-attr]
    assert aca.options[0].amount_cents == 1250 and aca.stored_status == "PUBLISHED"
    with env.db.session() as s:
        journal = s.exec(select(Event).where(col(Event.component).in_(["gpd", "aca"]))).all()
    assert Counter((e.component, e.operation, e.outcome) for e in journal) == {
        ("gpd", "createPosition", "OK"): 2,
        ("aca", "newDebtPosition", "OK"): 1,
    }
    assert {e.iuv for e in journal} == {p1.iuv, p2.iuv, m1.iuv} and all(e.nav for e in journal)

    # a change is sent as an update, annulments invalidate (ACA: amount 0)
    put_positions(env.db, "A2A-TRIBUTI", {"P1": body(causale="TARI 2026 rettifica")})
    annul(env.db, "A2A-TRIBUTI", "P2")
    annul(env.db, "A2A-SCUOLA", "M1")
    second = publish_positions()
    assert (second["published"], second["updated"], second["invalidated"], second["failed"]) == (0, 1, 2, 0)
    assert (
        env.get_gpd(COMUNE, p1.iupd or "").json()["paymentOption"][0]["description"] == "TARI 2026 rettifica"
    )
    assert env.get_gpd(COMUNE, p2.iupd or "").json()["status"] == "INVALID"
    assert (
        aca.stored_status == "INVALID"
        or env.sandbox.state.positions[  # type: ignore[union-attr]
            (SCUOLA, f"ACA_{SCUOLA}_{m1.iuv}")
        ].stored_status
        == "INVALID"
    )
    assert states(env.db) == {
        "P1": ("PUBLISHED", 2, 2),
        "P2": ("INVALIDATED", 2, 2),
        "OLD": ("SKIPPED", 1, 0),
        "M1": ("INVALIDATED", 2, 2),
    }

    # nothing queued: a re-run sends nothing at all
    before = env.received()
    third = publish_positions()
    assert third["positions"] == 0 and env.received() == before

    # a restore cannot reuse the NAV GPD invalidated: it fails with the reason, once, and is not re-sent
    annul(env.db, "A2A-TRIBUTI", "P2", restore=True)
    fourth = publish_positions()
    assert fourth["failed"] == 1 and "nuovo numero avviso" in (fourth["failures"][0]["reason"] or "")
    restored = env.position("A2A-TRIBUTI", "P2")
    assert (restored.publication_state, restored.publication_attempts) == ("FAILED", 1)
    before = env.received()
    assert publish_positions()["positions"] == 0 and env.received() == before


@pytest.mark.prefect
def test_flow_retries_a_batch_only_for_transient_faults(
    env: Env, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.publish_positions import publish_positions

    def statuses() -> list[str]:
        return [e["status"] for e in env.exchanges("")]

    # every attempt of the call fails (3 x 503): the task raises, Prefect runs it again, the retry publishes
    put_positions(env.db, "A2A-TRIBUTI", {"T1": body()})
    env.faults([{"path": "/gpd/", "method": "POST", "errorRate": 1, "error": "http_503", "times": 3}], seed=1)
    assert publish_positions()["published"] == 1
    assert statuses() == ["503 (error)"] * 3 + ["201"]
    assert states(env.db)["T1"] == ("PUBLISHED", 1, 1)

    # still failing after the task's retries: reported, left queued with its attempts counted
    httpx.delete(f"{env.sandbox.url}/sandbox/exchanges", timeout=10)
    put_positions(env.db, "A2A-TRIBUTI", {"T2": body()})
    env.faults([{"path": "/gpd/", "method": "POST", "errorRate": 1, "error": "http_503"}], seed=1)
    summary = publish_positions()
    assert (summary["published"], summary["failed"]) == (0, 1)
    assert len(statuses()) == 3 * 3  # 3 task runs x 3 attempts per call
    assert env.position("A2A-TRIBUTI", "T2").publication_attempts == 3

    # a refused key is not transient: one call, no retry
    httpx.delete(f"{env.sandbox.url}/sandbox/faults", timeout=10)
    httpx.delete(f"{env.sandbox.url}/sandbox/exchanges", timeout=10)
    monkeypatch.setenv("PAGOFLOW_GPD_SUBSCRIPTION_KEY", "not-the-key")
    assert publish_positions()["failed"] == 1
    assert statuses() == ["401"]
    assert states(env.db)["T2"] == ("PENDING", 1, 0)


# --- faults and concurrency (the task's work without Prefect) ----------------------------------------------


def test_faults_still_end_with_every_position_created_exactly_once(env: Env) -> None:
    put_positions(env.db, "A2A-TRIBUTI", {f"F{n:03d}": body(causale=f"TARI {n}") for n in range(60)})
    env.faults(
        [
            {
                "path": "/gpd/",
                "method": "POST",
                "dropRate": 0.15,
                "errorRate": 0.15,
                "error": "http_503",
                "malformedRate": 0.15,
            },
            {"path": "/gpd/", "method": "GET", "errorRate": 0.3, "error": "http_429", "retryAfter": 1},
        ],
        seed=5,
    )

    reports = publish_all(batch_size=20, rounds=4)

    assert all(state == ("PUBLISHED", 1, 1) for state in states(env.db).values())
    with env.db.session() as s:
        iupds = {p.iupd for p in s.exec(select(Position)).all()}
    created = creates_by_iupd(env)
    assert set(created) == iupds and set(created.values()) == {1}
    faulted = [e for e in env.exchanges("") if "(" in e["status"]]  # faulted requests match no route
    assert {e["status"].split(" (")[1].rstrip(")") for e in faulted} >= {"drop", "error", "malformed"}, (
        faulted[:3]
    )
    assert sum(r.counts.get("UNCHANGED", 0) for r in reports) > 0  # cut 201s were read back and acknowledged
    assert sum(r.counts.get("ERROR", 0) for r in reports) >= 0


def test_two_publishers_at_once_never_send_a_position_twice(env: Env) -> None:
    put_positions(env.db, "A2A-TRIBUTI", {f"C{n:03d}": body(causale=f"TARI {n}") for n in range(80)})
    env.faults([{"path": "/gpd/", "latencyMs": 5}], seed=1)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        def hook(candidates: list[Any]) -> None:
            claimed[name].extend(c.id for c in candidates)

        try:
            start.wait()
            publish_all(batch_size=10, hook=hook)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not set(claimed["a"]) & set(claimed["b"])
    assert len(claimed["a"]) + len(claimed["b"]) == 80
    assert all(state == ("PUBLISHED", 1, 1) for state in states(env.db).values())
    calls = Counter(__import__("json").loads(e["request"])["iupd"] for e in env.exchanges("createPosition"))
    assert len(calls) == 80 and set(calls.values()) == {1}


def test_gpd_down_stops_the_batch_early_and_keeps_it_queued(env: Env) -> None:
    put_positions(env.db, "A2A-TRIBUTI", {f"D{n:03d}": body() for n in range(120)})
    env.faults([{"path": "/gpd/", "errorRate": 1, "error": "http_502"}], seed=1)

    (report,) = publish_all()

    assert report.counts == {"ERROR": 120} and report.retriable == 120
    sent = len(env.exchanges(""))
    # a few rounds of the 8 workers, 3 attempts each, then the rest is left queued without a call
    assert 3 * 10 <= sent <= 3 * 30, sent
    assert {s[0] for s in states(env.db).values()} == {"PENDING"}


def test_a_refused_key_stops_the_batch_and_keeps_it_queued(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    put_positions(env.db, "A2A-TRIBUTI", {f"K{n:02d}": body() for n in range(40)})
    monkeypatch.setenv("PAGOFLOW_GPD_SUBSCRIPTION_KEY", "not-the-key")

    (report,) = publish_all()

    assert report.counts == {"ERROR": 40} and report.retriable == 0
    assert all(f["reason"] and "credenziali" in f["reason"] for f in report.failed)
    # each worker stops after its first 401: at most one call per worker, not one per position
    calls = env.exchanges("createPosition")
    assert {e["status"] for e in calls} == {"401"} and len(calls) <= get_endpoints().publish_concurrency
    with env.db.session() as s:
        rows = s.exec(select(Position)).all()
    assert {(p.publication_state, p.publication_attempts) for p in rows} == {("PENDING", 1)}
