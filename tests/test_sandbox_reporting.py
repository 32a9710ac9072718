"""The sandbox's settlement, FdR REST and legacy SOAP FR operations, over real HTTP on loopback."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from lxml import etree

from rules.xmlsafe import parse_xml
from sandbox.builders import journal_filename, validate_flow_xml, validate_journal
from sandbox.state import CreditorConfig, PaidTransfer, PspConfig, SandboxState, StationConfig

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
PPT = "http://ws.pagamenti.telematici.gov/"
PAY = {"p": "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"}
CAMT = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"}
KEY = {"Ocp-Apim-Subscription-Key": "fdr-key"}
FDR = "/fdr-org/service/v1"
NODO = "/nodo/nodoPerPa"
BROKER = "77777777777"
STATION = "77777777777_01"
# Test stations' credentials, not secrets.
PASSWORD = "Password01"  # noqa: S105
WRONG_PASSWORD = "Sbagliata99"  # noqa: S105
SHORT_PASSWORD = "short"  # noqa: S105
EC1, EC2 = "77777777777", "01234567890"
PSP_A, PSP_B = "PPAYITR1XXX", "ABI03069"
DAY = date(2024, 7, 26)


def it_iban(account: str) -> str:
    """A check-digit-valid Italian IBAN on a made-up account."""
    bban = f"X0306909606{account:0>12}"
    digits = "".join(str(int(c, 36)) for c in bban + "IT00")
    return f"IT{98 - int(digits) % 97:02d}{bban}"


# --- the running sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[object]:
    from sandbox.server import start_in_thread

    running = start_in_thread(state=SandboxState(seed=7))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def state(sandbox: object, tmp_path: Path) -> SandboxState:
    """The sandbox state, reset and configured: one broker, two ECs with treasury folders, two PSPs."""
    st: SandboxState = sandbox.state  # type: ignore[attr-defined]
    st.reset()
    with st.lock:
        st.stations[STATION] = StationConfig(id_station=STATION, id_broker=BROKER, password=PASSWORD)
        st.creditors[EC1] = CreditorConfig(
            fiscal_code=EC1,
            name="Comune di Prova",
            id_station=STATION,
            id_broker=BROKER,
            iban=it_iban("1"),
            treasury_dir=str(tmp_path / "tes1"),
        )
        st.creditors[EC2] = CreditorConfig(
            fiscal_code=EC2,
            name="Scuola Demo",
            id_station=STATION,
            id_broker=BROKER,
            iban=it_iban("2"),
            treasury_format="camt053",
            treasury_dir=str(tmp_path / "tes2"),
        )
        st.psps.extend(
            [
                PspConfig(PSP_A, "PayPal Pagamenti SpA", "PPAYITR1XXX", f"{PSP_A}_01"),
                PspConfig(PSP_B, "Banca Demo SpA", "BCITITMM", f"{PSP_B}_01"),
            ]
        )
        st.subscription_keys.add("fdr-key")
    return st


@pytest.fixture
def client(sandbox: object) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=30) as c:  # type: ignore[attr-defined]
        yield c


def add_transfers(
    st: SandboxState,
    *,
    day: date = DAY,
    count: int = 12,
    ec: str = EC1,
    psp: str = PSP_A,
    seed: int = 1,
    iuv_prefix: str = "01",
) -> list[PaidTransfer]:
    """``count`` paid notices (some with two transfers, outcomes 0/4/8/9) into the ledger."""
    rng = random.Random(seed)  # noqa: S311 - test data
    made = []
    for n in range(count):
        iuv = f"{iuv_prefix}{seed:03d}{n:012d}"
        outcome = (0, 0, 0, 4, 8, 9)[n % 6]
        for index in range(1, 2 + (n % 3 == 0)):
            made.append(
                PaidTransfer(
                    ec_fiscal_code=ec,
                    iuv=iuv,
                    iur=f"IUR{seed}{n:08d}",
                    transfer_index=index,
                    amount=Decimal(rng.randrange(100, 50000)) / 100,
                    outcome=outcome,
                    pay_date=day,
                    psp_id=psp,
                    receipt_id=None if outcome in (8, 9) else f"R{n}",
                )
            )
    with st.lock:
        st.transfers.extend(made)
    return made


def settle(client: httpx.Client, **body: object) -> dict:
    body.setdefault("date", DAY.isoformat())
    answer = client.post("/sandbox/settle", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def soap(client: httpx.Client, operation: str, **fields: str) -> etree._Element:
    """Call a legacy FR operation; the payload element of the answer."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soapenv": SOAP, "ws": PPT})
    body = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Body"), f"{{{PPT}}}{operation}")
    values = {
        "identificativoIntermediarioPA": BROKER,
        "identificativoStazioneIntermediarioPA": STATION,
        "password": PASSWORD,
        **fields,
    }
    for name in (
        "identificativoIntermediarioPA",
        "identificativoStazioneIntermediarioPA",
        "password",
        "identificativoDominio",
        "identificativoPSP",
        "identificativoFlusso",
    ):
        if values.get(name) is not None:
            etree.SubElement(body, name).text = values[name]
    answer = client.post(
        NODO, content=etree.tostring(env), headers={"SOAPAction": operation, "Content-Type": "text/xml"}
    )
    assert answer.status_code == 200, answer.text
    return parse_xml(answer.content).find(f"{{{SOAP}}}Body")[0]


