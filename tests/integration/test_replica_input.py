"""A real replica answers every input it could have validated with a 4xx that says why,
keeps serving, and counts it; it closes connections that send no request, or send
their head too slowly (slowloris), and bounds how many it serves at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from pilothouse.registry.local import LocalRegistry, ModelVersion
from tests.integration.conftest import wait_for
from tests.integration.servers import (
    FEATURES,
    Replica,
    launch_replica,
    register_fraud_model,
    run_replica,
    sample_rows,
)

pytestmark = pytest.mark.integration

V1 = "/v1/models/fraud:predict"
V2 = "/v2/models/fraud/infer"


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return register_fraud_model(tmp_path_factory.mktemp("registry"))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def replica(version: ModelVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with run_replica(version.path, tmp_path_factory.mktemp("logs")) as running:
        wait_for("model ready", lambda: _ready(running.url), timeout=60)
        yield running


def requests_total(url: str) -> dict[tuple[str, str], float]:
    """``pilothouse_model_requests_total`` by (protocol, status), from /metrics."""
    counts: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("pilothouse_model_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            found = re.fullmatch(r'[^{]*\{protocol="([^"]*)",status="([^"]*)"\}', labels)
            assert found, line
            counts[(found[1], found[2])] = float(value)
    return counts


def gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} not in /metrics")


def good_rows(n: int = 2) -> list[list[float]]:
    rows: list[list[float]] = sample_rows(n).tolist()
    return rows


def v2_body(shape: Any, data: Any, datatype: Any = "FP64") -> bytes:
    tensor = {"name": "features", "shape": shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def fp64_row(value: str) -> bytes:
    """One v2 row of the fraud model's 10 features with ``value`` (JSON text) as the first."""
    rest = ", ".join(str(v) for v in good_rows(1)[0][1:])
    return (
        b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP64", "data": ['
        + value.encode()
        + b", "
        + rest.encode()
        + b"]}]}"
    )


def v1_row(value: str) -> bytes:
    rest = ", ".join(str(v) for v in good_rows(1)[0][1:])
    return b'{"instances": [[' + value.encode() + b", " + rest.encode() + b"]]}"


