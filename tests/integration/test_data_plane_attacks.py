"""The data plane attacked as a client on loopback would: a real daemon, its router and
real replica processes. Each test names the attack and checks the state of the world
afterwards (who got which response, what stayed in rotation, what was rolled back, what
the daemon holds), never a count of calls.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import resource
import signal
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from pilothouse.api.client import Client
from pilothouse.registry.local import ModelVersion
from tests.integration.conftest import Platform, pid_alive, replicas, wait_for
from tests.integration.rollout_models import MODEL, BackgroundLoad, Rows, _custom, register_v1

pytestmark = pytest.mark.integration

#: a custom model that answers like v1 but raises (-> 500 at the replica) for any row
#: whose first feature is POISON: a request that fails on every replica of every revision
POISON = -4242.0
POISON_MODEL = f"""
from pathlib import Path

import joblib
import numpy as np


class Model:
    def load(self, path):
        self.inner = joblib.load(Path(path) / "inner.joblib")

    def predict(self, features):
        x = np.asarray(features, dtype=np.float64)
        if (x[:, 0] == {POISON!r}).any():
            raise RuntimeError("poisoned row")
        return self.inner.predict_proba(x)[:, 1]
"""
PROBES = {"readiness": {"path": "/v2/health/ready", "period": "1s"}}


def _doc(name: str, version: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": f"{MODEL}:{version}",
            "replicas": 2,
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "probes": PROBES,
            **spec,
        },
    }


def _status(api: Client, name: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get("modeldeployments", name).get("status") or {}
    return status


def _ready(api: Client, name: str, count: int = 2) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        st = _status(api, name)
        ready = [r for r in replicas(api, name) if r["ready"]]
        return st if len(ready) >= count and st.get("url") else None

    return wait_for(f"{count} ready replicas of {name}", probe, timeout=90, every=0.2)


def _endpoint(status: dict[str, Any]) -> tuple[str, int]:
    """(host, port) of a deployment's router endpoint, from its status.url."""
    url = urlsplit(status["url"])
    return url.hostname or "127.0.0.1", url.port or 80


def _body(row: np.ndarray, request_id: str) -> bytes:
    return json.dumps(
        {
            "id": request_id,
            "inputs": [
                {"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}
            ],
        }
    ).encode()


def _router_metric(platform: Platform, name: str, deployment: str) -> float:
    with platform.api() as api:
        text = api.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'deployment="{deployment}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _replica_requests(endpoint: str) -> float:
    text = httpx.get(f"http://{endpoint}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pilothouse_model_requests_total{")
    )


@pytest.fixture(scope="module")
def versions(shared_platform: Platform) -> dict[str, ModelVersion]:
    root = shared_platform.home.models
    v1 = register_v1(root)
    poison_a = _custom(root, v1, POISON_MODEL, {}, {"scenario": "poison"})
    poison_b = _custom(root, v1, POISON_MODEL, {}, {"scenario": "poison", "retrain": 2})
    assert (v1.version, poison_a.version, poison_b.version) == (1, 2, 3)
    return {"v1": v1, "poison_a": poison_a, "poison_b": poison_b}


# ------------------------------------------------------------------- request smuggling

SMUGGLED_ID = "smuggled-request"


def _smuggling_attempts(path: str, body: bytes) -> list[bytes]:
    """Requests that each try to make a replica see a second request of the attacker's."""
    inner = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    get = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n"
    return [
        # a bare LF inside a header value, then the smuggled request
        get + b"x-note: a\n\n" + inner,
        get + b"x-note: a\nx-other: b\r\n\r\n" + inner,
        # a bare CR, a NUL, obsolete line folding
        get + b"x-note: a\rb\r\n\r\n" + inner,
        get + b"x-note: a\x00b\r\n\r\n" + inner,
        get + b"x-note: a\r\n folded\r\n\r\n" + inner,
        # framing disagreements (CL.TE / TE.CL / two lengths / other encodings)
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".encode()
        + inner,
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: {len(inner)}\r\n\r\n".encode()
        + inner,
        f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n".encode()
        + inner,
        f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".encode()
        + inner,
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: +{len(body)}\r\n\r\n".encode() + body,
        # a request line with an LF in the target, an invalid method
        b"GET /v2/health/live\nx HTTP/1.1\r\nhost: x\r\n\r\n" + inner,
        b"G\x01T /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n" + inner,
    ]


