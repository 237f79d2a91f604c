"""How nodes look (``get nodes``, ``describe node``, ``node drain``), from sample API JSON,
and what the node verbs send and print, against a fake control API client."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console, RenderableType

from pilothouse.api.client import ApiClientError
from pilothouse.cli import render
from pilothouse.cli.render import (
    evicted_lines,
    node_row,
    node_view,
    nodes_table,
    nodes_view,
    pending_table,
    requests_text,
    used_of,
)

GPU_NODE: dict[str, Any] = {
    "name": "gpu-node-0",
    "address": "127.0.0.1",
    "state": "Ready",
    "virtual": True,
    "labels": {"pool": "gpu"},
    "capacity": {"cpu": "8", "memory": "32Gi", "gpu": 2},
    "allocated": {"cpu": "2500m", "memory": "6Gi", "gpu": 1},
    "free": {"cpu": "5500m", "memory": "26Gi", "gpu": 1},
    "gpus": [{"id": "0", "assignedTo": "train-a1-r0"}, {"id": "1", "assignedTo": None}],
    "items": [
        {
            "id": "train-a1-r0",
            "owner": "TrainingJob/train",
            "role": "worker",
            "requests": {"cpu": "2", "memory": "4Gi", "gpu": 1},
            "gpus": ["0"],
            "phase": "Running",
        },
        {
            "id": "fraud-7c-r1",
            "owner": "ModelDeployment/fraud",
            "role": "replica",
            "requests": {"cpu": "500m", "memory": "2Gi", "gpu": 0},
            "gpus": [],
            "phase": "Starting",
        },
    ],
}
LOST_NODE: dict[str, Any] = {
    "name": "cpu-node",
    "address": "127.0.0.2",
    "state": "Lost",
    "virtual": True,
    "labels": {},
    "capacity": {"cpu": "16", "memory": "64Gi", "gpu": 0},
    "allocated": {"cpu": "0", "memory": "0", "gpu": 0},
    "free": {"cpu": "16", "memory": "64Gi", "gpu": 0},
    "gpus": [],
    "items": [],
}
LIST: dict[str, Any] = {
    "items": [GPU_NODE, LOST_NODE],
    "pending": [
        {
            "id": "big-b2-r0",
            "owner": "TrainingJob/big",
            "requests": {"cpu": "4", "memory": "8Gi", "gpu": 2},
            "reason": "needs gpu 2; most free on any node: gpu 1 (gpu-node-0)",
        }
    ],
}


def _text(renderable: RenderableType) -> str:
    out = Console(file=io.StringIO(), width=200, no_color=True, highlight=False)
    out.print(renderable)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def _line(text: str, start: str) -> list[str]:
    [line] = [x for x in text.splitlines() if x.startswith(start)]
    return line.split()


# -- pure rendering ----------------------------------------------------------------------


def test_used_of_shows_allocated_over_capacity() -> None:
    assert used_of(GPU_NODE, "cpu") == "2500m/8"
    assert used_of(GPU_NODE, "memory") == "6Gi/32Gi"
    assert used_of(GPU_NODE, "gpu") == "1/2"
    assert used_of({"capacity": {"cpu": "4"}}, "cpu") == "0/4"
    assert used_of({}, "gpu") == "0/-"


def test_requests_text_leaves_out_no_gpu() -> None:
    assert requests_text({"cpu": "2", "memory": "4Gi", "gpu": 1}) == "cpu=2 memory=4Gi gpu=1"
    assert requests_text({"cpu": "500m", "memory": "2Gi", "gpu": 0}) == "cpu=500m memory=2Gi"
    assert requests_text(None) == "-"


def test_nodes_table_columns_and_cells() -> None:
    text = _text(nodes_table(LIST["items"]))
    assert text.splitlines()[0].split() == ["NAME", "STATE", "CPU", "MEMORY", "GPU", "ITEMS"]
    assert _line(text, "gpu-node-0") == ["gpu-node-0", "Ready", "2500m/8", "6Gi/32Gi", "1/2", "2"]
    assert _line(text, "cpu-node") == ["cpu-node", "Lost", "0/16", "0/64Gi", "0/0", "0"]


def test_wide_adds_address_virtual_and_labels() -> None:
    text = _text(nodes_table(LIST["items"], wide=True))
    assert text.splitlines()[0].split()[-3:] == ["ADDRESS", "VIRTUAL", "LABELS"]
    assert _line(text, "gpu-node-0")[-3:] == ["127.0.0.1", "yes", "pool=gpu"]
    assert _line(text, "cpu-node")[-3:] == ["127.0.0.2", "yes", "-"]


def test_state_is_coloured() -> None:
    lost = node_row(LOST_NODE)[1]
    ready = node_row(GPU_NODE)[1]
    assert getattr(lost, "style", None) == "red"
    assert getattr(ready, "style", None) == "green"


def test_pending_section_under_the_table() -> None:
    text = _text(nodes_view(LIST))
    lines = text.splitlines()
    assert lines.index("PENDING") > max(i for i, x in enumerate(lines) if x.startswith("cpu-node"))
    assert _line(text, "ID") == ["ID", "OWNER", "REQUESTS", "REASON"]
    row = " ".join(_line(text, "big-b2-r0"))
    assert "TrainingJob/big" in row
    assert "cpu=4 memory=8Gi gpu=2" in row
    assert "needs gpu 2; most free on any node: gpu 1 (gpu-node-0)" in row


def test_no_pending_section_when_nothing_waits() -> None:
    assert pending_table([]) is None
    text = _text(nodes_view({"items": [GPU_NODE], "pending": []}))
    assert "PENDING" not in text
    assert "gpu-node-0" in text
    assert "PENDING" not in _text(nodes_view({"items": [GPU_NODE]}))


def test_describe_node() -> None:
    text = _text(node_view(GPU_NODE))
    assert _line(text, "Name:") == ["Name:", "gpu-node-0"]
    assert _line(text, "State:") == ["State:", "Ready"]
    assert _line(text, "Address:") == ["Address:", "127.0.0.1"]
    assert _line(text, "Labels:") == ["Labels:", "pool=gpu"]
    assert _line(text, "  cpu") == ["cpu", "8", "2500m", "5500m"]
    assert _line(text, "  memory") == ["memory", "32Gi", "6Gi", "26Gi"]
    assert _line(text, "  gpu") == ["gpu", "2", "1", "1"]
    assert _line(text, "  0 ") == ["0", "train-a1-r0"]
    assert _line(text, "  1 ") == ["1", "-"]
    assert _line(text, "  train-a1-r0") == [
        "train-a1-r0",
        "TrainingJob/train",
        "worker",
        "Running",
        "cpu=2",
        "memory=4Gi",
        "gpu=1",
        "0",
    ]
    assert _line(text, "  fraud-7c-r1")[:4] == [
        "fraud-7c-r1",
        "ModelDeployment/fraud",
        "replica",
        "Starting",
    ]


def test_describe_empty_node() -> None:
    text = _text(node_view(LOST_NODE))
    assert "GPUs:  <none>" in text
    assert "Items:  <none>" in text
    assert _line(text, "State:") == ["State:", "Lost"]


def test_evicted_prefers_the_servers_list() -> None:
    body = {"node": LOST_NODE, "message": "x", "evicted": [{"id": "a", "owner": "TrainingJob/t"}]}
    assert evicted_lines(GPU_NODE, body) == ["a (TrainingJob/t)"]
    assert evicted_lines(GPU_NODE, {"evicted": ["b"]}) == ["b"]


def test_evicted_from_before_and_after() -> None:
    after = copy.deepcopy(GPU_NODE)
    after["items"][0]["phase"] = "Terminating"
    del after["items"][1]
    assert evicted_lines(GPU_NODE, {"node": after}) == [
        "train-a1-r0 (TrainingJob/train)",
        "fraud-7c-r1 (ModelDeployment/fraud)",
    ]
    assert evicted_lines(GPU_NODE, {"node": GPU_NODE}) == []


# -- the commands, against a fake client -------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.actions: list[tuple[str, str]] = []
        self.nodes_by_name = {n["name"]: n for n in LIST["items"]}

    def nodes(self) -> dict[str, Any]:
        return copy.deepcopy(LIST)

    def node(self, name: str) -> dict[str, Any]:
        if name not in self.nodes_by_name:
            raise ApiClientError(404, {"reason": "NotFound", "message": f"node {name!r} not found"})
        return copy.deepcopy(self.nodes_by_name[name])

    def node_action(self, name: str, action: str) -> dict[str, Any]:
        self.node(name)
        if action == "uncordon" and self.nodes_by_name[name]["state"] == "Lost":
            raise ApiClientError(409, {"message": f"node {name} is lost; it cannot be uncordoned"})
        self.actions.append((name, action))
        after = copy.deepcopy(self.nodes_by_name[name])
        after["items"] = []
        done = {"drain": "drained: 2 item(s) evicted", "fail": "failed: 2 item(s) killed"}
        message = f"node {name} {done.get(action, action + 'ed')}"
        return {"node": after, "message": message}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    from pilothouse.cli import main, nodes

    c = FakeClient()
    monkeypatch.setattr(main, "client", lambda: c)
    monkeypatch.setattr(nodes, "client", lambda: c)
    monkeypatch.setattr(render.console, "width", 200)
    return c


def _run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    from pilothouse.cli.main import cli
    from pilothouse.cli.nodes import node

    cli.add_command(node)
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.output


@pytest.mark.parametrize("word", ["nodes", "node", "no", "NODES"])
def test_get_nodes_words(fake: FakeClient, word: str) -> None:
    code, out = _run("get", word)
    assert code == 0, out
    assert "gpu-node-0" in out
    assert "PENDING" in out


def test_node_ref() -> None:
    from pilothouse.cli.nodes import node_ref

    assert node_ref("nodes", None) == (True, None)
    assert node_ref("no", "a") == (True, "a")
    assert node_ref("node/gpu-node-1", None) == (True, "gpu-node-1")
    assert node_ref("md", "x") == (False, "x")
    assert node_ref("md/x", None) == (False, None)


def test_get_one_node_and_outputs(fake: FakeClient) -> None:
    code, out = _run("get", "node", "cpu-node")
    assert code == 0, out
    assert "cpu-node" in out
    assert "gpu-node-0" not in out
    code, out = _run("get", "node/cpu-node", "-o", "json")
    assert code == 0, out
    assert json.loads(out)["name"] == "cpu-node"
    code, out = _run("get", "nodes", "-o", "json")
    assert json.loads(out)["pending"][0]["id"] == "big-b2-r0"
    code, out = _run("get", "nodes", "-o", "wide")
    assert "ADDRESS" in out
    assert "pool=gpu" in out
    code, out = _run("get", "nodes", "-o", "name")
    assert out.split() == ["node/gpu-node-0", "node/cpu-node"]


def test_unknown_node_exits_non_zero_with_the_servers_message(fake: FakeClient) -> None:
    for args in (("get", "node", "nope"), ("describe", "node", "nope"), ("node", "drain", "nope")):
        code, out = _run(*args)
        assert code != 0
        assert "node 'nope' not found" in out


def test_describe_node_command(fake: FakeClient) -> None:
    code, out = _run("describe", "node", "gpu-node-0")
    assert code == 0, out
    assert "train-a1-r0" in out
    assert "Resources:" in out
    code, out = _run("describe", "nodes")
    assert code != 0
    assert "describe node NAME" in out


def test_cordon_and_uncordon_print_the_message(fake: FakeClient) -> None:
    code, out = _run("node", "cordon", "gpu-node-0")
    assert code == 0, out
    assert "node gpu-node-0 cordoned" in out
    code, out = _run("node", "uncordon", "cpu-node")
    assert code != 0
    assert "cannot be uncordoned" in out
    assert fake.actions == [("gpu-node-0", "cordon")]


def test_drain_shows_what_was_evicted(fake: FakeClient) -> None:
    code, out = _run("node", "drain", "gpu-node-0")
    assert code == 0, out
    assert "node gpu-node-0 drained: 2 item(s) evicted" in out
    assert "evicted train-a1-r0 (TrainingJob/train)" in out
    assert "evicted fraud-7c-r1 (ModelDeployment/fraud)" in out


def test_fail_asks_first(fake: FakeClient) -> None:
    code, out = _run("node", "fail", "gpu-node-0", stdin="n\n")
    assert code != 0
    assert "train-a1-r0" in out  # what would be killed is listed before the question
    assert fake.actions == []
    code, out = _run("node", "fail", "gpu-node-0", stdin="y\n")
    assert code == 0, out
    assert "node gpu-node-0 failed" in out
    code, out = _run("node", "fail", "-y", "gpu-node-0")
    assert code == 0, out
    assert fake.actions == [("gpu-node-0", "fail"), ("gpu-node-0", "fail")]
