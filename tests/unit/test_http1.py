"""The router's HTTP/1.1 parsing rules (router/http1.py), byte by byte, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilothouse.router.http1 import (
    BodyBudget,
    ProtocolError,
    Request,
    RequestParser,
    ResponseParser,
)

GET = b"GET /v2/health/live HTTP/1.1\r\nhost: a\r\n"


def parse(data: bytes, budget: int = 2**30, max_body: int = 2**20) -> list[Request]:
    parser = RequestParser(BodyBudget(budget), max_body)
    parser.feed(data)
    return list(parser.ready)


def refused(data: bytes) -> int:
    with pytest.raises(ProtocolError) as info:
        parse(data)
    return info.value.status


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (GET + b"x: a\nb\r\n\r\n", 400),  # bare LF inside a header value
        (GET + b"x: a\n\n", 400),
        (GET + b"x: a\rb\r\n\r\n", 400),  # bare CR
        (GET + b"x: a\x00b\r\n\r\n", 400),  # NUL
        (GET + b"x: a\r\n folded\r\n\r\n", 400),  # obsolete line folding
        (GET + b"x y: a\r\n\r\n", 400),  # not a token
        (GET + b"x : a\r\n\r\n", 400),
        (b"GET /a\nb HTTP/1.1\r\nhost: a\r\n\r\n", 400),  # LF in the request line
        (b"GET /a\x00 HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (b"GET /a HTTP/1.1\nhost: a\n\n", 400),  # LF-only line ends
        (b"G@T /a HTTP/1.1\r\nhost: a\r\n\r\n", 400),  # invalid method
        (b"CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\n", 501),
        (b"GET http://evil/x HTTP/1.1\r\nhost: a\r\n\r\n", 400),  # not origin-form
        (b"GET /a HTTP/2.0\r\nhost: a\r\n\r\n", 505),
        (b"GET /a HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /a HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nab", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 1\r\n\r\na", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: +1\r\n\r\na", 400),
        ("POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: ٣\r\n\r\nabc".encode(), 400),
        (
            b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", 400),
        (
            b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0x1\r\na\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n-1\r\na\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\na\r\n", 400),
        (b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXX", 400),
        (GET + b"x: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: a\r\n\r\n", 414),
    ],
)
def test_ambiguous_or_invalid_requests_are_refused(data: bytes, status: int) -> None:
    assert refused(data) == status


def test_a_request_is_reserialised_from_its_parsed_fields() -> None:
    (request,) = parse(
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: hop\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nAccept: */*\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert request.body == b"abcde"
    head = request.head_bytes(((b"x-forwarded-for", b"127.0.0.9"),))
    assert head == (
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nhost: a\r\naccept: */*\r\n"
        b"x-forwarded-for: 127.0.0.9\r\ncontent-length: 5\r\n\r\n"
    )


def test_pipelined_requests_come_out_one_by_one_in_order() -> None:
    requests = parse(
        b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n1"
        b"GET /b HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /c HTTP/1.0\r\n\r\n"
    )
    assert [(r.method, r.target, r.body, r.keep_alive) for r in requests] == [
        ("POST", b"/a", b"1", True),
        ("GET", b"/b", b"", True),
        ("GET", b"/c", b"", False),
    ]


def test_a_declared_body_is_charged_to_the_budget_before_it_is_read() -> None:
    budget = BodyBudget(1000)
    first = RequestParser(budget, 10_000)
    first.feed(b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 800\r\n\r\nabc")
    assert budget.used == 800
    second = RequestParser(budget, 10_000)
    with pytest.raises(ProtocolError) as info:
        second.feed(b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 300\r\n\r\n")
    assert info.value.status == 503
    first.release()  # the first connection ends unfinished
    assert budget.used == 0
    second = RequestParser(budget, 10_000)
    second.feed(b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 300\r\n\r\n" + b"x" * 300)
    assert second.ready[0].reserved == 300


def test_chunked_bodies_are_charged_as_they_arrive_and_bounded() -> None:
    budget = BodyBudget(10)
    parser = RequestParser(budget, 100)
    parser.feed(
        b"POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n8\r\n12345678\r\n"
    )
    assert budget.used == 8
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"8\r\n12345678\r\n")
    assert info.value.status == 503
    with pytest.raises(ProtocolError) as too_big:
        RequestParser(BodyBudget(10**6), 4).feed(
            b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n"
        )
    assert too_big.value.status == 413


def response(data: bytes, head: bool = False) -> ResponseParser:
    parser = ResponseParser(BodyBudget(2**30), 2**20, head)
    parser.feed(data)
    return parser


def test_a_second_response_in_the_same_bytes_makes_the_connection_unusable() -> None:
    parser = response(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother"
    )
    assert parser.response is not None
    assert parser.response.body == b"hi"
    assert parser.trailing


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nx: a\nb\r\n\r\n",
        b"HTTP/1.1 999 Odd\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nqq\r\n",
    ],
)
def test_malformed_responses_are_a_bad_gateway(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        response(data)
    assert info.value.status == 502


def test_responses_interim_head_and_to_eof() -> None:
    interim = response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx"
    )
    assert interim.response is not None
    assert (interim.response.status, interim.response.body) == (201, b"x")
    head = response(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", head=True)
    assert head.response is not None
    assert head.response.declared_length == b"7"
    assert not head.response.reusable
    eof = response(b"HTTP/1.1 200 OK\r\n\r\npart")
    assert eof.response is None
    assert eof.eof()
    assert eof.response is not None
    assert (eof.response.body, eof.response.reusable) == (b"part", False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_any_bytes_in_any_split_parse_or_are_refused_cleanly(data: bytes, split: int) -> None:
    """Fuzz: nothing but ProtocolError escapes, and the budget never goes negative or leaks."""
    budget = BodyBudget(10_000)
    parser = RequestParser(budget, 5_000)
    try:
        for i in range(0, len(data), split):
            parser.feed(data[i : i + split])
    except ProtocolError:
        pass
    finally:
        parser.release()
    held = sum(r.reserved for r in parser.ready)
    assert budget.used == held
    for request in parser.ready:
        head = request.head_bytes()
        assert b"\n" not in head.replace(b"\r\n", b"")
        assert b"\x00" not in head