def binary_body(rows: np.ndarray, datatype: str = "FP64") -> tuple[bytes, int]:
    blob = rows.astype(np.float64 if datatype == "FP64" else np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    return header + blob, len(header)


ROW = np.asarray(sample_rows(1))
BINARY, BINARY_HEADER = binary_body(ROW)
NAN_ROW = ROW.copy()
NAN_ROW[0, 3] = np.nan
NAN_BINARY, NAN_BINARY_HEADER = binary_body(NAN_ROW)


@dataclass(frozen=True)
class Bad:
    path: str
    content: bytes
    needles: tuple[str, ...]
    headers: tuple[tuple[str, bytes], ...] = ()
    status: int = 400


BAD_INPUTS: dict[str, Bad] = {
    # numbers out of range
    "1e400 (v1)": Bad(V1, v1_row("1e400"), ("number out of range", "float64")),
    "-1e999 (v2)": Bad(V2, fp64_row("-1e999"), ("number out of range", "float64")),
    "2**70 (v1)": Bad(V1, v1_row(str(2**70)), (str(2**70), "64 bits")),
    "2**70 (v2 FP64)": Bad(V2, fp64_row(str(2**70)), (str(2**70), "64 bits")),
    "-(2**63)-1 (v2 FP64)": Bad(V2, fp64_row(str(-(2**63) - 1)), (str(-(2**63) - 1), "64 bits")),
    "2**70 (v2 INT64)": Bad(
        V2, v2_body([1, 10], [2**70] + [0] * 9, "INT64"), ("inputs[0].data[0]", "INT64")
    ),
    "a 400-digit integer": Bad(V1, v1_row("9" * 400), ("number out of range",)),
    # JSON itself
    "100000 [": Bad(V2, b"[" * 100_000, ("nested too deeply", "1024")),
    "deep objects": Bad(V1, b'{"a": ' * 50_000, ("nested too deeply",)),
    "NaN literal (v1)": Bad(V1, v1_row("NaN"), ("NaN and Infinity are not JSON numbers",)),
    "Infinity literal (v2)": Bad(V2, fp64_row("Infinity"), ("NaN and Infinity",)),
    "-Infinity literal (v2)": Bad(V2, fp64_row("-Infinity"), ("NaN and Infinity",)),
    "empty body (v1)": Bad(V1, b"", ("request body is empty",)),
    "empty body (v2)": Bad(V2, b"", ("request body is empty",)),
    "non-UTF-8": Bad(V2, b'{"inputs": "\xff\xfe"}', ("UTF-8",)),
    "lone surrogate": Bad(V1, b'{"instances": [["\xed\xa0\x80"]]}', ("UTF-8",)),
    "top-level list": Bad(V2, b"[1, 2, 3]", ("JSON object", "a list")),
    "top-level string": Bad(V1, b'"instances"', ("JSON object", "a string")),
    "top-level null": Bad(V2, b"null", ("JSON object", "null")),
    "top-level number": Bad(V1, b"7", ("JSON object",)),
    # the binary extension's header length
    "length: superscript two": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length", "ASCII digits"),
        (("inference-header-content-length", b"\xb2"),),
    ),
    "length: Arabic-Indic digit (UTF-8)": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length",),
        (("inference-header-content-length", "\u0663".encode()),),
    ),
    "length: fullwidth digit (UTF-8)": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length",),
        (("inference-header-content-length", "\uff13".encode()),),
    ),
    "length: negative": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length", "'-5'"),
        (("inference-header-content-length", b"-5"),),
    ),
    "length: garbage": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length",),
        (("inference-header-content-length", b"12abc"),),
    ),
    "length: 5000 digits": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length",),
        (("inference-header-content-length", b"9" * 5000),),
    ),
    "length: past the body": Bad(
        V2,
        BINARY,
        ("Inference-Header-Content-Length", f"at most the body size ({len(BINARY)} bytes)"),
        (("inference-header-content-length", str(len(BINARY) + 1).encode()),),
    ),
    "binary NaN": Bad(
        V2,
        NAN_BINARY,
        ("inputs[0].data[3]", "finite"),
        (("inference-header-content-length", str(NAN_BINARY_HEADER).encode()),),
    ),
    "binary size past the end": Bad(
        V2,
        BINARY[:-8],
        ("binary_data_size", "run past the end"),
        (("inference-header-content-length", str(BINARY_HEADER).encode()),),
    ),
    # shapes
    "shape/data mismatch": Bad(
        V2, v2_body([2, 10], [1.0] * 10), ("shape [2, 10] needs 20 values", "has 10")
    ),
    "wrong width": Bad(
        V2, v2_body([1, 3], [1, 2, 3]), ("inputs[0].shape", "expected 10 features", "got 3")
    ),
    "huge shape, no data": Bad(
        V2, v2_body([2**64 - 1, 0], []), ("inputs[0].shape", "at least one feature")
    ),
    "huge shape, little data": Bad(
        V2, v2_body([2**32, 2**32], [1.0]), ("needs 18446744073709551616 values", "has 1")
    ),
    "shape 2**70": Bad(
        V2, v2_body([2**70, 10], [1.0] * 10), ("inputs[0].shape", "non-negative integers")
    ),
    "3-D shape": Bad(V2, v2_body([1, 1, 10], [1.0] * 10), ("inputs[0].shape", "[rows, features]")),
    "zero rows": Bad(V2, v2_body([0, 10], []), ("inputs[0].shape", "at least one row")),
    "ragged rows (v1)": Bad(
        V1,
        json.dumps({"instances": [good_rows(1)[0], good_rows(1)[0][:9]]}).encode(),
        ("instances[1]", "equal-length rows of 10", "got 9"),
    ),
    "ragged rows (v2)": Bad(
        V2,
        v2_body([2, 10], [good_rows(1)[0], good_rows(1)[0][:9]]),
        ("inputs[0].data[1]", "equal-length rows of 10"),
    ),
    "3-D rows (v1)": Bad(V1, json.dumps({"instances": [good_rows(1)]}).encode(), ("2-D", "3-D")),
    # datatypes and values
    "datatype list": Bad(
        V2, v2_body([1, 10], [1.0] * 10, []), ("inputs[0].datatype", "FP64", "got []")
    ),
    "datatype nested 1000 deep": Bad(
        V2,
        v2_body([1, 10], [1.0] * 10, "@").replace(b'"@"', b"[" * 1000 + b"]" * 1000),
        ("inputs[0].datatype", "[[[[...]]]]"),
    ),
    "datatype number": Bad(V2, v2_body([1, 10], [1.0] * 10, 64), ("inputs[0].datatype", "got 64")),
    "datatype BYTES": Bad(
        V2, v2_body([1, 10], ["a"] * 10, "BYTES"), ("inputs[0].datatype", "'BYTES'")
    ),
    "INT32 with a fraction": Bad(
        V2, v2_body([1, 10], [1.5] + [0] * 9, "INT32"), ("inputs[0].data[0]", "INT32", "1.5")
    ),
    "UINT8 out of range": Bad(
        V2, v2_body([1, 10], [300] + [0] * 9, "UINT8"), ("inputs[0].data[0]", "UINT8")
    ),
    "strings for numbers (v2)": Bad(
        V2, v2_body([1, 10], ["1"] * 10), ("inputs[0].data[0]", "expected numbers", "a string")
    ),
    "strings for numbers (v1)": Bad(
        V1, json.dumps({"instances": [["1"] * 10]}).encode(), ("instances[0][0]", "a string")
    ),
    "null for a number": Bad(V2, v2_body([1, 10], [None] * 10), ("inputs[0].data[0]", "null")),
    "object instance with a string": Bad(
        V1,
        json.dumps({"instances": [{**dict.fromkeys(FEATURES, 1.0), FEATURES[2]: "x"}]}).encode(),
        (f"instances[0].{FEATURES[2]}", "a string"),
    ),
    "name not a string": Bad(
        V2,
        json.dumps(
            {"inputs": [{"name": 5, "shape": [1, 10], "datatype": "FP64", "data": [0] * 10}]}
        ).encode(),
        ("inputs[0].name", "a string"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_error_counted_and_the_replica_serves_on(
    replica: Replica, case: Bad
) -> None:
    protocol = "v2" if case.path == V2 else "v1"
    before = requests_total(replica.url).get((protocol, str(case.status)), 0.0)
    response = httpx.post(
        f"{replica.url}{case.path}", content=case.content, headers=list(case.headers), timeout=30
    )
    assert response.status_code == case.status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    for needle in case.needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    assert len(error) < 400, "the message stays short whatever the body held"

    good = httpx.post(f"{replica.url}{V1}", json={"instances": good_rows(2)})
    assert good.status_code == 200, good.text
    assert len(good.json()["predictions"]) == 2
    after = requests_total(replica.url).get((protocol, str(case.status)), 0.0)
    assert after == before + 1, f"/metrics counted {after - before} {case.status}s, expected 1"


def test_good_binary_and_json_requests_still_agree(replica: Replica) -> None:
    """The fast paths: JSON (orjson) and the binary extension decode to the same rows."""
    rows = np.asarray(sample_rows(3))
    blob, header = binary_body(rows)
    binary = httpx.post(
        f"{replica.url}{V2}",
        content=blob,
        headers={"inference-header-content-length": str(header)},
    )
    as_json = httpx.post(f"{replica.url}{V2}", content=v2_body(list(rows.shape), rows.tolist()))
    v1 = httpx.post(f"{replica.url}{V1}", json={"instances": rows.tolist()})
    assert binary.status_code == as_json.status_code == v1.status_code == 200
    assert binary.headers["content-type"] == "application/json"
    scores = binary.json()["outputs"][0]["data"]
    assert scores == as_json.json()["outputs"][0]["data"] == v1.json()["predictions"]
    assert len(scores) == 3


def test_a_client_gone_mid_body_is_counted_as_499_not_500(replica: Replica) -> None:
    inflight = "pilothouse_model_inflight_requests"
    before = requests_total(replica.url)
    with _connect(replica.url) as sock:
        sock.sendall(
            f"POST {V1} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n".encode()
            + b'{"instances'
        )
        wait_for("the request to be in flight", lambda: gauge(replica.url, inflight) == 1, 10)
    wait_for("the request to end", lambda: gauge(replica.url, inflight) == 0, 10, 0.02)
    after = requests_total(replica.url)
    assert after.get(("v1", "499"), 0) == before.get(("v1", "499"), 0) + 1
    assert after.get(("v1", "500"), 0) == before.get(("v1", "500"), 0)


# --- a model that fails one request of a batch, or answers NaN -------------------------

GATED_MODEL = '''
import json
from pathlib import Path

import numpy as np


class Model:
    """x0 / 1000 per row; refuses negative x0 (ValueError), answers NaN for x0 > 1e6.
    Its first call waits until the test writes to a FIFO, so requests queue up behind it."""

    def load(self, path):
        config = json.loads((Path(path) / "gate.json").read_text())
        self.gate, self.log, self.first = config["fifo"], config["log"], True

    def predict(self, features):
        x = np.asarray(features, dtype=np.float64)
        with open(self.log, "a") as log:
            log.write(f"{x.shape[0]}\\n")
        if self.first:
            self.first = False
            with open(self.gate) as gate:
                gate.read()
        if (x[:, 0] < 0).any():
            raise ValueError(f"negative x0 in a call of {x.shape[0]} row(s)")
        return np.where(x[:, 0] > 1e6, np.nan, x[:, 0] / 1000.0)
'''


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Replica, Path, Path]]:
    folder = tmp_path / "gated"
    folder.mkdir()
    fifo, log = tmp_path / "gate.fifo", tmp_path / "calls.log"
    os.mkfifo(fifo)
    log.write_text("")
    (folder / "model.py").write_text(GATED_MODEL)
    (folder / "gate.json").write_text(json.dumps({"fifo": str(fifo), "log": str(log)}))
    (folder / "signature.json").write_text(
        json.dumps({"inputs": [{"name": "x0"}, {"name": "x1"}], "outputs": [{"name": "score"}]})
    )
    version = LocalRegistry(tmp_path / "registry").register("fraud", folder, framework="custom")
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with run_replica(version.path, logs) as running:
            wait_for("model ready", lambda: _ready(running.url), timeout=60)
            yield running, fifo, log
    finally:
        with suppress(OSError):  # never leave the model blocked on its gate
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_one_bad_request_in_a_batch_fails_alone(gated: tuple[Replica, Path, Path]) -> None:
    replica, fifo, log = gated
    before = requests_total(replica.url)
    rows = {"blocker": 1.0, "refused": -5.0, "nan": 2e6, **{f"good{i}": 10.0 * i for i in range(6)}}

    async def scenario() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(base_url=replica.url, timeout=60) as client:

            def post(x0: float) -> Any:
                return client.post(V1, json={"instances": [[x0, 0.0]]})

            blocker = asyncio.create_task(post(rows["blocker"]))
            await asyncio.to_thread(
                wait_for, "the first model call", lambda: log.read_text() == "1\n", 30, 0.02
            )
            names = [name for name in rows if name != "blocker"]
            others = [asyncio.create_task(post(rows[name])) for name in names]
            await asyncio.to_thread(
                wait_for,
                "every request to wait on the model",
                lambda: gauge(replica.url, "pilothouse_model_inflight_requests") == len(rows),
                30,
                0.02,
            )
            fifo.write_text("go")  # release the first call; the rest share the next
            answers = await asyncio.gather(blocker, *others)
            return dict(zip(["blocker", *names], answers, strict=True))

    answers = asyncio.run(scenario())
    calls = [int(line) for line in log.read_text().split()]
    assert calls[:2] == [1, 8], f"the 8 queued requests were merged into one call: {calls}"
    assert calls[2:] == [1] * 8, f"the failed merged call was split into single calls: {calls}"

    refused = answers.pop("refused")
    assert refused.status_code == 400
    assert "negative x0 in a call of 1 row(s)" in refused.json()["error"]
    nan = answers.pop("nan")
    assert nan.status_code == 500
    assert nan.headers["content-type"] == "application/json"
    assert "NaN or infinity" in nan.json()["error"]
    for name, answer in answers.items():
        assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
        assert answer.json()["predictions"] == [rows[name] / 1000.0]

    # A NaN answer over v2 too: a JSON 500, counted as a 500, not as a 200.
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [2e6, 0]}]}
    v2 = httpx.post(f"{replica.url}{V2}", json=body, timeout=30)
    assert v2.status_code == 500
    assert v2.headers["content-type"] == "application/json"
    assert "the model answered NaN or infinity for row(s) 0" in v2.json()["error"]

    after = requests_total(replica.url)
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    assert delta.get(("v1", "200")) == 7
    assert delta.get(("v1", "400")) == 1
    assert delta.get(("v1", "500")) == 1
    assert delta.get(("v2", "500")) == 1
    assert delta.get(("v2", "200"), 0.0) == 0
    assert replica.process.poll() is None


