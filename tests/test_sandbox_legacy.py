"""The sandbox's legacy Node SOAP for ECs (RPT, cart, RPT status, RT copy, RT push) and Checkout carts."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from lxml import etree

from rules.xmlsafe import parse_xml
from sandbox.nodo_soap import pa_per_nodo_schemas, rpt_rt_schema
from sandbox.server import start_app_in_thread, start_in_thread
from sandbox.state import CreditorConfig, PspConfig, SandboxState, StationConfig
from tests.sandbox_station import TestStation

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
PPT = "http://ws.pagamenti.telematici.gov/"
HEAD = "http://ws.pagamenti.telematici.gov/ppthead"
PAY = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
P = {"p": PAY}
NODO = "/nodo/nodoPerPa"
BROKER = "77777777777"
STATION, STATION_2 = "77777777777_01", "77777777777_02"
# Test stations' credentials, not secrets.
PASSWORD = "Password01"  # noqa: S105
WRONG_PASSWORD = "Sbagliata99"  # noqa: S105
SHORT_PASSWORD = "short"  # noqa: S105
EC1, EC2 = "77777777777", "01234567890"
PSP = "PPAYITR1XXX"
PAY_DAY = date(2024, 7, 26)


def it_iban(account: str) -> str:
    """A check-digit-valid Italian IBAN on a made-up account."""
    bban = f"X0306909606{account:0>12}"
    digits = "".join(str(int(c, 36)) for c in bban + "IT00")
    return f"IT{98 - int(digits) % 97:02d}{bban}"


# --- a recording EC (PaPerNodo) -----------------------------------------------------------------


@dataclass
class RecordingEc:
    """An EC's paaInviaRT endpoint that checks what it receives against PaPerNodo.wsdl and records it."""

    received: list[dict] = field(default_factory=list)
    fail_next: int = 0
    answer_ko: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/ec/{station}")
        async def paa(station: str, request: Request) -> Response:
            raw = await request.body()
            with self.lock:
                if self.fail_next:
                    self.fail_next -= 1
                    return Response(status_code=503)
            envelope = parse_xml(raw)
            header = envelope.find(f"{{{SOAP}}}Header/{{{HEAD}}}intestazionePPT")
            body = envelope.find(f"{{{SOAP}}}Body/{{{PPT}}}paaInviaRT")
            schemas = pa_per_nodo_schemas()
            errors = []
            if header is None or not schemas[HEAD].validate(header):
                errors.append(f"header: {schemas[HEAD].error_log}")
            if body is None or not schemas[PPT].validate(body):
                errors.append(f"body: {schemas[PPT].error_log}")
            rt = base64.b64decode(body.findtext("rt")) if body is not None else b""
            if not rpt_rt_schema().validate(parse_xml(rt)):
                errors.append(f"rt: {rpt_rt_schema().error_log}")
            with self.lock:
                self.received.append(
                    {
                        "station": station,
                        "soapaction": request.headers.get("soapaction"),
                        "header": {c.tag: c.text for c in header} if header is not None else {},
                        "rt": rt,
                        "errors": errors,
                    }
                )
            esito = (
                f"<fault><faultCode>{self.answer_ko}</faultCode><faultString>ko</faultString><id>{EC1}</id>"
                f"</fault><esito>KO</esito>"
                if self.answer_ko
                else "<esito>OK</esito>"
            )
            return Response(
                content=f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:ppt="{PPT}"><soapenv:Body>'
                f"<ppt:paaInviaRTRisposta><paaInviaRTRisposta>{esito}</paaInviaRTRisposta>"
                "</ppt:paaInviaRTRisposta></soapenv:Body></soapenv:Envelope>",
                media_type="text/xml",
            )

        return app


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[RecordingEc, str]]:
    ec = RecordingEc()
    running = start_app_in_thread(ec.app())
    try:
        yield ec, running.url
    finally:
        running.stop()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[object]:
    running = start_in_thread(state=SandboxState(seed=11))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def ec(recorder: tuple[RecordingEc, str]) -> RecordingEc:
    recording, _url = recorder
    with recording.lock:
        recording.received.clear()
        recording.fail_next = 0
        recording.answer_ko = None
    return recording


