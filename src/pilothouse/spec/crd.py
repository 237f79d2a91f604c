"""CustomResourceDefinitions for the pilothouse kinds, generated from the pydantic models.

``pilothouse schema KIND`` prints a JSON Schema (draft 2020-12): ``const``, ``anyOf`` with
null branches, numeric ``exclusiveMinimum``, ``additionalProperties: false``. A CRD needs a
*structural* OpenAPI v3.0 schema instead, which the API server also uses to prune unknown
fields and to apply defaults. :func:`structural_schema` converts the JSON Schema of any
pydantic model into one:

* every node has a ``type``, except ``x-kubernetes-int-or-string`` and
  ``x-kubernetes-preserve-unknown-fields`` nodes (the only exceptions Kubernetes allows);
* a ``T | None`` field is ``T`` with ``nullable: true``; ``const`` is a one-value ``enum``;
  exclusive bounds are ``minimum`` + ``exclusiveMinimum: true`` (v3.0 form); no ``$ref``,
  ``$defs``, ``$schema`` or ``title``; ``additionalProperties: false`` is dropped (the server
  prunes, and rejects unknown fields under ``fieldValidation=Strict``, as the CLI does);
* quantities (cpu, memory) and durations, which take ``500m`` / ``2Gi`` / ``30s`` or a bare
  number, are ``x-kubernetes-int-or-string`` with a ``pattern`` for the text form and bounds
  for the integer form. The server refuses a *fractional* number there (``cpu: 0.5``): on a
  cluster write it as text (``"0.5"``, ``500m``), as Kubernetes' own int-or-string fields want;
* ``x-kubernetes-preserve-unknown-fields`` is used only where the data is free-form
  (``dict[str, Any]``: the status' ``internal`` bookkeeping, a history entry's ``template``,
  an output model's ``metrics``), and on ``spec.replicas`` (below);
* a default is kept only on a scalar, written as the field's serializer writes it (``"250m"``,
  ``"30s"``, not millicores or seconds), and only when it satisfies its own node.

``replicas: 2 | {min: 1, max: 4}``: an integer-or-object union has no structural form (the
only typed union Kubernetes has is int-or-string, and ``type`` is not allowed inside
``anyOf``/``oneOf``). The node is untyped with ``x-kubernetes-preserve-unknown-fields`` and
carries value validations that hold for one JSON type each: ``minimum``/``maximum``/
``multipleOf: 1`` for the integer, typed ``properties`` (defaulted, so ``maxProperties``
refuses any other key) for the object, and contradictory string, array and boolean
constraints so that no string, list or boolean passes. CEL (``x-kubernetes-validations``)
could say it more plainly, but the API server cannot type an untyped node for CEL and
refuses the CRD.

There is no ``scale`` subresource on ModelDeployment: the API server validates the value at
``specReplicasPath`` as an int64 on *every* write of the object, so ``.spec.replicas``
would refuse ``{min, max}`` bounds ("accessor error: ... expected int64"), and
``.spec.replicas.max`` would refuse the plain integer; no other spec field is a replica
count. (tests/k8s/test_crds.py shows both refusals.)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from pilothouse.spec.quantity import format_bytes, format_cpu_millis, format_duration
from pilothouse.spec.resources import API_VERSION, GROUP, KINDS, VERSION, Resource

Schema = dict[str, Any]

#: kubectl's short names: one each. The resources' other words (``deploy``, ``job``) are
#: kubectl short names of built-in kinds; a CRD claiming them would take them over.
SHORT_NAMES: dict[str, list[str]] = {
    "TrainingJob": ["tj"],
    "ModelDeployment": ["md"],
    "Queue": ["q"],
}
#: ``kubectl get pilothouse`` lists every kind
CATEGORIES = ["pilothouse"]

DESCRIPTIONS: dict[str, str] = {
    "TrainingJob": "A gang of training workers that all start or none, restarted with "
    "back-off and registering what they wrote as a new model version.",
    "ModelDeployment": "A registered model served by replicas behind one endpoint, rolled "
    "out progressively (rolling, canary, blue/green) and autoscaled.",
    "Queue": "A share of the cluster's resources that training jobs are admitted from.",
}

#: quantities: a positive number with an optional binary or decimal suffix or exponent,
#: as spec/quantity.py parses them (surrounding blanks are stripped there, too)
QUANTITY_PATTERN = (
    r"^\s*\+?([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)"
    r"([eE][+-]?(30|[0-2]?[0-9])|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?\s*$"
)
#: durations: seconds as a bare number, or Go's form (``1h30m``, ``250ms``, ``1.5s``)
DURATION_PATTERN = r"^\s*([0-9]+\.?[0-9]*|(([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|ms|s|m|h))+)\s*$"
#: spec/quantity.py refuses durations over ten years
MAX_DURATION_SECONDS = 10 * 365 * 24 * 3600

#: what each int-or-string text form means, by the serializer that prints it back
_FORMAT_TAG = "x-pilothouse-format"
_FORMATS: dict[Callable[..., Any], str] = {
    format_cpu_millis: "quantity",
    format_bytes: "quantity",
    format_duration: "duration",
}

_NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_STRING = ("minLength", "maxLength", "pattern")
#: JSON Schema words with no place in a CRD (annotations, or not OpenAPI v3.0)
_DROPPED = (
    "title",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "discriminator",
)
#: formats the API server checks; pydantic's others (``duration`` is ISO 8601 there) are
#: left out rather than misread
_FORMATS_KEPT = frozenset(
    {"date-time", "date", "byte", "uuid", "ipv4", "ipv6", "hostname", "int32", "int64"}
)
_PYTHON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
)


class CrdSchemaError(ValueError):
    """A model has a shape a structural schema cannot say."""


# --- from pydantic: JSON Schema with the int-or-string fields told apart ---------------------


def _plain_serializer(schema: Any) -> Callable[[Any], Any] | None:
    """The plain, no-info serializer a core schema (or the one it wraps) prints with."""
    while isinstance(schema, dict):
        serialization = schema.get("serialization")
        if (
            isinstance(serialization, dict)
            and serialization.get("type") == "function-plain"
            and not serialization.get("info_arg")
        ):
            function: Callable[[Any], Any] = serialization["function"]
            return function
        if schema.get("type") not in (
            "nullable",
            "function-before",
            "function-after",
            "function-wrap",
        ):
            return None
        schema = schema.get("schema")
    return None


class _Generator(GenerateJsonSchema):
    """pydantic's generator, plus: int-or-string fields tagged with what their text is, and
    defaults written by the field's serializer (``"250m"``, not ``250``)."""

    def generate_inner(self, schema: Any) -> JsonSchemaValue:
        json_schema = super().generate_inner(schema)
        serializer = _plain_serializer(schema) if isinstance(schema, dict) else None
        if serializer in _FORMATS and "$ref" not in json_schema:
            json_schema = {**json_schema, _FORMAT_TAG: _FORMATS[serializer]}
        return json_schema

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        default = schema.get("default")
        serializer = _plain_serializer(schema["schema"])
        if "default" in json_schema and default is not None and serializer is not None:
            try:
                json_schema["default"] = self.encode_default(serializer(default))
            except Exception:  # a default the serializer cannot print: left out
                del json_schema["default"]
        return json_schema


