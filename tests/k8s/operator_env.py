"""What the operator's tests run it with: an S3 registry on loopback (moto's server), model
versions in it, process nodes of their own (to stop one without touching process-0), the
namespace's install objects, and operators run out of cluster as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pilothouse.registry.local import ModelVersion
from pilothouse.registry.objectstore import ObjectStoreRegistry
from tests.integration.rollout_models import (
    LoadResult,
    Rows,
    register_good,
    register_v1,
    register_wrong,
)
from tests.k8s.conftest import DEAD_PROXIES, NODE_AGENT, Cluster, check_agent_left_nothing
from tests.k8s.node_agent import Session, process
from tests.k8s.testenv import Process, start_process, wait_for

MODEL = "fraud-detector"
BUCKET = "models"
PROCESS_TAINT = "pilothouse.dev/process-node=true:NoSchedule"
POOL_LABEL = "pilothouse.dev/test-pool"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/fraud-detection/modeldeployment.yaml"
PILOTHOUSE = str(Path(sys.executable).with_name("pilothouse"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Registry:
    url: str
    uri: str
    env: dict[str, str]
    registry: ObjectStoreRegistry
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    rows: Rows | None = None
    #: trained, not published yet (``publish`` puts one in the registry)
    local: dict[str, ModelVersion] = field(default_factory=dict)

    def publish(self, key: str) -> int:
        """Register a prepared version (v2, v3) in S3 once; its version number."""
        if key not in self.versions:
            version = self.local[key]
            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / "model"  # the files, without the local registry's manifest
                shutil.copytree(version.path, source, ignore=shutil.ignore_patterns("model.json"))
                self.versions[key] = self.registry.register(
                    MODEL, source, framework=version.framework
                )
        return self.versions[key].version


@contextlib.contextmanager
def s3_registry(work: Path) -> Iterator[S3Registry]:
    """moto's S3 server on 127.0.0.1 holding version 1 of ``fraud-detector``; v2 (a good
    retrain) and v3 (silently wrong: answers 1 - p of v1) are trained, for ``publish``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/registry"
        registry = ObjectStoreRegistry(uri, work / "s3-cache")
        local = work / "local-registry"
        v1 = register_v1(local)
        made = {
            "v1": v1,
            "v2": register_good(local),
            "v3": register_wrong(local, v1),
        }
        out = S3Registry(url, uri, env, registry, rows=Rows.for_version(v1, n=200), local=made)
        out.publish("v1")  # only v1 is there at first: fraud-detector:latest is v1
        yield out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _local_route(cidr: str) -> bool:
    result = subprocess.run(
        ["ip", "route", "show", "table", "local", cidr], capture_output=True, text=True
    )
    return result.returncode == 0 and bool(result.stdout.strip())


@contextlib.contextmanager
def extra_pod_network() -> Iterator[str]:
    """Another /24 of 198.18.0.0/15 routed to loopback (root with CAP_NET_ADMIN, as
    conftest's pod_network), for this module's own process nodes."""
    subnets = list(ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=24))
    random.shuffle(subnets)
    for net in subnets:
        if _local_route(str(net)):
            continue
        added = subprocess.run(
            ["ip", "route", "add", "local", str(net), "dev", "lo"], capture_output=True, text=True
        )
        if added.returncode == 0:
            try:
                yield str(net)
            finally:
                subprocess.run(["ip", "route", "del", "local", str(net), "dev", "lo"], check=False)
            return
    raise AssertionError("no free /24 in 198.18.0.0/15 for the operator tests' nodes")


@dataclass
class Node:
    name: str
    work: Path
    agent: Process
    session: Session
    stopped: bool = False

    def pause(self) -> None:
        """The node stops answering (its kubelet hangs; its pods keep running)."""
        os.kill(self.agent.pid, 19)  # SIGSTOP
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.agent.pid, 18)  # SIGCONT
            self.stopped = False


