"""Redaction of secrets from text that is logged, journaled or shown: by field name and by known value."""

from __future__ import annotations

import re
import threading

MASK = "***"
_SECRET_NAMES = (
    r"password|passwd|pwd|secret|api[-_]?key|apikey|subscription[-_]?key|ocp-apim-subscription-key|"
    r"authorization|x-api-key|client[-_]?secret|private[-_]?key|passphrase"
)
# <password>x</password>, <ns:password>x</ns:password>
_XML_ELEMENT = re.compile(rf"(<(?:[\w.-]+:)?(?:{_SECRET_NAMES})\b[^>]*>)([^<]*)(</)", re.IGNORECASE)
# "password": "x"  /  'password': 'x'
_JSON_PAIR = re.compile(rf"([\"'](?:{_SECRET_NAMES})[\"']\s*:\s*)([\"'])(.*?)(?<!\\)\2", re.IGNORECASE)
# Header lines "Authorization: Basic x" and query/form pairs "password=x"
_HEADER = re.compile(rf"(^|\n)((?:{_SECRET_NAMES})\s*:\s*)([^\r\n]*)", re.IGNORECASE)
_PAIR = re.compile(rf"([?&;\s]|^)((?:{_SECRET_NAMES})=)([^&;\s]*)", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@/\s]+)(@)", re.IGNORECASE)

_known: set[str] = set()
_known_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that ``redact`` masks it wherever it appears."""
    if value and len(value) >= 4:
        with _known_lock:
            _known.add(value)


def is_secret_name(name: str) -> bool:
    """Whether a field or header name denotes a secret."""
    return re.fullmatch(_SECRET_NAMES, name.strip(), re.IGNORECASE) is not None


def redact(text: str | None) -> str | None:
    """The text with every secret masked (known values, and values of secret-named fields)."""
    if not text:
        return text
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    text = _XML_ELEMENT.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    text = _JSON_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)


def redact_mapping(headers: dict[str, str]) -> dict[str, str]:
    """A copy of a header or parameter mapping with secret-named values masked."""
    return {k: (MASK if is_secret_name(k) else (redact(v) or v)) for k, v in headers.items()}
