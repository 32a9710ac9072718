"""Legacy RPT/RT end to end: RPTs and carts sent with zeep, RTs pushed to paaInviaRT or recovered."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from lxml import etree
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.ente.notifications import NotificationClient
from connectors.pagopa.config import get_endpoints
from connectors.pagopa.nodo_rpt import rpt_rt_schema
from models.db import get_engine
from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, PaymentAttempt, Receipt
from models.positions import Position
from models.types import utcnow
from rules.xmlsafe import parse_xml
from sandbox.nodo_soap import legacy_state, paa_invia_rt_envelope
from tests.conftest import Database
from tests.factories_payments import Recorder, set_notification_endpoint
from tests.live_server import free_port, live_server
from tests.platform_env import STATION_KEY, PlatformEnv
from tests.portal_env import ISTITUTO, SCUOLA, STATION_02, api, make_school_position, portal_env, school_body
from web.pagamenti import rt_legacy_prefix

PAY = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
NOTIFY_SECRET_ENV = "PAGOFLOW_NOTIFY_SCUOLA_PASSWORD"


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformEnv]:
    # station 02 takes payments started on the portal with RPTs only
    with portal_env(db, monkeypatch, checkout={STATION_02: False}) as platform:
        yield platform


def attempts_of(db: Database, payment_id: str) -> list[PaymentAttempt]:
    with db.session() as s:
        return list(
            s.exec(
                select(PaymentAttempt).where(PaymentAttempt.cart_id == payment_id).order_by(PaymentAttempt.id)
            ).all()
        )


def state_of(env: PlatformEnv, payment_id: str) -> dict:
    with api(env, SCUOLA) as c:
        r = c.get(f"/pagamenti/{payment_id}")
    assert r.status_code == 200, r.text
    return r.json()


def pay_session(env: PlatformEnv, id_session: str) -> dict:
    r = httpx.post(
        f"{env.sandbox_url}/sandbox/rpt/pay", json={"idSessione": id_session, "retryDelay": 0}, timeout=60
    )
    r.raise_for_status()
    return r.json()


def paa_invia_rt(env: PlatformEnv, body: bytes, *, key: str | None = STATION_KEY) -> httpx.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "paaInviaRT"}
    if key:
        headers["Ocp-Apim-Subscription-Key"] = key
    return httpx.post(env.platform_url + rt_legacy_prefix(), content=body, headers=headers, timeout=30)


def esito(response: httpx.Response) -> tuple[str | None, str | None]:
    root = parse_xml(response.content)
    return root.findtext(".//esito"), root.findtext(".//fault/faultCode")


def node_events(db: Database, operation: str, iuv: str | None = None) -> list[Event]:
    """The journal's record of our calls to the Node's RPT service, oldest first."""
    with db.session() as s:
        stmt = select(Event).where(Event.component == "nodo_rpt", Event.operation == operation)
        if iuv is not None:
            stmt = stmt.where(Event.iuv == iuv)
        return list(s.exec(stmt.order_by(col(Event.id))).all())


def use_node(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point the platform (web process and recovery) at another Node URL."""
    monkeypatch.setenv("PAGOFLOW_PAGOPA_NODO_URL", url)
    get_endpoints.cache_clear()


def mangling_node(sandbox_url: str, mangles: dict[str, Callable[[etree._Element], None]]) -> Starlette:
    """A Node in front of the sandbox's: the answer payload of an operation in ``mangles`` is altered."""

    async def nodo(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "soapaction")}
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{sandbox_url}/nodo/nodoPerPa", content=await request.body(), headers=headers
            )
        content = answer.content
        mangle = mangles.get(request.headers.get("soapaction", "").strip('"'))
        if mangle is not None:
            root = parse_xml(content)
            mangle(root.find(f"{{{SOAP_ENV}}}Body")[0])  # type: ignore[index]
            content = etree.tostring(root)
        return Response(content, status_code=answer.status_code, media_type="text/xml; charset=utf-8")

    return Starlette(routes=[Route("/nodo/nodoPerPa", nodo, methods=["POST"])])


