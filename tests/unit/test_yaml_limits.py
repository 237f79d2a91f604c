"""YAML bombs (alias expansion, deep nesting, recursive aliases) are refused fast, with
the file and line, everywhere YAML is read from users."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pilothouse.spec.loader import (
    MAX_ALIAS_EXPANSIONS,
    MAX_YAML_DEPTH,
    YamlLimitError,
    load_paths,
    load_text,
    safe_load,
)

QUEUE = "apiVersion: pilothouse.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\nspec: {}\n"


def billion_laughs(levels: int = 9) -> str:
    text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    return text


def one_wide_alias(uses: int) -> str:
    """Few alias tokens, each bringing in a big node: counted by the nodes they bring."""
    return (
        "big: &big [" + ", ".join(["x"] * 1000) + "]\nuses: [" + ", ".join(["*big"] * uses) + "]\n"
    )


def test_billion_laughs_is_refused_with_its_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(QUEUE + "---\n" + billion_laughs())
    result = load_paths([str(bomb)])
    [error] = result.errors
    assert error.source == str(bomb)
    assert error.document == 2
    assert error.line is not None
    assert error.line > 5
    assert "aliases expand to more than" in error.message
    assert not result.resources or result.errors, "nothing may be applied"


def test_alias_expansions_are_counted_by_nodes_not_tokens() -> None:
    # ten alias tokens only, but 10 x 1001 nodes reached through them
    result = load_text(one_wide_alias(10), "wide.yaml")
    assert [e.message for e in result.errors if "aliases expand" in e.message]
    # the same with three uses composes (the document is then no resource, but no bomb)
    errors = load_text(one_wide_alias(3), "ok.yaml").errors
    assert errors
    assert not [e for e in errors if "alias" in e.message]


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    text = """\
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud, labels: &labels {team: ml}, annotations: *labels}
spec:
  model: fraud:1
  resources:
    <<: &small {cpu: 500m, memory: 256Mi}
"""
    result = load_text(text, "ok.yaml")
    assert result.ok, [str(e) for e in result.errors]
    [deployment] = result.resources
    assert deployment.spec.resources.cpu == 500
    assert deployment.metadata.annotations == {"team": "ml"}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "a: " + "{b: " * 50_000 + "1" + "}" * 50_000,
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_YAML_DEPTH + 5)) + "  " * 106 + "v\n",
        "".join("  " * i + "-\n" for i in range(MAX_YAML_DEPTH + 5)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-mappings", "block-sequences"],
)
def test_deep_nesting_is_refused(text: str) -> None:
    # (how fast is measured, not asserted: the refusal comes from the composer's depth
    # limit before any tree is built)
    result = load_text(text, "deep.yaml")
    [error] = result.errors
    assert f"nested deeper than {MAX_YAML_DEPTH} levels" in error.message
    assert error.line is not None
    assert str(error).startswith("deep.yaml:")


def test_nesting_up_to_the_limit_is_accepted_by_yaml() -> None:
    ok = "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)
    assert safe_load(ok) is not None


def test_recursive_alias_is_refused() -> None:
    result = load_text("a: &a [1, *a]\n", "loop.yaml")
    [error] = result.errors
    assert "recursive" in error.message
    assert error.line == 1


def test_safe_load_for_other_user_yaml_reports_line_like_a_syntax_error() -> None:
    text = "nodes:\n  - {name: a, cpu: 1, memory: 1Gi}\n" + billion_laughs().replace(
        "a:", "x:", 1
    ).replace("&a", "&a", 1)
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        safe_load(text)
    assert isinstance(caught.value, YamlLimitError)
    assert caught.value.problem_mark is not None
    assert caught.value.problem_mark.line + 1 >= 3
    assert caught.value.problem
    assert "aliases expand" in caught.value.problem
    assert safe_load("nodes: [{name: a, cpu: 1}]") == {"nodes": [{"name": "a", "cpu": 1}]}


def test_the_expansion_limit_is_a_few_thousand() -> None:
    assert 1000 <= MAX_ALIAS_EXPANSIONS <= 10_000
    # just under the limit passes composition (the spec itself is then invalid)
    under = "big: &big [" + ", ".join(["x"] * 99) + "]\nuses: [" + ", ".join(["*big"] * 40) + "]\n"
    assert all("aliases" not in e.message for e in load_text(under, "u.yaml").errors)
