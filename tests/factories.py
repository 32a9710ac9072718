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
