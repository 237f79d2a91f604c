"""The nodes the embedded runtime places work on: this machine, or a rehearsed cluster.

Scheduling, gang admission and draining only mean something against capacity, so the
embedded runtime sees one or more nodes, each with CPU, memory and GPUs. By default
there is one: the machine itself, measured here (CPUs this process may run on,
MemTotal, the GPUs NVML or ``nvidia-smi`` report). A laptop can instead rehearse a
cluster by declaring *virtual* nodes in ``$PILOTHOUSE_HOME/nodes.yaml`` (the daemon
passes that path; ``pilothouse up --nodes FILE`` puts a file there)::

    nodes:
      - name: gpu-node      # with count: gpu-node-0 .. gpu-node-3 (no name: node-INDEX)
        count: 4
        cpu: "8"            # the quantity syntax of resources: "500m", 2, "1.5"
        memory: 32Gi
        gpu: 2              # virtual GPU ids "0", "1" (CUDA_VISIBLE_DEVICES)
        labels: {pool: gpu}
      - name: cpu-node
        cpu: 16
        memory: 64Gi
        address: 127.0.0.2  # optional: an IPv4 loopback address, default the daemon's

Virtual nodes are bookkeeping only: every process still runs on this machine, but
placement, quotas and failures (``pilothouse node fail``) behave as on a cluster.
A node's ``address`` is the loopback address its processes bind to and that
distributed training uses as ``MASTER_ADDR``.

GPU ids are NVML / ``nvidia-smi`` indices, which follow PCI bus order; a process
started on a GPU should get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` beside
``CUDA_VISIBLE_DEVICES`` so that CUDA numbers the devices the same way.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pilothouse.spec.loader import safe_load
from pilothouse.spec.quantity import (
    QuantityError,
    format_bytes,
    format_cpu_millis,
    parse_bytes,
    parse_cpu_millis,
)

#: the file in $PILOTHOUSE_HOME that declares virtual nodes
NODES_FILE = "nodes.yaml"
#: seconds ``nvidia-smi`` may take before the machine is taken to have no GPU
NVIDIA_SMI_TIMEOUT = 5.0
#: more virtual nodes than this from one entry is a typo, not a rehearsal
MAX_COUNT = 1000
_NODE_KEYS = ("name", "count", "cpu", "memory", "gpu", "labels", "address")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class NodeConfigError(ValueError):
    """``nodes.yaml`` is unusable; one line per problem, each naming file, node and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class NodeSpec:
    """One node's identity and capacity, as the scheduler sees it."""

    name: str
    #: millicores
    cpu: int
    #: bytes
    memory: int
    #: ids handed out through CUDA_VISIBLE_DEVICES ("0", "1", …)
    gpus: tuple[str, ...] = ()
    #: the loopback address processes on this node bind to (and MASTER_ADDR)
    address: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    #: declared in nodes.yaml rather than measured on this machine
    virtual: bool = False

    def capacity(self) -> dict[str, Any]:
        """Capacity the way the control API prints it: ``{"cpu": "8", "memory": "32Gi", "gpu": 2}``."""
        return {
            "cpu": format_cpu_millis(self.cpu),
            "memory": format_bytes(self.memory),
            "gpu": len(self.gpus),
        }


# -- this machine ------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU, for display; ``index`` is what CUDA_VISIBLE_DEVICES takes."""

    index: str
    uuid: str
    name: str
    #: bytes; 0 when unknown
    memory: int


def _nvml_inventory() -> tuple[GpuInfo, ...] | None:
    """The GPUs NVML reports, or ``None`` when ``pynvml`` is missing or NVML fails."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        out = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
            out.append(
                GpuInfo(
                    index=str(i),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return tuple(out)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> tuple[GpuInfo, ...]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader``.

    Memory comes as ``81559 MiB`` (or a bare MiB number with ``nounits``); lines that
    do not parse are skipped.
    """
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        memory_text = parts[-1].removesuffix("MiB").strip()
        memory = int(memory_text) * 2**20 if memory_text.isdigit() else 0
        out.append(GpuInfo(parts[0], parts[1], ", ".join(parts[2:-1]), memory))
    return tuple(out)


