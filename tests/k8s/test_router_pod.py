"""The router pod (``pilothouse router``) against a real control plane: replicas are real
``pilothouse serve`` processes on the process node, each revision with its headless Service
(so the EndpointSlice controller lists them), and the router keeps its replicas from the
pods and the slices, its weights from the ConfigMap ``NAME-router``.

The router runs in cluster where the test is about what the operator ships (a pod with
the operator's router pod spec, ServiceAccount, Role and token Secret: ``router_pod``) and
as a process with ``--kubeconfig`` where the test signals it or reads its log as it goes
(``router``). Which revision answered a request is read from the answer itself: each
revision serves its own version of the model, and ``GET /v2/models/fraud`` names it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException
from sklearn.linear_model import LogisticRegression

from pilothouse.ports.dataplane import Traffic
from pilothouse.registry.local import LocalRegistry, ModelVersion
from pilothouse.runtime.kube import wire
from pilothouse.runtime.kube.manifests import (
    ROUTER,
    ROUTER_RULES,
    role,
    role_binding,
    service_account,
)
from pilothouse.runtime.kube.objects import (
    GROUP_VERSION,
    ROUTER_SECRET,
    PodDefaults,
    router_objects,
)
from tests.k8s.conftest import DEAD_PROXIES, Cluster, ProcessNode
from tests.k8s.testenv import Process, start_process, wait_for

pytestmark = pytest.mark.k8s

DEPLOYMENT = "fraud"
CONFIGMAP = f"{DEPLOYMENT}-router"
MODEL = "fraud"
FEATURES = ["amount", "hour", "distance", "velocity"]
#: a revision's replicas serve the version of the same number, so an answer names its revision
R1, R2 = "1-aaaaaa", "2-bbbbbb"
VERSION_OF = {R1: "1", R2: "2"}
PROCESS_TOLERATION = {
    "key": "pilothouse.dev/process-node",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
ROW = [[0.5, 12.0, 3.0, 1.0]]


# --- models and objects ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelVersion]:
    """Versions 1, 2 and 3 of a tiny scikit-learn model (the same fit: only the number
    differs, and that is what tells the replicas apart)."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(200, len(FEATURES)))
    labels = (features @ np.array([1.0, -0.5, 1.0, 2.0]) > 0).astype(int)
    fitted = LogisticRegression().fit(features, labels)
    registry = LocalRegistry(tmp_path_factory.mktemp("registry"))
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
        made = [registry.register(MODEL, out, framework="sklearn") for _ in range(3)]
    return {str(v.version): v for v in made}


def labels(revision: str | None = None, component: str = "replica") -> dict[str, str]:
    out = {
        "app.kubernetes.io/managed-by": "pilothouse",
        "app.kubernetes.io/name": "pilothouse",
        "pilothouse.dev/deployment": DEPLOYMENT,
        "pilothouse.dev/component": component,
    }
    if revision is not None:
        out["pilothouse.dev/revision"] = revision
    return out


def replica_pod_spec(version: ModelVersion, ready_after: int = 0) -> dict[str, Any]:
    """A replica's pod spec: ``pilothouse serve`` on its pod IP, port 8080. ``ready_after``:
    the kubelet's first readiness check comes only that many seconds after the start."""
    probe: dict[str, Any] = {
        "httpGet": {"path": "/v2/health/ready", "port": 8080},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    if ready_after:
        probe["initialDelaySeconds"] = ready_after
    return {
        "nodeSelector": {"pilothouse.dev/node-kind": "process"},
        "tolerations": [PROCESS_TOLERATION],
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "server",
                "image": "pilothouse/model-server:dev",  # a process node runs the command
                "command": [sys.executable, "-m", "pilothouse", "serve"],
                "args": [
                    "--model-dir",
                    str(version.path),
                    "--name",
                    MODEL,
                    "--host",
                    "$(POD_IP)",
                    "--port",
                    "8080",
                    "--drain",
                    "1",
                ],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": probe,
            }
        ],
    }


