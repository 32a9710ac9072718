"""API Pagamento end to end: a portal starts a Checkout cart, the sandbox pays it through the station."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import httpx
import pytest
from sqlmodel import select

from models.payments import PaymentAttempt, Receipt
from models.positions import Position
from tests.conftest import Database
from tests.platform_env import PlatformEnv
from tests.portal_env import COMUNE, SCUOLA, STATION_01, TRIBUTI, api, portal_env
from tests.test_station import IBAN, make_position


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlatformEnv]:
    # the Comune's station takes portal payments through Checkout
    with portal_env(db, monkeypatch, checkout={STATION_01: True}) as platform:
        yield platform


def new_position(id_pendenza: str, amount: str) -> dict:
    return {
        "idA2A": "A2A-TRIBUTI",
        "idPendenza": id_pendenza,
        "idTipoPendenza": "TARI",
        "idDominio": COMUNE,
        "causale": f"TARI {id_pendenza}",
        "importo": amount,
        "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "dataScadenza": (date.today() + timedelta(days=30)).isoformat(),
        "voci": [
            {
                "idVocePendenza": "V1",
                "importo": amount,
                "descrizione": "Quota",
                "ibanAccredito": IBAN,
                "tipoContabilita": "CAPITOLO",
                "codiceContabilita": "1010",
            }
        ],
    }


def checkout_calls(env: PlatformEnv) -> list[dict]:
    r = httpx.get(f"{env.sandbox_url}/sandbox/exchanges", params={"endpoint": "/checkout/"}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_a_checkout_cart_paid_through_the_station_makes_the_session_eseguito(
    env: PlatformEnv, db: Database
) -> None:
    make_position(db, "CK-1", amount="30.00")
    second = make_position(db, "CK-2", amount="12.50")
    with api(env, TRIBUTI) as c:
        r = c.post(
            "/pagamenti",
            json={
                "pendenze": [
                    {"idA2A": "A2A-TRIBUTI", "idPendenza": "CK-1"},
                    {"idDominio": COMUNE, "numeroAvviso": second.nav},
                    new_position("CK-3", "4.20"),
                ],
                "urlRitorno": "https://portale.comune.example.it/esito",
            },
        )
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["redirect"] == f"{env.sandbox_url}/c/{out['idSession']}"
        assert c.get(f"/pagamenti/{out['id']}").json()["stato"] == "IN_CORSO"

    assert len(checkout_calls(env)) == 1
    cart = httpx.get(f"{env.sandbox_url}/sandbox/checkout/{out['idSession']}", timeout=10).json()
    assert cart["idCart"] == f"cart:{out['id']}"
    assert [n["amount"] for n in cart["paymentNotices"]] == [3000, 1250, 420]
    assert cart["returnUrls"]["returnOkUrl"] == (
        f"https://portale.comune.example.it/esito?idPagamento={out['id']}&esito=OK"
    )

    paid = httpx.post(
        f"{env.sandbox_url}/sandbox/checkout/{out['idSession']}/pay", json={}, timeout=60
    ).json()
    assert paid["outcome"] == "OK", paid
    assert [res["delivery"] for res in paid["results"]] == [{COMUNE: "delivered"}] * 3

    with db.session() as s:
        positions = s.exec(select(Position).where(Position.id_a2a == "A2A-TRIBUTI")).all()
        assert {p.id_pendenza: p.state for p in positions} == {
            "CK-1": "ESEGUITA",
            "CK-2": "ESEGUITA",
            "CK-3": "ESEGUITA",
        }
        assert len(s.exec(select(Receipt).where(Receipt.id_dominio == COMUNE)).all()) == 3
        attempts = s.exec(select(PaymentAttempt).order_by(PaymentAttempt.id)).all()
        ours = [a for a in attempts if a.kind == "CHECKOUT"]
        station = [a for a in attempts if a.kind == "NODE"]
        assert [(a.state, a.cart_id) for a in ours] == [("COMPLETED", out["id"])] * 3
        # the station's own attempts carry the cart in paymentNote: the session links them
        assert [(a.state, a.payment_note) for a in station] == [("COMPLETED", out["idSession"])] * 3
    with api(env, TRIBUTI) as c:
        session = c.get(f"/pagamenti/{out['id']}").json()
        by_session = c.get(f"/pagamenti/byIdSession/{out['idSession']}").json()
    assert session["stato"] == "ESEGUITO" and session["modello"] == "CHECKOUT"
    assert session["importo"] == 46.7 and len(session["tentativiStazione"]) == 3
    assert {p["stato"] for p in session["pendenze"]} == {"ESEGUITA"}
    assert by_session["id"] == out["id"] and by_session["stato"] == "ESEGUITO"


def test_a_cart_that_cannot_be_paid_is_refused(env: PlatformEnv, db: Database) -> None:
    make_position(db, "AN-1")
    make_position(db, "AN-2")
    with api(env, TRIBUTI) as c:
        patch = c.patch(
            env.platform_url + "/api/pendenze/v2/pendenze/A2A-TRIBUTI/AN-2",
            json=[{"op": "REPLACE", "path": "/stato", "value": "ANNULLATA"}],
        )
        assert patch.status_code == 200, patch.text
        refused = c.post(
            "/pagamenti",
            json={
                "pendenze": [
                    {"idA2A": "A2A-TRIBUTI", "idPendenza": "AN-1"},
                    {"idA2A": "A2A-TRIBUTI", "idPendenza": "AN-2"},
                ]
            },
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["codice"] == "PAG_002" and "AN-2" in refused.json()["descrizione"]
        unknown = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "NOPE"}]})
        assert (unknown.status_code, unknown.json()["codice"]) == (422, "PAG_001")
        twice = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "AN-1"}] * 2})
        assert (twice.status_code, twice.json()["codice"]) == (422, "PAG_007")
        six = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "AN-1"}] * 6})
        assert six.status_code == 400
    with db.session() as s:
        assert s.exec(select(PaymentAttempt)).all() == []
    assert checkout_calls(env) == []


def test_a_portal_pays_and_reads_only_what_it_may_see(env: PlatformEnv, db: Database) -> None:
    make_position(db, "OWN-1")
    with api(env, SCUOLA) as c:
        other = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "OWN-1"}]})
        assert other.status_code == 403, other.text
        inline = c.post("/pagamenti", json={"pendenze": [new_position("OWN-2", "3.00")]})
        assert inline.status_code == 403, inline.text
    with api(env, None) as anon:
        assert (
            anon.post(
                "/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "OWN-1"}]}
            ).status_code
            == 401
        )
    with api(env, TRIBUTI) as c:
        mine = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "OWN-1"}]})
        assert mine.status_code == 201, mine.text
    with api(env, SCUOLA) as c:
        assert c.get(f"/pagamenti/{mine.json()['id']}").status_code == 403
        assert c.get("/pagamenti/sconosciuto").status_code == 404


def test_checkout_unavailable_fails_the_session(env: PlatformEnv, db: Database) -> None:
    make_position(db, "KO-1")
    rules = {"seed": 1, "rules": [{"path": "/checkout/", "errorRate": 1, "error": "http_503"}]}
    httpx.put(f"{env.sandbox_url}/sandbox/faults", json=rules, timeout=10).raise_for_status()
    with api(env, TRIBUTI) as c:
        r = c.post("/pagamenti", json={"pendenze": [{"idA2A": "A2A-TRIBUTI", "idPendenza": "KO-1"}]})
        assert r.status_code == 502, r.text
        assert r.json()["categoria"] == "PAGOPA"
        session = c.get(r.headers["location"].replace("/api/pagamento/v2", "")).json()
    assert session["stato"] == "FALLITO"
    assert session["pendenze"][0]["statoTentativo"] == "FAILED"
    faults = httpx.get(f"{env.sandbox_url}/sandbox/faults", timeout=10).json()
    assert faults["rules"][0]["hits"] == 3  # the configured attempts, then the session fails
