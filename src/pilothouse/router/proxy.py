"""Reverse proxy: least-outstanding balancing, weighted revisions, mirroring, outlier
ejection, bounded queueing with load shedding, and holding requests while a
deployment scales from zero.

One listener per deployment (its ``status.url``). A request goes to a revision
chosen by the traffic weights, then to the ready replica of that revision with
fewer requests in flight among two picked at random (power of two choices). If
the connection to a replica fails, or the replica dies before its response is complete
(nothing has reached the client: responses are buffered), the request is retried on
another replica (inference is idempotent; the
budget is bounded). A replica that fails repeatedly is ejected for a while and
comes back only after a successful readiness probe. When every replica is at
its concurrency limit, requests wait in a bounded queue; beyond it the router
answers 503 with Retry-After instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pilothouse.router.http1 import (
    MAX_HEAD_BYTES,
    Message,
    ProtocolError,
    read_body,
    read_head,
    serialize,
    simple_response,
)
from pilothouse.router.metrics import EJECTIONS, QUEUED, RETRIES, SHED, Bucket, RevisionMeter
from pilothouse.router.upstream import Backend, Upstream, UpstreamFailed, status_code

__all__ = ["Backend", "MirrorRecord", "Route", "Router", "TrafficPolicy"]

log = logging.getLogger("pilothouse.router")
MAX_BODY_BYTES = 16 * 2**20
RETRIES_PER_REQUEST = 2
UPSTREAM_TIMEOUT = 60.0
IDLE_TIMEOUT = 75.0
BODY_TIMEOUT = 30.0
MAX_CONNECTIONS = 4096
FAILURES_TO_EJECT = 3
BASE_EJECTION = 2.0
MAX_EJECTION = 30.0
MIRROR_CONCURRENCY = 32
MIRROR_BODY_LIMIT = 64 * 1024
#: recent successful responses kept per revision, for rollout analysis of predictions
SAMPLES_KEPT = 1000
SAMPLE_BODY_LIMIT = 16 * 1024


@dataclass(frozen=True)
class TrafficPolicy:
    """How a deployment's endpoint spreads and limits traffic."""

    #: revision -> share (any positive numbers); empty: every ready replica equally
    weights: dict[str, float] = field(default_factory=dict)
    #: copy this share (0..100 %) of requests to ``mirror_revision``; responses are recorded
    mirror_revision: str | None = None
    mirror_percent: float = 0.0
    #: requests one replica may have in flight (0: unlimited)
    max_concurrency: int = 0
    #: requests that may wait for a replica; more are shed with 503
    queue_limit: int = 256
    #: how long a request may wait (for capacity, or for the first replica when scaled to zero)
    queue_timeout: float = 10.0
    #: scaled to zero: hold requests (and ask for a replica) instead of answering 503
    hold_when_empty: bool = False


@dataclass(frozen=True)
class MirrorRecord:
    """One mirrored request: what the serving revision and the mirror answered."""

    time: float
    path: str
    request: bytes
    primary_revision: str
    primary_status: int
    primary_body: bytes
    mirror_revision: str
    mirror_status: int
    mirror_body: bytes


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    #: replicas this request already failed on: a slot freed there is no use to it
    exclude: frozenset[str]


class _ClientGone(Exception):
    """The client closed its connection while its request waited."""