def _json_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    inlined: Schema = _inline(raw, raw.get("$defs", {}), ())
    return inlined


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix("#/$defs/")
            if name not in defs:
                raise CrdSchemaError(f"unresolvable reference {ref}")
            if name in seen:
                raise CrdSchemaError(f"{name} contains itself: a CRD schema cannot recurse")
            target = _inline(defs[name], defs, (*seen, name))
            rest = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
            return {**target, **rest}
        return {k: _inline(v, defs, seen) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    return node


# --- JSON Schema -> structural OpenAPI v3.0 --------------------------------------------------


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3.0 schema of any pydantic model (see the module doc)."""
    return _convert(_json_schema(model))


def _type_of(value: Any) -> str | None:
    for python_type, name in _PYTHON_TYPES:
        if isinstance(value, python_type):
            return name
    return None


def _convert(node: Schema) -> Schema:
    node = {k: v for k, v in node.items() if k not in _DROPPED}
    for junctor in ("anyOf", "oneOf"):
        if junctor in node:
            return _convert_union(node, node.pop(junctor))
    if "allOf" in node:  # pydantic wraps a lone $ref so; merge the parts
        parts = node.pop("allOf")
        for part in parts:
            node = {**part, **node}
        return _convert(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    types = node.get("type")
    if isinstance(types, list):  # ["string", "null"]
        kept = [t for t in types if t != "null"]
        if len(kept) != 1:
            return _convert_union(node, [{"type": t} for t in types])
        node["type"] = kept[0]
        node["nullable"] = True
        if node.get("default", ...) is None:
            del node["default"]
    if "type" not in node and "enum" in node:
        found = {_type_of(v) for v in node["enum"]}
        if len(found) == 1 and None not in found:
            node["type"] = found.pop()
    kind = node.get("type")
    if node.pop("x-kubernetes-int-or-string", False):
        return _int_or_string(node, [])
    if kind is None:
        node.pop(_FORMAT_TAG, None)
        node.pop("default", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
        return node
    if kind == "object":
        return _object(node)
    if kind == "array":
        return _array(node)
    if kind in ("integer", "number"):
        _v3_bounds(node)
    if kind == "string" and node.get("format") not in (None, *_FORMATS_KEPT):
        del node["format"]
    node.pop(_FORMAT_TAG, None)
    _check_default(node)
    return node


def _v3_bounds(node: Schema) -> None:
    """Draft 2020-12's numeric ``exclusiveMinimum: 0`` is v3.0's ``minimum: 0`` +
    ``exclusiveMinimum: true`` (and the same for the maximum)."""
    for bound, exclusive, tighter in (
        ("minimum", "exclusiveMinimum", max),
        ("maximum", "exclusiveMaximum", min),
    ):
        value = node.get(exclusive)
        if isinstance(value, bool) or value is None:
            continue
        inclusive = node.get(bound)
        if inclusive is not None and tighter(inclusive, value) == inclusive and inclusive != value:
            del node[exclusive]  # the inclusive bound is the tighter one
            continue
        node[bound] = value
        node[exclusive] = True


def _object(node: Schema) -> Schema:
    properties = node.get("properties")
    extra = node.pop("additionalProperties", None)
    if properties is not None:
        node["properties"] = {name: _convert(child) for name, child in properties.items()}
        required = [r for r in node.get("required", []) if r in node["properties"]]
        if required:
            node["required"] = required
        else:
            node.pop("required", None)
        if extra is True or isinstance(extra, dict):  # extra="allow": keep what comes
            node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict) and extra:
        node["additionalProperties"] = _convert(extra)
    else:  # dict[str, Any], a bare dict: free-form
        node["x-kubernetes-preserve-unknown-fields"] = True
    node.pop("default", None)
    node.pop(_FORMAT_TAG, None)
    return node


def _array(node: Schema) -> Schema:
    items = node.get("items")
    if items is None and "prefixItems" in node:  # a tuple: items of one shape, or any
        shapes = node.pop("prefixItems")
        same = all(s == shapes[0] for s in shapes)
        items = shapes[0] if shapes and same else {}
    node.pop("prefixItems", None)
    node["items"] = _convert(items or {})
    if node.pop("uniqueItems", False) and node["items"].get("type") in (
        "string",
        "integer",
        "number",
        "boolean",
    ):
        node["x-kubernetes-list-type"] = "set"
    node.pop("default", None)
    node.pop(_FORMAT_TAG, None)
    return node


def _convert_union(node: Schema, branches: list[Schema]) -> Schema:
    options = [b for b in branches if b.get("type") != "null"]
    nullable = len(options) < len(branches)
    if node.get("x-kubernetes-int-or-string"):
        out = _int_or_string(
            {k: v for k, v in node.items() if k != "x-kubernetes-int-or-string"}, options
        )
    elif len(options) == 1:
        out = _convert({**options[0], **node})
    else:
        out = _union(node, options)
    if nullable:
        out["nullable"] = True
        if out.get("default", ...) is None:
            del out["default"]
    return out


def _scalar_type(branch: Schema) -> str | None:
    kind = branch.get("type")
    if kind is None and "const" in branch:
        kind = _type_of(branch["const"])
    return kind if kind in ("integer", "number", "string", "boolean") else None


def _union(node: Schema, options: list[Schema]) -> Schema:
    kinds = [_scalar_type(b) if "type" in b or "const" in b else None for b in options]
    objects = [b for b in options if b.get("type") == "object"]
    numbers = [b for b, k in zip(options, kinds, strict=True) if k in ("integer", "number")]
    strings = [b for b, k in zip(options, kinds, strict=True) if k == "string"]
    if numbers and strings and len(numbers) + len(strings) == len(options):
        return _int_or_string(node, options)
    if len(numbers) == 1 and len(objects) == 1 and len(options) == 2:
        return _number_or_object(node, numbers[0], objects[0])
    # anything else has no structural skeleton: free-form, described
    out = {k: v for k, v in node.items() if k in ("description",)}
    out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _int_or_string(node: Schema, options: list[Schema]) -> Schema:
    """Kubernetes' one typed union: an integer or a string, each checked by the words of its
    type (numeric words apply to numbers only, string words to strings only)."""
    out: Schema = {}
    if "description" in node:
        out["description"] = node["description"]
    out["x-kubernetes-int-or-string"] = True
    out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for branch in options:
        kind = _scalar_type(branch)
        words = _NUMERIC if kind in ("integer", "number") else _STRING if kind == "string" else ()
        for word in words:
            if word in branch:
                out[word] = branch[word]
    for word in (*_NUMERIC, *_STRING):
        if word in node:
            out[word] = node[word]
    text = node.get(_FORMAT_TAG)
    if text == "quantity":  # cpu and memory: positive
        out.setdefault("pattern", QUANTITY_PATTERN)
        out.setdefault("minimum", 1)
    elif text == "duration":
        out.setdefault("pattern", DURATION_PATTERN)
        out.setdefault("minimum", 0)
        out.setdefault("maximum", MAX_DURATION_SECONDS)
    _v3_bounds(out)
    if "default" in node:
        out["default"] = node["default"]
    _check_default(out)
    return out


def _number_or_object(node: Schema, number: Schema, obj: Schema) -> Schema:
    """``replicas: 2 | {min, max}``: untyped, with value validations that each hold for one
    JSON type only (see the module doc)."""
    converted = _object(dict(obj))
    properties: dict[str, Schema] = converted.get("properties", {})
    integer = _scalar_type(number) == "integer"
    hint = (
        f"{'An integer' if integer else 'A number'} or an object with {', '.join(properties)}."
        " Other shapes are refused with errors about lengths, items or 'not': the API server"
        " cannot type a union, so each JSON type is refused by a constraint of its own."
    )
    description = node.get("description") or obj.get("description") or ""
    out: Schema = {"description": f"{description} {hint}".strip()}
    out["x-kubernetes-preserve-unknown-fields"] = True
    for word in _NUMERIC:
        if word in number:
            out[word] = number[word]
    if integer:
        out.setdefault("multipleOf", 1)
    _v3_bounds(out)
    out["properties"] = properties
    if "required" in converted:
        out["required"] = converted["required"]
    if properties and all("default" in p for p in properties.values()):
        # the server defaults every known key first, so one key more is an unknown one
        out["maxProperties"] = len(properties)
    # no string, no list, no boolean: constraints no value of that type can meet
    out["minLength"], out["maxLength"] = 1, 0
    out["minItems"], out["maxItems"] = 1, 0
    out["not"] = {"enum": [True, False]}
    return out


def _check_default(node: Schema) -> None:
    """Drop a default its own node would refuse (the API server refuses such a CRD)."""
    if "default" not in node:
        return
    value = node["default"]
    if value is None or not _accepts(node, value):
        del node["default"]


def _accepts(node: Schema, value: Any) -> bool:
    kind = _type_of(value)
    if node.get("x-kubernetes-int-or-string"):
        if kind not in ("integer", "string") and not (
            kind == "number" and float(value).is_integer()
        ):
            return False
        kind = "string" if kind == "string" else "integer"
    elif node.get("type") == "number" and kind == "integer":
        kind = "number"
    elif node.get("type") == "integer" and kind == "number" and float(value).is_integer():
        kind = "integer"
    if not node.get("x-kubernetes-int-or-string") and kind != node.get("type"):
        return False
    if "enum" in node and value not in node["enum"]:
        return False
    if kind == "string":
        if "pattern" in node and re.search(node["pattern"], value) is None:
            return False
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", len(value)):
            return False
    if kind in ("integer", "number"):
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and (value < low or (value == low and node.get("exclusiveMinimum"))):
            return False
        if high is not None and (value > high or (value == high and node.get("exclusiveMaximum"))):
            return False
    return True


# --- the CRDs -------------------------------------------------------------------------------


def status_schema(kind: str) -> Schema:
    """The status of ``kind``: its model in ``pilothouse.spec.status`` when there is one,
    otherwise an object of any shape."""
    try:
        module = importlib.import_module("pilothouse.spec.status")
    except ModuleNotFoundError as error:
        if error.name != "pilothouse.spec.status":
            raise
        module = None
    models: dict[str, type[BaseModel]] = getattr(module, "STATUS_MODELS", {})
    model = models.get(kind)
    if model is None:
        return {
            "type": "object",
            "description": "Set by the control plane",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    schema = structural_schema(model)
    schema.setdefault("description", "Set by the control plane")
    return schema


def resource_schema(cls: type[Resource]) -> Schema:
    """The ``openAPIV3Schema`` of one kind."""
    envelope = _json_schema(cls)
    spec = _convert(envelope["properties"]["spec"])
    name = _convert(envelope["properties"]["metadata"]["properties"]["name"])
    schema: Schema = {
        "type": "object",
        "description": f"{DESCRIPTIONS.get(cls.KIND, cls.KIND)} ({API_VERSION})",
        "properties": {
            "apiVersion": {"type": "string", "description": f"{API_VERSION}"},
            "kind": {"type": "string", "description": cls.KIND},
            # the API server owns metadata: a CRD may only constrain name and generateName
            "metadata": {"type": "object", "properties": {"name": name}},
            "spec": spec,
            "status": status_schema(cls.KIND),
        },
    }
    if "spec" in envelope.get("required", []):
        schema["required"] = ["spec"]
    tidy: Schema = _tidy(schema)
    return tidy


_FIRST = ("description", "type", "nullable", "x-kubernetes-int-or-string", "anyOf")


def _tidy(node: Any) -> Any:
    """The same schema, each node's description and type first (for people reading it)."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    keys = [k for k in _FIRST if k in node] + [k for k in node if k not in _FIRST]
    out: Schema = {}
    for key in keys:
        value = node[key]
        if key == "properties" and isinstance(value, dict):  # names, not schema words
            out[key] = {name: _tidy(child) for name, child in value.items()}
        else:
            out[key] = _tidy(value)
    return out


def _column(
    name: str, path: str, kind: str = "string", description: str = "", priority: int = 0
) -> Schema:
    column: Schema = {"name": name, "type": kind, "jsonPath": path}
    if description:
        column["description"] = description
    if priority:
        column["priority"] = priority
    return column


_READY_CONDITION = '.status.conditions[?(@.type=="Ready")].status'
_AGE = _column("Age", ".metadata.creationTimestamp", "date")

#: ``kubectl get`` columns (priority 1: only with ``-o wide``)
PRINTER_COLUMNS: dict[str, list[Schema]] = {
    "ModelDeployment": [
        _column("Model", ".status.model", description="The model version serving live traffic"),
        _column("Ready", ".status.readyReplicas", "integer", "Ready replicas"),
        _column("Desired", ".status.desiredReplicas", "integer", "Desired replicas"),
        _column("Available", _READY_CONDITION, description="The Ready condition"),
        _column("Revision", ".status.revision", priority=1),
        _column("Wanted", ".spec.model", description="The model the spec asks for", priority=1),
        _column("URL", ".status.url", priority=1),
        _AGE,
    ],
    "TrainingJob": [
        _column("Phase", ".status.phase"),
        _column("Workers", ".spec.workers", "integer"),
        _column("Attempt", ".status.attempt", "integer"),
        _column("Restarts", ".status.restarts", "integer"),
        _column("Queue", ".spec.queue", priority=1),
        _column("Ready", _READY_CONDITION, priority=1),
        _AGE,
    ],
    "Queue": [
        _column("Weight", ".spec.weight", "number"),
        _column("Priority", ".spec.priority", "integer"),
        _column("CPU", ".status.used.cpu", description="CPU in use"),
        _column("Memory", ".status.used.memory", description="Memory in use"),
        _column("GPU", ".status.used.gpu", "integer", "GPUs in use"),
        _column("Pending", ".status.pendingWorkers", "integer", priority=1),
        _AGE,
    ],
}


def crd(cls: type[Resource]) -> Schema:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{cls.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "pilothouse"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "shortNames": SHORT_NAMES.get(cls.KIND, []),
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    # no scale subresource: see the module doc
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS.get(cls.KIND, [_AGE]),
                    "schema": {"openAPIV3Schema": resource_schema(cls)},
                }
            ],
        },
    }


def crds() -> list[Schema]:
    """Every kind's CRD, in a stable order (Queue first: jobs are admitted from queues)."""
    order = sorted(KINDS.values(), key=lambda c: (c.KIND != "Queue", c.KIND))
    return [crd(cls) for cls in order]


__all__ = [
    "DURATION_PATTERN",
    "PRINTER_COLUMNS",
    "QUANTITY_PATTERN",
    "SHORT_NAMES",
    "CrdSchemaError",
    "crd",
    "crds",
    "resource_schema",
    "status_schema",
    "structural_schema",
]
