"""The embedded router in-process, in front of real upstream HTTP servers on 127.0.0.1:
framing edge cases, retries of failed connections, and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pilothouse.router import proxy
from pilothouse.router.proxy import Backend, Router

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
async def routed(*backends: Backend) -> AsyncIterator[tuple[str, int]]:
    router = Router("127.0.0.1")
    url = await router.ensure_route("test")
    router.set_backends("test", list(backends))
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


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


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


def test_slow_body_times_out_with_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "BODY_TIMEOUT", 0.5)

    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
            answer = await exchange(
                port,
                b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nab",
                read_timeout=10,
            )
            assert answer.startswith(b"HTTP/1.1 408")

    run(scenario())


def test_oversized_body_is_413_from_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "MAX_BODY_BYTES", 1000)

    async def scenario() -> None:
        async with upstream(echo_upstream) as backend, routed(backend) as (_, port):
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


def test_no_ready_replica_is_503_with_retry_after() -> None:
    async def scenario() -> None:
        async with routed() as (_, port):
            answer = await exchange(port, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"retry-after: 1" in answer

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
