"""A Deployment of real pilothouse model servers on the process node: real processes, real
sockets on their pod IPs, readiness from their probes, EndpointSlices that point at them."""

from __future__ import annotations

import ipaddress
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pilothouse.registry.local import LocalRegistry, ModelVersion
from tests.k8s.conftest import Cluster, ProcessNode, _alive
from tests.k8s.testenv import wait_for

pytestmark = pytest.mark.k8s
FEATURES = ["amount", "hour", "distance", "velocity"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """A small registered scikit-learn model (a fraud score over four features)."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, len(FEATURES)))
    labels = (features @ np.array([1.5, -0.5, 1.0, 2.0]) + rng.normal(size=600) > 0).astype(int)
    fitted = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        joblib.dump(fitted, out / "model.joblib")
        (out / "signature.json").write_text(
            json.dumps(
                {
                    "inputs": [{"name": f, "datatype": "FP64"} for f in FEATURES],
                    "outputs": [{"name": "score", "datatype": "FP64"}],
                }
            )
        )
        registry = LocalRegistry(tmp_path_factory.mktemp("registry"))
        return registry.register("fraud", out, framework="sklearn")


def model_server_deployment(name: str, replicas: int, version: ModelVersion) -> dict[str, Any]:
    container = {
        "name": "server",
        "image": "pilothouse/model-server:dev",  # a process node runs the command, not the image
        "command": [sys.executable, "-m", "pilothouse", "serve"],
        "args": [
            "--model-dir",
            str(version.path),
            "--name",
            "fraud",
            "--host",
            "$(POD_IP)",
            "--port",
            "8080",
        ],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"pilothouse.dev/node-kind": "process"},
                    "tolerations": [
                        {
                            "key": "pilothouse.dev/process-node",
                            "operator": "Equal",
                            "value": "true",
                            "effect": "NoSchedule",
                        }
                    ],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            },
        },
    }


@pytest.fixture
def served(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, model: ModelVersion
) -> Iterator[str]:
    k8s_cluster.apps.create_namespaced_deployment(
        namespace, model_server_deployment("fraud", 2, model)
    )
    k8s_cluster.core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "selector": {"app": "fraud"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )
    yield namespace
    # the namespace goes with its pods; the node agent must stop their processes
    k8s_cluster.apps.delete_namespaced_deployment("fraud", namespace)


def ready_pods(cluster: Cluster, namespace: str) -> list[Any]:
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=fraud").items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def slice_addresses(cluster: Cluster, namespace: str) -> set[str]:
    slices = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=fraud"
    ).items
    return {
        address
        for s in slices
        for e in s.endpoints or []
        if e.conditions and e.conditions.ready
        for address in e.addresses
    }


def predict(ip: str, rows: np.ndarray) -> list[float]:
    response = httpx.post(
        f"http://{ip}:8080/v1/models/fraud:predict",
        json={"instances": rows.tolist()},
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_model_servers_on_the_process_node_serve_on_their_pod_ips(
    k8s_cluster: Cluster, served: str, process_node: ProcessNode, model: ModelVersion
) -> None:
    namespace = served
    pods = wait_for(
        "2 ready model-server pods",
        lambda: found if len(found := ready_pods(k8s_cluster, namespace)) == 2 else None,
        timeout=120,
    )
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    pod_network = ipaddress.ip_network(process_node.pod_cidr)
    assert all(ipaddress.ip_address(ip) in pod_network for ip in ips)
    assert {p.spec.node_name for p in pods} == {process_node.name}

    rows = np.random.default_rng(3).normal(size=(5, len(FEATURES)))
    expected = joblib.load(model.path / "model.joblib").predict_proba(rows)[:, 1]
    for ip in ips:
        assert (
            httpx.get(f"http://{ip}:8080/v2/health/ready", timeout=5, trust_env=False).status_code
            == 200
        )
        np.testing.assert_allclose(predict(ip, rows), expected)

    # the EndpointSlice controller lists exactly the ready pods' IPs: real sockets
    assert wait_for(
        "the EndpointSlice to list both pod IPs",
        lambda: slice_addresses(k8s_cluster, namespace) == ips,
        timeout=30,
    )
    for ip in slice_addresses(k8s_cluster, namespace):
        np.testing.assert_allclose(predict(ip, rows), expected)

    wide = k8s_cluster.kubectl("get", "pods", "-o", "wide", "-n", namespace)
    assert wide.splitlines()[0].split()[:7] == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
    ]
    for pod in pods:
        line = next(line for line in wide.splitlines() if line.startswith(pod.metadata.name))
        assert line.split()[1:3] == ["1/1", "Running"]
        assert pod.status.pod_ip in line.split()
        assert process_node.name in line.split()


def test_deleting_a_pod_kills_its_process_and_the_replacement_takes_its_place(
    k8s_cluster: Cluster, served: str
) -> None:
    namespace = served
    pods = wait_for(
        "2 ready model-server pods",
        lambda: found if len(found := ready_pods(k8s_cluster, namespace)) == 2 else None,
        timeout=120,
    )
    victim = pods[0]
    container_id = victim.status.container_statuses[0].container_id
    assert container_id.startswith("process://")
    pid = int(container_id.removeprefix("process://"))
    assert _alive(pid)

    k8s_cluster.core.delete_namespaced_pod(victim.metadata.name, namespace)

    def deleted() -> bool:
        try:
            k8s_cluster.core.read_namespaced_pod(victim.metadata.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    # the agent completes the deletion only once the process is gone: the object goes (404)
    wait_for(f"the deleted pod {victim.metadata.name} gone (404)", deleted, timeout=30)
    assert not _alive(pid), f"pod {victim.metadata.name} deleted but its process {pid} lives"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{victim.status.pod_ip}:8080/v2/health/ready", timeout=2, trust_env=False)

    def replaced() -> set[str] | None:
        now = ready_pods(k8s_cluster, namespace)
        names = {p.metadata.name for p in now}
        if len(now) == 2 and victim.metadata.name not in names:
            return {p.status.pod_ip for p in now}
        return None

    ips = wait_for("a ready replacement", replaced, timeout=120)
    assert wait_for(
        "the EndpointSlice to follow",
        lambda: slice_addresses(k8s_cluster, namespace) == ips,
        timeout=30,
    )
    for ip in ips:
        assert (
            httpx.get(f"http://{ip}:8080/v2/health/ready", timeout=5, trust_env=False).status_code
            == 200
        )