def fetch_fr(client: httpx.Client, id_flusso: str, ec: str = EC1) -> bytes:
    answer = soap(
        client, "nodoChiediFlussoRendicontazione", identificativoDominio=ec, identificativoFlusso=id_flusso
    )
    assert answer.find("fault") is None, etree.tostring(answer)
    return base64.b64decode(answer.findtext("xmlRendicontazione"))


def list_fdrs(client: httpx.Client, ec: str = EC1, **params: object) -> dict:
    answer = client.get(f"{FDR}/organizations/{ec}/fdrs", params=params, headers=KEY)
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- settlement -----------------------------------------------------------------------------------


def test_settle_builds_one_valid_flow_per_psp_and_ec(state: SandboxState, client: httpx.Client) -> None:
    lines = add_transfers(state, ec=EC1, psp=PSP_A, seed=1) + add_transfers(state, ec=EC1, psp=PSP_B, seed=2)
    lines += add_transfers(state, ec=EC2, psp=PSP_A, seed=3, count=5)
    add_transfers(state, day=DAY + timedelta(days=1), seed=4, count=3)  # another day: not settled now
    answer = settle(client)
    flows = {(f["psp"], f["ec"]): f for f in answer["flows"]}
    assert set(flows) == {(PSP_A, EC1), (PSP_B, EC1), (PSP_A, EC2)}
    for (psp, ec), flow in flows.items():
        assert flow["idFlusso"].startswith(f"{DAY.isoformat()}{psp}-") and len(flow["idFlusso"]) <= 35
        assert flow["revision"] == 1
        mine = [t for t in lines if t.psp_id == psp and t.ec_fiscal_code == ec]
        assert flow["count"] == len(mine)
        assert Decimal(flow["total"]) == sum(t.amount for t in mine)
        xml = fetch_fr(client, flow["idFlusso"], ec)
        validate_flow_xml(xml)  # FlussoRiversamento_1_0_5.xsd
        root = parse_xml(xml)
        assert (
            root.findtext(
                "p:istitutoRicevente/p:identificativoUnivocoRicevente/p:codiceIdentificativoUnivoco",
                namespaces=PAY,
            )
            == ec
        )
        assert root.findtext("p:dataRegolamento", namespaces=PAY) == (DAY + timedelta(days=1)).isoformat()
        reported = {
            (
                p.findtext("p:identificativoUnivocoVersamento", namespaces=PAY),
                int(p.findtext("p:indiceDatiSingoloPagamento", namespaces=PAY)),
                p.findtext("p:codiceEsitoSingoloPagamento", namespaces=PAY),
            )
            for p in root.findall("p:datiSingoliPagamenti", PAY)
        }
        assert reported == {(t.iuv, t.transfer_index, str(t.outcome)) for t in mine}
    assert all(t.settled for t in lines)
    assert not any(t.settled for t in state.transfers if t.pay_date != DAY)
    again = settle(client)
    assert again["flows"] == [] and again["journals"] == []


