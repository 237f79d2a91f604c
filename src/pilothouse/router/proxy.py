"""Reverse proxy: least-outstanding balancing, weighted revisions, mirroring, outlier
ejection a client cannot weaponise, bounded queueing with load shedding, holding
requests while a revision has no ready replica, and bounded connections and memory.

One listener per deployment (its ``status.url``). A request goes to a revision chosen
by the traffic weights, then to the ready replica of that revision with fewer requests
in flight among two picked at random (power of two choices).

Retries. Responses are buffered, so nothing reaches the client until an attempt
succeeded, and inference is idempotent: a request whose connection fails, whose replica
dies mid-response, or that gets a 5xx is retried (at most ``RETRIES_PER_REQUEST`` times,
within one overall deadline): first on another replica of the same revision, and once on
another revision when there is one (so that a request which fails everywhere is known to
be the request's fault). When no ready replica is left (all killed, or scaled to zero)
the request waits, bounded by the queue's limit and timeout, for a replacement.

Attribution. A failed attempt counts against a replica (outlier ejection) only when
another replica of the same revision answered the same request: failures every replica
shares are the request's, never the replica's. It counts against a revision (the
rollout analysis' ``errorRate``) unless the request failed on another revision as well.
4xx answers are the client's and count against nobody.

Ejection. Three attributed failures in a row eject a replica for an exponentially
growing time (reset after a healthy minute); it comes back after a successful readiness
probe. At most ``max_ejection_percent`` of a revision's replicas are ejected at once, and
never its last one.

Bounds. Connections are capped in total (all routes of the process) and per client
address (503 with Retry-After past either); a connection must send its first byte, its
head and its body within timeouts; request and response bodies held by the router count
against one budget for the whole process (503 when exhausted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pilothouse.ports.dataplane import Traffic
from pilothouse.router.http1 import (
    MAX_HEAD_BYTES,
    BodyBudget,
    BudgetExhausted,
    ProtocolError,
    Reply,
    Request,
    RequestParser,
    Response,
    serialize_response,
)
from pilothouse.router.metrics import (
    EJECTIONS,
    EXCUSED,
    QUEUED,
    RETRIES,
    SHED,
    Bucket,
    RevisionMeter,
)
from pilothouse.router.upstream import Backend, Upstream, UpstreamFailed

__all__ = ["Backend", "MirrorRecord", "Route", "Router", "RouterLimits", "TrafficPolicy"]

log = logging.getLogger("pilothouse.router")
RETRIES_PER_REQUEST = 2
#: one request's attempts together, retries included
UPSTREAM_TIMEOUT = 60.0
FAILURES_TO_EJECT = 3
BASE_EJECTION = 2.0
MAX_EJECTION = 30.0
#: a replica back from ejection for this long starts its back-off from the beginning again
HEALTHY_RESET = 60.0
MIRROR_CONCURRENCY = 32
MIRROR_BODY_LIMIT = 64 * 1024
#: recent successful responses kept per revision, for rollout analysis of predictions
SAMPLES_KEPT = 1000
SAMPLE_BODY_LIMIT = 16 * 1024
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RouterLimits:
    """What one client, or all of them together, can make the router hold."""

    #: client connections across every route of the process (size it well below
    #: RLIMIT_NOFILE: the daemon derives it from the limit)
    max_connections: int = 4096
    #: client connections from one address
    max_connections_per_peer: int = 1024
    #: a new connection must send its first byte within this
    first_byte_timeout: float = 10.0
    #: from a request's first byte to the end of its head
    header_timeout: float = 10.0
    #: from the end of the head to the end of the body
    body_timeout: float = 30.0
    #: an idle keep-alive connection between two requests
    keepalive_timeout: float = 60.0
    #: request + response bodies held at once, all connections together
    body_budget: int = 256 * 2**20
    #: one request body
    max_body: int = 16 * 2**20


#: how a deployment's endpoint spreads and limits traffic: the data-plane port's own value,
#: taken as it is (the embedded router is that port's implementation)
TrafficPolicy = Traffic


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


@dataclass
class _Attempt:
    upstream: Upstream
    revision: str
    ok: bool
    ended: float


class _ClientGone(Exception):
    """The client closed its connection while its request waited."""


class _Shed(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class _Shared:
    """What every route of one router shares: limits, connection counts, the body budget."""

    def __init__(self, limits: RouterLimits) -> None:
        self.limits = limits
        self.budget = BodyBudget(limits.body_budget)
        self.connections = 0
        self.per_peer: Counter[str] = Counter()

    def admit(self, peer: str) -> str | None:
        """Count a new connection in, or say why not."""
        if self.connections >= self.limits.max_connections:
            return "too many client connections"
        if self.per_peer[peer] >= self.limits.max_connections_per_peer:
            return "too many connections from this address"
        self.connections += 1
        self.per_peer[peer] += 1
        return None

    def leave(self, peer: str) -> None:
        self.connections -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]


class Route:
    """One deployment's listener, replicas, traffic policy and measurements."""

    def __init__(
        self,
        key: str,
        on_activate: Callable[[str], None] | None = None,
        shared: _Shared | None = None,
    ) -> None:
        self.key = key
        self.shared = shared or _Shared(RouterLimits())
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
        #: when set, every request is answered 503 with this message at once (a router pod
        #: that has no traffic configuration yet)
        self.refusal: str | None = None

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
                self.upstreams[backend_id] = Upstream(backend, self.shared.budget)
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

    def _pick(
        self, exclude: set[str], prefer: Callable[[str], int] | None = None
    ) -> Upstream | None:
        """A replica by weight and load; on a retry, ``prefer`` ranks revisions (lower first)."""
        candidates = self._available(exclude)
        if not candidates:
            return None
        weights = self.policy.weights
        if weights:
            # a revision without a positive weight gets no live traffic (mirrors aside)
            candidates = [u for u in candidates if weights.get(u.backend.revision, 0.0) > 0]
            if not candidates:
                return None
        if prefer is not None:
            best = min(prefer(u.backend.revision) for u in candidates)
            candidates = [u for u in candidates if prefer(u.backend.revision) == best]
        elif weights:
            revisions = sorted({u.backend.revision for u in candidates})
            shares = [weights[r] for r in revisions]
            chosen = random.choices(revisions, weights=shares)[0]
            candidates = [u for u in candidates if u.backend.revision == chosen]
        if len(candidates) == 1:
            return candidates[0]
        a, b = random.sample(candidates, 2)
        return a if a.inflight <= b.inflight else b

    def _usable_exists(self, exclude: set[str]) -> bool:
        """A replica not in ``exclude`` could take live traffic (when it has room)."""
        weights = self.policy.weights
        return any(
            bid not in exclude
            and not u.ejected()
            and (not weights or weights.get(u.backend.revision, 0.0) > 0)
            for bid, u in self.upstreams.items()
        )

    async def _acquire(
        self,
        exclude: set[str],
        deadline: float,
        client_gone: Callable[[], bool] | None = None,
        prefer: Callable[[str], int] | None = None,
        give_up_when_tried: bool = True,
    ) -> Upstream | None:
        """A replica with capacity; waits (bounded) when all are busy or none is ready.

        Returns None when every usable replica was already tried and waiting for another
        is pointless (``give_up_when_tried``: the last attempt got an answer); raises _Shed
        when the request must be refused, _ClientGone when its client left meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.policy.queue_timeout)
        while True:
            upstream = self._pick(exclude, prefer)
            if upstream is not None:
                return upstream
            if give_up_when_tried and exclude and not self._usable_exists(exclude):
                return None
            empty = not any(not u.ejected() for u in self.upstreams.values())
            if len(self._waiters) >= self.policy.queue_limit:
                raise _Shed("every replica is at capacity and the queue is full")
            if empty and self.policy.hold_when_empty and self._on_activate is not None:
                self._on_activate(self.key)
            waiter = _Waiter(loop.create_future(), frozenset(exclude))
            self._waiters.append(waiter)
            QUEUED.labels(self.key).set(len(self._waiters))
            try:
                while not waiter.future.done():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise _Shed(
                            "no ready replica for this deployment"
                            if empty or not self._usable_exists(exclude)
                            else "no replica became available in time"
                        )
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

    def _attribute(
        self, attempts: list[_Attempt], failed_elsewhere: frozenset[str] = frozenset()
    ) -> None:
        """After a request: which failures were the replica's, which the revision's.

        ``failed_elsewhere``: revisions its mirrored copy failed on."""
        succeeded = {a.revision for a in attempts if a.ok}
        revisions = {a.revision for a in attempts} | failed_elsewhere
        for attempt in attempts:
            upstream = attempt.upstream
            if attempt.ok:
                upstream.consecutive_failures = 0
                continue
            if attempt.revision in succeeded:
                # another replica of its revision answered this very request
                self._failed(upstream)
            if succeeded or len(revisions) == 1:
                self.meter(attempt.revision).error()
            else:
                # it failed on another revision too: the request's fault, not the revision's
                self.meter(attempt.revision).excused()
                EXCUSED.labels(self.key).inc()

    def _failed(self, upstream: Upstream) -> None:
        upstream.consecutive_failures += 1
        if upstream.consecutive_failures < FAILURES_TO_EJECT or upstream.ejected():
            return
        revision = upstream.backend.revision
        peers = [u for u in self.upstreams.values() if u.backend.revision == revision]
        ejected = sum(1 for u in peers if u.ejected())
        allowed = int(len(peers) * self.policy.max_ejection_percent / 100.0)
        if upstream.backend.id not in self.upstreams or ejected + 1 > min(allowed, len(peers) - 1):
            return  # never more than the share, never the last one standing
        now = time.monotonic()
        if upstream.returned_at and now - upstream.returned_at >= HEALTHY_RESET:
            upstream.ejections = 0
        upstream.ejections += 1
        duration = min(MAX_EJECTION, BASE_EJECTION * 2 ** (upstream.ejections - 1))
        upstream.ejected_until = now + duration
        upstream.close()
        EJECTIONS.labels(self.key).inc()
        log.warning(
            "%s: ejected replica %s for %.0fs after %d failures that other replicas of "
            "revision %s did not share",
            self.key,
            upstream.backend.id,
            duration,
            upstream.consecutive_failures,
            revision,
        )
        self._spawn(self._probe_back(upstream))

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
                upstream.returned_at = time.monotonic()
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
        shared, limits = self.shared, self.shared.limits
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        refused = shared.admit(client_ip)
        if refused is not None:
            self.codes["503"] += 1
            with contextlib.suppress(Exception):
                writer.write(Reply(503, refused, [(b"retry-after", b"1")]).encode(False))
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        forwarded_for = ((b"x-forwarded-for", client_ip.encode()),)
        parser = RequestParser(shared.budget, limits.max_body)
        loop = asyncio.get_running_loop()
        phase = "idle"

        def client_gone() -> bool:
            return reader.at_eof() or writer.transport.is_closing()

        def expire() -> None:
            """Past the deadline of what is being read: answer 408 if a request had begun,
            and close (the pending read then ends). One timer per connection, moved when
            the deadline moves: cheaper than a timeout scope around every read."""
            if parser.phase != "idle":
                self.codes["408"] += 1
                writer.write(
                    Reply(408, f"request {parser.phase} not received in time").encode(False)
                )
            writer.close()

        timer = loop.call_later(limits.first_byte_timeout, expire)
        try:
            while True:
                while not parser.ready:
                    data = await reader.read(65536)
                    if not data:
                        return
                    try:
                        parser.feed(data)
                    except ProtocolError as exc:
                        self.codes[str(exc.status)] += 1
                        extra = [(b"retry-after", b"1")] if exc.status == 503 else []
                        writer.write(Reply(exc.status, str(exc), extra).encode(False))
                        parser.release()
                        await _linger(reader, writer)
                        return
                    if parser.phase != phase:
                        phase = parser.phase
                        timer.cancel()
                        timer = loop.call_later(
                            limits.header_timeout if phase == "head" else limits.body_timeout,
                            expire,
                        )
                    if parser.expect_continue:
                        parser.expect_continue = False
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request = parser.ready.popleft()
                timer.cancel()  # forwarding has deadlines of its own
                try:
                    status, head, body, held = await self._forward(
                        request, forwarded_for, client_gone
                    )
                except _ClientGone:
                    self.codes["499"] += 1  # nginx's "client closed request"
                    return
                except Exception:
                    # a bug of ours must not leave the client without an answer
                    log.exception(
                        "%s: request %s %r failed", self.key, request.method, request.target
                    )
                    self.codes["502"] += 1
                    writer.write(Reply(502, "the router failed this request").encode(False))
                    return
                finally:
                    shared.budget.give(request.reserved)
                keep_alive = request.keep_alive
                try:
                    self.codes[str(status)] += 1
                    writer.write(head)
                    if body:
                        writer.write(body)
                    await writer.drain()
                finally:
                    shared.budget.give(held)
                if not keep_alive:
                    return
                phase = parser.phase
                timer = loop.call_later(
                    limits.keepalive_timeout if phase == "idle" else limits.header_timeout, expire
                )
        except ConnectionError:
            return
        finally:
            timer.cancel()
            parser.release()
            for pending in parser.ready:
                shared.budget.give(pending.reserved)
            writer.close()
            self._writers.discard(writer)
            shared.leave(client_ip)
            if task is not None:
                self._tasks.discard(task)

    async def _forward(
        self,
        request: Request,
        extra: tuple[tuple[bytes, bytes], ...],
        client_gone: Callable[[], bool] | None = None,
    ) -> tuple[int, bytes, bytes, int]:
        """(status, response head, body, budget bytes held by the body) for one request.

        Failures are attributed once the request is over; when it is mirrored and failed,
        only after the mirror answered too (both sides failing excuses both)."""
        attempts: list[_Attempt] = []
        deferred = False
        try:
            result, body = await self._attempts(request, extra, client_gone, attempts)
            if attempts:
                deferred = self._maybe_mirror(
                    request, attempts[-1].revision, result[0], body, attempts
                )
            return result
        finally:
            if not deferred:
                self._attribute(attempts)

    async def _attempts(
        self,
        request: Request,
        extra: tuple[tuple[bytes, bytes], ...],
        client_gone: Callable[[], bool] | None,
        attempts: list[_Attempt],
    ) -> tuple[tuple[int, bytes, bytes, int], bytes]:
        """Try replicas until one answers (retries, holding); the answer and its body."""
        keep_alive = request.keep_alive
        if self.refusal is not None:
            reply = Reply(503, self.refusal, [(b"retry-after", b"1")])
            return (503, reply.encode(keep_alive), b"", 0), b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPSTREAM_TIMEOUT
        head = request.head_bytes(extra)
        head_request = request.method == "HEAD"
        tried: set[str] = set()
        last: Response | None = None
        for attempt in range(RETRIES_PER_REQUEST + 1):
            prefer = _retry_preference(attempts) if attempts else None
            try:
                upstream = await self._acquire(
                    tried, deadline, client_gone, prefer, give_up_when_tried=last is not None
                )
            except _Shed as exc:
                if last is not None:
                    break
                SHED.labels(self.key).inc()
                reply = Reply(503, exc.message, [(b"retry-after", b"1")])
                return (503, reply.encode(keep_alive), b"", 0), b""
            if upstream is None:
                break
            tried.add(upstream.backend.id)
            if attempt:
                RETRIES.labels(self.key).inc()
            revision = upstream.backend.revision
            meter = self.meter(revision)
            started = time.time()
            upstream.inflight += 1
            meter.start(started)
            status = 0
            response: Response | None = None
            try:
                response = await upstream.exchange(head, request.body, head_request, deadline)
                status = response.status
            except UpstreamFailed as exc:
                log.warning("%s: replica %s failed: %s", self.key, upstream.backend.id, exc)
                status = 502
            except TimeoutError:
                status = 504
            except BudgetExhausted as exc:
                SHED.labels(self.key).inc()
                reply = Reply(503, str(exc), [(b"retry-after", b"1")])
                return (503, reply.encode(keep_alive), b"", 0), b""
            finally:
                upstream.inflight -= 1
                ended = time.time()
                meter.end(ended, status or 502, ended - started)
                self._release(upstream)
            ok = response is not None and status not in _RETRY_STATUSES
            attempts.append(_Attempt(upstream, revision, ok, ended))
            if response is not None:
                if last is not None:
                    self.shared.budget.give(last.reserved)
                last = response
            if status == 504:
                break  # the request had all its time: nothing left for another try
            if ok:
                assert response is not None
                return self._answer(request, upstream, response, keep_alive), response.body
        if last is not None:
            # every attempt failed; the last answer a replica gave is the most useful one
            return self._answer(request, None, last, keep_alive), last.body
        if attempts and loop.time() >= deadline:
            reply = Reply(504, "the replica did not answer in time")
            return (504, reply.encode(keep_alive), b"", 0), b""
        reply = Reply(502, f"all {len(tried)} replica(s) tried failed", [(b"retry-after", b"1")])
        return (502, reply.encode(keep_alive), b"", 0), b""

    def _answer(
        self, request: Request, upstream: Upstream | None, response: Response, keep_alive: bool
    ) -> tuple[int, bytes, bytes, int]:
        status = response.status
        if upstream is not None:
            revision = upstream.backend.revision
            if 200 <= status < 300 and len(response.body) <= SAMPLE_BODY_LIMIT:
                samples = self.samples.get(revision)
                if samples is None:
                    samples = self.samples[revision] = deque(maxlen=SAMPLES_KEPT)
                samples.append((time.time(), response.body))
        length = (
            response.declared_length if request.method == "HEAD" or status in (204, 304) else None
        )
        body = b"" if request.method == "HEAD" or status in (204, 304) else response.body
        head = serialize_response(
            status, response.reason, response.headers, body, keep_alive, length
        )
        return status, head, body, response.reserved

    # -- mirroring -----------------------------------------------------------------------------

    def _maybe_mirror(
        self, request: Request, primary: str, status: int, body: bytes, attempts: list[_Attempt]
    ) -> bool:
        """Copy the request to the mirrored revision (a share of them). True when the
        mirror takes over attributing the request's failures (it failed: whether the
        mirror fails it too decides whose fault it was)."""
        policy = self.policy
        target = policy.mirror_revision
        if not target or target == primary or policy.mirror_percent <= 0:
            return False
        if random.random() * 100.0 >= policy.mirror_percent or self._mirror_slots.locked():
            return False
        failed = status >= 500
        self._spawn(
            self._mirror(request, primary, status, body, target, attempts if failed else None)
        )
        return failed

    async def _mirror(
        self,
        request: Request,
        primary: str,
        status: int,
        body: bytes,
        target: str,
        attempts: list[_Attempt] | None = None,
    ) -> None:
        mirror_status = 0
        try:
            mirror_status = await self._mirror_once(request, primary, status, body, target)
        finally:
            if attempts is not None:
                self._attribute(
                    attempts, frozenset({target}) if mirror_status >= 500 else frozenset()
                )

    async def _mirror_once(
        self, request: Request, primary: str, status: int, body: bytes, target: str
    ) -> int:
        cap = self.policy.max_concurrency
        candidates = [
            u
            for u in self.upstreams.values()
            if u.backend.revision == target and not u.ejected() and (cap <= 0 or u.inflight < cap)
        ]
        if not candidates:
            return 0
        upstream = min(random.sample(candidates, min(2, len(candidates))), key=lambda u: u.inflight)
        async with self._mirror_slots:
            meter = self.meter(target)
            started = time.time()
            upstream.inflight += 1
            meter.start(started, mirror=True)
            mirror_status, mirror_body = 0, b""
            try:
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    response = await upstream.exchange(
                        request.head_bytes(), request.body, request.method == "HEAD"
                    )
                mirror_status, mirror_body = response.status, response.body
                self.shared.budget.give(response.reserved)
            except (UpstreamFailed, TimeoutError, BudgetExhausted):
                mirror_status = 502
            finally:
                upstream.inflight -= 1
                ended = time.time()
                meter.end(ended, mirror_status or 502, ended - started, mirror=True)
                if mirror_status >= 500:
                    # a mirrored request the serving revision failed too is the request's
                    # fault: it never counts against the mirror
                    if status >= 500:
                        meter.excused()
                        EXCUSED.labels(self.key).inc()
                    else:
                        meter.error()
                self._release(upstream)
        self.mirrors.append(
            MirrorRecord(
                time=started,
                path=request.path,
                request=request.body[:MIRROR_BODY_LIMIT],
                primary_revision=primary,
                primary_status=status,
                primary_body=body[:MIRROR_BODY_LIMIT],
                mirror_revision=target,
                mirror_status=mirror_status,
                mirror_body=mirror_body[:MIRROR_BODY_LIMIT],
            )
        )
        return mirror_status

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
        for per_deployment in (SHED, RETRIES, EJECTIONS, QUEUED, EXCUSED):
            with contextlib.suppress(KeyError):
                per_deployment.remove(self.key)
        if self.server is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.server.wait_closed()


LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 2**20


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after an error answer without losing it: a client still sending its body
    would otherwise get a reset that discards the answer (nginx's lingering close). What
    it sends meanwhile is read and dropped, bounded in time and bytes."""
    with contextlib.suppress(Exception):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        dropped = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES and (chunk := await reader.read(65536)):
                dropped += len(chunk)