def test_a_cart_of_three_rpts_is_accepted_paid_and_applied(env: PlatformEnv, db: Database) -> None:
    first = make_school_position(db, "GITA-A", "18.00")
    second = make_school_position(db, "GITA-B", "7.50")
    new = school_body("12.30", causale="Mensa di maggio") | {"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-C"}
    with api(env, SCUOLA) as c:
        r = c.post(
            "/pagamenti",
            json={
                "pendenze": [
                    {"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-A"},
                    {"idDominio": ISTITUTO, "numeroAvviso": second.nav},
                    new,
                ],
                "soggettoVersante": {
                    "tipo": "F",
                    "identificativo": "BNCGNN70A01H501X",
                    "anagrafica": "Giovanni Bianchi",
                },
            },
        )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["location"].endswith(f"/pagamenti/{out['id']}")
    assert out["redirect"] == f"{env.sandbox_url}/sandbox/rpt/wallet?idSession={out['idSession']}"

    # the Node holds one cart of three RPTs, each valid against PagInf_RPT_RT_6_2_0.xsd
    legacy = legacy_state(env.sandbox.state)
    records = [legacy.rpts[k] for k in legacy.sessions[out["idSession"]]]
    assert [r.cart_id for r in records] == [out["id"]] * 3
    assert sorted(str(r.amount) for r in records) == ["12.30", "18.00", "7.50"]
    schema = rpt_rt_schema()
    for record in records:
        assert schema.validate(etree.ElementTree(parse_xml(record.rpt_xml))), schema.error_log
        assert parse_xml(record.rpt_xml).findtext(f".//{{{PAY}}}anagraficaVersante") == "Giovanni Bianchi"
    attempts = attempts_of(db, out["id"])
    assert [(a.kind, a.state) for a in attempts] == [("RPT", "RPT_ACCETTATA_NODO")] * 3
    assert {(a.iuv, a.ccp) for a in attempts} == {(r.iuv, r.ccp) for r in records}
    assert all(a.session_id == out["idSession"] and a.redirect_url == out["redirect"] for a in attempts)
    assert state_of(env, out["id"])["stato"] == "IN_CORSO"

    paid = pay_session(env, out["idSession"])
    assert [(rt["delivered"], rt["stato"]) for rt in paid["rts"]] == [(True, "RT_ACCETTATA_PA")] * 3

    with db.session() as s:
        positions = s.exec(select(Position).where(Position.id_a2a == "A2A-SCUOLA")).all()
        assert {p.id_pendenza: p.state for p in positions} == {
            "GITA-A": "ESEGUITA",
            "GITA-B": "ESEGUITA",
            "GITA-C": "ESEGUITA",
        }
        receipts = s.exec(select(Receipt).where(Receipt.id_dominio == ISTITUTO)).all()
        assert len(receipts) == 3 and {r.source for r in receipts} == {"RT"}
        assert {(r.iuv, r.ccp) for r in receipts} == {(a.iuv, a.ccp) for a in attempts}
        assert {r.receipt_id for r in receipts} == {rt["rtId"] for rt in paid["rts"]}
        assert (
            s.exec(select(Collection).where(Collection.position_id == first.id)).one().amount == first.amount
        )
        notes = s.exec(select(Notification).where(Notification.id_dominio == ISTITUTO)).all()
        assert len(notes) == 3
    assert [a.state for a in attempts_of(db, out["id"])] == ["RT_ACCETTATA_PA"] * 3
    session = state_of(env, out["id"])
    assert session["stato"] == "ESEGUITO" and session["modello"] == "RPT"
    assert {p["stato"] for p in session["pendenze"]} == {"ESEGUITA"}
    with api(env, SCUOLA) as c:
        by_session = c.get(f"/pagamenti/byIdSession/{out['idSession']}").json()
    assert by_session["id"] == out["id"] and by_session["stato"] == "ESEGUITO"

    # the same RT again is answered OK and changes nothing; another RT for the same RPT is refused
    record = records[0]
    again = paa_invia_rt(env, paa_invia_rt_envelope(record))
    assert esito(again) == ("OK", None)
    other_rt = record.rt_xml.replace(record.rt_id.encode(), b"RT99999999999999999")
    assert esito(paa_invia_rt(env, paa_invia_rt_envelope(dataclasses.replace(record, rt_xml=other_rt)))) == (
        "KO",
        "PAA_RT_DUPLICATA",
    )
    unknown = paa_invia_rt(
        env,
        paa_invia_rt_envelope(
            dataclasses.replace(
                record, ccp="sconosciuto", rt_xml=record.rt_xml.replace(record.ccp.encode(), b"sconosciuto")
            )
        ),
    )
    assert esito(unknown) == ("KO", "PAA_RPT_SCONOSCIUTA")
    assert paa_invia_rt(env, paa_invia_rt_envelope(record), key="wrong").status_code == 401
    broken = paa_invia_rt_envelope(record).replace(
        base64.b64encode(record.rt_xml), base64.b64encode(b"<RT>not an RT</RT>")
    )
    assert esito(paa_invia_rt(env, broken)) == ("KO", "PAA_SINTASSI_XSD")
    with db.session() as s:
        assert len(s.exec(select(Receipt).where(Receipt.id_dominio == ISTITUTO)).all()) == 3


