"""HTTP/1.1 framing for the router, on llhttp (``httptools``, the parser uvicorn uses).

Both directions are parsed by llhttp and then checked against the rules a proxy must
enforce on top of it (RFC 9112 §6.3, §11.2): no CR, LF or NUL anywhere in a request
line or header, no obsolete line folding, at most one ``Content-Length`` and never with
``Transfer-Encoding``, ``Transfer-Encoding`` exactly ``chunked``, well-formed chunk sizes,
known methods, origin-form targets, one ``Host``. Anything else is a ``ProtocolError``:
the router answers 400 (502 for a replica's response) and closes the connection.

A request is forwarded as the router re-serialises it from the parsed fields (method,
target, the end-to-end headers, its own ``content-length``), never as the bytes the
client sent, so what one client writes can never become a second request on a pooled
connection to a replica, nor desynchronise the responses other clients receive.

Bodies are buffered (inference requests and responses are small and the router retries
on another replica) against one ``BodyBudget`` shared by every connection of the
process: N slow uploads cannot grow the daemon's memory past it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

import httptools

#: headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
#: framing headers the router writes itself
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
#: a request line plus headers larger than this is refused with 431
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# llhttp refuses CR, LF, NUL and other controls in names and values (and non-token
# names); these are the second lock on the door, cheap enough for every header: the
# router re-serialises what it parsed, so nothing it forwards can end a line early
_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 framing; ``status`` is what to answer the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class BodyTooLarge(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the router's limit of {limit} bytes")


class BudgetExhausted(ProtocolError):
    def __init__(self) -> None:
        super().__init__(503, "the router's memory budget for request bodies is exhausted")


class BodyBudget:
    """Bytes of request and response bodies the router may hold at once, process-wide."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass
