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
_NAME_EXPECTED = (
    "expected a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
    "starting and ending with a letter or digit"
)


def is_name(value: object) -> bool:
    """A DNS-1123 label, the whole string (``fullmatch``: ``"fraud\\n"`` is not a name)."""
    return isinstance(value, str) and len(value) <= 63 and _NAME_RE.fullmatch(value) is not None


def name_problem(value: object) -> str | None:
    """Why ``value`` is not an object name (None when it is one); the text names what was
    expected, for API errors that cannot go through pydantic."""
    if is_name(value):
        return None
    return f"invalid name {value!r}: {_NAME_EXPECTED}"


def _name(value: str) -> str:
    if not is_name(value):
        raise ValueError(_NAME_EXPECTED)
    return value


#: A Kubernetes object name (DNS-1123 label), valid on a cluster as well as embedded.
Name = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "maxLength": 63, "pattern": _NAME_RE.pattern}),
]

#: a label key's name part (and a label value, when not empty): Kubernetes' rules
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: a label key's optional prefix: a DNS-1123 subdomain
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: object) -> str | None:
    """Why ``key`` is not a Kubernetes label key (``[prefix/]name``), or None when it is one."""
    expected = (
        "expected a label key '[prefix/]name': a name of at most 63 letters, digits, '-', '_' "
        "or '.', starting and ending with a letter or digit, after an optional DNS subdomain "
        "prefix of at most 253 characters"
    )
    if not isinstance(key, str):
        return f"invalid label key {key!r}: {expected}"
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _SUBDOMAIN_RE.fullmatch(prefix)):
        return f"invalid label key {key!r}: {expected}"
    if len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        return f"invalid label key {key!r}: {expected}"
    return None


def label_value_problem(value: object) -> str | None:
    """Why ``value`` is not a Kubernetes label value (empty, or a label name), or None."""
    if isinstance(value, str) and (
        value == "" or (len(value) <= 63 and _LABEL_NAME_RE.fullmatch(value))
    ):
        return None
    return (
        f"invalid label value {value!r}: expected at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit (or empty)"
    )


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        problem = label_key_problem(key) or label_value_problem(item)
        if problem is not None:
            raise ValueError(problem)
    return value


#: ``metadata.labels``: keys and values as Kubernetes accepts them (whole-string matches).
Labels = Annotated[dict[str, str], AfterValidator(_labels)]

_MODEL_REF_RE = re.compile(
    r"^(?P<name>[a-z0-9]([-a-z0-9_.]*[a-z0-9])?)"
    r"(?:(?::(?P<version>[0-9]+|latest))|(?:@(?P<stage>staging|production|archived)))?$"
)


def is_model_name(value: object) -> bool:
    """A registry model name (the part of a reference before ``:`` or ``@``), the whole
    string: what registries may use as a folder or key component."""
    if not isinstance(value, str) or len(value) > 253:
        return False
    match = _MODEL_REF_RE.fullmatch(value)
    return match is not None and match["name"] == value


def _model_ref(value: str) -> str:
    if len(value) > 300 or not _MODEL_REF_RE.fullmatch(value):
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
    match = _MODEL_REF_RE.fullmatch(ref) if len(ref) <= 300 else None
    if match is None:
        raise ValueError(
            f"invalid model reference {ref!r}: expected a model reference 'name', "
            "'name:VERSION' or 'name@STAGE'"
        )
    version = match["version"]
    return match["name"], (None if version in (None, "latest") else version), match["stage"]
