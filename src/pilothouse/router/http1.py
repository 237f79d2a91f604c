"""Just enough HTTP/1.1 framing for a reverse proxy, on asyncio streams.

The router reads only the request line, the headers and the body framing; it
never parses a JSON body. Bodies are forwarded with a Content-Length (chunked
request bodies are de-chunked), so replicas see plain, bounded requests.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"content-length",
    }
)
MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 framing; ``status`` is what to answer the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class BodyTooLarge(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the router's limit of {limit} bytes")


@dataclass
class Message:
    """A request or response head plus its (fully read) body."""

    start: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def connection_tokens(self) -> set[bytes]:
        value = self.header(b"connection") or b""
        return {t.strip().lower() for t in value.split(b",") if t.strip()}


async def read_head(reader: asyncio.StreamReader) -> Message | None:
    """Read a start line and headers; None on a clean EOF before any byte."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError(400, "connection closed in the middle of the headers") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(431, "request headers too large") from exc
    lines = raw[:-4].split(b"\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    return Message(start=lines[0], headers=headers)


async def read_body(
    reader: asyncio.StreamReader, message: Message, limit: int, until_eof: bool = False
) -> bytes:
    """Read the body announced by the head: Content-Length, chunked, or (responses) to EOF."""
    encoding = (message.header(b"transfer-encoding") or b"").lower()
    if b"chunked" in encoding:
        return await _read_chunked(reader, limit)
    length = message.header(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(400, "invalid Content-Length")
        size = int(length)
        if size > limit:
            raise BodyTooLarge(limit)
        return await reader.readexactly(size)
    if until_eof:
        data = await reader.read(limit + 1)
        body = bytearray(data)
        while data:
            if len(body) > limit:
                raise BodyTooLarge(limit)
            data = await reader.read(65536)
            body += data
        return bytes(body)
    return b""


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_TRAILERS = 32


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(400, "chunked framing line too long") from exc


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_text = (await _line(reader)).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise ProtocolError(400, "invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            # trailers, then the final empty line
            for _ in range(MAX_TRAILERS):
                if await _line(reader) == b"\r\n":
                    return bytes(body)
            raise ProtocolError(400, "too many trailer lines")
        if len(body) + size > limit:
            raise BodyTooLarge(limit)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError(400, "chunk data not followed by CRLF")


def serialize(
    start: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    keep_alive: bool,
    content_length: bytes | None = None,
) -> bytes:
    """Head + body with our own framing headers (hop-by-hop ones are replaced).

    ``content_length`` overrides the body's length: a response to HEAD keeps the
    length the upstream announced although no body follows.
    """
    out = [start]
    for name, value in headers:
        if name not in HOP_BY_HOP:
            out.append(name + b": " + value)
    length = content_length if content_length is not None else str(len(body)).encode()
    out.append(b"content-length: " + length)
    out.append(b"connection: keep-alive" if keep_alive else b"connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def simple_response(
    status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    import json

    reason = {
        400: b"Bad Request",
        404: b"Not Found",
        408: b"Request Timeout",
        413: b"Payload Too Large",
        431: b"Request Header Fields Too Large",
        502: b"Bad Gateway",
        503: b"Service Unavailable",
        504: b"Gateway Timeout",
    }.get(status, b"Error")
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    return b"HTTP/1.1 " + str(status).encode() + b" " + reason, headers, body
