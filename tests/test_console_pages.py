"""The operator console over HTTP, read-only journeys on one shared scenario per database: CSRF on every
form, no page or action of another EC, escaping of hostile strings, sessions, roles, journal, languages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlmodel import select

from models.bulk import BulkFile
from models.console import OperatorAction
from models.positions import Position
from models.reconciliation import MatchSuggestion
from models.registry import IbanAccount
from models.treasury import TreasuryMovement
from rules.calendar import italian_today
from tests.conftest import BACKENDS, Database
from tests.console_env import (
    ADMIN,
    COMUNE,
    COMUNE_OPERATOR,
    HOSTILE_NAME,
    HOSTILE_REMITTANCE,
    SCUOLA,
    SCUOLA_READER,
    ConsoleServer,
    EcData,
    Scenario,
    api_routes,
    build_scenario,
    client,
    console_server,
    csrf_of,
    login,
)

ACTIONS = ("annul", "restore", "confirm_match", "reject_match", "not_pagopa", "upload")


@dataclass
class Site:
    """The running console on a database holding the two-EC scenario."""

    server: ConsoleServer
    scenario: Scenario
    db: Database


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, _databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One scenario and one web process for the whole module (these tests change nothing they rely on)."""
    if request.param not in _databases:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    database = _databases[request.param]
    database.truncate()
    work = tmp_path_factory.mktemp("console")
    scenario = build_scenario(database, work)
    with pytest.MonkeyPatch.context() as monkeypatch, console_server(database, monkeypatch, work) as server:
        yield Site(server, scenario, database)


def _routes(server: ConsoleServer) -> list[APIRoute]:
    return api_routes(server.console)


def _params(route: APIRoute, data: EcData, id_dominio: str, iban_row: int) -> dict[str, Any]:
    """Path parameters naming objects of one EC, for every parameter any console route takes."""
    values = {
        "id_dominio": id_dominio,
        "label": "TES_NO_MATCH",
        "position_id": data.unpaid.id,
        "receipt_id": data.receipt.id,
        "flow_id": data.flow.id,
        "movement_id": data.movement.id,
        "suggestion_id": data.suggestion.id,
        "bulk_file_id": data.bulk.id,
        "event_id": data.event.id,
        "slug": "ibans",
        "row_id": iban_row,
    }
    names = re.findall(r"{(\w+)}", route.path)
    missing = [n for n in names if n not in values]
    assert not missing, f"the test does not know how to fill {missing} of {route.path}: extend _params"
    return {n: values[n] for n in names}


def _iban_row(db: Database, id_dominio: str) -> int:
    with db.session() as s:
        return s.exec(select(IbanAccount.id).where(IbanAccount.id_dominio == id_dominio)).first() or 0


def test_every_form_refuses_a_post_without_this_sessions_csrf_token(site: Site) -> None:
    server, scenario, db = site.server, site.scenario, site.db
    posts = [r for r in _routes(server) if "POST" in r.methods]
    assert {r.name for r in posts} >= {
        "login_submit",
        "logout",
        "set_language",
        "position_annul",
        "position_restore",
        "suggestion_confirm",
        "suggestion_reject",
        "movement_not_pagopa",
        "upload_submit",
        "upload_resume",
        "registry_create",
        "registry_update",
    }
    iban_row = _iban_row(db, COMUNE)
    with login(server.url, ADMIN) as admin:
        token = csrf_of(admin.get("/"))
        for route in posts:
            path = route.path.format(**_params(route, scenario.comune, COMUNE, iban_row))
            form = {"motivo": "prova", "username": ADMIN[0], "password": ADMIN[1], "lang": "en", "nota": "x"}
            for sent in ({}, {"csrf_token": "forged-" + token[:10]}):
                answer = admin.post(path, data={**form, **sent})
                assert answer.status_code == 403, (path, sent, answer.status_code)
            cross_site = admin.post(
                path, data={**form, "csrf_token": token}, headers={"Origin": "https://evil.example"}
            )
            assert cross_site.status_code == 403, (path, "cross-site")
        # nothing happened, and the session still works
        assert admin.get("/").status_code == 200
    with db.session() as s:
        assert s.get(Position, scenario.comune.unpaid.id).state == "NON_ESEGUITA"
        assert s.get(MatchSuggestion, scenario.comune.suggestion.id).state == "PROPOSED"
        assert s.get(TreasuryMovement, scenario.comune.movement.id).match_state != "NOT_PAGOPA"
        assert s.exec(select(OperatorAction).where(OperatorAction.action.in_(ACTIONS))).all() == []  # type: ignore[attr-defined]


