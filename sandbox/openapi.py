"""Validation of JSON bodies against the schemas of the official OpenAPI files (the subset pagoPA uses).

Supports ``$ref`` inside the same document, ``type``, ``required``, ``properties``, ``items``, ``enum``,
``pattern`` (searched, as JSON Schema does), ``minLength``/``maxLength``, ``minimum``/``maximum``
(``exclusiveMaximum`` as OpenAPI 3.0 booleans), ``minItems``/``maxItems``/``uniqueItems`` and the
``date-time`` format. Unknown properties are accepted, like the Spring services behind the specs;
``readOnly`` properties are accepted in requests and ignored by the handlers.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from models.settings import get_settings

GPD_SPEC = "openapi/gpd.json"
ACA_SPEC = "openapi/paCreatePosition.json"
BIZ_EVENTS_SPEC = "openapi/biz_events.json"
GPD_PAYMENTS_SPEC = "openapi/gpd_payments.json"


@lru_cache(maxsize=16)
def load_spec(relative: str) -> dict[str, Any]:
    """The parsed OpenAPI document at ``<specs>/pagopa-api/<relative>``."""
    return json.loads(get_settings().spec_path(relative).read_text(encoding="utf-8"))


def base_path(relative: str) -> str:
    """The path part of the spec's first server URL (e.g. ``/gpd/debt-positions-service/v1``)."""
    url = load_spec(relative)["servers"][0]["url"]
    path = re.sub(r"^[a-z]+://[^/]+", "", url)
    return path.rstrip("/")


@lru_cache(maxsize=512)
def _pattern(expr: str) -> re.Pattern[str]:
    return re.compile(expr)


def parse_datetime(value: str) -> datetime:
    """An ISO-8601 date-time; a trailing ``Z`` is accepted, and so is a local time without offset."""
    return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    return True


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"external $ref not supported: {ref}")
        node: Any = spec
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _check(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str, errors: list[str]) -> None:
    schema = _resolve(spec, schema)
    expected = schema.get("type")
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{where}: must not be null")
        return
    if expected and not _type_ok(value, expected):
        errors.append(f"{where}: expected {expected}, got {type(value).__name__}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            errors.append(f"{where}: does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                parse_datetime(value)
            except ValueError:
                errors.append(f"{where}: not an ISO-8601 date-time")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: less than {schema['minimum']}")
        if "maximum" in schema:
            limit = schema["maximum"]
            if value > limit or (schema.get("exclusiveMaximum") is True and value == limit):
                errors.append(f"{where}: greater than {limit}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems"):
            seen = [json.dumps(item, sort_keys=True) for item in value]
            if len(seen) != len(set(seen)):
                errors.append(f"{where}: items are not unique")
        if "items" in schema:
            for index, item in enumerate(value):
                _check(spec, schema["items"], item, f"{where}[{index}]", errors)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}.{name}: required" if where else f"{name}: required")
        for name, sub_schema in schema.get("properties", {}).items():
            if name in value:
                _check(spec, sub_schema, value[name], f"{where}.{name}" if where else name, errors)


def schema_errors(spec_relative: str, schema_name: str, value: Any) -> list[str]:
    """Every error of ``value`` against ``#/components/schemas/<schema_name>`` of the given spec."""
    spec = load_spec(spec_relative)
    errors: list[str] = []
    _check(spec, {"$ref": f"#/components/schemas/{schema_name}"}, value, "", errors)
    return errors
