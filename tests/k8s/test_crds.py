"""A real API server takes the CRDs of ``pilothouse kube crds`` (structural, Established),
accepts every resource YAML of the repository with ``fieldValidation=Strict`` and reads it
back meaning the same, and refuses what the CLI refuses, as far as OpenAPI can say it.

Checked by the CLI only, because OpenAPI cannot say them (they span fields, or compare
values that carry units): replicas and backoff min <= max; probe period and timeout > 0,
batching maxDelay <= 1s, the autoscaling windows (between 6s and 1h, panic <= stable),
progressDeadline and analysis interval ranges, on text forms like "90s"; a canary step is
exactly one of setWeight/pause and the steps end at setWeight 100; the rollout's settings
block matches its strategy; mirrored checks need a mirror percentage; maxSurge and
maxUnavailable not both 0; unique check names, an analysis check's min/max against its
metric's range; a quantity's magnitude (< 2^63) and a duration's (<= 10 years) in text
form. One single-field check lives in a model validator, so it is not in the schema either:
an analysis check's metric name. Metadata belongs to the API server: the CRD constrains
only the name, so fields such as finalizers, which the CLI refuses, are the server's to take.

And two the server treats differently by design: a null for a non-nullable field is dropped
(pruned), not refused; a fractional number in an int-or-string field (``cpu: 0.5``) is
refused, not taken (write ``"0.5"`` or ``500m``; test_fractional_quantities_must_be_text...).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pilothouse.spec.crd import crd, crds
from pilothouse.spec.loader import SpecError, load_text, validate_document
from pilothouse.spec.resources import API_VERSION, GROUP, KINDS, VERSION, ModelDeployment
from pilothouse.spec.status import STATUS_MODELS
from tests.k8s.conftest import Cluster
from tests.k8s.testenv import ROOT, wait_for

pytestmark = pytest.mark.k8s

#: directories that hold no resource of ours (and may be huge)
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
FIELD_MANAGER = "pilothouse-tests"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


# --- the resource YAMLs of the repository -----------------------------------------------------


def _yaml_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT)
        if path.suffix in (".yaml", ".yml") and not SKIP_DIRS & set(relative.parts):
            found.append(path)
    return found


def _readme_fragments() -> list[tuple[str, dict[str, Any]]]:
    """The ``spec:`` fragments of README.md's yaml blocks, made whole (a name; a model
    when the fragment has none)."""
    fragments = []
    text = (ROOT / "README.md").read_text()
    for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
        data = yaml.safe_load(block)
        if not (isinstance(data, dict) and set(data) == {"spec"}):
            continue
        spec = data["spec"]
        kind = "TrainingJob" if "command" in spec else "ModelDeployment"
        if kind == "ModelDeployment":
            spec = {"model": "readme-model", **spec}
        doc = {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"name": f"readme-{index}"},
            "spec": spec,
        }
        fragments.append((f"README.md#yaml{index}", doc))
    return fragments


def resource_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every document of ours in every YAML file of the repository (a file of other
    documents, such as tests/k8s/kwok-stages.yaml, has none), and README's fragments."""
    documents = []
    for path in _yaml_files():
        for index, data in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(data, dict) and str(data.get("apiVersion", "")).startswith(f"{GROUP}/"):
                documents.append((f"{path.relative_to(ROOT)}#{index}", data))
    return documents + _readme_fragments()


DOCUMENTS = resource_documents()