def test_outcome_codes_reach_the_flow(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, count=6)
    flow = settle(client)["flows"][0]
    codes = {
        p.text
        for p in parse_xml(fetch_fr(client, flow["idFlusso"])).iterfind(
            "p:datiSingoliPagamenti/p:codiceEsitoSingoloPagamento", PAY
        )
    }
    assert codes == {"0", "4", "8", "9"}
    payments = client.get(
        f"{FDR}/organizations/{EC1}/fdrs/{flow['idFlusso']}/revisions/1/psps/{PSP_A}/payments", headers=KEY
    ).json()["data"]
    assert {p["payStatus"] for p in payments} == {"EXECUTED", "STAND_IN", "STAND_IN_NO_RPT", "NO_RPT"}


def test_journals_are_written_per_creditor_format(
    state: SandboxState, client: httpx.Client, tmp_path: Path
) -> None:
    add_transfers(state, ec=EC1, psp=PSP_A, seed=1)
    add_transfers(state, ec=EC1, psp=PSP_B, seed=2)
    add_transfers(state, ec=EC2, psp=PSP_B, seed=3, count=4)
    answer = settle(client, formats={EC1: ["opi", "cbi"]})
    journals = {(j["ec"], j["format"]): j for j in answer["journals"]}
    assert set(journals) == {(EC1, "opi"), (EC1, "cbi"), (EC2, "camt053")}
    flows = {f["idFlusso"]: f for f in answer["flows"]}
    regulation = DAY + timedelta(days=1)
    for (ec, fmt), journal in journals.items():
        path = Path(journal["path"])
        assert path.name == journal_filename(fmt=fmt, ec_fiscal_code=ec, day=regulation, sequence=1)
        assert path.parent == tmp_path / ("tes1" if ec == EC1 else "tes2")
        validate_journal(path.read_bytes(), fmt=fmt)
        credits = journal["credits"]
        # One credit per flow, the canonical remittance, the flow's total.
        assert sorted(c["idFlusso"] for c in credits) == sorted(i for i, f in flows.items() if f["ec"] == ec)
        for credit in credits:
            assert credit["remittance"] == f"/PUR/LGPE-RIVERSAMENTO/URI/{credit['idFlusso']}"
            assert credit["amount"] == flows[credit["idFlusso"]]["total"]
            assert credit["remittance"].encode() in path.read_bytes()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []


def test_seeded_settlement_gives_the_same_flows_and_bytes(state: SandboxState, client: httpx.Client) -> None:
    noise = {
        "unrelated": 2,
        "reversal": True,
        "split": True,
        "integrative": True,
        "remittance": ["wrapped", "upper", "truncated"],
        "txt": True,
    }

    def run(seed: int) -> tuple[list[tuple[str, bytes]], list[bytes]]:
        cfg = {k: v for k, v in state.creditors.items()}
        stations, psps, keys = dict(state.stations), list(state.psps), set(state.subscription_keys)
        state.reset()
        with state.lock:
            state.creditors.update(cfg)
            state.stations.update(stations)
            state.psps.extend(psps)
            state.subscription_keys.update(keys)
        for n, (ec, psp) in enumerate([(EC1, PSP_A), (EC1, PSP_B), (EC2, PSP_A), (EC2, PSP_B)]):
            add_transfers(state, ec=ec, psp=psp, seed=n + 1, count=8)
        answer = settle(client, seed=seed, noise=noise, formats={EC1: ["opi", "camt053", "cbi"]})
        flows = sorted((f["idFlusso"], fetch_fr(client, f["idFlusso"], f["ec"])) for f in answer["flows"])
        files = [Path(j["path"]).read_bytes() for j in sorted(answer["journals"], key=lambda j: j["path"])]
        return flows, files

    flows_1, files_1 = run(42)
    flows_2, files_2 = run(42)
    assert flows_1 == flows_2 and files_1 == files_2
    assert len(files_1) == 4
    flows_3, _files_3 = run(43)
    assert [i for i, _ in flows_3] != [i for i, _ in flows_1]


