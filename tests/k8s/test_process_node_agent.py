"""The process node agent behaves like a kubelet where it matters to pilothouse: stopping a pod
never holds up the others, nothing a container forked outlives it, readiness follows the
probe into the EndpointSlice, an exhausted address pool says so, hostNetwork pods use the
node's address, and the node stays Ready on its Lease. And what the operator's and routers'
pods need: a bound ServiceAccount token (renewed; a pod without one waits in
ContainerCreating), env from Secrets, ConfigMaps and the downward API (a missing reference:
CreateContainerConfigError), preStop hooks before SIGTERM, liveness and startup probes that
restart a container, and emptyDir mount paths standing for per-pod directories."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import random
import ssl
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.conftest import (
    NODE_AGENT,
    Cluster,
    ProcessNode,
    _alive,
    _stat,
    check_agent_left_nothing,
)
from tests.k8s.node_agent import Session, members, process, processes
from tests.k8s.testenv import Process, start_process, wait_for

pytestmark = pytest.mark.k8s
TOLERATION = {
    "key": "pilothouse.dev/process-node",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}

#: ignores SIGTERM (says when it gets one) and runs on
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM', flush=True))\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(3600)\n"
)
#: forks `sleep SECONDS` into a process group of its own (so that signalling the container's
#: process group misses it), prints its PID, then exits 1 or stays (argv[2] == "stay")
FORKS_A_SLEEP = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', sys.argv[1]], process_group=0)\n"
    "print(child.pid, flush=True)\n"
    "if sys.argv[2] == 'stay':\n"
    "    time.sleep(3600)\n"
    "sys.exit(1)\n"
)
#: prints its PID (its session's ID), starts a child that forks a sleeping grandchild every
#: 10 ms, and exits 0 after 1.5 s while the child goes on forking: whatever kill misses a
#: grandchild forked between the scan of the session and the kill
FORKS_IN_A_LOOP = (
    "import os, sys, time\n"
    "print(os.getpid(), flush=True)\n"
    "if os.fork() == 0:\n"
    "    for _ in range(3000):\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(600)\n"
    "            os._exit(0)\n"
    "        time.sleep(0.01)\n"
    "    os._exit(0)\n"
    "time.sleep(1.5)\n"
    "sys.exit(0)\n"
)
#: serves 200 on every path, 503 while the file argv[1] exists
FLIPPING_SERVER = (
    "import http.server, os, sys\n"
    "marker, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(503 if os.path.exists(marker) else 200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.HTTPServer((host, port), Handler).serve_forever()\n"
)


def process_pod(
    name: str,
    command: list[str],
    *,
    grace: int = 2,
    restart: str = "Always",
    labels: dict[str, str] | None = None,
    node: str | None = None,
    **container: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": grace,
        "containers": [
            {"name": "main", "image": "pilothouse/none", "command": command, **container}
        ],
    }
    if node:  # bound directly: no scheduler, the node need not be Ready
        spec["nodeName"] = node
    else:
        spec["nodeSelector"] = {"pilothouse.dev/node-kind": "process"}
        spec["tolerations"] = [TOLERATION]
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def read_pod(cluster: Cluster, namespace: str, name: str) -> Any | None:
    try:
        return cluster.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def gone(cluster: Cluster, namespace: str, name: str) -> bool:
    return read_pod(cluster, namespace, name) is None


def container_pid(pod: Any) -> int | None:
    statuses = pod.status.container_statuses or []
    if statuses and (cid := statuses[0].container_id or ""):
        return int(cid.removeprefix("process://"))
    return None


def log_of(node: ProcessNode, namespace: str, pod: str) -> Path:
    return node.work / "pods" / f"{namespace}_{pod}" / "main.log"


def logged(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def logged_line(path: Path) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines[0] if lines else None


def running(cluster: Cluster, namespace: str, name: str) -> Any | None:
    pod = read_pod(cluster, namespace, name)
    if pod is not None and pod.status.phase == "Running" and container_pid(pod):
        return pod
    return None


def sleeps(seconds: str) -> list[int]:
    """Live processes running exactly `sleep SECONDS`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv == [b"sleep", seconds.encode()] and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def zombie_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def test_a_pod_ignoring_sigterm_does_not_hold_up_the_others_and_is_killed_after_its_grace(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    grace = 10
    core = k8s_cluster.core
    core.create_namespaced_pod(
        namespace,
        process_pod("stubborn", [sys.executable, "-c", IGNORES_SIGTERM], grace=grace),
    )
    stubborn = wait_for("stubborn Running", lambda: running(k8s_cluster, namespace, "stubborn"))
    pid = container_pid(stubborn)
    assert pid is not None
    wait_for(
        "stubborn to ignore SIGTERM",
        lambda: logged_line(log_of(process_node, namespace, "stubborn")) == "ignoring SIGTERM",
        timeout=30,
    )

    deleted_at = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    # the agent has begun stopping stubborn (SIGTERM sent): now another pod arrives
    wait_for(
        "stubborn to get SIGTERM",
        lambda: "got SIGTERM" in logged(log_of(process_node, namespace, "stubborn")),
        timeout=grace / 2,
    )
    core.create_namespaced_pod(
        namespace, process_pod("other", [sys.executable, "-c", "import time; time.sleep(3600)"])
    )
    # the agent goes on with other pods while the stubborn one has its grace period
    other = wait_for(
        "the other pod Ready while stubborn is terminating",
        lambda: (
            pod if (pod := read_pod(k8s_cluster, namespace, "other")) and pod_ready(pod) else None
        ),
        timeout=grace / 2,
    )
    ready_after = time.monotonic() - deleted_at
    assert other.status.phase == "Running"
    assert ready_after < grace / 2
    stubborn = read_pod(k8s_cluster, namespace, "stubborn")
    assert stubborn is not None
    assert stubborn.metadata.deletion_timestamp is not None
    assert _alive(pid), "SIGTERM is ignored: the process lives until its grace period is over"

    # SIGKILL once the grace period is over, then the pod object goes
    wait_for(
        "stubborn deleted (404)",
        lambda: gone(k8s_cluster, namespace, "stubborn"),
        timeout=grace + 20,
    )
    gone_after = time.monotonic() - deleted_at
    assert not _alive(pid)
    assert gone_after >= grace - 1, f"killed after {gone_after:.1f}s, before its {grace}s grace"


def test_processes_a_container_forked_do_not_outlive_it(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    core = k8s_cluster.core
    exits = str(40000 + random.randrange(10000))  # unique: other sessions may run this too
    stays = str(50000 + random.randrange(10000))
    core.create_namespaced_pod(
        namespace,
        process_pod("exits", [sys.executable, "-c", FORKS_A_SLEEP, exits, "exit"], restart="Never"),
    )
    core.create_namespaced_pod(
        namespace, process_pod("stays", [sys.executable, "-c", FORKS_A_SLEEP, stays, "stay"])
    )

    # the container exits 1 and leaves `sleep` behind: the pod fails, the sleep is killed
    failed = wait_for(
        "pod exits Failed",
        lambda: (
            p
            if (p := read_pod(k8s_cluster, namespace, "exits")) and p.status.phase == "Failed"
            else None
        ),
        timeout=60,
    )
    assert failed.status.container_statuses[0].state.terminated.exit_code == 1
    orphan = int(logged_line(log_of(process_node, namespace, "exits")) or 0)
    assert orphan > 0
    wait_for(f"no `sleep {exits}` left", lambda: not sleeps(exits), timeout=10)
    assert not _alive(orphan)

    # the pod is deleted while its container runs: its forked sleep goes too
    wait_for("stays Running", lambda: running(k8s_cluster, namespace, "stays"), timeout=60)
    forked = int(
        wait_for(
            "stays to fork its sleep",
            lambda: logged_line(log_of(process_node, namespace, "stays")),
            timeout=30,
        )
    )
    assert _alive(forked)
    assert sleeps(stays) == [forked]
    core.delete_namespaced_pod("stays", namespace)
    wait_for("stays deleted (404)", lambda: gone(k8s_cluster, namespace, "stays"), timeout=30)
    assert not sleeps(stays)
    assert not _alive(forked)
    # and the agent, their subreaper, reaped them
    wait_for(
        "no zombie children of the agent",
        lambda: not zombie_children(process_node.agent_pid),
        timeout=10,
    )


def test_a_pod_the_agent_cannot_start_does_not_stop_the_others(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    core = k8s_cluster.core
    # a file where the agent makes the pod's directory: starting "a-broken" raises
    pods = process_node.work / "pods"
    pods.mkdir(parents=True, exist_ok=True)
    (pods / f"{namespace}_a-broken").write_text("in the way\n")
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    core.create_namespaced_pod(namespace, process_pod("a-broken", sleep_forever))
    wait_for(
        "a-broken bound to the process node",
        lambda: (p := read_pod(k8s_cluster, namespace, "a-broken")) and p.spec.node_name,
        timeout=30,
    )
    agent_log = k8s_cluster.plane.log_dir / f"node-agent-{process_node.name}.log"
    wait_for(
        "the agent to log the failure with the pod's name",
        lambda: f"pod {namespace}/a-broken: failed" in agent_log.read_text(),
        timeout=30,
    )
    # listed after it (and before it fails again, each pass), another pod still runs
    core.create_namespaced_pod(namespace, process_pod("b-fine", sleep_forever))
    fine = wait_for(
        "b-fine Ready",
        lambda: p if (p := read_pod(k8s_cluster, namespace, "b-fine")) and pod_ready(p) else None,
        timeout=30,
    )
    assert fine.status.phase == "Running"
    broken = read_pod(k8s_cluster, namespace, "a-broken")
    assert broken.status.phase == "Pending"
    assert not broken.status.container_statuses
    # and it is deleted like any other
    core.delete_namespaced_pod("a-broken", namespace)
    wait_for("a-broken deleted (404)", lambda: gone(k8s_cluster, namespace, "a-broken"), timeout=30)


def endpoint_readiness(cluster: Cluster, namespace: str, service: str) -> dict[str, bool]:
    slices = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return {
        address: bool(e.conditions and e.conditions.ready)
        for s in slices
        for e in s.endpoints or []
        for address in e.addresses
    }


def test_a_failing_readiness_probe_makes_the_pod_not_ready_and_takes_it_out_of_the_endpointslice(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> None:
    core = k8s_cluster.core
    marker = tmp_path / "unhealthy"
    core.create_namespaced_pod(
        namespace,
        process_pod(
            "flip",
            [sys.executable, "-c", FLIPPING_SERVER, str(marker), "$(POD_IP)", "8080"],
            labels={"app": "flip"},
            env=[POD_IP_ENV],
            ports=[{"name": "http", "containerPort": 8080}],
            readinessProbe={
                "httpGet": {"path": "/ready", "port": "http"},
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
        ),
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "flip"},
            "spec": {"selector": {"app": "flip"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    pod = wait_for(
        "flip Ready",
        lambda: p if (p := read_pod(k8s_cluster, namespace, "flip")) and pod_ready(p) else None,
        timeout=60,
    )
    ip = pod.status.pod_ip
    wait_for(
        "flip ready in the EndpointSlice",
        lambda: endpoint_readiness(k8s_cluster, namespace, "flip") == {ip: True},
        timeout=30,
    )

    marker.touch()
    assert httpx.get(f"http://{ip}:8080/ready", timeout=5, trust_env=False).status_code == 503
    wait_for(
        "flip NotReady",
        lambda: not pod_ready(read_pod(k8s_cluster, namespace, "flip")),
        timeout=30,
    )
    wait_for(
        "flip no longer ready in the EndpointSlice",
        lambda: endpoint_readiness(k8s_cluster, namespace, "flip") == {ip: False},
        timeout=30,
    )
    flip = read_pod(k8s_cluster, namespace, "flip")
    assert flip.status.phase == "Running"  # not ready is not dead
    assert flip.status.container_statuses[0].ready is False

    marker.unlink()
    wait_for(
        "flip ready again in the EndpointSlice",
        lambda: endpoint_readiness(k8s_cluster, namespace, "flip") == {ip: True},
        timeout=30,
    )


def test_a_host_network_pod_gets_the_node_address(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    manifest = process_pod("host", [sys.executable, "-c", "import time; time.sleep(3600)"])
    manifest["spec"]["hostNetwork"] = True
    k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    pod = wait_for("host Running", lambda: running(k8s_cluster, namespace, "host"), timeout=60)
    node = k8s_cluster.core.read_node(process_node.name)
    internal = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    assert pod.status.pod_ip == pod.status.host_ip == internal
    assert [i.ip for i in pod.status.pod_ips] == [internal]


@pytest.fixture
def tiny_node(k8s_cluster: Cluster, process_node: ProcessNode) -> Iterator[str]:
    """A second process node with a pool of one pod address (the last /29 of the session's
    /24, far from the addresses process-0 hands out)."""
    with extra_node(k8s_cluster, process_node, "process-tiny") as (name, _, _):
        yield name


@contextlib.contextmanager
def extra_node(
    k8s_cluster: Cluster, process_node: ProcessNode, prefix: str, *options: str
) -> Iterator[tuple[str, Path, Process]]:
    """Another node agent (with ``options``), with one pod address; checked like process-0
    after it stops."""
    plane = k8s_cluster.plane
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    # process-0 hands out .2 to .241 (PROCESS_NODE_POD_IPS): .250 is this node's alone
    base = process_node.pod_cidr.rsplit(".", 1)[0]
    work = plane.work / name
    agent = start_process(
        f"node-agent-{name}",
        [
            sys.executable,
            str(NODE_AGENT),
            f"--kubeconfig={plane.kubeconfig}",
            f"--node={name}",
            f"--pod-cidr={base}.248/29",
            "--max-pod-ips=1",
            f"--work={work}",
            *options,
        ],
        plane.log_dir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    me = process(agent.pid)
    agent_session = Session(agent.pid, me.start if me else 0)
    try:
        wait_for(f"node {name} Ready", lambda: agent.alive() and ready_node(k8s_cluster, name))
        yield name, work, agent
    finally:
        agent.stop()
        if read_node(k8s_cluster, name) is not None:
            k8s_cluster.core.delete_node(name)
        check_agent_left_nothing(work, agent_session)


def read_node(cluster: Cluster, name: str) -> Any | None:
    try:
        return cluster.core.read_node(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def ready_node(cluster: Cluster, name: str) -> bool:
    """Ready, and the node lifecycle controller's not-ready/unreachable taints are gone."""
    node = read_node(cluster, name)
    if node is None:
        return False
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not any(
        t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or []
    )


def test_a_finished_pod_gives_back_its_address_and_a_pod_finding_none_stays_pending_saying_so(
    k8s_cluster: Cluster, namespace: str, tiny_node: str
) -> None:
    core = k8s_cluster.core
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    core.create_namespaced_pod(
        namespace, process_pod("first", ["true"], restart="Never", node=tiny_node)
    )
    first = wait_for(
        "first Succeeded",
        lambda: (
            p
            if (p := read_pod(k8s_cluster, namespace, "first")) and p.status.phase == "Succeeded"
            else None
        ),
        timeout=60,
    )
    # the only address went back to the pool when first ended: second gets it
    core.create_namespaced_pod(namespace, process_pod("second", sleep_forever, node=tiny_node))
    second = wait_for("second Running", lambda: running(k8s_cluster, namespace, "second"))
    assert second.status.pod_ip == first.status.pod_ip

    core.create_namespaced_pod(namespace, process_pod("third", sleep_forever, node=tiny_node))
    third = wait_for(
        "third Pending with reason NoPodIP",
        lambda: (
            p
            if (p := read_pod(k8s_cluster, namespace, "third")) and p.status.reason == "NoPodIP"
            else None
        ),
        timeout=30,
    )
    assert third.status.phase == "Pending"
    assert "no free pod IP" in third.status.message
    # one stuck pod does not stop the others: deleting second frees the address for third
    core.delete_namespaced_pod("second", namespace)
    third = wait_for("third Running", lambda: running(k8s_cluster, namespace, "third"), timeout=30)
    assert third.status.pod_ip == first.status.pod_ip
    assert third.status.reason is None
    assert gone(k8s_cluster, namespace, "second")


def test_the_process_node_renews_its_lease_and_stays_ready_past_the_grace_period(
    process_node: ProcessNode,
) -> None:
    """--node-monitor-grace-period is 20 s: the node controller would mark a node whose Lease
    stopped Unknown after that. The monitor samples the node from its start; this waits only
    for what the session has not already covered."""
    monitor = process_node.monitor
    assert monitor is not None
    window = 25.0
    wait_for(f"{window}s of node samples", lambda: monitor.span() >= window, timeout=window + 10)
    samples = list(monitor.samples)
    # sampled throughout (a slow read now and then is no gap in what the test saw)
    sampled = [s.at for s in samples]
    assert max(b - a for a, b in itertools.pairwise(sampled)) < 5, monitor.errors[:3]
    assert all(s.ready == "True" for s in samples), [s for s in samples if s.ready != "True"][:3]
    assert not any(
        "node.kubernetes.io/unreachable" in t or "node.kubernetes.io/not-ready" in t
        for s in samples
        for t in s.taints
    )
    renewals = [s.renew_time for s in samples]
    assert None not in renewals
    assert renewals == sorted(renewals)
    distinct = sorted(set(renewals))
    # renewed every 2 s: about a dozen renewals in 25 s, none near the 20 s grace apart
    assert len(distinct) >= window / 4, distinct
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(distinct)]
    assert max(gaps) < 10, gaps


def test_what_a_container_keeps_forking_is_killed_until_none_is_left_before_its_address_goes(
    k8s_cluster: Cluster, namespace: str, tiny_node: str
) -> None:
    """The container exits while its child forks on: one SIGKILL pass misses what is forked
    between its scan and its kill, so the agent kills the session again on every pass until it
    is empty, and only then gives the pod's address (the node's only one) to the next pod."""
    core = k8s_cluster.core
    core.create_namespaced_pod(
        namespace,
        process_pod(
            "forker", [sys.executable, "-c", FORKS_IN_A_LOOP], restart="Never", node=tiny_node
        ),
    )
    pod = wait_for("forker Running", lambda: running(k8s_cluster, namespace, "forker"))
    forker_log = k8s_cluster.plane.work / tiny_node / "pods" / f"{namespace}_forker" / "main.log"
    leader = wait_for(
        "forker to print its PID",
        lambda: process(int(logged_line(forker_log) or 0)),
        timeout=30,
    )
    session = Session(leader.pid, leader.start)
    assert container_pid(pod) == leader.pid
    wait_for("the session to fork", lambda: len(members(session, processes())) > 5, timeout=30)
    # the next pod waits for the address, which forker holds until its session is empty
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    core.create_namespaced_pod(namespace, process_pod("next", sleep_forever, node=tiny_node))
    wait_for(
        "forker Succeeded",
        lambda: (p := read_pod(k8s_cluster, namespace, "forker")) and p.status.phase == "Succeeded",
        timeout=30,
    )
    nxt = wait_for("next Running", lambda: running(k8s_cluster, namespace, "next"), timeout=30)
    # the address came back only once nothing of forker's session was left
    assert not members(session, processes())
    assert nxt.status.pod_ip == pod.status.pod_ip
    wait_for(
        "no zombie left by the session",
        lambda: (
            not [p for p in processes() if p.session == session.sid and p.start >= session.start]
        ),
        timeout=10,
    )


def test_a_slow_readiness_probe_holds_up_no_other_pod(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> None:
    """Probes run in a pool, not in the sync thread: while one pod's exec probe takes 8 s
    (many passes), another pod starts and is reported Ready at once."""
    core = k8s_cluster.core
    marker = tmp_path / "probing"
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    probe = {
        "exec": {"command": ["sh", "-c", f"touch {marker}; sleep 8"]},
        "periodSeconds": 1,
        "timeoutSeconds": 20,
    }
    core.create_namespaced_pod(
        namespace,
        process_pod("slow", sleep_forever, node=process_node.name, readinessProbe=probe),
    )
    wait_for("the slow probe to run", marker.exists, timeout=60)
    created = time.monotonic()
    core.create_namespaced_pod(
        namespace, process_pod("quick", sleep_forever, node=process_node.name)
    )
    quick = wait_for(
        "quick Running and Ready",
        lambda: (p := running(k8s_cluster, namespace, "quick")) and pod_ready(p) and p,
        timeout=30,
    )
    took = time.monotonic() - created
    assert took < 3, f"quick took {took:.1f}s: held up by the slow probe"
    slow = read_pod(k8s_cluster, namespace, "slow")
    assert slow is not None
    assert slow.status.phase == "Running"
    assert not pod_ready(slow)
    assert quick.status.phase == "Running"


def test_a_status_changed_by_someone_else_is_put_right(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """The agent compares its status with the pod as listed, not only with what it wrote last:
    a Ready=False written by someone else is set back to True on a later pass."""
    core = k8s_cluster.core
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    core.create_namespaced_pod(
        namespace, process_pod("steady", sleep_forever, node=process_node.name)
    )
    wait_for(
        "steady Ready",
        lambda: (p := running(k8s_cluster, namespace, "steady")) and pod_ready(p),
        timeout=60,
    )
    patched = core.patch_namespaced_pod_status(
        "steady",
        namespace,
        {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Meddling"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert not pod_ready(patched)
    wait_for(
        "steady Ready again",
        lambda: (p := read_pod(k8s_cluster, namespace, "steady")) and pod_ready(p),
        timeout=10,
    )


#: starts `sleep SECONDS` in a session of its own (setsid: out of the container's session),
#: prints its PID and exits
ESCAPES = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(['sleep', sys.argv[1]], start_new_session=True)\n"
    "print(child.pid, flush=True)\n"
)


def test_a_process_that_left_its_session_is_killed_and_listed_when_the_agent_stops(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """The documented limit: a process that setsid()s away escapes the kill by session, but
    once orphaned it is the agent's child; at shutdown the agent kills it and lists it in
    ``escaped``, on which the fixtures' teardown fails."""
    seconds = str(60000 + random.randrange(10000))
    with extra_node(k8s_cluster, process_node, "process-escape") as (name, work, agent):
        pod = process_pod(
            "escapes", [sys.executable, "-c", ESCAPES, seconds], restart="Never", node=name
        )
        pod["spec"]["hostNetwork"] = True
        k8s_cluster.core.create_namespaced_pod(namespace, pod)
        wait_for(
            "escapes Succeeded",
            lambda: (
                (p := read_pod(k8s_cluster, namespace, "escapes")) and p.status.phase == "Succeeded"
            ),
            timeout=60,
        )
        escapee = wait_for(f"`sleep {seconds}`", lambda: sleeps(seconds), timeout=10)[0]
        fields = _stat(escapee)
        assert fields is not None
        assert int(fields[1]) == agent.pid, "orphaned: re-parented to the agent"
        agent.stop()
        escaped = (work / "escaped").read_text()
        assert f"{escapee} {escapee} sleep {seconds}" in escaped
        wait_for(f"`sleep {seconds}` killed", lambda: not sleeps(seconds), timeout=10)
        # what the fixtures' teardown (run by extra_node now) fails on
        (work / "escaped").rename(work / "escaped.seen")


def test_a_pod_the_api_says_is_over_is_stopped(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """The API is the truth: a pod whose phase someone else set to Failed while it runs here
    has its processes stopped (and is not started again)."""
    core = k8s_cluster.core
    sleep_forever = [sys.executable, "-c", "import time; time.sleep(3600)"]
    core.create_namespaced_pod(
        namespace, process_pod("ended", sleep_forever, node=process_node.name)
    )
    pod = wait_for("ended Running", lambda: running(k8s_cluster, namespace, "ended"), timeout=60)
    pid = container_pid(pod)
    assert pid is not None
    assert _alive(pid)
    core.patch_namespaced_pod_status(
        "ended",
        namespace,
        {"status": {"phase": "Failed", "reason": "Ended", "message": "ended by the test"}},
        _content_type="application/merge-patch+json",
    )
    wait_for("ended's process stopped", lambda: not _alive(pid), timeout=10)
    time.sleep(1)  # a few passes: it stays stopped and Failed
    after = read_pod(k8s_cluster, namespace, "ended")
    assert after is not None
    assert after.status.phase == "Failed"
    assert pid not in process_node.pod_pids()


# --- what the operator's and routers' pods need: token, env, hooks, probes, volumes ----------

#: asks the apiserver who it is (SelfSubjectReview) and reads its own pod, with the token,
#: CA and namespace the agent wrote and the address it gave; prints one JSON line, then stays
WHO_AM_I = (
    "import json, os, ssl, sys, time, urllib.request\n"
    "d = os.environ['PILOTHOUSE_SERVICEACCOUNT_DIR']\n"
    "token = open(sys.argv[1]).read()\n"
    "ns = open(d + '/namespace').read()\n"
    "base = 'https://%s:%s' % (os.environ['KUBERNETES_SERVICE_HOST'],"
    " os.environ['KUBERNETES_SERVICE_PORT'])\n"
    "tls = ssl.create_default_context(cafile=d + '/ca.crt')\n"
    "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),"
    " urllib.request.HTTPSHandler(context=tls))\n"
    "def call(path, body=None):\n"
    "    request = urllib.request.Request(base + path, method='POST' if body else 'GET',"
    " data=json.dumps(body).encode() if body else None, headers={'Authorization':"
    " 'Bearer ' + token, 'Content-Type': 'application/json'})\n"
    "    return json.load(opener.open(request, timeout=10))\n"
    "review = call('/apis/authentication.k8s.io/v1/selfsubjectreviews',"
    " {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'})\n"
    "pod = call('/api/v1/namespaces/%s/pods/%s' % (ns, os.environ['POD_NAME']))\n"
    "print(json.dumps({'user': review['status']['userInfo'], 'uid': pod['metadata']['uid']}),"
    " flush=True)\n"
    "time.sleep(3600)\n"
)
#: prints the named variables of its environment as one JSON line
PRINTS_ENV = (
    "import json, os, sys\n"
    "print(json.dumps({k: os.environ.get(k) for k in sys.argv[1:]}), flush=True)\n"
)
SLEEPS = [sys.executable, "-c", "import time; time.sleep(3600)"]
POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
#: the mountPath the ServiceAccount admission gives the token's projected volume
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def json_line(path: Path) -> dict[str, Any] | None:
    line = logged_line(path)
    return json.loads(line) if line else None


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def service_account(cluster: Cluster, namespace: str, name: str, **fields: Any) -> None:
    cluster.core.create_namespaced_service_account(
        namespace, {"metadata": {"name": name}, **fields}
    )


def test_a_pod_gets_a_bound_token_of_its_service_account_and_the_apiserver_address(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """As the kubelet projects it: a token bound to the pod (TokenRequest, 1 h, the
    apiserver's audience), the cluster CA and the namespace, found through
    PILOTHOUSE_SERVICEACCOUNT_DIR; the admission's token mountPath stands for that directory
    in the arguments. With them the pod authenticates as its ServiceAccount, and its Role
    applies."""
    service_account(k8s_cluster, namespace, "reader")
    rbac = client.RbacAuthorizationV1Api(k8s_cluster.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-pods",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    manifest = process_pod(
        "who",
        [sys.executable, "-c", WHO_AM_I, f"{TOKEN_MOUNT}/token"],
        env=[POD_NAME_ENV],
    )
    manifest["spec"]["serviceAccountName"] = "reader"
    pod = k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    uid = pod.metadata.uid
    # the admission added the projected token volume the agent maps to its directory
    assert any(m.mount_path == TOKEN_MOUNT for m in pod.spec.containers[0].volume_mounts or []), (
        pod.spec.containers[0].volume_mounts
    )
    pod_log = log_of(process_node, namespace, "who")
    said = wait_for("who to say who it is", lambda: json_line(pod_log), timeout=60)
    assert said["user"]["username"] == f"system:serviceaccount:{namespace}:reader"
    assert said["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["who"]
    assert said["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [uid]
    assert said["uid"] == uid  # the Role let it read its pod

    directory = process_node.work / "pods" / f"{namespace}_who" / "serviceaccount"
    token = (directory / "token").read_text()
    assert (directory / "token").stat().st_mode & 0o777 == 0o600
    assert (directory / "ca.crt").read_bytes() == k8s_cluster.plane.pki.ca_crt.read_bytes()
    assert (directory / "namespace").read_text() == namespace
    claims = jwt_claims(token)
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["kubernetes.io"]["pod"] == {"name": "who", "uid": uid}
    assert claims["aud"] == ["https://kubernetes.default.svc.cluster.local"]


def test_automount_follows_the_pod_then_its_service_account(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    service_account(k8s_cluster, namespace, "quiet", automountServiceAccountToken=False)
    names = ["PILOTHOUSE_SERVICEACCOUNT_DIR", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"]
    cases = {"sa-says-no": ("quiet", None), "pod-says-yes": ("quiet", True)}
    cases["pod-says-no"] = ("default", False)
    for name, (account, automount) in cases.items():
        manifest = process_pod(
            name,
            [sys.executable, "-c", PRINTS_ENV, *names],
            restart="Never",
            node=process_node.name,
        )
        manifest["spec"]["serviceAccountName"] = account
        if automount is not None:
            manifest["spec"]["automountServiceAccountToken"] = automount
        k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    server = urllib.parse.urlsplit(k8s_cluster.plane.server)
    for name in cases:
        env = wait_for(
            f"{name} to print its env",
            lambda n=name: json_line(log_of(process_node, namespace, n)),
            timeout=60,
        )
        # the apiserver's address, token or not (as the kubelet's service env)
        assert env["KUBERNETES_SERVICE_HOST"] == server.hostname
        assert env["KUBERNETES_SERVICE_PORT"] == str(server.port)
        directory = process_node.work / "pods" / f"{namespace}_{name}" / "serviceaccount"
        if name == "pod-says-yes":
            assert env["PILOTHOUSE_SERVICEACCOUNT_DIR"] == str(directory)
            assert (directory / "token").read_text()
        else:
            assert env["PILOTHOUSE_SERVICEACCOUNT_DIR"] is None
            assert not directory.exists()


def test_a_pod_whose_token_cannot_be_made_waits_in_container_creating_until_it_can(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """The ServiceAccount is gone by the time the pod reaches the node (a scheduling gate
    holds it until then): the pod stays Pending, its container ContainerCreating saying why,
    with a FailedMount event, without an address; once the ServiceAccount is back it runs."""
    core = k8s_cluster.core
    service_account(k8s_cluster, namespace, "late")
    manifest = process_pod("late", SLEEPS)
    manifest["spec"]["serviceAccountName"] = "late"
    manifest["spec"]["schedulingGates"] = [{"name": "pilothouse.dev/test"}]
    core.create_namespaced_pod(namespace, manifest)  # admitted: the ServiceAccount exists
    core.delete_namespaced_service_account("late", namespace)
    core.patch_namespaced_pod(
        "late",
        namespace,
        [{"op": "remove", "path": "/spec/schedulingGates"}],
        _content_type="application/json-patch+json",
    )

    def creating() -> Any | None:
        pod = read_pod(k8s_cluster, namespace, "late")
        statuses = (pod.status.container_statuses or []) if pod else []
        waiting = statuses[0].state.waiting if statuses else None
        return pod if waiting and waiting.reason == "ContainerCreating" else None

    pod = wait_for("late ContainerCreating", creating, timeout=60)
    assert pod.spec.node_name == process_node.name
    assert pod.status.phase == "Pending"
    assert pod.status.pod_ip is None
    assert (
        'serviceaccounts "late" not found' in pod.status.container_statuses[0].state.waiting.message
    )
    events = wait_for(
        "a FailedMount event",
        lambda: [
            e
            for e in core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=late"
            ).items
            if e.reason == "FailedMount"
        ],
        timeout=30,
    )
    assert 'serviceaccounts "late" not found' in events[0].message
    assert events[0].source.host == process_node.name

    service_account(k8s_cluster, namespace, "late")
    running_pod = wait_for("late Running", lambda: running(k8s_cluster, namespace, "late"))
    assert running_pod.status.pod_ip
    token = process_node.work / "pods" / f"{namespace}_late" / "serviceaccount" / "token"
    assert jwt_claims(token.read_text())["kubernetes.io"]["serviceaccount"]["name"] == "late"


def test_tokens_are_renewed_before_they_expire(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """A node told to renew tokens 2 s after it made them (not at 80 % of their hour) writes
    a new one in place, which the apiserver takes."""
    with extra_node(k8s_cluster, process_node, "process-renew", "--token-refresh-after=2") as (
        name,
        work,
        _,
    ):
        k8s_cluster.core.create_namespaced_pod(namespace, process_pod("renewed", SLEEPS, node=name))
        wait_for("renewed Running", lambda: running(k8s_cluster, namespace, "renewed"))
        path = work / "pods" / f"{namespace}_renewed" / "serviceaccount" / "token"
        first = path.read_text()
        second = wait_for(
            "a renewed token", lambda: (t := path.read_text()) != first and t, timeout=20
        )
        assert jwt_claims(second)["iat"] >= jwt_claims(first)["iat"]
        assert jwt_claims(second)["kubernetes.io"]["pod"]["name"] == "renewed"
        plane = k8s_cluster.plane
        # the token alone (plane.http() would authenticate with the admin's certificate)
        review = httpx.post(
            f"{plane.server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            headers={"Authorization": f"Bearer {second}"},
            verify=ssl.create_default_context(cafile=str(plane.pki.ca_crt)),
            trust_env=False,
            timeout=10,
        )
        assert review.status_code == 201, review.text
        assert review.json()["status"]["userInfo"]["username"] == (
            f"system:serviceaccount:{namespace}:default"
        )


def test_env_from_secrets_config_maps_and_the_downward_api(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    core = k8s_cluster.core
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": "AKIA", "password": "s3cret"},
        },
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "LEVEL": "3"}}
    )
    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {
            "name": "NO_KEY",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}},
        },
        {
            "name": "NO_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "nothere", "key": "x", "optional": True}},
        },
        {"name": "DERIVED", "value": "$(MODE)-$(PASSWORD)-$(CFG_mode)"},
        {"name": "CFG_LEVEL", "value": "override"},  # env wins over envFrom
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {
            "name": "MEMORY_MI",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {
            "name": "CPU_MILLI",
            "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
        },
        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]
    env_from = [
        {"secretRef": {"name": "creds"}},
        {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
        {"secretRef": {"name": "nothere", "optional": True}},
    ]
    names = [e["name"] for e in env] + ["AWS_ACCESS_KEY_ID", "password", "CFG_mode"]
    k8s_cluster.core.create_namespaced_pod(
        namespace,
        process_pod(
            "envs",
            [sys.executable, "-c", PRINTS_ENV, *names],
            restart="Never",
            labels={"app": "envs"},
            node=process_node.name,
            env=env,
            envFrom=env_from,
            resources={"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}},
        ),
    )
    printed = wait_for(
        "envs to print its env", lambda: json_line(log_of(process_node, namespace, "envs"))
    )
    assert printed == {
        "PASSWORD": "s3cret",
        "MODE": "fast",
        "NO_KEY": None,
        "NO_SECRET": None,
        "DERIVED": "fast-s3cret-fast",
        "CFG_LEVEL": "override",
        "APP": "envs",
        "MEMORY_MI": "64",
        "CPU_MILLI": "250",
        "CPU_LIMIT": "4",  # no limit: the node's allocatable
        "AWS_ACCESS_KEY_ID": "AKIA",
        "password": "s3cret",
        "CFG_mode": "fast",
    }


def test_a_missing_reference_makes_the_container_wait_with_create_container_config_error(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """As the kubelet: the container waits (CreateContainerConfigError, saying what is
    missing), the pod's other container runs meanwhile, the pod is Pending; once the Secret
    has the key the container starts."""
    core = k8s_cluster.core
    manifest = process_pod(
        "needs",
        [sys.executable, "-c", PRINTS_ENV + "import time; time.sleep(3600)\n", "TOKEN"],
        node=process_node.name,
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}],
    )
    manifest["spec"]["containers"].append({"name": "side", "image": "none", "command": SLEEPS})
    core.create_namespaced_pod(namespace, manifest)

    def waiting_with(text: str) -> Any | None:
        pod = read_pod(k8s_cluster, namespace, "needs")
        statuses = {c.name: c for c in (pod.status.container_statuses or [])} if pod else {}
        main = statuses.get("main")
        waiting = main.state.waiting if main else None
        if waiting and waiting.reason == "CreateContainerConfigError" and text in waiting.message:
            return pod
        return None

    pod = wait_for("needs waiting for its Secret", lambda: waiting_with('secret "later" not found'))
    assert pod.status.phase == "Pending"
    side = next(c for c in pod.status.container_statuses if c.name == "side")
    assert side.state.running is not None

    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "later"}, "stringData": {"x": "1"}}
    )
    wait_for(
        "needs waiting for the key",
        lambda: waiting_with(f"couldn't find key token in Secret {namespace}/later"),
        timeout=30,
    )
    core.patch_namespaced_secret("later", namespace, {"stringData": {"token": "t0ken"}})
    pod = wait_for(
        "needs Running",
        lambda: (p := running(k8s_cluster, namespace, "needs")) and pod_ready(p) and p,
    )
    main = next(c for c in pod.status.container_statuses if c.name == "main")
    assert main.restart_count == 0
    printed = wait_for(
        "needs to print", lambda: json_line(log_of(process_node, namespace, "needs"))
    )
    assert printed == {"TOKEN": "t0ken"}


#: serves GET /prestop (appends "NAME prestop" to argv[1], answers after 0.5 s) on
#: $(POD_IP):8080; on SIGTERM appends "NAME SIGTERM" and exits
SERVES_PRESTOP = (
    "import http.server, signal, sys, time\n"
    "out, host = sys.argv[1], sys.argv[2]\n"
    "def note(what):\n"
    "    with open(out, 'a') as f:\n"
    "        f.write('%s %s %.3f\\n' % (sys.argv[3], what, time.time()))\n"
    "def term(*_):\n"
    "    note('SIGTERM')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        note('prestop')\n"
    "        time.sleep(0.5)\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "if len(sys.argv) > 4:\n"
    "    http.server.HTTPServer((host, int(sys.argv[4])), Handler).serve_forever()\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def test_pre_stop_hooks_run_before_sigterm_on_deletion(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> None:
    """httpGet, exec and sleep preStop hooks each run (and end) before their container gets
    SIGTERM, within the grace period."""
    notes = tmp_path / "notes"
    exec_hook = f'echo "worker prestop $(date +%s.%N)" >> {notes}; sleep 0.5'

    def container(name: str, hook: dict[str, Any], *port: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": "none",
            "command": [sys.executable, "-c", SERVES_PRESTOP, str(notes), "$(POD_IP)", name, *port],
            "env": [POD_IP_ENV],
            "ports": [{"name": "http", "containerPort": 8080}] if port else [],
            "lifecycle": {"preStop": hook},
        }

    manifest = process_pod("hooked", [], grace=20, node=process_node.name)
    manifest["spec"]["containers"] = [
        container("web", {"httpGet": {"path": "/prestop", "port": "http"}}, "8080"),
        container("worker", {"exec": {"command": ["sh", "-c", exec_hook]}}),
        container("sleeper", {"sleep": {"seconds": 1}}),
    ]
    k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(
        "hooked Ready", lambda: (p := running(k8s_cluster, namespace, "hooked")) and pod_ready(p)
    )
    assert pod
    deleted_at = time.time()
    k8s_cluster.core.delete_namespaced_pod("hooked", namespace)
    wait_for("hooked deleted (404)", lambda: gone(k8s_cluster, namespace, "hooked"), timeout=20)
    took = time.time() - deleted_at
    lines = [line.split() for line in notes.read_text().splitlines()]
    seen = {(name, what): float(at) for name, what, at in lines}
    for name in ("web", "worker"):
        assert seen[name, "prestop"] < seen[name, "SIGTERM"], lines
        assert seen[name, "SIGTERM"] - seen[name, "prestop"] >= 0.5, "SIGTERM once the hook ended"
    assert seen["sleeper", "SIGTERM"] - deleted_at >= 1.0, lines
    assert took < 10, f"deleted after {took:.1f}s: the hooks are quick, the grace is 20 s"


def test_a_pre_stop_hook_running_past_the_grace_period_is_killed_with_its_container(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    seconds = str(70000 + random.randrange(10000))
    grace = 3
    k8s_cluster.core.create_namespaced_pod(
        namespace,
        process_pod(
            "slow-hook",
            SLEEPS,
            grace=grace,
            node=process_node.name,
            lifecycle={"preStop": {"exec": {"command": ["sleep", seconds]}}},
        ),
    )
    pod = wait_for("slow-hook Running", lambda: running(k8s_cluster, namespace, "slow-hook"))
    pid = container_pid(pod)
    assert pid is not None
    deleted_at = time.monotonic()
    k8s_cluster.core.delete_namespaced_pod("slow-hook", namespace)
    wait_for(f"the hook's `sleep {seconds}`", lambda: sleeps(seconds), timeout=10)
    assert _alive(pid), "no SIGTERM while the hook runs"
    wait_for(
        "slow-hook deleted (404)", lambda: gone(k8s_cluster, namespace, "slow-hook"), timeout=20
    )
    assert time.monotonic() - deleted_at >= grace - 0.5
    assert not _alive(pid)
    wait_for(f"the hook's `sleep {seconds}` killed", lambda: not sleeps(seconds), timeout=5)


#: listens on argv[1]:argv[2] while the file argv[3] does not exist; closes the listening
#: socket while it does (and keeps running)
TCP_FLIP = (
    "import os, socket, sys, time\n"
    "host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
    "sock = None\n"
    "while True:\n"
    "    if os.path.exists(marker) and sock:\n"
    "        sock.close()\n"
    "        sock = None\n"
    "    elif not os.path.exists(marker) and not sock:\n"
    "        sock = socket.create_server((host, port))\n"
    "    time.sleep(0.1)\n"
)


def statuses_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    pod = read_pod(cluster, namespace, name)
    return {c.name: c for c in (pod.status.container_statuses or [])} if pod else {}


def test_a_failing_liveness_probe_restarts_the_container(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> None:
    """httpGet, tcpSocket and exec liveness probes: failing failureThreshold times in a row
    has the container killed and started again (restartCount + 1, lastState terminated)."""
    marker = tmp_path / "sick"
    every = {"periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1}
    manifest = process_pod("lively", [], grace=2, node=process_node.name)
    manifest["spec"]["containers"] = [
        {
            "name": "http",
            "image": "none",
            "command": [sys.executable, "-c", FLIPPING_SERVER, str(marker), "$(POD_IP)", "8080"],
            "env": [POD_IP_ENV],
            "livenessProbe": {"httpGet": {"path": "/", "port": 8080}, **every},
        },
        {
            "name": "tcp",
            "image": "none",
            "command": [sys.executable, "-c", TCP_FLIP, "$(POD_IP)", "8081", str(marker)],
            "env": [POD_IP_ENV],
            "livenessProbe": {"tcpSocket": {"port": 8081}, **every},
        },
        {
            "name": "exec",
            "image": "none",
            "command": SLEEPS,
            "livenessProbe": {"exec": {"command": ["sh", "-c", f"test ! -e {marker}"]}, **every},
        },
    ]
    k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(
        "lively Ready",
        lambda: (p := running(k8s_cluster, namespace, "lively")) and pod_ready(p) and p,
    )
    first = {c.name: c.container_id for c in pod.status.container_statuses}

    marker.touch()

    def all_restarted() -> dict[str, Any] | None:
        found = statuses_of(k8s_cluster, namespace, "lively")
        if len(found) == 3 and all(c.restart_count >= 1 for c in found.values()):
            return found
        return None

    restarted = wait_for("every container restarted", all_restarted, timeout=60)
    marker.unlink()
    for name, status in restarted.items():
        terminated = status.last_state.terminated
        assert terminated is not None, name
        assert terminated.exit_code in (137, 143), (name, terminated)
    pod = wait_for(
        "lively Ready again",
        lambda: (p := running(k8s_cluster, namespace, "lively")) and pod_ready(p) and p,
        timeout=60,
    )
    again = {c.name: c.container_id for c in pod.status.container_statuses}
    assert all(again[name] != first[name] for name in first), (first, again)
    killing = [
        e.message
        for e in k8s_cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=lively"
        ).items
        if e.reason == "Killing"
    ]
    assert any("failed liveness probe" in m for m in killing), killing


def test_a_startup_probe_holds_the_other_probes_until_it_succeeds(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> None:
    """Until the startupProbe succeeds the container is not started (nor ready) and its
    readiness and liveness probes do not run; a startupProbe that keeps failing restarts
    the container."""
    runs, started = tmp_path / "runs", tmp_path / "started"

    def noting(letter: str, then: str = "true") -> dict[str, Any]:
        return {"exec": {"command": ["sh", "-c", f"echo {letter} >> {runs}; {then}"]}}

    manifest = process_pod("starting", [], node=process_node.name)
    manifest["spec"]["containers"] = [
        {
            "name": "slow",
            "image": "none",
            "command": SLEEPS,
            "startupProbe": {
                **noting("s", f"test -e {started}"),
                "periodSeconds": 1,
                "failureThreshold": 60,
            },
            "readinessProbe": {**noting("r"), "periodSeconds": 1},
            "livenessProbe": {**noting("l"), "periodSeconds": 1},
        },
        {
            "name": "never",
            "image": "none",
            "command": SLEEPS,
            "startupProbe": {
                "exec": {"command": ["false"]},
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
        },
    ]
    k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    wait_for("three startup checks", lambda: logged(runs).count("s") >= 3, timeout=60)
    slow = statuses_of(k8s_cluster, namespace, "starting")["slow"]
    assert slow.state.running is not None
    assert slow.started is False
    assert slow.ready is False
    assert set(logged(runs)) == {"s"}, "readiness and liveness wait for the startup probe"

    started.touch()
    wait_for(
        "slow started and ready",
        lambda: (c := statuses_of(k8s_cluster, namespace, "starting")["slow"]).started and c.ready,
        timeout=30,
    )
    wait_for("readiness and liveness checks", lambda: {"r", "l"} <= set(logged(runs)), timeout=30)
    never = wait_for(
        "never restarted by its startup probe",
        lambda: (
            (c := statuses_of(k8s_cluster, namespace, "starting")["never"]).restart_count >= 1 and c
        ),
        timeout=60,
    )
    assert never.started is False
    assert statuses_of(k8s_cluster, namespace, "starting")["slow"].restart_count == 0


#: prints its arguments and working directory as JSON, writes a file at argv[2] and argv[3]
WRITES_FILES = (
    "import json, os, sys\n"
    "print(json.dumps({'args': sys.argv[1:], 'cwd': os.getcwd()}), flush=True)\n"
    "for path in sys.argv[2:4]:\n"
    "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
    "    with open(path, 'w') as f:\n"
    "        f.write('written')\n"
)


def test_empty_dir_mount_paths_in_arguments_are_the_pods_own_directories(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    """Processes see no mounts: an argument (or workingDir) that is an emptyDir's mountPath,
    or under it, names the pod's directory for that volume instead; $(VAR) expansion comes
    after, so a variable's value is left alone. Each emptyDir starts empty."""
    pod_dir = process_node.work / "pods" / f"{namespace}_vols"
    stale = pod_dir / "volumes" / "cache" / "stale"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("a previous pod's")
    manifest = process_pod(
        "vols",
        [
            sys.executable,
            "-c",
            WRITES_FILES,
            "/var/cache/pilothouse",
            "/var/cache/pilothouse/models/x.txt",
            "/scratch/y.txt",
            "/var/cache/pilothouse-not",
            "$(CACHE)",
        ],
        restart="Never",
        node=process_node.name,
        env=[{"name": "CACHE", "value": "/var/cache/pilothouse"}],
        workingDir="/scratch",
        volumeMounts=[
            {"name": "cache", "mountPath": "/var/cache/pilothouse"},
            {"name": "scratch", "mountPath": "/scratch/", "subPath": "sub"},
        ],
    )
    manifest["spec"]["volumes"] = [
        {"name": "cache", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
    ]
    k8s_cluster.core.create_namespaced_pod(namespace, manifest)
    printed = wait_for("vols to print", lambda: json_line(log_of(process_node, namespace, "vols")))
    cache, scratch = pod_dir / "volumes" / "cache", pod_dir / "volumes" / "scratch" / "sub"
    assert printed == {
        "args": [
            str(cache),
            f"{cache}/models/x.txt",
            f"{scratch}/y.txt",
            "/var/cache/pilothouse-not",
            "/var/cache/pilothouse",
        ],
        "cwd": str(scratch),
    }
    wait_for(
        "vols Succeeded",
        lambda: (p := read_pod(k8s_cluster, namespace, "vols")) and p.status.phase == "Succeeded",
    )
    assert (cache / "models" / "x.txt").read_text() == "written"
    assert (scratch / "y.txt").read_text() == "written"
    assert not stale.exists()