def test_the_repository_has_the_examples_we_expect() -> None:
    """The glob above finds them all (not silently none)."""
    ids = {source for source, _ in DOCUMENTS}
    examples = {str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*.yaml")}
    assert len(examples) >= 5
    assert {f"{e}#0" for e in examples} <= ids
    assert any(source.startswith("README.md#") for source in ids)
    assert not any("kwok-stages" in source for source in ids)


# --- the API -----------------------------------------------------------------------------------


def _path(namespace: str, kind: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{KINDS[kind].PLURAL}"
    return f"{base}/{name}" if name else base


def server_side_apply(http: httpx.Client, namespace: str, doc: dict[str, Any]) -> httpx.Response:
    return http.patch(
        _path(namespace, doc["kind"], doc["metadata"]["name"]),
        params={"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict", "force": "true"},
        content=json.dumps(doc),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


def create(http: httpx.Client, namespace: str, doc: dict[str, Any]) -> httpx.Response:
    return http.post(
        _path(namespace, str(doc.get("kind", "TrainingJob"))),
        params={"fieldValidation": "Strict"},
        json=doc,
    )


def _conditions(crd_object: Any) -> dict[str, str]:
    return {c.type: c.status for c in (crd_object.status.conditions or [])}


def _served(http: httpx.Client, group: str, plural: str) -> Callable[[], bool]:
    def probe() -> bool:
        return http.get(f"/apis/{group}/{VERSION}/{plural}").status_code == 200

    return probe


@pytest.fixture(scope="module")
def installed(k8s_cluster: Cluster) -> Iterator[Cluster]:
    """The CRDs, as ``pilothouse kube crds | kubectl apply -f -`` installs them."""
    stream = subprocess.run(
        [sys.executable, "-m", "pilothouse", "kube", "crds"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    plane = k8s_cluster.plane
    applied = subprocess.run(
        [str(plane.bin / "kubectl"), "--kubeconfig", str(plane.kubeconfig), "apply", "-f", "-"],
        input=stream,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    assert not applied.stderr.strip(), f"kubectl warned: {applied.stderr}"
    extensions = client.ApiextensionsV1Api(k8s_cluster.api)
    names = [c["metadata"]["name"] for c in crds()]

    def established() -> bool:
        for name in names:
            conditions = _conditions(extensions.read_custom_resource_definition(name))
            assert conditions.get("NonStructuralSchema") != "True", f"{name}: {conditions}"
            if conditions.get("Established") != "True" or conditions.get("NamesAccepted") != "True":
                return False
        return True

    wait_for("the CRDs Established", established, timeout=30)
    with plane.http() as http:
        for cls in KINDS.values():
            wait_for(f"{cls.PLURAL} served", _served(http, GROUP, cls.PLURAL), timeout=30)
    yield k8s_cluster
    for name in names:
        with contextlib.suppress(ApiException):
            extensions.delete_custom_resource_definition(name)


@pytest.fixture(scope="module")
def ns(installed: Cluster) -> Iterator[str]:
    """One namespace for this module's objects (deleted with them afterwards)."""
    name = f"crds-{uuid.uuid4().hex[:8]}"
    installed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        installed.core.delete_namespace(name)


@pytest.fixture
def http(installed: Cluster) -> Iterator[httpx.Client]:
    with installed.plane.http() as h:
        yield h


# --- the CRDs ----------------------------------------------------------------------------------


def test_the_crds_are_established_structural_and_stored_as_generated(installed: Cluster) -> None:
    for manifest in crds():
        with installed.plane.http() as http:
            stored = http.get(f"{CRD_API}/{manifest['metadata']['name']}").json()
        conditions = {c["type"]: c for c in stored["status"]["conditions"]}
        assert conditions["Established"]["status"] == "True"
        assert "NonStructuralSchema" not in conditions
        assert (
            stored["status"]["acceptedNames"]["shortNames"]
            == manifest["spec"]["names"]["shortNames"]
        )
        (version,) = stored["spec"]["versions"]
        # nothing dropped or rewritten on the way (an unknown schema word would be)
        assert version["schema"] == manifest["spec"]["versions"][0]["schema"]
        assert version["subresources"] == {"status": {}}


def test_kubectl_knows_the_short_names_and_the_category(installed: Cluster) -> None:
    out = installed.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide")
    for line, short in (("modeldeployments", "md"), ("trainingjobs", "tj"), ("queues", "q")):
        row = next(r for r in out.splitlines() if r.startswith(line))
        assert f" {short} " in f" {row} ", row
        assert "pilothouse" in row.split()[-1]


# --- every example is accepted and read back meaning the same -----------------------------------


@pytest.mark.parametrize(("source", "doc"), DOCUMENTS, ids=[s for s, _ in DOCUMENTS])
def test_every_resource_yaml_is_accepted_and_reads_back_the_same(
    http: httpx.Client, ns: str, source: str, doc: dict[str, Any]
) -> None:
    resource, errors = validate_document(copy.deepcopy(doc), source, 0)
    assert resource is not None, [str(e) for e in errors]  # the CLI takes it

    response = server_side_apply(http, ns, doc)
    assert response.status_code in (200, 201), response.text
    assert "Warning" not in response.headers, response.headers["Warning"]

    got = http.get(_path(ns, doc["kind"], doc["metadata"]["name"]))
    assert got.status_code == 200, got.text
    stored = got.json()
    # the server's defaults and pruning change nothing the CLI reads from it
    again, errors = validate_document(
        {
            "apiVersion": stored["apiVersion"],
            "kind": stored["kind"],
            "metadata": {"name": stored["metadata"]["name"]},
            "spec": stored["spec"],
        },
        source,
        0,
    )
    assert again is not None, [str(e) for e in errors]
    assert again.model_dump()["spec"] == resource.model_dump()["spec"]


def test_status_subresource_and_printer_columns(http: httpx.Client, ns: str) -> None:
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "columns"},
        "spec": {"model": "fraud-detector:3", "replicas": {"min": 1, "max": 4}},
    }
    assert server_side_apply(http, ns, doc).status_code in (200, 201)
    status = STATUS_MODELS["ModelDeployment"].model_validate(
        {
            "model": "fraud-detector:3",
            "revision": "r-abc",
            "url": "http://127.0.0.1:8080",
            "replicas": 3,
            "readyReplicas": 2,
            "desiredReplicas": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ReplicasReady",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    )
    body = {"status": {**status.model_dump(mode="json", by_alias=True), "notAField": 1}}
    patched = http.patch(
        _path(ns, "ModelDeployment", "columns") + "/status",
        content=json.dumps(body),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    stored = patched.json()["status"]
    assert stored["readyReplicas"] == 2
    assert stored["conditions"][0]["type"] == "Ready"
    assert "notAField" not in stored  # pruned: the status schema is typed

    # the main resource ignores status (the subresource owns it)
    body = {**doc, "status": {"readyReplicas": 99}}
    assert server_side_apply(http, ns, body).status_code == 200
    assert http.get(_path(ns, "ModelDeployment", "columns")).json()["status"]["readyReplicas"] == 2

    table = http.get(
        _path(ns, "ModelDeployment", "columns"),
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).json()
    names = [c["name"] for c in table["columnDefinitions"]]
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert row["Model"] == "fraud-detector:3"
    assert (row["Ready"], row["Desired"], row["Available"]) == (2, 3, "True")
    assert (row["Revision"], row["Wanted"]) == ("r-abc", "fraud-detector:3")


# --- what the CLI refuses, the API server refuses ---------------------------------------------


def _base(kind: str) -> dict[str, Any]:
    specs: dict[str, dict[str, Any]] = {
        "TrainingJob": {"command": ["python", "train.py"]},
        "ModelDeployment": {"model": "fraud-detector:1"},
        "Queue": {},
    }
    spec = specs[kind]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": f"bad-{kind.lower()}"},
        "spec": copy.deepcopy(spec),
    }


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: dict[str, Any] = out
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


_DELETE = object()
_CHECK = {"name": "errors", "metric": "errorRate", "max": 0.1}
MD, TJ, Q = "ModelDeployment", "TrainingJob", "Queue"

#: (id, kind, path set, value, the field both name in their error)
INVALID: list[tuple[str, str, str, Any, str]] = [
    # unknown fields
    ("unknown-spec-field", TJ, "spec.workerz", 2, "spec.workerz"),
    ("unknown-nested-field", MD, "spec.resources.gpus", 1, "spec.resources.gpus"),
    ("unknown-top-level-field", Q, "specs", {}, "specs"),
    ("unknown-replicas-key", MD, "spec.replicas", {"min": 1, "maximum": 3}, "spec.replicas"),
    # wrong types
    ("string-for-integer", TJ, "spec.workers", "two", "spec.workers"),
    ("string-for-list", TJ, "spec.command", "python train.py", "spec.command"),
    ("integer-for-string", TJ, "spec.env", [{"name": "A", "value": 5}], "spec.env[0].value"),
    ("integer-for-object", Q, "spec.quota", 5, "spec.quota"),
    ("string-for-boolean", MD, "spec.rollout",
     {"strategy": "blueGreen", "blueGreen": {"autoPromote": "maybe"}},
     "spec.rollout.blueGreen.autoPromote"),
    ("list-for-quantity", MD, "spec.resources.cpu", [1], "spec.resources.cpu"),
    # numbers out of range
    ("workers-zero", TJ, "spec.workers", 0, "spec.workers"),
    ("priority-too-high", TJ, "spec.priority", 5000, "spec.priority"),
    ("max-restarts-too-high", TJ, "spec.restartPolicy.maxRestarts", 1001,
     "spec.restartPolicy.maxRestarts"),
    ("negative-gpu", MD, "spec.resources.gpu", -1, "spec.resources.gpu"),
    ("weight-zero-exclusive", Q, "spec.weight", 0, "spec.weight"),
    ("panic-threshold-exclusive", MD, "spec.autoscaling", {"panicThreshold": 1.0},
     "spec.autoscaling.panicThreshold"),
    ("ejection-over-100", MD, "spec.traffic.maxEjectionPercent", 101,
     "spec.traffic.maxEjectionPercent"),
    ("mirror-over-100", MD, "spec.rollout.analysis.mirrorPercent", 101,
     "spec.rollout.analysis.mirrorPercent"),
    ("failure-threshold-zero", MD, "spec.probes.readiness.failureThreshold", 0,
     "spec.probes.readiness.failureThreshold"),
    ("set-weight-over-100", MD, "spec.rollout",
     {"strategy": "canary", "canary": {"steps": [{"setWeight": 101}]}},
     "spec.rollout.canary.steps[0].setWeight"),
    # enums
    ("bad-runtime", MD, "spec.runtime", "tensorflow", "spec.runtime"),
    ("bad-strategy", MD, "spec.rollout.strategy", "bluegreen", "spec.rollout.strategy"),
    ("bad-framework", TJ, "spec.output", {"model": "m", "framework": "pytorch"},
     "spec.output.framework"),
    ("bad-autoscaling-metric", MD, "spec.autoscaling", {"metric": "latency"},
     "spec.autoscaling.metric"),
    # replicas: 2 | {min, max}
    ("negative-replicas", MD, "spec.replicas", -1, "spec.replicas"),
    ("too-many-replicas", MD, "spec.replicas", 1001, "spec.replicas"),
    ("negative-replicas-min", MD, "spec.replicas", {"min": -1, "max": 2}, "spec.replicas.min"),
    ("replicas-max-too-high", MD, "spec.replicas", {"min": 1, "max": 1001}, "spec.replicas.max"),
    ("replicas-string", MD, "spec.replicas", "two", "spec.replicas"),
    ("replicas-fraction", MD, "spec.replicas", 2.5, "spec.replicas"),
    ("replicas-boolean", MD, "spec.replicas", True, "spec.replicas"),
    ("replicas-list", MD, "spec.replicas", [2], "spec.replicas"),
    # quantities and durations
    ("cpu-words", MD, "spec.resources.cpu", "500 millicores", "spec.resources.cpu"),
    ("memory-bad-suffix", MD, "spec.resources.memory", "2GB", "spec.resources.memory"),
    ("memory-negative", MD, "spec.resources.memory", "-1Gi", "spec.resources.memory"),
    ("cpu-zero", MD, "spec.resources.cpu", 0, "spec.resources.cpu"),
    ("cpu-zero-text", TJ, "spec.resources.cpu", "0m", "spec.resources.cpu"),
    ("quota-memory-words", Q, "spec.quota.memory", "lots", "spec.quota.memory"),
    ("duration-words", MD, "spec.probes.readiness.period", "2 seconds",
     "spec.probes.readiness.period"),
    ("duration-negative", MD, "spec.terminationGracePeriod", -5, "spec.terminationGracePeriod"),
    ("duration-days", TJ, "spec.checkpoint", {"interval": "5d"}, "spec.checkpoint.interval"),
    ("surge-without-percent", MD, "spec.rollout",
     {"strategy": "rolling", "rolling": {"maxSurge": "25", "maxUnavailable": 1}},
     "spec.rollout.rolling.maxSurge"),
    ("surge-over-100-percent", MD, "spec.rollout",
     {"strategy": "rolling", "rolling": {"maxSurge": "150%"}}, "spec.rollout.rolling.maxSurge"),
    ("negative-unavailable", MD, "spec.rollout",
     {"strategy": "rolling", "rolling": {"maxUnavailable": -1}},
     "spec.rollout.rolling.maxUnavailable"),
    # names and patterns
    ("name-with-a-dot", MD, "metadata.name", "fraud.detector", "metadata.name"),
    ("queue-name-uppercase", TJ, "spec.queue", "Default", "spec.queue"),
    ("model-ref-with-space", MD, "spec.model", "fraud detector", "spec.model"),
    ("env-name", TJ, "spec.env", [{"name": "1BAD", "value": "x"}], "spec.env[0].name"),
    ("pass-env-name", MD, "spec.passEnv", ["AWS-*"], "spec.passEnv[0]"),
    ("probe-path-relative", MD, "spec.probes.readiness.path", "health",
     "spec.probes.readiness.path"),
    ("check-name-uppercase", MD, "spec.rollout.analysis.checks",
     [{**_CHECK, "name": "Errors"}], "spec.rollout.analysis.checks[0].name"),
    # required fields and sizes
    ("no-spec", TJ, "spec", _DELETE, "spec"),
    ("no-command", TJ, "spec.command", _DELETE, "spec.command"),
    ("no-model", MD, "spec.model", _DELETE, "spec.model"),
    ("env-without-name", TJ, "spec.env", [{"value": "x"}], "spec.env[0].name"),
    ("empty-command", TJ, "spec.command", [], "spec.command"),
    ("no-canary-steps", MD, "spec.rollout", {"strategy": "canary", "canary": {"steps": []}},
     "spec.rollout.canary.steps"),
    ("too-many-checks", MD, "spec.rollout.analysis.checks",
     [{**_CHECK, "name": f"c{i}"} for i in range(33)], "spec.rollout.analysis.checks"),
]  # fmt: skip


def test_the_invalid_cases_start_from_valid_documents(http: httpx.Client, ns: str) -> None:
    """Each case changes one thing in a document both accept."""
    for kind in KINDS:
        doc = _base(kind)
        resource, errors = validate_document(copy.deepcopy(doc), "base", 0)
        assert resource is not None, [str(e) for e in errors]
        response = create(http, ns, {**doc, "metadata": {"name": f"base-{kind.lower()}"}})
        assert response.status_code == 201, response.text


def _names(error: SpecError, field: str) -> bool:
    """Whether a CLI error is about ``field``: at it, or at a parent, naming it (a model
    validator's error is reported at the model)."""
    if error.path.startswith(field):
        return True
    rest = field.removeprefix(error.path).lstrip(".")
    return field.startswith(error.path) and rest.split(".")[0] in error.message


@pytest.mark.parametrize(
    ("kind", "path", "value", "field"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_what_the_cli_refuses_the_api_server_refuses(
    http: httpx.Client, ns: str, kind: str, path: str, value: Any, field: str
) -> None:
    doc = _with(_base(kind), path, value)

    result = load_text(yaml.safe_dump(doc), "case.yaml")
    assert not result.resources, "the CLI took it"
    assert any(_names(e, field) for e in result.errors), [str(e) for e in result.errors]

    response = create(http, ns, doc)
    assert response.status_code in (400, 422), f"{response.status_code}: {response.text}"
    assert field in response.json()["message"], response.json()["message"]


def test_fractional_quantities_must_be_text_on_a_cluster(http: httpx.Client, ns: str) -> None:
    """int-or-string takes integers and strings: ``cpu: 0.5`` is refused on a cluster while
    the CLI takes it; ``"0.5"`` is taken by both and means the same."""
    number = _with(_base(MD), "spec.resources", {"cpu": 0.5})
    assert load_text(yaml.safe_dump(number), "number.yaml").ok
    response = create(http, ns, number)
    assert response.status_code == 422
    assert "spec.resources.cpu" in response.text

    text = _with(_base(MD), "spec.resources", {"cpu": "0.5"})
    text["metadata"]["name"] = "half-a-cpu"
    assert create(http, ns, text).status_code == 201
    parsed = load_text(yaml.safe_dump(text), "text.yaml").resources[0]
    assert isinstance(parsed, ModelDeployment)
    assert parsed.spec.resources.cpu == 500


# --- why ModelDeployment has no scale subresource ----------------------------------------------


def test_a_scale_subresource_would_refuse_one_of_the_replica_forms(installed: Cluster) -> None:
    """The API server checks the value at specReplicasPath as an int64 on every write:
    ``.spec.replicas`` refuses ``{min, max}``, ``.spec.replicas.max`` refuses ``2``."""
    probes: dict[str, str] = {}
    with installed.plane.http() as http:
        try:
            for suffix, spec_path in (("whole", ".spec.replicas"), ("max", ".spec.replicas.max")):
                manifest = copy.deepcopy(crd(ModelDeployment))
                group = f"scale-{suffix}.{GROUP}"
                manifest["metadata"]["name"] = f"modeldeployments.{group}"
                manifest["spec"]["group"] = group
                manifest["spec"]["names"].pop("shortNames")
                manifest["spec"]["names"].pop("categories")
                manifest["spec"]["versions"][0]["subresources"]["scale"] = {
                    "specReplicasPath": spec_path,
                    "statusReplicasPath": ".status.replicas",
                }
                created = http.post(CRD_API, json=manifest)
                assert created.status_code == 201, created.text
                probes[spec_path] = group

            def write(group: str, replicas: Any) -> httpx.Response:
                return http.post(
                    f"/apis/{group}/{VERSION}/namespaces/default/modeldeployments",
                    json={
                        "apiVersion": f"{group}/{VERSION}",
                        "kind": "ModelDeployment",
                        "metadata": {"generateName": "scale-"},
                        "spec": {"model": "m", "replicas": replicas},
                    },
                )

            for group in probes.values():
                wait_for(f"{group} served", _served(http, group, "modeldeployments"), timeout=30)
            whole, at_max = probes[".spec.replicas"], probes[".spec.replicas.max"]
            refused = write(whole, {"min": 1, "max": 3})
            assert refused.status_code == 422
            assert "expected int64" in refused.text
            assert write(whole, 2).status_code == 201
            refused = write(at_max, 2)
            assert refused.status_code == 422
            assert "accessor error" in refused.text
            assert write(at_max, {"min": 1, "max": 3}).status_code == 201
        finally:
            for group in probes.values():
                http.delete(f"{CRD_API}/modeldeployments.{group}")