# --- noise ------------------------------------------------------------------------------------------


def _credits(answer: dict, ec: str = EC1) -> list[dict]:
    return next(j for j in answer["journals"] if j["ec"] == ec)["credits"]


def test_noise_split_integrative_unrelated_reversal(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, ec=EC1, psp=PSP_A, seed=1)
    add_transfers(state, ec=EC1, psp=PSP_B, seed=2)
    first = settle(client)
    add_transfers(state, day=DAY + timedelta(days=1), ec=EC1, psp=PSP_A, seed=3)
    add_transfers(state, day=DAY + timedelta(days=1), ec=EC1, psp=PSP_B, seed=4)
    add_transfers(state, day=DAY + timedelta(days=1), ec=EC1, psp=PSP_B, seed=5, iuv_prefix="02")
    answer = settle(
        client,
        date=(DAY + timedelta(days=1)).isoformat(),
        noise={"split": True, "integrative": True, "unrelated": 3, "reversal": True},
    )
    totals = {f["idFlusso"]: Decimal(f["total"]) for f in answer["flows"]}
    credits = _credits(answer)
    split = [c for c in credits if c["kind"] == "split"]
    assert len(split) == 2 and split[0]["idFlusso"] == split[1]["idFlusso"]
    assert sum(Decimal(c["amount"]) for c in split) == totals[split[0]["idFlusso"]]
    assert all(Decimal(c["amount"]) > 0 for c in split)
    integrative = [c for c in credits if c["kind"] == "integrative"]
    assert [c["remittance"].split("/URI/")[0] for c in integrative] == [
        "/PUR/LGPE-RIVERSAMENTO/TXT/0",
        "/PUR/LGPE-RIVERSAMENTO/TXT/1",
    ]
    assert sum(Decimal(c["amount"]) for c in integrative) == totals[integrative[0]["idFlusso"]]
    assert integrative[0]["idFlusso"] != split[0]["idFlusso"]
    unrelated = [c for c in credits if c["kind"] == "unrelated"]
    assert len(unrelated) == 3 and not any("LGPE" in c["remittance"] for c in unrelated)
    reversal = [c for c in credits if c["kind"] == "reversal"]
    earlier = {(c["amount"], c["remittance"]) for c in _credits(first)}
    assert len(reversal) == 1 and reversal[0]["reversal"] is True
    assert (reversal[0]["amount"], reversal[0]["remittance"].removeprefix("STORNO ")) in earlier
    journal = parse_xml(Path(next(j for j in answer["journals"] if j["ec"] == EC1)["path"]).read_bytes())
    assert [m.findtext("tipo_operazione") for m in journal.iter("movimento_conto_evidenza")].count(
        "STORNATO"
    ) == 1
    # Every flow is still accounted for by the money, once.
    by_flow: dict[str, Decimal] = {}
    for c in credits:
        if c["idFlusso"] and not c["reversal"]:
            by_flow[c["idFlusso"]] = by_flow.get(c["idFlusso"], Decimal(0)) + Decimal(c["amount"])
    assert by_flow == totals