@pytest.fixture
def state(sandbox: object, recorder: tuple[RecordingEc, str], tmp_path: Path) -> SandboxState:
    """Reset and configured: two stations of one broker with paaInviaRT at the recorder, two ECs, one PSP."""
    _ec, url = recorder
    st: SandboxState = sandbox.state  # type: ignore[attr-defined]
    st.reset()
    with st.lock:
        for sid in (STATION, STATION_2):
            st.stations[sid] = StationConfig(
                id_station=sid, id_broker=BROKER, password=PASSWORD, legacy_url=f"{url}/ec/{sid}"
            )
        st.creditors[EC1] = CreditorConfig(
            fiscal_code=EC1,
            name="Comune di Prova",
            id_station=STATION,
            id_broker=BROKER,
            iban=it_iban("1"),
            treasury_dir=str(tmp_path),
        )
        st.creditors[EC2] = CreditorConfig(
            fiscal_code=EC2, name="Scuola Demo", id_station=STATION_2, id_broker=BROKER, iban=it_iban("2")
        )
        st.psps.append(PspConfig(PSP, "PayPal Pagamenti SpA", "PPAYITR1XXX", f"{PSP}_01"))
        st.subscription_keys.add("key")
    return st


@pytest.fixture
def client(sandbox: object) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=30) as c:  # type: ignore[attr-defined]
        yield c


# --- messages an EC sends ----------------------------------------------------------------------------


def make_rpt(
    *,
    ec: str = EC1,
    iuv: str,
    ccp: str = "CCP1",
    amounts: tuple[str, ...] = ("10.00",),
    total: str | None = None,
    station: str = STATION,
) -> bytes:
    """An RPT as an EC builds it (PagInf_RPT_RT_6_2_0.xsd)."""
    total = total or f"{sum(Decimal(a) for a in amounts):.2f}"
    singles = "".join(
        f"<datiSingoloVersamento><importoSingoloVersamento>{a}</importoSingoloVersamento>"
        f"<ibanAccredito>{it_iban('1')}</ibanAccredito><causaleVersamento>/RFB/{iuv}/{a}/TXT/Prova</causaleVersamento>"
        "<datiSpecificiRiscossione>9/0101100IM/</datiSpecificiRiscossione></datiSingoloVersamento>"
        for a in amounts
    )
    return (
        f'<RPT xmlns="{PAY}"><versioneOggetto>6.2.0</versioneOggetto>'
        f"<dominio><identificativoDominio>{ec}</identificativoDominio>"
        f"<identificativoStazioneRichiedente>{station}</identificativoStazioneRichiedente></dominio>"
        f"<identificativoMessaggioRichiesta>MSG{iuv}{ccp}</identificativoMessaggioRichiesta>"
        "<dataOraMessaggioRichiesta>2024-07-26T10:15:00</dataOraMessaggioRichiesta>"
        "<autenticazioneSoggetto>N/A</autenticazioneSoggetto>"
        "<soggettoPagatore><identificativoUnivocoPagatore><tipoIdentificativoUnivoco>F</tipoIdentificativoUnivoco>"
        "<codiceIdentificativoUnivoco>RSSMRA80A01H501U</codiceIdentificativoUnivoco></identificativoUnivocoPagatore>"
        "<anagraficaPagatore>Mario Rossi</anagraficaPagatore></soggettoPagatore>"
        "<enteBeneficiario><identificativoUnivocoBeneficiario><tipoIdentificativoUnivoco>G</tipoIdentificativoUnivoco>"
        f"<codiceIdentificativoUnivoco>{ec}</codiceIdentificativoUnivoco></identificativoUnivocoBeneficiario>"
        "<denominazioneBeneficiario>Comune di Prova</denominazioneBeneficiario></enteBeneficiario>"
        "<datiVersamento><dataEsecuzionePagamento>2024-07-26</dataEsecuzionePagamento>"
        f"<importoTotaleDaVersare>{total}</importoTotaleDaVersare><tipoVersamento>PO</tipoVersamento>"
        f"<identificativoUnivocoVersamento>{iuv}</identificativoUnivocoVersamento>"
        f"<codiceContestoPagamento>{ccp}</codiceContestoPagamento><firmaRicevuta>0</firmaRicevuta>"
        f"{singles}</datiVersamento></RPT>"
    ).encode()


