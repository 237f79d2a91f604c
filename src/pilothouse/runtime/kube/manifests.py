"""What ``pilothouse kube install`` puts in a cluster: the CRDs and one namespaced operator.

``install_manifests(namespace, image=..., registry=...)`` returns the objects in the order
they are applied: the CustomResourceDefinitions (``spec/crd.py``), the Namespace, the
operator's ServiceAccount, Role and RoleBinding, the router pods' ServiceAccount, Role and
RoleBinding (the operator runs its router Deployments under it), the operator's Deployment
(two replicas; a Lease elects the one that acts: docs/kubernetes.md) and its
PodDisruptionBudget.

RBAC is least privilege and namespaced (a ``Role``, never a ``ClusterRole``): each rule grants
what the operator (or a router pod) does and nothing more, and says why (``Rule.why``).
Dicts keep no comments, so the justifications stay with the rules here and
``render_manifests`` prints each as a ``#`` comment above its rule (``justification`` finds
the one of a rule as it appears in a Role).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import yaml

from pilothouse import __version__
from pilothouse.spec.crd import crds
from pilothouse.spec.resources import GROUP

Manifest = dict[str, Any]

OPERATOR = "pilothouse-operator"
ROUTER = "pilothouse-router"
#: the Lease that elects the acting operator replica (docs/kubernetes.md)
LEADER_LEASE = "pilothouse-operator"
#: the Secret holding the routers' control-port token (created by the operator)
ROUTER_CONTROL_SECRET = "pilothouse-router-control"
#: the Secret with the registry's credentials and endpoint (envFrom; made by the user)
REGISTRY_SECRET = "pilothouse-registry"
#: the operator's health endpoint: ``GET :8090/healthz`` (200 on the leader and the standby)
HEALTH_PORT = 8090
HEALTH_PATH = "/healthz"
#: the image's writable model cache; an emptyDir in every pod (the root filesystem is read-only)
CACHE_DIR = "/var/cache/pilothouse"
#: the image's user (distroless "nonroot"): the Dockerfile creates it
RUN_AS = 65532
FIELD_MANAGER = "pilothouse-install"
DEFAULT_IMAGE = f"ghcr.io/pilothouse/pilothouse:{__version__}"

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class Rule:
    """One RBAC rule and why it is granted."""

    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    names: tuple[str, ...] = ()

    def manifest(self) -> Manifest:
        rule: Manifest = {
            "apiGroups": list(self.groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.names:
            rule["resourceNames"] = list(self.names)
        return rule


#: what the operator does in its namespace, and nothing else. Not here: pods' create, patch
#: and delete (Kubernetes' own controllers run and replace the pods; the operator only
#: reads them), Secrets other than the router-control one, and Nodes (cluster-scoped: a
#: namespaced operator does not read them).
OPERATOR_RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        ("modeldeployments",),
        ("get", "list", "watch"),
        "the informer cache the controllers read ModelDeployments (and users'"
        " pilothouse.dev/request.* annotations) from; never written: no finalizer is needed"
        " (the children are owned and garbage-collected)",
    ),
    Rule(
        (GROUP,),
        ("modeldeployments/status",),
        ("patch",),
        "the status subresource: observedGeneration, conditions and status.internal (a"
        " JSON patch tested on the object's uid)",
    ),
    Rule(
        (GROUP,),
        ("modeldeployments/finalizers",),
        ("update",),
        "children carry owner references with blockOwnerDeletion: true, which the"
        " OwnerReferencesPermissionEnforcement admission allows only to who may update the"
        " owner's finalizers",
    ),
    Rule(
        ("apps",),
        ("deployments",),
        ("get", "list", "watch", "create", "patch", "delete"),
        "one Deployment per revision and one for the routers: get/list/watch for their"
        " status (ready, updated replicas); patch for server-side apply; create because"
        " applying an object that does not exist yet is authorized as create as well;"
        " delete for revisions a rollout left out",
    ),
    Rule(
        ("apps",),
        ("deployments/scale",),
        ("patch",),
        "the autoscaler sets a revision's replica count through the scale subresource",
    ),
    Rule(
        ("policy",),
        ("poddisruptionbudgets",),
        ("get", "list", "watch", "create", "patch", "delete"),
        "a PDB per revision (maxUnavailable: 1) and for the routers (minAvailable: 1):"
        " applied (patch, and create for a new one), watched, deleted with the revision",
    ),
    Rule(
        ("",),
        ("services", "configmaps"),
        ("get", "list", "watch", "create", "patch", "delete"),
        "the revisions' headless Services, the deployment's Service, and the NAME-router"
        " ConfigMap (traffic.json; watched for the routers' pilothouse.dev/wake annotation):"
        " applied (patch, and create for a new one), watched, deleted with their revision",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("create",),
        f"create {ROUTER_CONTROL_SECRET} (the routers' control token) once. create cannot be"
        " limited to one name by resourceNames: the authorizer sees no name on a create"
        " request (it is in the body)",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get",),
        f"read the routers' control token back from {ROUTER_CONTROL_SECRET}, and no other"
        " Secret (the registry's credentials reach the pods by envFrom, through the kubelet)",
        names=(ROUTER_CONTROL_SECRET,),
    ),
    Rule(
        ("",),
        ("pods",),
        ("get", "list", "watch"),
        "revision state: restart counts, CrashLoopBackOff reasons and nodes of the replica"
        " pods, and the router pods' addresses for their control API (port 8081)",
    ),
    Rule(
        ("events.k8s.io",),
        ("events",),
        ("create", "patch"),
        "events.k8s.io Events on the custom resources (create; patch to count a repeat)",
    ),
    Rule(
        ("coordination.k8s.io",),
        ("leases",),
        ("create",),
        f"leader election: create the {LEADER_LEASE} Lease the first time. create cannot be"
        " limited to one name by resourceNames (the name is in the body)",
    ),
    Rule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "update"),
        f"leader election: read and renew (or take over) the {LEADER_LEASE} Lease, and no other",
        names=(LEADER_LEASE,),
    ),
)

#: what a router pod does: reads its ConfigMap and the revisions' pods and EndpointSlices,
#: and sets the wake annotation on its ConfigMap
ROUTER_RULES: tuple[Rule, ...] = (
    Rule(
        ("",),
        ("configmaps",),
        ("get", "list", "watch"),
        "read and watch the NAME-router ConfigMap's traffic.json (the weights the operator"
        " set); list/watch because a watch of one object is a field-selected list+watch",
    ),
    Rule(
        ("",),
        ("configmaps",),
        ("patch",),
        "set the pilothouse.dev/wake annotation on its ConfigMap when a request waits for a"
        " deployment scaled to zero. Not limited by resourceNames: one Role serves the"
        " routers of every ModelDeployment in the namespace, whose names it cannot know",
    ),
    Rule(
        ("",),
        ("pods",),
        ("get", "list", "watch"),
        "the revisions' pods (readiness and addresses) before their EndpointSlices catch up",
    ),
    Rule(
        ("discovery.k8s.io",),
        ("endpointslices",),
        ("get", "list", "watch"),
        "the ready replicas of each revision, behind its headless Service",
    ),
)


# --- options --------------------------------------------------------------------------------


def parse_toleration(text: str) -> Manifest:
    """``KEY=VALUE:EFFECT`` (operator Equal), ``KEY:EFFECT`` (operator Exists), or either
    without ``:EFFECT`` (every effect)."""
    body, effect = text, ""
    if ":" in text:
        body, effect = text.rsplit(":", 1)
        if effect not in _EFFECTS:
            raise ValueError(
                f"toleration {text!r}: effect {effect!r} is not one of {', '.join(_EFFECTS)}"
            )
    key, sep, value = body.partition("=")
    if not key:
        raise ValueError(f"toleration {text!r}: no key (KEY=VALUE:EFFECT)")
    toleration: Manifest = {"key": key}
    if sep:
        toleration |= {"operator": "Equal", "value": value}
    else:
        toleration["operator"] = "Exists"
    if effect:
        toleration["effect"] = effect
    return toleration


def toleration_text(toleration: Manifest) -> str:
    """A toleration as ``parse_toleration`` reads it (``KEY[=VALUE]:EFFECT``)."""
    key = str(toleration.get("key", ""))
    if toleration.get("operator", "Equal") == "Equal" and "value" in toleration:
        key = f"{key}={toleration['value']}"
    effect = toleration.get("effect")
    return f"{key}:{effect}" if effect else key


def parse_node_selector(text: str) -> tuple[str, str]:
    """``KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise ValueError(f"node selector {text!r}: expected KEY=VALUE")
    return key, value