@contextlib.contextmanager
def process_nodes(cluster: Cluster, cidr: str, count: int, pool: str) -> Iterator[list[Node]]:
    """``count`` process nodes with a /26 of ``cidr`` each, labelled ``POOL_LABEL=pool``."""
    plane = cluster.plane
    base = ipaddress.ip_network(cidr)
    nodes: list[Node] = []
    try:
        for i, sub in enumerate(list(base.subnets(new_prefix=26))[:count]):
            name = f"{pool}-{i}-{uuid.uuid4().hex[:4]}"
            work = plane.work / name
            agent = start_process(
                f"node-agent-{name}",
                [
                    sys.executable,
                    str(NODE_AGENT),
                    f"--kubeconfig={plane.kubeconfig}",
                    f"--node={name}",
                    f"--pod-cidr={sub}",
                    "--cpu=8",
                    "--memory=16Gi",
                    "--pods=40",
                    f"--work={work}",
                ],
                plane.log_dir,
                # pods run `pilothouse ...`: this environment's scripts come first on PATH
                env={
                    **os.environ,
                    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                    "PYTHONUNBUFFERED": "1",
                    **DEAD_PROXIES,
                },
            )
            me = process(agent.pid)
            nodes.append(Node(name, work, agent, Session(agent.pid, me.start if me else 0)))
        for node in nodes:
            wait_for(f"node {node.name} Ready", lambda n=node: _ready(cluster, n.name), timeout=60)
            cluster.core.patch_node(node.name, {"metadata": {"labels": {POOL_LABEL: pool}}})
        yield nodes
    finally:
        for node in nodes:
            node.resume()
            node.agent.stop()
            with contextlib.suppress(ApiException):
                cluster.core.delete_node(node.name)
            check_agent_left_nothing(node.work, node.session)


def _ready(cluster: Cluster, name: str) -> bool:
    try:
        node = cluster.core.read_node(name)
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def install_namespace(cluster: Cluster, namespace: str, registry: S3Registry) -> None:
    """The namespace's install objects but the operator's Deployment (the tests run the
    operator themselves): ServiceAccounts, Roles, RoleBindings, the registry Secret."""
    from pilothouse.runtime.kube.manifests import install_manifests

    docs = install_manifests(namespace, image="pilothouse:test", registry=registry.uri)
    keep = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    keep.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pilothouse-registry", "namespace": namespace},
            "stringData": registry.env,
        }
    )
    apply_docs(cluster, keep)


def apply_docs(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, f)
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", f.name)
    finally:
        os.unlink(f.name)


@dataclass
class Operator:
    process: Process
    health: int

    def alive(self) -> bool:
        return self.process.alive()

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


def _healthz(port: int, path: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_operator(
    cluster: Cluster, namespace: str, registry: S3Registry, pool: str, name: str = "operator"
) -> Operator:
    """An operator out of cluster (``--kubeconfig``), on process nodes of ``pool``."""
    port = free_port()
    proc = start_process(
        f"{namespace}-{name}-{uuid.uuid4().hex[:4]}",
        [
            PILOTHOUSE,
            "operator",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--namespace={namespace}",
            f"--registry={registry.uri}",
            f"--toleration={PROCESS_TAINT}",
            f"--node-selector={POOL_LABEL}={pool}",
            "--health-host=127.0.0.1",
            f"--health-port={port}",
            "--lease-duration=6",
            "--renew-deadline=4",
            "--retry-period=1",
        ],
        cluster.plane.log_dir,
        env={**os.environ, **registry.env, "PYTHONUNBUFFERED": "1"},
    )
    wait_for(
        f"operator {proc.name} healthy", lambda: proc.alive() and _healthz(port, "/healthz"), 60
    )
    return Operator(proc, port)


def md(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
            "pilothouse.dev", "v1alpha1", namespace, "modeldeployments", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_ready(obj: dict[str, Any] | None) -> bool:
    c = condition(obj, "Ready")
    return c is not None and c.get("status") == "True"


def router_ips(cluster: Cluster, namespace: str, deployment: str) -> list[str]:
    pods = cluster.core.list_namespaced_pod(
        namespace,
        label_selector=f"pilothouse.dev/deployment={deployment},pilothouse.dev/component=router",
    ).items
    return sorted(
        p.status.pod_ip
        for p in pods
        if p.status.pod_ip
        and p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )


def replica_pods(cluster: Cluster, namespace: str, deployment: str) -> list[client.V1Pod]:
    return list(
        cluster.core.list_namespaced_pod(
            namespace,
            label_selector=f"pilothouse.dev/deployment={deployment},pilothouse.dev/component=replica",
        ).items
    )


def predict(ip: str, rows: Rows, index: int = 0) -> httpx.Response:
    return httpx.post(
        f"http://{ip}:8080/v2/models/{MODEL}/infer",
        content=rows.bodies[index],
        headers={"content-type": "application/json"},
        timeout=10,
    )


async def until_answered(live: list[LoadResult], count: int, within: float = 60.0) -> None:
    """Wait until the running load (``open_loop(..., on_start=live.append)``) has had
    ``count`` answers: traffic flows before the test changes anything."""
    limit = time.monotonic() + within
    while not live or len(live[0].answers) < count:
        answered = len(live[0].answers) if live else 0
        assert time.monotonic() < limit, f"only {answered} answers after {within}s of load"
        await asyncio.sleep(0.05)  # polling the load's own record, bounded by the deadline
