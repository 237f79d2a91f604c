"""What the operator asks Kubernetes for: the children of a ModelDeployment, as plain dicts.

Names, labels and ports follow docs/kubernetes.md (the contract between the operator,
the router pods and the replicas). Every child carries an owner reference to its
ModelDeployment, so deleting it lets the garbage collector remove everything; no
finalizer is needed for that.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pilothouse import __version__
from pilothouse.ports.workload import Probe, ReplicaTemplate

GROUP_VERSION = "pilothouse.dev/v1alpha1"
MANAGED_BY = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL = "pilothouse.dev/deployment"
COMPONENT_LABEL = "pilothouse.dev/component"
REVISION_LABEL = "pilothouse.dev/revision"
WAKE_ANNOTATION = "pilothouse.dev/wake"
REQUEST_PREFIX = "pilothouse.dev/request."
REPLICA_PORT = 8080
ROUTER_PORT = 8080
ROUTER_CONTROL_PORT = 8081
ROUTER_SECRET = "pilothouse-router-control"
ROUTER_SERVICE_ACCOUNT = "pilothouse-router"
REGISTRY_SECRET = "pilothouse-registry"
MODEL_CACHE = "/var/cache/pilothouse"
DEFAULT_IMAGE = f"ghcr.io/pilothouse/pilothouse:{__version__}"
#: DNS-1035 labels (Service names) are at most 63 characters
_MAX_NAME = 63


@dataclass(frozen=True)
class PodDefaults:
    """How the operator's pods are placed and started (operator flags)."""

    image: str = DEFAULT_IMAGE
    registry: str = ""
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    #: how long a replica stays bound to a node that stopped answering (Kubernetes'
    #: default is 300 s; replicas move in seconds instead)
    unreachable_seconds: int = 10
    router_replicas: int = 2
    #: the Secret with the registry's credentials and endpoint (AWS_* variables)
    registry_secret: str = REGISTRY_SECRET
    #: seconds a replica keeps serving after its deletion began, while routers drop it
    drain_seconds: int = 3
    #: the PriorityClass of replica and router pods ("": the cluster's default); ``kube
    #: install`` makes ``pilothouse-serving``, above ordinary pods and training workers
    priority_class: str = ""


def _dns1035(name: str) -> str:
    """Services need a DNS-1035 label (a letter first); a ModelDeployment's name is a
    DNS-1123 label (a digit may come first): such a name gets ``md-`` in front."""
    return name if name[:1].isalpha() else f"md-{name}"


def child_name(deployment: str, suffix: str) -> str:
    """``deployment-suffix``, shortened with a hash when longer than a Service name may be."""
    base = _dns1035(deployment)
    name = f"{base}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = _MAX_NAME - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}"


def service_name(deployment: str) -> str:
    """The Service that is the deployment's URL: its own name when that is a DNS-1035 label."""
    base = _dns1035(deployment)
    if len(base) <= _MAX_NAME:
        return base
    return child_name(deployment[: _MAX_NAME - 12], "svc")


def revision_name(deployment: str, revision: str) -> str:
    return child_name(deployment, revision)


def router_name(deployment: str) -> str:
    return child_name(deployment, "router")


def labels(deployment: str, component: str, revision: str | None = None) -> dict[str, str]:
    out = {
        MANAGED_BY: "pilothouse",
        "app.kubernetes.io/name": "pilothouse",
        DEPLOYMENT_LABEL: deployment,
        COMPONENT_LABEL: component,
    }
    if revision is not None:
        out[REVISION_LABEL] = revision
    return out