def test_no_page_or_action_of_another_ec(site: Site) -> None:
    server, scenario, db = site.server, site.scenario, site.db
    routes = [r for r in _routes(server) if "{" in r.path]
    assert len(routes) >= 20
    iban_row = _iban_row(db, SCUOLA)
    with login(server.url, COMUNE_OPERATOR) as comune:
        token = csrf_of(comune.get("/positions"))
        for route in routes:
            path = route.path.format(**_params(route, scenario.scuola, SCUOLA, iban_row))
            if "GET" in route.methods:
                answer = comune.get(path)
            else:
                answer = comune.post(path, data={"csrf_token": token, "motivo": "prova", "nota": "x"})
            assert answer.status_code == 403, (route.name, path, answer.status_code)
            assert "Accesso negato" in answer.text
            assert scenario.scuola.unpaid.nav not in answer.text
        # the same pages of its own EC open (registry pages excepted: administrators only)
        own = [r for r in routes if "GET" in r.methods and not r.name.startswith("registry")]
        for route in own:
            path = route.path.format(**_params(route, scenario.comune, COMUNE, 0))
            assert comune.get(path).status_code == 200, path
        # lists and searches never show the other EC, even when asked for it
        scuola = scenario.scuola
        position_link, event_link = (
            f"/console/positions/{scuola.unpaid.id}",
            f"/console/journal/{scuola.event.id}",
        )
        for path, secret in (
            (f"/positions?ente={SCUOLA}", position_link),
            (f"/positions?avviso={scuola.unpaid.nav}", position_link),
            ("/receipts", scuola.receipt.receipt_id),
            ("/flows", scuola.flow.id_flusso),
            (f"/movements?ente={SCUOLA}", "ACCREDITO VARIO"),
            ("/uploads", "tracciato-S.csv"),
            (f"/journal?iuv={scuola.unpaid.iuv}", event_link),
            (f"/ec/{COMUNE}", "Istituto"),
        ):
            page = comune.get(path)
            assert page.status_code == 200 and secret not in page.text, path
        assert comune.get("/registry").status_code == 403
        assert comune.get("/audit").status_code == 403
    with db.session() as s:
        assert s.get(Position, scuola.unpaid.id).state == "NON_ESEGUITA"
        assert s.get(MatchSuggestion, scuola.suggestion.id).state == "PROPOSED"


def test_hostile_debtor_names_and_remittances_are_shown_escaped(site: Site) -> None:
    server, scenario = site.server, site.scenario
    data = scenario.comune
    escaped_name = "&lt;script&gt;alert(&#34;debitore&#34;)&lt;/script&gt; Rossi &amp; Figli"
    escaped_remittance = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt; BONIFICO {{7*7}}"
    with login(server.url, ADMIN) as admin:
        pages = {
            "positions": admin.get("/positions", params={"avviso": data.unpaid.nav}),
            "position": admin.get(f"/positions/{data.unpaid.id}"),
            "movements": admin.get("/movements", params={"ente": COMUNE}),
            "movement": admin.get(f"/movements/{data.movement.id}"),
            "label": admin.get(f"/ec/{COMUNE}/labels/TES_NO_MATCH"),
        }
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert HOSTILE_NAME not in page.text and HOSTILE_REMITTANCE not in page.text, name
        assert "<script>" not in page.text and "onerror=alert(1)>" not in page.text, name
    for name in ("positions", "position"):
        assert escaped_name in pages[name].text, name
    for name in ("movements", "movement", "label"):
        assert escaped_remittance in pages[name].text, name
    # the answers forbid inline script anyway
    assert "script-src 'self'" in pages["position"].headers["content-security-policy"]
    assert pages["position"].headers["x-frame-options"] == "DENY"


