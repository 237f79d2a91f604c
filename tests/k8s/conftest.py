"""Fixtures for tests against a real Kubernetes control plane (tests marked ``k8s``).

``k8s_cluster`` (session) starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller from the binaries hack/k8s-testenv/build.sh built
(missing binaries fail the tests with the command that builds them; they never skip).
``kwok_node`` makes simulated nodes; ``process_node`` (session) runs the process node agent,
on which pods are real local processes with their own IPs.

Teardown stops exactly the processes the fixtures started, by PID. When a k8s test failed,
the work directory (component logs, pod logs, kubeconfig) is kept and its path printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.node_agent import (
    Session,
    members,
    process,
    processes,
    read_sessions,
    recorded_processes,
)
from tests.k8s.testenv import (
    BinariesMissing,
    ControlPlane,
    api_client,
    require_binaries,
    start_control_plane,
    start_kwok,
    wait_for,
)

NODE_AGENT = Path(__file__).resolve().parent / "node_agent.py"
#: process-0 hands out only the first PROCESS_NODE_POD_IPS addresses of its /24 (.2 and on):
#: the last /29 (.248-.255) is left to the tests' other process nodes (tiny_node)
PROCESS_NODE_POD_IPS = 240
#: pod IPs on the process node. Not 127.0.1.N: EndpointSlice validation rejects loopback
#: addresses (ValidateEndpointIP), so the pods get addresses of a range made local with one
#: route on the loopback interface ("AnyIP"). As root, each session adds its own /24 of the
#: benchmarking range 198.18.0.0/15 and removes it afterwards; as another user, add this
#: one once: ip route add local 198.51.100.0/24 dev lo
PROCESS_POD_CIDR = "198.51.100.0/24"
SESSION_POD_RANGE = "198.18.0.0/15"
#: the agent runs with proxies that answer nobody in its environment: it must ignore them (the
#: apiserver and the pods are local), as a CI machine behind a proxy would have it
DEAD_PROXIES = {
    name: "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
}
_FAILED = pytest.StashKey[bool]()
_WORK = pytest.StashKey[Path]()
_SUMMARY = pytest.StashKey[list[str]]()

__all__ = ["wait_for"]


@dataclass
class Cluster:
    plane: ControlPlane
    api: client.ApiClient
    started_in: float

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def discovery(self) -> client.DiscoveryV1Api:
        return client.DiscoveryV1Api(self.api)

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        return self.plane.kubectl(*args, timeout=timeout).stdout


# --- reporting: keep logs when a k8s test failed -------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and item.get_closest_marker("k8s") is not None:
        item.config.stash[_FAILED] = True
        work = item.config.stash.get(_WORK, None)
        if work is not None:
            report.sections.append(
                ("k8s testenv", f"component logs in {work}/logs, process-node pod logs in {work}")
            )
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in terminalreporter.config.stash.get(_SUMMARY, []):
        terminalreporter.write_line(line)


def _summary(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(_SUMMARY, []).append(line)


@pytest.fixture(autouse=True)
def _k8s_marker_required(request: pytest.FixtureRequest) -> None:
    """Every test here opts in with the k8s marker (so ``-m 'not k8s'`` leaves them all out)."""
    if request.node.get_closest_marker("k8s") is None:
        pytest.fail("tests under tests/k8s must be marked with @pytest.mark.k8s", pytrace=False)


# --- the control plane ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    missing = ""
    try:
        binaries = require_binaries()
    except BinariesMissing as error:
        missing = str(error)
    if missing:  # fail, never skip: the tier is part of the check
        pytest.fail(missing, pytrace=False)
    work = Path(tempfile.mkdtemp(prefix="pilothouse-k8s-"))
    request.config.stash[_WORK] = work
    started = time.monotonic()
    plane: ControlPlane | None = None
    keep = False
    try:
        plane = start_control_plane(work, binaries)  # stops what it started if it fails
        start_kwok(plane)
        api = api_client(plane.kubeconfig)
        cluster = Cluster(plane, api, time.monotonic() - started)
        _summary(
            request.config,
            f"k8s testenv: control plane and kwok ready in {cluster.started_in:.1f}s",
        )
        yield cluster
        api.close()
    except BaseException:  # the start failed: keep its logs
        keep = True
        raise
    finally:
        if plane is not None:
            plane.stop()
            left = [p for p in plane.processes if p.alive()]
            assert not left, f"still running after teardown: {left}"
        if keep or request.config.stash.get(_FAILED, False):
            _summary(request.config, f"k8s testenv: logs kept in {work} (a k8s test failed)")
        else:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (its pods with it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s_cluster.core.create_namespace({"metadata": {"name": name}})
    wait_for(
        f"ServiceAccount default in {name}",
        lambda: _exists(lambda: k8s_cluster.core.read_namespaced_service_account("default", name)),
        timeout=30,
    )
    yield name
    with contextlib.suppress(ApiException):
        k8s_cluster.core.delete_namespace(name)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


# --- kwok nodes -----------------------------------------------------------------------------


def kwok_node_manifest(
    name: str,
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    gpus: int = 0,
    pods: int = 110,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "pilothouse.dev/node-kind": "kwok",
                **(labels or {}),
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def node_ready(node: client.V1Node) -> bool:
    return any(
        c.type == "Ready" and c.status == "True" for c in (node.status.conditions or [])
    ) and not any(t.effect == "NoSchedule" for t in (node.spec.taints or []))


@pytest.fixture
def kwok_node(k8s_cluster: Cluster) -> Iterator[Callable[..., list[str]]]:
    """``kwok_node(count, prefix=..., cpu=..., memory=..., gpus=..., labels=...)`` creates
    simulated nodes, waits until they are Ready and schedulable, and deletes them after."""
    created: list[str] = []

    def make(count: int, prefix: str = "kwok", **kwargs: Any) -> list[str]:
        suffix = uuid.uuid4().hex[:5]
        names = [f"{prefix}-{suffix}-{i}" for i in range(count)]
        for name in names:
            k8s_cluster.core.create_node(kwok_node_manifest(name, **kwargs))
            created.append(name)
        for name in names:
            wait_for(
                f"kwok node {name} Ready",
                lambda n=name: node_ready(k8s_cluster.core.read_node(n)),
                timeout=60,
            )
        return names

    yield make
    for name in created:
        with contextlib.suppress(ApiException):
            k8s_cluster.core.delete_node(name)


# --- the process node -----------------------------------------------------------------------


def _local_route(cidr: str) -> bool:
    result = subprocess.run(
        ["ip", "route", "show", "table", "local", cidr], capture_output=True, text=True
    )
    return result.returncode == 0 and bool(result.stdout.strip())


_CAP_NET_ADMIN = 12


def _has_net_admin() -> bool:
    """Whether this process may add routes (CAP_NET_ADMIN in its effective set): root in an
    unprivileged container is root without it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    return False


