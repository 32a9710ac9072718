"""The operator console over HTTP, journeys that change data (each on a fresh scenario): lockout, annulment
and restore with a reason, match decisions and not-pagoPA, registry edits, all with their audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from models.console import OperatorAction
from models.positions import Position
from models.reconciliation import MatchSuggestion
from models.registry import IbanAccount, Operator, RegistryAudit
from models.treasury import TreasuryMovement
from models.types import utcnow
from tests.conftest import BACKENDS, Database
from tests.console_env import (
    ADMIN,
    COMUNE,
    COMUNE_OPERATOR,
    SCUOLA,
    ConsoleServer,
    Scenario,
    build_scenario,
    client,
    console_server,
    csrf_of,
    login,
)
from tests.factories import load_example_registry


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, _databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ConsoleServer, Database, Path]]:
    """One web process per database for the module (its engine and compiled statements stay warm)."""
    if request.param not in _databases:
        pytest.skip("PAGOFLOW_TEST_POSTGRES_URL is not set")
    database = _databases[request.param]
    work = tmp_path_factory.mktemp("console-changes")
    with pytest.MonkeyPatch.context() as monkeypatch, console_server(database, monkeypatch, work) as server:
        yield server, database, work


@pytest.fixture
def db(served: tuple[ConsoleServer, Database, Path]) -> Database:
    """The served database, emptied for each test (these tests change what they look at)."""
    database = served[1]
    database.truncate()
    return database


@pytest.fixture
def env(served: tuple[ConsoleServer, Database, Path], db: Database) -> tuple[ConsoleServer, Scenario]:
    server, _, work = served
    return server, build_scenario(db, work)


@pytest.fixture
def registry_only(served: tuple[ConsoleServer, Database, Path], db: Database) -> ConsoleServer:
    """The web process on a database holding just the example registry (for tests that need no more)."""
    with db.session() as s:
        load_example_registry(s)
    return served[0]


def _iban_row(db: Database, id_dominio: str) -> int:
    with db.session() as s:
        return s.exec(select(IbanAccount.id).where(IbanAccount.id_dominio == id_dominio)).first() or 0


def test_five_wrong_passwords_lock_the_account_for_fifteen_minutes(
    registry_only: ConsoleServer, db: Database
) -> None:
    server = registry_only
    with client(server.url + "/console") as http:
        token = csrf_of(http.get("/login"))

        def attempt(password: str) -> httpx.Response:
            return http.post(
                "/login", data={"username": COMUNE_OPERATOR[0], "password": password, "csrf_token": token}
            )

        for n in range(4):
            answer = attempt(f"wrong-{n}")
            assert answer.status_code == 401 and "Credenziali non valide" in answer.text
        locked = attempt("wrong-4")
        assert locked.status_code == 401 and "Account bloccato" in locked.text
        # the right password is refused while the lock lasts
        assert attempt(COMUNE_OPERATOR[1]).status_code == 401
        with db.session() as s:
            operator = s.exec(select(Operator).where(Operator.username == COMUNE_OPERATOR[0])).one()
            assert operator.locked_until is not None
            assert timedelta(minutes=14) < operator.locked_until - utcnow() <= timedelta(minutes=15)
            actions = [
                a.action
                for a in s.exec(
                    select(OperatorAction)
                    .where(OperatorAction.username == COMUNE_OPERATOR[0])
                    .order_by(OperatorAction.id)
                ).all()
            ]
            assert actions == ["login_failed"] * 4 + ["locked", "login_refused_locked"]
            operator.locked_until = utcnow() - timedelta(seconds=1)  # the quarter of an hour has passed
            s.add(operator)
            s.commit()
        # an unknown user gets the same answer as a wrong password
        unknown = http.post("/login", data={"username": "nessuno", "password": "x", "csrf_token": token})
        assert unknown.status_code == 401 and "Credenziali non valide" in unknown.text
        welcome = attempt(COMUNE_OPERATOR[1])
        assert welcome.status_code == 303 and welcome.headers["location"] == "/console/"
    with db.session() as s:
        operator = s.exec(select(Operator).where(Operator.username == COMUNE_OPERATOR[0])).one()
        assert operator.failed_logins == 0 and operator.locked_until is None


def test_annul_and_restore_need_a_reason_and_are_recorded(
    env: tuple[ConsoleServer, Scenario], db: Database
) -> None:
    server, scenario = env
    position = scenario.comune.unpaid
    with login(server.url, COMUNE_OPERATOR) as comune:
        token = csrf_of(comune.get(f"/positions/{position.id}"))
        empty = comune.post(f"/positions/{position.id}/annul", data={"csrf_token": token, "motivo": "   "})
        assert empty.status_code == 422 and "Il motivo è obbligatorio" in empty.text
        done = comune.post(
            f"/positions/{position.id}/annul",
            data={"csrf_token": token, "motivo": "Richiesta del contribuente"},
        )
        assert done.status_code == 303
        page = comune.get(f"/positions/{position.id}")
        assert "ANNULLATA" in page.text and "Posizione annullata" in page.text
        assert "Richiesta del contribuente" in page.text and "azione dell&#39;operatore" in page.text
        paid = comune.post(
            f"/positions/{scenario.comune.paid.id}/annul", data={"csrf_token": token, "motivo": "x"}
        )
        assert paid.status_code == 422 and "VER_009" in paid.text
        back = comune.post(
            f"/positions/{position.id}/restore", data={"csrf_token": token, "motivo": "Errore"}
        )
        assert back.status_code == 303
    with db.session() as s:
        stored = s.get(Position, position.id)
        assert stored.state == "NON_ESEGUITA" and stored.state_description == "Errore"
        assert stored.publication_state == "PENDING" and stored.version == position.version + 2
        trail = s.exec(
            select(OperatorAction).where(OperatorAction.entity == "position").order_by(OperatorAction.id)
        ).all()
        assert [(a.username, a.action, a.reason, a.before["state"], a.after["state"]) for a in trail] == [
            ("operatore.comune", "annul", "Richiesta del contribuente", "NON_ESEGUITA", "ANNULLATA"),
            ("operatore.comune", "restore", "Errore", "ANNULLATA", "NON_ESEGUITA"),
        ]
        assert all(a.id_dominio == COMUNE and a.at is not None for a in trail)


def test_match_decisions_and_not_pagopa_record_who_and_when(
    env: tuple[ConsoleServer, Scenario], db: Database
) -> None:
    server, scenario = env
    data = scenario.comune
    with login(server.url, COMUNE_OPERATOR) as comune:
        token = csrf_of(comune.get(f"/movements/{data.movement.id}"))
        assert (
            comune.post(f"/suggestions/{data.suggestion.id}/reject", data={"csrf_token": token}).status_code
            == 303
        )
        again = comune.post(f"/suggestions/{data.suggestion.id}/confirm", data={"csrf_token": token})
        assert again.status_code == 403  # already decided
        marked = comune.post(
            f"/movements/{data.movement.id}/not-pagopa",
            data={"csrf_token": token, "nota": "Rimborso spese economato"},
        )
        assert marked.status_code == 303
        page = comune.get(f"/movements/{data.movement.id}").text
        assert "NOT_PAGOPA" in page and "Rimborso spese economato" in page and "Deciso da" in page
    with db.session() as s:
        suggestion = s.get(MatchSuggestion, data.suggestion.id)
        assert suggestion.state == "REJECTED" and suggestion.decided_by == "operatore.comune"
        assert suggestion.decided_at is not None
        assert s.get(TreasuryMovement, data.movement.id).match_state == "NOT_PAGOPA"
        trail = s.exec(
            select(OperatorAction).where(OperatorAction.entity == "movement").order_by(OperatorAction.id)
        ).all()
        assert [(a.action, a.username, a.after.get("match_state")) for a in trail] == [
            ("reject_match", "operatore.comune", trail[0].before["match_state"]),
            ("not_pagopa", "operatore.comune", "NOT_PAGOPA"),
        ]
        assert trail[1].reason == "Rimborso spese economato"


def test_registry_edits_are_validated_and_audited(registry_only: ConsoleServer, db: Database) -> None:
    server = registry_only
    iban_row = _iban_row(db, COMUNE)
    with login(server.url, ADMIN) as admin:
        form = admin.get(f"/registry/ibans/{iban_row}")
        assert form.status_code == 200 and "Conto di tesoreria" in form.text
        token = csrf_of(form)
        bad = admin.post(
            "/registry/ibans/new",
            data={
                "csrf_token": token,
                "id_dominio": COMUNE,
                "iban": "IT00X0306909606000000999999",
                "enabled": "1",
            },
        )
        assert bad.status_code == 422 and "check digits" in bad.text and 'aria-invalid="true"' in bad.text
        changed = admin.post(
            f"/registry/ibans/{iban_row}",
            data={
                "csrf_token": token,
                "bic": "BCITITMM",
                "postal": "no",
                "treasury": "1",
                "description": "Tesoreria unica <b>comunale</b>",
                "enabled": "1",
            },
        )
        assert changed.status_code == 303
        assert (
            "Tesoreria unica &lt;b&gt;comunale&lt;/b&gt;"
            in admin.get(changed.headers["location"].removeprefix("/console")).text
        )
        created = admin.post(
            "/registry/operators/new",
            data={
                "csrf_token": token,
                "username": "nuovo.operatore",
                "full_name": "Nuovo Operatore",
                "new_password": "una-password-lunga",
                "role": "READONLY",
                "creditors": [SCUOLA],
                "enabled": "1",
            },
        )
        assert created.status_code == 303, created.text[:2000]
        short = admin.post(
            "/registry/operators/new",
            data={
                "csrf_token": token,
                "username": "altro",
                "full_name": "Altro",
                "new_password": "corta",
                "role": "READONLY",
                "enabled": "1",
            },
        )
        assert short.status_code == 422 and "almeno 12 caratteri" in short.text
        self_demotion = admin.post(
            "/registry/operators/1",
            data={
                "csrf_token": token,
                "full_name": "Amministratore",
                "role": "READONLY",
                "all_creditors": "1",
                "enabled": "1",
            },
        )
        assert self_demotion.status_code == 422
    with login(server.url, ("nuovo.operatore", "una-password-lunga")) as newcomer:
        assert newcomer.get("/").headers.get("location", "").endswith(f"/ec/{SCUOLA}")
    with db.session() as s:
        audit = s.exec(
            select(RegistryAudit).where(RegistryAudit.actor == "console:admin").order_by(RegistryAudit.id)
        ).all()
        entries = [(a.entity, a.action) for a in audit]
        assert ("iban_account", "update") in entries and ("operator", "create") in entries
        assert ("operator_grant", "create") in entries
        update = next(a for a in audit if a.entity == "iban_account")
        assert update.changes["description"][1] == "Tesoreria unica <b>comunale</b>"
        created_row = next(a for a in audit if a.entity == "operator")
        assert created_row.changes["password_hash"] == "(hash)"
