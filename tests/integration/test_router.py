"""The embedded router in-process, in front of real upstream HTTP servers on 127.0.0.1:
framing edge cases, retries of failed connections, and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pilothouse.router import proxy
from pilothouse.router.proxy import Backend, Router, RouterLimits

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal keep-alive HTTP/1.1 server: echoes the request body and method."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ")[0]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            payload = method + b":" + body
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(payload)).encode() + b"\r\n\r\n"
            )
            if method != b"HEAD":
                writer.write(payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[Backend]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Backend(id=f"up-{port}", host="127.0.0.1", port=port)
    finally:
        server.close()


@contextlib.asynccontextmanager
async def routed(
    *backends: Backend,
    limits: RouterLimits | None = None,
    policy: proxy.TrafficPolicy | None = None,
) -> AsyncIterator[tuple[str, int]]:
    router = Router("127.0.0.1", limits=limits)
    url = await router.ensure_route("test")
    router.set_backends("test", list(backends))
    if policy is not None:
        router.set_policy("test", policy)
    host, port = url.removeprefix("http://").split(":")
    try:
        yield host, int(port)
    finally:
        await router.close()


async def exchange(port: int, raw: bytes, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


def free_port() -> int:
    """A port nothing listens on (connections to it are refused, as to a killed replica)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_forwards_and_dechunks() -> None:
    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
            plain = await exchange(
                port,
                b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            )
            assert plain.startswith(b"HTTP/1.1 200")
            assert plain.endswith(b"POST:hello")
            chunked = await exchange(
                port,
                b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            )
            assert chunked.endswith(b"POST:abcde")

    run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        b"-5\r\nabc\r\n0\r\n\r\n",  # negative chunk size
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"3\r\nabcXX0\r\n\r\n",  # chunk not followed by CRLF
        b"1" * 70000 + b"\r\n",  # an endless size line
    ],
    ids=["negative", "not-hex", "no-crlf", "huge-size-line"],
)
def test_malformed_chunked_bodies_get_400(body: bytes) -> None:
    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
            answer = await exchange(
                port, b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" + body
            )
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]

    run(scenario())


def test_head_keeps_the_upstream_content_length() -> None:
    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
            answer = await exchange(
                port, b"HEAD /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
            )
            assert b"content-length: 5" in answer  # len(b"HEAD:")
            assert answer.endswith(b"\r\n\r\n")

    run(scenario())


def test_slow_body_times_out_with_408() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upstream) as backend,
            routed(backend, limits=RouterLimits(body_timeout=0.5)) as (_, port),
        ):
            answer = await exchange(
                port,
                b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nab",
                read_timeout=10,
            )
            assert answer.startswith(b"HTTP/1.1 408")

    run(scenario())


