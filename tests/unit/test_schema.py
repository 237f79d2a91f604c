"""``json_schema``: self-contained (no $ref), camelCase, and agreeing with pydantic.

The ``jsonschema`` package is used when it is installed; otherwise a small validator
below checks documents against the subset of JSON Schema that these schemas use (and
fails on any keyword it does not know, so it cannot silently accept too much).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pilothouse.spec.loader import load_text
from pilothouse.spec.resources import API_VERSION, KINDS, Resource
from pilothouse.spec.schema import json_schema

try:  # pragma: no cover - depends on the environment
    import jsonschema
except ImportError:  # pragma: no cover - depends on the environment
    jsonschema = None

KIND_CLASSES = list(KINDS.values())
KIND_IDS = list(KINDS)

# --------------------------------------------------------------------------- tiny validator

_ANNOTATIONS = {"title", "description", "default", "x-kubernetes-int-or-string", "$schema"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _errors(schema: dict[str, Any], value: Any, path: str = "$") -> Iterator[str]:
    """Yield a message for every way ``value`` violates ``schema`` (subset of 2020-12)."""
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "type":
            types = rule if isinstance(rule, list) else [rule]
            if not any(_TYPES[t](value) for t in types):
                yield f"{path}: {value!r} is not of type {rule}"
        elif key == "const":
            if value != rule:
                yield f"{path}: {value!r} != const {rule!r}"
        elif key == "enum":
            if value not in rule:
                yield f"{path}: {value!r} not in {rule}"
        elif key == "anyOf":
            if all(list(_errors(sub, value, path)) for sub in rule):
                yield f"{path}: {value!r} matches no anyOf branch"
        elif key in ("properties", "required", "additionalProperties"):
            if not isinstance(value, dict):
                continue
            if key == "properties":
                for name, sub in rule.items():
                    if name in value:
                        yield from _errors(sub, value[name], f"{path}.{name}")
            elif key == "required":
                for name in rule:
                    if name not in value:
                        yield f"{path}: missing required {name!r}"
            else:
                known = schema.get("properties", {})
                for name, item in value.items():
                    if name in known:
                        continue
                    if rule is False:
                        yield f"{path}: additional property {name!r}"
                    elif isinstance(rule, dict):
                        yield from _errors(rule, item, f"{path}.{name}")
        elif key == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _errors(rule, item, f"{path}[{i}]")
        elif key == "minItems":
            if isinstance(value, list) and len(value) < rule:
                yield f"{path}: fewer than {rule} items"
        elif key == "minLength":
            if isinstance(value, str) and len(value) < rule:
                yield f"{path}: shorter than {rule}"
        elif key == "maxLength":
            if isinstance(value, str) and len(value) > rule:
                yield f"{path}: longer than {rule}"
        elif key == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                yield f"{path}: {value!r} does not match {rule!r}"
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if not _TYPES["number"](value):
                continue
            ok = {
                "minimum": value >= rule,
                "maximum": value <= rule,
                "exclusiveMinimum": value > rule,
                "exclusiveMaximum": value < rule,
            }[key]
            if not ok:
                yield f"{path}: {value!r} violates {key} {rule}"
        else:
            raise AssertionError(f"the test validator does not know keyword {key!r} at {path}")


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    if jsonschema is not None:  # pragma: no cover - depends on the environment
        validator = jsonschema.Draft202012Validator(schema)
        return [e.message for e in validator.iter_errors(document)]
    return list(_errors(schema, document))


def test_tiny_validator_self_check() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["a"],
        "properties": {
            "a": {"type": "integer", "minimum": 1},
            "b": {"anyOf": [{"type": "string", "pattern": "^x"}, {"type": "null"}]},
            "c": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "d": {"const": "k"},
            "e": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    good = {"a": 2, "b": "xy", "c": ["q"], "d": "k", "e": {"k": "v"}}
    assert schema_errors(schema, good) == []
    assert schema_errors(schema, {"a": 2, "b": None}) == []
    for bad in (
        {},
        {"a": 0},
        {"a": True},
        {"a": "1"},
        {"a": 1, "b": "y"},
        {"a": 1, "c": []},
        {"a": 1, "c": [1]},
        {"a": 1, "d": "j"},
        {"a": 1, "e": {"k": 1}},
        {"a": 1, "zzz": 1},
        [],
    ):
        assert schema_errors(schema, bad), bad


# --------------------------------------------------------------------------- structure


def _walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _keys(schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, node in _walk(schema):
        if isinstance(node, dict):
            for key in node:
                yield path, key


def _object_schema(node: dict[str, Any]) -> dict[str, Any]:
    """The object branch of an optional (anyOf [object, null]) property, or the node itself."""
    if "properties" in node:
        return node
    for branch in node.get("anyOf", []):
        if "properties" in branch:
            return branch
    raise AssertionError(f"no object schema in {node}")


@pytest.mark.parametrize("cls", KIND_CLASSES, ids=KIND_IDS)
def test_no_refs_or_defs(cls: type[Resource]) -> None:
    schema = json_schema(cls)
    offending = [(p, k) for p, k in _keys(schema) if k in ("$ref", "$defs", "definitions")]
    assert offending == []
    assert "#/$defs" not in json.dumps(schema)


@pytest.mark.parametrize("cls", KIND_CLASSES, ids=KIND_IDS)
def test_top_level_shape(cls: type[Resource]) -> None:
    schema = json_schema(cls)
    assert schema["type"] == "object"
    assert schema["title"] == cls.KIND
    assert API_VERSION in schema["description"]
    assert schema["$schema"].startswith("https://json-schema.org/")
    props = schema["properties"]
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(props)
    assert props["apiVersion"]["const"] == API_VERSION
    assert props["kind"]["const"] == cls.KIND
    assert "name" in props["metadata"]["properties"]
    assert "name" in props["metadata"]["required"]
    assert "metadata" in schema["required"]
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # plain JSON


@pytest.mark.parametrize("cls", KIND_CLASSES, ids=KIND_IDS)
def test_property_names_are_camel_case(cls: type[Resource]) -> None:
    schema = json_schema(cls)
    for path, node in _walk(schema):
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            for name in node["properties"]:
                assert "_" not in name, f"snake_case property {name!r} at {path}"
                assert name[:1].islower(), f"property {name!r} at {path}"


def test_training_job_spec_names() -> None:
    spec = json_schema(KINDS["TrainingJob"])["properties"]["spec"]
    props = spec["properties"]
    assert "restartPolicy" in props
    assert "workingDir" in props
    assert "restart_policy" not in props
    assert "command" in spec["required"]
    assert props["command"]["minItems"] == 1
    assert props["workers"]["minimum"] == 1
    restart = props["restartPolicy"]["properties"]
    assert "maxRestarts" in restart
    assert set(restart["backoff"]["properties"]) == {"initial", "max", "multiplier"}
    checkpoint = _object_schema(props["checkpoint"])
    assert set(checkpoint["properties"]) == {"interval", "keep"}


def test_model_deployment_spec_names() -> None:
    spec = json_schema(KINDS["ModelDeployment"])["properties"]["spec"]
    props = spec["properties"]
    assert "model" in spec["required"]
    readiness = props["probes"]["properties"]["readiness"]["properties"]
    assert "failureThreshold" in readiness
    assert props["model"]["type"] == "string"
    assert "pattern" in props["model"]
    assert set(props["runtime"]["enum"]) >= {"auto", "sklearn", "onnx"}


def test_quantities_are_int_or_string() -> None:
    props = json_schema(KINDS["TrainingJob"])["properties"]["spec"]["properties"]
    for name in ("cpu", "memory"):
        node = props["resources"]["properties"][name]
        assert node["x-kubernetes-int-or-string"] is True
        assert {"type": "string"} in node["anyOf"]
    interval = _object_schema(props["checkpoint"])["properties"]["interval"]
    assert interval["x-kubernetes-int-or-string"] is True


def test_schema_is_fresh_each_call() -> None:
    cls = KINDS["Queue"]
    first = json_schema(cls)
    first["properties"].clear()
    assert json_schema(cls)["properties"]


# --------------------------------------------------------------------------- agreement

VALID_DOCUMENTS: dict[str, str] = {
    "TrainingJob": f"""