def test_sessions_cookies_redirects_and_logout(site: Site) -> None:
    server, scenario = site.server, site.scenario
    target = f"/console/positions/{scenario.comune.unpaid.id}"
    with client(server.url) as http:
        away = http.get(target)
        assert away.status_code == 303 and away.headers["location"].startswith("/console/login?next=")
        page = http.get(away.headers["location"])
        cookie = page.headers["set-cookie"]
        assert (
            "httponly" in cookie.lower()
            and "samesite=lax" in cookie.lower()
            and "path=/console" in cookie.lower()
        )
        signed = http.post(
            "/console/login",
            data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": csrf_of(page), "next": target},
        )
        assert signed.status_code == 303 and signed.headers["location"] == target
        assert http.get(target).status_code == 200
        # a sign-in never sends the operator to another site
        token = csrf_of(http.get("/console/"))
        bad = http.post(
            "/console/login",
            data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token, "next": "https://evil.example/"},
        )
        assert bad.headers["location"] == "/console/"  # every shape of it: test_console_rules
        token = csrf_of(http.get("/console/"))
        out = http.post("/console/logout", data={"csrf_token": token})
        assert out.status_code == 303
        assert http.get(target).status_code == 303
        # a forged cookie is no session
        http.cookies.set("pagoflow_console", "eyJ1c2VyIjogImFkbWluIn0=.forged.signature", path="/console")
        assert http.get(target).status_code == 303


def test_a_read_only_operator_sees_but_cannot_act(site: Site) -> None:
    server, scenario, db = site.server, site.scenario, site.db
    data = scenario.scuola
    with login(server.url, SCUOLA_READER) as reader:
        page = reader.get(f"/positions/{data.unpaid.id}")
        assert (
            page.status_code == 200
            and "Ruolo in sola lettura" in page.text
            and 'name="motivo"' not in page.text
        )
        token = csrf_of(page)
        for path in (
            f"/positions/{data.unpaid.id}/annul",
            f"/suggestions/{data.suggestion.id}/confirm",
            f"/movements/{data.movement.id}/not-pagopa",
        ):
            assert reader.post(path, data={"csrf_token": token, "motivo": "x"}).status_code == 403, path
        assert "Conferma" not in reader.get(f"/movements/{data.movement.id}").text
        assert reader.get("/uploads").status_code == 200
        assert 'id="upload-form"' not in reader.get("/uploads").text
    with db.session() as s:
        assert s.get(Position, data.unpaid.id).state == "NON_ESEGUITA"


def test_bulk_upload_of_rows_for_another_ec_is_refused(site: Site) -> None:
    server, scenario, db = site.server, site.scenario, site.db
    header = (
        "idA2A;idPendenza;idDominio;tipoPendenza;causale;importo;dataScadenza;identificativoPagatore;"
        "anagraficaPagatore;idVoce1;importoVoce1;descrizioneVoce1;ibanAccredito1\n"
    )
    foreign = (
        f"A2A-TRIBUTI;X-1;{SCUOLA};TARI;Prova;10,00;;RSSMRA80A01H501U;Rossi;V1;10,00;Q;"
        "IT21X0306909606000000123456\n"
    )
    # a row without EC that names the key of a stored position of another EC (it would update that one)
    takeover = f"A2A-SCUOLA;{scenario.scuola.unpaid.id_pendenza};;MENSA;Prova;0;;;;;;;\n"
    with login(server.url, COMUNE_OPERATOR) as comune:
        token = csrf_of(comune.get("/uploads"))
        for body, expected in (
            (header + foreign, f"idDominio {SCUOLA} non abilitato"),
            (header + takeover, "non abilitato per l&#39;operatore"),
            ("", "Il file è vuoto"),
        ):
            answer = comune.post(
                "/uploads",
                data={"csrf_token": token, "ente": COMUNE, "applicazione": "A2A-TRIBUTI"},
                files={"file": ("tracciato.csv", body.encode(), "text/csv")},
            )
            assert answer.status_code == 422 and expected in answer.text, answer.text[:3000]
        other_ec = comune.post(
            "/uploads",
            data={"csrf_token": token, "ente": SCUOLA, "applicazione": "A2A-SCUOLA"},
            files={"file": ("t.csv", (header + foreign).encode(), "text/csv")},
        )
        assert other_ec.status_code == 403
    with db.session() as s:
        assert len(s.exec(select(BulkFile)).all()) == 2  # the scenario's two, nothing new
        assert s.get(Position, scenario.scuola.unpaid.id).state == "NON_ESEGUITA"