def test_noise_remittance_variants(state: SandboxState, client: httpx.Client) -> None:
    extra = [
        PspConfig("GovPAYPsp1", "PSP Misto Maiuscole", "GOVPITMMXXX", "GovPAYPsp1_01"),
        PspConfig("BPPIITRRXXX", "Poste Demo", "BPPIITRRXXX", "BPPIITRRXXX_01"),
    ]
    state.psps.extend(extra)
    for n, psp in enumerate([PSP_A, PSP_B, "GovPAYPsp1", "BPPIITRRXXX"]):
        add_transfers(state, ec=EC2, psp=psp, seed=n + 1, count=3, iuv_prefix=f"0{n}")
    answer = settle(client, noise={"remittance": ["wrapped", "upper", "truncated"]})
    credits = {c["kind"]: c for c in _credits(answer, EC2)}
    assert {"wrapped", "upper", "truncated"} <= set(credits)
    truncated = credits["truncated"]
    canonical = f"/PUR/LGPE-RIVERSAMENTO/URI/{truncated['idFlusso']}"
    assert canonical.startswith(truncated["remittance"]) and truncated["remittance"] != canonical
    upper = credits["upper"]
    assert "GovPAYPsp1" in upper["idFlusso"]  # the case change shows on the flow id itself
    assert upper["remittance"].lower() == f"/PUR/LGPE-RIVERSAMENTO/URI/{upper['idFlusso']}".lower()
    assert upper["remittance"] != f"/PUR/LGPE-RIVERSAMENTO/URI/{upper['idFlusso']}"
    # camt.053 (EC2's format): the flow id straddles two Ustrd pieces of 140 characters.
    wrapped = credits["wrapped"]
    doc = parse_xml(Path(_journal(answer, EC2)["path"]).read_bytes())
    pieces = next(
        e.findall(".//c:Ustrd", CAMT)
        for e in doc.iterfind(".//c:Ntry", CAMT)
        if "".join(u.text for u in e.findall(".//c:Ustrd", CAMT)) == wrapped["remittance"]
    )
    assert len(pieces) == 2 and len(pieces[0].text) == 140
    assert wrapped["idFlusso"] not in pieces[0].text and wrapped["idFlusso"] not in pieces[1].text
    assert wrapped["idFlusso"] in pieces[0].text + pieces[1].text


def _journal(answer: dict, ec: str) -> dict:
    return next(j for j in answer["journals"] if j["ec"] == ec)


def test_money_can_arrive_before_its_flow(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, ec=EC1, psp=PSP_A, seed=1)
    add_transfers(state, ec=EC1, psp=PSP_B, seed=2)
    answer = settle(client, noise={"early": True})
    early = [f for f in answer["flows"] if f["deferred"]]
    assert len(early) == 1 and early[0]["published"] is False
    early_id = early[0]["idFlusso"]
    assert early_id in {c["idFlusso"] for c in _credits(answer)}
    listed = {d["fdr"] for d in list_fdrs(client)["data"]}
    assert early_id not in listed and len(listed) == 1
    fault = soap(
        client, "nodoChiediFlussoRendicontazione", identificativoDominio=EC1, identificativoFlusso=early_id
    )
    assert fault.findtext("fault/faultCode") == "PPT_ID_FLUSSO_SCONOSCIUTO"
    later = settle(client, date=(DAY + timedelta(days=1)).isoformat())
    assert [f["idFlusso"] for f in later["publishedLate"]] == [early_id]
    assert early_id in {d["fdr"] for d in list_fdrs(client)["data"]}
    validate_flow_xml(fetch_fr(client, early_id))


# --- FdR REST -----------------------------------------------------------------------------------------


