"""Who may call what: every route of the web process, unauthenticated, with wrong credentials, as a
principal of another EC, and as the right one, over real HTTP.

The routes come from the app itself (``create_app().routes``, mounted sub-applications included), so a route
added without a case here fails ``test_every_route_has_a_case_or_is_declared_public``. REST routes answer
401 to a missing or wrong credential and 403 to a principal of another EC (a list filtered by EC shows that
principal nothing, an application's document view finds nothing: both are declared with their reason). The
SOAP station and paaInviaRT answer 401 with a SOAP Fault to a caller that is not pagoPA for that station, and
the protocol's faults (``PAA_STAZIONE_INT_ERRATA``, ``PAA_ID_DOMINIO_ERRATO``) to an EC the station does not
serve.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlmodel import select
from starlette.routing import Mount

from models.payments import AttemptKind
from models.positions import Position
from rules.credentials import hash_secret
from rules.registry import parse_registry
from store.registry import apply_registry
from store.rpt import create_attempts, new_payment_id
from tests.conftest import Database
from tests.factories import example_registry_data, iban_pendenza
from tests.platform_env import web_on
from tests.soap_messages import STATION_VALUES, invia_rt_envelope, station_envelope
from web import soap

COMUNE, ISTITUTO = "01234567897", "80001234568"
KEY_01, KEY_02 = "matrix-station-01-key", "matrix-station-02-key"
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
TRIBUTI_API_KEY = {"X-Api-Id": "gestionale-tributi", "X-Api-Key": "demo-tributi-apikey"}
SCUOLA = ("gestionale-scuola", "demo-scuola-password")  # an application of the Istituto only
OPERATORE_SCUOLA = ("operatore.scuola", "matrix-operatore-scuola")  # an operator of the Istituto only
WRONG = {
    "wrong password": {"auth": ("gestionale-tributi", "not-the-password")},
    "wrong API key": {"headers": {"X-Api-Id": "gestionale-tributi", "X-Api-Key": "not-the-key"}},
    "unknown user": {"auth": ("nobody", "demo-tributi-password")},
    "operator with an application's password": {"auth": ("admin", "demo-tributi-password")},
    "malformed Basic": {"headers": {"Authorization": "Basic !!not-base64!!"}},
    "Bearer token": {"headers": {"Authorization": "Bearer demo-tributi-apikey"}},
    "API id without key": {"headers": {"X-Api-Id": "gestionale-tributi"}},
}

# Routes anyone may call, and why.
PUBLIC = {
    ("GET", "/openapi.json"): "the API's description (GovPay publishes the same): no data",
    ("GET", "/docs"): "Swagger UI page: static HTML over /openapi.json",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI's OAuth2 helper page: static HTML",
    ("GET", "/redoc"): "ReDoc page: static HTML over /openapi.json",
}
CONSOLE = "/console"  # a login-session UI: its pages redirect to the login page, or refuse
CONSOLE_PUBLIC = {  # console routes a stranger reaches, and why
    ("GET", "/console/login"): "the login page",
    ("POST", "/console/login"): "the login form's target (it checks the password itself)",
    ("POST", "/console/lang"): "the language switch of the login page (a cookie, no data)",
    ("*", "/console/static"): "style sheets and images",
}


@dataclass(frozen=True)
class RestCase:
    """One REST route: a request to it, and what a principal of another EC gets (403 unless declared)."""

    path: str  # filled with the fixture's data by str.format
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    other_ec: frozenset[int] = frozenset({403})
    why: str = ""  # why anything but 403 is right for another EC
    filtered_list: bool = False  # a list whose rows of the EC another EC's principal never sees


def _riconciliazione(iuv: str) -> dict[str, Any]:
    return {"importo": 25.0, "sct": "SCT-MATRIX-2", "iuv": iuv, "dataValuta": "2026-01-02"}


CASES: dict[tuple[str, str], RestCase] = {
    ("PUT", "/api/pendenze/v2/pendenze/{idA2A}/{idPendenza}"): RestCase(
        "/api/pendenze/v2/pendenze/A2A-TRIBUTI/M-1", json="{pendenza}"
    ),
    ("PATCH", "/api/pendenze/v2/pendenze/{idA2A}/{idPendenza}"): RestCase(
        "/api/pendenze/v2/pendenze/A2A-TRIBUTI/M-3",
        json=[{"op": "REPLACE", "path": "/descrizioneStato", "value": "matrix"}],
    ),
    ("GET", "/api/pendenze/v2/pendenze/byAvviso/{idDominio}/{numeroAvviso}"): RestCase(
        "/api/pendenze/v2/pendenze/byAvviso/{comune}/{nav}"
    ),
    ("GET", "/api/pendenze/v2/pendenze/{idA2A}/{idPendenza}"): RestCase(
        "/api/pendenze/v2/pendenze/A2A-TRIBUTI/M-1"
    ),
    ("GET", "/api/pendenze/v2/pendenze"): RestCase(
        "/api/pendenze/v2/pendenze",
        params={"idDominio": COMUNE},
        other_ec=frozenset({200}),
        filtered_list=True,
        why="GovPay's list filters by the caller's ECs: another EC's principal gets no rows, not an error",
    ),
    ("GET", "/api/pendenze/v2/avvisi/{idDominio}/{numeroAvviso}"): RestCase(
        "/api/pendenze/v2/avvisi/{comune}/{nav}"
    ),
    ("GET", "/api/pendenze/v2/documenti/{idDominio}/{numeroDocumento}/avvisi"): RestCase(
        "/api/pendenze/v2/documenti/{comune}/DOC-1/avvisi",
        other_ec=frozenset({403, 404}),
        why="an application sees only its own positions of a document: another's document is not found",
    ),
    ("GET", "/api/pendenze/v2/rpp/{idDominio}/{iuv}/{ccp}/rt"): RestCase(
        "/api/pendenze/v2/rpp/{comune}/{iuv}/rcpt-matrix-1/rt"
    ),
    ("GET", "/api/ragioneria/v3/flussiRendicontazione"): RestCase(
        "/api/ragioneria/v3/flussiRendicontazione", params={"idDominio": COMUNE}
    ),
    ("GET", "/api/ragioneria/v3/flussiRendicontazione/{idDominio}/{idFlusso}"): RestCase(
        "/api/ragioneria/v3/flussiRendicontazione/{comune}/2026-01-01PSPXXX-1"
    ),
    ("PUT", "/api/ragioneria/v3/riconciliazioni/{idDominio}/{id}"): RestCase(
        "/api/ragioneria/v3/riconciliazioni/{comune}/R-2", json="{riconciliazione}"
    ),
    ("GET", "/api/ragioneria/v3/riconciliazioni"): RestCase(
        "/api/ragioneria/v3/riconciliazioni", params={"idDominio": COMUNE}
    ),
    ("GET", "/api/ragioneria/v3/riconciliazioni/{idDominio}/{id}"): RestCase(
        "/api/ragioneria/v3/riconciliazioni/{comune}/R-1"
    ),
    ("GET", "/api/ragioneria/v3/riscossioni"): RestCase(
        "/api/ragioneria/v3/riscossioni", params={"idDominio": COMUNE}
    ),
    ("GET", "/api/ragioneria/v3/ricevute"): RestCase(
        "/api/ragioneria/v3/ricevute", params={"idDominio": COMUNE}
    ),
    ("POST", "/api/pagamento/v2/pagamenti"): RestCase(
        "/api/pagamento/v2/pagamenti", json={"pendenze": [{"idDominio": COMUNE, "numeroAvviso": "{nav2}"}]}
    ),
    ("GET", "/api/pagamento/v2/pagamenti/byIdSession/{idSession}"): RestCase(
        "/api/pagamento/v2/pagamenti/byIdSession/SESSION-MATRIX"
    ),
    ("GET", "/api/pagamento/v2/pagamenti/{id}"): RestCase("/api/pagamento/v2/pagamenti/{payment}"),
}
SOAP = {("POST", "/pagopa/paForNode"): "the station (paForNode)", ("POST", "/pagopa/PaPerNodo"): "paaInviaRT"}


def app_routes(app: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route of ``app``, through mounted sub-applications; HEAD goes with GET."""
    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            found |= app_routes(route, prefix + route.path) or {("*", prefix + route.path)}
            continue
        for method in (context.methods or {"*"}) - {"HEAD"}:
            found.add((method, prefix + (context.path or "")))
    return found


