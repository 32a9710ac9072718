"""The station's two other ways of knowing pagoPA, over real HTTP with real paVerifyPaymentNotice envelopes.

Station 01 (the Comune) takes the client-certificate fingerprint a TLS proxy writes in
``X-Client-Cert-Fingerprint``; station 02 (the Provincia, moved there for this test) takes an IP allow-list;
station 03 takes a subscription key. The allow-list sees the address uvicorn reports: ``X-Forwarded-For``
counts only from a trusted proxy (uvicorn's default, 127.0.0.1), and then its last hop the proxy did not add.
Callers that are not that proxy connect from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from rules.registry import RegistryError, parse_registry
from store.registry import apply_registry
from tests.conftest import Database
from tests.factories import example_registry_data, iban_pendenza
from tests.platform_env import web_on
from tests.soap_messages import STATION_VALUES, station_envelope
from web import soap

COMUNE, PROVINCIA = "01234567897", "00987654324"
CERT_STATION, IP_STATION, KEY_STATION = "77777777777_01", "77777777777_02", "77777777777_03"
FINGERPRINT = hashlib.sha256(b"pagoPA Node client certificate (test)").hexdigest()
OTHER_FINGERPRINT = hashlib.sha256(b"someone else's certificate").hexdigest()
KEY_03 = "caller-auth-station-03-key"
ALLOWED = ["198.51.100.7", "203.0.113.0/28", "2001:db8::7", "127.0.0.2"]
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")


@dataclass
class Station:
    """The web process with one payable notice per authenticated station."""

    url: str
    navs: dict[str, str]  # id_dominio -> NAV

    def verify(self, id_pa: str, *, station: str | None = None, headers: dict[str, str] | None = None,
               source: str | None = None) -> httpx.Response:
        """paVerifyPaymentNotice for the EC's notice, from 127.0.0.1 (the proxy) or from ``source``."""
        values = STATION_VALUES | {"idPA": id_pa, "nav": self.navs[id_pa],
                                   "idStation": station or (CERT_STATION if id_pa == COMUNE else IP_STATION)}
        transport = httpx.HTTPTransport(local_address=source) if source else None
        with httpx.Client(transport=transport, timeout=30) as http:
            return http.post(self.url + "/pagopa/paForNode",
                             content=station_envelope("paVerifyPaymentNoticeReq", values),
                             headers={"SOAPAction": "paVerifyPaymentNotice"} | (headers or {}))


def registry() -> dict[str, Any]:
    """The example registry with the three inbound methods, one per station."""
    data = example_registry_data()
    data["stations"][0]["auth"] = {"method": "CLIENT_CERT_HEADER", "secret_ref": "env:CALLER_AUTH_CERT_FP"}
    data["stations"][1]["auth"] = {"method": "IP_ALLOW_LIST", "allowed_ips": ALLOWED}
    data["stations"].append({"id_stazione": KEY_STATION, "auth": {"method": "SUBSCRIPTION_KEY",
                                                                  "secret_ref": "env:CALLER_AUTH_KEY_03"}})
    (provincia,) = [c for c in data["creditors"] if c["id_dominio"] == PROVINCIA]
    provincia["station"] = IP_STATION
    return data


def provincia_pendenza() -> dict[str, Any]:
    body = iban_pendenza(id_dominio=PROVINCIA, causale="TEFA caller auth")
    body["idTipoPendenza"] = "TEFA"
    body["voci"][0] |= {"ibanAccredito": "IT58X0103014200000000111222", "tipoContabilita": "ALTRO",
                        "codiceContabilita": "TEFA"}
    return body