class _Shed(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Route:
    """One deployment's listener, replicas, traffic policy and measurements."""

    def __init__(self, key: str, on_activate: Callable[[str], None] | None = None) -> None:
        self.key = key
        self.upstreams: dict[str, Upstream] = {}
        self.policy = TrafficPolicy()
        self.server: asyncio.Server | None = None
        self.url = ""
        self.meters: dict[str, RevisionMeter] = {}
        self.codes: Counter[str] = Counter()
        self.mirrors: deque[MirrorRecord] = deque(maxlen=2000)
        #: revision -> recent (time, body) of live 2xx responses (mirrored ones excluded)
        self.samples: dict[str, deque[tuple[float, bytes]]] = {}
        #: revision -> when it was last seen live (replicas, weight or mirror)
        self._gone: dict[str, float] = {}
        self._on_activate = on_activate
        self._waiters: deque[_Waiter] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._mirror_slots = asyncio.Semaphore(MIRROR_CONCURRENCY)

    # -- configuration -------------------------------------------------------------------

    def set_backends(self, backends: list[Backend]) -> None:
        wanted = {b.id: b for b in backends}
        for backend_id in list(self.upstreams):
            current = self.upstreams[backend_id]
            if backend_id not in wanted or wanted[backend_id] != current.backend:
                current.close()
                del self.upstreams[backend_id]
        for backend_id, backend in wanted.items():
            if backend_id not in self.upstreams:
                self.upstreams[backend_id] = Upstream(backend)
        self._wake_all()

    def set_policy(self, policy: TrafficPolicy) -> None:
        self.policy = policy
        self._wake_all()

    def meter(self, revision: str) -> RevisionMeter:
        meter = self.meters.get(revision)
        if meter is None:
            meter = self.meters[revision] = RevisionMeter(self.key, revision, time.time())
        return meter

    @property
    def queued(self) -> int:
        return len(self._waiters)

    # -- choosing a replica ------------------------------------------------------------------

    def _available(self, exclude: set[str]) -> list[Upstream]:
        cap = self.policy.max_concurrency
        return [
            u
            for bid, u in self.upstreams.items()
            if bid not in exclude and not u.ejected() and (cap <= 0 or u.inflight < cap)
        ]

    def _pick(self, exclude: set[str]) -> Upstream | None:
        candidates = self._available(exclude)
        if not candidates:
            return None
        weights = self.policy.weights
        if weights:
            # a revision without a positive weight gets no live traffic (mirrors aside)
            revisions = sorted(
                {u.backend.revision for u in candidates if weights.get(u.backend.revision, 0.0) > 0}
            )
            if not revisions:
                return None
            shares = [weights[r] for r in revisions]
            chosen = random.choices(revisions, weights=shares)[0]
            candidates = [u for u in candidates if u.backend.revision == chosen]
        if len(candidates) == 1:
            return candidates[0]
        a, b = random.sample(candidates, 2)
        return a if a.inflight <= b.inflight else b

    def _usable_exists(self, exclude: set[str]) -> bool:
        return any(bid not in exclude and not u.ejected() for bid, u in self.upstreams.items())

    async def _acquire(
        self, exclude: set[str], client_gone: Callable[[], bool] | None = None
    ) -> Upstream | None:
        """A replica with capacity; waits (bounded) when all are busy or none exists yet.

        Returns None when every usable replica was already tried; raises _Shed when
        the request must be refused, _ClientGone when its client left meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.queue_timeout
        while True:
            upstream = self._pick(exclude)
            if upstream is not None:
                return upstream
            if exclude and self.upstreams and not self._usable_exists(exclude):
                return None
            empty = not any(not u.ejected() for u in self.upstreams.values())
            if empty and not self.policy.hold_when_empty:
                raise _Shed("no ready replica for this deployment")
            if len(self._waiters) >= self.policy.queue_limit:
                raise _Shed("every replica is at capacity and the queue is full")
            if empty and self._on_activate is not None:
                self._on_activate(self.key)
            waiter = _Waiter(loop.create_future(), frozenset(exclude))
            self._waiters.append(waiter)
            QUEUED.labels(self.key).set(len(self._waiters))
            try:
                while not waiter.future.done():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise _Shed("no replica became available in time")
                    # short waits, so a client that hangs up frees its place promptly
                    await asyncio.wait({waiter.future}, timeout=min(remaining, 0.25))
                    if client_gone is not None and client_gone():
                        raise _ClientGone()
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                QUEUED.labels(self.key).set(len(self._waiters))

    def _release(self, upstream: Upstream) -> None:
        """A slot on ``upstream`` is free: wake the first waiter that can use it."""
        for waiter in self._waiters:
            if upstream.backend.id not in waiter.exclude and not waiter.future.done():
                waiter.future.set_result(None)
                self._waiters.remove(waiter)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)

    # -- outliers ------------------------------------------------------------------------------

    def _failed(self, upstream: Upstream) -> None:
        upstream.consecutive_failures += 1
        if upstream.consecutive_failures >= FAILURES_TO_EJECT and not upstream.ejected():
            upstream.ejections += 1
            duration = min(MAX_EJECTION, BASE_EJECTION * 2 ** (upstream.ejections - 1))
            upstream.ejected_until = time.monotonic() + duration
            upstream.close()
            EJECTIONS.labels(self.key).inc()
            log.warning(
                "%s: ejected replica %s for %.0fs after %d consecutive failures",
                self.key,
                upstream.backend.id,
                duration,
                upstream.consecutive_failures,
            )
            self._spawn(self._probe_back(upstream))

    def _succeeded(self, upstream: Upstream) -> None:
        upstream.consecutive_failures = 0

    async def _probe_back(self, upstream: Upstream) -> None:
        """After the ejection time, let the replica back in only once a probe succeeds."""
        while (
            upstream.backend.id in self.upstreams
            and self.upstreams[upstream.backend.id] is upstream
        ):
            await asyncio.sleep(max(0.0, upstream.ejected_until - time.monotonic()))
            if await upstream.probe():
                upstream.ejected_until = 0.0
                upstream.consecutive_failures = 0
                log.info(
                    "%s: replica %s is back after a successful probe", self.key, upstream.backend.id
                )
                self._wake_all()
                return
            upstream.ejected_until = time.monotonic() + BASE_EJECTION

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- serving -------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= MAX_CONNECTIONS:
            self.codes["503"] += 1
            await _reply_error(writer, 503, "too many client connections", keep_alive=False)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        client_ip = (peer[0] if isinstance(peer, tuple) else "unknown").encode()
        try:
            while True:
                try:
                    request = await asyncio.wait_for(read_head(reader), IDLE_TIMEOUT)
                except (TimeoutError, ConnectionError):
                    return
                except ProtocolError as exc:
                    self.codes[str(exc.status)] += 1
                    await _reply_error(writer, exc.status, str(exc), keep_alive=False)
                    return
                if request is None:
                    return
                keep_alive = _client_keep_alive(request)
                try:
                    if (request.header(b"expect") or b"").lower() == b"100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.body = await asyncio.wait_for(
                        read_body(reader, request, MAX_BODY_BYTES), BODY_TIMEOUT
                    )
                except TimeoutError:
                    self.codes["408"] += 1
                    await _reply_error(writer, 408, "request body not received in time", False)
                    return
                except ProtocolError as exc:
                    self.codes[str(exc.status)] += 1
                    await _reply_error(writer, exc.status, str(exc), keep_alive=False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                request.headers.append((b"x-forwarded-for", client_ip))

                def client_gone() -> bool:
                    return reader.at_eof() or writer.transport.is_closing()

                try:
                    status, out = await self._forward(request, keep_alive, client_gone)
                except _ClientGone:
                    self.codes["499"] += 1  # nginx's "client closed request"
                    return
                self.codes[str(status)] += 1
                writer.write(out)
                await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)

    async def _forward(
        self, request: Message, keep_alive: bool, client_gone: Callable[[], bool] | None = None
    ) -> tuple[int, bytes]:
        tried: set[str] = set()
        for attempt in range(RETRIES_PER_REQUEST + 1):
            try:
                upstream = await self._acquire(tried, client_gone)
            except _Shed as exc:
                SHED.labels(self.key).inc()
                start, headers, body = simple_response(503, exc.message, [(b"retry-after", b"1")])
                return 503, serialize(start, headers, body, keep_alive)
            if upstream is None:
                break
            tried.add(upstream.backend.id)
            if attempt:
                RETRIES.labels(self.key).inc()
            meter = self.meter(upstream.backend.revision)
            started = time.time()
            upstream.inflight += 1
            meter.start(started)
            status = 0
            try:
                response = await asyncio.wait_for(upstream.exchange(request), UPSTREAM_TIMEOUT)
                status = status_code(response.start) or 502
            except UpstreamFailed as exc:
                log.warning("%s: replica %s failed: %s", self.key, upstream.backend.id, exc)
                self._failed(upstream)
                continue
            except TimeoutError:
                status = 504
                self._failed(upstream)
                start, headers, body = simple_response(504, "the replica did not answer in time")
                return 504, serialize(start, headers, body, keep_alive)
            finally:
                upstream.inflight -= 1
                ended = time.time()
                meter.end(ended, status or 502, ended - started)
                self._release(upstream)
            if status >= 500:
                self._failed(upstream)
            else:
                self._succeeded(upstream)
            if status_code(response.start) == 0:
                start, headers, body = simple_response(
                    502, "the replica sent a malformed status line"
                )
                return 502, serialize(start, headers, body, keep_alive)
            if 200 <= status < 300 and len(response.body) <= SAMPLE_BODY_LIMIT:
                samples = self.samples.get(upstream.backend.revision)
                if samples is None:
                    samples = self.samples[upstream.backend.revision] = deque(maxlen=SAMPLES_KEPT)
                samples.append((ended, response.body))
            self._maybe_mirror(request, upstream.backend.revision, status, response.body)
            length = (
                response.header(b"content-length")
                if request.start.startswith(b"HEAD ") or status in (204, 304)
                else None
            )
            return status, serialize(
                response.start, response.headers, response.body, keep_alive, length
            )
        start, headers, body = simple_response(
            502, f"all {len(tried)} replica(s) tried failed", [(b"retry-after", b"1")]
        )
        return 502, serialize(start, headers, body, keep_alive)

    # -- mirroring -----------------------------------------------------------------------------

    def _maybe_mirror(self, request: Message, primary: str, status: int, body: bytes) -> None:
        policy = self.policy
        target = policy.mirror_revision
        if not target or target == primary or policy.mirror_percent <= 0:
            return
        if random.random() * 100.0 >= policy.mirror_percent or self._mirror_slots.locked():
            return
        self._spawn(self._mirror(request, primary, status, body, target))

    async def _mirror(
        self, request: Message, primary: str, status: int, body: bytes, target: str
    ) -> None:
        cap = self.policy.max_concurrency
        candidates = [
            u
            for u in self.upstreams.values()
            if u.backend.revision == target and not u.ejected() and (cap <= 0 or u.inflight < cap)
        ]
        if not candidates:
            return
        upstream = min(random.sample(candidates, min(2, len(candidates))), key=lambda u: u.inflight)
        async with self._mirror_slots:
            meter = self.meter(target)
            started = time.time()
            upstream.inflight += 1
            meter.start(started)
            mirror_status, mirror_body = 0, b""
            try:
                response = await asyncio.wait_for(upstream.exchange(request), UPSTREAM_TIMEOUT)
                mirror_status, mirror_body = status_code(response.start), response.body
            except (UpstreamFailed, TimeoutError):
                mirror_status = 502
            finally:
                upstream.inflight -= 1
                ended = time.time()
                meter.end(ended, mirror_status or 502, ended - started)
                self._release(upstream)
        path = request.start.split(b" ")[1].decode("latin-1") if b" " in request.start else ""
        self.mirrors.append(
            MirrorRecord(
                time=started,
                path=path,
                request=request.body[:MIRROR_BODY_LIMIT],
                primary_revision=primary,
                primary_status=status,
                primary_body=body[:MIRROR_BODY_LIMIT],
                mirror_revision=target,
                mirror_status=mirror_status,
                mirror_body=mirror_body[:MIRROR_BODY_LIMIT],
            )
        )

    # -- measurements ----------------------------------------------------------------------------

    def close_buckets(self, now: float) -> None:
        for meter in self.meters.values():
            meter.close_bucket(now)
        self._forget_gone(now)

    def _forget_gone(self, now: float) -> None:
        """Drop the meters and samples of revisions that left (no replica, no weight, not
        mirrored) once their history window has passed: rollouts add revisions for ever."""
        live = {u.backend.revision for u in self.upstreams.values()}
        live |= set(self.policy.weights)
        if self.policy.mirror_revision:
            live.add(self.policy.mirror_revision)
        for revision in set(self.meters) | set(self.samples):
            if revision in live:
                self._gone.pop(revision, None)
                continue
            since = self._gone.setdefault(revision, now)
            meter = self.meters.get(revision)
            if now - since < RevisionMeter.HISTORY or (meter is not None and meter.inflight):
                continue
            if meter is not None:
                meter.forget()
                del self.meters[revision]
            self.samples.pop(revision, None)
            self._gone.pop(revision, None)

    def buckets(self, since: float = 0.0) -> dict[str, list[Bucket]]:
        return {rev: [b for b in m.buckets if b.end > since] for rev, m in self.meters.items()}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.set_backends([])
        # closing client connections lets their handlers return on their own
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for meter in self.meters.values():
            meter.forget()
        # a deployment created again under this name starts its counts from zero
        for per_deployment in (SHED, RETRIES, EJECTIONS, QUEUED):
            with contextlib.suppress(KeyError):
                per_deployment.remove(self.key)
        if self.server is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.server.wait_closed()


def _client_keep_alive(request: Message) -> bool:
    tokens = request.connection_tokens()
    if request.start.endswith(b"HTTP/1.0"):
        return b"keep-alive" in tokens
    return b"close" not in tokens


async def _reply_error(
    writer: asyncio.StreamWriter, status: int, message: str, keep_alive: bool
) -> None:
    start, headers, body = simple_response(status, message)
    with contextlib.suppress(ConnectionError):
        writer.write(serialize(start, headers, body, keep_alive))
        await writer.drain()


class Router:
    """All routes of the embedded control plane, in the daemon's event loop."""

    def __init__(
        self, host: str = "127.0.0.1", on_activate: Callable[[str], None] | None = None
    ) -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.on_activate = on_activate
        self._ticker: asyncio.Task[None] | None = None

    async def ensure_route(self, key: str, port: int = 0) -> str:
        """Start the listener for ``key`` if needed; returns its URL."""
        route = self.routes.get(key)
        if route is not None and route.server is not None:
            return route.url
        route = route or Route(key, self.on_activate)
        try:
            route.server = await asyncio.start_server(
                route.handle,
                self.host,
                port,
                limit=MAX_HEAD_BYTES,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            if not port:
                raise
            # the port it had is taken now: any port (clients read status.url again)
            log.warning("route %s: port %d unavailable (%s); using another", key, port, exc)
            route.server = await asyncio.start_server(
                route.handle, self.host, 0, limit=MAX_HEAD_BYTES, reuse_address=True, backlog=1024
            )
        bound = route.server.sockets[0].getsockname()
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        route.url = f"http://{host}:{bound[1]}"
        self.routes[key] = route
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="router-meters")
        log.info("route %s listening on %s", key, route.url)
        return route.url

    async def _tick(self) -> None:
        """Close every revision's one-second bucket, once a second."""
        while self.routes:
            await asyncio.sleep(1.0)
            now = time.time()
            for route in list(self.routes.values()):
                route.close_buckets(now)

    def set_backends(self, key: str, backends: list[Backend]) -> None:
        route = self.routes.get(key)
        if route is not None:
            route.set_backends(backends)

    def set_policy(self, key: str, policy: TrafficPolicy) -> None:
        route = self.routes.get(key)
        if route is not None:
            route.set_policy(policy)

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

    def route(self, key: str) -> Route | None:
        return self.routes.get(key)

    async def remove(self, key: str) -> None:
        route = self.routes.pop(key, None)
        if route is not None:
            await route.close()

    async def close(self) -> None:
        for key in list(self.routes):
            await self.remove(key)
        if self._ticker is not None:
            self._ticker.cancel()
