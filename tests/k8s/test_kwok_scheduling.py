"""Scheduling and self-healing on simulated (kwok) nodes, against the real control plane."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.k8s.conftest import Cluster
from tests.k8s.testenv import KWOK_POD_CIDR, wait_for

pytestmark = pytest.mark.k8s


def deployment(
    name: str,
    replicas: int,
    *,
    node_selector: dict[str, str],
    requests: dict[str, str] | None = None,
    spread: bool = False,
) -> dict[str, Any]:
    resources = {"resources": {"requests": requests, "limits": requests}} if requests else {}
    pod_spec: dict[str, Any] = {
        "nodeSelector": node_selector,
        "containers": [{"name": "main", "image": "registry.invalid/sim:1", **resources}],
    }
    if spread:
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                # a NotReady (tainted) node does not count: replacements may all go elsewhere
                "nodeTaintsPolicy": "Honor",
                "labelSelector": {"matchLabels": {"app": name}},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def pods_of(cluster: Cluster, namespace: str, app: str) -> list[client.V1Pod]:
    return cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def running(pods: list[client.V1Pod]) -> list[client.V1Pod]:
    return [
        p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    ]


def deployment_available(
    cluster: Cluster, namespace: str, name: str, replicas: int
) -> Callable[[], bool]:
    def probe() -> bool:
        status = cluster.apps.read_namespaced_deployment_status(name, namespace).status
        return (status.available_replicas or 0) == replicas and (
            status.updated_replicas or 0
        ) == replicas

    return probe


def test_kubectl_reports_the_pinned_release(k8s_cluster: Cluster) -> None:
    version = k8s_cluster.kubectl("version", "-o", "json")
    assert '"gitVersion": "v1.36.3"' in version  # client and server, from the ldflags
    assert version.count("v1.36.3") >= 2
    ready = k8s_cluster.kubectl("get", "--raw", "/readyz?verbose")
    assert "readyz check passed" in ready
    assert "etcd ok" in ready


def test_deployment_pods_are_scheduled_onto_kwok_nodes_by_gpus_and_run(
    k8s_cluster: Cluster, namespace: str, kwok_node: Callable[..., list[str]]
) -> None:
    nodes = kwok_node(20, prefix="gpu", cpu="16", memory="64Gi", gpus=4, labels={"pool": namespace})
    spec = deployment(
        "trainer",
        76,
        node_selector={"pool": namespace},
        requests={"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"},
    )
    k8s_cluster.apps.create_namespaced_deployment(namespace, spec)

    wait_for(
        "76 trainer pods available",
        deployment_available(k8s_cluster, namespace, "trainer", 76),
        timeout=120,
    )
    pods = running(pods_of(k8s_cluster, namespace, "trainer"))
    assert len(pods) == 76
    per_node = Counter(p.spec.node_name for p in pods)
    assert set(per_node) <= set(nodes)
    assert max(per_node.values()) <= 4, per_node  # never more GPUs than a node has
    pod_network = ipaddress.ip_network(KWOK_POD_CIDR)
    assert all(ipaddress.ip_address(p.status.pod_ip) in pod_network for p in pods)
    assert all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions) for p in pods
    )


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending_with_the_reason(
    k8s_cluster: Cluster, namespace: str, kwok_node: Callable[..., list[str]]
) -> None:
    kwok_node(2, prefix="gpu", gpus=4, labels={"pool": namespace})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "nodeSelector": {"pool": namespace},
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/sim:1",
                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                }
            ],
        },
    }
    k8s_cluster.core.create_namespaced_pod(namespace, pod)

    def unschedulable() -> client.V1PodCondition | None:
        found = k8s_cluster.core.read_namespaced_pod("too-big", namespace)
        for condition in found.status.conditions or []:
            if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                return condition
        return None

    condition = wait_for("the scheduler to give up on too-big", unschedulable, timeout=60)
    assert condition.status == "False"
    assert "Insufficient nvidia.com/gpu" in condition.message, condition.message

    def failed_scheduling_event() -> list[client.CoreV1Event]:
        events = k8s_cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=too-big,reason=FailedScheduling"
        ).items
        return [e for e in events if "Insufficient nvidia.com/gpu" in (e.message or "")]

    assert wait_for("a FailedScheduling event", failed_scheduling_event, timeout=30)
    found = k8s_cluster.core.read_namespaced_pod("too-big", namespace)
    assert found.status.phase == "Pending"
    assert found.spec.node_name is None


def test_pods_on_a_node_gone_not_ready_are_evicted_and_replaced_elsewhere(
    k8s_cluster: Cluster, namespace: str, kwok_node: Callable[..., list[str]]
) -> None:
    failing, healthy = kwok_node(2, prefix="heal", labels={"pool": namespace})
    k8s_cluster.apps.create_namespaced_deployment(
        namespace, deployment("web", 4, node_selector={"pool": namespace}, spread=True)
    )
    wait_for("4 web pods available", deployment_available(k8s_cluster, namespace, "web", 4))
    before = {p.metadata.name: p.spec.node_name for p in pods_of(k8s_cluster, namespace, "web")}
    doomed = {name for name, node in before.items() if node == failing}
    assert len(doomed) == 2, before  # spread two and two

    # the node's kubelet (kwok's stage) now reports Ready=False
    k8s_cluster.core.patch_node(
        failing, {"metadata": {"annotations": {"pilothouse.dev/kwok-not-ready": "true"}}}
    )

    def not_ready() -> bool:
        node = k8s_cluster.core.read_node(failing)
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        tainted = {(t.key, t.effect) for t in node.spec.taints or []}
        return (
            ready[0].status == "False" and ("node.kubernetes.io/not-ready", "NoExecute") in tainted
        )

    wait_for(f"{failing} NotReady and tainted NoExecute", not_ready, timeout=60)

    def healed() -> bool:
        pods = pods_of(k8s_cluster, namespace, "web")
        names = {p.metadata.name for p in pods}
        live = running(pods)
        return (
            not (doomed & names)
            and len(live) == 4
            and all(p.spec.node_name == healthy for p in live)
            and deployment_available(k8s_cluster, namespace, "web", 4)()
        )

    wait_for("the evicted pods replaced on the healthy node", healed, timeout=90)
    evictions = k8s_cluster.core.list_namespaced_event(
        namespace, field_selector="reason=TaintManagerEviction"
    ).items
    assert {e.involved_object.name for e in evictions} >= doomed


def test_a_failed_pod_is_replaced(
    k8s_cluster: Cluster, namespace: str, kwok_node: Callable[..., list[str]]
) -> None:
    kwok_node(1, prefix="fail", labels={"pool": namespace})
    k8s_cluster.apps.create_namespaced_deployment(
        namespace, deployment("svc", 2, node_selector={"pool": namespace})
    )
    wait_for("2 svc pods available", deployment_available(k8s_cluster, namespace, "svc", 2))
    victim = pods_of(k8s_cluster, namespace, "svc")[0].metadata.name

    # kwok's pod-fail stage: the container exits 1, the pod goes Failed
    k8s_cluster.core.patch_namespaced_pod(
        victim, namespace, {"metadata": {"annotations": {"pilothouse.dev/kwok-fail": "true"}}}
    )

    def failed() -> client.V1Pod | None:
        pod = k8s_cluster.core.read_namespaced_pod(victim, namespace)
        return pod if pod.status.phase == "Failed" else None

    pod = wait_for(f"{victim} Failed", failed, timeout=60)
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1

    def replaced() -> bool:
        live = running(pods_of(k8s_cluster, namespace, "svc"))
        return len(live) == 2 and victim not in {p.metadata.name for p in live}

    wait_for("the ReplicaSet to replace the failed pod", replaced, timeout=60)
    assert wait_for(
        "the Deployment available again", deployment_available(k8s_cluster, namespace, "svc", 2)
    )