# --- connections that send nothing, or their head too slowly --------------------------


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname
    assert parts.port
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def _closed_within(
    sock: socket.socket, deadline: float, send: Callable[[], bytes] | None = None
) -> float | None:
    """Seconds until the peer closes ``sock`` (reading whatever it answers), or None at
    ``deadline`` (a time.monotonic() value). ``send`` gives bytes to trickle, one call
    per half second while the connection stays open."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        readable, _, _ = select.select(
            [sock], [], [], min(0.5, max(deadline - time.monotonic(), 0))
        )
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
        elif send is not None:
            try:
                sock.sendall(send())
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
    return None


def _trickle(data: bytes) -> Callable[[], bytes]:
    """One byte of ``data`` per call, then spaces in a header value forever."""
    stream = iter(data)

    def next_byte() -> bytes:
        return bytes([next(stream, ord("a"))])

    return next_byte


SLOW_HEAD = b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nx-slow: "


def check_idle_and_slow_connections(
    url: str, first_byte: float, head: float, keep_alive: float
) -> None:
    """Each scenario on its own connection, all at once; each must be closed in time."""
    margin = 3.0

    def idle() -> tuple[float | None, float, float]:
        with _connect(url) as sock:
            return (
                _closed_within(sock, time.monotonic() + first_byte + margin),
                first_byte - 0.5,
                first_byte + margin,
            )

    def slowloris() -> tuple[float | None, float, float]:
        with _connect(url) as sock:
            sock.sendall(b"P")
            return (
                _closed_within(sock, time.monotonic() + head + margin, _trickle(SLOW_HEAD[1:])),
                head - 0.5,
                head + margin,
            )

    def slowloris_after_a_request() -> tuple[float | None, float, float]:
        with _connect(url) as sock:
            request = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, "the replica closed a keep-alive connection after one request"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            sock.sendall(SLOW_HEAD[:1])
            return (
                _closed_within(sock, time.monotonic() + head + margin, _trickle(SLOW_HEAD[1:])),
                head - 0.5,
                head + margin,
            )

    def idle_after_a_request() -> tuple[float | None, float, float]:
        with _connect(url) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk
                answer += chunk
            return (
                _closed_within(sock, time.monotonic() + keep_alive + margin),
                keep_alive - 0.5,
                keep_alive + margin,
            )

    def crlf_forever() -> tuple[float | None, float, float]:
        # llhttp skips blank lines before a request (so the head timeout closes it);
        # h11 refuses them at once with a 400.
        with _connect(url) as sock:
            sock.sendall(b"\r\n")
            return (
                _closed_within(sock, time.monotonic() + head + margin, lambda: b"\r\n"),
                0.0,
                head + margin,
            )

    scenarios = {
        "sends nothing": idle,
        "slowloris": slowloris,
        "slowloris on a keep-alive connection": slowloris_after_a_request,
        "idle keep-alive": idle_after_a_request,
        "blank lines forever": crlf_forever,
    }
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(scenario) for name, scenario in scenarios.items()}
        results = {name: future.result() for name, future in futures.items()}
    for name, (elapsed, earliest, latest) in results.items():
        assert elapsed is not None, f"{name}: the connection was still open after {latest}s"
        assert earliest <= elapsed <= latest, f"{name}: closed after {elapsed:.2f}s"


def test_idle_and_slowloris_connections_are_closed(replica: Replica) -> None:
    """The defaults: 5 s to the first byte, 10 s for the head, uvicorn's 5 s keep-alive."""
    check_idle_and_slow_connections(replica.url, first_byte=5.0, head=10.0, keep_alive=5.0)
    good = httpx.post(f"{replica.url}{V1}", json={"instances": good_rows(1)})
    assert good.status_code == 200


