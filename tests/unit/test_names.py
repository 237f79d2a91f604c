"""Names are whole-string matches, and no name can move a request onto another path."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import TypeAdapter, ValidationError

from pilothouse.api.client import Client, segment
from pilothouse.api.server import path_problem
from pilothouse.spec.loader import load_text
from pilothouse.spec.types import (
    Labels,
    ModelRef,
    Name,
    is_model_name,
    is_name,
    label_key_problem,
    name_problem,
    split_model_ref,
)

TRAILING = ["fraud\n", "fraud\r\n", "\nfraud", "fra\nud", "fraud ", "fraud\x00"]


@pytest.mark.parametrize("value", TRAILING)
def test_names_with_a_newline_or_odd_character_are_refused(value: str) -> None:
    assert not is_name(value)
    with pytest.raises(ValidationError, match="DNS-1123"):
        TypeAdapter(Name).validate_python(value)
    assert name_problem(value) is not None


def test_valid_names_still_pass() -> None:
    for value in ("fraud", "a", "fraud-2", "x" * 63):
        assert is_name(value)
        assert TypeAdapter(Name).validate_python(value) == value
    assert not is_name("x" * 64)
    assert not is_name("-a")


def test_a_manifest_name_with_a_trailing_newline_names_metadata_name() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: pilothouse.dev/v1alpha1
        kind: Queue
        metadata:
          name: "fraud\\n"
        spec: {}
        """
    )
    result = load_text(text, "q.yaml")
    assert not result.ok
    [error] = result.errors
    assert error.path == "metadata.name"
    assert error.line == 4
    assert "DNS-1123" in error.message
    assert "'fraud\\n'" in str(error)


@pytest.mark.parametrize(
    "ref", ["fraud\n", "fraud:3\n", "fraud@staging\n", "fraud:latest\n", "fraud:3x", "../fraud"]
)
def test_model_refs_are_whole_string_matches(ref: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(ModelRef).validate_python(ref)
    with pytest.raises(ValueError, match="invalid model reference"):
        split_model_ref(ref)


def test_model_refs_still_split() -> None:
    assert split_model_ref("fraud") == ("fraud", None, None)
    assert split_model_ref("fraud:3") == ("fraud", "3", None)
    assert split_model_ref("fraud.v2@production") == ("fraud.v2", None, "production")


def test_model_names() -> None:
    assert is_model_name("fraud")
    assert is_model_name("fraud_v2.onnx")
    for bad in ("fraud\n", "../x", "/abs", "a/b", ".hidden", "fraud:1", "", "x" * 254):
        assert not is_model_name(bad), bad


def test_label_keys_and_values() -> None:
    assert label_key_problem("app") is None
    assert label_key_problem("pilothouse.dev/team") is None
    for bad in ("app\n", "a/b/c", "Bad.Prefix/x", "/x", "x/", "-x", "x" * 64):
        assert label_key_problem(bad) is not None, bad
    labels = TypeAdapter(Labels)
    assert labels.validate_python({"team": "ml", "tier": ""}) == {"team": "ml", "tier": ""}
    with pytest.raises(ValidationError, match="label value"):
        labels.validate_python({"team": "ml\n"})
    with pytest.raises(ValidationError, match="label key"):
        labels.validate_python({"team\n": "ml"})


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("../../nodes", "%2E%2E%2F%2E%2E%2Fnodes"),
        ("..", "%2E%2E"),
        ("a?b#c", "a%3Fb%23c"),
        ("a%2Fb", "a%252Fb"),
        ("a b", "a%20b"),
    ],
)
def test_segment_quotes_everything_that_could_leave_the_segment(name: str, quoted: str) -> None:
    assert segment(name) == quoted
    assert "/" not in segment(name)
    assert "?" not in segment(name)
    assert "#" not in segment(name)


def test_client_paths_keep_names_in_one_segment() -> None:
    client = Client("http://127.0.0.1:9", "t" * 40)
    try:
        path = client.path("modeldeployments", "../queues/research", "events")
        assert path == (
            "/apis/pilothouse.dev/v1alpha1/modeldeployments/%2E%2E%2Fqueues%2Fresearch/events"
        )
        # what goes on the wire: httpx must not normalise anything away
        request = client._http.build_request("DELETE", client.path("modeldeployments", ".."))
        assert request.url.raw_path == b"/apis/pilothouse.dev/v1alpha1/modeldeployments/%2E%2E"
    finally:
        client.close()


@pytest.mark.parametrize(
    "raw",
    [
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/..%2F..%2Fnodes",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/%2E%2E",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/..",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud%0A",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/Fraud/events",
        "/apis/pilothouse.dev/v1alpha1/queues/a%3Fb/rollout",
        "/apis/pilothouse.dev/v1alpha1/model%2Fdeployments/x",
        "/api/v1/nodes/gpu-1%2F..%2F..",
        "/api/v1/nodes/GPU/cordon",
    ],
)
def test_paths_with_invalid_names_are_refused(raw: str) -> None:
    problem = path_problem(raw)
    assert problem is not None
    assert "expected" in problem


@pytest.mark.parametrize(
    "raw",
    [
        "/apis/pilothouse.dev/v1alpha1/modeldeployments",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud-2",
        "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/log?tail=10",
        "/apis/pilothouse.dev/v1alpha1/apply",
        "/api/v1/nodes",
        "/api/v1/nodes/gpu-1/drain",
        "/healthz",
    ],
)
def test_paths_with_valid_names_pass(raw: str) -> None:
    assert path_problem(raw) is None
