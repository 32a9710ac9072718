"""The sandbox settlement's scenario switches over real HTTP: a mismatched credit, money for an unknown flow,
the reversal of a named flow, payments reported without receipt, OPI document numbers through the year."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from rules.xmlsafe import parse_xml
from sandbox.state import CreditorConfig, PaidTransfer, PspConfig, SandboxState, StationConfig

EC, OTHER_EC = "77777777777", "01234567897"
PSP = "PPAYITR1XXX"
KEY = {"Ocp-Apim-Subscription-Key": "fdr-key"}
DAY = date(2026, 3, 10)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    from sandbox.server import start_in_thread

    running = start_in_thread(state=SandboxState(seed=5))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(sandbox: Any, tmp_path: Path) -> Iterator[httpx.Client]:
    """The sandbox reset with one station, two ECs keeping OPI journals, one PSP and a subscription key."""
    st: SandboxState = sandbox.state
    st.reset()
    with st.lock:
        st.stations["77777777777_01"] = StationConfig(id_station="77777777777_01", id_broker=EC, password="x")
        for ec, iban in ((EC, "IT60X0542811101000000123456"), (OTHER_EC, "IT21X0306909606000000123456")):
            st.creditors[ec] = CreditorConfig(fiscal_code=ec, name=f"EC {ec}", id_station="77777777777_01",
                                              id_broker=EC, iban=iban, treasury_dir=str(tmp_path / ec))
        st.psps.append(PspConfig(PSP, "PayPal Pagamenti SpA", PSP, f"{PSP}_01"))
        st.subscription_keys.add(KEY["Ocp-Apim-Subscription-Key"])
    with httpx.Client(base_url=sandbox.url, timeout=30) as c:
        yield c


def paid(sandbox: Any, *amounts: str, day: date = DAY, ec: str = EC) -> None:
    """Notices paid on ``day``, one transfer each, into the ledger."""
    with sandbox.state.lock:
        for n, amount in enumerate(amounts, start=1):
            sandbox.state.transfers.append(PaidTransfer(
                ec_fiscal_code=ec, iuv=f"01{day:%m%d}{n:011d}", iur=f"IUR{day:%m%d}{n:04d}", transfer_index=1,
                amount=Decimal(amount), outcome=0, pay_date=day, psp_id=PSP, receipt_id=f"R{day:%m%d}{n}"))


def settle(client: httpx.Client, day: date = DAY, **body: Any) -> dict[str, Any]:
    answer = client.post("/sandbox/settle", json={"date": day.isoformat(), **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def credits(answer: dict[str, Any], ec: str = EC) -> list[dict[str, Any]]:
    return [c for j in answer["journals"] if j["ec"] == ec for c in j["credits"]]


def test_mismatch_credits_another_amount_and_bad_differences_change_nothing(
        sandbox: Any, client: httpx.Client) -> None:
    paid(sandbox, "10.00", "5.50")
    for difference in ("0", "0.001", "abc"):
        bad = client.post("/sandbox/settle", json={"date": f"{DAY}", "noise": {"mismatch": difference}})
        assert bad.status_code == 422, difference
    too_much = client.post("/sandbox/settle", json={"date": f"{DAY}", "noise": {"mismatch": "-15.50"}})
    assert too_much.status_code == 422 and "mismatch" in too_much.json()["detail"]
    assert not any(t.settled for t in sandbox.state.transfers)
    answer = settle(client, noise={"mismatch": "-0.30"})
    (flow,) = answer["flows"]
    assert [(c["kind"], c["amount"], c["idFlusso"]) for c in credits(answer)] == [
        ("mismatch", "15.20", flow["idFlusso"])]
    paid(sandbox, "7.00", day=DAY + timedelta(days=1))
    seeded = settle(client, DAY + timedelta(days=1), noise={"mismatch": True})
    (credit,) = credits(seeded)
    assert credit["kind"] == "mismatch" and Decimal(credit["amount"]) not in (Decimal("7.00"), Decimal(0))


def test_unknown_flows_are_credited_but_never_published(sandbox: Any, client: httpx.Client) -> None:
    paid(sandbox, "10.00")
    answer = settle(client, noise={"unknown": 2})
    unknown = [c for c in credits(answer) if c["kind"] == "unknown"]
    assert len(unknown) == 2 and len(credits(answer, OTHER_EC)) == 2  # every EC's journal gets its own
    published = {f["idFlusso"] for f in answer["flows"]}
    for c in unknown:
        assert c["remittance"] == f"/PUR/LGPE-RIVERSAMENTO/URI/{c['idFlusso']}"
        assert c["idFlusso"] not in published and f"{DAY.isoformat()}{PSP}-U" in c["idFlusso"]
    listed = client.get(f"/fdr-org/service/v1/organizations/{EC}/fdrs", headers=KEY).json()
    assert {d["fdr"] for d in listed["data"]} == published


def test_reversal_of_a_named_flow(sandbox: Any, client: httpx.Client) -> None:
    paid(sandbox, "10.00", "2.25")
    first = settle(client, noise={"split": True})
    (flow,) = first["flows"]
    later = DAY + timedelta(days=1)
    paid(sandbox, "4.00", day=later)
    missing = client.post("/sandbox/settle", json={"date": later.isoformat(), "noise": {"reversal": "nope"}})
    assert missing.status_code == 404 and not sandbox.state.transfers[-1].settled
    answer = settle(client, later, noise={"reversal": flow["idFlusso"]})
    reversals = [c for c in credits(answer) if c["reversal"]]
    # the flow was paid in two credits: both are taken back, and nothing else
    assert sorted(c["amount"] for c in reversals) == sorted(c["amount"] for c in credits(first))
    assert {(c["kind"], c["idFlusso"]) for c in reversals} == {("reversal", flow["idFlusso"])}
    assert all(c["remittance"].startswith("STORNO /PUR/LGPE-RIVERSAMENTO/URI/") for c in reversals)
    assert not any(c["reversal"] for c in credits(answer, OTHER_EC))
    journal = parse_xml(Path(next(j for j in answer["journals"] if j["ec"] == EC)["path"]).read_bytes())
    operations = [m.findtext("tipo_operazione") for m in journal.iter("movimento_conto_evidenza")]
    assert sorted(operations) == ["ESEGUITO", "STORNATO", "STORNATO"]


def test_payments_reported_without_receipt(sandbox: Any, client: httpx.Client) -> None:
    paid(sandbox, "10.00")
    bad = client.post("/sandbox/settle", json={"date": DAY.isoformat(), "withoutReceipt": [
        {"fiscalCode": EC, "iuv": "01999", "amount": "3.00", "outcome": 0}]})
    assert bad.status_code == 422
    answer = settle(client, withoutReceipt=[{"fiscalCode": EC, "iuv": "01000000000000999", "amount": "3.00"},
                                            {"fiscalCode": EC, "iuv": "01000000000000888", "amount": "1.00",
                                             "outcome": 8, "iur": "MY-IUR"}])
    (flow,) = answer["flows"]
    assert (flow["count"], flow["total"]) == (3, "14.00")
    assert [(p["iuv"], p["outcome"], p["psp"]) for p in answer["withoutReceipt"]] == [
        ("01000000000000999", 9, PSP), ("01000000000000888", 8, PSP)]
    path = f"/fdr-org/service/v1/organizations/{EC}/fdrs/{flow['idFlusso']}/revisions/1/psps/{PSP}/payments"
    lines = client.get(path, headers=KEY).json()["data"]
    by_iuv = {line["iuv"]: line for line in lines}
    assert by_iuv["01000000000000999"]["payStatus"] == "NO_RPT"
    assert by_iuv["01000000000000999"]["iur"] == answer["withoutReceipt"][0]["iur"]
    assert (by_iuv["01000000000000888"]["payStatus"], by_iuv["01000000000000888"]["iur"]) == (
        "STAND_IN_NO_RPT", "MY-IUR")
    assert sum(t.settled for t in sandbox.state.transfers) == 3


def test_opi_document_numbers_go_on_through_the_year(sandbox: Any, client: httpx.Client) -> None:
    numbers = []
    for offset, amounts in enumerate((("1.00", "2.00"), ("3.00",), ("4.00", "5.00"))):
        day = DAY + timedelta(days=offset)
        paid(sandbox, *amounts, day=day)
        answer = settle(client, day, noise={"split": True})
        journal = parse_xml(Path(next(j for j in answer["journals"] if j["ec"] == EC)["path"]).read_bytes())
        numbers += [int(m.findtext("numero_documento") or 0)
                    for m in journal.iter("movimento_conto_evidenza")]
    assert numbers == list(range(1, len(numbers) + 1))  # a journal's sospesi never reuse an earlier number