def _nvidia_smi_inventory() -> tuple[GpuInfo, ...]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ()
    query = [tool, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(
            query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=False
        )
    except Exception:
        return ()
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else ()


def visible_gpus(gpus: tuple[GpuInfo, ...], cuda_visible: str | None) -> tuple[GpuInfo, ...]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` of the daemon lets it hand out.

    ``None`` (unset) allows all; otherwise each entry names a GPU by index or UUID (or a
    UUID prefix, as CUDA accepts), and CUDA stops at the first entry it cannot use.
    """
    if cuda_visible is None:
        return gpus
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in cuda_visible.split(",")):
        match = next(
            (
                g
                for g in gpus
                if entry
                and (entry == g.index or (entry.startswith("GPU-") and g.uuid.startswith(entry)))
            ),
            None,
        )
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return tuple(chosen)


def gpu_inventory() -> tuple[GpuInfo, ...]:
    """This machine's usable GPUs (NVML if ``pynvml`` is importable, else ``nvidia-smi``).

    No GPU, no driver, no tool, or any error: no GPUs. ``CUDA_VISIBLE_DEVICES`` set on
    the daemon narrows the list to what it names.
    """
    try:
        found = _nvml_inventory()
        if found is None:
            found = _nvidia_smi_inventory()
    except Exception:
        found = ()
    return visible_gpus(found, os.environ.get("CUDA_VISIBLE_DEVICES"))


def discover_gpus() -> tuple[str, ...]:
    """Indices ("0", "1", …) of this machine's usable GPUs; () when there are none."""
    return tuple(g.index for g in gpu_inventory())


def node_name(hostname: str) -> str:
    """A DNS-1123 label from a host name: its first label, lowercased, odd characters as '-'."""
    first = hostname.split(".", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", first)[:63].strip("-")
    return cleaned or "local"


def cpu_millis() -> int:
    """Millicores this process may use: the CPUs of its affinity mask, times 1000."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(count, 1) * 1000


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal, else physical pages times page size; at least 1."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                value, _, unit = line.split(":", 1)[1].strip().partition(" ")
                return int(value) * (1024 if unit.strip().lower() == "kb" else 1)
    except (OSError, ValueError):
        pass
    try:
        return max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), 1)
    except (AttributeError, OSError, ValueError):
        return 1


def machine_node(address: str) -> NodeSpec:
    """The machine itself as one node, measured now."""
    return NodeSpec(
        name=node_name(socket.gethostname()),
        cpu=cpu_millis(),
        memory=memory_bytes(),
        gpus=discover_gpus(),
        address=address,
        labels={},
        virtual=False,
    )


# -- nodes.yaml --------------------------------------------------------------------------


def load_nodes(path: Path | None, address: str) -> list[NodeSpec]:
    """The nodes to schedule on: those ``path`` declares, else this machine alone.

    Every problem in the file is reported at once (``NodeConfigError``); nothing is
    half-loaded.
    """
    if path is None or not path.exists():
        return [machine_node(address)]
    source = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise NodeConfigError([f"{source}: cannot read: {exc}"]) from exc
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NodeConfigError([f"{where}: not valid YAML: {problem}"]) from exc
    return parse_nodes(data, source, address)


def parse_nodes(data: Any, source: str, address: str) -> list[NodeSpec]:
    """Validate the parsed content of a nodes file and expand ``count``."""
    expected = (
        "expected a mapping with a 'nodes' list, e.g. 'nodes: [{name: n, cpu: 4, memory: 8Gi}]'"
    )
    if not isinstance(data, Mapping) or "nodes" not in data:
        raise NodeConfigError([f"{source}: {expected}"])
    unknown = sorted(str(k) for k in data if k != "nodes")
    if unknown:
        raise NodeConfigError([f"{source}: unknown key(s) {', '.join(unknown)}; {expected}"])
    entries = data["nodes"]
    if not isinstance(entries, list) or not entries:
        raise NodeConfigError([f"{source}: nodes must be a non-empty list, got {entries!r}"])
    problems: list[str] = []
    nodes: list[NodeSpec] = []
    used: dict[str, int] = {}
    for index, raw in enumerate(entries):
        expanded = _entry(raw, f"{source}: nodes[{index}]", index, address, problems)
        for node in expanded:
            if node.name in used:
                problems.append(
                    f"{_where(source, index, raw)}: name {node.name!r} is already used by "
                    f"nodes[{used[node.name]}]; node names must be unique"
                )
            else:
                used[node.name] = index
                nodes.append(node)
    if problems:
        raise NodeConfigError(problems)
    return nodes


def _where(source: str, index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"{source}: nodes[{index}]" + (f" ({name})" if isinstance(name, str) and name else "")


def _entry(raw: Any, prefix: str, index: int, address: str, problems: list[str]) -> list[NodeSpec]:
    """One entry of ``nodes``: its nodes, or none with its problems appended."""
    if not isinstance(raw, Mapping):
        problems.append(
            f"{prefix}: expected a mapping with name, cpu, memory (and gpu), got {raw!r}"
        )
        return []
    name = raw.get("name")
    where = prefix + (f" ({name})" if isinstance(name, str) and name else "")
    before = len(problems)

    def bad(key: str, message: str) -> None:
        problems.append(f"{where}: {key} {message}, got {raw[key]!r}")

    unknown = [str(k) for k in raw if k not in _NODE_KEYS]
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected: {', '.join(_NODE_KEYS)}"
        )

    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        bad("count", f"must be a whole number from 1 to {MAX_COUNT}")
        count = 1

    if name is None:
        base = f"node-{index}"
    elif not isinstance(name, str) or not _LABEL_RE.fullmatch(name) or len(name) > 63:
        bad("name", "must be a DNS-1123 label (lowercase letters, digits, '-', at most 63)")
        base = "node"
    else:
        base = name
    names = [f"{base}-{k}" for k in range(count)] if "count" in raw else [base]
    if len(names[-1]) > 63 and len(problems) == before:
        bad("name", f"is too long for {count} numbered nodes ({names[-1]!r} exceeds 63 characters)")

    cpu = _quantity(raw, "cpu", parse_cpu_millis, "a CPU quantity such as '500m', 2 or '1.5'", bad)
    memory = _quantity(
        raw, "memory", parse_bytes, "a memory quantity such as '512Mi' or '32Gi'", bad
    )
    if "cpu" not in raw:
        problems.append(f"{where}: cpu is required (e.g. cpu: 8)")
    if "memory" not in raw:
        problems.append(f"{where}: memory is required (e.g. memory: 32Gi)")

    gpu = raw.get("gpu", 0)
    if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
        bad("gpu", "must be a whole number of GPUs >= 0")
        gpu = 0

    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        bad("labels", "must map strings to strings (quote numbers and booleans)")
        labels = {}

    node_address = raw.get("address", address)
    if "address" in raw and not _is_ipv4_loopback(node_address):
        bad("address", "must be an IPv4 loopback address 127.x.y.z")

    if len(problems) > before:
        return []
    return [
        NodeSpec(
            name=n,
            cpu=cpu,
            memory=memory,
            gpus=tuple(str(g) for g in range(gpu)),
            address=str(node_address),
            labels=dict(labels),
            virtual=True,
        )
        for n in names
    ]


def _quantity(
    raw: Mapping[str, Any],
    key: str,
    parse: Callable[[str | int | float], int],
    expected: str,
    bad: Callable[[str, str], None],
) -> int:
    if key not in raw:
        return 0
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        bad(key, f"must be {expected}")
        return 0
    try:
        amount = parse(value)
    except QuantityError:
        bad(key, f"must be {expected}")
        return 0
    if amount <= 0:
        bad(key, "must be > 0")
    return amount


def _is_ipv4_loopback(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.IPv4Address(value).is_loopback
    except ValueError:
        return False
