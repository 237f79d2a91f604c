"""The operator on a real control plane: ModelDeployments applied with kubectl run as
Deployments of replica pods behind router pods, on process nodes (pods are local
processes with their own IPs), with models fetched from an S3 registry (moto's server).

Every test runs in its own namespace with its own operator (out of cluster, with
``--kubeconfig``, unless it says otherwise) on this module's three process nodes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from tests.integration.rollout_models import LoadResult, open_loop
from tests.k8s.conftest import Cluster
from tests.k8s.operator_env import (
    EXAMPLE,
    MODEL,
    PILOTHOUSE,
    POOL_LABEL,
    Node,
    Operator,
    S3Registry,
    apply_docs,
    condition,
    extra_pod_network,
    install_namespace,
    is_ready,
    md,
    predict,
    process_nodes,
    replica_pods,
    router_ips,
    s3_registry,
    start_operator,
    until_answered,
)
from tests.k8s.testenv import wait_for

pytestmark = pytest.mark.k8s

POOL = "operator"
#: apply -> Ready: pods start as Python processes that import scikit-learn and fetch
#: their model from S3 (a few seconds each on this 2-core machine)
READY_TIMEOUT = 180


@pytest.fixture(scope="module")
def crds(k8s_cluster: Cluster) -> None:
    from pilothouse.spec.crd import crds as make

    apply_docs(k8s_cluster, make())
    for crd in make():
        k8s_cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Registry]:
    with s3_registry(tmp_path_factory.mktemp("s3")) as reg:
        yield reg


@pytest.fixture(scope="module")
def nodes(k8s_cluster: Cluster) -> Iterator[list[Node]]:
    with extra_pod_network() as cidr, process_nodes(k8s_cluster, cidr, 3, POOL) as made:
        yield made


@pytest.fixture
def env(
    k8s_cluster: Cluster, namespace: str, crds: None, registry: S3Registry, nodes: list[Node]
) -> str:
    install_namespace(k8s_cluster, namespace, registry)
    return namespace


@pytest.fixture
def operator(k8s_cluster: Cluster, env: str, registry: S3Registry) -> Iterator[Operator]:
    op = start_operator(k8s_cluster, env, registry, POOL)
    yield op
    op.process.stop()


def example(model: str | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc = copy.deepcopy(doc)
    if model is not None:
        doc["spec"]["model"] = model
    doc["spec"].update(spec)
    return doc


def judged_on_the_model(doc: dict[str, Any]) -> dict[str, Any]:
    """The example's rollout without its absolute p99 check: on this busy 2-core machine a
    good version's p99 crosses 0.25 s now and then and is rolled back (issue 15 describes
    it). Tests about promotion and hand-over judge errors and the model's own answers."""
    checks = doc["spec"]["rollout"]["analysis"]["checks"]
    doc["spec"]["rollout"]["analysis"]["checks"] = [
        c for c in checks if c["metric"] != "latencyP99"
    ]
    assert len(doc["spec"]["rollout"]["analysis"]["checks"]) == len(checks) - 1
    return doc