def create_revision(
    cluster: Cluster, namespace: str, revision: str, replicas: int, version: ModelVersion
) -> None:
    """The revision's Deployment (``NAME-REV``) and headless Service, as the operator makes them."""
    name = f"{DEPLOYMENT}-{revision}"
    selector = {
        "pilothouse.dev/deployment": DEPLOYMENT,
        "pilothouse.dev/component": "replica",
        "pilothouse.dev/revision": revision,
    }
    deployment: Any = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(revision)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(revision)},
                "spec": replica_pod_spec(version),
            },
        },
    }
    service: Any = {
        "metadata": {"name": name, "labels": labels(revision)},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
        },
    }
    cluster.apps.create_namespaced_deployment(namespace, deployment)
    cluster.core.create_namespaced_service(namespace, service)


def set_traffic(cluster: Cluster, namespace: str, traffic: Traffic) -> None:
    """Create or update the router's ConfigMap, as the operator's rollout controller does."""
    data = {"traffic.json": json.dumps(wire.encode_traffic(traffic), sort_keys=True)}
    try:
        cluster.core.patch_namespaced_config_map(CONFIGMAP, namespace, {"data": data})
    except ApiException as error:
        if error.status != 404:
            raise
        config: Any = {
            "metadata": {"name": CONFIGMAP, "labels": labels(component="router")},
            "data": data,
        }
        cluster.core.create_namespaced_config_map(namespace, config)


def ready_pods(cluster: Cluster, namespace: str, revision: str) -> list[Any]:
    pods: list[Any] = cluster.core.list_namespaced_pod(
        namespace, label_selector=f"pilothouse.dev/revision={revision}"
    ).items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def slice_readiness(cluster: Cluster, namespace: str, revision: str) -> dict[str, bool]:
    """What the revision's EndpointSlices say: pod IP -> ready."""
    slices = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={DEPLOYMENT}-{revision}"
    ).items
    return {
        address: bool(e.conditions is None or e.conditions.ready is not False)
        for s in slices
        for e in s.endpoints or []
        for address in e.addresses
    }


# --- the router ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Routed:
    """A running router: where its traffic and control ports are, its token, its log."""

    url: str
    control: str
    token: str
    log_file: Path
    #: run out of cluster: its process
    process: Process | None = None
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=30, trust_env=False), repr=False
    )

    def version(self) -> str:
        """Which version (so which revision) answered one request through the router."""
        response = self.http.get(f"{self.url}/v2/models/{MODEL}")
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        return str(response.json()["versions"][0])

    def try_version(self) -> str | None:
        """``version``, or None when the router could not answer (no traffic configuration
        yet: 503; no ready replica within the queue's timeout: 503)."""
        response = self.http.get(f"{self.url}/v2/models/{MODEL}")
        if response.status_code != 200:
            return None
        return str(response.json()["versions"][0])

    def control_get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(f"{self.control}{path}", params=params, headers=headers)

    def load(self, since: float) -> Any:
        response = self.control_get("/control/load", self.token, since=repr(since))
        assert response.status_code == 200, response.text
        return wire.decode_load(response.json())

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def router(k8s_cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Callable[[], Routed]]:
    """``router()`` starts a router of DEPLOYMENT in the test's namespace and waits until it
    answers its /healthz; stopped (SIGTERM) afterwards."""
    started: list[Routed] = []

    def start() -> Routed:
        port, control = free_port(), free_port()
        token = uuid.uuid4().hex
        process = start_process(
            f"router-{len(started)}",
            [
                sys.executable,
                "-m",
                "pilothouse",
                "router",
                "--deployment",
                DEPLOYMENT,
                "--namespace",
                namespace,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--control-port",
                str(control),
                "--kubeconfig",
                str(k8s_cluster.kubeconfig),
            ],
            tmp_path,
            env={
                **os.environ,
                "PILOTHOUSE_ROUTER_TOKEN": token,
                "PYTHONUNBUFFERED": "1",
                # the apiserver and the replicas are local: proxies must not be used
                **DEAD_PROXIES,
            },
        )
        out = Routed(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{control}",
            token,
            process.log,
            process,
        )
        started.append(out)

        def healthy() -> bool:
            assert process.alive(), f"the router exited:\n{process.tail()}"
            with contextlib.suppress(httpx.HTTPError):
                return out.control_get("/healthz").status_code == 200
            return False

        wait_for("the router's /healthz", healthy, timeout=60)
        return out

    yield start
    for one in started:
        assert one.process is not None
        one.process.stop(grace=15)
        one.http.close()