@pytest.fixture(scope="module")
def station(_databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    database = _databases["sqlite"]
    env: dict[str, str | None] = {
        "PAGOFLOW_DATABASE_URL": database.url,
        "PAGOFLOW_WORK_DIR": str(tmp_path_factory.mktemp("work")),
        "CALLER_AUTH_CERT_FP": FINGERPRINT,
        "CALLER_AUTH_KEY_03": KEY_03,
        "FORWARDED_ALLOW_IPS": None,  # uvicorn trusts X-Forwarded-For from 127.0.0.1
    }

    def applied(session: Any) -> None:
        apply_registry(session, spec=parse_registry(registry()))

    with web_on(database, env=env, registry=applied) as (url, _app), httpx.Client(timeout=30) as http:
        navs = {}
        comune = iban_pendenza(id_dominio=COMUNE, causale="TARI caller auth")
        for id_dominio, body in ((COMUNE, comune), (PROVINCIA, provincia_pendenza())):
            r = http.put(f"{url}/api/pendenze/v2/pendenze/A2A-TRIBUTI/AUTH-{id_dominio}",
                         auth=TRIBUTI, json=body)
            assert r.status_code == 201, r.text
            navs[id_dominio] = r.json()["numeroAvviso"]
        yield Station(url=url, navs=navs)


def assert_answered(r: httpx.Response, company: str) -> None:
    """A normal, schema-valid verify answer for the notice (25.00 euros to ``company``)."""
    assert r.status_code == 200, (r.status_code, r.text[:300])
    payload = soap.body_payload(r.content)
    assert soap.payload_name(payload) == "paVerifyPaymentNoticeRes"
    assert soap.schema_errors(payload) == [], "the station answered invalid XML"
    assert soap.text(payload, "outcome") == "OK" and soap.find(payload, "fault") is None, r.text[:300]
    assert soap.text(payload, "paymentList", "paymentOptionDescription", "amount") == "25.00"
    assert soap.text(payload, "companyName") == company


def assert_refused(r: httpx.Response, case: object) -> None:
    """HTTP 401 with a SOAP Fault (Client, "caller not authenticated"), none of the protocol's faults."""
    assert r.status_code == 401, (case, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "text/xml; charset=utf-8"
    payload = soap.body_payload(r.content)
    assert soap.payload_name(payload) == "Fault", case
    assert soap.text(payload, "faultcode") == "soapenv:Client", case
    assert soap.text(payload, "faultstring") == "caller not authenticated", case
    assert b"PAA_" not in r.content and b"paVerifyPaymentNoticeRes" not in r.content, case


def test_the_certificate_station_answers_the_fingerprint_its_proxy_vouches_for(station: Station) -> None:
    assert_answered(station.verify(COMUNE, headers={"X-Client-Cert-Fingerprint": FINGERPRINT}),
                    "Comune di Esempio")


def test_the_certificate_station_refuses_a_wrong_or_missing_fingerprint(station: Station) -> None:
    one_off = FINGERPRINT[:-1] + ("1" if FINGERPRINT[-1] == "0" else "0")
    cases: dict[str, dict[str, str]] = {
        "no header": {},
        "empty header": {"X-Client-Cert-Fingerprint": ""},
        "another certificate": {"X-Client-Cert-Fingerprint": OTHER_FINGERPRINT},
        "one digit off": {"X-Client-Cert-Fingerprint": one_off},
        "a prefix": {"X-Client-Cert-Fingerprint": FINGERPRINT[:32]},
        "with more after it": {"X-Client-Cert-Fingerprint": FINGERPRINT + "00"},
        "in another header": {"X-Client-Cert": FINGERPRINT},
    }
    for case, headers in cases.items():
        assert_refused(station.verify(COMUNE, headers=headers), case)
    # from an allowed address: the allow-list of another station does not open this one
    assert_refused(station.verify(COMUNE, source="127.0.0.2"), "allowed address of station 02")


def test_a_subscription_key_does_not_open_a_station_of_another_method(station: Station) -> None:
    key_03 = {"Ocp-Apim-Subscription-Key": KEY_03}
    # the key is good for its own station: authenticated, then told that station 03 does not serve the Comune
    own = station.verify(COMUNE, station=KEY_STATION, headers=key_03)
    assert own.status_code == 200, own.text[:300]
    payload = soap.body_payload(own.content)
    assert soap.schema_errors(payload) == []
    assert soap.text(payload, "fault", "faultCode") == "PAA_STAZIONE_INT_ERRATA"
    assert_refused(station.verify(COMUNE, headers=key_03), "station 03's key at the certificate station")
    assert_refused(station.verify(PROVINCIA, headers=key_03), "station 03's key at the IP station")
    assert_refused(station.verify(COMUNE, headers={"Ocp-Apim-Subscription-Key": FINGERPRINT}),
                   "the certificate station's secret as a subscription key")
    assert_refused(station.verify(PROVINCIA, headers={"X-Client-Cert-Fingerprint": FINGERPRINT}),
                   "the certificate station's fingerprint at the IP station")


@pytest.mark.parametrize("forwarded_for, source", [
    ("198.51.100.7", None),  # through the proxy
    ("203.0.113.9", None),  # inside an allowed network
    ("2001:DB8:0:0::7", None),  # another spelling of an allowed IPv6 address
    ("::ffff:198.51.100.7", None),  # an allowed IPv4 address as a dual-stack socket reports it
    ("192.0.2.99, 198.51.100.7", None),  # the proxy appended the allowed peer to what the client sent
    (None, "127.0.0.2"),  # an allowed address connecting directly
])
def test_the_ip_station_answers_allowed_addresses(station: Station, forwarded_for: str | None,
                                                  source: str | None) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    assert_answered(station.verify(PROVINCIA, headers=headers, source=source), "Provincia Dimostrativa")


def test_the_ip_station_refuses_other_addresses_and_forged_forwarding(station: Station) -> None:
    cases: dict[str, tuple[str | None, str | None]] = {  # case: (X-Forwarded-For, source address)
        "the proxy itself": (None, None),
        "just outside the allowed network": ("203.0.113.16", None),
        "next to an allowed address": ("198.51.100.8", None),
        "not an address": ("not-an-ip", None),
        "an allowed address forged before the real peer": ("198.51.100.7, 192.0.2.99", None),
        "X-Forwarded-For from a caller that is not the proxy": ("198.51.100.7", "127.0.0.3"),
        "an allowed loopback address forged by another": ("127.0.0.2", "127.0.0.3"),
    }
    for case, (forwarded_for, source) in cases.items():
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        assert_refused(station.verify(PROVINCIA, headers=headers, source=source), case)


def test_an_allow_list_entry_the_station_could_not_match_is_refused_when_applied() -> None:
    # "10.0.0.5/24" is ambiguous (a host, or its network?): the registry names it instead of a station that
    # silently refuses everyone; a method without what it needs is refused the same way
    data = registry()
    data["stations"][1]["auth"] = {"method": "IP_ALLOW_LIST", "allowed_ips": [*ALLOWED, "10.0.0.5/24"]}
    data["stations"][0]["auth"] = {"method": "CLIENT_CERT_HEADER"}
    with pytest.raises(RegistryError) as refused:
        parse_registry(data)
    station_02, station_01 = data["stations"][1]["id_stazione"], data["stations"][0]["id_stazione"]
    assert (f"stations[1] ({station_02})", "auth.allowed_ips[4]") in [p[:2] for p in refused.value.problems]
    assert (f"stations[0] ({station_01})", "auth.secret_ref") in [p[:2] for p in refused.value.problems]
