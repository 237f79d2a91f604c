"""Annotated field types shared by every resource: quantities, durations, names.

Values are parsed at the boundary (pydantic validators) into plain numbers and
printed back canonically, so internal code never handles ``"2Gi"`` strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

from pilothouse.spec.quantity import (
    QuantityError,
    format_bytes,
    format_cpu_millis,
    format_duration,
    parse_bytes,
    parse_cpu_millis,
    parse_duration,
)

_INT_OR_STRING_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
}


def _cpu(value: Any) -> int:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return parse_cpu_millis(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc
    raise ValueError(f"expected a CPU quantity such as '500m' or 2, got {value!r}")


def _memory(value: Any) -> int:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return parse_bytes(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc
    raise ValueError(f"expected a memory quantity such as '512Mi' or '2Gi', got {value!r}")


def _duration(value: Any) -> float:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return parse_duration(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc
    raise ValueError(f"expected a duration such as '30s' or '5m', got {value!r}")


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("expected a quantity greater than zero")
    return value


#: CPU in millicores (``500m`` -> 500, ``2`` -> 2000); printed back as ``500m`` / ``2``.
CpuMillis = Annotated[
    int,
    BeforeValidator(_cpu),
    AfterValidator(_positive),
    PlainSerializer(format_cpu_millis, return_type=str, when_used="json"),
    WithJsonSchema({**_INT_OR_STRING_SCHEMA, "description": "CPU, e.g. '500m' or 2"}),
]

#: Memory in bytes (``2Gi`` -> 2147483648); printed back as ``2Gi``.
MemoryBytes = Annotated[
    int,
    BeforeValidator(_memory),
    AfterValidator(_positive),
    PlainSerializer(format_bytes, return_type=str, when_used="json"),
    WithJsonSchema({**_INT_OR_STRING_SCHEMA, "description": "Memory, e.g. '512Mi' or '2Gi'"}),
]

#: Duration in seconds (``5m`` -> 300.0); printed back as ``5m``.
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({**_INT_OR_STRING_SCHEMA, "description": "Duration, e.g. '30s', '5m', '1h30m'"}),
]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _name(value: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise ValueError(
            "expected a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


#: A Kubernetes object name (DNS-1123 label), valid on a cluster as well as embedded.
Name = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "maxLength": 63, "pattern": _NAME_RE.pattern}),
]

_MODEL_REF_RE = re.compile(
    r"^(?P<name>[a-z0-9]([-a-z0-9_.]*[a-z0-9])?)"
    r"(?:(?::(?P<version>[0-9]+|latest))|(?:@(?P<stage>staging|production|archived)))?$"
)


def _model_ref(value: str) -> str:
    if not _MODEL_REF_RE.match(value):
        raise ValueError(
            "expected a model reference 'name', 'name:VERSION' (a number or 'latest') "
            "or 'name@STAGE' (staging, production, archived)"
        )
    return value


#: ``fraud-detector``, ``fraud-detector:3``, ``fraud-detector:latest``, ``fraud-detector@staging``.
ModelRef = Annotated[
    str,
    AfterValidator(_model_ref),
    WithJsonSchema({"type": "string", "pattern": re.sub(r"\?P<\w+>", "", _MODEL_REF_RE.pattern)}),
]


def split_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Split a model reference into (name, version, stage); latest is (name, None, None)."""
    match = _MODEL_REF_RE.match(ref)
    if not match:
        raise ValueError(
            f"invalid model reference {ref!r}: expected a model reference 'name', "
            "'name:VERSION' or 'name@STAGE'"
        )
    version = match["version"]
    return match["name"], (None if version in (None, "latest") else version), match["stage"]
