"""The event journal: payload policy, redaction of secrets, timing and failure classification."""

from __future__ import annotations

import pytest
from sqlmodel import select

from connectors.journal import EventJournal
from models.journal import Event, Outcome, Role
from models.settings import PayloadPolicy
from rules.redaction import redact, register_secret
from tests.conftest import Database

SOAP_WITH_PASSWORD = (
    "<soapenv:Envelope><soapenv:Body><nod:nodoChiediElencoFlussiRendicontazione>"
    "<identificativoStazioneIntermediarioPA>77777777777_01</identificativoStazioneIntermediarioPA>"
    "<password>Pa$$w0rd-station</password></nod:nodoChiediElencoFlussiRendicontazione>"
    "</soapenv:Body></soapenv:Envelope>"
)


def _journal(db: Database, policy: PayloadPolicy) -> EventJournal:
    return EventJournal(session_factory=db.session, policy=policy)


def _events(db: Database) -> list[Event]:
    with db.session() as s:
        return list(s.exec(select(Event).order_by(Event.id)).all())


@pytest.mark.parametrize(
    ("policy", "kept_ok", "kept_ko"),
    [(PayloadPolicy.ALWAYS, True, True), (PayloadPolicy.NEVER, False, False), (PayloadPolicy.ON_ERROR, False, True)],
)
def test_payloads_follow_the_policy(db: Database, policy: PayloadPolicy, kept_ok: bool, kept_ko: bool) -> None:
    journal = _journal(db, policy)
    for outcome in (Outcome.OK, Outcome.KO):
        journal.record(component="gpd", operation="createPosition", role=Role.CLIENT, outcome=outcome,
                       keys={"id_dominio": "01234567897", "iuv": "01000000000000144"},
                       request='{"iupd": "x"}', response='{"status": 201}')
    ok, ko = _events(db)
    assert (ok.request_payload is not None) is kept_ok
    assert (ko.response_payload is not None) is kept_ko
    assert ok.id_dominio == "01234567897" and ok.iuv == "01000000000000144"


def test_secrets_never_reach_the_journal(db: Database) -> None:
    register_secret("sk-live-0123456789abcdef")
    journal = _journal(db, PayloadPolicy.ALWAYS)
    journal.record(component="nodo", operation="nodoChiediElencoFlussiRendicontazione", role=Role.CLIENT,
                   outcome=Outcome.FAIL, request=SOAP_WITH_PASSWORD,
                   response="GET /x?subscription-key=sk-live-0123456789abcdef&page=1",
                   error="401 for Ocp-Apim-Subscription-Key: sk-live-0123456789abcdef",
                   keys={"authorization": "Basic dXNlcjpwYXNz"})
    (event,) = _events(db)
    dump = repr(event.model_dump())
    for secret in ("Pa$$w0rd-station", "sk-live-0123456789abcdef", "dXNlcjpwYXNz"):
        assert secret not in dump
    assert "<password>***</password>" in (event.request_payload or "")
    assert "77777777777_01" in (event.request_payload or "")  # business keys stay readable


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ('{"password": "abc123", "user": "u"}', "abc123"),
        ("Authorization: Bearer eyJhbGciOi.abc\nHost: x", "eyJhbGciOi.abc"),
        ("https://user:topsecret@sftp.example.org/in", "topsecret"),
        ("<ns2:password xmlns:ns2='x'>pw-9</ns2:password>", "pw-9"),
        ("api_key=k-7788&x=1", "k-7788"),
    ],
)
def test_redact_masks_secret_fields(text: str, hidden: str) -> None:
    out = redact(text)
    assert out is not None and hidden not in out and "***" in out


def test_exchange_times_and_classifies_failures(db: Database) -> None:
    journal = _journal(db, PayloadPolicy.ON_ERROR)
    with journal.exchange(component="fdr", operation="getFlow", role=Role.CLIENT,
                          keys={"id_flusso": "2024-07-26PPAYITR1XXX-S2024072601"}) as ex:
        ex.http_status = 200
    with pytest.raises(TimeoutError):
        with journal.exchange(component="fdr", operation="getFlow", role=Role.CLIENT) as ex:
            ex.request = "GET /fdrs"
            raise TimeoutError("read timed out")
    with journal.exchange(component="station", operation="paVerifyPaymentNotice", role=Role.SERVER) as ex:
        ex.ko(fault_code="PAA_PAGAMENTO_SCONOSCIUTO")
    ok, failed, ko = _events(db)
    assert ok.outcome == Outcome.OK and ok.id_flusso == "2024-07-26PPAYITR1XXX-S2024072601"
    assert ok.duration_ms is not None and ok.duration_ms >= 0
    assert failed.outcome == Outcome.FAIL and "TimeoutError: read timed out" in (failed.error or "")
    assert failed.request_payload == "GET /fdrs"
    assert ko.outcome == Outcome.KO and ko.fault_code == "PAA_PAGAMENTO_SCONOSCIUTO"


def test_a_journal_that_cannot_write_does_not_break_the_exchange() -> None:
    def broken():  # type: ignore[no-untyped-def]
        raise ConnectionError("database down")

    journal = EventJournal(session_factory=broken, policy=PayloadPolicy.ALWAYS)
    journal.record(component="x", operation="y", role=Role.CLIENT, outcome=Outcome.OK)


def test_a_buffered_journal_writes_the_same_events_on_flush(db: Database) -> None:
    register_secret("sk-buffered-0123456789")
    direct = _journal(db, PayloadPolicy.ON_ERROR)
    buffered = EventJournal(session_factory=db.session, policy=PayloadPolicy.ON_ERROR, buffered=True)
    for journal in (direct, buffered):
        with pytest.raises(RuntimeError), journal.exchange(
            component="gpd", operation="createPosition", role=Role.CLIENT,
            keys={"id_dominio": "01234567897", "iupd": "U1", "attempt": 1},
        ) as ex:
            ex.request = "POST /x sk-buffered-0123456789"
            raise RuntimeError("dropped")
    assert len(_events(db)) == 1  # the buffered one waits for flush
    assert buffered.flush() == 1 and buffered.flush() == 0
    first, second = _events(db)
    columns = ("component", "operation", "role", "outcome", "id_dominio", "keys", "error", "request_payload")
    assert [getattr(first, c) for c in columns] == [getattr(second, c) for c in columns]
    assert second.keys == {"iupd": "U1", "attempt": "1"}
    assert "sk-buffered" not in (second.request_payload or "")