@pytest.fixture(scope="session")
def pod_network() -> Iterator[str]:
    """A /24 routed to the loopback interface, so that its addresses are local and bindable:
    with CAP_NET_ADMIN (root), a free one of SESSION_POD_RANGE added here and removed after;
    otherwise PROCESS_POD_CIDR, which must already be routed so."""
    if shutil.which("ip") is None:
        pytest.fail("the process node needs the `ip` command (apt-get install iproute2)")
    if os.geteuid() != 0 or not _has_net_admin():
        if not _local_route(PROCESS_POD_CIDR):
            why = "not root" if os.geteuid() != 0 else "root without CAP_NET_ADMIN"
            pytest.fail(
                f"the process node's pod addresses ({PROCESS_POD_CIDR}) are not local and this"
                f" session cannot route some itself ({why}). Once, with CAP_NET_ADMIN (on the"
                f" host, for a container): ip route add local {PROCESS_POD_CIDR} dev lo",
                pytrace=False,
            )
        yield PROCESS_POD_CIDR
        return
    subnets = list(ipaddress.ip_network(SESSION_POD_RANGE).subnets(new_prefix=24))
    random.shuffle(subnets)
    cidr = ""
    for net in subnets:
        if _local_route(str(net)):
            continue
        added = subprocess.run(
            ["ip", "route", "add", "local", str(net), "dev", "lo"], capture_output=True, text=True
        )
        if added.returncode == 0:
            cidr = str(net)
            break
        if "File exists" not in added.stderr:  # another session took it in between: next
            pytest.fail(f"ip route add local {net} dev lo: {added.stderr.strip()}", pytrace=False)
    if not cidr:
        pytest.fail(f"no free /24 left in {SESSION_POD_RANGE} for the process node's pods")
    try:
        yield cidr
    finally:
        subprocess.run(["ip", "route", "del", "local", cidr, "dev", "lo"], check=True)


@dataclass(frozen=True)
class NodeSample:
    at: float  # time.monotonic()
    ready: str  # the Ready condition's status: True, False or Unknown
    taints: tuple[str, ...]
    renew_time: Any  # the Lease's spec.renewTime (a datetime), None if there is none


