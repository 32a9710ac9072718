"""Notifications to applications: backoff, the message, authentication, and the notify-applications flow."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from connectors.ente.notifications import (
    AppEndpoint,
    NotificationAuth,
    NotificationClient,
    auth_headers,
    ricevuta_message,
)
from connectors.journal import EventJournal
from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, Receipt
from models.positions import Position, PositionItem
from rules.backoff import squared_backoff
from store import notifications as store
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.factories_payments import (
    COMUNE,
    NOTIFY_SECRET_ENV,
    Recorder,
    set_notification_endpoint,
    store_receipt,
    use_database,
)
from tests.live_server import live_server
from tests.platform_env import PlatformEnv, platform_and_sandbox
from tests.test_station import make_position

SECRET = "s3gr3to-ente"
T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


# --- pure rules -----------------------------------------------------------------------------------


def test_backoff_is_attempts_squared_minutes_capped_at_a_day() -> None:
    assert [squared_backoff(attempts=n) for n in (0, 1, 2, 3, 10)] == [
        timedelta(0),
        timedelta(minutes=1),
        timedelta(minutes=4),
        timedelta(minutes=9),
        timedelta(minutes=100),
    ]
    assert squared_backoff(attempts=37) == timedelta(minutes=1369)
    assert squared_backoff(attempts=38) == squared_backoff(attempts=10**9) == timedelta(hours=24)


def test_auth_headers_per_application_setting() -> None:
    def endpoint(auth: NotificationAuth, user: str | None = None) -> AppEndpoint:
        return AppEndpoint(id_a2a="A", url="http://x", auth=auth, user=user, secret=SecretStr(SECRET))

    assert auth_headers(AppEndpoint(id_a2a="A", url="http://x")) == {}
    basic = auth_headers(endpoint(NotificationAuth.BASIC, "pagoflow"))["Authorization"]
    assert base64.b64decode(basic.removeprefix("Basic ")).decode() == f"pagoflow:{SECRET}"
    assert auth_headers(endpoint(NotificationAuth.BEARER)) == {"Authorization": f"Bearer {SECRET}"}
    assert auth_headers(endpoint(NotificationAuth.API_KEY)) == {"X-Api-Key": SECRET}
    assert auth_headers(endpoint(NotificationAuth.API_KEY, "pagoflow")) == {
        "X-Api-Key": SECRET,
        "X-Api-Id": "pagoflow",
    }


def test_ricevuta_message_shape() -> None:
    position = Position(
        id=7,
        id_a2a="A2A-TRIBUTI",
        id_pendenza="P-1",
        id_dominio=COMUNE,
        debt_type="TARI",
        causale="TARI 2026",
        debtor_id="RSSMRA80A01H501U",
        debtor_name="Mario Rossi",
        amount=Decimal("25.00"),
        iuv="01000000000000144",
        nav="301000000000000144",
        due_date=date(2026, 1, 31),
        state="ESEGUITA",
        content_hash="h",
    )
    item = PositionItem(
        id=70,
        position_id=7,
        item_index=1,
        id_voce="V1",
        id_dominio=COMUNE,
        description="Quota",
        amount=Decimal("25.00"),
        state="ESEGUITO",
    )
    receipt = Receipt(
        id=9,
        receipt_id="tok-9",
        id_dominio=COMUNE,
        iuv="01000000000000144",
        nav="301000000000000144",
        position_id=7,
        amount=Decimal("25.00"),
        fee=Decimal("0.50"),
        psp_id="BCITITMM",
        psp_name="Banca",
        channel_id="BCITITMM_01",
        payer_id="RSSMRA80A01H501U",
        payment_at=T0,
        payload="<rt/>",
        payload_format="XML",
        source="PULL",
    )
    collection = Collection(
        id=3,
        id_dominio=COMUNE,
        iuv="01000000000000144",
        transfer_index=1,
        receipt_pk=9,
        item_id=70,
        amount=Decimal("25.00"),
        iban="IT21X0306909606000000123456",
    )
    message = ricevuta_message(
        receipt=receipt,
        position=position,
        items=[item],
        collections=[collection],
        creditor_name="Comune di Esempio",
        today=date(2026, 7, 1),
    )
    body = message.body
    assert (message.id_dominio, message.iuv, message.receipt_id) == (COMUNE, "01000000000000144", "tok-9")
    assert {
        k: body[k] for k in ("idDominio", "iuv", "idRicevuta", "importo", "commissioni", "esito", "fonte")
    } == {
        "idDominio": COMUNE,
        "iuv": "01000000000000144",
        "idRicevuta": "tok-9",
        "importo": 25.0,
        "commissioni": 0.5,
        "esito": "OK",
        "fonte": "PULL",
    }
    assert body["dataPagamento"] == "2026-07-01T08:00:00+00:00"
    assert body["psp"] == {
        "idPsp": "BCITITMM",
        "ragioneSociale": "Banca",
        "idCanale": "BCITITMM_01",
        "tipoVersamento": None,
    }
    assert body["riscossioni"][0]["idVocePendenza"] == "V1" and body["riscossioni"][0]["stato"] == "RISCOSSA"
    assert body["pendenza"]["stato"] == "ESEGUITA" and body["pendenza"]["voci"][0]["stato"] == "ESEGUITO"
    assert body["pendenza"]["idPendenza"] == "P-1" and body["rt"] == {"formato": "XML", "contenuto": "<rt/>"}
    unknown = ricevuta_message(
        receipt=receipt.model_copy(update={"payload": None}),
        position=None,
        items=[],
        collections=[],
        creditor_name=None,
        today=date(2026, 7, 1),
    )
    assert unknown.body["pendenza"] is None and "rt" not in unknown.body


def test_client_classifies_answers_and_journals_them(sqlite_db: Database) -> None:
    answers = iter([httpx.Response(204), httpx.Response(400, text="bad"), httpx.Response(503)])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/slow"):
            raise httpx.ReadTimeout("too slow", request=request)
        return next(answers)

    endpoint = AppEndpoint(
        id_a2a="A2A-TRIBUTI",
        url="http://ente.test/api/",
        auth=NotificationAuth.BEARER,
        secret=SecretStr(SECRET),
    )
    message = ricevuta_message(
        receipt=Receipt(receipt_id="r/1", id_dominio=COMUNE, iuv="IUV1", amount=Decimal("1.00")),
        position=None,
        items=[],
        collections=[],
        creditor_name=None,
        today=date(2026, 7, 1),
    )
    journal = EventJournal(session_factory=lambda: Session(sqlite_db.engine))
    with NotificationClient(transport=httpx.MockTransport(handler), journal=journal) as client:
        results = [client.send_receipt(endpoint=endpoint, message=message) for _ in range(3)]
        slow = message.model_copy(update={"receipt_id": "slow"})
        timeout = client.send_receipt(endpoint=endpoint, message=slow)
    assert [(r.delivered, r.status) for r in results] == [(True, 204), (False, 400), (False, 503)]
    assert not timeout.delivered and timeout.status is None and "timeout" in (timeout.error or "")
    with Session(sqlite_db.engine) as s:
        events = s.exec(select(Event).where(Event.component == "ente").order_by(Event.id)).all()
    assert [(e.outcome, e.http_status) for e in events] == [
        ("OK", 204),
        ("KO", 400),
        ("FAIL", 503),
        ("FAIL", None),
    ]
    assert all(e.id_a2a == "A2A-TRIBUTI" and e.receipt_id in ("r/1", "slow") for e in events)
    assert SECRET not in str([(e.request_payload, e.error) for e in events])


def test_claims_are_disjoint_and_results_need_the_claim(db: Database) -> None:
    with db.session() as s:
        load_example_registry(s)
    positions = [make_position(db, f"CLAIM-{i}") for i in range(3)]
    for i, p in enumerate(positions):
        store_receipt(db, p, receipt_id=f"claim-{i}", paid_at=T0)
    lease = timedelta(minutes=5)
    with db.session() as s:
        first = store.claim_due(s, now=T0, limit=2, lease=lease)
        s.commit()
    with db.session() as s:
        second = store.claim_due(s, now=T0, limit=5, lease=lease)
        nothing = store.claim_due(s, now=T0, limit=5, lease=lease)
        s.commit()
    assert len(first) == 2 and len(second) == 1 and nothing == []
    assert not {c.id for c in first} & {c.id for c in second}
    with db.session() as s:
        # the lease ran out: another worker takes the row, and the first worker's result no longer counts
        late = store.claim_due(s, now=T0 + lease + timedelta(seconds=1), limit=5, lease=lease)
        assert {c.id for c in late} == {c.id for c in first + second}
        assert store.record_delivered(s, claim=first[0], now=T0, status=200) is False
        stolen = next(c for c in late if c.id == first[0].id)
        row = s.get(Notification, stolen.id)
        assert row is not None
        row.attempts = 40  # a notification that has failed for weeks
        s.add(row)
        s.flush()
        assert store.record_failed(s, claim=stolen, now=T0, status=500, error="boom") is True
        s.commit()
    with db.session() as s:
        row = s.get(Notification, first[0].id)
        assert row is not None and (row.state, row.attempts, row.last_status) == ("PENDING", 41, 500)
        assert row.next_attempt_at == T0 + timedelta(hours=24) and row.claimed_until is None


# --- the flow -------------------------------------------------------------------------------------


@pytest.fixture
def recorder(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, str]]:
    """The registry loaded, the Tributi application's endpoint served by a recording app."""
    with db.session() as s:
        load_example_registry(s)
    monkeypatch.setenv(NOTIFY_SECRET_ENV, SECRET)
    rec = Recorder()
    with live_server(rec.app()) as url:
        set_notification_endpoint(db, id_a2a="A2A-TRIBUTI", url=url + "/govpay-ente")
        yield rec, url


