"""JSON Schema for each kind, with references inlined.

Kubernetes CRDs accept a structural OpenAPI v3 schema without ``$ref``, so the
schema printed by ``pilothouse schema KIND`` is already in that shape and the
operator can embed it as ``openAPIV3Schema`` unchanged.
"""

from __future__ import annotations

from typing import Any

from pilothouse.spec.resources import API_VERSION, Resource


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = defs[ref.removeprefix("#/$defs/")]
            merged = {**_inline(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
            return merged
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def json_schema(cls: type[Resource]) -> dict[str, Any]:
    """The validation schema of one kind, self-contained (no ``$ref``/``$defs``)."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = cls.KIND
    schema["description"] = f"{cls.KIND} ({API_VERSION})"
    return schema