class NodeMonitor:
    """Samples a node's Ready condition, taints and Lease renewTime every ``every`` seconds
    from the moment it starts, in a thread, so that a test can judge the node's health over
    the whole session without waiting for it."""

    def __init__(self, kubeconfig: Path, node: str, every: float = 0.5) -> None:
        self.node = node
        self.every = every
        self.samples: list[NodeSample] = []
        self.errors: list[str] = []
        self._api = api_client(kubeconfig)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{node}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._api.close()

    def _run(self) -> None:
        core = client.CoreV1Api(self._api)
        leases = client.CoordinationV1Api(self._api)
        while not self._stop.wait(self.every):
            try:
                node = core.read_node(self.node, _request_timeout=5)
                lease = leases.read_namespaced_lease(
                    self.node, "kube-node-lease", _request_timeout=5
                )
            except Exception as error:  # recorded: the test judges it
                self.errors.append(f"{type(error).__name__}: {error}")
                continue
            ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "")
            self.samples.append(
                NodeSample(
                    time.monotonic(),
                    ready,
                    tuple(f"{t.key}:{t.effect}" for t in node.spec.taints or []),
                    lease.spec.renew_time,
                )
            )

    def span(self) -> float:
        return self.samples[-1].at - self.samples[0].at if self.samples else 0.0


@dataclass
class ProcessNode:
    name: str
    work: Path
    pod_cidr: str
    agent_pid: int = 0
    monitor: NodeMonitor | None = field(default=None, repr=False)

    def pod_pids(self) -> list[int]:
        return self._numbers("pids")

    def sessions(self) -> dict[Session, int | None]:
        """Every container session the agent started (a container's processes share it), by
        identity (ID and leader start time), with when it was found drained (or None)."""
        return read_sessions(self.work / "sessions")

    def escaped(self) -> list[str]:
        """What the agent found, at shutdown, to have left its container's session (setsid)."""
        try:
            return (self.work / "escaped").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _numbers(self, name: str) -> list[int]:
        try:
            text = (self.work / name).read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]


@pytest.fixture(scope="session")
def process_node(k8s_cluster: Cluster, pod_network: str) -> Iterator[ProcessNode]:
    """One node whose pods run as local processes (tests/k8s/node_agent.py). Pods reach it
    with a nodeSelector pilothouse.dev/node-kind=process and a toleration for the taint
    pilothouse.dev/process-node=true:NoSchedule."""
    plane = k8s_cluster.plane
    node = ProcessNode("process-0", plane.work / "process-0", pod_network)
    agent = plane.start(
        "node-agent-process-0",
        [
            sys.executable,
            str(NODE_AGENT),
            f"--kubeconfig={plane.kubeconfig}",
            f"--node={node.name}",
            f"--pod-cidr={pod_network}",
            f"--max-pod-ips={PROCESS_NODE_POD_IPS}",
            f"--work={node.work}",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **DEAD_PROXIES},
    )

    def ready() -> bool:
        plane.check_alive()
        try:
            found = k8s_cluster.core.read_node(node.name)
        except ApiException:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in found.status.conditions or [])

    node.agent_pid = agent.pid
    # the agent's own session, by identity: its PID and start time (it leads that session)
    me = process(agent.pid)
    agent_session = Session(agent.pid, me.start if me else 0)
    wait_for("the process node Ready", ready, timeout=60)
    node.monitor = NodeMonitor(plane.kubeconfig, node.name)
    node.monitor.start()
    yield node
    node.monitor.stop()
    agent.stop()
    check_agent_left_nothing(node.work, agent_session)


def check_agent_left_nothing(work: Path, agent_session: Session) -> None:
    """After a node agent stopped: the processes of every session it recorded, and of its
    own, are gone — matched by identity (session ID, and start times no earlier than the
    session leader's and no later than when the agent found the session drained), never by
    bare number, so a PID reused since is never touched. What is left is killed and fails
    the session loudly, as do processes that escaped their container's session (setsid),
    which the agent killed and listed at shutdown."""
    procs = processes()
    left = recorded_processes(work / "sessions") + [
        (pid, agent_session.sid) for pid in members(agent_session, procs)
    ]
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        escaped = (work / "escaped").read_text().splitlines()
    except FileNotFoundError:
        escaped = []
    assert not left, f"pod processes outlived the node agent (pid, session): {left}"
    assert not escaped, (
        f"processes left their container's session (setsid) and were still running when the"
        f" node agent stopped (it killed them; pid, session, command): {escaped}"
    )


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