def test_journal_search_and_payloads(site: Site) -> None:
    server, scenario = site.server, site.scenario
    data = scenario.comune
    with login(server.url, COMUNE_OPERATOR) as comune:
        assert "Indica almeno un criterio di ricerca" in comune.get("/journal", params={"iuv": ""}).text
        found = comune.get("/journal", params={"avviso": data.unpaid.nav})
        assert found.status_code == 200 and "paVerifyPaymentNotice" in found.text
        event = comune.get(f"/journal/{data.event.id}")
        assert f"&lt;noticeNumber&gt;{data.unpaid.nav}&lt;/noticeNumber&gt;" in event.text
        timeline = comune.get(f"/positions/{data.unpaid.id}").text
        assert f"/console/journal/{data.event.id}" in timeline
        receipt = comune.get(f"/receipts/{data.receipt.id}/pdf")
        assert receipt.status_code == 200 and receipt.content.startswith(b"%PDF")
        notice = comune.get(f"/positions/{data.unpaid.id}/notice.pdf")
        assert notice.status_code == 200 and notice.content.startswith(b"%PDF")


def test_english_labels_on_request(site: Site) -> None:
    server = site.server
    with login(server.url, ADMIN) as admin:
        home = admin.get("/")
        assert '<html lang="it">' in home.text and "Cruscotto" in home.text
        switched = admin.post(
            "/lang", data={"csrf_token": csrf_of(home), "lang": "en", "back": "/console/positions"}
        )
        assert switched.status_code == 303 and switched.headers["location"] == "/console/positions"
        page = admin.get("/positions")
        assert (
            '<html lang="en">' in page.text and "Find positions" in page.text and "Notice number" in page.text
        )
        assert "Ricerca posizioni" not in page.text


def test_searches_by_every_key(site: Site) -> None:
    scenario = site.scenario
    data = scenario.comune
    today, value_day = italian_today().isoformat(), date.today().isoformat()  # created_at vs value_date

    def positions(**query: str) -> set[str]:
        page = admin.get("/positions", params=query)
        assert page.status_code == 200, query
        return set(re.findall(r'href="/console/positions/(\d+)"', page.text))

    unpaid, paid, other = str(data.unpaid.id), str(data.paid.id), str(scenario.scuola.unpaid.id)
    with login(site.server.url, ADMIN) as admin:
        assert positions(avviso=data.unpaid.nav or "") == {unpaid}
        assert positions(iuv=data.paid.iuv or "") == {paid}
        assert positions(avviso=data.unpaid.nav or "", stato="ESEGUITA") == set()
        assert {unpaid, paid, other} <= positions(debitore="rssmra80a01h501u")
        assert positions(applicazione="A2A-TRIBUTI", stato="ESEGUITA") == {paid}
        assert positions(ente=SCUOLA, stato="NON_ESEGUITA") == {other}
        assert {unpaid, paid} <= positions(dal=today, al=today, ente=COMUNE)
        assert positions(al="2000-01-01") == set()
        assert "data non valida" in admin.get("/positions", params={"dal": "31/12/2026"}).text
        receipts = admin.get("/receipts", params={"ricevuta": data.receipt.receipt_id, "giorno": today}).text
        assert data.receipt.receipt_id in receipts and scenario.scuola.receipt.receipt_id not in receipts
        flows = admin.get("/flows", params={"iuv": data.paid.iuv or "", "stato": "ACCETTATA"}).text
        assert data.flow.id_flusso in flows and scenario.scuola.flow.id_flusso not in flows
        lines = admin.get(f"/flows/{data.flow.id}").text
        assert f"/console/receipts/{data.receipt.id}" in lines
        assert f"/console/positions/{data.paid.id}" in lines
        assert "Nessun risultato" in admin.get(f"/flows/{data.flow.id}", params={"anomalie": "1"}).text
        movements = admin.get("/movements", params={"suggerimenti": "1", "giorno": value_day}).text
        assert f"/console/movements/{data.movement.id}" in movements
        matched = admin.get("/movements", params={"stato": "MATCHED"}).text
        assert f'/console/movements/{data.movement.id}"' not in matched
        label = admin.get(f"/ec/{COMUNE}/labels/TES_NO_MATCH").text
        assert f"/console/movements/{data.movement.id}" in label
        assert admin.get(f"/ec/{COMUNE}/labels/NOT_A_LABEL").status_code == 404
        assert admin.get("/positions/not-a-number").status_code == 404
