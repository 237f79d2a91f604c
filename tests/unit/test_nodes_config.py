"""Nodes of the embedded runtime: this machine measured, or virtual nodes from nodes.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pilothouse.runtime.local import nodes
from pilothouse.runtime.local.nodes import (
    GpuInfo,
    NodeConfigError,
    NodeSpec,
    discover_gpus,
    load_nodes,
    machine_node,
    memory_bytes,
    node_name,
    parse_nvidia_smi,
    visible_gpus,
)

SMI_OUTPUT = """\
0, GPU-0a1b2c3d-0000-0000-0000-000000000000, NVIDIA H200, 143771 MiB
1, GPU-9f8e7d6c-0000-0000-0000-000000000000, NVIDIA H200, 143771 MiB
"""


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pynvml, no nvidia-smi: whatever this box has."""
    monkeypatch.setattr(nodes, "_nvml_inventory", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(NodeConfigError) as info:
        load_nodes(_write(tmp_path, text), "127.0.0.1")
    return str(info.value)


# -- this machine ------------------------------------------------------------------------


def test_machine_node_is_sane_on_this_box(no_gpu: None) -> None:
    node = machine_node("127.0.0.1")
    assert node.cpu >= 1000
    assert node.cpu % 1000 == 0
    assert node.memory > 0
    assert node.gpus == ()
    assert node.address == "127.0.0.1"
    assert not node.virtual
    assert node_name(node.name) == node.name


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("vm", "vm"),
        ("My_Laptop.local", "my-laptop"),
        ("--x--", "x"),
        ("___", "local"),
        ("a" * 80, "a" * 63),
    ],
)
def test_node_name_is_a_dns_label(hostname: str, expected: str) -> None:
    assert node_name(hostname) == expected


def test_absent_or_missing_file_means_the_machine(no_gpu: None, tmp_path: Path) -> None:
    for path in (None, tmp_path / "nodes.yaml"):
        [node] = load_nodes(path, "127.0.0.3")
        assert not node.virtual
        assert node.address == "127.0.0.3"


def test_memory_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:  1 kB\n")
    assert memory_bytes(meminfo) == 16384 * 1024
    assert memory_bytes(tmp_path / "absent") > 0  # falls back to sysconf


def test_no_nvidia_smi_means_no_gpus(no_gpu: None) -> None:
    assert discover_gpus() == ()


def test_nvidia_smi_failing_or_hanging_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "_nvml_inventory", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda _: "/usr/bin/nvidia-smi")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def hangs(*_: Any, **__: Any) -> Any:
        raise subprocess.TimeoutExpired("nvidia-smi", 5)

    monkeypatch.setattr(subprocess, "run", hangs)
    assert discover_gpus() == ()

    def fails(*args: Any, **__: Any) -> Any:
        return subprocess.CompletedProcess(args, 9, "", "NVIDIA-SMI has failed")

    monkeypatch.setattr(subprocess, "run", fails)
    assert discover_gpus() == ()