def selector(deployment: str, component: str, revision: str | None = None) -> dict[str, str]:
    out = {DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: component}
    if revision is not None:
        out[REVISION_LABEL] = revision
    return out


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", GROUP_VERSION),
        "kind": owner.get("kind", "ModelDeployment"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(
    name: str, namespace: str, owner: dict[str, Any], labels_: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels_,
        "ownerReferences": [owner_reference(owner)],
    }


def _seconds(value: float) -> int:
    return max(1, round(value))


def _probe(probe: Probe, port: int) -> dict[str, Any]:
    action: dict[str, Any]
    if probe.command:
        action = {"exec": {"command": list(probe.command)}}
    else:
        action = {"httpGet": {"path": probe.path, "port": port}}
    return {
        **action,
        "periodSeconds": _seconds(probe.period),
        "timeoutSeconds": _seconds(probe.timeout),
        "failureThreshold": max(1, probe.failure_threshold),
        "initialDelaySeconds": round(probe.initial_delay),
    }


def _tolerations(defaults: PodDefaults) -> list[dict[str, Any]]:
    """The operator's own tolerations, plus short ones for lost nodes: Kubernetes' default
    keeps a pod bound to an unreachable node for 300 s before the taint evicts it."""
    moving = [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": defaults.unreachable_seconds,
        }
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
    ]
    return [*(dict(t) for t in defaults.tolerations), *moving]


_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

#: the image's user (Dockerfile: uid 65532), so that runAsNonRoot holds whatever image
#: --image names (a named USER cannot be checked by kubelet)
RUN_AS = 65532
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}

_POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
_POD_NAMESPACE = {
    "name": "POD_NAMESPACE",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
}


def _resources(template: ReplicaTemplate) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    res = template.resources
    if res.cpu:
        requests["cpu"] = f"{res.cpu}m"
    if res.memory:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(res.gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def replica_pod_spec(
    template: ReplicaTemplate, revision: str, defaults: PodDefaults
) -> dict[str, Any]:
    """The pod of one replica: fetches and verifies its model version, then serves it."""
    command = [
        "pilothouse",
        "serve",
        "--model",
        template.model,
        "--registry",
        defaults.registry,
        "--cache",
        MODEL_CACHE,
        "--name",
        template.model_name,
        "--host",
        "$(POD_IP)",
        "--port",
        str(REPLICA_PORT),
        "--max-batch-size",
        str(template.max_batch_size),
        "--max-batch-delay",
        str(template.max_batch_delay),
    ]
    container: dict[str, Any] = {
        "name": "model",
        "image": defaults.image,
        "command": command,
        "env": [_POD_IP],
        "envFrom": [{"secretRef": {"name": defaults.registry_secret, "optional": True}}],
        "ports": [{"name": "http", "containerPort": REPLICA_PORT}],
        "readinessProbe": _probe(template.readiness, REPLICA_PORT),
        "resources": _resources(template),
        "securityContext": _SECURITY,
        "volumeMounts": [
            {"name": "cache", "mountPath": MODEL_CACHE},
            # the root filesystem is read-only: libraries that write temporary files
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        # routers drop a terminating replica at once; it keeps serving what is in flight
        "lifecycle": {"preStop": {"sleep": {"seconds": defaults.drain_seconds}}},
    }
    if template.liveness is not None:
        container["livenessProbe"] = _probe(template.liveness, REPLICA_PORT)
    spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": _seconds(template.grace) + defaults.drain_seconds,
        "tolerations": _tolerations(defaults),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {
                    "matchLabels": selector(template.deployment, "replica", revision)
                },
            }
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        "securityContext": _POD_SECURITY,
    }
    if defaults.node_selector:
        spec["nodeSelector"] = dict(defaults.node_selector)
    if defaults.priority_class:
        spec["priorityClassName"] = defaults.priority_class
    return spec


def revision_deployment(
    owner: dict[str, Any],
    template: ReplicaTemplate,
    revision: str,
    defaults: PodDefaults,
    replicas: int | None,
) -> dict[str, Any]:
    """One revision's ``Deployment``; ``replicas`` only when it is created (afterwards the
    operator writes the ``scale`` subresource, as an autoscaler does)."""
    namespace = owner["metadata"]["namespace"]
    deployment = template.deployment
    pod_labels = labels(deployment, "replica", revision)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(deployment, "replica", revision)},
        # new pods before old ones go: a revision never drops below its ready count
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "revisionHistoryLimit": 2,
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": replica_pod_spec(template, revision, defaults),
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(revision_name(deployment, revision), namespace, owner, pod_labels),
        "spec": spec,
    }