apiVersion: {API_VERSION}
kind: TrainingJob
metadata:
  name: train
  labels: {{team: risk}}
spec:
  command: [python, train.py]
  args: ["--epochs", "3"]
  env: [{{name: SEED, value: "1"}}]
  workingDir: ./jobs
  workers: 2
  resources: {{cpu: 500m, memory: 2Gi, gpu: 1}}
  queue: research
  priority: 5
  checkpoint: {{interval: 10m, keep: 2}}
  restartPolicy:
    maxRestarts: 5
    backoff: {{initial: 250ms, max: 1m, multiplier: 1.5}}
  output: {{model: fraud, framework: sklearn}}
""",
    "ModelDeployment": f"""
apiVersion: {API_VERSION}
kind: ModelDeployment
metadata: {{name: fraud}}
spec:
  model: fraud@production
  runtime: sklearn
  resources: {{cpu: 1, memory: 512Mi}}
  replicas: {{min: 1, max: 3}}
  probes:
    readiness: {{path: /ready, period: 5s, timeout: 1s, failureThreshold: 2}}
""",
    "Queue": f"""
apiVersion: {API_VERSION}
kind: Queue
metadata: {{name: research}}
spec:
  weight: 2
  priority: 1
  quota: {{cpu: 8, memory: 32Gi, gpu: 2}}