def test_nvidia_smi_lists_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "_nvml_inventory", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda _: "/usr/bin/nvidia-smi")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen: list[list[str]] = []

    def run(args: list[str], **kwargs: Any) -> Any:
        seen.append(args)
        assert kwargs["timeout"] <= 10
        return subprocess.CompletedProcess(args, 0, SMI_OUTPUT, "")

    monkeypatch.setattr(subprocess, "run", run)
    assert discover_gpus() == ("0", "1")
    assert "--query-gpu=index,uuid,name,memory.total" in seen[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert discover_gpus() == ("1",)


def test_nvml_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = (GpuInfo("0", "GPU-a", "A100", 2**30),)
    monkeypatch.setattr(nodes, "_nvml_inventory", lambda: gpus)
    monkeypatch.setattr(shutil, "which", lambda _: pytest.fail("nvidia-smi not needed"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert discover_gpus() == ("0",)


def test_parse_nvidia_smi() -> None:
    gpus = parse_nvidia_smi(SMI_OUTPUT + "garbage\n\n")
    assert [g.index for g in gpus] == ["0", "1"]
    assert gpus[0].name == "NVIDIA H200"
    assert gpus[0].memory == 143771 * 2**20
    assert gpus[1].uuid.startswith("GPU-9f8e")
    assert parse_nvidia_smi("3, GPU-x, Tesla T4, 15360\n")[0].memory == 15360 * 2**20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ["0", "1", "2"]),
        ("", []),
        ("-1", []),
        ("2,0", ["2", "0"]),
        ("1,7,2", ["1"]),  # CUDA stops at the first device it cannot use
        ("GPU-bb", ["1"]),
    ],
)
def test_cuda_visible_devices_narrows(value: str | None, expected: list[str]) -> None:
    gpus = tuple(GpuInfo(str(i), f"GPU-{c * 4}", "X", 0) for i, c in enumerate("abc"))
    assert [g.index for g in visible_gpus(gpus, value)] == expected


# -- nodes.yaml --------------------------------------------------------------------------

EXAMPLE = """\
# nodes.yaml
nodes:
  - name: gpu-node
    count: 4
    cpu: "8"
    memory: 32Gi
    gpu: 2
    labels: {pool: gpu}
  - name: cpu-node
    cpu: 16
    memory: 64Gi
    address: 127.0.0.2
"""


def test_virtual_nodes_expand(tmp_path: Path) -> None:
    found = load_nodes(_write(tmp_path, EXAMPLE), "127.0.0.1")
    assert [n.name for n in found] == [
        "gpu-node-0",
        "gpu-node-1",
        "gpu-node-2",
        "gpu-node-3",
        "cpu-node",
    ]
    first = found[0]
    assert first == NodeSpec(
        name="gpu-node-0",
        cpu=8000,
        memory=32 * 2**30,
        gpus=("0", "1"),
        address="127.0.0.1",
        labels={"pool": "gpu"},
        virtual=True,
    )
    assert first.capacity() == {"cpu": "8", "memory": "32Gi", "gpu": 2}
    assert found[-1].gpus == ()
    assert found[-1].address == "127.0.0.2"
    assert found[-1].cpu == 16000
    assert found[-1].labels == {}
    assert len({hash(n) for n in found}) == 5  # usable as keys despite the labels dict


def test_quantities_share_the_resource_syntax(tmp_path: Path) -> None:
    text = "nodes:\n  - {name: a, cpu: 500m, memory: 1.5Gi}\n  - {name: b, cpu: 1.5, memory: 1e9}\n"
    a, b = load_nodes(_write(tmp_path, text), "127.0.0.1")
    assert (a.cpu, a.memory) == (500, 3 * 2**29)
    assert (b.cpu, b.memory) == (1500, 10**9)