@dataclass
class Matrix:
    """The web process with data of the Comune that only the Comune's principals may see."""

    url: str
    app: FastAPI
    http: httpx.Client
    values: dict[str, Any]

    def fill(self, value: Any) -> Any:
        """The case's path or body with the fixture's data: "{name}" alone stands for a whole JSON value."""
        if isinstance(value, str):
            name = value[1:-1]
            if value == "{" + name + "}" and not isinstance(self.values.get(name, ""), str):
                return self.values[name]
            return value.format(**self.values)
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value

    def call(
        self,
        method: str,
        case: RestCase,
        *,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        return self.http.request(
            method,
            self.url + self.fill(case.path),
            json=self.fill(case.json),
            auth=auth,
            headers=headers,
            params=params if params is not None else case.params,
        )


def registry_for_matrix() -> dict[str, Any]:
    """The example registry, plus an operator of the Istituto only; each station has its own inbound key."""
    data = example_registry_data()
    data["operators"].append(
        {
            "username": OPERATORE_SCUOLA[0],
            "full_name": "Operatore della scuola",
            "password_hash": hash_secret(OPERATORE_SCUOLA[1]),
            "role": "OPERATOR",
            "creditors": [ISTITUTO],
        }
    )
    data["stations"][1]["auth"] = {"method": "SUBSCRIPTION_KEY", "secret_ref": "env:MATRIX_STATION_02_KEY"}
    return data


def pendenza(*, document: bool = False) -> dict[str, Any]:
    body = iban_pendenza(id_dominio=COMUNE, causale="TARI matrice")
    if document:
        body["documento"] = {"identificativo": "DOC-1", "descrizione": "Avviso TARI", "rata": 1}
    return body


@pytest.fixture(scope="module")
def matrix(_databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    database = _databases["sqlite"]
    env: dict[str, str | None] = {
        "PAGOFLOW_DATABASE_URL": database.url,
        "PAGOFLOW_STATION_INBOUND_KEY": KEY_01,
        "MATRIX_STATION_02_KEY": KEY_02,
        "PAGOFLOW_WORK_DIR": str(tmp_path_factory.mktemp("work")),
    }

    def applied(session: Any) -> None:
        apply_registry(session, spec=parse_registry(registry_for_matrix()))

    with web_on(database, env=env, registry=applied) as (url, app), httpx.Client(timeout=30) as http:
        navs = {}
        for id_pendenza in ("M-1", "M-2", "M-3"):
            r = http.put(
                f"{url}/api/pendenze/v2/pendenze/A2A-TRIBUTI/{id_pendenza}",
                auth=TRIBUTI,
                json=pendenza(document=id_pendenza == "M-1"),
            )
            assert r.status_code == 201, r.text
            navs[id_pendenza] = r.json()["numeroAvviso"]
        nav = navs["M-1"]
        paid = http.post(
            url + "/pagopa/paForNode",
            headers={"Ocp-Apim-Subscription-Key": KEY_01},
            content=station_envelope(
                "paSendRTV2Request",
                STATION_VALUES | {"nav": nav, "iuv": nav[1:], "receiptId": "rcpt-matrix-1"},
            ),
        )
        assert soap.text(soap.body_payload(paid.content), "outcome") == "OK", paid.text
        put = http.put(
            f"{url}/api/ragioneria/v3/riconciliazioni/{COMUNE}/R-1",
            auth=TRIBUTI,
            json=_riconciliazione(nav[1:]) | {"sct": "SCT-MATRIX-1"},
        )
        assert put.status_code in (200, 202), put.text
        payment = new_payment_id()
        with database.session() as session:
            position = session.exec(select(Position).where(Position.nav == navs["M-2"])).one()
            (attempt,) = create_attempts(
                session, positions=[position], kind=AttemptKind.CHECKOUT, payment_id=payment
            )
            attempt.session_id = "SESSION-MATRIX"
            session.add(attempt)
            session.commit()
        values = {
            "comune": COMUNE,
            "nav": nav,
            "iuv": nav[1:],
            "nav2": navs["M-2"],
            "payment": payment,
            "pendenza": pendenza(document=True),
            "riconciliazione": _riconciliazione(nav[1:]),
        }
        yield Matrix(url=url, app=app, http=http, values=values)


def test_every_route_has_a_case_or_is_declared_public(matrix: Matrix) -> None:
    routes = app_routes(matrix.app)
    console = {r for r in routes if r[1] == CONSOLE or r[1].startswith(CONSOLE + "/")}
    declared = set(CASES) | set(SOAP) | set(PUBLIC)
    assert routes - console - declared == set(), "routes without an authorisation case"
    assert declared - routes == set(), "cases of routes that no longer exist"
    assert len(routes - console) >= 24


def govpay_refusal(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (status, r.status_code, r.text[:300])
    body = r.json()
    assert body["categoria"] == "AUTORIZZAZIONE" and body["codice"] == f"{status}000", body
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_rest_route_refuses_strangers_and_other_ecs_and_serves_its_own(
    matrix: Matrix, route: tuple[str, str]
) -> None:
    method, _ = route
    case = CASES[route]
    govpay_refusal(matrix.call(method, case), 401)
    for name in ("wrong password", "wrong API key"):  # every other kind of wrong credential: test below
        r = matrix.call(method, case, **WRONG[name])
        assert r.status_code == 401, (name, r.status_code, r.text[:300])
        govpay_refusal(r, 401)
    own = matrix.call(method, case, auth=TRIBUTI)
    assert own.status_code not in (401, 403), own.text[:300]
    by_key = matrix.call(method, case, headers=TRIBUTI_API_KEY)
    assert by_key.status_code not in (401, 403), by_key.text[:300]
    for stranger in (SCUOLA, OPERATORE_SCUOLA):
        r = matrix.call(method, case, auth=stranger)
        assert r.status_code in case.other_ec, (stranger[0], r.status_code, r.text[:300])
        if r.status_code == 403:
            govpay_refusal(r, 403)
        if case.filtered_list:
            assert r.json()["numRisultati"] == 0 and own.json()["numRisultati"] > 0, (
                stranger[0],
                r.text[:300],
            )


def test_an_application_cannot_list_another_applications_positions(matrix: Matrix) -> None:
    case = CASES[("GET", "/api/pendenze/v2/pendenze")]
    r = matrix.call("GET", case, auth=SCUOLA, params={"idA2A": "A2A-TRIBUTI"})
    govpay_refusal(r, 403)


def soap_fault_code(r: httpx.Response) -> str | None:
    payload = soap.body_payload(r.content)
    return soap.text(payload, "fault", "faultCode") or soap.text(
        payload, "paaInviaRTRisposta", "fault", "faultCode"
    )


def test_station_refuses_strangers_and_other_stations_and_serves_pagopa(matrix: Matrix) -> None:
    url = matrix.url + "/pagopa/paForNode"
    nav = matrix.values["nav2"]

    def verify(key: str | None, **values: str) -> httpx.Response:
        headers = {"SOAPAction": "paVerifyPaymentNotice"} | (
            {"Ocp-Apim-Subscription-Key": key} if key else {}
        )
        body = station_envelope("paVerifyPaymentNoticeReq", STATION_VALUES | {"nav": nav} | values)
        return matrix.http.post(url, content=body, headers=headers)

    for key in (None, "wrong-key", KEY_02):  # nobody, a stranger, pagoPA for another station of ours
        r = verify(key)
        assert r.status_code == 401, (key, r.text[:300])
        assert soap.payload_name(soap.body_payload(r.content)) == "Fault" and b"PAA_" not in r.content
    served_by_02 = verify(KEY_02, idStation="77777777777_02")  # the Comune is not on station 02
    assert served_by_02.status_code == 200 and soap_fault_code(served_by_02) == "PAA_STAZIONE_INT_ERRATA"
    unknown_ec = verify(KEY_01, idPA="99999999999")
    assert unknown_ec.status_code == 200 and soap_fault_code(unknown_ec) == "PAA_ID_DOMINIO_ERRATO"
    other_ec = verify(KEY_01, idPA=ISTITUTO)  # the Istituto is served by station 02, not 01
    assert other_ec.status_code == 200 and soap_fault_code(other_ec) == "PAA_STAZIONE_INT_ERRATA"
    own = verify(KEY_01)
    assert own.status_code == 200 and soap_fault_code(own) is None
    assert soap.text(soap.body_payload(own.content), "outcome") == "OK"


def test_paa_invia_rt_refuses_strangers_and_other_stations_and_serves_pagopa(matrix: Matrix) -> None:
    url = matrix.url + "/pagopa/PaPerNodo"

    def invia(key: str | None, **header: str) -> httpx.Response:
        headers = {"SOAPAction": "paaInviaRT"} | ({"Ocp-Apim-Subscription-Key": key} if key else {})
        return matrix.http.post(url, content=invia_rt_envelope(**header), headers=headers)

    for key in (None, "wrong-key", KEY_01):  # nobody, a stranger, pagoPA for the other station
        r = invia(key)
        assert r.status_code == 401, (key, r.text[:300])
        assert soap.payload_name(soap.body_payload(r.content)) == "Fault" and b"PAA_" not in r.content
    comune = invia(KEY_02, idDominio=COMUNE)  # the Comune is not on station 02
    assert comune.status_code == 200 and soap_fault_code(comune) == "PAA_STAZIONE_INT_ERRATA", comune.text
    unknown = invia(KEY_02, idDominio="99999999999")
    assert unknown.status_code == 200 and soap_fault_code(unknown) == "PAA_ID_DOMINIO_ERRATO", unknown.text
    own = invia(KEY_02)  # authenticated and ours: the answer is about the RT (no such RPT), not the caller
    assert own.status_code == 200 and soap_fault_code(own) == "PAA_RPT_SCONOSCIUTA", own.text


def test_every_kind_of_wrong_credential_is_refused_and_never_echoed(matrix: Matrix) -> None:
    case = CASES[("GET", "/api/pendenze/v2/pendenze/{idA2A}/{idPendenza}")]
    for name, credentials in WRONG.items():
        r = matrix.call("GET", case, **credentials)
        assert r.status_code == 401, (name, r.status_code, r.text[:300])
        govpay_refusal(r, 401)
        assert "not-the-password" not in r.text and "not-the-key" not in r.text, name
    latin1 = base64.b64encode("gestionale-tributi:pässwörd".encode("latin-1")).decode()
    for token in (latin1, base64.b64encode(b"no-colon-at-all").decode(), "=", "A" * 10_000):
        r = matrix.call("GET", case, headers={"Authorization": f"Basic {token}"})
        govpay_refusal(r, 401)
        assert "pässwörd" not in r.text and (not token or token not in r.text)


def test_console_pages_send_strangers_to_the_login_page_or_refuse(matrix: Matrix) -> None:
    console = sorted(r for r in app_routes(matrix.app) if r[1] == CONSOLE or r[1].startswith(CONSOLE + "/"))
    if not console:
        pytest.skip("the operator console is not mounted in create_app()")
    for method, path in console:
        if (method, path) in CONSOLE_PUBLIC:
            continue
        url = matrix.url + re.sub(r"\{[^}]+\}", "1", path)
        r = matrix.http.request("GET" if method == "*" else method, url, auth=TRIBUTI, follow_redirects=False)
        to_login = r.status_code in (302, 303, 307) and "/login" in r.headers.get("location", "")
        assert to_login or r.status_code in (401, 403), (method, path, r.status_code)
