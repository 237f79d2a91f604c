"""The CRDs of ``pilothouse kube crds`` are structural, by Kubernetes' rules, checked here by
walking every schema node (tests/k8s/test_crds.py has a real API server judge them)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from pilothouse.spec.crd import (
    DURATION_PATTERN,
    PRINTER_COLUMNS,
    QUANTITY_PATTERN,
    crd,
    crds,
    status_schema,
    structural_schema,
)
from pilothouse.spec.resources import (
    GROUP,
    KINDS,
    VERSION,
    ResourceRequests,
    RollingStrategy,
)
from pilothouse.spec.schema import json_schema
from pilothouse.spec.types import Duration

Schema = dict[str, Any]
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
JUNCTORS = ("anyOf", "oneOf", "allOf", "not")
#: JSON Schema words a CRD schema must not have (or that are not OpenAPI v3.0)
FORBIDDEN = (
    "$schema",
    "$ref",
    "$defs",
    "$id",
    "definitions",
    "const",
    "title",
    "prefixItems",
    "uniqueItems",
    "patternProperties",
    "dependencies",
    "dependentRequired",
    "if",
    "then",
    "else",
    "examples",
)
#: words not allowed inside anyOf/oneOf/allOf/not (value validations only)
NOT_IN_JUNCTORS = (
    "type",
    "description",
    "default",
    "nullable",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
)
#: the only places whose content is free-form. A new one is a decision: add it here.
PRESERVE_UNKNOWN = {
    "ModelDeployment": {
        "spec.replicas",  # 2 | {min, max}: no structural union (spec/crd.py)
        "status.internal",
        "status.history[].template",
    },
    "TrainingJob": {"status.internal", "status.outputModel.metrics"},
    "Queue": set(),
}


def openapi(kind: str) -> Schema:
    schema: Schema = crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def specified(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every node whose type Kubernetes requires: the root, each property, each
    additionalProperties schema and each array's items (not junctor branches)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from specified(child, f"{path}.{name}" if path else name)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from specified(extra, f"{path}[*]")
    if "items" in node:
        yield from specified(node["items"], f"{path}[]")


def junctor_nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema inside an anyOf/oneOf/allOf/not, anywhere."""
    for where, each in specified(node, path):
        for junctor in JUNCTORS:
            if junctor not in each:
                continue
            branches = each[junctor] if isinstance(each[junctor], list) else [each[junctor]]
            for index, branch in enumerate(branches):
                yield from _all_in(branch, f"{where}.{junctor}[{index}]")