def _el(parent: etree._Element, name: str, value: str) -> None:
    etree.SubElement(parent, name).text = value


def invia_rpt(
    client: httpx.Client,
    rpt: bytes,
    *,
    iuv: str,
    ccp: str = "CCP1",
    ec: str = EC1,
    station: str = STATION,
    password: str = PASSWORD,
    header: bool = True,
) -> etree._Element:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soapenv": SOAP, "ppt": HEAD, "ws": PPT})
    if header:
        head = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Header"), f"{{{HEAD}}}intestazionePPT")
        for name, value in (
            ("identificativoIntermediarioPA", BROKER),
            ("identificativoStazioneIntermediarioPA", station),
            ("identificativoDominio", ec),
            ("identificativoUnivocoVersamento", iuv),
            ("codiceContestoPagamento", ccp),
        ):
            _el(head, name, value)
    body = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Body"), f"{{{PPT}}}nodoInviaRPT")
    for name, value in (
        ("password", password),
        ("identificativoPSP", PSP),
        ("identificativoIntermediarioPSP", PSP),
        ("identificativoCanale", f"{PSP}_01"),
    ):
        _el(body, name, value)
    _el(body, "rpt", base64.b64encode(rpt).decode())
    return post(client, etree.tostring(env), "nodoInviaRPT")


def post(client: httpx.Client, payload: bytes, action: str) -> etree._Element:
    answer = client.post(
        NODO, content=payload, headers={"SOAPAction": f'"{action}"', "Content-Type": "text/xml"}
    )
    assert answer.status_code == 200, answer.text
    return parse_xml(answer.content).find(f"{{{SOAP}}}Body")[0]