# --- the objects ----------------------------------------------------------------------------


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "pilothouse",
        "app.kubernetes.io/component": component,
        # not "pilothouse": that marks the children the operator manages itself
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/version": __version__,
    }


def _selector(component: str) -> dict[str, str]:
    """The immutable part of the labels (no version: a selector cannot change)."""
    return {"app.kubernetes.io/name": "pilothouse", "app.kubernetes.io/component": component}


def _meta(name: str, namespace: str, component: str, **extra: Any) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": _labels(component), **extra}


def service_account(name: str, namespace: str, component: str, *, automount: bool) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, namespace, component),
        "automountServiceAccountToken": automount,
    }


def role(name: str, namespace: str, component: str, rules: tuple[Rule, ...]) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(name, namespace, component),
        "rules": [r.manifest() for r in rules],
    }


def role_binding(name: str, namespace: str, component: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, namespace, component),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def operator_deployment(
    namespace: str,
    *,
    image: str,
    registry: str,
    replicas: int,
    tolerations: list[Manifest],
    node_selector: dict[str, str],
    registry_secret: str,
) -> Manifest:
    selector = _selector("operator")
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "health"}, "timeoutSeconds": 2}
    container: Manifest = {
        "name": "operator",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "pilothouse",
            "operator",
            "--namespace",
            "$(POD_NAMESPACE)",
            "--registry",
            registry,
            # replicas and routers run the operator's own image, placed as it is
            "--image",
            image,
            *(arg for t in tolerations for arg in ("--toleration", toleration_text(t))),
            *(arg for k, v in node_selector.items() for arg in ("--node-selector", f"{k}={v}")),
            "--priority-class",
            SERVING_PRIORITY_CLASS,
            # replicas read the registry with the same credentials
            "--registry-secret",
            registry_secret,
            # the pod's own address: two operators on one host network never clash
            "--health-host",
            "$(POD_IP)",
        ],
        "env": [
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...: the registry's
        "envFrom": [{"secretRef": {"name": registry_secret, "optional": True}}],
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **probe,
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: Manifest = {
        "serviceAccountName": OPERATOR,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # one replica per node (and zone) where there are enough: losing a node leaves the
        # standby to take the Lease; ScheduleAnyway so a one-node cluster still runs both
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
            }
            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector},
                        },
                    }
                ]
            }
        },
        "containers": [container],
        "volumes": [
            {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(OPERATOR, namespace, "operator"),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            # never below the replicas asked for while rolling: the standby keeps the Lease warm
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": _labels("operator")}, "spec": pod_spec},
        },
    }