def test_a_lost_rt_is_recovered_with_nodo_chiedi_copia_rt(
    env: PlatformEnv, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.notifications import deliver_batch
    from tasks.rpt import recover_pending_rpts

    position = make_school_position(db, "GITA-LOST", "21.00", scenario="02")  # 9902…: the Node loses the RT
    # the school's application takes notifications (served below, once the receipt is there)
    monkeypatch.setenv(NOTIFY_SECRET_ENV, "s3gr3to-scuola")
    app_port = free_port()
    set_notification_endpoint(
        db,
        id_a2a="A2A-SCUOLA",
        url=f"http://127.0.0.1:{app_port}/govpay-ente",
        secret_ref=f"env:{NOTIFY_SECRET_ENV}",
    )
    assert position.iuv is not None and position.iuv.startswith("9902")
    with api(env, SCUOLA) as c:
        r = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-LOST"}]})
    assert r.status_code == 201, r.text
    out = r.json()
    with api(env, SCUOLA) as c:
        busy = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-LOST"}]})
    assert (busy.status_code, busy.json()["codice"]) == (422, "PAG_010")
    # one notice: nodoInviaRPT, not a cart
    record = next(iter(legacy_state(env.sandbox.state).rpts.values()))
    assert record.cart_id is None and record.session_id == out["idSession"]

    # not paid yet: the Node says so, the next question waits 10 minutes
    later = utcnow() + timedelta(hours=1)
    summary = recover_pending_rpts(now=later)
    assert summary.outcomes == {"PENDING": 1}
    (attempt,) = attempts_of(db, out["id"])
    assert attempt.state == "RPT_ACCETTATA_NODO" and attempt.recovery_attempts == 1
    assert attempt.next_recovery_at == later + timedelta(minutes=10)
    assert recover_pending_rpts(now=later + timedelta(minutes=5)).checked == 0

    paid = pay_session(env, out["idSession"])
    assert [(rt["delivered"], rt["lost"]) for rt in paid["rts"]] == [(False, True)]
    assert state_of(env, out["id"])["stato"] == "IN_CORSO"

    summary = recover_pending_rpts(now=later + timedelta(minutes=11))
    assert summary.outcomes == {"RECOVERED": 1}
    (attempt,) = attempts_of(db, out["id"])
    assert attempt.state == "RT_ACCETTATA_PA" and attempt.next_recovery_at is None
    with db.session() as s:
        assert s.get(Position, position.id).state == "ESEGUITA"  # type: ignore[union-attr]
        receipt = s.exec(select(Receipt).where(Receipt.iuv == position.iuv)).one()
        assert (receipt.source, receipt.receipt_id, receipt.attempt_id) == (
            "PULL",
            paid["rts"][0]["rtId"],
            attempt.id,
        )
        note = s.exec(select(Notification).where(Notification.receipt_pk == receipt.id)).one()
        assert (note.id_a2a, note.iuv, note.state) == ("A2A-SCUOLA", position.iuv, "PENDING")
    # the journal: the state asked twice (unpaid, then RT), the copy once, and it came back OK
    assert [e.outcome for e in node_events(db, "nodoChiediStatoRPT", position.iuv)] == ["OK", "OK"]
    (copy_rt,) = node_events(db, "nodoChiediCopiaRT", position.iuv)
    assert (copy_rt.outcome, copy_rt.role, copy_rt.id_dominio) == ("OK", "CLIENT", ISTITUTO)
    assert state_of(env, out["id"])["stato"] == "ESEGUITO"
    # done: nothing left to ask
    assert recover_pending_rpts(now=later + timedelta(days=2)).checked == 0

    # the recovered receipt reaches the school's application like a pushed one (the notify flow's batch)
    recorder = Recorder()
    with live_server(recorder.app(), port=app_port):
        with NotificationClient(timeout=10) as client:
            batch = deliver_batch(
                client=client,
                session_factory=lambda: Session(get_engine(), expire_on_commit=False),
                batch_size=10,
                now=later + timedelta(minutes=12),
                concurrency=1,
                timeout=10,
            )
    assert (batch.claimed, batch.delivered) == (1, 1)
    (call,) = recorder.calls
    assert call["path"] == (ISTITUTO, position.iuv, paid["rts"][0]["rtId"])
    assert (call["body"]["fonte"], call["body"]["pendenza"]["idPendenza"]) == ("PULL", "GITA-LOST")
    with db.session() as s:
        assert s.get(Notification, note.id).state == "DELIVERED"  # type: ignore[union-attr]


def test_an_rpt_refused_by_the_node_fails_the_session(env: PlatformEnv, db: Database) -> None:
    make_school_position(db, "GITA-NO", "9.00", scenario="01")  # 9901…: the Node refuses the RPT
    with api(env, SCUOLA) as c:
        r = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-NO"}]})
    assert r.status_code == 502, r.text
    assert r.json()["categoria"] == "PAGOPA" and r.json()["codice"] == "PPT_SEMANTICA"
    payment_id = r.headers["location"].rsplit("/", 1)[-1]
    (attempt,) = attempts_of(db, payment_id)
    assert attempt.state == "RPT_RIFIUTATA_NODO" and "PPT_SEMANTICA" in (attempt.last_error or "")
    assert state_of(env, payment_id)["stato"] == "FALLITO"
    assert legacy_state(env.sandbox.state).rpts == {}


def test_the_recovery_gives_up_after_five_tries_with_exponential_backoff(
    env: PlatformEnv, db: Database
) -> None:
    from tasks.rpt import recover_pending_rpts

    make_school_position(db, "GITA-WAIT", "5.00")
    with api(env, SCUOLA) as c:
        r = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-WAIT"}]})
    assert r.status_code == 201, r.text
    payment_id = r.json()["id"]
    now = utcnow() + timedelta(minutes=10)
    waits = []
    for _ in range(5):
        summary = recover_pending_rpts(now=now)
        assert summary.checked == 1
        (attempt,) = attempts_of(db, payment_id)
        if attempt.next_recovery_at is None:
            break
        waits.append(attempt.next_recovery_at - now)
        now = attempt.next_recovery_at
    assert waits == [timedelta(minutes=m) for m in (10, 20, 40, 80)]
    assert summary.outcomes == {"EXPIRED": 1}
    assert (attempt.state, attempt.recovery_attempts) == ("RPT_SCADUTA", 5)
    assert recover_pending_rpts(now=now + timedelta(days=1)).checked == 0
    assert state_of(env, payment_id)["stato"] == "NON_ESEGUITO"


def test_a_node_answer_against_the_schema_is_a_failed_send_not_an_acceptance(
    env: PlatformEnv, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.rpt import recover_pending_rpts

    def without_esito(answer: etree._Element) -> None:
        for child in list(answer):  # esito is mandatory (zeep alone read this as a KO: a refusal)
            answer.remove(child)

    def redirect_not_an_int(answer: etree._Element) -> None:
        answer.find("redirect").text = "si"  # type: ignore[union-attr]  # xsd:int (zeep alone let it pass)

    mangles: dict[str, Callable[[etree._Element], None]] = {}
    cases = (
        ("GITA-XSD-1", without_esito, "Missing child element", 'telematici.gov/"/></soapenv:Body>'),
        ("GITA-XSD-2", redirect_not_an_int, "'si' is not a valid value", "<redirect>si</redirect>"),
    )
    attempts = []
    with live_server(mangling_node(env.sandbox_url, mangles)) as node:
        use_node(monkeypatch, node + "/nodo/nodoPerPa")
        for id_pendenza, mangle, problem, answered in cases:
            make_school_position(db, id_pendenza, "4.00")
            mangles["nodoInviaRPT"] = mangle
            with api(env, SCUOLA) as c:
                r = c.post(
                    "/pagamenti", json={"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": id_pendenza}]}
                )
            assert r.status_code == 502, r.text
            detail = r.json()["dettaglio"]
            assert r.json()["categoria"] == "PAGOPA"
            assert "invalid against gad/wsdl/NodoPerPa.wsdl" in detail and problem in detail
            payment_id = r.headers["location"].rsplit("/", 1)[-1]
            (attempt,) = attempts_of(db, payment_id)
            assert attempt.state == "RPT_ERRORE_INVIO_A_NODO" and problem in (attempt.last_error or "")
            assert (attempt.session_id, attempt.redirect_url) == (None, None)
            assert state_of(env, payment_id)["stato"] == "FALLITO"
            (event,) = node_events(db, "nodoInviaRPT", attempt.iuv)
            assert event.outcome == "FAIL" and (event.error or "").startswith("PagopaSchemaError")
            assert answered in (event.response_payload or "")
            attempts.append(attempt)

        # the Node did take both RPTs: the recovery finds them there and waits for their RTs
        assert {r.iuv for r in legacy_state(env.sandbox.state).rpts.values()} == {a.iuv for a in attempts}
        mangles.clear()
        summary = recover_pending_rpts(now=utcnow() + timedelta(hours=1))
    assert summary.outcomes == {"PENDING": 2}
    for attempt in attempts:
        (after,) = attempts_of(db, attempt.cart_id or "")
        assert (after.state, after.recovery_attempts) == ("RPT_ACCETTATA_NODO", 1)


