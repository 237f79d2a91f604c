"""The embedded control plane: lifecycle, token, API shapes and bad requests."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from tests.integration.conftest import EXAMPLE, Platform, pid_alive, wait_for

pytestmark = pytest.mark.integration

QUEUE = """
apiVersion: pilothouse.dev/v1alpha1
kind: Queue
metadata: {name: research}
spec: {weight: 2, quota: {cpu: "4", memory: 8Gi}}
"""


def test_up_status_down(fresh_platform: Platform) -> None:
    p = fresh_platform
    assert p.cli("status").returncode == 3, "status must say not running before up"
    up = p.cli("up")
    assert up.returncode == 0, up.stderr
    info = p.home.read_daemon_info()
    assert info is not None
    assert info["url"].startswith("http://127.0.0.1:"), "control API binds to loopback by default"
    assert stat.S_IMODE(p.home.token_file.stat().st_mode) == 0o600
    status = p.cli("status", "-o", "json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["running"] is True
    again = p.cli("up")
    assert again.returncode == 0
    assert "already running" in again.stdout
    down = p.cli("down")
    assert down.returncode == 0
    assert not pid_alive(info["pid"])
    assert p.cli("status").returncode == 3


def test_api_requires_token(platform: Platform) -> None:
    info = platform.home.read_daemon_info()
    assert info is not None
    url = info["url"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    plain = httpx.get(f"{url}/apis/pilothouse.dev/v1alpha1/modeldeployments")
    assert plain.status_code == 401
    assert plain.json()["kind"] == "Status"
    wrong = httpx.get(
        f"{url}/apis/pilothouse.dev/v1alpha1/modeldeployments",
        headers={"Authorization": "Bearer not-the-token"},
    )
    assert wrong.status_code == 401
    with platform.api() as api:
        assert api.get("/apis/pilothouse.dev/v1alpha1/modeldeployments").status_code == 200
        doc = api.get("/openapi.json").json()
        assert "/apis/pilothouse.dev/v1alpha1/modeldeployments/{name}" in doc["paths"]
        assert "ModelDeployment" in doc["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "reason"),
    [
        ("POST", "/apis/pilothouse.dev/v1alpha1/apply", b"{not json", 400, "BadRequest"),
        ("POST", "/apis/pilothouse.dev/v1alpha1/apply", b'{"items": []}', 400, "BadRequest"),
        ("POST", "/apis/pilothouse.dev/v1alpha1/apply", b"[1, 2]", 400, "BadRequest"),
        ("GET", "/apis/pilothouse.dev/v1alpha1/widgets", None, 404, "NotFound"),
        ("GET", "/apis/pilothouse.dev/v1alpha1/modeldeployments/nope", None, 404, "NotFound"),
        ("DELETE", "/apis/pilothouse.dev/v1alpha1/trainingjobs/nope", None, 404, "NotFound"),
        ("PUT", "/apis/pilothouse.dev/v1alpha1/queues/a", b"\xff\xfe", 400, "BadRequest"),
        ("PATCH", "/apis/pilothouse.dev/v1alpha1/queues/a", b"{}", 405, "MethodNotAllowed"),
        ("GET", "/no/such/path", None, 404, "NotFound"),
        (
            "PUT",
            "/apis/pilothouse.dev/v1alpha1/queues/q1",
            b'{"metadata": {"name": "q1"}, "spec": {"weight": NaN}}',
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/apis/pilothouse.dev/v1alpha1/queues/q1",
            b'{"metadata": {"name": "q1"}, "spec": {"weight": Infinity}}',
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/apis/pilothouse.dev/v1alpha1/queues/q1",
            b'{"metadata": {"name": "q1"}, "spec": {"priority": ' + b"9" * 5000 + b"}}",
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/apis/pilothouse.dev/v1alpha1/queues/q1",
            b'{"metadata": {"name": "q1", "labels": {"a": "\\ud800"}}, "spec": {}}',
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/apis/pilothouse.dev/v1alpha1/queues/q1",
            b'{"metadata": {"name": "q1"}, "spec": {"priority": 1e400}}',
            422,
            "Invalid",
        ),
    ],
)
def test_bad_requests_get_4xx_status(
    platform: Platform, method: str, path: str, body: bytes | None, code: int, reason: str
) -> None:
    with platform.api() as api:
        response = api.request(method, path, content=body)
    assert response.status_code == code
    payload = response.json()
    assert payload["kind"] == "Status"
    assert payload["reason"] == reason
    assert payload["message"]


def test_invalid_batch_applies_nothing(platform: Platform) -> None:
    good = {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "good"},
        "spec": {},
    }
    bad = {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bad"},
        "spec": {"model": "m:1", "replicas": -3},
    }
    with platform.api() as api:
        response = api.post("/apis/pilothouse.dev/v1alpha1/apply", json={"items": [good, bad]})
        assert response.status_code == 422
        causes = response.json()["details"]["causes"]
        assert [c["field"] for c in causes] == ["spec.replicas"]
        assert causes[0]["document"] == 2
        assert api.get("/apis/pilothouse.dev/v1alpha1/queues").json()["items"] == []
        mismatch = api.put("/apis/pilothouse.dev/v1alpha1/queues/other", json=good)
        assert mismatch.status_code == 400
        created = api.put("/apis/pilothouse.dev/v1alpha1/queues/good", json=good)
        assert created.status_code == 201
        assert created.headers["x-apply-result"] == "created"


def test_apply_is_idempotent_and_updates_in_place(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "queue.yaml"
    spec.write_text(QUEUE)
    first = platform.cli("apply", "-f", str(spec))
    assert first.returncode == 0
    assert "queue.pilothouse.dev/research created" in first.stdout
    # the controller writes the status (a new resourceVersion) once it has seen the queue:
    # compare from there on
    before = wait_for(
        "the queue's status",
        lambda: (
            (q := platform.get_json("queues", "research"))["status"].get("observedGeneration") == 1
            and q
        ),
        timeout=30,
    )
    second = platform.cli("apply", "-f", str(spec))
    assert second.returncode == 0
    assert "unchanged" in second.stdout
    after = platform.get_json("queues", "research")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == 1
    spec.write_text(QUEUE.replace("weight: 2", "weight: 3"))
    third = platform.cli("apply", "-f", str(spec))
    assert "configured" in third.stdout
    updated = platform.get_json("queues", "research")
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == before["metadata"]["uid"]
    assert updated["spec"]["weight"] == 3


def test_cli_rejects_bad_files_and_applies_nothing(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mixed.yaml"
    path.write_text(
        QUEUE
        + """---
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud}
spec:
  model: fraud-detector:1
  replicass: 2
  resources: {cpu: lots}
