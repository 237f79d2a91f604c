"""The install manifests (runtime/kube/manifests.py): what the operator's pods are given, how
they are placed and secured, and that every RBAC rule says why it is there."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from pilothouse import __version__
from pilothouse.cli.kube import kube
from pilothouse.runtime.kube.manifests import (
    DEFAULT_IMAGE,
    OPERATOR,
    OPERATOR_RULES,
    ROLES,
    ROUTER,
    ROUTER_CONTROL_SECRET,
    install_manifests,
    justification,
    parse_node_selector,
    parse_toleration,
    render_manifests,
    toleration_text,
)
from pilothouse.spec.crd import crds

REGISTRY = "s3://models/prod"


def build(**kwargs: Any) -> list[dict[str, Any]]:
    return install_manifests("ml", image="example/pilothouse:1", registry=REGISTRY, **kwargs)


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def operator_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    return spec


def test_apply_order_crds_then_namespace_then_rbac_then_the_operator() -> None:
    objects = build()
    kinds = [o["kind"] for o in objects]
    n = len(crds())
    assert objects[:n] == crds()
    assert kinds[n:] == [
        "Namespace",
        "PriorityClass",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "PodDisruptionBudget",
    ]
    assert objects[n + 1]["value"] > 0  # replicas above ordinary pods
    namespaced = objects[n + 2 :]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"ml"}
    # nothing cluster-wide but the CRDs, the Namespace and the serving PriorityClass: the
    # operator is namespaced
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds)


def test_no_namespace_object_for_default() -> None:
    objects = install_manifests("default", image="i", registry=REGISTRY)
    assert "Namespace" not in [o["kind"] for o in objects]


def test_operator_deployment_runs_the_operator_with_its_namespace_and_registry() -> None:
    objects = build()
    deployment = one(objects, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 2
    pod = operator_pod(objects)
    assert pod["serviceAccountName"] == OPERATOR
    assert pod["automountServiceAccountToken"] is True
    [container] = pod["containers"]
    assert container["image"] == "example/pilothouse:1"
    assert container["command"] == [
        "pilothouse",
        "operator",
        "--namespace",
        "$(POD_NAMESPACE)",
        "--registry",
        REGISTRY,
        "--image",
        "example/pilothouse:1",
        "--priority-class",
        "pilothouse-serving",
        "--registry-secret",
        "pilothouse-registry",
        "--health-host",
        "$(POD_IP)",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_NAMESPACE": "metadata.namespace",
        "POD_NAME": "metadata.name",
        "POD_IP": "status.podIP",
    }
    assert container["envFrom"] == [
        {"secretRef": {"name": "pilothouse-registry", "optional": True}}
    ]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [{"name": "health", "containerPort": 8090, "protocol": "TCP"}]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    # the selector is what the PDB selects, and the pods carry it
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    pdb = one(objects, "PodDisruptionBudget", OPERATOR)
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}


def test_replicas_and_registry_secret_are_options() -> None:
    objects = build(replicas=3, registry_secret="s3-creds")
    assert one(objects, "Deployment", OPERATOR)["spec"]["replicas"] == 3
    [container] = operator_pod(objects)["containers"]
    assert container["envFrom"][0]["secretRef"]["name"] == "s3-creds"
    with pytest.raises(ValueError, match="replicas"):
        build(replicas=0)


def test_security_context_is_restricted() -> None:
    pod = operator_pod(build())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsUser"] == 65532
    # a read-only root: what it writes goes to emptyDirs
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/var/cache/pilothouse", "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())


def test_spread_across_nodes() -> None:
    pod = operator_pod(build())
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_tolerations_and_node_selector_are_carried() -> None:
    tolerations = [
        parse_toleration("dedicated=ml:NoSchedule"),
        parse_toleration("gpu:NoExecute"),
    ]
    pod = operator_pod(build(tolerations=tolerations, node_selector={"pool": "system"}))
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert pod["nodeSelector"] == {"pool": "system"}
    # the operator places the replica and router pods it makes the same way
    command = pod["containers"][0]["command"]
    assert " ".join(command).count("--toleration") == 2
    for flag, value in (
        ("--toleration", "dedicated=ml:NoSchedule"),
        ("--toleration", "gpu:NoExecute"),
        ("--node-selector", "pool=system"),
    ):
        assert any(command[i : i + 2] == [flag, value] for i in range(len(command))), command
    for t in tolerations:
        assert parse_toleration(toleration_text(t)) == t
    plain = operator_pod(build())
    assert "tolerations" not in plain
    assert "nodeSelector" not in plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b:NoSchedule", {"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"}),
        (
            "a=:PreferNoSchedule",
            {"key": "a", "operator": "Equal", "value": "", "effect": "PreferNoSchedule"},
        ),
        ("a:NoExecute", {"key": "a", "operator": "Exists", "effect": "NoExecute"}),
        ("example.com/k=v", {"key": "example.com/k", "operator": "Equal", "value": "v"}),
        ("a", {"key": "a", "operator": "Exists"}),
    ],
)
def test_parse_toleration(text: str, expected: dict[str, str]) -> None:
    assert parse_toleration(text) == expected


@pytest.mark.parametrize("text", ["a=b:Never", "=b:NoSchedule", ":NoSchedule"])
def test_parse_toleration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="toleration"):
        parse_toleration(text)


def test_parse_node_selector() -> None:
    assert parse_node_selector("k=v") == ("k", "v")
    assert parse_node_selector("example.com/pool=a=b") == ("example.com/pool", "a=b")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_node_selector("k")


def test_every_role_rule_has_a_justification_and_is_printed_with_it() -> None:
    objects = build()
    roles = [o for o in objects if o["kind"] == "Role"]
    assert {r["metadata"]["name"] for r in roles} == set(ROLES) == {OPERATOR, ROUTER}
    text = render_manifests(objects)
    for role in roles:
        for rule in role["rules"]:
            why = justification(role["metadata"]["name"], rule)
            assert why is not None, rule
            assert len(why) > 30, rule
    # printed: each rule is preceded by its justification as comment lines
    documents = text.split("\n---\n")
    printed = [d for d in documents if "\nkind: Role\n" in d]
    assert len(printed) == 2
    for document in printed:
        rules_part = document.split("\nrules:\n", 1)[1]
        lines = rules_part.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
        assert starts
        for i in starts:
            assert lines[i - 1].startswith("# "), lines[i - 1]
        assert "(no justification" not in document
    # and the comments are only comments: the stream is the objects
    assert list(yaml.safe_load_all(text)) == objects
    assert "&id" not in text  # no YAML anchors


def test_operator_rules_are_least_privilege() -> None:
    def verbs(group: str, resource: str, name: str = "") -> set[str]:
        return {
            verb
            for rule in OPERATOR_RULES
            if group in rule.groups and resource in rule.resources
            if not rule.names or name in rule.names
            for verb in rule.verbs
        }

    assert verbs("", "pods") == {"get", "list", "watch"}
    assert verbs("", "secrets", "pilothouse-registry") == {"create"}
    assert verbs("", "secrets", ROUTER_CONTROL_SECRET) == {"create", "get"}
    assert verbs("", "nodes") == set()
    assert verbs("coordination.k8s.io", "leases", "other") == {"create"}
    assert verbs("coordination.k8s.io", "leases", "pilothouse-operator") == {
        "create",
        "get",
        "update",
    }
    assert "*" not in {v for r in OPERATOR_RULES for v in r.verbs + r.resources + r.groups}
    # create is the one verb resourceNames cannot limit: every rule with names has no create
    assert all("create" not in r.verbs for r in OPERATOR_RULES if r.names)


def test_cli_manifests_prints_the_stream_with_options() -> None:
    result = CliRunner().invoke(
        kube,
        [
            "manifests",
            "--namespace",
            "ml",
            "--registry",
            REGISTRY,
            "--toleration",
            "dedicated=ml:NoSchedule",
            "--toleration",
            "spot:NoExecute",
            "--node-selector",
            "pool=system",
        ],
    )
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    expected = install_manifests(
        "ml",
        image=DEFAULT_IMAGE,
        registry=REGISTRY,
        tolerations=[
            parse_toleration("dedicated=ml:NoSchedule"),
            parse_toleration("spot:NoExecute"),
        ],
        node_selector={"pool": "system"},
    )
    assert objects == expected
    assert f"ghcr.io/pilothouse/pilothouse:{__version__}" == DEFAULT_IMAGE
    assert re.search(r"^# .*leader election", result.output, re.MULTILINE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--toleration", "a=b:Sometimes"], "effect"),
        (["--node-selector", "novalue"], "KEY=VALUE"),
    ],
)
def test_cli_manifests_refuses_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(kube, ["manifests", "--registry", REGISTRY, *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("name", ["fraud", "7-fraud", "9lives", "a" * 63, "1" + "b" * 62])
def test_every_service_name_is_a_dns_1035_label(name: str) -> None:
    """ModelDeployment names are DNS-1123 labels (a digit may come first); the Services
    made for them must be DNS-1035 labels (a letter first, at most 63 characters)."""
    import re

    from pilothouse.runtime.kube.objects import revision_name, router_name, service_name

    label = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for made in (service_name(name), revision_name(name, "12-abcdef"), router_name(name)):
        assert len(made) <= 63, made
        assert label.fullmatch(made), made
    if name[0].isalpha() and len(name) <= 63:
        assert service_name(name) == name  # the URL is the deployment's own name
