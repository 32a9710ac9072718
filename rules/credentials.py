"""Hashing and checking of inbound credentials (application passwords, API keys, operator passwords)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt parameters: about 30 ms per check on this class of machine, 16 MiB of memory.
_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: ``scrypt$N$r$p$salt$digest``."""
    if not secret:
        raise ValueError("an empty secret cannot be hashed")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"{_PREFIX}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def is_hash(value: str) -> bool:
    """Whether a string has the shape of a hash made by ``hash_secret``."""
    parts = value.split("$")
    return len(parts) == 6 and parts[0] == _PREFIX and all(p.isdigit() for p in parts[1:4])


def verify_secret(secret: str, hashed: str | None) -> bool:
    """Constant-time check of a secret against its hash; False for a missing or malformed hash."""
    if not hashed or not secret or not is_hash(hashed):
        return False
    _, n, r, p, salt, digest = hashed.split("$")
    try:
        candidate = hashlib.scrypt(secret.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(candidate, _unb64(digest))