async def _raw(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    finally:
        writer.close()


async def _honest_client(
    host: str, port: int, path: str, rows: np.ndarray, client: int, n: int
) -> list[tuple[str, int, str]]:
    """n keep-alive requests with ids of their own; (sent id, status, id in the answer)."""
    out = []
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in range(n):
            request_id = f"client-{client}-{i}"
            body = _body(rows[(client * n + i) % len(rows)], request_id)
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])  # type: ignore[index]
                answer = await reader.readexactly(length)
            status = int(head.split(b" ", 2)[1])
            got = json.loads(answer).get("id", "") if status == 200 else ""
            out.append((request_id, status, got))
    finally:
        writer.close()
    return out


def test_smuggled_bytes_never_reach_a_replica_nor_another_client(
    shared_platform: Platform,
    versions: dict[str, ModelVersion],
    api: Client,
    deployments: list[str],
) -> None:
    name = "smuggle"
    deployments.append(name)
    api.apply([_doc(name, versions["v1"].version)])
    st = _ready(api, name)
    host, port = _endpoint(st)
    path = f"/v2/models/{MODEL}/infer"
    rows = Rows.for_version(versions["v1"], n=64).features
    endpoints = [r["endpoint"] for r in replicas(api, name)]
    assert len(endpoints) == 2
    before = sum(_replica_requests(e) for e in endpoints)
    attempts = _smuggling_attempts(path, _body(rows[0], SMUGGLED_ID))

    async def scenario() -> tuple[list[bytes], list[list[tuple[str, int, str]]]]:
        honest = [
            asyncio.create_task(_honest_client(host, port, path, rows, c, 25)) for c in range(12)
        ]
        refused = []
        for _ in range(5):  # attackers interleaved with the honest clients' requests
            refused += await asyncio.gather(*(_raw(host, port, a) for a in attempts))
        return refused, await asyncio.gather(*honest)

    refused, honest = asyncio.run(scenario())
    for attempt, answer in zip(attempts * 5, refused, strict=True):
        assert re.match(rb"HTTP/1\.1 (400|501|505) ", answer), (attempt[:80], answer[:200])
        assert answer.count(b"HTTP/1.1 ") == 1, ("one answer, then the connection closed", answer)
        assert SMUGGLED_ID.encode() not in answer
    answers = [a for client in honest for a in client]
    assert len(answers) == 12 * 25
    assert all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:5]
    assert [sent for sent, _, _ in answers] == [got for _, _, got in answers], (
        "every client got its own response"
    )
    # the replicas served exactly the honest requests: no smuggled one reached them
    after = sum(_replica_requests(e) for e in endpoints)
    assert after - before == len(answers), (before, after, len(answers))


# ------------------------------------------------------- failures every replica shares


