"""The process node agent behaves like a kubelet where it matters to pilothouse: stopping a pod
never holds up the others, nothing a container forked outlives it, readiness follows the
probe into the EndpointSlice, an exhausted address pool says so, hostNetwork pods use the
node's address, and the node stays Ready on its Lease."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
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
    k8s_cluster: Cluster, process_node: ProcessNode, prefix: str
) -> Iterator[tuple[str, Path, Process]]:
    """Another node agent, with one pod address; checked like process-0 after it stops."""
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
