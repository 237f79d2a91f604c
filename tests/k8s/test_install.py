"""Installing pilothouse on a real API server: ``pilothouse kube manifests`` applies with
strict validation, ``pilothouse kube install`` applies the same objects idempotently and waits
for the operator, and the operator's and routers' Roles allow exactly what they do."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from pilothouse.runtime.kube.manifests import FIELD_MANAGER, OPERATOR, ROUTER
from pilothouse.spec.crd import crds
from tests.k8s.conftest import Cluster
from tests.k8s.testenv import wait_for

pytestmark = pytest.mark.k8s
REGISTRY = "s3://models/prod"
#: proxies that answer nobody: the CLI must not use them for a local API server
DEAD_PROXIES = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def pilothouse(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilothouse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **DEAD_PROXIES},
    )


@pytest.fixture(scope="module", autouse=True)
def _no_crd_terminating(k8s_cluster: Cluster) -> None:
    """Another module may have just deleted the CRDs: an apply now would update an object
    that is going away. Wait until none of them is terminating."""
    extensions = client.ApiextensionsV1Api(k8s_cluster.api)
    names = {c["metadata"]["name"] for c in crds()}

    def settled() -> bool:
        found = extensions.list_custom_resource_definition().items
        return not any(c.metadata.deletion_timestamp for c in found if c.metadata.name in names)

    wait_for("no pilothouse CRD terminating", settled, timeout=60)


def install(cluster: Cluster, namespace: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return pilothouse(
        "kube",
        "install",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--registry",
        REGISTRY,
        *extra,
    )


def test_the_printed_manifests_apply_with_strict_validation(
    k8s_cluster: Cluster, namespace: str
) -> None:
    printed = pilothouse(
        "kube",
        "manifests",
        "--namespace",
        namespace,
        "--registry",
        REGISTRY,
        "--toleration",
        "dedicated=ml:NoSchedule",
        "--node-selector",
        "pool=system",
    )
    assert printed.returncode == 0, printed.stderr
    plane = k8s_cluster.plane
    applied = subprocess.run(
        [
            str(plane.bin / "kubectl"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "apply",
            "--server-side",
            "--validate=strict",
            "-f",
            "-",
        ],
        input=printed.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    assert not applied.stderr.strip(), f"kubectl warned: {applied.stderr}"
    objects = list(yaml.safe_load_all(printed.stdout))
    assert len(applied.stdout.splitlines()) == len(objects), applied.stdout
    deployment = k8s_cluster.apps.read_namespaced_deployment(OPERATOR, namespace)
    pod = deployment.spec.template.spec
    assert pod.node_selector == {"pool": "system"}
    assert [(t.key, t.value, t.effect) for t in pod.tolerations] == [
        ("dedicated", "ml", "NoSchedule")
    ]
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    rbac = client.RbacAuthorizationV1Api(k8s_cluster.api)
    assert {r.metadata.name for r in rbac.list_namespaced_role(namespace).items} == {
        OPERATOR,
        ROUTER,
    }


def test_install_applies_the_same_objects_and_again_changes_nothing(
    k8s_cluster: Cluster, namespace: str
) -> None:
    first = install(k8s_cluster, namespace, "--no-wait")
    assert first.returncode == 0, first.stderr
    applied = [line for line in first.stderr.splitlines() if line.startswith("applied ")]
    assert f"applied Deployment {namespace}/{OPERATOR}" in applied
    assert f"applied Role {namespace}/{OPERATOR}" in applied
    # the Namespace, the PriorityClass, 2 x (SA, Role, RoleBinding), the Deployment, its PDB
    assert len(applied) == len(crds()) + 10
    rbac = client.RbacAuthorizationV1Api(k8s_cluster.api)
    policy = client.PolicyV1Api(k8s_cluster.api)

    def versions() -> dict[str, Any]:
        deployment = k8s_cluster.apps.read_namespaced_deployment(OPERATOR, namespace)
        return {
            "role": rbac.read_namespaced_role(OPERATOR, namespace).metadata.resource_version,
            "router-role": rbac.read_namespaced_role(ROUTER, namespace).metadata.resource_version,
            "sa": k8s_cluster.core.read_namespaced_service_account(
                OPERATOR, namespace
            ).metadata.resource_version,
            "pdb": policy.read_namespaced_pod_disruption_budget(
                OPERATOR, namespace
            ).metadata.resource_version,
            "deployment-generation": deployment.metadata.generation,
        }

    before = versions()
    deployment = k8s_cluster.apps.read_namespaced_deployment(OPERATOR, namespace)
    managers = {m.manager for m in deployment.metadata.managed_fields}
    assert FIELD_MANAGER in managers
    assert deployment.spec.replicas == 2
    assert deployment.spec.template.spec.service_account_name == OPERATOR

    second = install(k8s_cluster, namespace, "--no-wait")
    assert second.returncode == 0, second.stderr
    # an apply of the same intent is a no-op: nothing was written again
    assert versions() == before

    # a changed option is an upgrade of the same objects
    third = install(k8s_cluster, namespace, "--no-wait", "--replicas", "3")
    assert third.returncode == 0, third.stderr
    assert k8s_cluster.apps.read_namespaced_deployment(OPERATOR, namespace).spec.replicas == 3


def test_install_says_which_object_failed_and_why(k8s_cluster: Cluster, namespace: str) -> None:
    # the ServiceAccount's automount may change, but a RoleBinding's roleRef may not: make
    # one that points elsewhere and the install must name it
    rbac = client.RbacAuthorizationV1Api(k8s_cluster.api)
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": OPERATOR},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "other"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": namespace}],
        },
    )
    failed = install(k8s_cluster, namespace, "--no-wait")
    assert failed.returncode == 1
    assert f"applying RoleBinding {namespace}/{OPERATOR}: 422" in failed.stderr
    assert "roleRef" in failed.stderr
    unreachable = pilothouse(
        "kube", "install", "--kubeconfig", "/nonexistent", "--registry", REGISTRY, "--no-wait"
    )
    assert unreachable.returncode == 1
    assert "kubeconfig /nonexistent" in unreachable.stderr


def test_install_waits_for_the_crds_and_the_operator_spread_over_nodes(
    k8s_cluster: Cluster, namespace: str, kwok_node: Callable[..., list[str]]
) -> None:
    """On two kwok nodes (their pods turn Running and Ready) the operator's two replicas
    become available, one per node, and the install returns once they are."""
    pool = uuid.uuid4().hex[:6]
    nodes = kwok_node(2, prefix="install", labels={"pilothouse.dev/pool": pool})
    done = install(
        k8s_cluster,
        namespace,
        "--node-selector",
        f"pilothouse.dev/pool={pool}",
        "--timeout",
        "120",
    )
    assert done.returncode == 0, done.stderr
    for crd in crds():
        assert f"CustomResourceDefinition {crd['metadata']['name']} established" in done.stderr
    assert f"Deployment {namespace}/{OPERATOR}: 2 of 2 replicas available" in done.stderr
    deployment = k8s_cluster.apps.read_namespaced_deployment(OPERATOR, namespace)
    assert deployment.status.available_replicas == 2
    pods = k8s_cluster.core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=operator"
    ).items
    assert sorted(p.spec.node_name for p in pods) == sorted(nodes)


def test_install_times_out_saying_why_the_operator_is_not_available(
    k8s_cluster: Cluster, namespace: str
) -> None:
    done = install(
        k8s_cluster, namespace, "--node-selector", "pilothouse.dev/pool=nowhere", "--timeout", "5"
    )
    assert done.returncode == 1
    assert f"waiting for Deployment {namespace}/{OPERATOR}" in done.stderr
    assert "Unschedulable" in done.stderr


# --- what the Roles allow ---------------------------------------------------------------------

#: (verb, resource[/name], subresource): everything the operator does (docs/kubernetes.md,
#: docs/architecture.md: the Kubernetes column of the three ports)
OPERATOR_MAY = [
    *[(v, "modeldeployments.pilothouse.dev", "") for v in ("get", "list", "watch")],
    ("patch", "modeldeployments.pilothouse.dev", "status"),
    ("update", "modeldeployments.pilothouse.dev", "finalizers"),
    *[
        (v, resource, "")
        for resource in (
            "deployments.apps",
            "poddisruptionbudgets.policy",
            "services",
            "configmaps",
        )
        for v in ("get", "list", "watch", "create", "patch", "delete")
    ],
    ("patch", "deployments.apps", "scale"),
    ("create", "secrets", ""),
    ("get", "secrets/pilothouse-router-control", ""),
    *[(v, "pods", "") for v in ("get", "list", "watch")],
    ("create", "events.events.k8s.io", ""),
    ("patch", "events.events.k8s.io", ""),
    ("create", "leases.coordination.k8s.io", ""),
    ("get", "leases.coordination.k8s.io/pilothouse-operator", ""),
    ("update", "leases.coordination.k8s.io/pilothouse-operator", ""),
]
OPERATOR_MAY_NOT = [
    ("delete", "pods", ""),
    ("create", "pods", ""),
    ("patch", "pods", ""),
    ("create", "pods", "eviction"),
    ("get", "secrets/pilothouse-registry", ""),
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("watch", "secrets", ""),
    ("update", "secrets/pilothouse-router-control", ""),
    ("delete", "secrets/pilothouse-router-control", ""),
    ("list", "nodes", ""),
    ("get", "nodes", ""),
    ("create", "clusterroles", ""),
    ("create", "roles.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("create", "modeldeployments.pilothouse.dev", ""),
    ("delete", "modeldeployments.pilothouse.dev", ""),
    ("update", "modeldeployments.pilothouse.dev", ""),
    # nothing it does not use: no finalizer, no TrainingJobs yet, no EndpointSlices
    ("patch", "modeldeployments.pilothouse.dev", ""),
    ("update", "modeldeployments.pilothouse.dev", "status"),
    ("list", "trainingjobs.pilothouse.dev", ""),
    ("list", "endpointslices.discovery.k8s.io", ""),
    ("update", "deployments.apps", ""),
    ("get", "leases.coordination.k8s.io/someone-else", ""),
    ("update", "leases.coordination.k8s.io/someone-else", ""),
    ("delete", "leases.coordination.k8s.io/pilothouse-operator", ""),
    ("create", "events", ""),  # core/v1 Events: it writes events.k8s.io ones
    ("create", "serviceaccounts", "token"),
    ("*", "*", ""),
]
ROUTER_MAY = [
    *[(v, "configmaps", "") for v in ("get", "list", "watch", "patch")],
    *[(v, "pods", "") for v in ("get", "list", "watch")],
    *[(v, "endpointslices.discovery.k8s.io", "") for v in ("get", "list", "watch")],
]
ROUTER_MAY_NOT = [
    ("create", "configmaps", ""),
    ("delete", "configmaps", ""),
    ("update", "configmaps", ""),
    ("get", "secrets/pilothouse-router-control", ""),
    ("delete", "pods", ""),
    ("patch", "deployments.apps", ""),
    ("get", "modeldeployments.pilothouse.dev", ""),
    ("list", "nodes", ""),
]


def can_i(
    cluster: Cluster, account: str, namespace: str, verb: str, resource: str, sub: str
) -> str:
    args = ["auth", "can-i", verb, resource, "-n", namespace]
    args.append(f"--as=system:serviceaccount:{namespace}:{account}")
    if sub:
        args.append(f"--subresource={sub}")
    result = cluster.plane.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stderr}"
    return answer


@pytest.fixture
def installed(k8s_cluster: Cluster, namespace: str) -> str:
    done = install(k8s_cluster, namespace, "--no-wait")
    assert done.returncode == 0, done.stderr
    return namespace


@pytest.mark.parametrize(
    ("account", "allowed", "refused"),
    [(OPERATOR, OPERATOR_MAY, OPERATOR_MAY_NOT), (ROUTER, ROUTER_MAY, ROUTER_MAY_NOT)],
    ids=["operator", "router"],
)
def test_the_role_allows_what_it_does_and_refuses_the_rest(
    k8s_cluster: Cluster,
    installed: str,
    account: str,
    allowed: list[tuple[str, str, str]],
    refused: list[tuple[str, str, str]],
) -> None:
    checks = [(*c, "yes") for c in allowed] + [(*c, "no") for c in refused]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda c: can_i(k8s_cluster, account, installed, c[0], c[1], c[2]), checks)
        )
    wrong = [
        f"{verb} {resource}{'/' + sub if sub else ''}: {got}, expected {want}"
        for (verb, resource, sub, want), got in zip(checks, answers, strict=True)
        if got != want
    ]
    assert not wrong, wrong
    # namespaced: nothing in another namespace
    assert can_i(k8s_cluster, account, "default", "get", "pods", "") == "no"