@pytest.fixture
def router_pod(
    k8s_cluster: Cluster, namespace: str, process_node: ProcessNode, tmp_path: Path
) -> Iterator[Callable[[], Routed]]:
    """``router_pod()`` runs the router in cluster, as the operator does: a pod on the
    process node with the operator's own router pod spec (only the executable differs),
    under the ServiceAccount and Role the install manifests give routers, its token from
    the Secret; it waits until the pod is Ready (its /readyz)."""

    def start() -> Routed:
        token = uuid.uuid4().hex
        install: list[dict[str, Any]] = [
            service_account(ROUTER, namespace, "router", automount=True),
            role(ROUTER, namespace, "router", ROUTER_RULES),
            role_binding(ROUTER, namespace, "router"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": ROUTER_SECRET, "namespace": namespace},
                "stringData": {"token": token},
            },
        ]
        manifest = tmp_path / "router-install.json"
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": install}))
        k8s_cluster.kubectl("apply", "-f", str(manifest))
        owner = {
            "apiVersion": GROUP_VERSION,
            "kind": "ModelDeployment",
            "metadata": {"name": DEPLOYMENT, "namespace": namespace, "uid": str(uuid.uuid4())},
        }
        defaults = PodDefaults(
            tolerations=(PROCESS_TOLERATION,),
            node_selector={"pilothouse.dev/node-kind": "process"},
            drain_seconds=1,
        )
        objects = router_objects(owner, {}, defaults)
        template = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert container["command"][:2] == ["pilothouse", "router"]
        container["command"] = [sys.executable, "-m", "pilothouse", *container["command"][1:]]
        container["env"].append({"name": "PYTHONUNBUFFERED", "value": "1"})
        name = f"{DEPLOYMENT}-router-0"
        pod: Any = {"metadata": {"name": name, "labels": template["metadata"]["labels"]}}
        pod["spec"] = template["spec"]
        k8s_cluster.core.create_namespaced_pod(namespace, pod)
        log = process_node.work / "pods" / f"{namespace}_{name}" / "router.log"

        def ready() -> str | None:
            found: Any = k8s_cluster.core.read_namespaced_pod(name, namespace)
            conditions = found.status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return str(found.status.pod_ip)
            return None

        try:
            ip = wait_for("the router pod Ready", ready, timeout=90)
        except AssertionError as error:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"{error}\nrouter log:\n{tail}") from None
        started.append(Routed(f"http://{ip}:8080", f"http://{ip}:8081", token, log))
        return started[-1]

    started: list[Routed] = []
    yield start
    for one in started:  # the pod goes with the namespace
        one.http.close()


def wait_ready(router: Routed) -> None:
    wait_for(
        "the router's /readyz",
        lambda: router.control_get("/readyz").status_code == 200,
        timeout=60,
    )


# --- tests ---------------------------------------------------------------------------------------