def test_fdr_listing_published_gt_and_paging(state: SandboxState, client: httpx.Client) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    add_transfers(state, ec=EC1, psp=PSP_A, seed=1, count=2)
    add_transfers(state, ec=EC1, psp=PSP_B, seed=2, count=2)
    settle(client, publishedAt=(now - timedelta(hours=3)).isoformat())
    second_day = DAY + timedelta(days=1)
    add_transfers(state, day=second_day, ec=EC1, psp=PSP_A, seed=3, count=2)
    newer = settle(client, date=second_day.isoformat(), publishedAt=(now - timedelta(hours=1)).isoformat())
    everything = list_fdrs(client)
    assert everything["count"] == 3 and everything["metadata"] == {
        "pageSize": 1000,
        "pageNumber": 1,
        "totPage": 1,
    }
    assert [d["revision"] for d in everything["data"]] == [1, 1, 1]
    assert everything["data"][-1]["fdr"] == newer["flows"][0]["idFlusso"]
    recent = list_fdrs(client, publishedGt=(now - timedelta(hours=2)).isoformat().replace("+00:00", "Z"))
    assert [d["fdr"] for d in recent["data"]] == [newer["flows"][0]["idFlusso"]]
    only_b = list_fdrs(client, pspId=PSP_B)
    assert [d["pspId"] for d in only_b["data"]] == [PSP_B]
    page_1, page_2 = list_fdrs(client, size=2, page=1), list_fdrs(client, size=2, page=2)
    assert page_1["metadata"]["totPage"] == 2 and page_1["count"] == 2 and page_2["count"] == 1
    assert {d["fdr"] for d in page_1["data"] + page_2["data"]} == {d["fdr"] for d in everything["data"]}
    assert list_fdrs(client, size=2, page=3)["data"] == []
    for params in ({"size": 1001}, {"size": 0}, {"page": 0}, {"page": "x"}, {"publishedGt": "yesterday"}):
        bad = client.get(f"{FDR}/organizations/{EC1}/fdrs", params=params, headers=KEY)
        assert bad.status_code == 400, params
        assert bad.json()["appErrorCode"].startswith("FDR-10") and bad.json()["httpStatusCode"] == 400
    # Older than the 30-day window: never listed, whatever publishedGt says.
    add_transfers(state, day=DAY + timedelta(days=2), seed=9, count=1)
    settle(
        client, date=(DAY + timedelta(days=2)).isoformat(), publishedAt=(now - timedelta(days=40)).isoformat()
    )
    assert list_fdrs(client, publishedGt="2000-01-01T00:00:00Z")["count"] == 3


def test_fdr_flow_larger_than_one_page(state: SandboxState, client: httpx.Client) -> None:
    lines = add_transfers(state, ec=EC1, psp=PSP_A, count=1700)
    flow = settle(client)["flows"][0]
    assert flow["count"] == len(lines) > 2000
    base = f"{FDR}/organizations/{EC1}/fdrs/{flow['idFlusso']}/revisions/1/psps/{PSP_A}"
    header = client.get(base, headers=KEY).json()
    assert header["fdr"] == flow["idFlusso"] and header["status"] == "PUBLISHED"
    assert header["totPayments"] == len(lines) and header["receiver"]["organizationId"] == EC1
    assert Decimal(str(header["sumPayments"])) == sum(t.amount for t in lines)
    collected, page = [], 1
    while True:
        answer = client.get(f"{base}/payments", params={"page": page, "size": 1000}, headers=KEY).json()
        collected += answer["data"]
        assert answer["metadata"]["totPage"] == 3
        if page >= answer["metadata"]["totPage"]:
            break
        page += 1
    assert [p["index"] for p in collected] == list(range(1, len(lines) + 1))
    assert sum(Decimal(str(p["pay"])) for p in collected) == sum(t.amount for t in lines)
    assert client.get(f"{base}/payments", params={"size": 0}, headers=KEY).status_code == 400


