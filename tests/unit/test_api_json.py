"""Control API bodies: anything but a sane JSON object is a 400 ``Status`` naming what
was expected, never a 500, on every endpoint that takes a body; invalid names in the
path are a 400 too. The real app, called in-process over ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from pilothouse.api.errors import ApiError
from pilothouse.api.server import (
    MAX_JSON_DEPTH,
    create_app,
    parse_json_object,
)
from pilothouse.store.sqlite import Store

TOKEN = "t" * 40
P = "/apis/pilothouse.dev/v1alpha1"
QUEUE = {
    "apiVersion": "pilothouse.dev/v1alpha1",
    "kind": "Queue",
    "metadata": {"name": "q"},
    "spec": {},
}


class Api:
    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
                base_url="http://api",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = Store(tmp_path / "state.db")
    acted: list[tuple[str, str]] = []

    async def node_action(name: str, action: str) -> str:
        acted.append((name, action))
        return f"{action} {name}"

    app = create_app(
        store,
        token=TOKEN,
        on_change=lambda kind, name: None,
        log_files=lambda kind, name: [],
        info=dict,
        node_view=lambda: {"items": [{"name": "gpu-1", "items": []}], "pending": []},
        node_action=node_action,
    )
    yield Api(app)
    store.close()


def deep(levels: int) -> bytes:
    return b'{"items": ' + b"[" * levels + b"]" * levels + b"}"


BAD_BODIES = {
    "too-deep": deep(MAX_JSON_DEPTH + 5),
    "far-too-deep": deep(200_000),
    "int-too-large": b'{"items": [{"spec": {"replicas": 18446744073709551616}}]}',
    "int-just-over-64-bits": b'{"items": [{"spec": {"replicas": 9223372036854775808}}]}',
    "huge-int": b'{"items": [' + b"9" * 5000 + b"]}",
    "not-utf8": b'{"items": ["\xff\xfe"]}',
    "latin1": '{"items": ["caf\xe9"]}'.encode("latin-1"),
    "lone-surrogate": b'{"items": [{"metadata": {"name": "\\ud800"}}]}',
    "nan": b'{"items": [NaN]}',
    "top-level-array": b"[1, 2]",
    "top-level-string": b'"items"',
    "top-level-number": b"3",
    "top-level-null": b"null",
    "empty": b"",
    "not-json": b"{items: [}",
}


ENDPOINTS = [
    ("POST", f"{P}/apply"),
    ("PUT", f"{P}/queues/q"),
    ("POST", f"{P}/modeldeployments/fraud/rollout"),
    ("POST", "/api/v1/nodes/gpu-1/cordon"),
]
CASES = [
    (method, path, case)
    for method, path in ENDPOINTS
    for case in sorted(BAD_BODIES)
    # an empty body is what node actions take
    if not (case == "empty" and "nodes" in path)
]


@pytest.mark.parametrize(("method", "path", "case"), CASES)
def test_bad_bodies_get_400_naming_what_was_expected(
    api: Api, method: str, path: str, case: str
) -> None:
    body = BAD_BODIES[case]
    response = api.request(method, path, content=body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["kind"] == "Status"
    assert payload["reason"] == "BadRequest"
    assert "expected" in payload["message"], payload["message"]


def test_messages_say_what_is_wrong(api: Api) -> None:
    def message(body: bytes) -> str:
        response = api.request("POST", f"{P}/apply", content=body)
        assert response.status_code == 400
        return str(response.json()["message"])

    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message(BAD_BODIES["too-deep"])
    assert "nested deeper" in message(BAD_BODIES["far-too-deep"])
    assert "too large" in message(BAD_BODIES["int-too-large"])
    assert "not UTF-8" in message(BAD_BODIES["not-utf8"])
    assert "a JSON array; expected" in message(b"[1, 2]")
    assert '{"items": [resource, ...]}' in message(b"[1, 2]")
    assert "not valid Unicode" in message(BAD_BODIES["lone-surrogate"])


def test_node_actions_take_an_empty_body_or_an_empty_object(api: Api) -> None:
    for body in (b"", b"{}"):
        response = api.request("POST", "/api/v1/nodes/gpu-1/cordon", content=body)
        assert response.status_code == 200, response.text
        assert response.json()["message"] == "cordon gpu-1"
    response = api.request("POST", "/api/v1/nodes/gpu-1/cordon", content=b'{"force": true}')
    assert response.status_code == 400
    assert "force" in response.json()["message"]


def test_a_good_body_still_applies(api: Api) -> None:
    response = api.request("POST", f"{P}/apply", json={"items": [QUEUE]})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"kind": "Queue", "name": "q", "result": "created"}]
    # a 64-bit integer and a body nested to the limit parse (and are then validated)
    labels = {"metadata": {"name": "q", "annotations": {"x": "y"}}, "n": 2**63 - 1}
    assert parse_json_object(httpx.Request("POST", "/", json=labels).read(), "x") == labels
    nested: Any = {}
    for _ in range(MAX_JSON_DEPTH - 2):  # the body, then 99 levels: 100 in all
        nested = {"a": nested}
    body = {**QUEUE, "metadata": {"name": "q", "annotations": {"deep": "x"}}, "extra": nested}
    response = api.request("PUT", f"{P}/queues/q", json=body)
    assert response.status_code == 422, "parsed, then refused by validation (unknown field)"
    assert "extra" in response.text


def test_overflowing_float_is_still_a_validation_error(api: Api) -> None:
    body = b'{"metadata": {"name": "q"}, "spec": {"priority": 1e400}}'
    response = api.request("PUT", f"{P}/queues/q", content=body)
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        ("GET", f"{P}/modeldeployments/..%2F..%2Fnodes"),
        ("GET", f"{P}/queues/%2E%2E"),
        ("DELETE", f"{P}/modeldeployments/..%2Fqueues%2Fq"),
        ("PUT", f"{P}/queues/q%0A"),
        ("GET", f"{P}/queues/q%3Fx/events"),
        ("POST", "/api/v1/nodes/gpu-1%2F..%2Fx/cordon"),
    ],
)
def test_invalid_names_in_paths_are_400_not_another_object(api: Api, method: str, raw: str) -> None:
    assert api.request("POST", f"{P}/apply", json={"items": [QUEUE]}).status_code == 200
    response = api.request(method, httpx.URL("http://api" + raw), content=b"{}")
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == "BadRequest"
    assert "expected" in response.json()["message"]
    # the queue is still there
    assert api.request("GET", f"{P}/queues/q").status_code == 200


def test_parse_json_object_directly() -> None:
    assert parse_json_object(b'{"a": [1, 2.5, "x"]}', "x") == {"a": [1, 2.5, "x"]}
    with pytest.raises(ApiError) as caught:
        parse_json_object(b'{"a": -9223372036854775809}', "an object")
    assert caught.value.code == 400
    assert "expected an object" in caught.value.message
    assert parse_json_object(b'{"a": -9223372036854775808}', "x") == {"a": -(2**63)}
