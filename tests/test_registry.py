"""The registry: validation naming entry and field, idempotent all-or-nothing apply, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlmodel import func, select

from models.registry import ApplicationGrant, Creditor, IbanAccount, RegistryAudit, Station
from rules.registry import RegistryError, parse_registry
from store.registry import apply_registry
from tests.conftest import Database
from tests.factories import EXAMPLE_REGISTRY, example_registry_data, load_example_registry


def test_example_registry_applies_then_changes_nothing(db: Database) -> None:
    with db.session() as s:
        first = load_example_registry(s)
        assert first.changed
        assert first.counts["creditor"]["created"] == 3
        assert first.counts["station"]["created"] == 2
        assert first.counts["application"]["created"] == 2
    with db.session() as s:
        second = load_example_registry(s)
        assert not second.changed
        assert second.counts["creditor"]["unchanged"] == 3
        creditor = s.exec(select(Creditor).where(Creditor.id_dominio == "00987654324")).one()
        assert (creditor.aux_digit, creditor.application_code) == (0, "01")
        postal = s.exec(select(IbanAccount).where(IbanAccount.iban == "IT66X0760103200000012345678")).one()
        assert postal.postal is True  # derived from the Poste ABI, not stated in the file
        audits = s.exec(select(func.count()).select_from(RegistryAudit)).one()
        assert audits > 0


def test_a_changed_value_is_updated_and_audited(db: Database) -> None:
    with db.session() as s:
        load_example_registry(s)
    data = example_registry_data()
    data["creditors"][0]["name"] = "Comune di Esempio Nuovo"
    data["applications"][0]["grants"] = [{"id_dominio": "01234567897"}]
    with db.session() as s:
        report = apply_registry(s, spec=parse_registry(data))
        s.commit()
        assert report.counts["creditor"]["updated"] == 1
        assert report.counts["application_grant"]["removed"] == 1
        grants = s.exec(select(ApplicationGrant).where(ApplicationGrant.id_a2a == "A2A-TRIBUTI")).all()
        assert [(g.id_dominio, g.debt_type) for g in grants] == [("01234567897", "*")]
        audit = s.exec(select(RegistryAudit).where(RegistryAudit.entity == "creditor",
                                                   RegistryAudit.action == "update")).one()
        assert audit.changes == {"name": ["Comune di Esempio", "Comune di Esempio Nuovo"]}


@pytest.mark.parametrize(
    ("mutate", "entry", "field"),
    [
        (lambda d: d["creditors"][1].update(id_dominio="8000123456X"), "creditors[1] (8000123456X)", "id_dominio"),
        (lambda d: d["creditors"][0]["ibans"][0].update(iban="IT00X0306909606000000123456"),
         "creditors[0] (01234567897)", "ibans[0].iban"),
        (lambda d: d["creditors"][2].update(application_code=None), "creditors[2] (00987654324)", ""),
        (lambda d: d["creditors"][0].update(station="77777777777_09"), "creditors[0] (01234567897)", "station"),
        (lambda d: d["applications"][0].update(password_hash="clear-text"), "applications[0] (A2A-TRIBUTI)",
         "password_hash"),
        (lambda d: d["applications"][1]["grants"][0].update(debt_types=["NOPE"]), "applications[1] (A2A-SCUOLA)",
         "grants[0].debt_types"),
        (lambda d: d["stations"][0].update(password_ref="hunter2"), "stations[0] (77777777777_01)", "password_ref"),
        (lambda d: d["operators"][1].update(creditors=["99999999999"]), "operators[1] (operatore.comune)",
         "creditors"),
        (lambda d: d["creditors"][0].update(colour="blue"), "creditors[0] (01234567897)", "colour"),
        (lambda d: d["treasury_sources"][0].update(account="IT65X0306909606000000654321"),
         "treasury_sources[0] (comune-tesoreria)", "account"),
        (lambda d: d["treasury_sources"][0].update(password_ref=None), "treasury_sources[0] (comune-tesoreria)", ""),
    ],
)
def test_invalid_registry_names_entry_and_field(mutate, entry: str, field: str) -> None:  # type: ignore[no-untyped-def]
    data = example_registry_data()
    mutate(data)
    with pytest.raises(RegistryError) as caught:
        parse_registry(data)
    problems = caught.value.problems
    assert any(p[0] == entry and p[1].startswith(field) for p in problems), problems
    assert entry in str(caught.value)


def test_checksum_failure_of_an_ec_code_is_not_an_error() -> None:
    data = example_registry_data()
    data["creditors"][0]["id_dominio"] = "77777777777"  # pagoPA's own test EC fails the checksum
    for app in data["applications"]:
        for grant in app["grants"]:
            if grant["id_dominio"] == "01234567897":
                grant["id_dominio"] = "77777777777"
    data["operators"][1]["creditors"] = ["77777777777"]
    data["treasury_sources"][0]["id_dominio"] = "77777777777"
    assert parse_registry(data).creditors[0].id_dominio == "77777777777"


def _cli(db_url: str, *args: str, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PAGOFLOW_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env,
                          input=input_, timeout=120, cwd=Path(__file__).resolve().parent.parent)


def test_cli_apply_is_idempotent_and_all_or_nothing(db: Database, tmp_path: Path) -> None:
    broken = example_registry_data()
    broken["creditors"][2]["ibans"][0]["iban"] = "IT99Z0000000000000000000000"
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(broken))
    bad = _cli(db.url, "config", "apply", str(bad_file))
    assert bad.returncode == 2
    assert "creditors[2] (00987654324): ibans[0].iban" in bad.stderr
    with db.session() as s:  # nothing of the valid part was applied
        assert s.exec(select(func.count()).select_from(Station)).one() == 0

    first = _cli(db.url, "config", "apply", str(EXAMPLE_REGISTRY))
    assert first.returncode == 0, first.stderr
    assert "creditor: 3 created" in first.stdout and "applied" in first.stdout
    second = _cli(db.url, "config", "apply", str(EXAMPLE_REGISTRY))
    assert second.returncode == 0
    assert "nothing changed" in second.stdout

    shown = _cli(db.url, "config", "show", "--json")
    snapshot = json.loads(shown.stdout)
    assert {c["id_dominio"] for c in snapshot["creditor"]} == {"01234567897", "80001234568", "00987654324"}
    assert all(a["password_hash"] in (None, "(set)") for a in snapshot["application"])
    assert "scrypt$" not in shown.stdout


def test_cli_hash_secret_makes_a_verifiable_hash(tmp_path: Path) -> None:
    from rules.credentials import verify_secret

    out = _cli(f"sqlite:///{tmp_path}/x.db", "config", "hash-secret", input_="s3cret-value\n")
    assert out.returncode == 0, out.stderr
    hashed = out.stdout.strip()
    assert verify_secret("s3cret-value", hashed)
    assert not verify_secret("s3cret-valuE", hashed)