def test_fdr_errors_and_subscription_key(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, count=2)
    flow = settle(client)["flows"][0]
    base = f"{FDR}/organizations/{EC1}/fdrs"
    assert client.get(base).status_code == 401
    assert client.get(base, headers={"Ocp-Apim-Subscription-Key": "wrong"}).status_code == 401
    assert client.get(f"{FDR}/organizations/99999999999/fdrs", headers=KEY).status_code == 403
    missing = client.get(f"{base}/{DAY.isoformat()}{PSP_A}-S999/revisions/1/psps/{PSP_A}", headers=KEY)
    assert missing.status_code == 404 and missing.json()["appErrorCode"] == "FDR-3001"
    wrong_rev = client.get(f"{base}/{flow['idFlusso']}/revisions/2/psps/{PSP_A}/payments", headers=KEY)
    assert wrong_rev.status_code == 404
    assert (
        client.get(f"{base}/{flow['idFlusso']}/revisions/1/psps/{PSP_B}", headers=KEY).json()["appErrorCode"]
        == "FDR-3009"
    )
    assert client.get(base, params={"pspId": "NOPSP"}, headers=KEY).json()["appErrorCode"] == "FDR-2000"


def test_reissue_supersedes_the_older_revision(state: SandboxState, client: httpx.Client) -> None:
    lines = add_transfers(state, count=5)
    first = settle(client)["flows"][0]
    dropped = lines[0].iuv
    answer = settle(client, reissue=[{"idFlusso": first["idFlusso"], "dropIuvs": [dropped]}])
    [second] = answer["reissued"]
    assert second["idFlusso"] == first["idFlusso"] and second["revision"] == 2
    listed = list_fdrs(client)["data"]
    assert [(d["fdr"], d["revision"]) for d in listed] == [(first["idFlusso"], 2)]
    base = f"{FDR}/organizations/{EC1}/fdrs/{first['idFlusso']}/revisions"
    old = client.get(f"{base}/1/psps/{PSP_A}/payments", headers=KEY).json()["data"]
    new = client.get(f"{base}/2/psps/{PSP_A}/payments", headers=KEY).json()["data"]
    assert dropped in {p["iuv"] for p in old} and dropped not in {p["iuv"] for p in new}
    assert len(new) == len(old) - sum(1 for t in lines if t.iuv == dropped)
    header = client.get(f"{base}/2/psps/{PSP_A}", headers=KEY).json()
    assert (
        header["revision"] == 2
        and header["fdrDate"] > client.get(f"{base}/1/psps/{PSP_A}", headers=KEY).json()["fdrDate"]
    )
    xml = fetch_fr(client, first["idFlusso"])
    validate_flow_xml(xml)
    assert dropped not in xml.decode()
    assert (
        client.post(
            "/sandbox/settle", json={"date": DAY.isoformat(), "reissue": ["2024-01-01NOPE-1"]}
        ).status_code
        == 404
    )


# --- legacy SOAP FR operations ----------------------------------------------------------------------