""",
}


def _load(text: str) -> Resource:
    result = load_text(text, "doc.yaml")
    assert result.ok, [str(e) for e in result.errors]
    return result.resources[0]


@pytest.mark.parametrize("kind", KIND_IDS)
def test_valid_input_document_validates_against_schema(kind: str) -> None:
    text = VALID_DOCUMENTS[kind]
    _load(text)  # pydantic accepts it
    assert schema_errors(json_schema(KINDS[kind]), yaml.safe_load(text)) == []


@pytest.mark.parametrize("kind", KIND_IDS)
def test_stored_document_validates_against_schema(kind: str) -> None:
    resource = _load(VALID_DOCUMENTS[kind])
    stored = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert schema_errors(json_schema(KINDS[kind]), stored) == []
    # with status set, as the control plane stores it
    stored["status"] = {"phase": "Running", "replicas": 1}
    assert schema_errors(json_schema(KINDS[kind]), stored) == []


@pytest.mark.parametrize("kind", KIND_IDS)
def test_minimal_document_validates_against_schema(kind: str) -> None:
    document: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "x"}}
    if kind == "TrainingJob":
        document["spec"] = {"command": ["run"]}
    elif kind == "ModelDeployment":
        document["spec"] = {"model": "m"}
    _load(yaml.safe_dump(document))
    assert schema_errors(json_schema(KINDS[kind]), document) == []


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()

SCHEMA_AND_PYDANTIC_REJECT = [
    ("TrainingJob", "spec.command", []),
    ("TrainingJob", "spec.command", _DELETE),
    ("TrainingJob", "spec.workers", 0),
    ("TrainingJob", "spec.restartPolicy.maxRestarts", -1),
    ("TrainingJob", "spec.resources.gpu", -1),
    ("TrainingJob", "spec.resources.cpu", True),
    ("TrainingJob", "spec.comand", ["x"]),
    ("TrainingJob", "kind", "ModelDeployment"),
    ("TrainingJob", "apiVersion", "v1"),
    ("TrainingJob", "spec.env", [{"name": "1BAD"}]),
    ("ModelDeployment", "spec.model", _DELETE),
    ("ModelDeployment", "spec.model", "Fraud Model"),
    ("ModelDeployment", "spec.runtime", "torch"),
    ("ModelDeployment", "spec.replicass", 2),
    ("ModelDeployment", "spec.replicas", {"min": 0, "max": 0}),
    ("ModelDeployment", "spec.probes", {"readiness": {"path": "no-slash"}}),
    ("Queue", "spec.weight", 0),
    ("Queue", "spec.priority", 1001),
    ("Queue", "metadata", _DELETE),
    ("Queue", "metadata.name", _DELETE),
    ("Queue", "metadata.nam", "q"),
]


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    SCHEMA_AND_PYDANTIC_REJECT,
    ids=[f"{k}-{p}-{'del' if v is _DELETE else v!r}" for k, p, v in SCHEMA_AND_PYDANTIC_REJECT],
)
def test_schema_rejects_what_pydantic_rejects(kind: str, path: str, value: Any) -> None:
    document = _set(yaml.safe_load(VALID_DOCUMENTS[kind]), path, value)
    assert not load_text(yaml.safe_dump(document), "bad.yaml").ok
    assert schema_errors(json_schema(KINDS[kind]), document) != []


# --------------------------------------------------------------------------- known gaps


def test_bare_integer_replicas_validates_against_schema() -> None:
    document = yaml.safe_load(VALID_DOCUMENTS["ModelDeployment"])
    document["spec"]["replicas"] = 2
    _load(yaml.safe_dump(document))  # pydantic accepts it
    assert schema_errors(json_schema(KINDS["ModelDeployment"]), document) == []


def test_schema_rejects_bad_metadata_name() -> None:
    document = _set(yaml.safe_load(VALID_DOCUMENTS["Queue"]), "metadata.name", "Bad_Name")
    assert not load_text(yaml.safe_dump(document), "bad.yaml").ok
    assert schema_errors(json_schema(KINDS["Queue"]), document) != []
