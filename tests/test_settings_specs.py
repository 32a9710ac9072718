"""A missing pagoPA specifications folder is named, with the setting that points at it, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.settings import SpecsNotFoundError, get_settings
from tests.live_server import free_port

PAGOFLOW = Path(sys.executable).parent / "pagoflow"
PA_FOR_NODE_XSD = "wsdl/xsd/paForNode.xsd"


@pytest.fixture
def specs_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """PAGOFLOW_SPECS_DIR is the test's to set; the cached settings are dropped before and after."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_missing_specs_folder_names_the_folder_and_the_setting(
    specs_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-specs-here"
    specs_env.setenv("PAGOFLOW_SPECS_DIR", str(missing))
    with pytest.raises(SpecsNotFoundError) as raised:
        get_settings().spec_path(PA_FOR_NODE_XSD)
    message = str(raised.value)
    assert raised.value.path == missing.resolve() and raised.value.missing == "pagopa-api/"
    assert f"pagopa-api/ is missing under {missing.resolve()}." in message
    assert "Set PAGOFLOW_SPECS_DIR to the folder that holds pagopa-api/" in message


def test_a_specs_folder_without_the_file_names_the_file(
    specs_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pagopa-api").mkdir()
    specs_env.setenv("PAGOFLOW_SPECS_DIR", str(tmp_path))
    with pytest.raises(SpecsNotFoundError, match="PAGOFLOW_SPECS_DIR") as raised:
        get_settings().spec_path(PA_FOR_NODE_XSD)
    assert f"pagopa-api/{PA_FOR_NODE_XSD} is missing under {tmp_path}" in str(raised.value)


def test_the_configured_specs_folder_is_found(specs_env: pytest.MonkeyPatch) -> None:
    """The contrast: the real folder (the default, or the environment's) gives the schema file."""
    path = get_settings().spec_path(PA_FOR_NODE_XSD)
    assert path.is_file() and path.name == "paForNode.xsd"


@pytest.mark.parametrize("command", ["serve", "sandbox"])
def test_the_cli_stops_with_the_message_instead_of_a_traceback(command: str, tmp_path: Path) -> None:
    """`pagoflow serve` and `sandbox` refuse to start (they would listen, then fail on the first message)."""
    missing = tmp_path / "a folder [with brackets]" / "no-specs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGOFLOW_")}
    env |= {"PAGOFLOW_SPECS_DIR": str(missing), "NO_COLOR": "1", "COLUMNS": "60",
            "PAGOFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}
    # a command that does not stop would listen on the port until the timeout
    done = subprocess.run(  # noqa: S603 - this virtualenv's own console script
        [str(PAGOFLOW), command, "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=20, check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: pagoPA specifications not found: pagopa-api/ is missing under {missing.resolve()}. "
        "Set PAGOFLOW_SPECS_DIR to the folder that holds pagopa-api/ (by default ../shared/pagopa beside the "
        "project)."
    )