def test_in_cluster_weights_from_the_configmap_split_traffic_and_the_control_port_measures_it(
    k8s_cluster: Cluster,
    namespace: str,
    process_node: ProcessNode,
    versions: dict[str, ModelVersion],
    router_pod: Callable[[], Routed],
) -> None:
    create_revision(k8s_cluster, namespace, R1, 1, versions["1"])
    create_revision(k8s_cluster, namespace, R2, 1, versions["2"])
    routed = router_pod()  # Ready: pods and slices listed; the ConfigMap is not there yet

    refused = routed.http.get(f"{routed.url}/v2/models/{MODEL}")
    assert refused.status_code == 503
    assert CONFIGMAP in refused.json()["error"]

    started = time.time()
    set_traffic(k8s_cluster, namespace, Traffic(weights={R1: 80.0, R2: 20.0}))
    answered: Counter[str] = Counter()

    def both_revisions_answer() -> bool:
        version = routed.try_version()
        if version is not None:
            answered[version] += 1
        return set(answered) == {"1", "2"}

    wait_for("both revisions to answer through the router", both_revisions_answer, timeout=120)

    split: Counter[str] = Counter(routed.version() for _ in range(200))
    answered.update(split)
    # 200 draws at 80 %: sd 5.7, so 160 +- 25 is a 4.4-sigma band
    assert 135 <= split["1"] <= 185, f"80/20 weights gave {dict(split)}"
    assert split["1"] + split["2"] == 200

    # the control port: a token, and a finite since
    assert routed.control_get("/control/load", since="0").status_code == 401
    assert routed.control_get("/control/load", "wrong", since="0").status_code == 401
    assert routed.control_get("/control/responses", since="0").status_code == 401
    for bad in ("nan", "inf", "soon", ""):
        response = routed.control_get("/control/load", routed.token, since=bad)
        assert response.status_code == 400, (bad, response.text)
    assert routed.control_get("/control/load", routed.token).status_code == 400
    assert routed.control_get("/control/nothing", routed.token).status_code == 404
    assert routed.http.post(f"{routed.control}/readyz").status_code == 405

    # every request answered is in the router's per-second buckets of its revision
    def measured() -> dict[str, int] | None:
        load = routed.load(started - 1)
        counts = {
            VERSION_OF[rev]: sum(s.requests for s in samples)
            for rev, samples in load.revisions.items()
        }
        return counts if counts == dict(answered) else None

    wait_for(f"the control port to count {dict(answered)}", measured, timeout=10)
    responses = routed.control_get("/control/responses", routed.token, since=repr(started - 1))
    assert responses.status_code == 200
    samples = wire.decode_responses(responses.json()).samples
    assert samples
    assert {s.revision for s in samples} <= {R1, R2}
    assert json.loads(samples[-1].body)["name"] == MODEL

    # a change of the ConfigMap moves the traffic
    set_traffic(k8s_cluster, namespace, Traffic(weights={R1: 0.0, R2: 1.0}))
    streak = [0]

    def moved() -> bool:
        streak[0] = streak[0] + 1 if routed.version() == "2" else 0
        return streak[0] >= 20

    wait_for("traffic to move to revision 2", moved, timeout=30)
    after = Counter(routed.version() for _ in range(50))
    assert after == {"2": 50}
    assert "traffic changed: weights 1-aaaaaa=0, 2-bbbbbb=1" in routed.log()


def test_a_new_replica_gets_traffic_before_its_endpointslice_lists_it_ready(
    k8s_cluster: Cluster,
    namespace: str,
    process_node: ProcessNode,
    versions: dict[str, ModelVersion],
    router: Callable[[], Routed],
) -> None:
    create_revision(k8s_cluster, namespace, R1, 1, versions["1"])
    set_traffic(k8s_cluster, namespace, Traffic(weights={R1: 1.0}))
    routed = router()
    wait_for("revision 1 to answer", lambda: routed.try_version() == "1", timeout=120)

    # one more replica of revision 1 (serving version 3, to be recognised), whose kubelet
    # readiness check comes only after an hour: its pod stays unready, and so does its
    # address in the revision's EndpointSlice
    late = "fraud-late"
    pod: Any = {
        "metadata": {"name": late, "labels": labels(R1)},
        "spec": replica_pod_spec(versions["3"], ready_after=3600),
    }
    k8s_cluster.core.create_namespaced_pod(namespace, pod)
    seen: Counter[str] = Counter()

    def late_answers() -> bool:
        seen[routed.version()] += 1
        return seen["3"] > 0

    wait_for("the new replica to answer through the router", late_answers, timeout=120)

    # read after it answered: neither the slice nor the pod says it is ready
    pod = k8s_cluster.core.read_namespaced_pod(late, namespace)
    ip = pod.status.pod_ip
    assert not any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    assert slice_readiness(k8s_cluster, namespace, R1).get(ip, False) is False
    assert (
        f"replica {late} ({ip}, revision {R1}) added: answered its readiness probe" in routed.log()
    )
    # and it takes its share from now on
    share = Counter(routed.version() for _ in range(60))
    assert share["3"] >= 10, dict(share)


