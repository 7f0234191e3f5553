"""The Gmail discovery document and a validator of JSON values against its ``schemas``.

:func:`load_gmail_discovery` reads ``googleapiclient/discovery_cache/documents/gmail.v1.json`` from
the installed google-api-python-client (a test dependency; the simulator itself runs without it).

:func:`validate` walks a discovery schema -- ``$ref``, ``type`` (object, array, string, integer,
number, boolean, any), ``properties``, ``additionalProperties``, ``items``, ``enum`` and the
``format``s ``int64``/``uint64`` (decimal *strings*), ``int32``/``uint32`` (ranged integers),
``byte`` (base64 or base64url) and ``google-datetime`` -- and returns human-readable problems:
unknown fields, wrong JSON types, bad formats. An empty list means the value conforms.
"""

from __future__ import annotations

import base64
import binascii
import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

_DOC_CACHE: dict[str, Any] = {}
_INT = re.compile(r"-?\d+")
_UINT = re.compile(r"\d+")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def discovery_path() -> Path:
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "google-api-python-client is not installed (pip install google-api-python-client)"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "discovery_cache" / "documents" / "gmail.v1.json"


def load_gmail_discovery() -> dict[str, Any]:
    """The Gmail v1 discovery document (a fresh deep copy each call)."""
    if "gmail" not in _DOC_CACHE:
        _DOC_CACHE["gmail"] = json.loads(discovery_path().read_text(encoding="utf-8"))
    return copy.deepcopy(_DOC_CACHE["gmail"])


def discovery_for(base_url: str) -> dict[str, Any]:
    """The discovery document pointed at a simulator (``rootUrl``/``baseUrl``/``mtlsRootUrl``).

    With it, ``build_from_document(doc, http=...)`` sends every call -- batch and media uploads
    included, which ignore ``client_options.api_endpoint`` for the host scheme -- to the simulator.
    """
    doc = load_gmail_discovery()
    root = base_url.rstrip("/") + "/"
    doc["rootUrl"] = root
    doc["mtlsRootUrl"] = root
    doc["baseUrl"] = root
    doc["batchPath"] = "batch/gmail/v1"
    return doc


def all_methods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def walk(resources: dict[str, Any]) -> None:
        for res in resources.values():
            for method in res.get("methods", {}).values():
                found[method["id"]] = method
            walk(res.get("resources", {}))

    walk(doc.get("resources", {}))
    return found


def _is_b64(value: str) -> bool:
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def validate(
    doc: dict[str, Any], schema_or_name: dict[str, Any] | str, value: Any, path: str = "$"
) -> list[str]:
    """Problems of ``value`` against a schema (a schema dict, or a schema name of ``doc``)."""
    schemas: dict[str, Any] = doc["schemas"]
    node: dict[str, Any] = {"$ref": schema_or_name} if isinstance(schema_or_name, str) else schema_or_name
    if "$ref" in node:
        ref = node["$ref"]
        if ref not in schemas:
            return [f"{path}: unknown schema {ref}"]
        node = schemas[ref]
    schema = node
    kind = schema.get("type")
    problems: list[str] = []
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected object, got {type(value).__name__}"]
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                problems += validate(doc, props[key], item, f"{path}.{key}")
            elif isinstance(extra, dict):
                problems += validate(doc, extra, item, f"{path}.{key}")
            else:
                problems.append(f"{path}: unknown field {key!r}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array, got {type(value).__name__}"]
        for i, item in enumerate(value):
            problems += validate(doc, schema.get("items", {}), item, f"{path}[{i}]")
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected string, got {type(value).__name__}"]
        fmt = schema.get("format")
        if fmt == "int64" and not _INT.fullmatch(value):
            problems.append(f"{path}: {value!r} is not an int64 string")
        elif fmt == "uint64" and not _UINT.fullmatch(value):
            problems.append(f"{path}: {value!r} is not a uint64 string")
        elif fmt == "byte" and not _is_b64(value):
            problems.append(f"{path}: not base64")
        elif fmt == "google-datetime" and not _DATETIME.fullmatch(value):
            problems.append(f"{path}: {value!r} is not an RFC 3339 timestamp")
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{path}: {value!r} not in {schema['enum']}")
        return problems
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: expected integer, got {type(value).__name__}"]
        fmt = schema.get("format")
        if fmt == "int32" and not -(2**31) <= value < 2**31:
            problems.append(f"{path}: {value} out of int32 range")
        if fmt == "uint32" and not 0 <= value < 2**32:
            problems.append(f"{path}: {value} out of uint32 range")
        return problems
    if kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return [f"{path}: expected number, got {type(value).__name__}"]
        return problems
    if kind == "boolean":
        if not isinstance(value, bool):
            return [f"{path}: expected boolean, got {type(value).__name__}"]
        return problems
    if kind in (None, "any"):
        return problems
    return [f"{path}: unsupported schema type {kind!r}"]


def validate_method_response(doc: dict[str, Any], method_id: str, body: Any) -> list[str]:
    """Problems of a method's response body (``None``/empty for methods without a response)."""
    method = all_methods(doc).get(method_id)
    if method is None:
        return [f"unknown method {method_id}"]
    ref = method.get("response", {}).get("$ref")
    if ref is None:
        return [] if body in (None, "", b"", {}) else [f"{method_id}: expected an empty body"]
    return validate(doc, ref, body)
