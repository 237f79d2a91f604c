"""Bounded waits for a request head, for the uvicorn servers of pilothouse (replicas and
the control API).

uvicorn (0.55) times only one wait: after a response, a keep-alive connection that
sends nothing for ``timeout_keep_alive`` seconds is closed. Nothing else is timed: a
fresh connection that never sends a byte is held forever, and the keep-alive timer is
cancelled by the first byte of the next request, so a client that sends its head one
byte at a time (slowloris) holds the connection, and a task slot under
``limit_concurrency``, for as long as it likes. llhttp also puts no bound on a head's
size. The protocol classes below add the missing waits, on the events each parser
reports (llhttp's callbacks; h11's states), not on uvicorn's private attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("pilothouse.serving")
MAX_HEAD_BYTES = 64 * 2**10


class _Phase(enum.Enum):
    WAITING = "waiting"  # no request in flight, no byte of the next one yet
    HEAD = "head"  # bytes of a request head have arrived, the head is not complete
    BUSY = "busy"  # a request is being read, served or answered
    REFUSED = "refused"  # answered with an error outside any request; closing


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may wait, or take, to send a request head."""

    first_byte: float = 5.0
    head: float = 10.0
    keep_alive: float = 5.0
    max_head_bytes: int = MAX_HEAD_BYTES


class _HeadClock:
    """One connection's deadline while it is not busy with a request.

    A new connection must start a request within ``first_byte`` seconds, and an idle
    keep-alive one within ``keep_alive`` seconds (as uvicorn's own timer, which the
    first byte of a head cancels); once bytes of a head have arrived, the whole head
    must be in within ``head`` seconds. Past a deadline the connection is closed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        limits: ConnectionLimits,
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.limits = limits
        self.phase = _Phase.WAITING
        self.head_bytes = 0
        self._timer: asyncio.TimerHandle | None = loop.call_later(limits.first_byte, self._expire)

    def received(self, size: int) -> None:
        """Bytes arrived (before the parser sees them)."""
        if self.phase is _Phase.WAITING:
            self.head()
        if self.phase is _Phase.HEAD:
            self.head_bytes += size

    def head(self) -> None:
        """A request head has begun: it has ``head`` seconds to complete."""
        if self.phase is not _Phase.HEAD:
            self.phase = _Phase.HEAD
            self.head_bytes = 0
            self._arm(self.limits.head)

    def busy(self) -> None:
        """A request is in flight: nothing is timed here until it is answered."""
        self.phase = _Phase.BUSY
        self.cancel()

    def waiting(self) -> None:
        """Between requests: the next one must start within ``keep_alive`` seconds."""
        if self.phase is not _Phase.WAITING:
            self.phase = _Phase.WAITING
            self._arm(self.limits.keep_alive)

    @property
    def head_too_large(self) -> bool:
        return self.phase is _Phase.HEAD and self.head_bytes > self.limits.max_head_bytes

    def refuse(self, answer: bytes, linger: float = 2.0) -> None:
        """Send ``answer``, then close: reading (and dropping) what the client still sends
        for ``linger`` seconds, so that it is not reset before it has read the answer."""
        self.phase = _Phase.REFUSED
        self.transport.write(answer)
        # half-close so the client reads the answer; TLS transports cannot
        # (NotImplementedError) and a closing one may refuse: then the timer closes it
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            self.transport.write_eof()
        self._arm(linger)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, seconds: float) -> None:
        self.cancel()
        self._timer = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.phase is not _Phase.BUSY and not self.transport.is_closing():
            log.debug(
                "closing a connection: no complete request head in time (%s)", self.phase.value
            )
            self.transport.close()


def _refusal(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for use outside any request."""
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii") + body


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's llhttp protocol, with :class:`_HeadClock`'s deadlines and a head size bound."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._clock = _HeadClock(self.loop, transport, self.limits)
        self._in_head = False  # llhttp is between on_message_begin and on_headers_complete
        self._in_body = False  # ... between on_headers_complete and on_message_complete
        self._owed = 0  # heads complete, responses not yet complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._clock.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._clock.phase is _Phase.REFUSED:
            return  # answered and closing: what still comes is dropped
        self._clock.received(len(data))
        super().data_received(data)
        if self._clock.head_too_large and not self.transport.is_closing():
            message = f"request head larger than {self.limits.max_head_bytes} bytes"
            self._clock.refuse(_refusal(431, message))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._clock.phase is _Phase.WAITING:
            self._clock.head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._owed += 1
        self._clock.busy()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        if self._owed == 0:  # answered before its body was in (a 413, say)
            self._settle()

    def on_response_complete(self) -> None:
        self._owed = max(self._owed - 1, 0)
        super().on_response_complete()
        self._settle()

    def _settle(self) -> None:
        if self._owed or self._in_body:
            self._clock.busy()
        elif self._in_head:
            self._clock.head()
        else:
            self._clock.waiting()


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with :class:`_HeadClock`'s deadlines (h11 bounds head size)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._clock = _HeadClock(self.loop, transport, self.limits)

    def connection_lost(self, exc: Exception | None) -> None:
        self._clock.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._clock.received(len(data))
        super().data_received(data)
        self._settle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._settle()

    def _settle(self) -> None:
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.IDLE and ours is h11.IDLE:
            if self._clock.phase is _Phase.BUSY:
                if self.conn.trailing_data[0]:  # part of the next head is already here
                    self._clock.head()
                else:
                    self._clock.waiting()
        else:  # a request in flight, or the connection closing
            self._clock.busy()


def timed_protocol(
    limits: ConnectionLimits, http_impl: Literal["httptools", "h11"] = "httptools"
) -> type[asyncio.Protocol]:
    """A uvicorn protocol class (``http=``) with ``limits`` bound in."""
    base: type[TimedHttpToolsProtocol] | type[TimedH11Protocol] = (
        TimedH11Protocol if http_impl == "h11" else TimedHttpToolsProtocol
    )
    return type(base.__name__, (base,), {"limits": limits})