def test_a_replica_whose_readiness_fails_leaves_the_route_until_it_is_ready_again(
    k8s_cluster: Cluster,
    namespace: str,
    process_node: ProcessNode,
    versions: dict[str, ModelVersion],
    router: Callable[[], Routed],
    tmp_path: Path,
) -> None:
    create_revision(k8s_cluster, namespace, R1, 1, versions["1"])
    set_traffic(k8s_cluster, namespace, Traffic(weights={R1: 1.0}))
    routed = router()
    wait_for("revision 1 to answer", lambda: routed.try_version() == "1", timeout=120)

    # a replica of revision 1 (serving version 3) whose kubelet readiness is a file the
    # test makes and takes away, while the server itself always answers its readiness path
    flag = tmp_path / "ready"
    name = "fraud-flaky"
    spec = replica_pod_spec(versions["3"])
    spec["containers"][0]["readinessProbe"] = {
        "exec": {"command": ["test", "-f", str(flag)]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    pod: Any = {"metadata": {"name": name, "labels": labels(R1)}, "spec": spec}
    k8s_cluster.core.create_namespaced_pod(namespace, pod)

    def pod_ready() -> bool:
        found: Any = k8s_cluster.core.read_namespaced_pod(name, namespace)
        return any(c.type == "Ready" and c.status == "True" for c in found.status.conditions or [])

    def answers(version: str, streak: int = 1) -> Callable[[], bool]:
        run = [0]

        def probe() -> bool:
            run[0] = run[0] + 1 if routed.version() == version else 0
            return run[0] >= streak

        return probe

    def never(version: str, streak: int) -> Callable[[], bool]:
        run = [0]

        def probe() -> bool:
            run[0] = run[0] + 1 if routed.version() != version else 0
            return run[0] >= streak

        return probe

    # no file yet: the router's own probe lets it in
    wait_for("the flaky replica to answer through the router", answers("3"), timeout=60)
    assert not pod_ready()
    flag.touch()
    wait_for("the flaky replica Ready", pod_ready, timeout=30)

    flag.unlink()
    wait_for("the kubelet to find the flaky replica unready", lambda: not pod_ready(), timeout=30)
    # the direct probe still answers 200, but a readiness that went false is believed
    wait_for("the router to stop sending it requests", never("3", 40), timeout=15)
    assert Counter(routed.version() for _ in range(40)) == {"1": 40}
    assert f"replica {name} (" in routed.log()
    assert "removed: no longer ready" in routed.log()

    flag.touch()
    wait_for("the flaky replica Ready again", pod_ready, timeout=30)
    wait_for("the router to send it requests again", answers("3"), timeout=15)


@dataclass
class Load:
    """A few clients sending predictions through the router, bounded in count and time."""

    url: str
    clients: int = 4
    #: the longest it runs; the test stops it as soon as it has seen what it waits for
    seconds: float = 60.0
    per_client: int = 4000
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _client(self) -> None:
        deadline = time.monotonic() + self.seconds
        with httpx.Client(timeout=30, trust_env=False) as http:
            for _ in range(self.per_client):
                if self.stop.is_set() or time.monotonic() >= deadline:
                    return
                try:
                    response = http.post(
                        f"{self.url}/v1/models/{MODEL}:predict", json={"instances": ROW}
                    )
                    failure = (
                        None
                        if response.status_code == 200
                        else f"{response.status_code}: {response.text[:200]}"
                    )
                except httpx.HTTPError as error:
                    failure = f"{type(error).__name__}: {error}"
                with self.lock:
                    if failure is None:
                        self.ok += 1
                    else:
                        self.failures.append(failure)

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not self.running()


def served(ip: str) -> int:
    """Inference requests a replica answered, from its own /metrics."""
    text = httpx.get(f"http://{ip}:8080/metrics", timeout=5, trust_env=False).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("pilothouse_model_requests_total{")
        )
    )