def test_names_default_when_omitted(tmp_path: Path) -> None:
    text = "nodes:\n  - {count: 2, cpu: 1, memory: 1Gi}\n  - {cpu: 1, memory: 1Gi}\n"
    assert [n.name for n in load_nodes(_write(tmp_path, text), "127.0.0.1")] == [
        "node-0-0",
        "node-0-1",
        "node-1",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi}\n  - {name: cpu-node, cpu: '0', memory: 1Gi}\n",
            "nodes.yaml: nodes[1] (cpu-node): cpu must be > 0, got '0'",
        ),
        (
            "nodes:\n  - {name: a, cpu: -2, memory: 1Gi}\n",
            "nodes.yaml: nodes[0] (a): cpu must be > 0, got -2",
        ),
        (
            "nodes:\n  - {name: a, cpu: lots, memory: 1Gi}\n",
            "nodes.yaml: nodes[0] (a): cpu must be a CPU quantity such as '500m', 2 or '1.5', got 'lots'",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 0}\n",
            "nodes.yaml: nodes[0] (a): memory must be > 0, got 0",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 2GB}\n",
            "nodes.yaml: nodes[0] (a): memory must be a memory quantity such as '512Mi' or '32Gi', got '2GB'",
        ),
        ("nodes:\n  - {name: a, memory: 1Gi}\n", "nodes.yaml: nodes[0] (a): cpu is required"),
        ("nodes:\n  - {name: a, cpu: 1}\n", "nodes.yaml: nodes[0] (a): memory is required"),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, gpu: -1}\n",
            "nodes.yaml: nodes[0] (a): gpu must be a whole number of GPUs >= 0, got -1",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, gpu: 1.5}\n",
            "nodes.yaml: nodes[0] (a): gpu must be a whole number of GPUs >= 0, got 1.5",
        ),
        (
            "nodes:\n  - {name: a, count: 0, cpu: 1, memory: 1Gi}\n",
            "nodes.yaml: nodes[0] (a): count must be a whole number from 1 to 1000, got 0",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, gpus: 2}\n",
            "nodes.yaml: nodes[0] (a): unknown key(s) gpus; expected: name, count, cpu, memory, gpu, labels, address",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi}\n  - {name: a, cpu: 2, memory: 1Gi}\n",
            "nodes.yaml: nodes[1] (a): name 'a' is already used by nodes[0]; node names must be unique",
        ),
        (
            "nodes:\n  - {name: g, count: 2, cpu: 1, memory: 1Gi}\n  - {name: g-1, cpu: 1, memory: 1Gi}\n",
            "nodes.yaml: nodes[1] (g-1): name 'g-1' is already used by nodes[0]",
        ),
        (
            "nodes:\n  - {name: Big_Node, cpu: 1, memory: 1Gi}\n",
            "nodes.yaml: nodes[0] (Big_Node): name must be a DNS-1123 label",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, address: 10.0.0.5}\n",
            "nodes.yaml: nodes[0] (a): address must be an IPv4 loopback address 127.x.y.z, got '10.0.0.5'",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, address: '::1'}\n",
            "address must be an IPv4 loopback address 127.x.y.z, got '::1'",
        ),
        (
            "nodes:\n  - {name: a, cpu: 1, memory: 1Gi, labels: {zone: 1}}\n",
            "nodes.yaml: nodes[0] (a): labels must map strings to strings",
        ),
        ("nodes:\n  - 4\n", "nodes.yaml: nodes[0]: expected a mapping with name, cpu, memory"),
        ("nodes: []\n", "nodes.yaml: nodes must be a non-empty list, got []"),
        ("", "nodes.yaml: expected a mapping with a 'nodes' list"),
        ("node:\n  - {name: a}\n", "nodes.yaml: expected a mapping with a 'nodes' list"),
        ("nodes: [{}]\nextra: 1\n", "nodes.yaml: unknown key(s) extra"),
        ("nodes:\n  - {name: a\n", "nodes.yaml:3: not valid YAML"),
    ],
)
def test_errors_name_file_node_and_field(tmp_path: Path, text: str, message: str) -> None:
    problems = _error(tmp_path, text)
    assert message in problems
    assert str(tmp_path / "nodes.yaml") in problems
    for line in problems.splitlines():
        assert line.startswith(str(tmp_path / "nodes.yaml"))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = "nodes:\n  - {name: a, cpu: 0, memory: 0}\n  - {name: b, cpu: 1, memory: 1Gi, gpu: -3}\n"
    with pytest.raises(NodeConfigError) as info:
        load_nodes(_write(tmp_path, text), "127.0.0.1")
    assert len(info.value.problems) == 3
    assert [p.split(": ", 2)[1] for p in info.value.problems] == [
        "nodes[0] (a)",
        "nodes[0] (a)",
        "nodes[1] (b)",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    folder = tmp_path / "nodes.yaml"
    folder.mkdir()
    with pytest.raises(NodeConfigError, match="cannot read"):
        load_nodes(folder, "127.0.0.1")