class Request:
    """A parsed request: what the router forwards (re-serialised) and how to answer it."""

    method: str
    target: bytes
    version: str
    #: end-to-end headers only (lower-case names), in order
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    keep_alive: bool = True
    #: body bytes charged to the budget; the caller gives them back when done
    reserved: int = 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def head_bytes(self, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        """The request line and headers as the router sends them to a replica."""
        out = [self.method.encode() + b" " + self.target + b" HTTP/1.1"]
        out.extend(name + b": " + value for name, value in self.headers)
        out.extend(name + b": " + value for name, value in extra)
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            out.append(b"content-length: " + str(len(self.body)).encode())
        return b"\r\n".join(out) + b"\r\n\r\n"


@dataclass
class Response:
    """A replica's response, fully read."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: the connection may carry another request
    reusable: bool = True
    reserved: int = 0
    #: the Content-Length the replica announced (kept for answers to HEAD)
    declared_length: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers and those the Connection header names."""
    named = _connection_tokens(headers)
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def _check_framing(headers: list[tuple[bytes, bytes]], status: int) -> bool:
    """Validate Content-Length / Transfer-Encoding; True when the body is chunked."""
    lengths = [v for n, v in headers if n == b"content-length"]
    encodings = [v for n, v in headers if n == b"transfer-encoding"]
    if len(lengths) > 1:
        raise ProtocolError(status, "more than one Content-Length header")
    if lengths and encodings:
        raise ProtocolError(status, "Content-Length together with Transfer-Encoding")
    if lengths and not (lengths[0].isascii() and lengths[0].isdigit() and len(lengths[0]) <= 18):
        raise ProtocolError(status, "Content-Length is not a decimal number")
    if encodings:
        if len(encodings) > 1 or encodings[0].strip().lower() != b"chunked":
            raise ProtocolError(status, "Transfer-Encoding other than exactly 'chunked'")
        return True
    return False


class _Parser:
    """What both directions share: the budget charged, the headers read, the first error."""

    #: the status a framing error is answered with (400 for requests, 502 for responses)
    status = 400

    def __init__(self, budget: BodyBudget, max_body: int) -> None:
        self._budget = budget
        self._max_body = max_body
        self._error: ProtocolError | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._reserved = 0

    def release(self) -> None:
        """Give back what the message being read holds of the budget."""
        self._budget.give(self._reserved)
        self._reserved = 0

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        raise error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if len(self._headers) >= MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            self._fail(ProtocolError(431 if self.status == 400 else 502, "headers too large"))
        if b"\r" in value or b"\n" in value or b"\x00" in value or not name or b":" in name:
            self._fail(ProtocolError(self.status, "invalid character in a header"))
        self._headers.append((name.lower(), value))


class RequestParser(_Parser):
    """Feed it the bytes of one client connection; it hands out complete requests.

    Pipelined requests queue up in ``ready``. A ``ProtocolError`` from ``feed`` means:
    answer its status, then close (nothing after the bad bytes can be trusted).
    """

    def __init__(self, budget: BodyBudget, max_body: int) -> None:
        super().__init__(budget, max_body)
        self._parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        #: "idle" (between requests), "head" (reading a head), "body" (reading its body)
        self.phase = "idle"
        self.expect_continue = False
        self._reset()

    def _reset(self) -> None:
        self._url = bytearray()
        self._headers = []
        self._head_bytes = 0
        self._body = bytearray()
        self._reserved = 0

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.ready and self.phase == "idle":
                # Upgrade is a hop-by-hop offer the router declines: answer the request
                # that carried it, then close (the rest would be another protocol)
                self.ready[-1].keep_alive = False
                return
            raise ProtocolError(400, "CONNECT and protocol upgrades are not supported") from exc
        except httptools.HttpParserCallbackError as exc:
            error = self._error or ProtocolError(400, f"malformed request: {exc.__context__}")
            self.release()
            raise error from exc
        except httptools.HttpParserInvalidMethodError as exc:
            self.release()
            raise ProtocolError(400, "invalid or unsupported method") from exc
        except httptools.HttpParserInvalidURLError as exc:
            self.release()
            raise ProtocolError(400, f"invalid request target: {exc}") from exc
        except httptools.HttpParserError as exc:
            self.release()
            raise ProtocolError(400, f"malformed request: {exc}") from exc

    # -- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.phase = "head"
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > MAX_TARGET_BYTES:
            self._fail(ProtocolError(414, "request target too long"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        if method not in METHODS:
            self._fail(
                ProtocolError(501 if method.isalpha() else 400, f"method {method} not supported")
            )
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(ProtocolError(505, f"HTTP/{version} is not supported"))
        target = bytes(self._url)
        if not (target.startswith(b"/") or (method == "OPTIONS" and target == b"*")):
            self._fail(ProtocolError(400, "request target must be a path (origin-form)"))
        hosts = [v for n, v in self._headers if n == b"host"]
        if len(hosts) > 1 or (version == "1.1" and not hosts):
            self._fail(ProtocolError(400, "an HTTP/1.1 request needs exactly one Host header"))
        chunked = _check_framing(self._headers, 400)
        length = self._declared_length()
        if length is not None:
            if length > self._max_body:
                self._fail(BodyTooLarge(self._max_body))
            # the whole declared body is reserved before a byte of it is read: a client
            # that announces 15 MiB and trickles holds its share of the budget, no more
            if length and not self._budget.take(length):
                self._fail(BudgetExhausted())
            self._reserved = length
        self.expect_continue = any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in self._headers
        ) and (chunked or bool(length))
        self.phase = "body"

    def _declared_length(self) -> int | None:
        for name, value in self._headers:
            if name == b"content-length":
                return int(value)
        return None

    def on_body(self, body: bytes) -> None:
        size = len(self._body) + len(body)
        if size > self._max_body:
            self._fail(BodyTooLarge(self._max_body))
        if size > self._reserved:  # chunked: charge as it arrives
            if not self._budget.take(size - self._reserved):
                self._fail(BudgetExhausted())
            self._reserved = size
        self._body += body

    def on_message_complete(self) -> None:
        self.ready.append(
            Request(
                method=self._parser.get_method().decode("ascii"),
                target=bytes(self._url),
                version=self._parser.get_http_version(),
                headers=_end_to_end(self._headers),
                body=bytes(self._body),
                keep_alive=bool(self._parser.should_keep_alive()),
                reserved=self._reserved,
            )
        )
        self._reserved = 0
        self.expect_continue = False
        self.phase = "idle"


class ResponseParser(_Parser):
    """llhttp for one response from a replica; strict framing as for requests."""

    status = 502

    def __init__(self, budget: BodyBudget, max_body: int, head_request: bool) -> None:
        super().__init__(budget, max_body)
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._reason = b""
        self._body = bytearray()
        self._to_eof = False
        self.headers_done = False
        self.response: Response | None = None
        #: bytes after the response (an unsolicited second one): the connection is unusable
        self.trailing = False

    def feed(self, data: bytes) -> None:
        if self.response is not None:
            self.trailing = True
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise (self._error or ProtocolError(502, "malformed response")) from exc
        except httptools.HttpParserUpgrade as exc:
            raise ProtocolError(502, "the replica switched protocols") from exc
        except httptools.HttpParserError as exc:
            raise ProtocolError(502, f"malformed response from the replica: {exc}") from exc

    def eof(self) -> bool:
        """The replica closed the connection: True if that completed the response."""
        if self.response is None and self.headers_done and self._to_eof:
            self._finish(reusable=False)
        return self.response is not None

    def on_message_begin(self) -> None:
        if self.response is not None:
            self.trailing = True
        self._reason = b""
        self._headers = []
        self._head_bytes = 0
        self.headers_done = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            self._fail(ProtocolError(502, f"the replica answered status {status}"))
        if status < 200:
            return  # an interim response (100 Continue); the final one follows
        chunked = _check_framing(self._headers, 502)
        self.headers_done = True
        if self._head_request:
            # no body follows a response to HEAD whatever it announces; llhttp cannot be
            # told, so the response ends here and the connection is not reused
            self._finish(reusable=False)
            return
        if not chunked and status not in (204, 304):
            declared = next((int(v) for n, v in self._headers if n == b"content-length"), None)
            if declared is None:
                self._to_eof = True
            elif declared > self._max_body:
                self._fail(ProtocolError(502, "the replica's response is larger than allowed"))

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            return
        size = len(self._body) + len(body)
        if size > self._max_body:
            self._fail(ProtocolError(502, "the replica's response is larger than allowed"))
        if not self._budget.take(len(body)):
            self._fail(BudgetExhausted())
        self._reserved += len(body)
        self._body += body

    def on_message_complete(self) -> None:
        if self.response is not None:
            return
        if self._parser.get_status_code() < 200:
            return
        self._finish(reusable=bool(self._parser.should_keep_alive()))

    def _finish(self, reusable: bool) -> None:
        self.response = Response(
            status=self._parser.get_status_code(),
            reason=self._reason,
            headers=_end_to_end(self._headers),
            body=bytes(self._body),
            reusable=reusable,
            reserved=self._reserved,
            declared_length=next((v for n, v in self._headers if n == b"content-length"), None),
        )
        self._reserved = 0


def serialize_response(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    keep_alive: bool,
    content_length: bytes | None = None,
) -> bytes:
    """Status line, end-to-end headers and our own framing headers (no body).

    ``content_length`` overrides the body's length: a response to HEAD keeps the
    length the replica announced although no body follows.
    """
    out = [b"HTTP/1.1 " + str(status).encode() + b" " + (reason or _REASONS.get(status, b"OK"))]
    out.extend(name + b": " + value for name, value in headers)
    length = content_length if content_length is not None else str(len(body)).encode()
    out.append(b"content-length: " + length)
    out.append(b"connection: keep-alive" if keep_alive else b"connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


@dataclass
class Reply:
    """An answer the router makes up itself (errors, shedding)."""

    status: int
    message: str
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encode(self, keep_alive: bool) -> bytes:
        body = json.dumps({"error": self.message}).encode()
        headers = [(b"content-type", b"application/json"), *self.extra]
        return serialize_response(self.status, b"", headers, body, keep_alive) + body