"""
    )
    result = platform.cli("apply", "-f", str(path))
    assert result.returncode == 2
    assert f"{path}:" in result.stderr
    assert "document 2" in result.stderr
    assert "spec.replicass" in result.stderr
    assert "did you mean 'replicas'" in result.stderr
    assert "spec.resources.cpu" in result.stderr
    assert "nothing was applied" in result.stderr
    assert platform.get_json("queues")["items"] == []

    from_stdin = platform.cli("apply", "-f", "-", input_text="kind: Nope\n")
    assert from_stdin.returncode == 2
    assert "<stdin>" in from_stdin.stderr


def test_schema_and_folder_apply(platform: Platform) -> None:
    schema = platform.cli("schema", "modeldeployment")
    assert schema.returncode == 0
    assert "replicas" in json.loads(schema.stdout)["properties"]["spec"]["properties"]
    assert platform.cli("schema", "widget").returncode == 2
    result = platform.cli("apply", "-f", str(EXAMPLE / "queue.yaml"))
    assert result.returncode == 0, result.stderr
    names = platform.cli("get", "queues", "-o", "name")
    assert names.stdout.split() == ["queue/default"]
    deleted = platform.cli("delete", "queue", "default")
    assert deleted.returncode == 0
    wait_for("queue gone", lambda: platform.get_json("queues")["items"] == [], timeout=10)


def test_empty_token_file_is_replaced_not_trusted(fresh_platform: Platform) -> None:
    p = fresh_platform
    p.home.ensure()
    p.home.token_file.write_text("")
    assert p.cli("up").returncode == 0
    token = p.home.token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(p.home.token_file.stat().st_mode) == 0o600
    info = p.home.read_daemon_info()
    assert info is not None
    empty = httpx.get(
        f"{info['url']}/apis/pilothouse.dev/v1alpha1/queues", headers={"Authorization": "Bearer"}
    )
    assert empty.status_code == 401