def test_oversized_body_is_413_from_the_router() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upstream) as backend,
            routed(backend, limits=RouterLimits(max_body=1000)) as (_, port),
        ):
            answer = await exchange(
                port, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5000\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 413")

    run(scenario())


def test_connection_failure_is_retried_on_another_replica() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # accept, then close before any response byte

    async def scenario() -> None:
        async with (
            upstream(refuse) as bad,
            upstream(echo_upstream) as good,
            routed(bad, good) as (_, port),
        ):
            for _ in range(10):
                answer = await exchange(
                    port,
                    b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                )
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
                assert answer.endswith(b"POST:ok")

    run(scenario())


def test_no_ready_replica_is_held_then_503_with_retry_after() -> None:
    async def scenario() -> None:
        policy = proxy.TrafficPolicy(queue_timeout=0.5)
        async with routed(policy=policy) as (_, port):
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await exchange(port, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"retry-after: 1" in answer
            assert b"no ready replica" in answer
            assert loop.time() - started >= 0.5, "held for the queue timeout first"

    run(scenario())


def test_a_request_with_no_ready_replica_waits_for_the_replacement() -> None:
    """Every replica died (nothing to retry on): the request is held, not failed."""

    async def scenario() -> None:
        async with upstream(tagged_upstream(b"replacement")) as late:
            router = Router("127.0.0.1")
            url = await router.ensure_route("r")
            dead = Backend("dead", "127.0.0.1", free_port(), "v1")
            router.set_backends("r", [dead])
            port = int(url.rsplit(":", 1)[1])
            route = router.route("r")
            assert route is not None
            try:
                pending = asyncio.create_task(post(port, 2, concurrency=2))
                for _ in range(300):  # bounded: both requests failed on the dead one, now wait
                    if route.queued == 2:
                        break
                    await asyncio.sleep(0.01)
                assert route.queued == 2
                router.set_backends("r", [Backend(late.id, late.host, late.port, "v1")])
                bodies = await asyncio.wait_for(pending, 10)
            finally:
                await router.close()
        assert bodies == [b"200 replacement"] * 2

    run(scenario())


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n1"
                b"POST /b HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\nconnection: close\r\n\r\n2"
            )
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert data.index(b"POST:1") < data.index(b"POST:2")

    run(scenario())


# -- balancing, weights, mirroring, outliers, shedding, scale from zero --------------------------

from pilothouse.router.proxy import TrafficPolicy  # noqa: E402


def tagged_upstream(tag: bytes, delay: float = 0.0, status: bytes = b"200 OK") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if delay:
                    await asyncio.sleep(delay)  # a slow model, not synchronisation
                writer.write(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\ncontent-length: "
                    + str(len(tag)).encode()
                    + b"\r\n\r\n"
                    + tag
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


async def post(port: int, n: int, concurrency: int = 8) -> list[bytes]:
    """n keep-alive POSTs over ``concurrency`` connections; returns each response's body."""
    out: list[bytes] = []

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                writer.write(b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                status = head.split(b" ")[1]
                out.append(status + b" " + await reader.readexactly(length))
        finally:
            writer.close()

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    await asyncio.gather(*(worker(c) for c in per if c))
    return out


def test_least_outstanding_prefers_the_idle_replica() -> None:
    async def scenario() -> None:
        async with (
            upstream(tagged_upstream(b"slow", delay=0.2)) as slow,
            upstream(tagged_upstream(b"fast")) as fast,
        ):
            slow_b = Backend(slow.id, slow.host, slow.port, "r1")
            fast_b = Backend(fast.id, fast.host, fast.port, "r1")
            async with routed(slow_b, fast_b) as (_, port):
                bodies = await post(port, 200, concurrency=8)
        served_fast = sum(1 for b in bodies if b.endswith(b"fast"))
        assert served_fast >= 170, (
            f"the busy replica should get few requests: {served_fast}/200 to the fast one"
        )

    run(scenario())


def test_weights_split_traffic_between_revisions() -> None:
    async def scenario() -> None:
        async with (
            upstream(tagged_upstream(b"stable")) as a,
            upstream(tagged_upstream(b"canary")) as b,
        ):
            router = Router("127.0.0.1")
            url = await router.ensure_route("w")
            router.set_backends(
                "w", [Backend(a.id, a.host, a.port, "v1"), Backend(b.id, b.host, b.port, "v2")]
            )
            router.set_policy("w", TrafficPolicy(weights={"v1": 80, "v2": 20}))
            port = int(url.rsplit(":", 1)[1])
            try:
                bodies = await post(port, 1000, concurrency=4)
            finally:
                await router.close()
        canary = sum(1 for body in bodies if body.endswith(b"canary"))
        assert 120 <= canary <= 280, f"expected about 20 % on the canary, got {canary}/1000"

    run(scenario())


def test_mirrored_traffic_is_recorded_and_never_returned() -> None:
    async def scenario() -> None:
        async with (
            upstream(tagged_upstream(b"stable")) as a,
            upstream(tagged_upstream(b"shadow")) as b,
        ):
            router = Router("127.0.0.1")
            url = await router.ensure_route("m")
            router.set_backends(
                "m", [Backend(a.id, a.host, a.port, "v1"), Backend(b.id, b.host, b.port, "v2")]
            )
            router.set_policy(
                "m", TrafficPolicy(weights={"v1": 100}, mirror_revision="v2", mirror_percent=100)
            )
            port = int(url.rsplit(":", 1)[1])
            try:
                bodies = await post(port, 50, concurrency=2)
                route = router.route("m")
                assert route is not None
                for _ in range(200):  # bounded: mirrors finish within a few event-loop turns
                    if len(route.mirrors) >= 50:
                        break
                    await asyncio.sleep(0.01)
                records = list(route.mirrors)
            finally:
                await router.close()
        assert all(body.endswith(b"stable") for body in bodies)
        assert len(records) == 50
        assert {(r.primary_body, r.mirror_body, r.mirror_revision) for r in records} == {
            (b"stable", b"shadow", "v2")
        }

    run(scenario())


def test_failing_replica_is_ejected_and_comes_back_after_a_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy, "BASE_EJECTION", 0.3)
    healthy = {"ok": False}

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status = b"200 OK" if healthy["ok"] else b"500 Internal Server Error"
        await tagged_upstream(b"flaky", status=status)(reader, writer)

    async def scenario() -> None:
        async with upstream(flaky) as bad, upstream(tagged_upstream(b"good")) as good:
            router = Router("127.0.0.1")
            url = await router.ensure_route("o")
            router.set_backends(
                "o",
                [
                    Backend(bad.id, bad.host, bad.port, "v1"),
                    Backend(good.id, good.host, good.port, "v1"),
                ],
            )
            port = int(url.rsplit(":", 1)[1])
            route = router.route("o")
            assert route is not None
            try:
                await post(port, 40, concurrency=1)
                assert route.upstreams[bad.id].ejected(), "three 500s in a row eject the replica"
                after = await post(port, 20, concurrency=1)
                assert all(b.endswith(b"good") for b in after), "an ejected replica gets no traffic"
                healthy["ok"] = True
                for _ in range(300):  # bounded wait for the probe to let it back in
                    if not route.upstreams[bad.id].ejected():
                        break
                    await asyncio.sleep(0.02)
                assert not route.upstreams[bad.id].ejected(), "a successful probe brings it back"
                back = await post(port, 60, concurrency=4)
                assert any(b.endswith(b"flaky") for b in back)
            finally:
                await router.close()

    run(scenario())


def test_beyond_capacity_the_router_sheds_with_503() -> None:
    # The upstream holds every request until the gate opens, so which requests are in
    # flight, queued or shed is set by the policy alone: 2 in flight + 3 queued of 20,
    # whatever the speed of the machine.
    gate = asyncio.Event()

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        await tagged_upstream(b"busy")(reader, writer)

    async def scenario() -> None:
        async with upstream(gated) as only:
            router = Router("127.0.0.1")
            url = await router.ensure_route("s")
            router.set_backends("s", [Backend(only.id, only.host, only.port, "v1")])
            router.set_policy(
                "s", TrafficPolicy(max_concurrency=2, queue_limit=3, queue_timeout=20)
            )
            port = int(url.rsplit(":", 1)[1])
            route = router.route("s")
            assert route is not None
            try:
                pending = asyncio.create_task(post(port, 20, concurrency=20))
                for _ in range(1000):  # bounded: all 20 have arrived and were placed
                    held = (route.upstreams[only.id].inflight, route.queued, route.codes["503"])
                    if held == (2, 3, 15) or pending.done():
                        break
                    await asyncio.sleep(0.01)
                assert held == (2, 3, 15), f"(in flight, queued, shed) while held: {held}"
                gate.set()
                bodies = await asyncio.wait_for(pending, 10)
            finally:
                await router.close()
        ok = [b for b in bodies if b.startswith(b"200")]
        shed = [b for b in bodies if b.startswith(b"503")]
        assert len(ok) == 5, f"2 in flight + 3 queued are served: {len(ok)}"
        assert len(shed) == 15
        assert all(b"queue is full" in b for b in shed)

    run(scenario())


def test_scaled_to_zero_requests_are_held_until_a_replica_arrives() -> None:
    activations: list[str] = []

    async def scenario() -> None:
        async with upstream(tagged_upstream(b"cold-started")) as late:
            router = Router("127.0.0.1", on_activate=activations.append)
            url = await router.ensure_route("z")
            router.set_policy("z", TrafficPolicy(hold_when_empty=True, queue_timeout=10))
            port = int(url.rsplit(":", 1)[1])
            try:
                pending = asyncio.create_task(post(port, 3, concurrency=3))
                for _ in range(200):  # bounded: wait until the router asked for a replica
                    if activations:
                        break
                    await asyncio.sleep(0.01)
                route = router.route("z")
                assert route is not None
                assert route.queued == 3
                router.set_backends("z", [Backend(late.id, late.host, late.port, "v1")])
                bodies = await asyncio.wait_for(pending, 10)
            finally:
                await router.close()
        assert activations
        assert set(activations) == {"z"}
        assert bodies == [b"200 cold-started"] * 3

    run(scenario())


def test_meters_measure_average_concurrency() -> None:
    async def scenario() -> None:
        async with upstream(tagged_upstream(b"x", delay=0.1)) as only:
            router = Router("127.0.0.1")
            url = await router.ensure_route("c")
            router.set_backends("c", [Backend(only.id, only.host, only.port, "v1")])
            port = int(url.rsplit(":", 1)[1])
            route = router.route("c")
            assert route is not None
            try:
                import time as _time

                start = _time.time()
                route.meter("v1").close_bucket(start)
                await post(port, 40, concurrency=4)
                route.meter("v1").close_bucket(_time.time())
                buckets = [b for b in route.meter("v1").buckets if b.end > start]
            finally:
                await router.close()
        # the router's own ticker may have closed buckets meanwhile: add them up
        assert sum(b.requests for b in buckets) == 40
        seconds = sum(b.seconds for b in buckets)
        average = sum(b.concurrency * b.seconds for b in buckets) / seconds
        assert 3.0 <= average <= 4.05, buckets

    run(scenario())


def test_a_client_that_hangs_up_while_queued_frees_its_place() -> None:
    async def scenario() -> None:
        async with upstream(tagged_upstream(b"slow", delay=0.5)) as only:
            router = Router("127.0.0.1")
            url = await router.ensure_route("g")
            router.set_backends("g", [Backend(only.id, only.host, only.port, "v1")])
            router.set_policy("g", TrafficPolicy(max_concurrency=1, queue_limit=2, queue_timeout=5))
            port = int(url.rsplit(":", 1)[1])
            route = router.route("g")
            assert route is not None
            try:
                busy = asyncio.create_task(post(port, 1, concurrency=1))
                for _ in range(100):
                    if route.upstreams[only.id].inflight:
                        break
                    await asyncio.sleep(0.01)
                # two clients queue, then hang up
                for _ in range(2):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi")
                    await writer.drain()
                    for _ in range(100):
                        if route.queued:
                            break
                        await asyncio.sleep(0.01)
                    writer.close()
                for _ in range(200):  # bounded: the router notices within a poll interval
                    if route.queued == 0:
                        break
                    await asyncio.sleep(0.01)
                assert route.queued == 0, "abandoned requests leave the queue"
                assert await post(port, 1, concurrency=1) == [b"200 slow"]
                await busy
            finally:
                await router.close()

    run(scenario())


def test_a_freed_replica_wakes_a_waiter_that_can_use_it() -> None:
    async def scenario() -> None:
        async with upstream(tagged_upstream(b"a")) as a, upstream(tagged_upstream(b"b")) as b:
            router = Router("127.0.0.1")
            await router.ensure_route("f")
            router.set_backends(
                "f", [Backend(a.id, a.host, a.port, "v1"), Backend(b.id, b.host, b.port, "v1")]
            )
            route = router.route("f")
            assert route is not None
            loop = asyncio.get_running_loop()
            try:
                # queued first: a retry that already failed on replica a; then a fresh request
                retry = proxy._Waiter(loop.create_future(), frozenset({a.id}))
                fresh = proxy._Waiter(loop.create_future(), frozenset())
                route._waiters.extend([retry, fresh])
                route._release(route.upstreams[a.id])
                assert fresh.future.done(), "a's free slot goes to the request that can use it"
                assert not retry.future.done()
                assert list(route._waiters) == [retry]
                route._release(route.upstreams[b.id])
                assert retry.future.done()
            finally:
                await router.close()

    run(scenario())


def test_a_revision_with_zero_weight_gets_no_live_traffic() -> None:
    async def scenario() -> None:
        async with (
            upstream(tagged_upstream(b"A", delay=0.1)) as a,
            upstream(tagged_upstream(b"B")) as b,
        ):
            router = Router("127.0.0.1")
            url = await router.ensure_route("z0")
            router.set_backends(
                "z0", [Backend(a.id, a.host, a.port, "vA"), Backend(b.id, b.host, b.port, "vB")]
            )
            router.set_policy(
                "z0",
                TrafficPolicy(weights={"vA": 100, "vB": 0}, max_concurrency=1, queue_timeout=5),
            )
            port = int(url.rsplit(":", 1)[1])
            try:
                bodies = await post(port, 8, concurrency=4)
            finally:
                await router.close()
        assert bodies == [b"200 A"] * 8

    run(scenario())


def test_a_route_keeps_its_port_when_free_and_takes_another_when_not() -> None:
    async def scenario() -> None:
        router = Router("127.0.0.1")
        try:
            first = await router.ensure_route("a")
            port = int(first.rsplit(":", 1)[1])
            await router.remove("a")
            again = await router.ensure_route("a", port)
            assert again == first  # the port was free: the same endpoint
            taken = await router.ensure_route("b", port)  # "a" holds it
            assert taken != first
            assert int(taken.rsplit(":", 1)[1]) > 0
        finally:
            await router.close()

    run(scenario())


def test_at_most_the_configured_share_of_a_revision_is_ejected() -> None:
    """Two of three replicas fail every request the third answers: only one is ejected
    (50 % of 3, rounded down), and with a share of 0 none is."""

    async def scenario(percent: float) -> int:
        async with (
            upstream(tagged_upstream(b"x", status=b"500 Internal Server Error")) as bad1,
            upstream(tagged_upstream(b"y", status=b"503 Service Unavailable")) as bad2,
            upstream(tagged_upstream(b"good")) as good,
        ):
            router = Router("127.0.0.1")
            url = await router.ensure_route("e")
            router.set_policy("e", TrafficPolicy(max_ejection_percent=percent))
            router.set_backends(
                "e", [Backend(u.id, u.host, u.port, "v1") for u in (bad1, bad2, good)]
            )
            port = int(url.rsplit(":", 1)[1])
            route = router.route("e")
            assert route is not None
            try:
                bodies = await post(port, 60, concurrency=1)
                assert bodies == [b"200 good"] * 60, "each failure was retried on the good one"
                return sum(1 for u in route.upstreams.values() if u.ejected())
            finally:
                await router.close()

    async def both() -> None:
        assert await scenario(50.0) == 1
        assert await scenario(0.0) == 0

    run(both())


def judging(good: set[bytes]) -> Handler:
    """A keep-alive upstream answering 200 to the request bodies in ``good``, 500 to others."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                status = b"200 OK" if body in good else b"500 Internal Server Error"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


def test_requests_that_fail_on_every_replica_eject_none() -> None:
    """A poisoned request (every replica answers it 500) is the request's fault."""

    async def scenario() -> None:
        async with upstream(judging({b"fine!!"})) as a, upstream(judging({b"fine!!"})) as b:
            router = Router("127.0.0.1")
            url = await router.ensure_route("p")
            router.set_backends("p", [Backend(u.id, u.host, u.port, "v1") for u in (a, b)])
            port = int(url.rsplit(":", 1)[1])
            route = router.route("p")
            assert route is not None
            try:
                statuses = []
                for i in range(40):
                    body = b"poison" if i % 2 == 0 else b"fine!!"
                    answer = await exchange(
                        port,
                        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n"
                        b"connection: close\r\n\r\n" + body,
                    )
                    statuses.append(int(answer.split(b" ", 2)[1]))
                assert statuses == [500, 200] * 20
                assert not any(u.ejected() for u in route.upstreams.values())
                assert all(u.consecutive_failures == 0 for u in route.upstreams.values())
            finally:
                await router.close()

    run(scenario())


def test_a_request_failing_on_both_revisions_is_excused_not_held_against_the_canary() -> None:
    """errorRate's rule: a canary's failure counts unless the stable revision failed the
    same request too; a failure the stable revision answered counts."""

    async def scenario(policy: TrafficPolicy, expected: list[int]) -> None:
        # the stable revision fails "poison"; the canary fails "poison" and "canary-bug"
        async with (
            upstream(judging({b"fine", b"canary-bug"})) as stable,
            upstream(judging({b"fine"})) as canary,
        ):
            router = Router("127.0.0.1")
            url = await router.ensure_route("c")
            router.set_policy("c", policy)
            router.set_backends(
                "c",
                [
                    Backend(stable.id, stable.host, stable.port, "stable"),
                    Backend(canary.id, canary.host, canary.port, "canary"),
                ],
            )
            port = int(url.rsplit(":", 1)[1])
            route = router.route("c")
            assert route is not None
            try:
                statuses = []
                for body in [b"poison", b"canary-bug"] * 10:
                    answer = await exchange(
                        port,
                        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: "
                        + str(len(body)).encode()
                        + b"\r\nconnection: close\r\n\r\n"
                        + body,
                    )
                    statuses.append(int(answer.split(b" ", 2)[1]))
                if policy.mirror_percent:
                    for _ in range(500):  # bounded: until every mirrored copy was answered
                        if len(route.mirrors) == 20:
                            break
                        await asyncio.sleep(0.01)
                route.close_buckets(time.time())
            finally:
                await router.close()
            assert statuses == expected
            canary_buckets = route.buckets().get("canary", [])
            assert sum(b.errors for b in canary_buckets) == 10, "only its own bug counts"
            assert sum(b.excused for b in canary_buckets) == 10, "shared failures are excused"

    async def both() -> None:
        # a canary step: the canary's own bug is retried on stable (clients see a 200)
        await scenario(TrafficPolicy(weights={"canary": 1.0, "stable": 1e-9}), [500, 200] * 10)
        # all traffic on the canary, mirrored back to stable: no retry there, but a mirrored
        # copy that the stable revision fails as well excuses the canary's failure
        mirrored = TrafficPolicy(
            weights={"canary": 1.0}, mirror_revision="stable", mirror_percent=100.0
        )
        await scenario(mirrored, [500, 500] * 10)

    run(both())
