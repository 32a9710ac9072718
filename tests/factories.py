"""Small factories for test data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session

from rules.registry import RegistrySpec, parse_registry
from store.registry import ApplyReport, apply_registry

EXAMPLE_REGISTRY = Path(__file__).resolve().parent.parent / "examples" / "registry.yaml"


def example_registry_data() -> dict[str, Any]:
    """The example registry as a fresh, mutable document."""
    return yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))


def example_registry() -> RegistrySpec:
    """The example registry, validated."""
    return parse_registry(example_registry_data())


def load_example_registry(session: Session) -> ApplyReport:
    """Apply the example registry and commit."""
    report = apply_registry(session, spec=example_registry())
    session.commit()
    return report


def iban_pendenza(*, id_dominio: str, causale: str, amount: str = "25.00") -> dict[str, Any]:
    """A PUT /pendenze body with one voce paid to the example registry's treasury IBAN."""
    return {
        "idTipoPendenza": "TARI",
        "idDominio": id_dominio,
        "causale": causale,
        "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "importo": amount,
        "dataScadenza": "2099-12-31",
        "voci": [
            {
                "idVocePendenza": "V1",
                "importo": amount,
                "descrizione": "Quota",
                "ibanAccredito": "IT21X0306909606000000123456",
                "tipoContabilita": "CAPITOLO",
                "codiceContabilita": "1010",
            }
        ],
    }
