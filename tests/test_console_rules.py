"""Rules of the operator console without a database or a browser: lockout, redirects, reasons, roles, the
health of the stages, and Italian labels that all have their English translation."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from rules.console import (
    LOCKOUT_FAILURES,
    LOCKOUT_PERIOD,
    STAGES,
    FlowRunInfo,
    after_failure,
    clean_reason,
    is_locked,
    may,
    safe_next,
    stage_health,
)
from web.console.i18n import EN, format_date, format_datetime, format_eur, translator

NOW = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
CONSOLE = Path(__file__).resolve().parent.parent / "web" / "console"


def test_the_fifth_wrong_password_locks_for_fifteen_minutes_and_the_count_starts_again() -> None:
    failures, locked = 0, None
    for _ in range(LOCKOUT_FAILURES - 1):
        failures, locked = after_failure(failures, NOW)
        assert locked is None
    failures, locked = after_failure(failures, NOW)
    assert (failures, locked) == (0, NOW + LOCKOUT_PERIOD) and LOCKOUT_PERIOD == timedelta(minutes=15)
    assert is_locked(locked, NOW + timedelta(minutes=14, seconds=59))
    assert not is_locked(locked, NOW + LOCKOUT_PERIOD) and not is_locked(None, NOW)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/console/positions/3?x=1", "/console/positions/3?x=1"),
        ("/console/", "/console/"),
        (None, "/console/"),
        ("", "/console/"),
        ("https://evil.example/console/", "/console/"),
        ("//evil.example/console/", "/console/"),
        ("/console\\@evil.example", "/console/"),
        ("/api/pendenze/v2/pendenze", "/console/"),
        ("javascript:alert(1)", "/console/"),
        ("/consolex/", "/console/"),
    ],
)
def test_after_login_only_console_paths(target: str | None, expected: str) -> None:
    assert safe_next(target, root="/console", default="/console/") == expected


def test_a_reason_is_required_and_bounded() -> None:
    assert clean_reason("  Richiesta   del\ncontribuente ") == "Richiesta del contribuente"
    for empty in (None, "", "   \n"):
        with pytest.raises(ValueError, match="reason: required"):
            clean_reason(empty)
    with pytest.raises(ValueError, match="at most 255"):
        clean_reason("x" * 256)


def test_roles() -> None:
    assert not any(
        may("READONLY", a)
        for a in ("annul", "restore", "decide_match", "not_pagopa", "upload", "registry", "audit")
    )
    assert may("OPERATOR", "annul") and may("OPERATOR", "upload") and not may("OPERATOR", "registry")
    assert may("ADMIN", "registry") and may("ADMIN", "audit") and not may("SOMEONE", "annul")


def test_stage_health_takes_each_flows_newest_run_and_links_it() -> None:
    runs = [
        FlowRunInfo("reconcile", "r-2", "new-run", "FAILED", NOW),
        FlowRunInfo("reconcile", "r-1", "old-run", "COMPLETED", NOW - timedelta(hours=1)),
        FlowRunInfo("receipts", "r-3", "ok-run", "COMPLETED", NOW),
        FlowRunInfo("ingest-treasury", "r-4", "crash", "CRASHED", NOW),
    ]
    backlog = {"reconcile": {"backlog": 3, "failures_24h": 1}}
    health = {h.stage: h for h in stage_health(backlog=backlog, runs=runs, ui_url="http://prefect:4200/")}
    assert list(health) == list(STAGES)
    assert health["reconcile"].failed and health["reconcile"].last_run.run_name == "new-run"
    assert health["reconcile"].run_url == "http://prefect:4200/runs/flow-run/r-2"
    assert (health["reconcile"].backlog, health["reconcile"].failures_24h) == (3, 1)
    assert not health["receipts"].failed and health["ingest-treasury"].failed
    assert health["publish-positions"].last_run is None and health["publish-positions"].run_url is None
    assert stage_health(backlog={}, runs=runs, ui_url=None)[STAGES.index("reconcile")].run_url is None


def _shown_strings(node: ast.expr) -> set[str]:
    """The string constants an expression can evaluate to (through conditional expressions)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _shown_strings(node.body) | _shown_strings(node.orelse)
    return set()


def _texts_used() -> set[str]:
    """Every Italian string the console shows through _(): template literals, titles, flashes, labels."""
    found: set[str] = set()
    for template in (CONSOLE / "templates").rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        found |= set(re.findall(r'_\("([^"]+)"\)', text)) | set(re.findall(r"_\('([^']+)'\)", text))
        for line in text.splitlines():
            if line.startswith("{% set kinds"):
                found |= set(re.findall(r':\s*"([^"]+)"', line))
    for module in CONSOLE.rglob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("render", "Entity"):
                    for kw in node.keywords:
                        if kw.arg == "title" and isinstance(kw.value, ast.Constant):
                            found.add(kw.value.value)
                elif name == "flash" and len(node.args) > 1:
                    found |= _shown_strings(node.args[1])
                elif name == "Field" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    found.add(node.args[1].value)
    from web.console.render import NAV

    found |= {label for _, label, _ in NAV}
    return found


def test_every_label_has_its_english_translation() -> None:
    used = _texts_used()
    assert len(used) > 150
    missing = sorted(t for t in used if t not in EN)
    assert missing == []


def test_numbers_and_dates_in_each_language() -> None:
    assert (
        format_eur(Decimal("1234.5"), "it") == "1.234,50 €"
        and format_eur(Decimal("1234.5"), "en") == "€1,234.50"
    )
    assert format_eur(None, "it") == "–"
    summer = datetime(2026, 7, 1, 22, 30, tzinfo=UTC)  # already 2 July in Italy
    assert format_datetime(summer, "it") == "02/07/2026 00:30:00"
    assert format_datetime(summer, "en") == "2026-07-02 00:30:00"
    assert format_date(summer.date(), "it") == "01/07/2026"
    assert translator("en")("Cruscotto") == "Dashboard" and translator("it")("Cruscotto") == "Cruscotto"
    assert translator("en")("un testo senza traduzione") == "un testo senza traduzione"


def test_the_session_key_is_generated_once_per_install_and_kept_private(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from models.settings import Settings
    from web.console.security import session_secret

    settings = Settings(work_dir=tmp_path / "var")
    first = session_secret(settings)
    assert len(first) >= 32 and session_secret(settings) == first
    key_file = tmp_path / "var" / "console-secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and list(key_file.parent.iterdir()) == [key_file]
    assert session_secret(Settings(work_dir=tmp_path / "var", secret_key=SecretStr("k" * 40))) == "k" * 40