def test_an_unreachable_node_fails_the_send_and_the_recovery_gives_up(
    env: PlatformEnv, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.rpt import recover_pending_rpts

    position = make_school_position(db, "GITA-DOWN", "6.00")
    pay = {"pendenze": [{"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-DOWN"}]}
    use_node(monkeypatch, f"http://127.0.0.1:{free_port()}/nodo/nodoPerPa")  # nobody listens there
    with api(env, SCUOLA) as c:
        r = c.post("/pagamenti", json=pay)
    assert r.status_code == 502, r.text
    assert r.json()["categoria"] == "PAGOPA" and "Connection refused" in r.json()["dettaglio"]
    payment_id = r.headers["location"].rsplit("/", 1)[-1]
    (attempt,) = attempts_of(db, payment_id)
    assert attempt.state == "RPT_ERRORE_INVIO_A_NODO" and "ConnectionError" in (attempt.last_error or "")
    assert state_of(env, payment_id)["stato"] == "FALLITO"
    (event,) = node_events(db, "nodoInviaRPT", position.iuv)  # sent once: a send is never retried
    assert event.outcome == "FAIL" and "ConnectionError" in (event.error or "")
    assert legacy_state(env.sandbox.state).rpts == {}

    # the Node is back and never got the RPT: the recovery stops asking; the notice can be paid again
    use_node(monkeypatch, env.sandbox_url + "/nodo/nodoPerPa")
    later = utcnow() + timedelta(hours=1)
    assert recover_pending_rpts(now=later).outcomes == {"UNKNOWN": 1}
    (attempt,) = attempts_of(db, payment_id)
    assert (attempt.state, attempt.next_recovery_at) == ("RPT_ERRORE_INVIO_A_NODO", None)
    assert "PPT_RPT_SCONOSCIUTA" in (attempt.last_error or "")
    assert recover_pending_rpts(now=later + timedelta(days=1)).checked == 0
    with api(env, SCUOLA) as c:
        again = c.post("/pagamenti", json=pay)
    assert again.status_code == 201, again.text
    assert [a.state for a in attempts_of(db, again.json()["id"])] == ["RPT_ACCETTATA_NODO"]


def test_a_legacy_cart_with_an_annulled_notice_is_refused_before_the_node(
    env: PlatformEnv, db: Database
) -> None:
    make_school_position(db, "GITA-OK", "8.00")
    annulled = make_school_position(db, "GITA-ANN", "9.00")
    new = school_body("3.00") | {"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-NEW"}
    cart = [
        {"idA2A": "A2A-SCUOLA", "idPendenza": "GITA-OK"},
        {"idDominio": ISTITUTO, "numeroAvviso": annulled.nav},
        new,
    ]
    with api(env, SCUOLA) as c:
        patch = c.patch(
            env.platform_url + "/api/pendenze/v2/pendenze/A2A-SCUOLA/GITA-ANN",
            json=[{"op": "REPLACE", "path": "/stato", "value": "ANNULLATA"}],
        )
        assert patch.status_code == 200, patch.text
        refused = c.post("/pagamenti", json={"pendenze": cart})
    assert refused.status_code == 422, refused.text
    assert refused.json()["codice"] == "PAG_002" and "GITA-ANN" in refused.json()["descrizione"]
    with db.session() as s:
        assert s.exec(select(PaymentAttempt)).all() == []
        # the new position of the refused cart is not kept either
        assert s.exec(select(Position).where(Position.id_pendenza == "GITA-NEW")).first() is None
    assert node_events(db, "nodoInviaCarrelloRPT") == [] and node_events(db, "nodoInviaRPT") == []
    assert legacy_state(env.sandbox.state).rpts == {}

    # without the annulled notice the same cart goes to the Node
    with api(env, SCUOLA) as c:
        ok = c.post("/pagamenti", json={"pendenze": [cart[0], cart[2]]})
    assert ok.status_code == 201, ok.text
    assert [a.state for a in attempts_of(db, ok.json()["id"])] == ["RPT_ACCETTATA_NODO"] * 2
    assert [e.outcome for e in node_events(db, "nodoInviaCarrelloRPT")] == ["OK"]


# --- the pure rules behind them ---------------------------------------------------------------------------


def test_session_state_follows_the_notices() -> None:
    from datetime import UTC, datetime

    from rules.pagamenti import NoticeAttempt, session_state

    now = datetime(2025, 1, 1, tzinfo=UTC)

    def rpt(state: str, paid: bool | None = None, position: str = "NON_ESEGUITA") -> NoticeAttempt:
        return NoticeAttempt(
            kind="RPT", attempt_state=state, position_state=position, expires_at=None, paid_by_attempt=paid
        )

    def co(state: str, position: str = "NON_ESEGUITA", expired: bool = False) -> NoticeAttempt:
        return NoticeAttempt(
            kind="CHECKOUT",
            attempt_state=state,
            position_state=position,
            expires_at=now - timedelta(minutes=1) if expired else now + timedelta(minutes=1),
        )

    paid, unpaid = rpt("RT_ACCETTATA_PA", True, "ESEGUITA"), rpt("RT_ACCETTATA_PA", False)
    assert session_state([paid, paid], now=now) == "ESEGUITO"
    assert session_state([paid, rpt("RPT_ACCETTATA_NODO")], now=now) == "IN_CORSO"
    assert session_state([paid, unpaid], now=now) == "ESEGUITO_PARZIALE"
    assert session_state([unpaid, rpt("RPT_SCADUTA")], now=now) == "NON_ESEGUITO"
    assert session_state([rpt("RPT_RIFIUTATA_NODO")] * 2, now=now) == "FALLITO"
    assert session_state([co("PENDING")], now=now) == "IN_CORSO"
    assert session_state([co("PENDING", expired=True)], now=now) == "NON_ESEGUITO"
    assert session_state([co("PENDING", "ANNULLATA", expired=True)], now=now) == "ANNULLATO"
    assert session_state([co("COMPLETED", "ESEGUITA"), co("FAILED")], now=now) == "ESEGUITO_PARZIALE"


def test_rpt_rules_refuse_what_the_schema_would() -> None:
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from rules.rpt import (
        RptData,
        RptError,
        RptSubject,
        RptTransfer,
        build_rpt,
        can_move,
        dati_specifici_riscossione,
        recovery_delay,
    )

    assert (
        dati_specifici_riscossione(accounting_type="SIOPE", accounting_code="3020", taxonomy=None) == "2/3020"
    )
    assert dati_specifici_riscossione(
        accounting_type="ALTRO", accounting_code="x", taxonomy="9/0201110TS/"
    ) == ("9/0201110TS/")
    assert (
        dati_specifici_riscossione(accounting_type=None, accounting_code=None, taxonomy=None)
        == "9/0101108TS/"
    )
    transfer = RptTransfer(
        amount=Decimal("1.00"), remittance="r", dati_specifici="9/abc", iban="IT60X0542811101"
    )
    data = RptData(
        id_dominio=ISTITUTO,
        id_stazione=STATION_02,
        message_id="m",
        requested_at=datetime.now(UTC),
        creditor_name="E",
        iuv="1" * 36,
        ccp="c",
        debtor=RptSubject(kind="F", identifier="X", name="Y"),
        transfers=(transfer,),
        payment_date=date.today(),
    )
    with pytest.raises(RptError, match="iuv"):
        build_rpt(data)
    with pytest.raises(RptError, match="1 to 5"):
        build_rpt(dataclasses.replace(data, iuv="1", transfers=(transfer,) * 6))
    xml = build_rpt(dataclasses.replace(data, iuv="1"))
    assert rpt_rt_schema().validate(etree.ElementTree(parse_xml(xml)))  # "X" became ANONIMO (2-16 chars)
    assert not can_move("RPT_RIFIUTATA_NODO", "RT_ACCETTATA_PA") and can_move(
        "RPT_SCADUTA", "RT_ACCETTATA_PA"
    )
    assert [recovery_delay(attempts=n) for n in (1, 2, 3)] == [timedelta(minutes=m) for m in (10, 20, 40)]
