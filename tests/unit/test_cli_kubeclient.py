"""``KubeClient``: the CLI's commands against a cluster, over a fake API server.

The fake keeps objects as plain dicts and answers as the API server does (404 for what is
not there, resourceVersion and generation that move only when something changes); the
real API server is tests/k8s/test_cli_kube.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pilothouse.api.client import ApiClientError
from pilothouse.cli import kubeclient
from pilothouse.cli.kubeclient import (
    ClusterError,
    ClusterTarget,
    KubeClient,
    event_row,
    pod_row,
)
from pilothouse.cli.main import cli
from pilothouse.policy.rollout import request_values
from pilothouse.runtime.kube.client import Kube, KubeError, KubeUnreachable
from pilothouse.spec.resources import API_VERSION

NS = "team"
SERVER = "https://cluster.example:6443"
PREFIX = "pilothouse.dev/request."
SERVED = {"resources": [{"name": p} for p in ("modeldeployments", "trainingjobs", "queues")]}


def status_error(code: int, reason: str, message: str, **details: Any) -> KubeError:
    body = {"kind": "Status", "code": code, "reason": reason, "message": message}
    if details:
        body["details"] = details
    return KubeError(code, reason, message, body)


class FakeResponse:
    def __init__(self, status: int, chunks: list[bytes]) -> None:
        self.status, self.reason, self._chunks = status, "OK" if status < 400 else "Bad", chunks
        self.content = self

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await asyncio.sleep(0)
            yield chunk


class FakeKube:
    """The part of ``runtime.kube.client.Kube`` the CLI uses, on dicts in memory."""

    path = Kube.path

    def __init__(self) -> None:
        self.namespace = NS
        self.api = type("Api", (), {"configuration": type("C", (), {"host": SERVER})()})()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.logs: dict[str, list[bytes]] = {}
        self.writes: list[tuple[str, Any]] = []
        self.served: dict[str, Any] | None = SERVED
        self.fail: dict[str, Exception] = {}
        self.conflicts = 0
        self.version = 100
        self.closed = False

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def add(self, kind: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        self.objects[(kind, name)] = {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "generation": 1,
                "resourceVersion": self._next_version(),
                "managedFields": [{"manager": "x"}],
            },
            "spec": spec,
            "status": status,
        }

    async def get(self, api_version: str, kind: str, ns: str | None, name: str) -> Any:
        if "get" in self.fail:
            raise self.fail["get"]
        found = self.objects.get((kind, name))
        return copy.deepcopy(found)

    async def list(
        self,
        api_version: str,
        kind: str,
        ns: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        if "list" in self.fail:
            raise self.fail["list"]
        if kind == "Pod":
            key, _, value = (label_selector or "=").partition("=")
            return [
                copy.deepcopy(p)
                for p in self.pods
                if not key or (p["metadata"].get("labels") or {}).get(key) == value
            ]
        if kind == "Event":
            wanted = dict(part.split("=") for part in (field_selector or "").split(",") if part)
            return [
                e
                for e in self.events
                if all(e["regarding"].get(k.split(".")[1]) == v for k, v in wanted.items())
            ]
        if self.served is None:
            raise status_error(404, "NotFound", "the server could not find the requested resource")
        return [copy.deepcopy(o) for (k, _), o in sorted(self.objects.items()) if k == kind]

    async def patch(
        self,
        api_version: str,
        kind: str,
        ns: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        self.writes.append((patch_type, copy.deepcopy(patch)))
        obj = self.objects[(kind, name)]
        if self.conflicts:
            self.conflicts -= 1
            obj["metadata"]["resourceVersion"] = self._next_version()  # someone else wrote
            raise status_error(409, "Conflict", "the object has been modified")
        if patch_type == "merge":
            meta = patch["metadata"]
            assert meta["resourceVersion"] == obj["metadata"]["resourceVersion"]
            obj["metadata"].setdefault("annotations", {}).update(meta["annotations"])
        else:
            test, replace, add = patch
            assert test["value"] == obj["metadata"]["resourceVersion"]
            obj["spec"] = replace["value"]
            obj["metadata"]["annotations"] = add["value"]
            obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = self._next_version()
        return copy.deepcopy(obj)

    async def delete(
        self, api_version: str, kind: str, ns: str | None, name: str, *, propagation: str = ""
    ) -> bool:
        self.writes.append(("delete", (kind, name, propagation)))
        return self.objects.pop((kind, name), None) is not None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", obj))
        self.events.append(obj)
        return obj

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = 30,  # noqa: ASYNC109 - the real one's signature
    ) -> Any:
        if path == f"/apis/{API_VERSION}":
            if self.served is None:
                raise status_error(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return self.served
        if "/proxy/" in path:
            self.writes.append(("proxy", (path, body)))
            if "fail" in body:
                raise KubeError(422, "Unprocessable", "bad", {"error": "bad input"})
            return {"predictions": [0.1]}
        assert method == "PATCH"
        body = copy.deepcopy(body)
        query = query or {}
        assert query["fieldManager"] == "pilothouse-cli"
        name, kind = body["metadata"]["name"], body["kind"]
        refusal = self.fail.get(f"apply {name}")
        if refusal is not None:
            raise refusal
        dry = query.get("dryRun") == "All"
        self.writes.append(("dry-apply" if dry else "apply", copy.deepcopy(body)))
        old = self.objects.get((kind, name))
        new = copy.deepcopy(old) if old else None
        if new is None:
            new = {
                "apiVersion": API_VERSION,
                "kind": kind,
                "metadata": {"name": name, "generation": 1},
            }
            new["metadata"]["resourceVersion"] = "0"
        changed = old is None or old["spec"] != body["spec"]
        meta_changed = old is None or (old["metadata"].get("annotations") or {}) != (
            body["metadata"].get("annotations") or {}
        )
        if old is not None and changed:
            new["metadata"]["generation"] += 1
        new["spec"] = body["spec"]
        new["metadata"]["annotations"] = body["metadata"].get("annotations") or {}
        if changed or meta_changed:
            new["metadata"]["resourceVersion"] = "dry" if dry else self._next_version()
        if not dry:
            self.objects[(kind, name)] = new
        return copy.deepcopy(new)

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        query: Any,
        body: Any,
        content_type: Any,
        timeout: Any,  # noqa: ASYNC109 - the real one's signature
    ) -> AsyncIterator[FakeResponse]:
        pod = path.split("/")[-2]
        if "logs" in self.fail:
            raise self.fail["logs"]
        chunks = self.logs.get(pod)
        if chunks is None:
            yield FakeResponse(400, [b'{"kind": "Status", "message": "waiting to start"}'])
            return
        if query.get("tailLines"):
            lines = b"".join(chunks).splitlines(keepends=True)
            chunks = lines[-int(query["tailLines"]) :]
        yield FakeResponse(200, chunks)

    async def close(self) -> None:
        self.closed = True


def connect_to(fake: FakeKube) -> Any:
    async def connect(target: ClusterTarget) -> Any:
        return fake

    return connect


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def kube(fake: FakeKube) -> Any:
    c = KubeClient(ClusterTarget("k", None, NS), connect=connect_to(fake))
    yield c
    c.close()


def deployment(fake: FakeKube, **status: Any) -> None:
    fake.add("ModelDeployment", "fraud", {"model": "fraud:latest"}, status)


# --- shapes -----------------------------------------------------------------------------------


def test_a_pod_looks_like_the_embedded_pods_items() -> None:
    pod = {
        "metadata": {
            "name": "fraud-2-ab-x",
            "labels": {"pilothouse.dev/component": "replica", "pilothouse.dev/revision": "2-ab"},
        },
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                }
            ],
        },
    }
    row = pod_row(pod)
    assert row == {
        "id": "fraud-2-ab-x",
        "node": "node-1",
        "phase": "Running",
        "ready": False,
        "revision": "2-ab",
        "component": "replica",
        "restarts": 3,
        "pid": None,
        "endpoint": "10.0.0.7",
        "exitCode": None,
        "message": "3 restart(s); CrashLoopBackOff: back-off",
    }
    router = {"metadata": {"name": "r", "labels": {"pilothouse.dev/component": "router"}}}
    assert pod_row(router)["revision"] == "router"


def test_an_event_looks_like_the_embedded_events() -> None:
    event = {
        "type": "Warning",
        "reason": "Unhealthy",
        "note": "readiness probe failed",
        "eventTime": "2024-05-01T10:00:00.123456Z",
        "series": {"count": 4, "lastObservedTime": "2024-05-01T10:05:00.999999Z"},
    }
    assert event_row(event, "pod/x: ") == {
        "type": "Warning",
        "reason": "Unhealthy",
        "message": "pod/x: readiness probe failed",
        "count": 4,
        "firstTimestamp": "2024-05-01T10:00:00Z",
        "lastTimestamp": "2024-05-01T10:05:00Z",
    }


# --- objects ----------------------------------------------------------------------------------


def test_get_and_list_show_objects_without_managed_fields(kube: KubeClient, fake: FakeKube) -> None:
    deployment(fake)
    obj = kube.get("modeldeployments", "fraud")
    assert obj["kind"] == "ModelDeployment"
    assert "managedFields" not in obj["metadata"]
    assert [o["metadata"]["name"] for o in kube.list_objects("modeldeployments")] == ["fraud"]
    with pytest.raises(ApiClientError) as missing:
        kube.get("modeldeployments", "other")
    assert missing.value.code == 404
    assert str(missing.value) == "ModelDeployment 'other' not found in namespace 'team'"


def test_missing_crds_forbidden_unauthorized_and_unreachable_are_cluster_errors(
    kube: KubeClient, fake: FakeKube
) -> None:
    fake.served = None
    with pytest.raises(ClusterError, match="pilothouse kube install"):
        kube.get("modeldeployments", "fraud")
    fake.served = SERVED
    fake.fail["list"] = status_error(
        403,
        "Forbidden",
        'modeldeployments.pilothouse.dev is forbidden: User "bob" cannot list resource '
        '"modeldeployments" in API group "pilothouse.dev" in the namespace "team"',
    )
    with pytest.raises(ClusterError) as forbidden:
        kube.list_objects("modeldeployments")
    assert str(forbidden.value) == (
        'forbidden: User "bob" cannot list resource "modeldeployments" in API group '
        '"pilothouse.dev" in the namespace "team"'
    )
    fake.fail["list"] = status_error(403, "Forbidden", "denied by policy")
    with pytest.raises(
        ClusterError, match=r"may not list modeldeployments\.pilothouse\.dev in namespace 'team'"
    ):
        kube.list_objects("modeldeployments")
    fake.fail["get"] = KubeUnreachable("GET /x: ClientConnectorError: refused")
    with pytest.raises(ClusterError, match=f"cannot reach the cluster at {SERVER}: GET /x"):
        kube.get("modeldeployments", "fraud")
    fake.fail["get"] = status_error(401, "Unauthorized", "Unauthorized")
    with pytest.raises(ClusterError, match="401 Unauthorized"):
        kube.get("modeldeployments", "fraud")


def test_delete_deletes_what_runs_first(kube: KubeClient, fake: FakeKube) -> None:
    deployment(fake)
    kube.delete("modeldeployments", "fraud")
    assert fake.writes == [("delete", ("ModelDeployment", "fraud", "Foreground"))]
    with pytest.raises(ApiClientError) as gone:
        kube.delete("modeldeployments", "fraud")
    assert gone.value.code == 404


# --- apply ------------------------------------------------------------------------------------


def doc(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": "default", "uid": "stale", "labels": {}},
        "spec": spec,
    }


def test_apply_says_created_unchanged_configured_and_who_applied(
    kube: KubeClient, fake: FakeKube
) -> None:
    docs = [doc("Queue", "research", weight=2), doc("ModelDeployment", "fraud", model="m:1")]
    assert [r["result"] for r in kube.apply(docs)] == ["created", "created"]
    md = fake.objects[("ModelDeployment", "fraud")]
    applied_by = md["metadata"]["annotations"][PREFIX + "appliedBy"]
    assert "@" in applied_by
    sent = [body for what, body in fake.writes if what == "apply"]
    assert sent[0]["metadata"] == {"name": "research", "namespace": NS}  # no uid, its namespace
    assert [r["result"] for r in kube.apply(docs)] == ["unchanged", "unchanged"]
    md["metadata"]["annotations"][PREFIX + "appliedBy"] = "alice@laptop"
    docs[1]["spec"]["model"] = "m:2"
    assert [r["result"] for r in kube.apply(docs)] == ["unchanged", "configured"]
    assert fake.objects[("ModelDeployment", "fraud")]["metadata"]["annotations"] == {
        PREFIX + "appliedBy": applied_by
    }
    # unchanged keeps who applied it last
    fake.objects[("ModelDeployment", "fraud")]["metadata"]["annotations"][PREFIX + "appliedBy"] = (
        "alice@laptop"
    )
    assert [r["result"] for r in kube.apply(docs)] == ["unchanged", "unchanged"]


def test_apply_writes_nothing_when_the_cluster_refuses_one_document(
    kube: KubeClient, fake: FakeKube
) -> None:
    fake.fail["apply fraud"] = status_error(
        422,
        "Invalid",
        'ModelDeployment "fraud" is invalid: spec.replicas: Invalid value',
        causes=[
            {
                "field": "spec.replicas",
                "message": "Invalid value: -1",
                "reason": "FieldValueInvalid",
            }
        ],
    )
    docs = [doc("Queue", "research", weight=2), doc("ModelDeployment", "fraud", model="m:1")]
    with pytest.raises(ApiClientError) as refused:
        kube.apply(docs)
    assert refused.value.code == 422
    assert refused.value.body["details"]["causes"] == [
        {
            "source": "cluster",
            "document": 2,
            "field": "spec.replicas",
            "message": "Invalid value: -1",
        }
    ]
    assert [what for what, _ in fake.writes] == ["dry-apply"]
    assert fake.objects == {}


def test_apply_refuses_a_document_of_another_namespace(kube: KubeClient, fake: FakeKube) -> None:
    other = doc("Queue", "research", weight=2)
    other["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(ApiClientError) as refused:
        kube.apply([other])
    assert refused.value.body["details"]["causes"][0]["field"] == "metadata.namespace"
    assert fake.writes == []


# --- rollouts ---------------------------------------------------------------------------------


def test_rollout_requests_are_the_policys_values_for_the_status_read(
    kube: KubeClient, fake: FakeKube
) -> None:
    deployment(fake, rollout={"canaryRevision": "2-ab", "abortedRevision": None})
    fake.conflicts = 1  # the status changed between read and write: read again
    kube.rollout_action("fraud", "promote", full=True)
    annotations = fake.objects[("ModelDeployment", "fraud")]["metadata"]["annotations"]
    nonce = annotations[PREFIX + "resume"]
    assert annotations == {
        PREFIX + k: v for k, v in request_values("promote", "2-ab", None, nonce, full=True).items()
    }
    assert len(fake.writes) == 2

    with pytest.raises(ApiClientError) as nothing:
        kube.rollout_action("fraud", "retry")
    assert nothing.value.code == 409
    assert (
        str(nothing.value)
        == "modeldeployment 'fraud' has no aborted or rolled back rollout to retry"
    )


def test_undo_puts_the_template_back_and_says_who(kube: KubeClient, fake: FakeKube) -> None:
    deployment(
        fake,
        rollout={"desiredRevision": "2-b"},
        history=[
            {"number": 1, "revision": "1-a", "model": "fraud:1", "template": {"model": "fraud:1"}},
            {
                "number": 2,
                "revision": "2-b",
                "model": "fraud:2",
                "template": {"model": "fraud:latest"},
            },
        ],
    )
    updated = kube.rollout_action("fraud", "undo")
    assert updated["spec"]["model"] == "fraud:1"
    assert updated["metadata"]["annotations"][PREFIX + "appliedBy"].endswith("(undo to revision 1)")
    [event] = [body for what, body in fake.writes if what == "create"]
    assert event["reason"] == "RolloutUndone"
    assert event["regarding"]["uid"] == "uid-fraud"
    with pytest.raises(ApiClientError) as unknown:
        kube.rollout_action("fraud", "undo", toRevision=5)
    assert unknown.value.code == 409


# --- describe, logs, predict ------------------------------------------------------------------


def pod(name: str, component: str, revision: str | None = None) -> dict[str, Any]:
    labels = {"pilothouse.dev/deployment": "fraud", "pilothouse.dev/component": component}
    if revision:
        labels["pilothouse.dev/revision"] = revision
    return {
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": component}]},
        "status": {"phase": "Running"},
    }


def test_events_are_the_objects_and_its_pods(kube: KubeClient, fake: FakeKube) -> None:
    deployment(fake)
    fake.pods = [pod("fraud-router-a", "router"), pod("fraud-1-a-x", "replica", "1-a")]
    regarding = {"kind": "ModelDeployment", "name": "fraud", "uid": "uid-fraud"}
    fake.events = [
        {
            "reason": "Scaled",
            "note": "up",
            "eventTime": "2024-01-01T00:00:02.0Z",
            "regarding": regarding,
        },
        {
            "reason": "Old",
            "note": "of an earlier object of that name",
            "eventTime": "2024-01-01T00:00:00.0Z",
            "regarding": {**regarding, "uid": "uid-before"},
        },
        {
            "reason": "Pulled",
            "note": "image",
            "eventTime": "2024-01-01T00:00:01.0Z",
            "regarding": {"kind": "Pod", "name": "fraud-1-a-x"},
        },
    ]
    rows = kube.events("modeldeployments", "fraud")
    assert [(r["reason"], r["message"]) for r in rows] == [
        ("Pulled", "pod/fraud-1-a-x: image"),
        ("Scaled", "up"),
    ]
    assert [p["id"] for p in kube.pods("modeldeployments", "fraud")] == [
        "fraud-1-a-x",
        "fraud-router-a",
    ]


def test_logs_of_every_pod_and_followed_until_the_object_is_gone(
    kube: KubeClient, fake: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment(fake)
    fake.pods = [pod("fraud-1-a-x", "replica", "1-a"), pod("fraud-router-a", "router")]
    fake.logs = {"fraud-1-a-x": [b"one\ntw", b"o\n"], "fraud-router-a": [b"routed\n"]}
    assert list(kube.logs("modeldeployments", "fraud", tail=1)) == [
        "[fraud-1-a-x] two",
        "[fraud-router-a] routed",
    ]

    monkeypatch.setattr(kubeclient, "FOLLOW_POLL_SECONDS", 0.01)
    followed = kube.logs("modeldeployments", "fraud", follow=True)
    seen = {next(followed), next(followed), next(followed)}
    assert seen == {"[fraud-1-a-x] one", "[fraud-1-a-x] two", "[fraud-router-a] routed"}
    # a pod that starts meanwhile is followed too; the end comes when the object is gone
    fake.pods.append(pod("fraud-1-a-y", "replica", "1-a"))
    fake.logs["fraud-1-a-y"] = [b"late\n"]
    assert next(followed) == "[fraud-1-a-y] late"
    del fake.objects[("ModelDeployment", "fraud")]
    assert list(followed) == []


def test_a_followed_log_that_breaks_is_a_cluster_error(
    kube: KubeClient, fake: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment(fake)
    fake.pods = [pod("fraud-1-a-x", "replica", "1-a")]
    fake.fail["logs"] = KubeUnreachable("GET /api/v1/.../log: connection reset")
    monkeypatch.setattr(kubeclient, "FOLLOW_POLL_SECONDS", 0.01)
    with pytest.raises(ClusterError, match=r"cannot reach the cluster at .*connection reset"):
        list(kube.logs("modeldeployments", "fraud", follow=True))


def test_predict_posts_through_the_service_proxy(kube: KubeClient, fake: FakeKube) -> None:
    code, body = kube.predict("fraud", "/v1/models/fraud:predict", {"instances": [[1]]})
    assert (code, body) == (200, {"predictions": [0.1]})
    assert fake.writes == [
        (
            "proxy",
            (
                f"/api/v1/namespaces/{NS}/services/fraud:80/proxy/v1/models/fraud:predict",
                {"instances": [[1]]},
            ),
        )
    ]
    assert kube.predict("fraud", "/v1/models/fraud:predict", {"fail": 1}) == (
        422,
        {"error": "bad input"},
    )


# --- the command line chooses the backend -------------------------------------------------------


def test_kubeconfig_or_context_choose_the_cluster(
    fake: FakeKube, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen: list[ClusterTarget] = []

    async def connect(target: ClusterTarget) -> Any:
        chosen.append(target)
        return fake

    monkeypatch.setattr(kubeclient, "_connect", connect)
    monkeypatch.setenv("PILOTHOUSE_HOME", str(tmp_path))
    deployment(fake, readyReplicas=1, desiredReplicas=2)
    runner = CliRunner()
    result = runner.invoke(cli, ["--kubeconfig", "kc", "-n", NS, "get", "md", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [i["metadata"]["name"] for i in json.loads(result.output)["items"]] == ["fraud"]
    assert chosen == [ClusterTarget("kc", None, NS)]
    assert fake.closed

    result = runner.invoke(cli, ["--context", "prod", "describe", "md", "other"])
    assert result.exit_code == 2
    assert "ModelDeployment 'other' not found in namespace 'team'" in result.output
    assert chosen[-1] == ClusterTarget(None, "prod", None)

    lone = runner.invoke(cli, ["-n", NS, "get", "md"])
    assert lone.exit_code == 2
    assert "-n/--namespace goes with --kubeconfig or --context" in lone.output
    embedded = runner.invoke(cli, ["--kubeconfig", "kc", "up"])
    assert embedded.exit_code == 2
    assert "`pilothouse up` works on the embedded control plane" in embedded.output

    fake.served = None
    missing = runner.invoke(cli, ["--kubeconfig", "kc", "get", "md"])
    assert missing.exit_code == 1
    assert "install them with `pilothouse kube install`" in missing.output