def _revision_meta(owner: dict[str, Any], deployment: str, revision: str) -> dict[str, Any]:
    """The metadata every child of one revision shares (name, labels, owner)."""
    return _meta(
        revision_name(deployment, revision),
        owner["metadata"]["namespace"],
        owner,
        labels(deployment, "replica", revision),
    )


def revision_pdb(owner: dict[str, Any], deployment: str, revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _revision_meta(owner, deployment, revision),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(deployment, "replica", revision)},
        },
    }


def revision_service(owner: dict[str, Any], deployment: str, revision: str) -> dict[str, Any]:
    """Headless: it exists so that the revision's EndpointSlices list its pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _revision_meta(owner, deployment, revision),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": selector(deployment, "replica", revision),
            "ports": [{"name": "http", "port": REPLICA_PORT, "targetPort": REPLICA_PORT}],
        },
    }


def router_objects(
    owner: dict[str, Any], traffic: dict[str, Any], defaults: PodDefaults
) -> list[dict[str, Any]]:
    """The router of one deployment: its ConfigMap (traffic), Deployment, PDB and Service."""
    meta = owner["metadata"]
    namespace, deployment = meta["namespace"], meta["name"]
    name = router_name(deployment)
    router_labels = labels(deployment, "router")
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, namespace, owner, router_labels),
        "data": {"traffic.json": json.dumps(traffic, sort_keys=True)},
    }
    container: dict[str, Any] = {
        "name": "router",
        "image": defaults.image,
        "command": [
            "pilothouse",
            "router",
            "--deployment",
            deployment,
            "--namespace",
            "$(POD_NAMESPACE)",
            "--host",
            "$(POD_IP)",
            "--port",
            str(ROUTER_PORT),
            "--control-port",
            str(ROUTER_CONTROL_PORT),
        ],
        "env": [
            _POD_IP,
            _POD_NAMESPACE,
            {
                "name": "PILOTHOUSE_ROUTER_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": ROUTER_SECRET, "key": "token"}},
            },
        ],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT},
            {"name": "control", "containerPort": ROUTER_CONTROL_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": ROUTER_CONTROL_PORT},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": ROUTER_CONTROL_PORT},
            "periodSeconds": 5,
            "failureThreshold": 3,
            "initialDelaySeconds": 5,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": _SECURITY,
        "lifecycle": {"preStop": {"sleep": {"seconds": defaults.drain_seconds}}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": ROUTER_SERVICE_ACCOUNT,
        "enableServiceLinks": False,
        "containers": [container],
        "terminationGracePeriodSeconds": 10 + defaults.drain_seconds,
        "tolerations": _tolerations(defaults),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(deployment, "router")},
            }
        ],
        "securityContext": _POD_SECURITY,
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if defaults.node_selector:
        pod_spec["nodeSelector"] = dict(defaults.node_selector)
    if defaults.priority_class:
        pod_spec["priorityClassName"] = defaults.priority_class
    router = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, owner, router_labels),
        "spec": {
            "replicas": defaults.router_replicas,
            "selector": {"matchLabels": selector(deployment, "router")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": router_labels}, "spec": pod_spec},
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, owner, router_labels),
        # one router at a time may go (a drain of a node never blocks, even with one router)
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(deployment, "router")}},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(service_name(deployment), namespace, owner, router_labels),
        "spec": {
            "selector": selector(deployment, "router"),
            "ports": [{"name": "http", "port": 80, "targetPort": ROUTER_PORT}],
        },
    }
    return [config, router, pdb, service]