def test_soap_elenco_and_flusso(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, ec=EC1, psp=PSP_A, seed=1)
    add_transfers(state, ec=EC2, psp=PSP_B, seed=2)
    answer = settle(client)
    ids = {f["ec"]: f["idFlusso"] for f in answer["flows"]}
    elenco = soap(client, "nodoChiediElencoFlussiRendicontazione", identificativoDominio=EC1)
    assert elenco.findtext("elencoFlussiRendicontazione/totRestituiti") == "1"
    assert [
        e.text for e in elenco.iterfind("elencoFlussiRendicontazione/idRendicontazione/identificativoFlusso")
    ] == [ids[EC1]]
    every = soap(client, "nodoChiediElencoFlussiRendicontazione")  # no EC: all of the broker's ECs
    assert every.findtext("elencoFlussiRendicontazione/totRestituiti") == "2"
    by_psp = soap(client, "nodoChiediElencoFlussiRendicontazione", identificativoPSP=PSP_B)
    assert [e.text for e in by_psp.iterfind(".//identificativoFlusso")] == [ids[EC2]]
    xml = fetch_fr(client, ids[EC2], EC2)
    validate_flow_xml(xml)
    assert parse_xml(xml).findtext("p:identificativoFlusso", namespaces=PAY) == ids[EC2]
    other_ec = soap(
        client, "nodoChiediFlussoRendicontazione", identificativoDominio=EC1, identificativoFlusso=ids[EC2]
    )
    assert other_ec.findtext("fault/faultCode") == "PPT_ID_FLUSSO_SCONOSCIUTO"
    wrong = soap(client, "nodoChiediElencoFlussiRendicontazione", password=WRONG_PASSWORD)
    assert wrong.findtext("fault/faultCode") == "PPT_AUTENTICAZIONE"
    unknown = soap(
        client, "nodoChiediElencoFlussiRendicontazione", identificativoStazioneIntermediarioPA="X_99"
    )
    assert unknown.findtext("fault/faultCode") == "PPT_STAZIONE_INT_PA_SCONOSCIUTA"
    bad_ec = soap(client, "nodoChiediElencoFlussiRendicontazione", identificativoDominio="99999999999")
    assert bad_ec.findtext("fault/faultCode") == "PPT_DOMINIO_SCONOSCIUTO"
    short = soap(client, "nodoChiediElencoFlussiRendicontazione", password=SHORT_PASSWORD)
    assert short.findtext("fault/faultCode") == "PPT_SINTASSI_XSD"


def test_unknown_reissue_changes_nothing(state: SandboxState, client: httpx.Client) -> None:
    add_transfers(state, count=2)
    bad = client.post("/sandbox/settle", json={"date": DAY.isoformat(), "reissue": ["nope"]})
    assert bad.status_code == 404
    assert not any(t.settled for t in state.transfers)
    assert client.post("/sandbox/settle", json={"date": DAY.isoformat(), "formats": "xml"}).status_code == 422
    assert (
        client.post("/sandbox/settle", json={"date": DAY.isoformat(), "noise": {"bogus": 1}}).status_code
        == 422
    )
    assert not any(t.settled for t in state.transfers)
    assert list_fdrs(client)["count"] == 0
    # A flow waiting for publication stays waiting when a later settlement fails.
    early = settle(client, noise={"early": True})["flows"][0]
    assert early["deferred"] is True
    with state.lock:
        state.transfers.append(
            PaidTransfer(
                ec_fiscal_code=EC1,
                iuv="01999",
                iur="X",
                transfer_index=1,
                amount=Decimal("0.00"),
                outcome=0,
                pay_date=DAY + timedelta(days=1),
                psp_id=PSP_A,
                receipt_id=None,
            )
        )
    zero = client.post("/sandbox/settle", json={"date": (DAY + timedelta(days=1)).isoformat()})
    assert zero.status_code == 422 and "amount" in zero.json()["detail"]
    assert not state.transfers[-1].settled and list_fdrs(client)["count"] == 0
    twice = client.post("/sandbox/settle", json={"date": DAY.isoformat(), "reissue": ["a", "a"]})
    assert twice.status_code == 422


def test_injected_soap_fault_keeps_the_answer_shape(state: SandboxState, client: httpx.Client) -> None:
    rule = {
        "path": NODO,
        "operation": "nodoChiediElencoFlussiRendicontazione",
        "errorRate": 1.0,
        "error": "soap_fault",
        "times": 1,
    }
    assert client.put("/sandbox/faults", json={"seed": 1, "rules": [rule]}).status_code == 200
    faulted = soap(client, "nodoChiediElencoFlussiRendicontazione")
    assert faulted.tag == f"{{{PPT}}}nodoChiediElencoFlussiRendicontazioneRisposta"
    assert faulted.findtext("fault/faultCode") == "PPT_SYSTEM_ERROR"
    assert (
        soap(client, "nodoChiediElencoFlussiRendicontazione").findtext(
            "elencoFlussiRendicontazione/totRestituiti"
        )
        == "0"
    )
