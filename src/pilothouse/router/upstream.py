"""One replica as the router sees it: pooled keep-alive connections, requests in flight,
and its outlier state (recent outcomes, ejection, probing back in).

A pooled connection is an ``asyncio.Protocol`` that owns its llhttp response parser:
bytes a replica sends while no request is outstanding (an unsolicited or second
response) close that connection at once, so they can never be read as the answer to
the next client's request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import cast

from pilothouse.router.http1 import (
    BodyBudget,
    BudgetExhausted,
    ProtocolError,
    Response,
    ResponseParser,
)

POOL_SIZE = 32
MAX_RESPONSE_BYTES = 64 * 2**20
CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Backend:
    """A ready replica: its id, address, the revision it serves, and how to probe it."""

    id: str
    host: str
    port: int
    revision: str = ""
    readiness_path: str = "/v2/health/ready"


class UpstreamFailed(Exception):
    """The replica failed before a complete response: safe to retry elsewhere."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser, waiter = self.parser, self.waiter
        if parser is None or waiter is None or waiter.done():
            self.abort()  # nobody asked: never let these bytes answer a later request
            return
        try:
            parser.feed(data)
        except ProtocolError as exc:
            self.abort()
            waiter.set_exception(exc)
            return
        if parser.response is not None:
            waiter.set_result(parser.response)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser, waiter = self.parser, self.waiter
        if waiter is None or waiter.done():
            return
        if parser is not None and parser.eof():
            assert parser.response is not None
            waiter.set_result(parser.response)
        else:
            waiter.set_exception(ConnectionResetError("closed before the response was complete"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def exchange(
        self, head: bytes, body: bytes, parser: ResponseParser, deadline: float | None = None
    ) -> Response:
        """Send one request and wait for its response; TimeoutError past ``deadline``
        (loop time), and the connection is dropped."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.parser, self.waiter = parser, loop.create_future()
        timer = loop.call_at(deadline, self._expire) if deadline is not None else None
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        try:
            return await self.waiter
        finally:
            if timer is not None:
                timer.cancel()
            self.parser = self.waiter = None

    def _expire(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("the replica did not answer in time"))
        self.abort()


@dataclass
class Outcome:
    """One finished attempt on a replica, for outlier detection."""

    at: float
    ok: bool


@dataclass
class Upstream:
    backend: Backend
    budget: BodyBudget = field(default_factory=lambda: BodyBudget(2**62))
    inflight: int = 0
    idle: list[_Connection] = field(default_factory=list)
    #: recent attributed outcomes (see proxy: a failure counts only when another replica
    #: answered the same request)
    outcomes: deque[Outcome] = field(default_factory=lambda: deque(maxlen=256))
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    #: when it last came back from an ejection (its back-off resets after a healthy period)
    returned_at: float = 0.0

    def close(self) -> None:
        for conn in self.idle:
            conn.abort()
        self.idle.clear()

    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                transport, conn = await loop.create_connection(
                    _Connection, self.backend.host, self.backend.port
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamFailed(f"connect: {exc or 'timed out'}") from exc
        conn.transport = transport
        return conn

    async def exchange(
        self, head: bytes, body: bytes, head_request: bool = False, deadline: float | None = None
    ) -> Response:
        """Send one request; a stale pooled connection is replaced by a fresh one once.

        Raises UpstreamFailed (retryable: nothing reached the client, responses are
        buffered and inference is idempotent), TimeoutError past ``deadline`` (loop
        time) or BudgetExhausted.
        """
        while True:
            conn: _Connection | None = None
            while self.idle:
                candidate = self.idle.pop()
                if candidate.usable:
                    conn = candidate
                    break
            pooled = conn is not None
            if conn is None:
                conn = await self._connect()
            parser = ResponseParser(self.budget, MAX_RESPONSE_BYTES, head_request)
            try:
                response = await conn.exchange(head, body, parser, deadline)
            except BudgetExhausted:
                conn.abort()
                parser.release()
                raise
            except (ConnectionError, ProtocolError) as exc:
                conn.abort()
                parser.release()
                if pooled and not parser.headers_done:
                    continue  # the replica closed an idle connection as we reused it
                raise UpstreamFailed(str(exc) or type(exc).__name__) from exc
            except BaseException:
                conn.abort()  # cancelled (timeout, client gone): the state is unknown
                parser.release()
                raise
            if response.reusable and not parser.trailing and len(self.idle) < POOL_SIZE:
                self.idle.append(conn)
            else:
                conn.abort()
            return response

    async def probe(self, limit: float = 1.0) -> bool:
        """One readiness request on a fresh connection (to let an ejected replica back in)."""
        head = (
            b"GET "
            + self.backend.readiness_path.encode()
            + b" HTTP/1.1\r\nhost: "
            + self.backend.host.encode()
            + b"\r\nconnection: close\r\n\r\n"
        )
        fresh = Upstream(self.backend, self.budget)
        try:
            async with asyncio.timeout(limit):
                response = await fresh.exchange(head, b"")
        except (UpstreamFailed, TimeoutError, BudgetExhausted):
            return False
        finally:
            fresh.close()
        self.budget.give(response.reserved)
        return response.status == 200