def ask(
    client: httpx.Client,
    operation: str,
    *,
    iuv: str,
    ccp: str = "CCP1",
    ec: str = EC1,
    password: str = PASSWORD,
) -> etree._Element:
    """nodoChiediStatoRPT or nodoChiediCopiaRT."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soapenv": SOAP, "ws": PPT})
    body = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Body"), f"{{{PPT}}}{operation}")
    for name, value in (
        ("identificativoIntermediarioPA", BROKER),
        ("identificativoStazioneIntermediarioPA", STATION),
        ("password", password),
        ("identificativoDominio", ec),
        ("identificativoUnivocoVersamento", iuv),
        ("codiceContestoPagamento", ccp),
    ):
        _el(body, name, value)
    return post(client, etree.tostring(env), operation)


def invia_carrello(client: httpx.Client, cart_id: str, items: list[tuple[str, str, bytes]]) -> etree._Element:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soapenv": SOAP, "ppt": HEAD, "ws": PPT})
    head = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Header"), f"{{{HEAD}}}intestazioneCarrelloPPT")
    for name, value in (
        ("identificativoIntermediarioPA", BROKER),
        ("identificativoStazioneIntermediarioPA", STATION),
        ("identificativoCarrello", cart_id),
    ):
        _el(head, name, value)
    body = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Body"), f"{{{PPT}}}nodoInviaCarrelloRPT")
    for name, value in (
        ("password", PASSWORD),
        ("identificativoPSP", PSP),
        ("identificativoIntermediarioPSP", PSP),
        ("identificativoCanale", f"{PSP}_01"),
    ):
        _el(body, name, value)
    lista = etree.SubElement(body, "listaRPT")
    for ec, iuv, rpt in items:
        item = etree.SubElement(lista, "elementoListaRPT")
        for name, value in (
            ("identificativoDominio", ec),
            ("identificativoUnivocoVersamento", iuv),
            ("codiceContestoPagamento", "CCP1"),
            ("rpt", base64.b64encode(rpt).decode()),
        ):
            _el(item, name, value)
    return post(client, etree.tostring(env), "nodoInviaCarrelloRPT")


def pay(client: httpx.Client, **body: object) -> dict:
    body.setdefault("retryDelay", 0)
    answer = client.post("/sandbox/rpt/pay", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- RPT / RT ------------------------------------------------------------------------------------------


def test_rpt_accepted_paid_rt_pushed_and_settled(
    state: SandboxState, client: httpx.Client, ec: RecordingEc
) -> None:
    iuv = "01000000000000144"
    answer = invia_rpt(client, make_rpt(iuv=iuv, amounts=("10.00", "2.50")), iuv=iuv)
    assert answer.tag == f"{{{PPT}}}nodoInviaRPTRisposta"
    assert (
        answer.find("fault") is None
        and answer.findtext("esito") == "OK"
        and answer.findtext("redirect") == "1"
    )
    url = answer.findtext("url")
    wallet = client.get(url).json()
    assert wallet["rpts"] == [
        {"idDominio": EC1, "iuv": iuv, "ccp": "CCP1", "importo": "12.50", "stato": "RPT_ACCETTATA_NODO"}
    ]
    stato = ask(client, "nodoChiediStatoRPT", iuv=iuv)
    assert stato.findtext("esito/stato") == "RPT_ACCETTATA_NODO" and stato.findtext("esito/url") == url
    assert ask(client, "nodoChiediCopiaRT", iuv=iuv).findtext("fault/faultCode") == "PPT_RT_NONDISPONIBILE"

    paid = pay(client, idSessione=wallet["idSessione"], payDate=PAY_DAY.isoformat())
    assert paid["rts"][0]["delivered"] is True and paid["rts"][0]["stato"] == "RT_ACCETTATA_PA"
    [push] = ec.received
    assert push["errors"] == [] and push["station"] == STATION and push["soapaction"] == "paaInviaRT"
    assert push["header"]["identificativoUnivocoVersamento"] == iuv
    rt = parse_xml(push["rt"])
    assert rt.findtext("p:datiPagamento/p:codiceEsitoPagamento", namespaces=P) == "0"
    assert rt.findtext("p:datiPagamento/p:importoTotalePagato", namespaces=P) == "12.50"
    assert rt.findtext("p:datiPagamento/p:CodiceContestoPagamento", namespaces=P) == "CCP1"
    assert rt.findtext("p:riferimentoMessaggioRichiesta", namespaces=P) == f"MSG{iuv}CCP1"
    assert [
        e.text for e in rt.iterfind("p:datiPagamento/p:datiSingoloPagamento/p:singoloImportoPagato", P)
    ] == ["10.00", "2.50"]
    assert ask(client, "nodoChiediStatoRPT", iuv=iuv).findtext("esito/stato") == "RT_ACCETTATA_PA"
    copy = ask(client, "nodoChiediCopiaRT", iuv=iuv)
    assert base64.b64decode(copy.findtext("rt")) == push["rt"]

    # The paid RPT settles like any payment: its transfers are in the PSP's flow, with the RT's IUR.
    mine = [t for t in state.transfers if t.iuv == iuv]
    assert [(t.transfer_index, t.amount, t.outcome) for t in mine] == [
        (1, Decimal("10.00"), 0),
        (2, Decimal("2.50"), 0),
    ]
    settled = client.post("/sandbox/settle", json={"date": PAY_DAY.isoformat()}).json()
    [flow] = settled["flows"]
    assert (flow["ec"], flow["psp"], flow["count"], flow["total"]) == (EC1, PSP, 2, "12.50")
    payments = client.get(
        f"/fdr-org/service/v1/organizations/{EC1}/fdrs/{flow['idFlusso']}/revisions/1/psps/{PSP}/payments",
        headers={"Ocp-Apim-Subscription-Key": "key"},
    ).json()["data"]
    iur = rt.findtext(
        "p:datiPagamento/p:datiSingoloPagamento/p:identificativoUnivocoRiscossione", namespaces=P
    )
    assert {(p["iuv"], p["iur"]) for p in payments} == {(iuv, iur)}


def test_rpt_refused_by_scenario_and_by_script(state: SandboxState, client: httpx.Client) -> None:
    iuv = "99010000000000001"
    refused = invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv)
    assert refused.findtext("esito") == "KO" and refused.findtext("fault/faultCode") == "PPT_SEMANTICA"
    assert refused.findtext("fault/id") == "NodoDeiPagamentiSPC"
    assert ask(client, "nodoChiediStatoRPT", iuv=iuv).findtext("fault/faultCode") == "PPT_RPT_SCONOSCIUTA"
    scripted = "01000000000000245"
    assert (
        client.post(
            "/sandbox/rpt/script",
            json={"iuv": scripted, "action": "refuse", "faultCode": "PPT_CANALE_DISABILITATO"},
        ).status_code
        == 200
    )
    assert (
        invia_rpt(client, make_rpt(iuv=scripted), iuv=scripted).findtext("fault/faultCode")
        == "PPT_CANALE_DISABILITATO"
    )
    client.post("/sandbox/rpt/script", json={"iuv": scripted, "action": "clear"})
    assert invia_rpt(client, make_rpt(iuv=scripted), iuv=scripted).findtext("esito") == "OK"


def test_rt_lost_then_recovered_with_copia_rt(
    state: SandboxState, client: httpx.Client, ec: RecordingEc
) -> None:
    iuv = "99020000000000001"
    session = client.get(
        invia_rpt(client, make_rpt(iuv=iuv, amounts=("7.00",)), iuv=iuv).findtext("url")
    ).json()
    paid = pay(client, idSessione=session["idSessione"])
    assert paid["rts"][0] | {"rtId": None} == {
        "idDominio": EC1,
        "iuv": iuv,
        "ccp": "CCP1",
        "rtId": None,
        "stato": "RT_ESITO_SCONOSCIUTO_PA",
        "delivered": False,
        "lost": True,
        "attempts": 0,
    }
    assert ec.received == []
    assert ask(client, "nodoChiediStatoRPT", iuv=iuv).findtext("esito/stato") == "RT_ESITO_SCONOSCIUTO_PA"
    copy = ask(client, "nodoChiediCopiaRT", iuv=iuv)
    rt = base64.b64decode(copy.findtext("rt"))
    assert rpt_rt_schema().validate(parse_xml(rt))
    assert parse_xml(rt).findtext("p:datiPagamento/p:importoTotalePagato", namespaces=P) == "7.00"
    # Also by script, for any IUV.
    other = "01000000000000346"
    client.post("/sandbox/rpt/script", json={"iuv": other, "action": "lose_rt"})
    invia_rpt(client, make_rpt(iuv=other), iuv=other)
    assert pay(client, iuv=other)["rts"][0]["lost"] is True and ec.received == []


def test_rt_push_retries_then_redelivers(state: SandboxState, client: httpx.Client, ec: RecordingEc) -> None:
    iuv = "01000000000000447"
    invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv)
    ec.fail_next = 2
    paid = pay(client, iuv=iuv, ccp="CCP1", attempts=3)
    assert paid["rts"][0]["delivered"] is True and paid["rts"][0]["attempts"] == 3 and len(ec.received) == 1
    iuv_2 = "01000000000000548"
    invia_rpt(client, make_rpt(iuv=iuv_2), iuv=iuv_2)
    ec.fail_next = 5
    failed = pay(client, iuv=iuv_2, attempts=2)["rts"][0]
    assert failed["delivered"] is False and failed["stato"] == "RT_ESITO_SCONOSCIUTO_PA"
    ec.fail_next = 0
    again = client.post("/sandbox/rpt/redeliver", json={"iuv": iuv_2, "retryDelay": 0}).json()
    assert again["rts"] == [{"iuv": iuv_2, "ccp": "CCP1", "stato": "RT_ACCETTATA_PA", "delivered": True}]
    iuv_3 = "01000000000000649"
    invia_rpt(client, make_rpt(iuv=iuv_3), iuv=iuv_3)
    ec.answer_ko = "PAA_SEMANTICA"
    refused = pay(client, iuv=iuv_3)["rts"][0]
    assert refused["stato"] == "RT_RIFIUTATA_PA" and refused["attempts"] == 1


def test_negative_outcome_builds_a_ko_rt_and_books_nothing(
    state: SandboxState, client: httpx.Client, ec: RecordingEc
) -> None:
    iuv = "01000000000000750"
    invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv)
    assert pay(client, iuv=iuv, outcome="KO")["rts"][0]["delivered"] is True
    rt = parse_xml(ec.received[0]["rt"])
    assert ec.received[0]["errors"] == []
    assert rt.findtext("p:datiPagamento/p:codiceEsitoPagamento", namespaces=P) == "1"
    assert rt.findtext("p:datiPagamento/p:importoTotalePagato", namespaces=P) == "0.00"
    assert not [t for t in state.transfers if t.iuv == iuv]
    assert client.post("/sandbox/rpt/pay", json={"iuv": iuv}).status_code == 409


def test_invalid_requests_get_syntax_faults(state: SandboxState, client: httpx.Client) -> None:
    iuv = "01000000000000851"
    invalid_rpt = make_rpt(iuv=iuv).replace(b"<autenticazioneSoggetto>N/A", b"<autenticazioneSoggetto>XYZ")
    answer = invia_rpt(client, invalid_rpt, iuv=iuv)
    assert answer.findtext("fault/faultCode") == "PPT_SINTASSI_XSD" and answer.findtext("esito") == "KO"
    assert "autenticazioneSoggetto" in answer.findtext("fault/description")
    garbage = invia_rpt(client, b"<RPT><not-closed>", iuv=iuv)
    assert garbage.findtext("fault/faultCode") == "PPT_SINTASSI_EXTRAXSD"
    short_password = invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv, password=SHORT_PASSWORD)
    assert short_password.findtext("fault/faultCode") == "PPT_SINTASSI_XSD"
    no_header = invia_rpt(client, make_rpt(iuv=iuv), iuv=iuv, header=False)
    assert no_header.findtext("fault/faultCode") == "PPT_SINTASSI_XSD"
    doctype = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]><soapenv:Envelope xmlns:soapenv="'
        + SOAP.encode()
        + b'"><soapenv:Body/></soapenv:Envelope>'
    )
    refused = client.post(NODO, content=doctype, headers={"Content-Type": "text/xml"})
    assert refused.status_code == 500 and b"Fault" in refused.content
    malformed = client.post(NODO, content=b"<soapenv:Envelope", headers={"Content-Type": "text/xml"})
    assert malformed.status_code == 500 and b"PPT_SINTASSI_EXTRAXSD" in malformed.content
    # Nothing of the above was stored.
    assert ask(client, "nodoChiediStatoRPT", iuv=iuv).findtext("fault/faultCode") == "PPT_RPT_SCONOSCIUTA"


def test_authentication_and_semantic_faults(state: SandboxState, client: httpx.Client) -> None:
    iuv = "01000000000000952"
    rpt = make_rpt(iuv=iuv)
    assert (
        invia_rpt(client, rpt, iuv=iuv, password=WRONG_PASSWORD).findtext("fault/faultCode")
        == "PPT_AUTENTICAZIONE"
    )
    assert (
        invia_rpt(client, rpt, iuv=iuv, station="77777777777_99").findtext("fault/faultCode")
        == "PPT_STAZIONE_INT_PA_SCONOSCIUTA"
    )
    unknown_ec = make_rpt(ec="99999999999", iuv=iuv)
    assert (
        invia_rpt(client, unknown_ec, iuv=iuv, ec="99999999999").findtext("fault/faultCode")
        == "PPT_DOMINIO_SCONOSCIUTO"
    )
    assert invia_rpt(client, rpt, iuv="01000000000009999").findtext("fault/faultCode") == "PPT_SEMANTICA"
    wrong_total = make_rpt(iuv=iuv, amounts=("5.00", "5.00"), total="11.00")
    assert invia_rpt(client, wrong_total, iuv=iuv).findtext("fault/faultCode") == "PPT_SEMANTICA"
    assert invia_rpt(client, rpt, iuv=iuv).findtext("esito") == "OK"
    assert invia_rpt(client, rpt, iuv=iuv).findtext("fault/faultCode") == "PPT_RPT_DUPLICATA"
    assert (
        ask(client, "nodoChiediCopiaRT", iuv=iuv, password=WRONG_PASSWORD).findtext("fault/faultCode")
        == "PPT_AUTENTICAZIONE"
    )
    assert (
        ask(client, "nodoChiediStatoRPT", iuv=iuv, ccp="OTHER").findtext("fault/faultCode")
        == "PPT_RPT_SCONOSCIUTA"
    )


def test_cart_of_two_beneficiaries(state: SandboxState, client: httpx.Client, ec: RecordingEc) -> None:
    first, second = "01000000000001053", "01000000000001154"
    answer = invia_carrello(
        client,
        f"{EC1}CART0001",
        [
            (EC1, first, make_rpt(iuv=first, amounts=("20.00",))),
            (EC2, second, make_rpt(ec=EC2, iuv=second, amounts=("5.00",))),
        ],
    )
    assert answer.find("fault") is None and answer.findtext("esitoComplessivoOperazione") == "OK"
    session = client.get(answer.findtext("url")).json()
    assert [r["iuv"] for r in session["rpts"]] == [first, second]
    paid = pay(client, idSessione=session["idSessione"], payDate=PAY_DAY.isoformat())
    assert [r["delivered"] for r in paid["rts"]] == [True, True]
    assert sorted((r["station"], r["header"]["identificativoDominio"]) for r in ec.received) == [
        (STATION, EC1),
        (STATION_2, EC2),
    ]
    assert all(r["errors"] == [] for r in ec.received)
    flows = client.post("/sandbox/settle", json={"date": PAY_DAY.isoformat()}).json()["flows"]
    assert sorted((f["ec"], f["total"]) for f in flows) == [(EC2, "5.00"), (EC1, "20.00")]
    again = invia_carrello(
        client, f"{EC1}CART0001", [(EC1, "01000000000001255", make_rpt(iuv="01000000000001255"))]
    )
    assert again.findtext("fault/faultCode") == "PPT_ID_CARRELLO_DUPLICATO"
    bad = invia_carrello(
        client,
        f"{EC1}CART0002",
        [
            (EC1, "01000000000001356", make_rpt(iuv="01000000000001356")),
            (EC1, "01000000000001457", make_rpt(iuv="01000000000001457").replace(b"N/A", b"BAD")),
        ],
    )
    assert bad.findtext("esitoComplessivoOperazione") == "KO"
    assert [
        (f.findtext("faultCode"), f.findtext("serial")) for f in bad.iterfind("listaErroriRPT/fault")
    ] == [("PPT_SINTASSI_XSD", "2")]
    assert (
        ask(client, "nodoChiediStatoRPT", iuv="01000000000001356").findtext("fault/faultCode")
        == "PPT_RPT_SCONOSCIUTA"
    )


# --- Checkout -----------------------------------------------------------------------------------------


def cart_body(n: int = 2) -> dict:
    return {
        "paymentNotices": [
            {
                "noticeNumber": f"30100000000000{i:02d}{i:02d}",
                "fiscalCode": EC1,
                "amount": 1000 + i,
                "companyName": "Comune di Prova",
                "description": f"Rata {i}",
            }
            for i in range(n)
        ],
        "returnUrls": {
            "returnOkUrl": "https://ec.example/ok",
            "returnCancelUrl": "https://ec.example/cancel",
            "returnErrorUrl": "https://ec.example/error",
        },
        "emailNotice": "mario.rossi@example.it",
    }


def test_checkout_cart_redirects(state: SandboxState, client: httpx.Client) -> None:
    key = {"Ocp-Apim-Subscription-Key": "key"}
    answer = client.post("/checkout/ec/v1/carts", json=cart_body(), headers=key)
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(str(client.base_url)) and "/c/" in location
    page = client.get(location).json()
    assert page["status"] == "CREATED" and len(page["paymentNotices"]) == 2
    assert page["returnUrls"]["returnOkUrl"] == "https://ec.example/ok"
    assert client.post("/checkout/ec/v1/carts", json=cart_body(6), headers=key).status_code == 400
    no_urls = cart_body()
    del no_urls["returnUrls"]
    bad = client.post("/checkout/ec/v1/carts", json=no_urls, headers=key)
    assert bad.status_code == 400 and "returnUrls" in bad.json()["detail"]
    short = cart_body()
    short["paymentNotices"][0]["noticeNumber"] = "123"
    assert client.post("/checkout/ec/v1/carts", json=short, headers=key).status_code == 400
    assert client.post("/checkout/ec/v1/carts", json=cart_body()).status_code == 401
    cancelled = client.post(
        f"{location.replace(str(client.base_url).rstrip('/') + '/c/', '/sandbox/checkout/')}/pay",
        json={"outcome": "CANCEL"},
    ).json()
    assert cancelled["redirect"] == "https://ec.example/cancel"


def test_checkout_cart_paid_through_the_station(state: SandboxState, client: httpx.Client) -> None:
    station = TestStation(fiscal_codes=(EC1,), id_broker=BROKER, id_station=STATION).start()
    try:
        state.stations[STATION].url = station.url
        body = cart_body(2)
        for notice in body["paymentNotices"]:
            station.add_notice(
                nav=notice["noticeNumber"], amount=Decimal(notice["amount"]) / 100, fiscal_code=EC1
            )
        location = client.post(
            "/checkout/ec/v1/carts", json=body, headers={"Ocp-Apim-Subscription-Key": "key"}
        ).headers["location"]
        cart_id = location.rsplit("/", 1)[1]
        paid = client.post(f"/sandbox/checkout/{cart_id}/pay", json={"payDate": PAY_DAY.isoformat()}).json()
        assert paid["outcome"] == "OK" and paid["redirect"] == "https://ec.example/ok"
        assert paid["total"] == "20.01"
        assert [r["delivery"] for r in paid["results"]] == [{EC1: "delivered"}, {EC1: "delivered"}]
        # Every notice is activated before any is closed, and the cart id travels as paymentNote.
        assert (
            station.received_operations()
            == ["paVerifyPaymentNotice", "paGetPaymentV2"] * 2 + ["paSendRTV2"] * 2
        )
        assert station.request_errors == [] and station.answer_errors == []
        notes = [
            parse_xml(raw).findtext(".//paymentNote")
            for op, raw in station.received
            if op == "paGetPaymentV2"
        ]
        assert notes == [cart_id, cart_id]
        booked = sorted((t.iuv, t.amount) for t in state.transfers)
        assert booked == sorted(
            (n["noticeNumber"][1:], Decimal(n["amount"]) / 100) for n in body["paymentNotices"]
        )
        assert client.get(f"/sandbox/checkout/{cart_id}").json()["status"] == "PAID"
        assert client.post(f"/sandbox/checkout/{cart_id}/pay", json={}).status_code == 409

        # A cart with a notice the station does not know: nothing is closed, the debtor goes to the error URL.
        broken = cart_body(2)
        broken["paymentNotices"][0]["noticeNumber"] = "301000000000009999"
        station.add_notice(nav="301000000000009999", amount="5.00", fiscal_code=EC1)
        broken["paymentNotices"][1]["noticeNumber"] = "301000000000008888"  # unknown to the station
        before = len(state.transfers)
        location = client.post(
            "/checkout/ec/v1/carts", json=broken, headers={"Ocp-Apim-Subscription-Key": "key"}
        ).headers["location"]
        failed = client.post(f"/sandbox/checkout/{location.rsplit('/', 1)[1]}/pay", json={}).json()
        assert failed["outcome"] == "KO" and failed["redirect"] == "https://ec.example/error"
        fault = failed["results"][1]["fault"]
        assert (fault["faultCode"], fault["originalFaultCode"]) == (
            "PPT_ERRORE_EMESSO_DA_PAA",
            "PAA_PAGAMENTO_SCONOSCIUTO",
        )
        assert len(state.transfers) == before
    finally:
        station.stop()