def _retry_preference(attempts: list[_Attempt]) -> Callable[[str], int]:
    """Where a retry goes: another revision if only one was tried and a 5xx or failure
    happened there twice (so a request that fails everywhere is known for what it is),
    otherwise another replica of the revision that failed (so that a failure is compared
    with its own peers), then any other revision."""
    revisions = {a.revision for a in attempts}
    first = attempts[0].revision
    cross_check = len(revisions) == 1 and len(attempts) >= 2

    def rank(revision: str) -> int:
        same = revision == first
        if cross_check:
            return 0 if not same else 1
        return 0 if same else 1

    return rank


class Router:
    """All routes of the embedded control plane, in the daemon's event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        on_activate: Callable[[str], None] | None = None,
        limits: RouterLimits | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.on_activate = on_activate
        self.shared = _Shared(limits or RouterLimits())
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls[0], tls[1])
        self._ticker: asyncio.Task[None] | None = None

    @property
    def limits(self) -> RouterLimits:
        return self.shared.limits

    async def ensure_route(self, key: str, port: int = 0) -> str:
        """Start the listener for ``key`` if needed; returns its URL."""
        route = self.routes.get(key)
        if route is not None and route.server is not None:
            return route.url
        route = route or Route(key, self.on_activate, self.shared)
        route._on_activate = self.on_activate
        try:
            route.server = await self._listen(route, port)
        except OSError as exc:
            if not port:
                raise
            # the port it had is taken now: any port (clients read status.url again)
            log.warning("route %s: port %d unavailable (%s); using another", key, port, exc)
            route.server = await self._listen(route, 0)
        bound = route.server.sockets[0].getsockname()
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        scheme = "https" if self._ssl is not None else "http"
        route.url = f"{scheme}://{host}:{bound[1]}"
        self.routes[key] = route
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="router-meters")
        log.info("route %s listening on %s", key, route.url)
        return route.url

    async def _listen(self, route: Route, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            route.handle,
            self.host,
            port,
            limit=MAX_HEAD_BYTES,
            reuse_address=True,
            backlog=1024,
            ssl=self._ssl,
            ssl_handshake_timeout=self.limits.first_byte_timeout if self._ssl else None,
        )

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
