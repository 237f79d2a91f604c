"""Whole-document validation through ``load_text``: defaults, errors, lines, round trips."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilothouse.spec.loader import LoadResult, SpecError, SpecValidationError, load_text
from pilothouse.spec.resources import (
    API_VERSION,
    KINDS,
    ModelDeployment,
    Queue,
    Resource,
    TrainingJob,
)

APIV = f"apiVersion: {API_VERSION}"
API = APIV + "\n"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load_one(text: str) -> Resource:
    result = load_text(doc(text), "test.yaml")
    assert result.ok, [str(e) for e in result.errors]
    assert len(result.resources) == 1
    return result.resources[0]


def dumped(resource: Resource) -> dict[str, Any]:
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- valid documents


def test_training_job_loads_with_defaults() -> None:
    job = load_one(
        f"""
        {APIV}
        kind: TrainingJob
        metadata:
          name: train-fraud
          labels: {{team: risk}}
        spec:
          command: [python, train.py]
          args: ["--epochs", "3"]
          env:
            - name: SEED
              value: "42"
          workers: 2
          resources:
            cpu: 500m
            memory: 2Gi
            gpu: 1
          output:
            model: fraud-detector
        """
    )
    assert isinstance(job, TrainingJob)
    assert job.kind == "TrainingJob"
    assert job.api_version == API_VERSION
    assert job.key() == ("TrainingJob", "train-fraud")
    assert job.metadata.namespace == "default"
    assert job.metadata.labels == {"team": "risk"}
    spec = job.spec
    assert spec.command == ["python", "train.py"]
    assert spec.args == ["--epochs", "3"]
    assert spec.env[0].name == "SEED"
    assert spec.env[0].value == "42"
    assert spec.workers == 2
    assert spec.resources.cpu == 500
    assert spec.resources.memory == 2 * 2**30
    assert spec.resources.gpu == 1
    assert spec.queue == "default"
    assert spec.priority == 0
    assert spec.checkpoint is None
    assert spec.working_dir is None
    assert spec.output is not None
    assert spec.output.model == "fraud-detector"
    assert spec.output.framework == "sklearn"
    # restartPolicy defaults
    assert spec.restart_policy.max_restarts == 3
    assert spec.restart_policy.backoff.initial == 1.0
    assert spec.restart_policy.backoff.max == 60.0
    assert spec.restart_policy.backoff.multiplier == 2.0
    assert job.status is None


def test_training_job_minimal_defaults() -> None:
    job = load_one(
        f"""
        {APIV}
        kind: TrainingJob
        metadata: {{name: t}}
        spec: {{command: [run]}}
        """
    )
    assert isinstance(job, TrainingJob)
    assert job.spec.workers == 1
    assert job.spec.resources.cpu == 1000
    assert job.spec.resources.memory == 512 * 2**20
    assert job.spec.resources.gpu == 0


def test_training_job_durations_and_checkpoint() -> None:
    job = load_one(
        f"""
        {APIV}
        kind: TrainingJob
        metadata: {{name: t}}
        spec:
          command: [run]
          checkpoint: {{interval: 1h30m, keep: 5}}
          restartPolicy:
            maxRestarts: 10
            backoff: {{initial: 250ms, max: 5m, multiplier: 3}}
        """
    )
    assert isinstance(job, TrainingJob)
    assert job.spec.checkpoint is not None
    assert job.spec.checkpoint.interval == 5400.0
    assert job.spec.checkpoint.keep == 5
    assert job.spec.restart_policy.max_restarts == 10
    assert job.spec.restart_policy.backoff.initial == 0.25
    assert job.spec.restart_policy.backoff.max == 300.0
    assert job.spec.restart_policy.backoff.multiplier == 3.0
    out = dumped(job)["spec"]
    assert out["checkpoint"] == {"interval": "1h30m", "keep": 5}
    assert out["restartPolicy"]["backoff"] == {"initial": "250ms", "max": "5m", "multiplier": 3.0}


def test_model_deployment_loads_with_defaults() -> None:
    md = load_one(
        f"""
        {APIV}
        kind: ModelDeployment
        metadata:
          name: fraud
        spec:
          model: fraud-detector@production
          replicas: 2
          resources:
            cpu: "1.5"
            memory: 512Mi
        """
    )
    assert isinstance(md, ModelDeployment)
    assert md.spec.model == "fraud-detector@production"
    assert md.spec.runtime == "auto"
    assert md.spec.replicas.min == 2
    assert md.spec.replicas.max == 2
    assert md.spec.resources.cpu == 1500
    assert md.spec.resources.memory == 512 * 2**20
    assert md.spec.probes.readiness.path == "/v2/health/ready"
    assert md.spec.probes.liveness.path == "/v2/health/live"
    assert md.spec.probes.readiness.period == 2.0
    assert md.spec.probes.readiness.timeout == 1.0
    assert md.spec.probes.readiness.failure_threshold == 3
    out = dumped(md)
    assert out["spec"]["resources"] == {"cpu": "1500m", "memory": "512Mi", "gpu": 0}
    assert out["spec"]["replicas"] == {"min": 2, "max": 2}
    assert out["spec"]["probes"]["readiness"]["failureThreshold"] == 3
    assert out["spec"]["probes"]["readiness"]["period"] == "2s"


@pytest.mark.parametrize(
    ("replicas", "bounds"),
    [
        ("0", (0, 1)),
        ("1", (1, 1)),
        ("5", (5, 5)),
        ("{min: 1, max: 4}", (1, 4)),
        ("{max: 3}", (1, 3)),
    ],
)
def test_replica_forms(replicas: str, bounds: tuple[int, int]) -> None:
    md = load_one(
        f"""
        {APIV}
        kind: ModelDeployment
        metadata: {{name: m}}
        spec: {{model: "m:3", replicas: {replicas}}}
        """
    )
    assert isinstance(md, ModelDeployment)
    assert (md.spec.replicas.min, md.spec.replicas.max) == bounds


@pytest.mark.parametrize(
    "ref", ["m", "fraud-detector", "m:3", "m:latest", "m@staging", "m@production", "m@archived"]
)
def test_model_refs_accepted(ref: str) -> None:
    md = load_one(
        f"""
        {APIV}
        kind: ModelDeployment
        metadata: {{name: m}}
        spec: {{model: "{ref}"}}
        """
    )
    assert isinstance(md, ModelDeployment)
    assert md.spec.model == ref


def test_queue_loads_with_defaults() -> None:
    q = load_one(
        f"""
        {APIV}
        kind: Queue
        metadata: {{name: research}}
        """
    )
    assert isinstance(q, Queue)
    assert q.spec.weight == 1.0
    assert q.spec.priority == 0
    assert q.spec.quota.cpu is None
    assert q.spec.quota.memory is None
    assert q.spec.quota.gpu is None


def test_queue_with_quota() -> None:
    q = load_one(
        f"""
        {APIV}
        kind: Queue
        metadata: {{name: research}}
        spec:
          weight: 2.5
          priority: 10
          quota: {{cpu: 8, memory: 32Gi, gpu: 2}}
        """
    )
    assert isinstance(q, Queue)
    assert q.spec.quota.cpu == 8000
    assert q.spec.quota.memory == 32 * 2**30
    assert q.spec.quota.gpu == 2
    assert q.spec.weight == 2.5
    assert dumped(q)["spec"]["quota"] == {"cpu": "8", "memory": "32Gi", "gpu": 2}


def test_json_document_loads() -> None:
    text = (
        '{"apiVersion": "pilothouse.dev/v1alpha1", "kind": "Queue",'
        ' "metadata": {"name": "q"}, "spec": {"weight": 3}}'
    )
    result = load_text(text, "q.json")
    assert result.ok
    assert isinstance(result.resources[0], Queue)
    assert result.resources[0].spec.weight == 3.0


def test_multi_document_file_loads_in_order_with_origins() -> None:
    text = doc(
        f"""
        ---
        {APIV}
        kind: Queue
        metadata: {{name: a}}
        ---
        # an empty document is skipped, but still counted
        ---
        {APIV}
        kind: ModelDeployment
        metadata: {{name: b}}
        spec: {{model: b}}
        """
    )
    result = load_text(text, "multi.yaml")
    assert result.ok, [str(e) for e in result.errors]
    assert [r.key() for r in result.resources] == [("Queue", "a"), ("ModelDeployment", "b")]
    assert result.origins == [("multi.yaml", 1), ("multi.yaml", 3)]


def test_server_set_metadata_is_accepted() -> None:
    q = load_one(
        f"""
        {APIV}
        kind: Queue
        metadata:
          name: q
          uid: "1234"
          generation: 7
          resourceVersion: "9"
          creationTimestamp: "2024-01-01T00:00:00Z"
        status: {{phase: Ready}}
        """
    )
    assert q.metadata.generation == 7
    assert q.metadata.resource_version == "9"
    assert q.status == {"phase": "Ready"}


# --------------------------------------------------------------------------- bad documents


def _td(spec: str, name: str = "t") -> str:
    """A TrainingJob document with the given (indented, multi-line) spec body."""
    return f"{API}kind: TrainingJob\nmetadata:\n  name: {name}\nspec:\n{spec}"


def _md(spec: str, name: str = "m") -> str:
    return f"{API}kind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n{spec}"


BAD_DOCUMENTS: list[tuple[str, str, str, str]] = [
    # (id, yaml text, SpecError.path, substring of the message)
    ("yaml-syntax", f"{API}kind: Queue\nmetadata: {{name: q\n", "", "invalid YAML"),
    ("yaml-tab-indent", f"{API}kind: Queue\nmetadata:\n\tname: q\n", "", "invalid YAML"),
    (
        "unknown-kind",
        f"{API}kind: TrainingJobb\nmetadata: {{name: t}}\n",
        "kind",
        "did you mean 'TrainingJob'",
    ),
    ("unknown-kind-no-hint", f"{API}kind: Pod\nmetadata: {{name: t}}\n", "kind", "unknown kind"),
    (
        "wrong-api-version",
        "apiVersion: v1\nkind: Queue\nmetadata: {name: q}\n",
        "apiVersion",
        f"expected '{API_VERSION}'",
    ),
    (
        "unserved-api-version",
        "apiVersion: pilothouse.dev/v2\nkind: Queue\nmetadata: {name: q}\n",
        "apiVersion",
        "version not served",
    ),
    (
        "missing-api-version",
        "kind: Queue\nmetadata: {name: q}\n",
        "apiVersion",
        "required field is missing",
    ),
    ("missing-kind", f"{API}metadata: {{name: q}}\n", "kind", "required field is missing"),
    ("list-not-mapping", "- a\n- b\n", "", "expected a mapping"),
    ("scalar-not-mapping", "just a string\n", "", "expected a mapping"),
    (
        "misspelled-field",
        _md("  model: m\n  replicass: 2\n"),
        "spec.replicass",
        "did you mean 'replicas'",
    ),
    (
        "unknown-top-level-field",
        f"{API}kind: Queue\nmetadata: {{name: q}}\nspecs: {{}}\n",
        "specs",
        "did you mean 'spec'",
    ),
    (
        "unknown-nested-field",
        _td("  command: [x]\n  restartPolicy:\n    maxRestart: 2\n"),
        "spec.restartPolicy.maxRestart",
        "did you mean 'maxRestarts'",
    ),
    ("negative-replicas", _md("  model: m\n  replicas: -1\n"), "spec.replicas", "replica count"),
    (
        "replicas-min-above-max",
        _md("  model: m\n  replicas: {min: 3, max: 2}\n"),
        "spec.replicas",
        "must not be greater than max",
    ),
    (
        "replicas-max-zero",
        _md("  model: m\n  replicas: {min: 0, max: 0}\n"),
        "spec.replicas.max",
        "greater than or equal to 1",
    ),
    (
        "bad-cpu",
        _td("  command: [x]\n  resources:\n    cpu: 5x\n"),
        "spec.resources.cpu",
        "expected a quantity",
    ),
    (
        "zero-cpu",
        _td("  command: [x]\n  resources:\n    cpu: 0\n"),
        "spec.resources.cpu",
        "greater than zero",
    ),
    (
        "bool-cpu",
        _td("  command: [x]\n  resources:\n    cpu: true\n"),
        "spec.resources.cpu",
        "expected a CPU quantity",
    ),
    (
        "zero-memory",
        _td("  command: [x]\n  resources:\n    memory: 0\n"),
        "spec.resources.memory",
        "greater than zero",
    ),
    (
        "negative-memory",
        _td("  command: [x]\n  resources:\n    memory: -1Gi\n"),
        "spec.resources.memory",
        "greater than zero",
    ),
    (
        "negative-gpu",
        _td("  command: [x]\n  resources:\n    gpu: -1\n"),
        "spec.resources.gpu",
        "greater than or equal to 0",
    ),
    (
        "bad-name",
        f"{API}kind: Queue\nmetadata:\n  name: Bad_Name\n",
        "metadata.name",
        "DNS-1123",
    ),
    ("name-too-long", f"{API}kind: Queue\nmetadata:\n  name: {'a' * 64}\n", "metadata.name", "63"),
    ("missing-name", f"{API}kind: Queue\nmetadata: {{}}\n", "metadata.name", "required field"),
    ("missing-metadata", f"{API}kind: Queue\n", "metadata", "required field is missing"),
    ("missing-model", _md("  replicas: 1\n"), "spec.model", "required field is missing"),
    ("missing-spec", f"{API}kind: TrainingJob\nmetadata: {{name: t}}\n", "spec", "required"),
    (
        "bad-model-ref",
        _md("  model: Fraud Model\n"),
        "spec.model",
        "expected a model reference",
    ),
    ("bad-model-stage", _md("  model: m@prod\n"), "spec.model", "expected a model reference"),
    ("empty-command", _td("  command: []\n"), "spec.command", "at least 1 item"),
    ("missing-command", _td("  workers: 1\n"), "spec.command", "required field is missing"),
    (
        "backoff-initial-above-max",
        _td("  command: [x]\n  restartPolicy:\n    backoff: {initial: 2m, max: 30s}\n"),
        "spec.restartPolicy.backoff",
        "initial must not be greater than max",
    ),
    (
        "bad-probe-duration",
        _md("  model: m\n  probes:\n    readiness:\n      period: soon\n"),
        "spec.probes.readiness.period",
        "expected a duration",
    ),
    (
        "bad-probe-path",
        _md("  model: m\n  probes:\n    liveness:\n      path: health\n"),
        "spec.probes.liveness.path",
        "pattern",
    ),
    (
        "workers-zero",
        _td("  command: [x]\n  workers: 0\n"),
        "spec.workers",
        "greater than or equal",
    ),
    ("bad-runtime", _md("  model: m\n  runtime: torch\n"), "spec.runtime", "expected 'auto'"),
    (
        "bad-env-name",
        _td("  command: [x]\n  env:\n    - name: 1BAD\n"),
        "spec.env[0].name",
        "pattern",
    ),
    (
        "queue-weight-zero",
        f"{API}kind: Queue\nmetadata: {{name: q}}\nspec: {{weight: 0}}\n",
        "spec.weight",
        "greater than 0",
    ),
    (
        "priority-too-high",
        _td("  command: [x]\n  priority: 5000\n"),
        "spec.priority",
        "less than or equal to 1000",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [row[1:] for row in BAD_DOCUMENTS],
    ids=[row[0] for row in BAD_DOCUMENTS],
)
def test_bad_documents(text: str, path: str, message: str) -> None:
    result = load_text(text, "bad.yaml")
    assert not result.ok
    assert result.resources == []
    matching = [e for e in result.errors if e.path == path]
    assert matching, f"no error at {path!r}; got {[str(e) for e in result.errors]}"
    assert any(message in e.message for e in matching), [e.message for e in matching]
    for error in result.errors:
        assert isinstance(error, SpecError)
        assert error.source == "bad.yaml"
        assert error.document == 1


def test_invalid_yaml_has_line() -> None:
    text = f"{API}kind: Queue\nmetadata:\n  name: q\n  labels: {{a: b\n"
    result = load_text(text, "bad.yaml")
    [error] = result.errors
    assert error.path == ""
    assert error.message.startswith("invalid YAML")
    assert error.line is not None
    assert error.line >= 4


def test_invalid_yaml_in_later_document_is_numbered() -> None:
    text = f"{API}kind: Queue\nmetadata: {{name: a}}\n---\n{API}kind: Queue\nmetadata: [\n"
    result = load_text(text, "bad.yaml")
    assert [r.key() for r in result.resources] == [("Queue", "a")]
    [error] = result.errors
    assert error.document == 2
    assert "invalid YAML" in error.message


def test_bad_value_is_reported() -> None:
    result = load_text(_td("  command: [x]\n  resources:\n    cpu: 5x\n"), "bad.yaml")
    [error] = result.errors
    assert error.has_value
    assert error.value == "5x"
    assert "5x" in str(error)
    assert error.as_dict()["value"] == "5x"
    assert error.as_dict()["field"] == "spec.resources.cpu"


def test_missing_field_has_no_value() -> None:
    result = load_text(_md("  replicas: 1\n"), "bad.yaml")
    [error] = result.errors
    assert not error.has_value
    assert "value" not in error.as_dict()


def test_several_errors_in_one_document_are_all_reported() -> None:
    text = _td("  command: []\n  workers: 0\n  resources:\n    cpu: 5x\n    memory: 0\n")
    result = load_text(text, "bad.yaml")
    assert {e.path for e in result.errors} == {
        "spec.command",
        "spec.workers",
        "spec.resources.cpu",
        "spec.resources.memory",
    }
    lines = [e.line or 0 for e in result.errors]
    assert lines == sorted(lines)


def test_unknown_kind_and_api_version_reported_together() -> None:
    result = load_text("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n", "x.yaml")
    assert {e.path for e in result.errors} == {"apiVersion", "kind"}


def test_all_errors_in_a_file_are_reported_at_once() -> None:
    text = doc(
        f"""
        {APIV}
        kind: TrainingJob
        metadata: {{name: one}}
        spec: {{command: []}}
        ---
        {APIV}
        kind: Queue
        metadata: {{name: two}}
        ---
        {APIV}
        kind: ModelDeployment
        metadata: {{name: three}}
        spec: {{model: "Bad Ref"}}
        """
    )
    result = load_text(text, "three.yaml")
    assert result.ok is False
    assert {e.document for e in result.errors} == {1, 3}
    assert {(e.document, e.path) for e in result.errors} == {
        (1, "spec.command"),
        (3, "spec.model"),
    }
    # The valid document still validates; the caller decides to apply nothing.
    assert [r.key() for r in result.resources] == [("Queue", "two")]
    raised = SpecValidationError(result.errors)
    assert raised.errors == result.errors
    assert "document 1" in str(raised)
    assert "document 3" in str(raised)


def test_errors_carry_line_of_offending_key() -> None:
    text = doc(
        f"""
        {APIV}
        kind: ModelDeployment
        metadata:
          name: fraud
        spec:
          model: fraud-detector
          resources:
            cpu: 500m
          replicass: 2
        """
    )
    result = load_text(text, "md.yaml")
    [error] = result.errors
    assert error.path == "spec.replicass"
    assert "did you mean 'replicas'" in error.message
    assert error.line == 9


def test_line_of_nested_value_and_list_item() -> None:
    text = doc(
        f"""
        {APIV}
        kind: TrainingJob
        metadata:
          name: t
        spec:
          command: [x]
          env:
            - name: OK
            - name: "1BAD"
          resources:
            cpu: 1
            memory: lots
        """
    )
    result = load_text(text, "tj.yaml")
    by_path = {e.path: e for e in result.errors}
    assert set(by_path) == {"spec.env[1].name", "spec.resources.memory"}
    assert by_path["spec.env[1].name"].line == 9
    assert by_path["spec.resources.memory"].line == 12


def test_line_numbers_count_from_file_start_in_later_documents() -> None:
    text = f"{API}kind: Queue\nmetadata: {{name: a}}\n---\n{API}kind: Queue\nmetadata:\n  nam: b\n"
    result = load_text(text, "q.yaml")
    by_path = {e.path: e for e in result.errors}
    assert set(by_path) == {"metadata.nam", "metadata.name"}
    assert {e.document for e in result.errors} == {2}
    assert by_path["metadata.nam"].line == 8
    assert by_path["metadata.name"].line == 7  # missing: the line of its parent key


def test_str_names_source_document_and_field() -> None:
    text = f"{API}kind: Queue\nmetadata: {{name: a}}\n---\n{API}kind: Queue\nmetadata:\n  nam: b\n"
    errors = load_text(text, "deploy/queues.yaml").errors
    [error] = [e for e in errors if e.path == "metadata.nam"]
    text_form = str(error)
    assert text_form.startswith("deploy/queues.yaml:8: ")
    assert "document 2" in text_form
    assert "metadata.nam" in text_form
    assert "unknown field" in text_form


def test_str_without_line() -> None:
    error = SpecError(source="x.yaml", document=3, path="spec.a", message="boom")
    assert str(error) == "x.yaml: document 3: spec.a: boom"
    error = SpecError(source="x.yaml", document=1, path="", message="boom", line=2)
    assert str(error) == "x.yaml:2: document 1: boom"
    error = SpecError(source="x.yaml", document=1, path="f", message="bad", value=5, has_value=True)
    assert str(error) == "x.yaml: document 1: f: bad (got 5)"


def test_duplicate_kind_and_name_is_an_error() -> None:
    text = doc(
        f"""
        {APIV}
        kind: Queue
        metadata: {{name: same}}
        ---
        {APIV}
        kind: ModelDeployment
        metadata: {{name: same}}
        spec: {{model: m}}
        ---
        {APIV}
        kind: Queue
        metadata: {{name: same}}
        spec: {{weight: 2}}
        """
    )
    result = load_text(text, "dup.yaml")
    assert not result.ok
    [error] = result.errors
    assert error.document == 3
    assert error.path == "metadata.name"
    assert "duplicate Queue 'same'" in error.message
    assert "dup.yaml document 1" in error.message
    # same name, different kind, is fine
    assert [r.key() for r in result.resources] == [("Queue", "same"), ("ModelDeployment", "same")]


def test_duplicate_across_sources_in_one_result() -> None:
    result = LoadResult()
    load_text(f"{API}kind: Queue\nmetadata: {{name: q}}\n", "a.yaml", result)
    load_text(f"{API}kind: Queue\nmetadata: {{name: q}}\n", "b.yaml", result)
    [error] = result.errors
    assert error.source == "b.yaml"
    assert "already declared in a.yaml document 1" in error.message


def test_kind_list_is_expanded() -> None:
    text = doc(
        f"""
        apiVersion: v1
        kind: List
        items:
          - {APIV}
            kind: Queue
            metadata: {{name: q}}
          - {APIV}
            kind: ModelDeployment
            metadata: {{name: m}}
            spec: {{model: m}}
        """
    )
    result = load_text(text, "list.yaml")
    assert result.ok, [str(e) for e in result.errors]
    assert [r.key() for r in result.resources] == [("Queue", "q"), ("ModelDeployment", "m")]
    assert result.origins == [("list.yaml", 1), ("list.yaml", 1)]


def test_kind_list_items_are_validated() -> None:
    text = doc(
        f"""
        apiVersion: v1
        kind: List
        items:
          - {APIV}
            kind: Queue
            metadata: {{name: q}}
          - {APIV}
            kind: ModelDeployment
            metadata: {{name: m}}
            spec: {{model: "No Good"}}
        """
    )
    result = load_text(text, "list.yaml")
    assert not result.ok
    [error] = result.errors
    assert error.path.endswith("spec.model")
    assert error.document == 1


def test_empty_text_loads_nothing_without_errors() -> None:
    result = load_text("", "empty.yaml")
    assert result.ok
    assert result.resources == []
    result = load_text("---\n# only a comment\n---\n", "empty.yaml")
    assert result.ok
    assert result.resources == []


def test_load_text_appends_to_given_result() -> None:
    result = LoadResult()
    returned = load_text(f"{API}kind: Queue\nmetadata: {{name: a}}\n", "a.yaml", result)
    assert returned is result
    load_text(f"{API}kind: Queue\nmetadata: {{name: b}}\n", "b.yaml", result)
    assert [r.metadata.name for r in result.resources] == ["a", "b"]
    assert result.origins == [("a.yaml", 1), ("b.yaml", 1)]


# --------------------------------------------------------------------------- odd values


@pytest.mark.parametrize("kind", ["null", "5", "[a]"])
def test_non_string_kind_is_reported_not_raised(kind: str) -> None:
    result = load_text(f"{API}kind: {kind}\nmetadata: {{name: a}}\n", "x.yaml")
    assert [e.path for e in result.errors] == ["kind"]


@pytest.mark.parametrize("items", ["5", "abc", "{a: b}"])
def test_list_with_non_list_items_is_reported_not_raised(items: str) -> None:
    result = load_text(f"apiVersion: v1\nkind: List\nitems: {items}\n", "x.yaml")
    assert not result.ok
    [error] = result.errors
    assert error.path == "items"
    assert "expected a list" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu", ".inf"),
        ("cpu", ".nan"),
        ("cpu", "-.inf"),
        ("cpu", "'1e9999999'"),
        ("cpu", "'1e5000'"),
        ("memory", ".inf"),
        ("memory", "'9Ei'"),
    ],
)
def test_non_finite_or_huge_quantities_are_reported_not_raised(field: str, value: str) -> None:
    result = load_text(_td(f"  command: [x]\n  resources:\n    {field}: {value}\n"), "x.yaml")
    [error] = result.errors
    assert error.path == f"spec.resources.{field}"
    assert "expected" in error.message


@pytest.mark.parametrize("value", [".inf", ".nan", "-1", "'100000h'"])
def test_non_finite_or_huge_durations_are_reported(value: str) -> None:
    text = _md(f"  model: m\n  probes:\n    readiness:\n      period: {value}\n")
    result = load_text(text, "x.yaml")
    [error] = result.errors
    assert error.path == "spec.probes.readiness.period"
    assert "expected" in error.message


# --------------------------------------------------------------------------- round trips

_NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_MODEL_REFS = st.one_of(
    _NAMES,
    st.builds(lambda n, v: f"{n}:{v}", _NAMES, st.integers(min_value=0, max_value=999)),
    st.builds(lambda n: f"{n}:latest", _NAMES),
    st.builds(
        lambda n, s: f"{n}@{s}", _NAMES, st.sampled_from(["staging", "production", "archived"])
    ),
)
_CPU = st.integers(min_value=1, max_value=64000)
_MEMORY = st.integers(min_value=1, max_value=4096).map(lambda n: n * 2**20)
_MILLIS = st.integers(min_value=1, max_value=10**7).map(lambda ms: ms / 1000)


@st.composite
def _replicas(draw: st.DrawFn) -> dict[str, int] | int:
    low = draw(st.integers(min_value=0, max_value=5))
    high = draw(st.integers(min_value=max(low, 1), max_value=8))
    if draw(st.booleans()) and low == high:
        return low
    return {"min": low, "max": high}


@st.composite
def _resources(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        millis = draw(_CPU)
        out["cpu"] = draw(st.sampled_from([f"{millis}m", millis / 1000, str(millis / 1000)]))
    if draw(st.booleans()):
        out["memory"] = draw(_MEMORY.map(lambda b: f"{b // 2**20}Mi"))
    if draw(st.booleans()):
        out["gpu"] = draw(st.integers(min_value=0, max_value=8))
    return out


@st.composite
def model_deployments(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": draw(_MODEL_REFS)}
    if draw(st.booleans()):
        spec["replicas"] = draw(_replicas())
    if draw(st.booleans()):
        spec["resources"] = draw(_resources())
    if draw(st.booleans()):
        spec["runtime"] = draw(st.sampled_from(["auto", "sklearn", "onnx", "custom"]))
    if draw(st.booleans()):
        spec["probes"] = {
            "readiness": {
                "period": draw(_MILLIS),
                "failureThreshold": draw(st.integers(min_value=1, max_value=100)),
            }
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": draw(_NAMES)},
        "spec": spec,
    }


_ARGS = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"])), max_size=3)


@st.composite
def training_jobs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "command": draw(st.lists(st.sampled_from(["python", "-m", "x"]), min_size=1, max_size=3))
    }
    if draw(st.booleans()):
        spec["args"] = draw(_ARGS)
    if draw(st.booleans()):
        spec["workers"] = draw(st.integers(min_value=1, max_value=16))
    if draw(st.booleans()):
        spec["resources"] = draw(_resources())
    if draw(st.booleans()):
        spec["queue"] = draw(_NAMES)
    if draw(st.booleans()):
        spec["priority"] = draw(st.integers(min_value=-1000, max_value=1000))
    if draw(st.booleans()):
        initial = draw(st.integers(min_value=0, max_value=600_000))
        spec["restartPolicy"] = {
            "maxRestarts": draw(st.integers(min_value=0, max_value=1000)),
            "backoff": {
                "initial": f"{initial}ms",
                "max": (initial + 1000 * draw(st.integers(min_value=0, max_value=3600))) / 1000,
                "multiplier": draw(st.sampled_from([1.0, 1.5, 2.0, 10.0])),
            },
        }
    if draw(st.booleans()):
        spec["checkpoint"] = {"interval": draw(_MILLIS), "keep": draw(st.integers(1, 10))}
    if draw(st.booleans()):
        spec["output"] = {
            "model": draw(_NAMES),
            "framework": draw(st.sampled_from(["sklearn", "onnx"])),
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": draw(_NAMES), "labels": {"app": draw(_NAMES)}},
        "spec": spec,
    }


def _round_trip(document: dict[str, Any]) -> None:
    first = load_text(yaml.safe_dump(document), "gen.yaml")
    assert first.ok, [str(e) for e in first.errors]
    stored = dumped(first.resources[0])
    second = load_text(yaml.safe_dump(stored), "stored.yaml")
    assert second.ok, [str(e) for e in second.errors]
    assert dumped(second.resources[0]) == stored
    assert second.resources[0] == first.resources[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_deployments())
def test_model_deployment_round_trips(document: dict[str, Any]) -> None:
    _round_trip(document)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(training_jobs())
def test_training_job_round_trips(document: dict[str, Any]) -> None:
    _round_trip(document)


@settings(max_examples=30, deadline=None)
@given(
    name=_NAMES,
    weight=st.integers(min_value=1, max_value=1000),
    cpu=st.none() | _CPU,
    memory=st.none() | _MEMORY,
)
def test_queue_round_trips(name: str, weight: int, cpu: int | None, memory: int | None) -> None:
    quota = {k: v for k, v in {"cpu": cpu and f"{cpu}m", "memory": memory}.items() if v}
    _round_trip(
        {
            "apiVersion": API_VERSION,
            "kind": "Queue",
            "metadata": {"name": name},
            "spec": {"weight": weight, "quota": quota},
        }
    )


@given(_NAMES)
def test_generated_names_are_valid(name: str) -> None:
    load_one(f"{API}kind: Queue\nmetadata: {{name: '{name}'}}\n")


def test_every_kind_is_covered() -> None:
    assert set(KINDS) == {"TrainingJob", "ModelDeployment", "Queue"}
