"""One replica as the router sees it: pooled keep-alive connections, requests in
flight, and outlier state (consecutive failures, ejection, probing back in)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pilothouse.router.http1 import (
    MAX_HEAD_BYTES,
    Message,
    ProtocolError,
    read_body,
    read_head,
    serialize,
)

POOL_SIZE = 32
MAX_RESPONSE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Backend:
    """A ready replica: its id, address, the revision it serves, and how to probe it."""

    id: str
    host: str
    port: int
    revision: str = ""
    readiness_path: str = "/v2/health/ready"


class UpstreamFailed(Exception):
    """The replica failed before any response byte: safe to retry elsewhere."""


@dataclass
class Upstream:
    backend: Backend
    inflight: int = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    async def exchange(self, request: Message) -> Message:
        """Send one request; a stale pooled connection is replaced by a fresh one once."""
        head = serialize(request.start, request.headers, request.body, keep_alive=True)
        is_head = request.start.startswith(b"HEAD ")
        while True:
            pooled = bool(self.idle)
            if pooled:
                reader, writer = self.idle.pop()
            else:
                try:
                    reader, writer = await asyncio.open_connection(
                        self.backend.host, self.backend.port, limit=MAX_HEAD_BYTES
                    )
                except OSError as exc:
                    raise UpstreamFailed(f"connect: {exc}") from exc
            try:
                writer.write(head)
                await writer.drain()
                response = await read_head(reader)
            except (ConnectionError, ProtocolError, asyncio.IncompleteReadError) as exc:
                writer.close()
                if pooled:
                    continue
                raise UpstreamFailed(str(exc)) from exc
            if response is None:
                writer.close()
                if pooled:
                    continue
                raise UpstreamFailed("closed the connection before responding")
            try:
                no_body = is_head or response.start[9:12] in (b"204", b"304")
                reusable = b"close" not in response.connection_tokens()
                if not no_body:
                    delimited = response.header(b"content-length") is not None or b"chunked" in (
                        response.header(b"transfer-encoding") or b""
                    )
                    reusable = reusable and delimited
                    response.body = await read_body(
                        reader, response, MAX_RESPONSE_BYTES, until_eof=not delimited
                    )
            except (ConnectionError, ProtocolError, asyncio.IncompleteReadError) as exc:
                writer.close()
                # The replica died mid-response. Nothing reached the client yet (responses
                # are buffered) and inference is idempotent, so this is retryable too.
                raise UpstreamFailed(f"broke off its response: {exc}") from exc
            if reusable and len(self.idle) < POOL_SIZE:
                self.idle.append((reader, writer))
            else:
                writer.close()
            return response

    async def probe(self, limit: float = 1.0) -> bool:
        """One readiness request on a fresh connection (used to let an ejected replica back in)."""
        request = Message(
            start=b"GET " + self.backend.readiness_path.encode() + b" HTTP/1.1",
            headers=[(b"host", self.backend.host.encode())],
        )
        fresh = Upstream(self.backend)
        try:
            response = await asyncio.wait_for(fresh.exchange(request), limit)
        except (UpstreamFailed, TimeoutError):
            return False
        finally:
            fresh.close()
        return response.start[9:12] == b"200"


def status_code(start: bytes) -> int:
    parts = start.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
        return 0
    return int(parts[1])
