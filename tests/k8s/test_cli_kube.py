"""The CLI against a real Kubernetes control plane: ``pilothouse --kubeconfig K -n NS ...``.

Each test runs the real ``pilothouse`` command as a subprocess and checks the world through
the API server (never through the CLI alone): what ``apply`` created, the annotations a
rollout request set, the spec an undo put back, that ``delete`` removed the object, and
that a bad document, missing CRDs, a forbidden user, a missing kubeconfig or an unreachable
cluster each end in one clear line and a non-zero exit. No operator runs here: statuses are
written by the tests through the status subresource, as the operator would write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pilothouse.policy.rollout import request_values
from pilothouse.spec.crd import crds
from pilothouse.spec.resources import API_VERSION, GROUP, KINDS
from tests.k8s.conftest import Cluster, ProcessNode
from tests.k8s.testenv import ROOT, free_port, wait_for

pytestmark = pytest.mark.k8s

PILOTHOUSE = Path(sys.executable).with_name("pilothouse")
EXAMPLE = ROOT / "examples" / "fraud-detection" / "modeldeployment.yaml"
NAME = "fraud-detector"
PREFIX = "pilothouse.dev/request."
CRD_NAMES = [c["metadata"]["name"] for c in crds()]


# --- running the CLI ------------------------------------------------------------------------


@dataclass
class Cli:
    kubeconfig: Path
    namespace: str
    home: Path

    def __call__(
        self, *args: str, kubeconfig: Path | None = None, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``pilothouse --kubeconfig K -n NS ARGS`` (the test's cluster and namespace unless
        told otherwise), with a home of its own so that no embedded control plane answers."""
        env = {
            **os.environ,
            "PILOTHOUSE_HOME": str(self.home),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        env.pop("KUBECONFIG", None)
        return subprocess.run(
            [
                str(PILOTHOUSE),
                "--kubeconfig",
                str(kubeconfig or self.kubeconfig),
                "-n",
                namespace or self.namespace,
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )


def one_line(text: str) -> str:
    return " ".join(text.split())


def refused_once(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single error line of a failed command (no traceback)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


# --- the CRDs ------------------------------------------------------------------------------


def _crd_api(cluster: Cluster) -> client.ApiextensionsV1Api:
    return client.ApiextensionsV1Api(cluster.api)


def _gone(cluster: Cluster, name: str) -> bool:
    try:
        _crd_api(cluster).read_custom_resource_definition(name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _served(cluster: Cluster) -> bool:
    with cluster.plane.http() as http:
        found = http.get(f"/apis/{API_VERSION}")
        if found.status_code != 200:
            return False
        plurals = {r["name"] for r in found.json().get("resources") or []}
    return {cls.PLURAL for cls in KINDS.values()} <= plurals


def remove_crds(cluster: Cluster) -> None:
    """Delete the CRDs (their objects with them) and wait until the group is not served."""
    for name in CRD_NAMES:
        with contextlib.suppress(ApiException):
            _crd_api(cluster).delete_custom_resource_definition(name)
    for name in CRD_NAMES:
        wait_for(f"CRD {name} deleted", lambda n=name: _gone(cluster, n), timeout=60)  # type: ignore[misc]
    with cluster.plane.http() as http:
        wait_for(
            f"{GROUP} no longer served",
            lambda: http.get(f"/apis/{API_VERSION}").status_code == 404,
            timeout=30,
        )


def install_crds(cluster: Cluster) -> None:
    """``pilothouse kube crds | kubectl apply -f -`` (after any deletion in progress ends),
    then wait until every kind is served."""
    for name in CRD_NAMES:
        with contextlib.suppress(ApiException):
            found = _crd_api(cluster).read_custom_resource_definition(name)
            if found.metadata is not None and found.metadata.deletion_timestamp is not None:
                wait_for(f"CRD {name} deleted", lambda n=name: _gone(cluster, n), timeout=60)  # type: ignore[misc]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as stream:
        stream.write(yaml.safe_dump_all(crds(), sort_keys=False))
        stream.flush()
        cluster.kubectl("apply", "-f", stream.name)
    wait_for("the pilothouse kinds served", lambda: _served(cluster), timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _leave_no_crds(k8s_cluster: Cluster) -> Iterator[None]:
    """The CRDs are the cluster's, not a namespace's: take them away after this module."""
    yield
    remove_crds(k8s_cluster)


@pytest.fixture
def installed(k8s_cluster: Cluster) -> Cluster:
    if not _served(k8s_cluster):
        install_crds(k8s_cluster)
    return k8s_cluster


@pytest.fixture
def cli(k8s_cluster: Cluster, namespace: str, tmp_path: Path) -> Cli:
    return Cli(k8s_cluster.kubeconfig, namespace, tmp_path / "home")


# --- the world, through the API server --------------------------------------------------------


def kubectl_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def get_md(cluster: Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    found: dict[str, Any] = kubectl_json(cluster, "get", "md", name, "-n", namespace)
    return found


def md_path(namespace: str, name: str = NAME) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/modeldeployments/{name}"


def write_status(cluster: Cluster, namespace: str, status: dict[str, Any]) -> None:
    """What the operator would write, through the status subresource."""
    with cluster.plane.http() as http:
        answer = http.patch(
            md_path(namespace) + "/status",
            content=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
    assert answer.status_code == 200, answer.text


def create(cluster: Cluster, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    with cluster.plane.http() as http:
        answer = http.post(path, json=obj)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def md_annotations(cluster: Cluster, namespace: str) -> dict[str, str]:
    found: dict[str, str] = get_md(cluster, namespace)["metadata"].get("annotations") or {}
    return found


def requests_of(found: dict[str, str]) -> dict[str, str]:
    return {k[len(PREFIX) :]: v for k, v in found.items() if k.startswith(PREFIX)}


CANARY = {"strategy": "canary", "phase": "Progressing", "stableRevision": "1-aaaaaa"}


# --- apply, get ------------------------------------------------------------------------------


def test_apply_creates_the_object_that_kubectl_then_shows(installed: Cluster, cli: Cli) -> None:
    out = ok(cli("apply", "-f", str(EXAMPLE)))
    assert out.strip() == f"modeldeployment.pilothouse.dev/{NAME} created"
    obj = get_md(installed, cli.namespace)
    assert obj["spec"]["model"] == "fraud-detector:latest"
    assert obj["spec"]["replicas"] == {"min": 2, "max": 2}
    assert obj["metadata"]["labels"] == {"app": "fraud-detection"}
    # who applied it, for the revision history the operator keeps (as the embedded API does)
    assert re.fullmatch(r".+@.+", obj["metadata"]["annotations"][PREFIX + "appliedBy"])
    shown = kubectl_json(installed, "get", "md", NAME, "-n", cli.namespace, "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in shown["metadata"]["managedFields"]}
    assert ("pilothouse-cli", "Apply") in managers

    # the same again changes nothing, not even the resourceVersion
    again = ok(cli("apply", "-f", str(EXAMPLE)))
    assert again.strip() == f"modeldeployment.pilothouse.dev/{NAME} unchanged"
    assert (
        get_md(installed, cli.namespace)["metadata"]["resourceVersion"]
        == (obj["metadata"]["resourceVersion"])
    )

    changed = cli.home.parent / "changed.yaml"
    changed.write_text(EXAMPLE.read_text().replace("replicas: 2", "replicas: 3"))
    out = ok(cli("apply", "-f", str(changed)))
    assert out.strip() == f"modeldeployment.pilothouse.dev/{NAME} configured"
    now = get_md(installed, cli.namespace)
    assert now["spec"]["replicas"] == {"min": 3, "max": 3}
    assert now["metadata"]["generation"] == 2


def test_get_lists_and_shows_the_objects_of_the_namespace(installed: Cluster, cli: Cli) -> None:
    assert ok(cli("get", "md")).strip() == "No modeldeployments found."
    ok(cli("apply", "-f", str(EXAMPLE)))
    table = ok(cli("get", "md")).splitlines()
    assert table[0].split() == ["NAME", "MODEL", "READY", "URL", "AGE"]
    assert table[1].split()[:4] == [NAME, "fraud-detector:latest", "0/?", "-"]
    assert ok(cli("get", "md", "-o", "name")).split() == [f"modeldeployment/{NAME}"]

    shown = yaml.safe_load(ok(cli("get", "md", NAME, "-o", "yaml")))
    assert shown["kind"] == "ModelDeployment"
    assert shown["apiVersion"] == API_VERSION
    assert shown["metadata"]["namespace"] == cli.namespace
    assert "managedFields" not in shown["metadata"]  # as kubectl shows it
    assert shown["spec"] == get_md(installed, cli.namespace)["spec"]
    listed = json.loads(ok(cli("get", "modeldeployments", "-o", "json")))
    assert [i["metadata"]["name"] for i in listed["items"]] == [NAME]

    # another namespace holds none of them
    other = f"t-{uuid.uuid4().hex[:8]}"
    installed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        assert ok(cli("get", "md", namespace=other)).strip() == "No modeldeployments found."
        missing = cli("get", "md", NAME, namespace=other)
        assert missing.returncode == 2
        assert f"ModelDeployment '{NAME}' not found in namespace '{other}'" in missing.stderr
    finally:
        installed.core.delete_namespace(other)


def test_a_bad_document_is_refused_with_its_field_and_nothing_is_created(
    installed: Cluster, cli: Cli
) -> None:
    queue = "apiVersion: pilothouse.dev/v1alpha1\nkind: Queue\nmetadata: {name: research}\n"
    bad = cli.home.parent / "bad.yaml"
    # refused by the CLI's own validation: nothing is sent
    bad.write_text(
        queue + "spec: {weight: 2}\n---\n"
        "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\n"
        "metadata: {name: negative}\nspec: {model: 'm:1', replicas: -1}\n"
    )
    result = cli("apply", "-f", str(bad))
    assert result.returncode == 2, result.stderr
    assert "nothing was applied" in result.stderr
    assert "document 2: spec.replicas" in one_line(result.stderr)
    assert kubectl_json(installed, "get", "q,md", "-n", cli.namespace)["items"] == []

    # valid for the CLI, refused by the API server (an annotation key it does not take):
    # every document is tried first, so the queue before it is not created either
    bad.write_text(
        queue + "spec: {weight: 2}\n---\n"
        "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\n"
        "metadata: {name: badkey, annotations: {'not a key!': x}}\nspec: {model: 'm:1'}\n"
    )
    result = cli("apply", "-f", str(bad))
    assert result.returncode == 2, result.stderr
    said = one_line(result.stderr)
    assert "refused by the cluster, nothing applied" in said
    assert 'document 2: metadata.annotations: Invalid value: "not a key!"' in said
    assert kubectl_json(installed, "get", "q,md", "-n", cli.namespace)["items"] == []


# --- describe, wait ------------------------------------------------------------------------------


def test_describe_shows_status_conditions_events_and_pods(installed: Cluster, cli: Cli) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    uid = get_md(installed, cli.namespace)["metadata"]["uid"]
    write_status(
        installed,
        cli.namespace,
        {
            "observedGeneration": 1,
            "model": "fraud-detector:3",
            "url": f"http://{NAME}.{cli.namespace}.svc",
            "desiredReplicas": 2,
            "readyReplicas": 1,
            "message": "1 of 2 replicas ready",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ReplicasStarting",
                    "message": "1 of 2 replicas ready",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
        },
    )
    events = f"/apis/events.k8s.io/v1/namespaces/{cli.namespace}/events"
    create(
        installed,
        events,
        {
            "metadata": {"name": f"{NAME}.1"},
            "eventTime": "2024-01-01T00:00:01.000000Z",
            "reportingController": "pilothouse.dev/operator",
            "reportingInstance": "operator-0",
            "action": "Scale",
            "reason": "ScaledRevision",
            "type": "Normal",
            "note": "revision 1-aaaaaa scaled to 2",
            "regarding": {
                "apiVersion": API_VERSION,
                "kind": "ModelDeployment",
                "name": NAME,
                "namespace": cli.namespace,
                "uid": uid,
            },
        },
    )
    pod = f"{NAME}-1-aaaaaa-x7k2p"
    create(
        installed,
        f"/api/v1/namespaces/{cli.namespace}/pods",
        {
            "metadata": {
                "name": pod,
                "labels": {
                    "pilothouse.dev/deployment": NAME,
                    "pilothouse.dev/component": "replica",
                    "pilothouse.dev/revision": "1-aaaaaa",
                },
            },
            "spec": {
                # nowhere to run: it stays Pending (nothing runs in this test)
                "nodeSelector": {"pilothouse.dev/node-kind": "none"},
                "containers": [{"name": "replica", "image": "pilothouse:test"}],
            },
        },
    )
    create(
        installed,
        events,
        {
            "metadata": {"name": f"{pod}.1"},
            "eventTime": "2024-01-01T00:00:02.000000Z",
            "reportingController": "kubelet",
            "reportingInstance": "node-0",
            "action": "Pull",
            "reason": "Pulling",
            "type": "Normal",
            "note": "pulling image pilothouse:test",
            "regarding": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod,
                "namespace": cli.namespace,
            },
        },
    )

    out = ok(cli("describe", "md", NAME))
    lines = [line.split() for line in out.splitlines()]
    assert ["Name:", NAME] in lines
    assert ["Generation:", "1", "(observed", "1)"] in lines
    assert "url: http://" in out
    assert "model: fraud-detector:3" in out
    conditions = out.split("Conditions:")[1].split("Events:")[0]
    assert (conditions.splitlines()[2].split()[:8]) == [
        "Ready",
        "False",
        "ReplicasStarting",
        "1",
        "of",
        "2",
        "replicas",
        "ready",
    ]
    events_section = out.split("Events:")[1]
    assert "ScaledRevision" in events_section
    assert "revision 1-aaaaaa scaled to 2" in events_section
    assert f"pod/{pod}: pulling image pilothouse:test" in events_section
    pods_section = out.split("Pods:")[1].split("Conditions:")[0]
    row = next(line.split() for line in pods_section.splitlines() if pod in line)
    assert row[:5] == [pod, "-", "Pending", "no", "1-aaaaaa"]

    table = ok(cli("get", "md")).splitlines()[1].split()
    assert table[:4] == [NAME, "fraud-detector:3", "1/2", f"http://{NAME}.{cli.namespace}.svc"]
    assert "condition met" in ok(cli("wait", f"md/{NAME}", "--for", "condition=Ready=False"))
    waited = cli("wait", f"md/{NAME}", "--for", "condition=Ready", "--timeout", "1s")
    assert waited.returncode == 1
    assert "timed out after 1s" in waited.stderr


# --- rollouts --------------------------------------------------------------------------------------


def test_rollout_promote_and_abort_record_the_requests_the_operator_reads(
    installed: Cluster, cli: Cli
) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    applied_by = md_annotations(installed, cli.namespace)[PREFIX + "appliedBy"]

    # nothing in progress: refused as the embedded control API refuses it, nothing recorded
    refused = cli("rollout", "promote", NAME)
    assert refused.returncode == 2
    assert f"modeldeployment '{NAME}' has no rollout in progress to promote" in refused.stderr
    assert requests_of(md_annotations(installed, cli.namespace)) == {"appliedBy": applied_by}

    write_status(installed, cli.namespace, {"rollout": {**CANARY, "canaryRevision": "2-bbbbbb"}})
    assert f"modeldeployment/{NAME} promoted" in ok(cli("rollout", "promote", NAME))
    got = requests_of(md_annotations(installed, cli.namespace))
    nonce = got["resume"]
    assert got == {"appliedBy": applied_by, **request_values("promote", "2-bbbbbb", None, nonce)}

    assert "fully promoted" in ok(cli("rollout", "promote", NAME, "--full"))
    got = requests_of(md_annotations(installed, cli.namespace))
    nonce = got["resume"]
    expected = request_values("promote", "2-bbbbbb", None, nonce, full=True)
    assert got == {"appliedBy": applied_by, **expected}

    assert f"modeldeployment/{NAME} aborted" in ok(cli("rollout", "abort", NAME))
    got = requests_of(md_annotations(installed, cli.namespace))
    nonce = got["abort"].rsplit("|", 1)[1]
    assert got == {
        "appliedBy": applied_by,
        **expected,
        **request_values("abort", "2-bbbbbb", None, nonce),
    }

    ok(cli("rollout", "pause", NAME))
    assert requests_of(md_annotations(installed, cli.namespace))["pause"] == "2-bbbbbb"

    # retry needs an aborted revision, read from the status as well
    write_status(
        installed,
        cli.namespace,
        {
            "rollout": {
                **CANARY,
                "phase": "Degraded",
                "canaryRevision": None,
                "abortedRevision": "2-bbbbbb",
            }
        },
    )
    ok(cli("rollout", "retry", NAME))
    retry = requests_of(md_annotations(installed, cli.namespace))["retry"]
    assert retry.startswith("2-bbbbbb|")
    assert retry != "2-bbbbbb|"

    status = ok(cli("rollout", "status", NAME))
    assert "phase=Degraded" in status
    assert "strategy=canary" in status


def test_rollout_undo_puts_the_earlier_template_back(installed: Cluster, cli: Cli) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    before = get_md(installed, cli.namespace)
    template = {"model": "fraud-detector:2", "resources": {"cpu": "250m", "memory": "256Mi"}}
    write_status(
        installed,
        cli.namespace,
        {
            "rollout": {**CANARY, "stableRevision": "2-bbbbbb", "desiredRevision": "2-bbbbbb"},
            "history": [
                {
                    "number": 1,
                    "revision": "1-aaaaaa",
                    "model": "fraud-detector:2",
                    "outcome": "Stable",
                    "template": template,
                },
                {
                    "number": 2,
                    "revision": "2-bbbbbb",
                    "model": "fraud-detector:3",
                    "outcome": "Stable",
                    "template": {"model": "fraud-detector:latest"},
                },
            ],
        },
    )
    out = ok(cli("rollout", "undo", NAME))
    assert f"modeldeployment/{NAME} rolled back" in out
    after = get_md(installed, cli.namespace)
    assert after["spec"]["model"] == "fraud-detector:2"
    assert after["spec"]["resources"] == {"cpu": "250m", "memory": "256Mi", "gpu": 0}
    # the rest of the spec is as it was
    rest = {k: v for k, v in after["spec"].items() if k not in ("model", "resources")}
    assert rest == {k: v for k, v in before["spec"].items() if k not in ("model", "resources")}
    assert after["metadata"]["generation"] == 2
    assert after["metadata"]["annotations"][PREFIX + "appliedBy"].endswith(" (undo to revision 1)")
    undone = kubectl_json(
        installed,
        "get",
        "events.events.k8s.io",
        "-n",
        cli.namespace,
        "--field-selector",
        "reason=RolloutUndone",
    )["items"]
    assert [e["regarding"]["name"] for e in undone] == [NAME]

    # no operator has written a new status: revision 2 is still what it asks for
    again = cli("rollout", "undo", NAME, "--to-revision", "2")
    assert again.returncode == 2
    assert "revision 2 (fraud-detector:3) is what modeldeployment" in one_line(again.stderr)
    unknown = cli("rollout", "undo", NAME, "--to-revision", "9")
    assert unknown.returncode == 2
    assert "has no revision 9 (known: 1, 2)" in one_line(unknown.stderr)


# --- delete ----------------------------------------------------------------------------------------


def test_delete_removes_it(installed: Cluster, cli: Cli) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    out = ok(cli("delete", "md", NAME))
    assert out.strip() == f"modeldeployment.pilothouse.dev/{NAME} deleted"
    gone = installed.plane.kubectl("get", "md", NAME, "-n", cli.namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr
    again = cli("delete", "md", NAME)
    assert again.returncode == 2
    assert f"ModelDeployment '{NAME}' not found in namespace '{cli.namespace}'" in again.stderr


# --- predict ----------------------------------------------------------------------------------------

#: a router stand-in: answers every POST with what it was sent (path and JSON body)
ECHO = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        code = 422 if body.get("fail") else 200
        answer = json.dumps({"path": self.path, "body": body}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
HTTPServer((os.environ["POD_IP"], 8080), Echo).serve_forever()
"""


def test_predict_goes_through_the_api_servers_service_proxy(
    installed: Cluster, cli: Cli, process_node: ProcessNode
) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    no_endpoint = cli("predict", NAME, "--data", '{"instances": [[1]]}')
    assert no_endpoint.returncode == 1
    assert "has no endpoint yet" in no_endpoint.stderr
    write_status(
        installed,
        cli.namespace,
        {"url": f"http://{NAME}.{cli.namespace}.svc", "model": "fraud-detector:3"},
    )
    labels = {"pilothouse.dev/deployment": NAME, "pilothouse.dev/component": "router"}
    # the router's Service as the operator makes it (docs/kubernetes.md): port 80 named http
    create(
        installed,
        f"/api/v1/namespaces/{cli.namespace}/services",
        {
            "metadata": {"name": NAME, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        },
    )
    no_router = cli("predict", NAME, "--data", '{"instances": [[1]]}')
    line = refused_once(no_router)
    assert "service proxy answered 503" in line

    create(
        installed,
        f"/api/v1/namespaces/{cli.namespace}/pods",
        {
            "metadata": {"name": f"{NAME}-router-0", "labels": labels},
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
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "router",
                        "image": "pilothouse:test",
                        "command": [sys.executable, "-c", ECHO],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": 8080},
                            "periodSeconds": 1,
                        },
                    }
                ],
            },
        },
    )

    def ready_endpoint() -> bool:
        slices = installed.discovery.list_namespaced_endpoint_slice(
            cli.namespace, label_selector=f"kubernetes.io/service-name={NAME}"
        ).items
        return any(e.conditions and e.conditions.ready for s in slices for e in s.endpoints or [])

    wait_for("the router stand-in ready behind its Service", ready_endpoint, timeout=60)

    v1 = {"instances": [[120.5, 3, 1.5, 0.2]]}
    echoed = json.loads(ok(cli("predict", NAME, "--data", json.dumps(v1))))
    assert echoed == {"path": "/v1/models/fraud-detector:predict", "body": v1}
    v2 = {"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    echoed = json.loads(ok(cli("predict", NAME, "--data", json.dumps(v2))))
    assert echoed == {"path": "/v2/models/fraud-detector/infer", "body": v2}
    # the router's own refusal is the answer: printed, exit 1
    failed = cli("predict", NAME, "--data", json.dumps({"instances": [], "fail": True}))
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["body"]["fail"] is True


# --- what cannot go on: one line, exit 1 ------------------------------------------------------------


def test_a_missing_kubeconfig_or_an_unreachable_cluster_is_one_line(
    cli: Cli, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "kubeconfig"
    line = refused_once(cli("get", "md", kubeconfig=missing))
    assert line == f"error: kubeconfig {missing}: no such file"

    config = yaml.safe_load(cli.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    down = tmp_path / "down.kubeconfig"
    down.write_text(yaml.safe_dump(config))
    line = refused_once(cli("get", "md", kubeconfig=down))
    assert line.startswith("error: cannot reach the cluster at https://127.0.0.1:")

    wrong = refused_once(
        subprocess.run(
            [
                str(PILOTHOUSE),
                "--kubeconfig",
                str(cli.kubeconfig),
                "--context",
                "nope",
                "get",
                "md",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PILOTHOUSE_HOME": str(cli.home), "COLUMNS": "200"},
            timeout=60,
        )
    )
    assert "context 'nope'" in wrong


def test_missing_crds_say_how_to_install_them(k8s_cluster: Cluster, cli: Cli) -> None:
    remove_crds(k8s_cluster)
    for args in (("get", "md"), ("describe", "md", NAME), ("apply", "-f", str(EXAMPLE))):
        line = refused_once(cli(*args))
        assert line == (
            "error: the pilothouse CRDs are not installed in this cluster "
            f"(modeldeployments.{GROUP} is not served); install them with "
            "`pilothouse kube install`"
        ), args


def service_account_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A kubeconfig with the token of a new ServiceAccount that no RBAC rule names."""
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": server}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "nobody",
                        "context": {"cluster": "test", "user": "nobody", "namespace": namespace},
                    }
                ],
                "current-context": "nobody",
            }
        )
    )
    return path


def test_forbidden_says_which_verb_and_resource(
    installed: Cluster, cli: Cli, tmp_path: Path
) -> None:
    ok(cli("apply", "-f", str(EXAMPLE)))
    nobody = service_account_kubeconfig(installed, cli.namespace, tmp_path / "nobody.kubeconfig")
    user = f"system:serviceaccount:{cli.namespace}:nobody"
    line = refused_once(cli("get", "md", kubeconfig=nobody))
    assert line == (
        f'error: forbidden: User "{user}" cannot list resource "modeldeployments" in API '
        f'group "{GROUP}" in the namespace "{cli.namespace}"'
    )
    for args in (
        ("rollout", "promote", NAME),
        ("delete", "md", NAME),
        ("apply", "-f", str(EXAMPLE)),
    ):
        line = refused_once(cli(*args, kubeconfig=nobody))
        assert line.startswith(
            f'error: forbidden: User "{user}" cannot get resource "modeldeployments"'
        ), args
    # nothing changed
    assert requests_of(md_annotations(installed, cli.namespace)).keys() == {"appliedBy"}


def test_the_embedded_only_commands_and_a_lone_namespace_are_refused(cli: Cli) -> None:
    status = cli("status")
    assert status.returncode == 2
    assert "`pilothouse status` works on the embedded control plane" in status.stderr
    lone = subprocess.run(
        [str(PILOTHOUSE), "-n", "team", "get", "md"],
        capture_output=True,
        text=True,
        env={**os.environ, "PILOTHOUSE_HOME": str(cli.home)},
        timeout=60,
    )
    assert lone.returncode == 2
    assert "-n/--namespace goes with --kubeconfig or --context" in lone.stderr