def test_a_slow_head_within_the_limit_is_served(replica: Replica) -> None:
    """Slow but in time (about 2 s for the head) is not slowloris: it gets its answer."""
    body = json.dumps({"instances": good_rows(1)}).encode()
    request = (
        f"POST {V1} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    with _connect(replica.url) as sock:
        head = request[: request.index(b"\r\n\r\n")]
        for piece in (
            head[i : i + len(head) // 4 + 1] for i in range(0, len(head), len(head) // 4 + 1)
        ):
            sock.sendall(piece)
            readable, _, _ = select.select([sock], [], [], 0.5)
            assert not readable, "the replica answered or closed before the head was complete"
        sock.sendall(request[len(head) :])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"predictions"' in answer


def test_a_huge_request_head_is_refused(replica: Replica) -> None:
    with _connect(replica.url) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"request head larger than 65536 bytes" in answer
    assert httpx.get(f"{replica.url}/v2/health/live").status_code == 200


# --- the same on h11, with the timeouts and connection limit as options ----------------

LAUNCH = """
import json, sys
from pathlib import Path
from pilothouse.serving.server import ServerOptions, serve
serve(Path(sys.argv[1]), "fraud", "127.0.0.1", 0, fd=int(sys.argv[2]),
      options=ServerOptions(**json.loads(sys.argv[3])))
"""


@contextmanager
def replica_with(version: ModelVersion, log_dir: Path, **options: Any) -> Iterator[Replica]:
    """A replica run by ``serve()`` with these ServerOptions, until its model is ready."""
    argv = [sys.executable, "-c", LAUNCH, str(version.path)]
    with launch_replica(lambda fd: [*argv, str(fd), json.dumps(options)], log_dir) as replica:
        wait_for("model ready", lambda: _ready(replica.url), timeout=60)
        yield replica


def test_h11_replica_closes_idle_and_slow_connections_and_bounds_connections(
    version: ModelVersion, tmp_path: Path
) -> None:
    with replica_with(
        version,
        tmp_path,
        http="h11",
        first_byte_timeout=2.0,
        head_timeout=3.0,
        keep_alive_timeout=2,
        limit_concurrency=8,
    ) as running:
        check_idle_and_slow_connections(running.url, first_byte=2.0, head=3.0, keep_alive=2.0)
        bad = httpx.post(f"{running.url}{V2}", content=b"[" * 100_000)
        assert bad.status_code == 400
        assert "nested too deeply" in bad.json()["error"]

        # Requests waiting for their bodies hold their connections (no head timeout
        # applies). A request is served only while fewer than limit_concurrency (8)
        # connections are open, so of 12 held ones at most 7 are in flight: at least
        # 5 get a 503 (uvicorn's), whatever the order the replica reads them in.
        held = [_connect(running.url) for _ in range(12)]
        answers = [b""] * len(held)

        def refused() -> bool:
            for i, sock in enumerate(held):
                if select.select([sock], [], [], 0)[0]:
                    answers[i] += sock.recv(65536)
            return sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) >= len(held) - 7

        try:
            for sock in held:
                sock.sendall(
                    f"POST {V1} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n".encode()
                )
            wait_for("requests past the connection limit to be refused", refused, 10, 0.05)
            assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers if a), answers
        finally:
            for sock in held:
                sock.close()
        wait_for(
            "the replica to serve again",
            lambda: httpx.get(f"{running.url}/v2/health/live").status_code == 200,
            timeout=10,
            every=0.05,
        )
