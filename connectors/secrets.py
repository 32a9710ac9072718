"""Resolution of secret references (``env:NAME`` or ``block:NAME``) held in the registry and settings."""

from __future__ import annotations

import os

from pydantic import SecretStr

from rules.redaction import register_secret


class SecretNotFoundError(LookupError):
    """A secret reference points at nothing."""

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        super().__init__(f"secret {ref!r} not available: {reason}")


def validate_ref(ref: str) -> None:
    """Raise ValueError unless ``ref`` is a supported reference; secrets never sit in the registry itself."""
    scheme, _, name = ref.partition(":")
    if scheme not in {"env", "block"} or not name:
        raise ValueError(
            "a secret is given as 'env:VARIABLE' or 'block:PREFECT_SECRET_BLOCK', never in clear"
        )


def resolve_secret(ref: str | None) -> SecretStr | None:
    """The secret a reference names; registered for redaction so it never reaches logs or the journal."""
    if not ref:
        return None
    validate_ref(ref)
    scheme, _, name = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretNotFoundError(ref, f"environment variable {name} is not set")
    else:
        from prefect.blocks.system import Secret  # imported lazily: prefect costs seconds to import

        try:
            # _sync: the same blocking call from a task, a flow, an event loop (publication's senders, the web
            # process's async handlers) or plain code; by default an event loop would get a coroutine back
            value = Secret.load(name, _sync=True).get()
        except ValueError as exc:
            raise SecretNotFoundError(ref, f"no Prefect Secret block named {name}") from exc
    register_secret(value)
    return SecretStr(value)