def _all_in(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, node
    for key, value in node.items():
        if key in ("properties",) and isinstance(value, dict):
            for name, child in value.items():
                yield from _all_in(child, f"{path}.{name}")
        elif isinstance(value, dict):
            yield from _all_in(value, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _all_in(item, f"{path}.{key}[{index}]")


def every_dict(node: Any, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every mapping in the schema, whatever it is (for forbidden words)."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("enum", "default"):
                continue
            yield from every_dict(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from every_dict(item, f"{path}/{index}")


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- the schema: structural ------------------------------------------------------------------


def test_every_specified_node_has_a_type_or_an_allowed_extension(kind: str) -> None:
    untyped = [
        path
        for path, node in specified(openapi(kind))
        if not node.get("type")
        and not node.get("x-kubernetes-int-or-string")
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert not untyped, f"{kind}: nodes without a type: {untyped}"


def test_types_are_single_openapi_types_never_null(kind: str) -> None:
    for path, node in specified(openapi(kind)):
        if "type" in node:
            assert node["type"] in ("object", "array", "string", "integer", "number", "boolean"), (
                f"{kind} {path}: type {node['type']!r}"
            )


def test_no_json_schema_only_words_anywhere(kind: str) -> None:
    for path, node in every_dict(openapi(kind)):
        for word in FORBIDDEN:
            assert word not in node, f"{kind} {path}: {word}"
        for word in ("exclusiveMinimum", "exclusiveMaximum"):
            if word in node:
                assert node[word] is True, f"{kind} {path}: {word} must be the v3.0 boolean"
                assert ("minimum" if "Minimum" in word else "maximum") in node
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), (
                f"{kind} {path}: additionalProperties must be a schema, not a boolean"
            )
            assert "properties" not in node, f"{kind} {path}: properties with additionalProperties"


def test_no_null_branches_and_junctors_hold_value_validations_only(kind: str) -> None:
    schema = openapi(kind)
    for path, node in specified(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, f"{kind} {path}: int-or-string with a type"
            assert node.get("anyOf", INT_OR_STRING_ANY_OF) == INT_OR_STRING_ANY_OF, path
    for path, node in junctor_nodes(schema):
        assert node.get("type") != "null", f"{kind} {path}: a null branch (use nullable)"
        if node in INT_OR_STRING_ANY_OF and ".anyOf[" in path:
            continue  # Kubernetes' own int-or-string pattern
        for word in NOT_IN_JUNCTORS:
            assert word not in node, f"{kind} {path}: {word} inside a junctor"


def test_preserve_unknown_fields_only_where_the_data_is_free_form(kind: str) -> None:
    found = {
        path
        for path, node in specified(openapi(kind))
        if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert found == PRESERVE_UNKNOWN[kind]


def test_required_names_are_properties(kind: str) -> None:
    for path, node in specified(openapi(kind)):
        for name in node.get("required", []):
            assert name in node.get("properties", {}), f"{kind} {path}: required {name}"


def test_metadata_constrains_only_the_name(kind: str) -> None:
    metadata = openapi(kind)["properties"]["metadata"]
    assert metadata["type"] == "object"
    assert set(metadata) <= {"type", "properties", "description"}
    assert set(metadata.get("properties", {})) <= {"name", "generateName"}
    name = metadata["properties"]["name"]
    assert name["type"] == "string"
    assert name["maxLength"] == 63
    assert re.search(name["pattern"], "fraud-detector")
    assert not re.search(name["pattern"], "fraud.detector")  # a subdomain, not a label


def test_root_is_an_object_with_spec_and_status(kind: str) -> None:
    schema = openapi(kind)
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["properties"]["spec"]["type"] == "object"
    assert schema["properties"]["status"]["type"] == "object"
    assert ("spec" in schema.get("required", [])) == (kind != "Queue")


def _accepts(node: Schema, value: Any) -> bool:
    """An independent reading of what a node accepts, for scalar defaults."""
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return False
    else:
        expected = {"string": str, "integer": int, "number": int | float, "boolean": bool}
        if not isinstance(value, expected[node["type"]]):
            return False
        if node["type"] in ("integer", "number") and isinstance(value, bool):
            return False
    if isinstance(value, str):
        return (
            re.search(node.get("pattern", ""), value) is not None
            and node.get("minLength", 0) <= len(value) <= node.get("maxLength", len(value))
            and value in node.get("enum", [value])
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = node.get("minimum", value), node.get("maximum", value)
        if node.get("exclusiveMinimum") and value == low:
            return False
        if node.get("exclusiveMaximum") and value == high:
            return False
        return bool(low <= value <= high)
    return value in node.get("enum", [value])


def test_defaults_are_scalars_their_node_accepts(kind: str) -> None:
    checked = 0
    for path, node in specified(openapi(kind)):
        if "default" not in node:
            continue
        assert node.get("type") not in ("object", "array"), f"{kind} {path}: composite default"
        assert _accepts(node, node["default"]), f"{kind} {path}: default {node['default']!r}"
        checked += 1
    assert checked > 0


def test_quantity_and_duration_defaults_are_written_as_users_write_them() -> None:
    spec = openapi("ModelDeployment")["properties"]["spec"]["properties"]
    assert spec["resources"]["properties"]["cpu"]["default"] == "1"  # not 1000 millicores
    assert spec["resources"]["properties"]["memory"]["default"] == "512Mi"
    assert spec["terminationGracePeriod"]["default"] == "10s"
    assert spec["probes"]["properties"]["readiness"]["properties"]["timeout"]["default"] == "1s"


def test_exclusive_bounds_are_in_openapi_v3_form() -> None:
    weight = openapi("Queue")["properties"]["spec"]["properties"]["weight"]
    assert weight == {**weight, "minimum": 0, "exclusiveMinimum": True, "maximum": 1000}
    autoscaling = openapi("ModelDeployment")["properties"]["spec"]["properties"]["autoscaling"]
    threshold = autoscaling["properties"]["panicThreshold"]
    assert threshold["minimum"] == 1.0
    assert threshold["exclusiveMinimum"] is True
    assert autoscaling["nullable"] is True


def test_enums_replace_consts_and_literals() -> None:
    spec = openapi("ModelDeployment")["properties"]["spec"]["properties"]
    assert spec["runtime"]["type"] == "string"
    assert "custom" in spec["runtime"]["enum"]
    strategy = spec["rollout"]["properties"]["strategy"]
    assert strategy["enum"] == ["rolling", "canary", "blueGreen"]


def test_every_field_of_the_cli_schema_is_in_the_crd(kind: str) -> None:
    """Nothing the CLI accepts is pruned by the API server (a pruned field would be lost
    silently): every property path of ``pilothouse schema`` is in the CRD."""

    def paths(node: Any, prefix: str) -> set[str]:
        found: set[str] = set()
        if not isinstance(node, dict):
            return found
        for branch in node.get("anyOf", []):
            found |= paths(branch, prefix)
        for name, child in node.get("properties", {}).items():
            found.add(f"{prefix}.{name}")
            found |= paths(child, f"{prefix}.{name}")
        if isinstance(node.get("items"), dict):
            found |= paths(node["items"], f"{prefix}[]")
        return found

    cli = paths(json_schema(KINDS[kind])["properties"]["spec"], "spec")
    ours = paths(openapi(kind)["properties"]["spec"], "spec")
    assert cli
    assert cli <= ours, sorted(cli - ours)


# --- int-or-string: quantities, durations, surges --------------------------------------------


def test_quantities_and_durations_are_int_or_string_with_patterns() -> None:
    spec = openapi("ModelDeployment")["properties"]["spec"]["properties"]
    for name in ("cpu", "memory"):
        node = spec["resources"]["properties"][name]
        assert node["x-kubernetes-int-or-string"] is True
        assert node["pattern"] == QUANTITY_PATTERN
        assert node["minimum"] == 1
    for node in (
        spec["terminationGracePeriod"],
        spec["batching"]["properties"]["maxDelay"],
        spec["rollout"]["properties"]["progressDeadline"],
    ):
        assert node["x-kubernetes-int-or-string"] is True
        assert node["pattern"] == DURATION_PATTERN
        assert node["minimum"] == 0
    quota = openapi("Queue")["properties"]["spec"]["properties"]["quota"]["properties"]
    assert quota["cpu"]["nullable"] is True
    assert quota["cpu"]["pattern"] == QUANTITY_PATTERN
    rolling = spec["rollout"]["properties"]["rolling"]["properties"]
    surge = rolling["maxSurge"]
    assert surge["x-kubernetes-int-or-string"] is True
    assert surge["minimum"] == 0
    assert surge["maximum"] == 1000
    assert "%" in surge["pattern"]


def _cli_error(model: type[BaseModel], field: str, value: str, **others: Any) -> str | None:
    try:
        model.model_validate({field: value, **others})
    except ValidationError as error:
        return str(error)
    return None


QUANTITY_TEXT = st.text(alphabet="0123456789.+-eEKMGTPiunmk \t", min_size=1, max_size=8)
DURATION_TEXT = st.text(alphabet="0123456789.hmsnuµ ", min_size=1, max_size=8)


@settings(max_examples=600, deadline=None)
@given(QUANTITY_TEXT)
def test_quantity_pattern_agrees_with_the_cli(text: str) -> None:
    """What the CLI takes the API server takes; what the server takes and the CLI does not
    is only a magnitude past 2^63 (which a pattern cannot bound)."""
    matches = re.search(QUANTITY_PATTERN, text) is not None
    for field in ("cpu", "memory"):
        error = _cli_error(ResourceRequests, field, text)
        if error is None:
            assert matches, f"{field}: the CLI takes {text!r}, the pattern does not"
        elif matches:
            assert "below 2^63" in error, f"{field}: the pattern takes {text!r}: {error}"


class _Timed(BaseModel):
    d: Duration


@settings(max_examples=600, deadline=None)
@given(DURATION_TEXT)
def test_duration_pattern_agrees_with_the_cli(text: str) -> None:
    matches = re.search(DURATION_PATTERN, text) is not None
    error = _cli_error(_Timed, "d", text)
    if error is None:
        assert matches, f"the CLI takes {text!r}, the pattern does not"
    elif matches:
        assert "at most" in error, f"the pattern takes {text!r}: {error}"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("500m", True), ("2Gi", True), ("1.5", True), ("1e3", True), (".5", True), ("0", False),
     ("0m", False), ("-1", False), ("2GB", False), ("500 m", False), ("1e31", False)],
)  # fmt: skip
def test_quantity_pattern_examples(text: str, ok: bool) -> None:
    assert (re.search(QUANTITY_PATTERN, text) is not None) is ok
    assert (_cli_error(ResourceRequests, "cpu", text) is None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("30s", True), ("1h30m", True), ("250ms", True), ("1.5s", True), ("10", True),
     ("0", True), ("2 seconds", False), ("-5s", False), ("5d", False), (".5", False)],
)  # fmt: skip
def test_duration_pattern_examples(text: str, ok: bool) -> None:
    assert (re.search(DURATION_PATTERN, text) is not None) is ok
    assert (_cli_error(_Timed, "d", text) is None) is ok


@pytest.mark.parametrize("text", ["25%", "100%", "0%", "101%", "25", "x%"])
def test_surge_pattern_agrees_with_the_cli(text: str) -> None:
    spec = openapi("ModelDeployment")["properties"]["spec"]["properties"]
    pattern = spec["rollout"]["properties"]["rolling"]["properties"]["maxSurge"]["pattern"]
    # (maxUnavailable 1: both 0 is a cross-field error)
    cli_ok = _cli_error(RollingStrategy, "maxSurge", text, maxUnavailable=1) is None
    assert (re.search(pattern, text) is not None) is cli_ok


# --- replicas: 2 | {min, max} -----------------------------------------------------------------


def test_replicas_union_is_untyped_with_per_type_value_validations() -> None:
    replicas = openapi("ModelDeployment")["properties"]["spec"]["properties"]["replicas"]
    assert "type" not in replicas
    assert replicas["x-kubernetes-preserve-unknown-fields"] is True
    # the integer form
    assert (replicas["minimum"], replicas["maximum"], replicas["multipleOf"]) == (0, 1000, 1)
    # the object form: typed, defaulted bounds; a third key is an unknown one
    assert set(replicas["properties"]) == {"min", "max"}
    assert all(p["type"] == "integer" and "default" in p for p in replicas["properties"].values())
    assert replicas["maxProperties"] == 2
    # no string, list or boolean can pass
    assert replicas["minLength"] > replicas["maxLength"]
    assert replicas["minItems"] > replicas["maxItems"]
    assert replicas["not"] == {"enum": [True, False]}


# --- the CRD around the schema ---------------------------------------------------------------


def test_names_scope_and_short_names() -> None:
    by_kind = {c["spec"]["names"]["kind"]: c for c in crds()}
    assert set(by_kind) == set(KINDS)
    short = {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()}
    assert short == {"ModelDeployment": ["md"], "TrainingJob": ["tj"], "Queue": ["q"]}
    for kind, manifest in by_kind.items():
        cls = KINDS[kind]
        assert manifest["apiVersion"] == "apiextensions.k8s.io/v1"
        assert manifest["kind"] == "CustomResourceDefinition"
        assert manifest["metadata"]["name"] == f"{cls.PLURAL}.{GROUP}"
        spec = manifest["spec"]
        assert spec["group"] == GROUP
        assert spec["scope"] == "Namespaced"
        assert spec["names"] == {
            **spec["names"],
            "plural": cls.PLURAL,
            "singular": kind.lower(),
            "listKind": f"{kind}List",
        }
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)


def test_status_subresource_and_no_scale_subresource(kind: str) -> None:
    subresources = crd(KINDS[kind])["spec"]["versions"][0]["subresources"]
    assert subresources["status"] == {}
    # no scale, not even for ModelDeployment: the API server checks the value at
    # specReplicasPath as an int64 on every write, which would refuse replicas: {min, max}
    # (tests/k8s/test_crds.py shows it)
    assert "scale" not in subresources


def _node_at(schema: Schema, json_path: str) -> Schema | None:
    node: Schema | None = schema
    for part in re.sub(r"\[\?\(.*?\)\]", "[]", json_path).strip(".").split("."):
        if node is None:
            return None
        name, array = part.removesuffix("[]"), part.endswith("[]")
        node = node.get("properties", {}).get(name)
        if node is not None and array:
            node = node.get("items")
    return node


def test_printer_columns_point_at_fields_of_their_type(kind: str) -> None:
    version = crd(KINDS[kind])["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert columns == PRINTER_COLUMNS[kind]
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns[:-1]:
        node = _node_at(schema, column["jsonPath"])
        assert node is not None, f"{kind}: column {column['name']}: no {column['jsonPath']}"
        if column["type"] in ("integer", "number"):
            assert node["type"] == column["type"], f"{kind}: column {column['name']}"


def test_model_deployment_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in PRINTER_COLUMNS["ModelDeployment"]}
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Desired"] == ".status.desiredReplicas"
    assert columns["Model"] == ".status.model"
    assert columns["Available"] == '.status.conditions[?(@.type=="Ready")].status'


def test_each_crd_fits_kubectls_last_applied_annotation() -> None:
    """``kubectl apply`` (client side) keeps the whole object in an annotation: 256 KiB."""
    for manifest in crds():
        assert len(json.dumps(manifest)) < 256 * 1024 * 3 // 4  # with room to grow


def test_cli_prints_the_crds_as_one_yaml_stream() -> None:
    from pilothouse.cli.kube import kube

    result = CliRunner().invoke(kube, ["crds"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("---\n")
    assert list(yaml.safe_load_all(result.output)) == crds()


def test_main_registers_the_kube_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from pilothouse.cli import main

    monkeypatch.setattr(sys, "argv", ["pilothouse", "kube", "crds"])
    with pytest.raises(SystemExit) as exited:
        main.main()
    assert exited.value.code == 0


# --- the converter: generic over pydantic models ----------------------------------------------


def test_status_is_its_model_or_free_form(monkeypatch: pytest.MonkeyPatch) -> None:
    status = status_schema("ModelDeployment")
    assert status["type"] == "object"
    assert status["properties"]["readyReplicas"]["type"] == "integer"
    assert status["properties"]["observedGeneration"]["nullable"] is True
    monkeypatch.setitem(sys.modules, "pilothouse.spec.status", None)  # as if not written yet
    assert status_schema("ModelDeployment") == {
        "type": "object",
        "description": "Set by the control plane",
        "x-kubernetes-preserve-unknown-fields": True,
    }


class _Bounds(BaseModel):
    low: int = Field(default=0, ge=0)
    high: int = Field(default=5, ge=1)


class _Anything(BaseModel):
    mode: Literal["a"] = "a"
    ratio: float = Field(default=0.5, gt=0, lt=1)
    maybe: str | None = None
    tags: set[str] = Field(default_factory=set)
    counts: dict[str, int] = Field(default_factory=dict)
    free: dict[str, Any] = Field(default_factory=dict)
    size: Any = None


def test_converter_on_any_model() -> None:
    schema = structural_schema(_Anything)
    props = schema["properties"]
    assert props["mode"] == {"type": "string", "enum": ["a"], "default": "a"}
    assert props["ratio"]["minimum"] == 0
    assert props["ratio"]["exclusiveMinimum"] is True
    assert props["ratio"]["maximum"] == 1
    assert props["ratio"]["exclusiveMaximum"] is True
    assert props["maybe"] == {"type": "string", "nullable": True}
    assert props["tags"]["x-kubernetes-list-type"] == "set"
    assert props["counts"]["additionalProperties"] == {"type": "integer"}
    assert props["free"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["size"] == {"x-kubernetes-preserve-unknown-fields": True}
    for _, node in every_dict(schema):
        for word in FORBIDDEN:
            assert word not in node
