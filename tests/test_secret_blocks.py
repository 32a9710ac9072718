"""``block:NAME`` secret references: read from a Prefect Secret block wherever they are used, never logged.

The production shape (tests/test_two_workers.py) keeps the GPD subscription key, the stations' passwords, the
SFTP password and the application's notification password in blocks; here, the places that read them: plain
code (the SFTP and notification connectors), an event loop (publication's senders, the web process's async
handlers), and a name with no block behind it.
"""

from __future__ import annotations

import asyncio

import pytest

from connectors.pagopa.http import subscription_key
from connectors.secrets import SecretNotFoundError, resolve_secret
from rules.redaction import redact

pytestmark = pytest.mark.prefect


def test_block_references_resolve_in_plain_code_and_in_an_event_loop(prefect_harness: None) -> None:
    from prefect.blocks.system import Secret

    Secret(value="gpd-key-from-a-block").save("pagoflow-test-gpd-key", overwrite=True)
    secret = resolve_secret("block:pagoflow-test-gpd-key")
    assert secret is not None and secret.get_secret_value() == "gpd-key-from-a-block"

    async def on_a_loop() -> str:  # how publication resolves a station's key: inside its event loop
        key = subscription_key("block:pagoflow-test-gpd-key")
        assert key is not None
        return key.get_secret_value()

    assert asyncio.run(on_a_loop()) == "gpd-key-from-a-block"
    # once read, the value is masked wherever it would be logged or journaled
    assert redact("sent gpd-key-from-a-block to GPD") == "sent *** to GPD"


def test_a_missing_block_is_a_clear_error(prefect_harness: None) -> None:
    with pytest.raises(SecretNotFoundError, match="no Prefect Secret block named pagoflow-test-missing"):
        resolve_secret("block:pagoflow-test-missing")

    async def on_a_loop() -> None:
        resolve_secret("block:pagoflow-test-missing")

    with pytest.raises(SecretNotFoundError):
        asyncio.run(on_a_loop())
