"""Reverse proxy with least-outstanding load balancing and retries of failed connections.

One listener per deployment (its ``status.url``). A request goes to the ready
replica with fewer requests in flight among two picked at random (power of two
choices). If the connection to a replica fails, or the replica closes it before
sending any response byte, the request is retried on another replica: inference
is idempotent, and the retry budget is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from pilothouse.router.http1 import (
    MAX_HEAD_BYTES,
    Message,
    ProtocolError,
    read_body,
    read_head,
    serialize,
    simple_response,
)

log = logging.getLogger("pilothouse.router")
MAX_BODY_BYTES = 16 * 2**20
RETRIES = 2
UPSTREAM_TIMEOUT = 60.0
IDLE_TIMEOUT = 75.0
BODY_TIMEOUT = 30.0
MAX_CONNECTIONS = 2048
POOL_SIZE = 32


@dataclass(frozen=True)
class Backend:
    """A ready replica: its id, address and the revision (model version) it serves."""

    id: str
    host: str
    port: int
    revision: str = ""


@dataclass
class _Upstream:
    backend: Backend
    inflight: int = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class _UpstreamFailed(Exception):
    """The replica failed before any response byte: safe to retry elsewhere."""


@dataclass
class RouteStats:
    requests: Counter[str] = field(default_factory=Counter)
    by_backend: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    inflight: int = 0
    latency_sum: float = 0.0


class Route:
    """One deployment's listener and its backend set."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.upstreams: dict[str, _Upstream] = {}
        self.server: asyncio.Server | None = None
        self.url = ""
        self.stats = RouteStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def set_backends(self, backends: list[Backend]) -> None:
        wanted = {b.id: b for b in backends}
        for backend_id in list(self.upstreams):
            current = self.upstreams[backend_id]
            if backend_id not in wanted or wanted[backend_id] != current.backend:
                current.close()
                del self.upstreams[backend_id]
        for backend_id, backend in wanted.items():
            if backend_id not in self.upstreams:
                self.upstreams[backend_id] = _Upstream(backend)

    def pick(self, exclude: set[str]) -> _Upstream | None:
        candidates = [u for bid, u in self.upstreams.items() if bid not in exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        a, b = random.sample(candidates, 2)
        return a if a.inflight <= b.inflight else b

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= MAX_CONNECTIONS:
            self.stats.requests["503"] += 1
            await self._reply_error(writer, 503, "too many client connections", keep_alive=False)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = (peer[0] if isinstance(peer, tuple) else "unknown").encode()
        try:
            while True:
                try:
                    request = await asyncio.wait_for(read_head(reader), IDLE_TIMEOUT)
                except (TimeoutError, ConnectionError):
                    return
                except ProtocolError as exc:
                    await self._reply_error(writer, exc.status, str(exc), keep_alive=False)
                    return
                if request is None:
                    return
                keep_alive = self._client_keep_alive(request)
                try:
                    if (request.header(b"expect") or b"").lower() == b"100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.body = await asyncio.wait_for(
                        read_body(reader, request, MAX_BODY_BYTES), BODY_TIMEOUT
                    )
                except TimeoutError:
                    self.stats.requests["408"] += 1
                    await self._reply_error(
                        writer, 408, "request body not received in time", keep_alive=False
                    )
                    return
                except ProtocolError as exc:
                    self.stats.requests[str(exc.status)] += 1
                    await self._reply_error(writer, exc.status, str(exc), keep_alive=False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                request.headers.append((b"x-forwarded-for", client_ip))
                status, out = await self._forward(request, keep_alive)
                self.stats.requests[str(status)] += 1
                writer.write(out)
                await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    def _client_keep_alive(request: Message) -> bool:
        tokens = request.connection_tokens()
        if request.start.endswith(b"HTTP/1.0"):
            return b"keep-alive" in tokens
        return b"close" not in tokens

    async def _reply_error(
        self, writer: asyncio.StreamWriter, status: int, message: str, keep_alive: bool
    ) -> None:
        start, headers, body = simple_response(status, message)
        with contextlib.suppress(ConnectionError):
            writer.write(serialize(start, headers, body, keep_alive))
            await writer.drain()

    async def _forward(self, request: Message, keep_alive: bool) -> tuple[int, bytes]:
        started = time.perf_counter()
        tried: set[str] = set()
        self.stats.inflight += 1
        try:
            for attempt in range(RETRIES + 1):
                upstream = self.pick(tried)
                if upstream is None:
                    break
                tried.add(upstream.backend.id)
                if attempt:
                    self.stats.retries += 1
                upstream.inflight += 1
                try:
                    response = await asyncio.wait_for(
                        self._exchange(upstream, request), UPSTREAM_TIMEOUT
                    )
                except _UpstreamFailed as exc:
                    log.warning("%s: replica %s failed: %s", self.key, upstream.backend.id, exc)
                    continue
                except TimeoutError:
                    start, headers, body = simple_response(
                        504, "the replica did not answer in time"
                    )
                    return 504, serialize(start, headers, body, keep_alive)
                finally:
                    upstream.inflight -= 1
                self.stats.by_backend[upstream.backend.id] += 1
                status = _status_code(response.start)
                if status == 0:
                    start, headers, body = simple_response(
                        502, "the replica sent a malformed status line"
                    )
                    return 502, serialize(start, headers, body, keep_alive)
                length = (
                    response.header(b"content-length")
                    if request.start.startswith(b"HEAD ") or status in (204, 304)
                    else None
                )
                return status, serialize(
                    response.start, response.headers, response.body, keep_alive, length
                )
            message = (
                "no ready replica for this deployment"
                if not tried
                else f"all {len(tried)} replica(s) tried failed"
            )
            status = 503 if not tried else 502
            start, headers, body = simple_response(status, message, [(b"retry-after", b"1")])
            return status, serialize(start, headers, body, keep_alive)
        finally:
            self.stats.inflight -= 1
            self.stats.latency_sum += time.perf_counter() - started

    async def _exchange(self, upstream: _Upstream, request: Message) -> Message:
        """Send one request; a stale pooled connection is replaced by a fresh one once."""
        head = serialize(request.start, request.headers, request.body, keep_alive=True)
        while True:
            pooled = bool(upstream.idle)
            if pooled:
                reader, writer = upstream.idle.pop()
            else:
                try:
                    reader, writer = await asyncio.open_connection(
                        upstream.backend.host, upstream.backend.port, limit=MAX_HEAD_BYTES
                    )
                except OSError as exc:
                    raise _UpstreamFailed(f"connect: {exc}") from exc
            try:
                writer.write(head)
                await writer.drain()
                response = await read_head(reader)
            except (ConnectionError, ProtocolError, asyncio.IncompleteReadError) as exc:
                writer.close()
                if pooled:
                    continue
                raise _UpstreamFailed(str(exc)) from exc
            if response is None:
                writer.close()
                if pooled:
                    continue
                raise _UpstreamFailed("closed the connection before responding")
            try:
                no_body = request.start.startswith(b"HEAD ") or response.start[9:12] in (
                    b"204",
                    b"304",
                )
                reusable = b"close" not in response.connection_tokens()
                if not no_body:
                    delimited = response.header(b"content-length") is not None or b"chunked" in (
                        response.header(b"transfer-encoding") or b""
                    )
                    reusable = reusable and delimited
                    response.body = await read_body(
                        reader, response, MAX_BODY_BYTES * 4, until_eof=not delimited
                    )
            except (ConnectionError, ProtocolError, asyncio.IncompleteReadError) as exc:
                writer.close()
                # Bytes of a response were received: not safe to replay blindly.
                start, headers, body = simple_response(
                    502, f"replica broke off its response: {exc}"
                )
                return Message(start, headers, body)
            if reusable and len(upstream.idle) < POOL_SIZE:
                upstream.idle.append((reader, writer))
            else:
                writer.close()
            return response


def _status_code(start: bytes) -> int:
    parts = start.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
        return 0
    return int(parts[1])


class Router:
    """All routes of the embedded control plane, in the daemon's event loop."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}

    async def ensure_route(self, key: str, port: int = 0) -> str:
        """Start the listener for ``key`` if needed; returns its URL."""
        route = self.routes.get(key)
        if route is not None and route.server is not None:
            return route.url
        route = route or Route(key)
        route.server = await asyncio.start_server(
            route.handle, self.host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        bound = route.server.sockets[0].getsockname()
        route.url = f"http://{bound[0]}:{bound[1]}"
        self.routes[key] = route
        log.info("route %s listening on %s", key, route.url)
        return route.url

    def set_backends(self, key: str, backends: list[Backend]) -> None:
        route = self.routes.get(key)
        if route is not None:
            route.set_backends(backends)

    def remove_backend(self, key: str, backend_id: str) -> None:
        """Stop sending new requests to one backend (before it is stopped)."""
        route = self.routes.get(key)
        if route is not None and backend_id in route.upstreams:
            route.set_backends(
                [u.backend for bid, u in route.upstreams.items() if bid != backend_id]
            )

    def url(self, key: str) -> str | None:
        route = self.routes.get(key)
        return route.url if route else None

    def stats(self, key: str) -> RouteStats | None:
        route = self.routes.get(key)
        return route.stats if route else None

    async def remove(self, key: str) -> None:
        route = self.routes.pop(key, None)
        if route is None or route.server is None:
            return
        route.server.close()
        route.set_backends([])
        for task in list(route._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await route.server.wait_closed()

    async def close(self) -> None:
        for key in list(self.routes):
            await self.remove(key)