#: replicas and routers serve live traffic: above ordinary pods (0) and, with the operator's
#: second part, training workers, which they may preempt (as embedded: spec.priority)
SERVING_PRIORITY_CLASS = "pilothouse-serving"
SERVING_PRIORITY = 100000


def serving_priority_class() -> Manifest:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": SERVING_PRIORITY_CLASS, "labels": _labels("serving")},
        "value": SERVING_PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        "description": "pilothouse model replicas and routers: live traffic",
    }


def operator_pdb(namespace: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(OPERATOR, namespace, "operator"),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector("operator")}},
    }


def install_manifests(
    namespace: str,
    *,
    image: str,
    registry: str,
    replicas: int = 2,
    tolerations: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
    registry_secret: str = REGISTRY_SECRET,
) -> list[Manifest]:
    """Everything ``pilothouse kube install`` applies, in apply order (CRDs first, the
    Deployment after the RBAC its pods run under)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    objects: list[Manifest] = list(crds())
    if namespace != "default":
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {
                        "app.kubernetes.io/name": "pilothouse",
                        "app.kubernetes.io/managed-by": FIELD_MANAGER,
                    },
                },
            }
        )
    objects += [
        serving_priority_class(),
        # the SA itself mounts nothing: only the operator's pods, which ask for it
        service_account(OPERATOR, namespace, "operator", automount=False),
        role(OPERATOR, namespace, "operator", OPERATOR_RULES),
        role_binding(OPERATOR, namespace, "operator"),
        service_account(ROUTER, namespace, "router", automount=True),
        role(ROUTER, namespace, "router", ROUTER_RULES),
        role_binding(ROUTER, namespace, "router"),
        operator_deployment(
            namespace,
            image=image,
            registry=registry,
            replicas=replicas,
            tolerations=list(tolerations or []),
            node_selector=dict(node_selector or {}),
            registry_secret=registry_secret,
        ),
        operator_pdb(namespace),
    ]
    return objects


# --- YAML with the justifications as comments -----------------------------------------------


#: every Role install_manifests makes, by name: its rules with their justifications
ROLES: dict[str, tuple[Rule, ...]] = {OPERATOR: OPERATOR_RULES, ROUTER: ROUTER_RULES}


def justification(role_name: str, rule: Manifest) -> str | None:
    """Why the Role ``role_name`` (one of ``ROLES``) has ``rule``; None if it should not."""
    return next((r.why for r in ROLES.get(role_name, ()) if r.manifest() == rule), None)


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors and aliases for dicts that appear twice: plain YAML for people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100)


def _render(obj: Manifest) -> str:
    rules = obj.get("rules") or []
    if obj.get("kind") != "Role" or not rules or list(obj)[-1] != "rules":
        return _dump(obj)
    name = obj["metadata"]["name"]
    out = [_dump({k: v for k, v in obj.items() if k != "rules"}), "rules:\n"]
    for rule in rules:
        why = justification(name, rule) or "(no justification: not one of pilothouse's rules)"
        out += [f"# {line}\n" for line in textwrap.wrap(why, 94)]
        out.append(_dump([rule]))  # "- ..." at the key's column: a valid block sequence
    return "".join(out)


def render_manifests(objects: list[Manifest]) -> str:
    """One YAML stream (``---`` before each document), each Role rule preceded by a ``#``
    comment saying why it is granted. ``yaml.safe_load_all`` of it gives ``objects`` back."""
    return "".join(f"---\n{_render(obj)}" for obj in objects)


__all__ = [
    "CACHE_DIR",
    "DEFAULT_IMAGE",
    "FIELD_MANAGER",
    "HEALTH_PORT",
    "LEADER_LEASE",
    "OPERATOR",
    "OPERATOR_RULES",
    "REGISTRY_SECRET",
    "ROLES",
    "ROUTER",
    "ROUTER_CONTROL_SECRET",
    "ROUTER_RULES",
    "Rule",
    "install_manifests",
    "justification",
    "operator_deployment",
    "operator_pdb",
    "parse_node_selector",
    "parse_toleration",
    "render_manifests",
    "role",
    "role_binding",
    "service_account",
]