def _basic(headers: dict[str, Any]) -> str:
    return base64.b64decode(headers["authorization"].removeprefix("Basic ")).decode()


@pytest.mark.prefect
def test_a_payment_is_notified_to_its_application(
    db: Database, recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.notify_applications import notify_applications

    rec, _ = recorder
    with platform_and_sandbox(db, monkeypatch) as env:
        env_: PlatformEnv = env
        position = make_position(db, "NOTIFY-1")
        answer = env_.pay(position.nav or "", COMUNE, fee="1.00")
        assert answer["outcome"] == "OK"
        summary = notify_applications(batch_size=10)
    assert (summary["claimed"], summary["delivered"], summary["failed"]) == (1, 1, 0)
    (call,) = rec.calls
    assert call["path"] == (COMUNE, position.iuv, answer["receiptId"])
    assert _basic(call["headers"]) == f"pagoflow:{SECRET}"
    body = call["body"]
    assert (body["idRicevuta"], body["importo"], body["esito"], body["fonte"]) == (
        answer["receiptId"],
        25.0,
        "OK",
        "PUSH",
    )
    assert body["pendenza"]["idPendenza"] == "NOTIFY-1" and body["pendenza"]["stato"] == "ESEGUITA"
    assert body["psp"]["idPsp"] == "BCITITMM" and body["commissioni"] == 1.0
    assert body["rt"]["formato"] == "XML" and answer["receiptId"] in body["rt"]["contenuto"]
    with db.session() as s:
        (note,) = s.exec(select(Notification)).all()
        assert (note.state, note.attempts, note.last_status, note.claimed_until) == (
            "DELIVERED",
            1,
            200,
            None,
        )
        assert note.delivered_at is not None
        (event,) = s.exec(select(Event).where(Event.component == "ente")).all()
        assert (event.outcome, event.iuv, event.id_a2a) == ("OK", position.iuv, "A2A-TRIBUTI")
    assert notify_applications(batch_size=10)["claimed"] == 0 and len(rec.calls) == 1


@pytest.mark.prefect
def test_a_failing_endpoint_is_retried_with_backoff_until_it_accepts(
    db: Database, recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.notify_applications import notify_applications

    rec, _ = recorder
    use_database(db, monkeypatch)
    rec.script = [503, 400]
    position = make_position(db, "RETRY-1")
    outcome = store_receipt(db, position, receipt_id="retry-1", paid_at=T0)

    def note() -> Notification:
        with db.session() as s:
            found = s.exec(select(Notification).where(Notification.receipt_pk == outcome.receipt_pk)).one()
            return found

    first = notify_applications(now=T0)
    assert (first["failed"], first["failures"][0]["status"]) == (1, 503)
    n = note()
    assert (n.state, n.attempts, n.last_status, n.next_attempt_at) == (
        "PENDING",
        1,
        503,
        T0 + timedelta(minutes=1),
    )
    assert "503" in (n.last_error or "")
    assert notify_applications(now=T0 + timedelta(seconds=59))["claimed"] == 0  # not due yet
    t1 = T0 + timedelta(minutes=1)
    assert notify_applications(now=t1)["failed"] == 1
    n = note()
    assert (n.attempts, n.last_status, n.next_attempt_at) == (2, 400, t1 + timedelta(minutes=4))
    t2 = t1 + timedelta(minutes=4)
    assert notify_applications(now=t2)["delivered"] == 1
    n = note()
    assert (n.state, n.attempts, n.last_status, n.delivered_at) == ("DELIVERED", 3, 200, t2)
    assert [c["status"] for c in rec.calls] == [503, 400, 200]
    assert len(set(rec.paths())) == 1


@pytest.mark.prefect
def test_two_runs_at_once_deliver_each_notification_once(
    db: Database, recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from flows.notify_applications import notify_applications

    rec, _ = recorder
    use_database(db, monkeypatch)
    rec.delay = 0.02
    outcomes = [
        store_receipt(db, make_position(db, f"RACE-{i}"), receipt_id=f"race-{i}", paid_at=T0)
        for i in range(16)
    ]
    with db.session() as s:  # a notification for an application without an endpoint
        s.add(
            Notification(
                id_a2a="A2A-SCUOLA",
                id_dominio=COMUNE,
                iuv="X",
                receipt_pk=outcomes[0].receipt_pk or 0,
                kind="EXTRA",
                next_attempt_at=T0,
            )
        )
        s.commit()
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            results.append(notify_applications(batch_size=3, concurrency=2, now=T0))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(results) == 2
    assert sum(r["delivered"] for r in results) == 16 and sum(r["no_endpoint"] for r in results) == 1
    assert all(r["lost"] == 0 for r in results)
    counts = Counter(rec.paths())
    assert len(counts) == 16 and set(counts.values()) == {1}, counts
    with db.session() as s:
        states = Counter((n.id_a2a, n.state, n.attempts) for n in s.exec(select(Notification)).all())
    assert states == {("A2A-TRIBUTI", "DELIVERED", 1): 16, ("A2A-SCUOLA", "NO_ENDPOINT", 0): 1}