def test_requests_failing_on_every_replica_eject_nothing(
    shared_platform: Platform,
    versions: dict[str, ModelVersion],
    api: Client,
    deployments: list[str],
) -> None:
    name = "poisoned"
    deployments.append(name)
    api.apply([_doc(name, versions["poison_a"].version, batching={"maxBatchSize": 1})])
    st = _ready(api, name)
    path = f"{st['url']}/v2/models/{MODEL}/infer"
    rows = Rows.for_version(versions["v1"], n=64).features
    poison = rows[0].copy()
    poison[0] = POISON
    ejected_before = _router_metric(shared_platform, "pilothouse_router_ejections_total", name)

    async def scenario() -> tuple[list[int], list[int]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def send(row: np.ndarray, i: int) -> int:
                r = await client.post(path, content=_body(row, f"r{i}"))
                return r.status_code

            bad = [send(poison, i) for i in range(100)]
            good = [send(rows[i % len(rows)], i) for i in range(100)]
            mixed = [x for pair in zip(bad, good, strict=True) for x in pair]
            statuses = await asyncio.gather(*mixed)
            after = await asyncio.gather(*(send(rows[i % len(rows)], i) for i in range(40)))
        return list(statuses), list(after)

    statuses, after = asyncio.run(scenario())
    assert statuses[0::2] == [500] * 100, "a poisoned request fails: the model raises for it"
    assert statuses[1::2] == [200] * 100, "good requests keep succeeding meanwhile"
    assert after == [200] * 40
    ejected = _router_metric(shared_platform, "pilothouse_router_ejections_total", name)
    assert ejected == ejected_before, "failures every replica shares eject no replica"
    st = _status(api, name)
    assert st["readyReplicas"] == 2
    assert sum(1 for r in replicas(api, name) if r["ready"]) == 2


def test_a_canary_is_not_rolled_back_for_requests_the_stable_revision_fails_too(
    shared_platform: Platform,
    versions: dict[str, ModelVersion],
    api: Client,
    deployments: list[str],
) -> None:
    name = "poison-canary"
    deployments.append(name)
    rollout = {
        "strategy": "canary",
        "canary": {
            "steps": [
                {"setWeight": 50},
                {"pause": {"duration": "2s"}},
                {"setWeight": 100},
            ]
        },
        "analysis": {
            "interval": "2s",
            "minSamples": 10,
            "checks": [{"name": "errors", "metric": "errorRate", "max": 0.05}],
        },
    }
    batching = {"maxBatchSize": 1}
    api.apply([_doc(name, versions["poison_a"].version, rollout=rollout, batching=batching)])
    st = _ready(api, name)
    stable = st["rollout"]["stableRevision"]
    rows = Rows.for_version(versions["v1"], n=100)
    # a third of the traffic is poisoned: it fails on the stable revision and the canary
    for i in range(0, len(rows), 3):
        row = rows.features[i].copy()
        row[0] = POISON
        rows.bodies[i] = _body(row, f"poison-{i}")
    load = BackgroundLoad(st["url"], rows, 40.0, 60.0, max_requests=2400, request_timeout=10)
    try:
        api.apply([_doc(name, versions["poison_b"].version, rollout=rollout, batching=batching)])

        def ended() -> dict[str, Any] | None:
            st = _status(api, name)
            rollout = st.get("rollout") or {}
            if rollout.get("phase") == "Degraded":
                return st
            done = rollout.get("phase") == "Healthy" and rollout.get("stableRevision") != stable
            return st if done else None

        final = wait_for("the rollout to end", ended, timeout=90, every=0.2)
        result = load.finish()
    finally:
        load.stop()
    rollout_status = final["rollout"]
    assert rollout_status["phase"] == "Healthy", rollout_status.get("message")
    assert rollout_status["stableRevision"].startswith("3-"), rollout_status
    statuses = {a.status for a in result.answers}
    assert 500 in statuses, "poisoned requests did fail (on both revisions)"
    failed_good = [a for a in result.answers if a.status != 200 and a.row % 3 != 0]
    assert not failed_good, failed_good[:5]


# ----------------------------------------------------------------- connections, memory


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_idle_connections_are_capped_and_timed_out_while_others_are_served(
    shared_platform: Platform,
    versions: dict[str, ModelVersion],
    api: Client,
    deployments: list[str],
) -> None:
    name = "idle-flood"
    deployments.append(name)
    api.apply([_doc(name, versions["v1"].version)])
    st = _ready(api, name)
    host, port = _endpoint(st)
    wanted = 2000
    limit = _raise_nofile()
    count = min(wanted, limit - 200)
    assert count >= wanted, f"this machine's RLIMIT_NOFILE hard limit ({limit}) is too low"
    socks: list[socket.socket] = []
    try:
        for _ in range(count):  # from another loopback address than the honest clients
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            s.connect_ex((host, port))
            socks.append(s)
        body = _body(Rows.for_version(versions["v1"], n=4).features[0], "honest")
        # the control API and the router keep answering others meanwhile
        with shared_platform.api() as control:
            assert control.get("/apis/pilothouse.dev/v1alpha1/modeldeployments").status_code == 200
        answer = httpx.post(f"{st['url']}/v2/models/{MODEL}/infer", content=body, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["id"] == "honest"
        result = shared_platform.cli("status")
        assert result.returncode == 0, result.stderr

        def closed(s: socket.socket) -> bool:
            try:
                return s.recv(4096, socket.MSG_PEEK) is not None
            except BlockingIOError:
                return False
            except OSError:
                return True

        # the router closes them: past the per-address cap at once (503), the rest after
        # the first-byte timeout; none stays open for ever
        wait_for(
            "the router to close every idle connection",
            lambda: all(closed(s) for s in socks),
            timeout=40,
            every=0.5,
        )
    finally:
        for s in socks:
            s.close()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def budget_platform(fresh_platform: Platform) -> Platform:
    result = fresh_platform.cli("up", "--router-body-budget", "64Mi", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return fresh_platform


def test_unfinished_uploads_stay_within_the_body_budget(budget_platform: Platform) -> None:
    platform = budget_platform
    v1 = register_v1(platform.home.models)
    api = platform.client()
    try:
        api.apply([_doc("uploads", v1.version)])
        st = _ready(api, "uploads")
    finally:
        api.close()
    host, port = _endpoint(st)
    info = platform.home.read_daemon_info()
    assert info
    pid = int(info["pid"])
    before = _rss(pid)
    size = 15 * 2**20
    chunk = b"7" * 2**20

    async def read_answer(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            return getattr(exc, "partial", b"")

    async def upload(i: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writers.append(writer)
        writer.write(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode()
        )
        # read while sending: a refused upload is answered as soon as its head is read,
        # and that answer must be read before the router gives up on the connection
        answered = asyncio.ensure_future(read_answer(reader))
        try:
            for _ in range(14):  # all but the last MiB: never finished
                if answered.done():
                    break
                writer.write(chunk)
                async with asyncio.timeout(5):
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # refused and closed by the router, or it stopped reading
        if answered.done():
            return answered.result()
        # sent all but the last MiB, unanswered: an upload the router holds
        pending.append(answered)
        return b""

    writers: list[asyncio.StreamWriter] = []
    pending: list[asyncio.Future[bytes]] = []

    async def scenario() -> tuple[list[bytes], int]:
        answers = await asyncio.gather(*(upload(i) for i in range(50)))
        peak = _rss(pid)
        for waiting in pending:
            waiting.cancel()
        for writer in writers:
            writer.close()
        return list(answers), peak

    answers, peak = asyncio.run(scenario())
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    # each upload declares 15 MiB and holds it from its head on: 4 fit in 64 MiB, and
    # every later one is refused while those 4 are held unfinished
    held = (64 * 2**20) // size
    assert len(refused) == 50 - held, f"uploads refused with 503: {len(refused)} of 50"
    assert all(b"retry-after" in a for a in refused)
    margin = 48 * 2**20
    print(
        f"50 unfinished 15 MiB uploads: {len(refused)} refused with 503; daemon RSS "
        f"{before / 2**20:.0f} MiB -> {peak / 2**20:.0f} MiB (budget 64 MiB)"
    )
    assert peak - before < 64 * 2**20 + margin, (before, peak)
    # and the daemon still serves
    body = _body(Rows.for_version(v1, n=4).features[0], "after")
    answer = httpx.post(f"{st['url']}/v2/models/{MODEL}/infer", content=body, timeout=10)
    assert answer.status_code == 200


# ------------------------------------------------------------------ replicas killed


def test_no_request_fails_while_replicas_are_killed_one_after_another(
    shared_platform: Platform,
    versions: dict[str, ModelVersion],
    api: Client,
    deployments: list[str],
) -> None:
    name = "chaos"
    deployments.append(name)
    api.apply([_doc(name, versions["v1"].version)])
    st = _ready(api, name)
    rows = Rows.for_version(versions["v1"], n=200)
    # open-loop load with room for every round; stopped once the last round is seen
    load = BackgroundLoad(st["url"], rows, 50.0, 600.0, max_requests=30000, request_timeout=30)
    rng = random.Random(7)
    killed: list[int] = []
    kills, served = 6, 25  # answers wanted to requests sent after each kill, and before

    def replaced_and_serving(since: float) -> list[dict[str, Any]] | None:
        """Both replicas ready and alive (the last victim replaced), with ``served``
        answers to requests sent since ``since``."""
        running = [
            r for r in replicas(api, name) if r["ready"] and r["pid"] and pid_alive(int(r["pid"]))
        ]
        ok = len(running) == 2 and load.answers_since(since) >= served
        return running if ok else None

    try:
        since = load.started
        for kill in range(kills):
            # the attack's schedule, by state: the next kill as soon as the last victim is
            # replaced and requests sent after it have been answered
            running = wait_for(
                f"kill {kill + 1}: 2 ready replicas answering",
                functools.partial(replaced_and_serving, since),
                timeout=90,
                every=0.2,
            )
            victim = int(rng.choice(running)["pid"])
            since = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        wait_for(
            "answers after the last kill",
            lambda: load.answers_since(since) >= served,
            timeout=60,
            every=0.2,
        )
        load.stop()
        result = load.join(60)
    finally:
        load.stop()
    assert len(killed) == kills, killed
    assert not any(pid_alive(pid) for pid in killed)
    failed = [(a.status, a.error) for a in result.answers if a.status != 200]
    assert result.unfinished == 0
    assert not failed, (len(failed), failed[:5])
    _ready(api, name)
