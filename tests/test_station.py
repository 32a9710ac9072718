"""The station over real SOAP: the sandbox PSP pays through it, and every fault pagoPA expects is answered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lxml import etree
from sqlmodel import func, select

from models.journal import Event
from models.notifications import Notification
from models.payments import Collection, PaymentAttempt, Receipt
from models.positions import Position
from rules.positions import PendenzaPut, validate_position
from store.positions import load_caller, load_registry_view, upsert_positions
from tests.conftest import Database
from tests.factories import load_example_registry
from tests.platform_env import STATION_KEY, PlatformEnv, platform_and_sandbox
from web import soap

COMUNE, PROVINCIA = "01234567897", "00987654324"
IBAN = "IT21X0306909606000000123456"


def make_position(db: Database, id_pendenza: str, *, amount: str = "25.00", due: date | None = None,
                  voci: list[dict[str, Any]] | None = None) -> Position:
    body = {"idTipoPendenza": "TARI", "idDominio": COMUNE, "causale": f"TARI {id_pendenza}",
            "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
            "importo": amount, "dataScadenza": (due or date.today() + timedelta(days=30)).isoformat(),
            "voci": voci or [{"idVocePendenza": "V1", "importo": amount, "descrizione": "Quota",
                              "ibanAccredito": IBAN, "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"}]}
    with db.session() as s:
        caller = load_caller(s, id_a2a="A2A-TRIBUTI")
        assert caller is not None
        data = validate_position(PendenzaPut.model_validate(body), id_a2a="A2A-TRIBUTI", id_pendenza=id_pendenza,
                                 caller=caller, registry=load_registry_view(s))
        (result,) = upsert_positions(s, batch=[data])
        s.commit()
        assert result.position is not None
        return result.position


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformEnv]:
    with db.session() as s:
        load_example_registry(s)
    with platform_and_sandbox(db, monkeypatch) as platform:
        yield platform


def test_a_payment_closes_the_position_and_queues_the_notification(env: PlatformEnv, db: Database) -> None:
    position = make_position(db, "PAY-1", voci=[
        {"idVocePendenza": "V1", "importo": "20.00", "descrizione": "TARI", "ibanAccredito": IBAN,
         "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"},
        {"idVocePendenza": "V2", "importo": "5.00", "descrizione": "TEFA", "idDominio": PROVINCIA,
         "ibanAccredito": "IT58X0103014200000000111222", "tipoContabilita": "ALTRO", "codiceContabilita": "TEFA"}])
    answer = env.pay(position.nav or "", COMUNE)
    assert answer["outcome"] == "OK", answer
    assert answer["delivery"] == {COMUNE: "delivered", PROVINCIA: "delivered"}
    with db.session() as s:
        stored = s.get(Position, position.id)
        assert stored is not None and stored.state == "ESEGUITA" and stored.paid_at is not None
        receipts = s.exec(select(Receipt).where(Receipt.iuv == position.iuv)).all()
        assert {r.id_dominio for r in receipts} == {COMUNE, PROVINCIA}
        assert all(r.receipt_id == answer["receiptId"] and r.state == "ACCEPTED" for r in receipts)
        collections = s.exec(select(Collection).where(Collection.iuv == position.iuv)).all()
        assert sorted((c.id_dominio, c.transfer_index, c.amount) for c in collections) == sorted(
            [(COMUNE, 1, Decimal("20.00")), (PROVINCIA, 2, Decimal("5.00"))])
        attempts = s.exec(select(PaymentAttempt).where(PaymentAttempt.position_id == position.id)).all()
        assert [a.state for a in attempts] == ["COMPLETED"]
        notes = s.exec(select(Notification).where(Notification.iuv == position.iuv)).all()
        assert [(n.id_a2a, n.state) for n in notes] == [("A2A-TRIBUTI", "PENDING")]
        ops = {e.operation for e in s.exec(select(Event).where(Event.component == "station")).all()}
        assert {"paVerifyPaymentNotice", "paGetPaymentV2", "paSendRTV2"} <= ops
    with httpx.Client(base_url=env.platform_url + "/api/pendenze/v2",
                      auth=("gestionale-tributi", "demo-tributi-password")) as api:
        got = api.get("/pendenze/A2A-TRIBUTI/PAY-1").json()
        assert got["stato"] == "ESEGUITA"
        assert [x["tipo"] for x in got["rpp"]] == ["tentativo", "ricevuta"]


def test_double_payment_is_refused_and_flags_the_position(env: PlatformEnv, db: Database) -> None:
    position = make_position(db, "TWICE")
    answer = env.pay(position.nav or "", COMUNE, times=2)
    assert [p["outcome"] for p in answer["payments"]] == ["OK", "OK"]
    faults = [p.get("deliveryFaults", {}).get(COMUNE) for p in answer["payments"]]
    assert any(f and "PAA_RECEIPT_DUPLICATA" in str(f) for f in faults), answer
    with db.session() as s:
        assert s.get(Position, position.id).state == "ANOMALA"  # type: ignore[union-attr]
        states = sorted(r.state for r in s.exec(select(Receipt).where(Receipt.iuv == position.iuv)).all())
        assert states == ["ACCEPTED", "DUPLICATE"]
        assert s.exec(select(func.count()).select_from(Collection).where(Collection.iuv == position.iuv)).one() == 2
    # a later attempt to pay is answered as already paid
    again = env.pay(position.nav or "", COMUNE)
    assert again["outcome"] == "KO" and again["originalFaultCode"] == "PAA_PAGAMENTO_DUPLICATO"


def _request(operation: str, *, id_pa: str = COMUNE, broker: str = "77777777777", station: str = "77777777777_01",
             nav: str = "301000000000000144", fiscal_code: str | None = None) -> bytes:
    element = soap.new(operation)
    soap.sub(element, "idPA", id_pa)
    soap.sub(element, "idBrokerPA", broker)
    soap.sub(element, "idStation", station)
    qr = soap.sub(element, "qrCode")
    soap.sub(qr, "fiscalCode", fiscal_code or id_pa)
    soap.sub(qr, "noticeNumber", nav)
    return soap.envelope(element)


def _post(env: PlatformEnv, body: bytes, *, key: str | None = STATION_KEY, action: str = "paVerifyPaymentNotice"
          ) -> httpx.Response:
    headers = {"Content-Type": "text/xml", "SOAPAction": action}
    if key:
        headers["Ocp-Apim-Subscription-Key"] = key
    return httpx.post(env.station_url, content=body, headers=headers, timeout=30)


def _fault(response: httpx.Response) -> str | None:
    payload = soap.body_payload(response.content)
    assert soap.schema_errors(payload) == [], "the station answered invalid XML"
    return soap.text(payload, "fault", "faultCode")


def test_faults_by_position_state(env: PlatformEnv, db: Database) -> None:
    annulled = make_position(db, "ANN")
    expired = make_position(db, "EXP", due=date.today() - timedelta(days=1))
    paid = make_position(db, "PAID")
    live = make_position(db, "LIVE")
    with db.session() as s:
        for pid, state in ((annulled.id, "ANNULLATA"), (paid.id, "ESEGUITA")):
            row = s.get(Position, pid)
            row.state = state  # type: ignore[union-attr]
            s.add(row)
        s.commit()
    cases = {None: live.nav, "PAA_PAGAMENTO_ANNULLATO": annulled.nav, "PAA_PAGAMENTO_SCADUTO": expired.nav,
             "PAA_PAGAMENTO_DUPLICATO": paid.nav, "PAA_PAGAMENTO_SCONOSCIUTO": "301999999999999999"}
    for expected, nav in cases.items():
        r = _post(env, _request("paVerifyPaymentNoticeReq", nav=nav or ""))
        assert r.status_code == 200 and _fault(r) == expected, (expected, r.text)
    ok = soap.body_payload(_post(env, _request("paVerifyPaymentNoticeReq", nav=live.nav or "")).content)
    assert soap.text(ok, "paymentList", "paymentOptionDescription", "amount") == "25.00"
    assert soap.text(ok, "companyName") == "Comune di Esempio"


def test_wrong_identities_invalid_envelopes_and_strangers(env: PlatformEnv, db: Database) -> None:
    live = make_position(db, "ID")
    nav = live.nav or ""
    assert _fault(_post(env, _request("paVerifyPaymentNoticeReq", nav=nav, station="77777777777_02"))) == \
        "PAA_STAZIONE_INT_ERRATA"
    assert _fault(_post(env, _request("paVerifyPaymentNoticeReq", nav=nav, broker="11111111111"))) == \
        "PAA_ID_INTERMEDIARIO_ERRATO"
    assert _fault(_post(env, _request("paVerifyPaymentNoticeReq", nav=nav, id_pa="99999999999"))) == \
        "PAA_ID_DOMINIO_ERRATO"
    invalid = _request("paVerifyPaymentNoticeReq", nav="12345")  # not 18 digits
    assert _fault(_post(env, invalid)) == "PAA_SINTASSI_XSD"
    assert _post(env, b"<not-soap/>").status_code == 400
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    assert _post(env, bomb).status_code == 400
    stranger = _post(env, _request("paVerifyPaymentNoticeReq", nav=nav), key="wrong-key")
    assert stranger.status_code == 401 and b"PAA_" not in stranger.content
    assert _post(env, _request("paVerifyPaymentNoticeReq", nav=nav), key=None).status_code == 401


def test_same_receipt_twice_is_ok_and_stored_once(env: PlatformEnv, db: Database) -> None:
    position = make_position(db, "RT-TWICE")
    answer = env.pay(position.nav or "", COMUNE)
    assert answer["outcome"] == "OK"
    exchanges = httpx.get(f"{env.sandbox_url}/sandbox/exchanges", params={"operation": "paSendRTV2"}).json()
    sent = [e for e in exchanges if e["direction"] == "out"][-1]["request"]
    again = httpx.post(env.station_url, content=sent.encode(), timeout=30,
                       headers={"SOAPAction": "paSendRTV2", "Ocp-Apim-Subscription-Key": STATION_KEY})
    payload = soap.body_payload(again.content)
    assert soap.text(payload, "outcome") == "OK"
    with db.session() as s:
        assert s.exec(select(func.count()).select_from(Receipt).where(Receipt.iuv == position.iuv)).one() == 1
        assert s.exec(select(func.count()).select_from(Notification).where(
            Notification.iuv == position.iuv)).one() == 1


def test_answers_are_valid_against_the_schema(env: PlatformEnv, db: Database) -> None:
    position = make_position(db, "XSD")
    element = soap.new("paGetPaymentV2Request")
    for name, value in (("idPA", COMUNE), ("idBrokerPA", "77777777777"), ("idStation", "77777777777_01")):
        soap.sub(element, name, value)
    qr = soap.sub(element, "qrCode")
    soap.sub(qr, "fiscalCode", COMUNE)
    soap.sub(qr, "noticeNumber", position.nav)
    r = _post(env, soap.envelope(element), action="paGetPaymentV2")
    payload = soap.body_payload(r.content)
    assert soap.schema_errors(payload) == []
    assert soap.text(payload, "outcome") == "OK"
    data = soap.find(payload, "data")
    assert soap.text(data, "creditorReferenceId") == position.iuv
    transfer = soap.find(data, "transferList", "transfer")
    assert soap.text(transfer, "remittanceInformation") == f"/RFB/{position.iuv}/25.00/TXT/Quota"
    assert etree.QName(payload).localname == "paGetPaymentV2Response"


def test_receipt_times_without_offset_are_italian_local_time() -> None:
    from datetime import UTC, datetime

    from rules.receipts import parse_pagopa_datetime

    assert parse_pagopa_datetime("2026-07-01T12:00:00") == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert parse_pagopa_datetime("2026-01-15T12:00:00") == datetime(2026, 1, 15, 11, 0, tzinfo=UTC)
    assert parse_pagopa_datetime("2026-07-01T12:00:00Z") == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_receipt_as_json_xml_and_pdf(env: PlatformEnv, db: Database) -> None:
    import io

    from pypdf import PdfReader

    position = make_position(db, "RPP")
    answer = env.pay(position.nav or "", COMUNE)
    rid = answer["receiptId"]
    url = f"/rpp/{COMUNE}/{position.iuv}/{rid}/rt"
    with httpx.Client(base_url=env.platform_url + "/api/pendenze/v2",
                      auth=("gestionale-tributi", "demo-tributi-password")) as api:
        as_json = api.get(url).json()
        assert as_json["idRicevuta"] == rid and as_json["importo"] == 25.0
        assert as_json["pendenza"]["idPendenza"] == "RPP" and as_json["riscossioni"][0]["indice"] == 1
        xml = api.get(url, headers={"Accept": "application/xml"})
        payload = soap.body_payload(xml.content)
        assert soap.text(payload, "receipt", "receiptId") == rid and soap.schema_errors(payload) == []
        pdf = api.get(url, headers={"Accept": "application/pdf"})
        text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
        assert "RICEVUTA DI PAGAMENTO" in text and rid in text and "25,00" in text and "Mario Rossi" in text
        assert api.get(f"/rpp/{COMUNE}/{position.iuv}/nope/rt").status_code == 404
    with httpx.Client(base_url=env.platform_url + "/api/pendenze/v2",
                      auth=("gestionale-scuola", "demo-scuola-password")) as other:
        assert other.get(url).status_code == 403