def apply_md(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    path = cluster.plane.work / f"md-{namespace}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))


def wait_ready(
    cluster: Cluster, namespace: str, name: str, op: Operator | None = None
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if op is not None:
            assert op.alive(), f"the operator exited:\n{op.log()[-4000:]}"
        obj = md(cluster, namespace, name)
        return obj if is_ready(obj) else None

    try:
        return wait_for(f"ModelDeployment {name} Ready", ready, READY_TIMEOUT, every=0.5)
    except AssertionError:
        obj = md(cluster, namespace, name)
        raise AssertionError(
            f"{name} not Ready after {READY_TIMEOUT}s; status: {json.dumps((obj or {}).get('status'), indent=1)[:3000]}"
            + ("" if op is None else f"\noperator log tail:\n{op.log()[-3000:]}")
        ) from None


def ready_replicas(cluster: Cluster, namespace: str, name: str) -> list[client.V1Pod]:
    return [
        p
        for p in replica_pods(cluster, namespace, name)
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def children(cluster: Cluster, namespace: str, name: str) -> list[str]:
    selector = f"pilothouse.dev/deployment={name}"
    found = []
    for kind, items in (
        (
            "deployment",
            cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        ),
        ("service", cluster.core.list_namespaced_service(namespace, label_selector=selector).items),
        (
            "configmap",
            cluster.core.list_namespaced_config_map(namespace, label_selector=selector).items,
        ),
        (
            "pdb",
            client.PolicyV1Api(cluster.api)
            .list_namespaced_pod_disruption_budget(namespace, label_selector=selector)
            .items,
        ),
        ("pod", cluster.core.list_namespaced_pod(namespace, label_selector=selector).items),
    ):
        found += [f"{kind}/{i.metadata.name}" for i in items]
    return found


def events_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """events.k8s.io Events about ``name`` (read as JSON: the typed client refuses the
    core Events of Kubernetes' own controllers, whose eventTime is null)."""
    out = json.loads(
        cluster.kubectl("get", "events.v1.events.k8s.io", "-n", namespace, "-o", "json")
    )
    return [e for e in out["items"] if (e.get("regarding") or {}).get("name") == name]


def test_the_example_applied_with_kubectl_serves_through_a_router_pod_and_deleting_it_removes_every_child(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    started = time.monotonic()
    k8s_cluster.kubectl("apply", "-n", env, "-f", str(EXAMPLE))
    obj = wait_ready(k8s_cluster, env, MODEL, operator)
    took = time.monotonic() - started
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["url"] == f"http://{MODEL}.{env}.svc"
    revision = status["revision"]
    dep = k8s_cluster.apps.read_namespaced_deployment(f"{MODEL}-{revision}", env)
    assert dep.spec.replicas == 2
    assert dep.status.ready_replicas == 2
    assert dep.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    pod = dep.spec.template.spec
    tolerations = {(t.key, t.effect): t.toleration_seconds for t in pod.tolerations}
    assert tolerations[("node.kubernetes.io/unreachable", "NoExecute")] == 10
    assert pod.containers[0].lifecycle.pre_stop is not None
    assert pod.containers[0].resources.requests == {"cpu": "500m", "memory": str(512 * 2**20)}
    router = k8s_cluster.apps.read_namespaced_deployment(f"{MODEL}-router", env)
    assert router.spec.replicas == 2
    # replicas spread over the pool's nodes
    nodes = {p.spec.node_name for p in ready_replicas(k8s_cluster, env, MODEL)}
    assert len(nodes) == 2, nodes

    rows = registry.rows
    assert rows is not None
    ips = wait_for(
        "both router pods ready",
        lambda: (ips := router_ips(k8s_cluster, env, MODEL)) and len(ips) == 2 and ips,
        60,
    )
    for i, ip in enumerate(ips):
        answer = predict(ip, rows, i)
        assert answer.status_code == 200, answer.text
        score = answer.json()["outputs"][0]["data"][0]
        assert abs(score - float(rows.v1_scores[i])) < 1e-6

    table = k8s_cluster.kubectl("get", "md", "-n", env)
    assert MODEL in table, table
    assert "True" in table, table
    assert any(e.get("reason") for e in events_of(k8s_cluster, env, MODEL)), (
        "no Events about the deployment"
    )
    print(f"kubectl apply -> Ready: {took:.1f}s")

    k8s_cluster.kubectl("delete", "md", MODEL, "-n", env, "--wait=true", timeout=120)
    wait_for(
        "every child of the deployment gone", lambda: not children(k8s_cluster, env, MODEL), 120
    )


def test_a_replica_pod_deleted_under_constant_load_fails_no_request(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))
    wait_ready(k8s_cluster, env, MODEL, operator)
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    victim = ready_replicas(k8s_cluster, env, MODEL)[0].metadata.name
    rows = registry.rows
    assert rows is not None

    async def run() -> tuple[Any, float]:
        stop = asyncio.Event()
        live: list[LoadResult] = []
        load = asyncio.create_task(
            open_loop(
                f"http://{ip}:8080",
                rows,
                rate=40,
                seconds=20,
                model=MODEL,
                stop=stop,
                on_start=live.append,
            )
        )
        await until_answered(live, 80)  # traffic flows before the kill
        await asyncio.to_thread(k8s_cluster.core.delete_namespaced_pod, victim, env)
        killed = time.monotonic()

        def back() -> bool:
            names = {p.metadata.name for p in ready_replicas(k8s_cluster, env, MODEL)}
            return len(names) == 2 and victim not in names

        await asyncio.to_thread(wait_for, "two ready replicas again", back, READY_TIMEOUT, 0.2)
        return await load, time.monotonic() - killed

    result, back = asyncio.run(run())
    failed = [a for a in result.answers if a.status != 200]
    assert result.answers
    assert not failed, f"{len(failed)} failed of {len(result.answers)}: {failed[:5]}"
    print(f"{len(result.answers)} requests, 0 failed; full strength {back:.1f}s after the kill")


def test_a_node_that_stops_answering_has_its_replicas_run_elsewhere(
    k8s_cluster: Cluster, env: str, operator: Operator, nodes: list[Node]
) -> None:
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))
    wait_ready(k8s_cluster, env, MODEL, operator)
    pods = ready_replicas(k8s_cluster, env, MODEL)
    lost = next(n for n in nodes if n.name == pods[0].spec.node_name)
    started = time.monotonic()
    lost.pause()
    try:
        wait_for(
            "two ready replicas on the nodes that still answer",
            lambda: (
                len(
                    [
                        p
                        for p in ready_replicas(k8s_cluster, env, MODEL)
                        if p.spec.node_name != lost.name
                    ]
                )
                == 2
            ),
            120,
        )
        print(f"node NotReady -> replicas ready elsewhere: {time.monotonic() - started:.1f}s")
    finally:
        lost.resume()
    wait_ready(k8s_cluster, env, MODEL, operator)


def test_a_burst_scales_the_revision_up(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    doc = example(
        f"{MODEL}:1",
        replicas={"min": 1, "max": 4},
        autoscaling={"metric": "rps", "target": 8, "stableWindow": "12s", "panicWindow": "3s"},
    )
    apply_md(k8s_cluster, env, doc)
    wait_ready(k8s_cluster, env, MODEL, operator)
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    rows = registry.rows
    assert rows is not None
    revision = md(k8s_cluster, env, MODEL)["status"]["revision"]  # type: ignore[index]

    def desired() -> int:
        return int(
            k8s_cluster.apps.read_namespaced_deployment(f"{MODEL}-{revision}", env).spec.replicas
        )

    assert desired() == 1

    async def burst() -> tuple[float | None, Any]:
        stop = asyncio.Event()
        began = time.monotonic()
        load = asyncio.create_task(
            open_loop(f"http://{ip}:8080", rows, rate=24, seconds=30, model=MODEL, stop=stop)
        )
        reached: float | None = None
        while not load.done() and time.monotonic() - began < 30:
            if await asyncio.to_thread(desired) >= 3:
                reached = time.monotonic() - began
                stop.set()
                break
            await asyncio.sleep(0.25)  # polling the Deployment while the load runs
        return reached, await load

    reached, result = asyncio.run(burst())
    assert reached is not None, f"desired replicas stayed at {desired()} under 3x load"
    failed = [a for a in result.answers if a.status != 200]
    assert not failed, failed[:5]
    print(f"burst 1x -> 3x: desired >= 3 after {reached:.1f}s")


def test_a_request_no_node_can_hold_and_a_missing_model_version_become_conditions_and_events(
    k8s_cluster: Cluster, env: str, operator: Operator
) -> None:
    huge = example(f"{MODEL}:1", resources={"cpu": "64", "memory": "512Mi"})
    huge["metadata"]["name"] = "too-big"
    apply_md(k8s_cluster, env, huge)
    missing = example(f"{MODEL}:99")
    missing["metadata"]["name"] = "no-such-version"
    apply_md(k8s_cluster, env, missing)

    def said(name: str, words: str) -> str | None:
        obj = md(k8s_cluster, env, name)
        ready = condition(obj, "Ready")
        text = json.dumps((obj or {}).get("status", {}))
        return text if ready and ready["status"] == "False" and words in text else None

    wait_for("too-big says no node fits", lambda: said("too-big", "Insufficient cpu"), 90)
    wait_for(
        "no-such-version says the version is missing", lambda: said("no-such-version", "99"), 60
    )
    assert events_of(k8s_cluster, env, "no-such-version"), "no Event for the missing version"
    assert not replica_pods(k8s_cluster, env, "no-such-version")


def rollout_of(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(((md(cluster, namespace, MODEL) or {}).get("status") or {}).get("rollout") or {})


def set_model(cluster: Cluster, namespace: str, ref: str) -> None:
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        "pilothouse.dev", "v1alpha1", namespace, "modeldeployments", MODEL, {"spec": {"model": ref}}
    )


def promoted(cluster: Cluster, namespace: str, ref: str) -> dict[str, Any] | None:
    status = (md(cluster, namespace, MODEL) or {}).get("status") or {}
    rollout = status.get("rollout") or {}
    done = status.get("model") == ref and rollout.get("phase") == "Healthy"
    return status if done else None


def rolled_back(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    status = (md(cluster, namespace, MODEL) or {}).get("status") or {}
    return status if (status.get("rollout") or {}).get("phase") == "Degraded" else None


def test_under_load_a_good_v2_is_promoted_and_a_silently_wrong_v3_is_rolled_back(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    apply_md(k8s_cluster, env, judged_on_the_model(example(f"{MODEL}:1")))
    wait_ready(k8s_cluster, env, MODEL, operator)
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    rows = registry.rows
    assert rows is not None
    v2, v3 = registry.publish("v2"), registry.publish("v3")
    timings: dict[str, float] = {}

    async def run() -> Any:
        stop = asyncio.Event()
        live: list[LoadResult] = []
        load = asyncio.create_task(
            open_loop(
                f"http://{ip}:8080",
                rows,
                rate=30,
                seconds=240,
                model=MODEL,
                stop=stop,
                on_start=live.append,
            )
        )
        try:
            await until_answered(live, 40)  # steady traffic before the change
            started = time.monotonic()
            await asyncio.to_thread(set_model, k8s_cluster, env, f"{MODEL}:{v2}")
            await asyncio.to_thread(
                wait_for,
                "v2 promoted",
                lambda: promoted(k8s_cluster, env, f"{MODEL}:{v2}"),
                200,
                0.5,
            )
            timings["v2 promoted"] = time.monotonic() - started
            started = time.monotonic()
            await asyncio.to_thread(set_model, k8s_cluster, env, f"{MODEL}:{v3}")
            await asyncio.to_thread(
                wait_for, "v3 rolled back", lambda: rolled_back(k8s_cluster, env), 200, 0.5
            )
            timings["v3 rolled back"] = time.monotonic() - started
        finally:
            stop.set()
        return await load

    result = asyncio.run(run())
    status = md(k8s_cluster, env, MODEL)["status"]  # type: ignore[index]
    assert status["model"] == f"{MODEL}:{v2}", status["model"]
    assert status["rollout"]["abortedRevision"], status["rollout"]
    assert any(e.get("reason") == "RolledBack" for e in events_of(k8s_cluster, env, MODEL))
    failed = [a for a in result.answers if a.status != 200]
    assert result.answers
    assert not failed, f"{len(failed)} of {len(result.answers)} failed: {failed[:5]}"
    # the wrong revision is gone: every replica serves v2
    wait_for(
        "only v2's replicas left",
        lambda: (
            {
                p.metadata.labels["pilothouse.dev/revision"].split("-")[0]
                for p in replica_pods(k8s_cluster, env, MODEL)
            }
            == {str(v2)}
        ),
        120,
    )
    print(f"rollout under load: {timings}, {len(result.answers)} requests, 0 failed")


def identity(op: Operator) -> str:
    return f"{socket.gethostname()}-{op.process.pid}"


def test_the_leader_killed_mid_rollout_hands_over_and_the_rollout_finishes(
    k8s_cluster: Cluster, env: str, registry: S3Registry
) -> None:
    first = start_operator(k8s_cluster, env, registry, POOL, "a")
    second = start_operator(k8s_cluster, env, registry, POOL, "b")
    try:
        apply_md(k8s_cluster, env, judged_on_the_model(example(f"{MODEL}:1")))
        wait_ready(k8s_cluster, env, MODEL)
        leases = client.CoordinationV1Api(k8s_cluster.api)

        def holder() -> str:
            return str(
                leases.read_namespaced_lease("pilothouse-operator", env).spec.holder_identity or ""
            )

        leader_name = wait_for("a lease holder", holder, 30)
        # out of cluster an operator's identity is HOST-PID
        leading = [op for op in (first, second) if leader_name == identity(op)]
        assert len(leading) == 1, (leader_name, identity(first), identity(second))
        leader = leading[0]
        follower = second if leader is first else first
        v2 = registry.publish("v2")
        ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
        rows = registry.rows
        assert rows is not None

        async def run() -> tuple[float, Any]:
            stop = asyncio.Event()
            # the canary's analysis judges live and mirrored traffic: without any, no step passes
            load = asyncio.create_task(
                open_loop(f"http://{ip}:8080", rows, rate=25, seconds=240, model=MODEL, stop=stop)
            )
            try:
                await asyncio.to_thread(set_model, k8s_cluster, env, f"{MODEL}:{v2}")
                await asyncio.to_thread(
                    wait_for,
                    "the rollout under way",
                    lambda: rollout_of(k8s_cluster, env).get("phase") == "Progressing",
                    120,
                    0.2,
                )
                os.kill(leader.process.pid, signal.SIGKILL)
                killed = time.monotonic()
                await asyncio.to_thread(
                    wait_for,
                    "the follower holds the lease",
                    lambda: holder() == identity(follower),
                    30,
                )
                took = time.monotonic() - killed
                await asyncio.to_thread(
                    wait_for,
                    "v2 promoted by the new leader",
                    lambda: promoted(k8s_cluster, env, f"{MODEL}:{v2}"),
                    200,
                    0.5,
                )
            finally:
                stop.set()
            return took, await load

        took, result = asyncio.run(run())
        failed = [a for a in result.answers if a.status != 200]
        assert result.answers
        assert not failed, f"{len(failed)} of {len(result.answers)} failed: {failed[:5]}"
        assert follower.alive()
        print(f"lease taken over {took:.1f}s after the leader was killed")
    finally:
        first.process.stop()
        second.process.stop()


def test_the_operator_runs_in_cluster_with_its_service_account_and_least_privilege_rbac(
    k8s_cluster: Cluster, env: str, registry: S3Registry, nodes: list[Node]
) -> None:
    """The install manifests' operator Deployment on the process nodes: it talks to the API
    server with its bound ServiceAccount token, under the Role it is given (a verb the Role
    lacks fails the rollout below, and shows as 403 in its log)."""
    from pilothouse.runtime.kube.manifests import install_manifests

    docs = install_manifests(
        env,
        image="pilothouse:test",
        registry=registry.uri,
        tolerations=[
            {"key": "pilothouse.dev/process-node", "operator": "Exists", "effect": "NoSchedule"}
        ],
        node_selector={POOL_LABEL: POOL},
    )
    apply_docs(
        k8s_cluster, [d for d in docs if d["kind"] not in ("CustomResourceDefinition", "Namespace")]
    )
    k8s_cluster.kubectl(
        "rollout",
        "status",
        "deployment/pilothouse-operator",
        "-n",
        env,
        "--timeout=120s",
        timeout=150,
    )
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))
    wait_ready(k8s_cluster, env, MODEL)
    holder = (
        client.CoordinationV1Api(k8s_cluster.api)
        .read_namespaced_lease("pilothouse-operator", env)
        .spec.holder_identity
    )
    operator_pods = {
        p.metadata.name: p.spec.node_name
        for p in k8s_cluster.core.list_namespaced_pod(
            env, label_selector="app.kubernetes.io/component=operator"
        ).items
    }
    assert holder in operator_pods, (holder, operator_pods)
    rows = registry.rows
    assert rows is not None
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    assert predict(ip, rows).status_code == 200
    by_name = {n.name: n for n in nodes}
    logs = "".join(
        path.read_text(errors="replace")
        for name, node in operator_pods.items()
        for path in (by_name[node].work / "pods" / f"{env}_{name}").glob("*.log")
    )
    assert "leads in namespace" in logs, logs[-2000:]
    assert " 403" not in logs, logs[-3000:]
    assert "Forbidden" not in logs, logs[-3000:]


def test_scaled_to_zero_a_request_is_held_wakes_the_operator_and_is_answered(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    doc = example(
        f"{MODEL}:1",
        replicas={"min": 0, "max": 2},
        autoscaling={
            "target": 5,
            "stableWindow": "6s",
            "panicWindow": "2s",
            "scaleToZeroGrace": "1s",
        },
        traffic={"queueTimeout": "60s"},
    )
    doc["spec"].pop("rollout", None)
    apply_md(k8s_cluster, env, doc)

    def at_zero() -> bool:
        status = (md(k8s_cluster, env, MODEL) or {}).get("status") or {}
        return (
            bool(status.get("url"))
            and status.get("desiredReplicas") == 0
            and not replica_pods(k8s_cluster, env, MODEL)
        )

    wait_for("scaled to zero, no replica pod left", at_zero, READY_TIMEOUT, 0.5)
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    rows = registry.rows
    assert rows is not None
    started = time.monotonic()
    answer = httpx.post(
        f"http://{ip}:8080/v2/models/{MODEL}/infer",
        content=rows.bodies[0],
        headers={"content-type": "application/json"},
        timeout=90,
    )
    held = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert abs(answer.json()["outputs"][0]["data"][0] - float(rows.v1_scores[0])) < 1e-6
    config = k8s_cluster.core.read_namespaced_config_map(f"{MODEL}-router", env)
    assert "pilothouse.dev/wake" in (config.metadata.annotations or {}), (
        "the router never woke the operator"
    )
    assert replica_pods(k8s_cluster, env, MODEL), "answered without a replica?"
    print(f"scale from zero: the held request was answered after {held:.1f}s")


def test_a_missing_model_version_on_a_running_deployment_disturbs_nothing_that_runs(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))
    serving = wait_ready(k8s_cluster, env, MODEL, operator)["status"]["revision"]
    before = {p.metadata.name for p in ready_replicas(k8s_cluster, env, MODEL)}
    set_model(k8s_cluster, env, f"{MODEL}:77")

    def said() -> dict[str, Any] | None:
        obj = md(k8s_cluster, env, MODEL)
        text = json.dumps((obj or {}).get("status", {}))
        return (
            obj
            if "77" in text
            and (obj or {})["status"].get("observedGeneration")
            == (obj or {})["metadata"]["generation"]
            else None
        )

    obj = wait_for("the missing version reported", said, 60, 0.5)
    assert obj is not None
    assert any("77" in (e.get("note") or "") for e in events_of(k8s_cluster, env, MODEL)), (
        "no Event names the missing version"
    )
    rows = registry.rows
    assert rows is not None
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    for i in range(10):
        assert predict(ip, rows, i).status_code == 200
    assert {p.metadata.name for p in ready_replicas(k8s_cluster, env, MODEL)} == before
    assert obj["status"]["model"] == f"{MODEL}:1"
    assert {
        p.metadata.labels["pilothouse.dev/revision"] for p in replica_pods(k8s_cluster, env, MODEL)
    } == {serving}


def test_the_cli_reads_steers_and_predicts_against_the_cluster(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    """`pilothouse --kubeconfig ... -n NS` get/describe/predict/rollout status with the operator
    running: predictions go through the API server's service proxy to a router pod."""
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))
    wait_ready(k8s_cluster, env, MODEL, operator)
    wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PILOTHOUSE, "--kubeconfig", str(k8s_cluster.kubeconfig), "-n", env, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    got = cli("get", "md")
    assert got.returncode == 0, got.stderr
    assert MODEL in got.stdout
    described = cli("describe", "md", MODEL)
    assert described.returncode == 0, described.stderr
    assert "Ready" in described.stdout, described.stdout
    assert "router" in described.stdout, described.stdout
    status = cli("rollout", "status", MODEL)
    assert status.returncode == 0, status.stderr
    rows = registry.rows
    assert rows is not None
    body = rows.bodies[0].decode()
    answer = cli("predict", MODEL, "--data", body)
    assert answer.returncode == 0, answer.stderr
    assert f"{float(rows.v1_scores[0]):.6f}"[:6] in answer.stdout, answer.stdout


def test_a_paused_canary_is_promoted_and_an_aborted_one_rolled_back_from_the_cli(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    """`pilothouse rollout promote|abort` against the cluster: annotations the operator acts on."""
    doc = example(f"{MODEL}:1")
    doc["spec"]["rollout"] = {
        "strategy": "canary",
        "canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]},
    }
    apply_md(k8s_cluster, env, doc)
    wait_ready(k8s_cluster, env, MODEL, operator)
    v2 = registry.publish("v2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PILOTHOUSE, "--kubeconfig", str(k8s_cluster.kubeconfig), "-n", env, "rollout", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def paused() -> bool:
        rollout = rollout_of(k8s_cluster, env)
        return rollout.get("phase") == "Paused" and rollout.get("weight") == 50

    set_model(k8s_cluster, env, f"{MODEL}:{v2}")
    wait_for("the canary paused at 50 %", paused, 120, 0.5)
    promoted_ = cli("promote", MODEL)
    assert promoted_.returncode == 0, promoted_.stderr
    wait_for("v2 promoted", lambda: promoted(k8s_cluster, env, f"{MODEL}:{v2}"), 120, 0.5)

    v3 = registry.publish("v3")
    set_model(k8s_cluster, env, f"{MODEL}:{v3}")
    wait_for("the next canary paused at 50 %", paused, 120, 0.5)
    aborted = cli("abort", MODEL)
    assert aborted.returncode == 0, aborted.stderr
    status = wait_for("v3 rolled back", lambda: rolled_back(k8s_cluster, env), 120, 0.5)
    assert status["model"] == f"{MODEL}:{v2}"


def test_children_are_put_back_and_a_name_someone_else_holds_is_never_taken_over(
    k8s_cluster: Cluster, env: str, operator: Operator, registry: S3Registry
) -> None:
    # a Service of the user's own, with the name the deployment's Service would have
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": MODEL, "namespace": env},
        "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80, "targetPort": 9000}]},
    }
    apply_docs(k8s_cluster, [theirs])
    apply_md(k8s_cluster, env, example(f"{MODEL}:1"))

    def refused() -> bool:
        return any(
            "already exists and is not managed" in (e.get("note") or "")
            for e in events_of(k8s_cluster, env, MODEL)
        )

    wait_for("an Event saying the Service name is taken", refused, 120, 0.5)
    service = k8s_cluster.core.read_namespaced_service(MODEL, env)
    assert service.spec.selector == {"app": "mine"}
    assert not service.metadata.owner_references
    # the name is free again: the deployment gets its Service and serves
    k8s_cluster.core.delete_namespaced_service(MODEL, env)
    wait_ready(k8s_cluster, env, MODEL, operator)
    # a child deleted by hand is put back (level-based: not only on a change of the spec)
    k8s_cluster.core.delete_namespaced_config_map(f"{MODEL}-router", env)
    wait_for(
        "the router ConfigMap put back",
        lambda: any(
            c.metadata.name == f"{MODEL}-router"
            for c in k8s_cluster.core.list_namespaced_config_map(env).items
        ),
        60,
        0.5,
    )
    rows = registry.rows
    assert rows is not None
    ip = wait_for("a router pod", lambda: router_ips(k8s_cluster, env, MODEL), 60)[0]
    wait_for(
        "a prediction through the router", lambda: predict(ip, rows).status_code == 200, 30, 0.5
    )