def test_deleting_a_replica_under_load_fails_no_request_and_the_router_exits_cleanly(
    k8s_cluster: Cluster,
    namespace: str,
    process_node: ProcessNode,
    versions: dict[str, ModelVersion],
    router: Callable[[], Routed],
) -> None:
    create_revision(k8s_cluster, namespace, R1, 2, versions["1"])
    set_traffic(k8s_cluster, namespace, Traffic(weights={R1: 1.0}))
    routed = router()
    pods = wait_for(
        "2 ready replicas listed ready in their EndpointSlice",
        lambda: (
            found
            if len(found := ready_pods(k8s_cluster, namespace, R1)) == 2
            and all(slice_readiness(k8s_cluster, namespace, R1).get(p.status.pod_ip) for p in found)
            else None
        ),
        timeout=120,
    )
    wait_for("the router to serve", lambda: routed.try_version() == "1", timeout=30)
    victim, survivor = pods
    old = {p.metadata.name for p in pods}

    load = Load(routed.url)
    load.start()
    try:
        wait_for(
            "both replicas to serve the load",
            lambda: served(victim.status.pod_ip) >= 20 and served(survivor.status.pod_ip) >= 20,
            timeout=30,
        )
        k8s_cluster.core.delete_namespaced_pod(victim.metadata.name, namespace)

        def gone() -> bool:
            try:
                k8s_cluster.core.read_namespaced_pod(victim.metadata.name, namespace)
            except ApiException as error:
                if error.status == 404:
                    return True
                raise
            return False

        wait_for(f"the deleted pod {victim.metadata.name} gone", gone, timeout=30)
        replacement = wait_for(
            "the replacement replica Ready",
            lambda: next(
                (p for p in ready_pods(k8s_cluster, namespace, R1) if p.metadata.name not in old),
                None,
            ),
            timeout=60,
        )
        wait_for(
            "the router to send the replacement its share",
            lambda: served(replacement.status.pod_ip) >= 20,
            timeout=30,
        )
        assert load.running(), "the load ended before the replacement took its share"
    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} of {load.ok + len(load.failures)} failed"
    log = routed.log()
    assert f"replica {victim.metadata.name} ({victim.status.pod_ip}, revision {R1}) removed" in log
    assert f"replica {replacement.metadata.name} ({replacement.status.pod_ip}," in log

    # SIGTERM: the router stops accepting, finishes and exits 0
    assert routed.process is not None
    os.kill(routed.process.pid, signal.SIGTERM)
    assert routed.process.popen.wait(timeout=20) == 0, routed.process.tail()
    assert "stopped" in routed.log()


def test_in_cluster_scaled_to_zero_a_request_waits_wakes_the_operator_and_is_answered(
    k8s_cluster: Cluster,
    namespace: str,
    process_node: ProcessNode,
    versions: dict[str, ModelVersion],
    router_pod: Callable[[], Routed],
) -> None:
    create_revision(k8s_cluster, namespace, R1, 0, versions["1"])
    set_traffic(
        k8s_cluster,
        namespace,
        Traffic(weights={R1: 1.0}, hold_when_empty=True, queue_timeout=90.0),
    )
    routed = router_pod()  # Ready: it listed its ConfigMap, pods and slices with its token
    assert routed.control_get("/control/load", since="0").status_code == 401

    result: dict[str, Any] = {}

    def send() -> None:
        with httpx.Client(timeout=120, trust_env=False) as http:
            try:
                result["response"] = http.post(
                    f"{routed.url}/v1/models/{MODEL}:predict", json={"instances": ROW}
                )
            except httpx.HTTPError as error:
                result["error"] = error

    sent = time.time()
    waiting = threading.Thread(target=send, name="held-request", daemon=True)
    waiting.start()

    def woken() -> float | None:
        config: Any = k8s_cluster.core.read_namespaced_config_map(CONFIGMAP, namespace)
        value = (config.metadata.annotations or {}).get("pilothouse.dev/wake")
        return float(value) if value else None

    # the router's own ServiceAccount may patch its ConfigMap
    at = wait_for("the wake annotation on the router's ConfigMap", woken, timeout=30)
    assert math.isfinite(at)
    assert sent - 1 <= at <= time.time() + 1
    assert waiting.is_alive(), f"the request did not wait: {result}"
    assert wait_for("the control port to show it queued", lambda: routed.load(sent).queued == 1)

    # the operator's answer: a replica
    k8s_cluster.apps.patch_namespaced_deployment_scale(
        f"{DEPLOYMENT}-{R1}", namespace, {"spec": {"replicas": 1}}
    )
    waiting.join(timeout=100)
    assert not waiting.is_alive(), "the held request was never answered"
    assert "response" in result, result
    assert result["response"].status_code == 200, result["response"].text
    assert len(result["response"].json()["predictions"]) == 1
    assert "no ready replica and a request waits: woke the operator" in routed.log()
    wait_for(
        "the held request in the control port's buckets",
        lambda: sum(s.requests for s in routed.load(sent - 1).revisions.get(R1, [])) == 1,
        timeout=10,
    )


def test_the_router_refuses_to_start_without_a_control_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PILOTHOUSE_ROUTER_TOKEN"}
    argv = [sys.executable, "-m", "pilothouse", "router", "--deployment", DEPLOYMENT]
    argv += ["--namespace", "default", "--host", "127.0.0.1", "--port", "0"]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "PILOTHOUSE_ROUTER_TOKEN" in refused.stderr
    assert "--insecure-control" in refused.stderr
