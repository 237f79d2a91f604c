"""Model versions for rollout tests and ``bench/rollout.py``: one model name, four versions.

Every version is a version of the model ``fraud`` (so the replicas of every revision
answer on the same path, ``/v2/models/fraud/infer``), small and fast to train:

* :func:`register_v1` -- the stable version: the logistic regression that
  ``servers.register_fraud_model`` trains (4000 synthetic transactions, seed 11);
* :func:`register_good` -- the same recipe retrained on v1's data plus newer data
  (another seed): it predicts like v1 (same label at 0.5, a small score shift);
* :func:`register_bad` -- a ``custom`` model that predicts exactly like v1 but whose
  ``predict`` raises for ~20 % of the model calls (see below);
* :func:`register_wrong` -- a ``custom`` model that answers 200 with ``1 - p`` of v1:
  silently wrong, every label at 0.5 flipped, the score distribution mirrored.

How a failing model call reaches clients (``serving/batching.py``, ``server.py``): the
server merges concurrent requests into one ``predict`` call; when that call raises, the
batcher runs each request of the batch again on its own, so only the requests whose own
call raises are answered ``500`` (a ``ValueError`` would become ``400`` "the model
rejected the input", so the bad model raises ``RuntimeError``). The bad model decides
per call from its **first row**: the call fails iff the sha256 of that row (rounded to
6 decimals) falls into the lowest ``error_share`` of the hash space; a request alone in
its call therefore fails iff its own row is a "bad row" (:func:`bad_rows` lists them),
so each request fails with probability ``error_share`` whatever the batch sizes are.

:class:`Rows` is the traffic: a fixed pool of synthetic transactions, their v2 request
bodies, and v1's score for each (so a response can be judged "v1-like" or "wrong"
without any header from the router). :func:`open_loop` is a bounded open-loop load
generator (raw HTTP/1.1 on asyncio, like ``bench/common.py``'s, but it reads the body:
the status, the ``model_version`` and the score of every response).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pilothouse.registry.local import LocalRegistry, ModelVersion
from tests.integration.servers import FEATURES, generate, register_fraud_model

MODEL = "fraud"
#: a response is "wrong" when its score is this far from v1's score for the same row
WRONG_TOLERANCE = 0.25
SCENARIOS = ("good", "bad", "wrong")

#: shared by the bad model (written into its model.py) and :func:`bad_rows`
FAULT_SOURCE = '''
import hashlib

import numpy as np


def row_is_bad(row, share):
    """True for a fixed share of rows, decided by the sha256 of the row (6 decimals)."""
    values = np.round(np.asarray(row, dtype=np.float64), 6) + 0.0  # + 0.0: no -0.0
    digest = hashlib.sha256(values.tobytes()).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32
'''

BAD_MODEL = (
    '"""Predicts like the wrapped scikit-learn model; a share of its calls raise."""\n'
    + FAULT_SOURCE
    + """
import json
from pathlib import Path

import joblib


class Model:
    def load(self, path):
        self.inner = joblib.load(Path(path) / "inner.joblib")
        self.share = float(json.loads((Path(path) / "fault.json").read_text())["errorShare"])
        self.calls = 0
        self.failed = 0

    def predict(self, features):
        x = np.asarray(features, dtype=np.float64)
        self.calls += 1
        if x.shape[0] and row_is_bad(x[0], self.share):
            self.failed += 1
            # RuntimeError: the server answers 500 to every request of this batch
            raise RuntimeError(
                f"injected fault: call {self.calls} of {x.shape[0]} row(s) failed "
                f"({self.failed} so far)"
            )
        return self.inner.predict_proba(x)[:, 1]
"""
)

WRONG_MODEL = '''"""Silently wrong: answers 1 - p of the wrapped scikit-learn model, with status 200."""

from pathlib import Path

import joblib
import numpy as np


class Model:
    def load(self, path):
        self.inner = joblib.load(Path(path) / "inner.joblib")

    def predict(self, features):
        x = np.asarray(features, dtype=np.float64)
        return 1.0 - self.inner.predict_proba(x)[:, 1]
'''

_fault: dict[str, Any] = {}
exec(compile(FAULT_SOURCE, "<rollout_models.FAULT_SOURCE>", "exec"), _fault)
row_is_bad: Callable[[Any, float], bool] = _fault["row_is_bad"]


def _signature() -> dict[str, Any]:
    return {
        "inputs": [{"name": f, "datatype": "FP64"} for f in FEATURES],
        "outputs": [{"name": "score", "datatype": "FP64"}],
    }


def _write_common(out: Path, metrics: dict[str, Any]) -> None:
    (out / "signature.json").write_text(json.dumps(_signature()))
    (out / "metrics.json").write_text(json.dumps(metrics))


def register_v1(root: Path) -> ModelVersion:
    """The stable version (``servers.register_fraud_model``: seed 11, 4000 rows)."""
    return register_fraud_model(root)


def register_good(root: Path, seed: int = 12, rows: int = 4000) -> ModelVersion:
    """v1's recipe retrained on v1's data plus ``rows`` newer ones (another seed): it
    predicts like v1, not bit-identically. On the pool of :class:`Rows` it gives the same
    label at 0.5 on every row and a KS statistic of about 0.12 against v1 (a model trained
    on the new sample alone shifts the many tiny fraud scores enough for 0.16-0.27)."""
    old_x, old_y = generate(4000, seed=11)  # v1's training data (servers.register_fraud_model)
    new_x, new_y = generate(rows, seed=seed)
    features, labels = np.vstack([old_x, new_x]), np.concatenate([old_y, new_y])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        joblib.dump(model, out / "model.joblib")
        _write_common(out, {"rows": rows, "seed": seed, "scenario": "good"})
        return LocalRegistry(root).register(MODEL, out, framework="sklearn")


def _custom(
    root: Path, base: ModelVersion, source: str, extra: dict[str, str], metrics: dict[str, Any]
) -> ModelVersion:
    """A ``custom`` version: ``source`` as model.py, ``base``'s model.joblib as inner.joblib."""
    artifact = base.path / "model.joblib"
    if not artifact.is_file():
        raise ValueError(f"{base.ref} has no model.joblib to wrap")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "model.py").write_text(source)
        shutil.copyfile(artifact, out / "inner.joblib")
        for name, text in extra.items():
            (out / name).write_text(text)
        _write_common(out, {"wraps": base.ref, **metrics})
        return LocalRegistry(root).register(MODEL, out, framework="custom")


def register_bad(root: Path, base: ModelVersion, error_share: float = 0.2) -> ModelVersion:
    """``base``'s predictions, but ~``error_share`` of requests answered 500 (module doc)."""
    if not 0.0 <= error_share <= 1.0:
        raise ValueError("error_share must be within 0..1")
    return _custom(
        root,
        base,
        BAD_MODEL,
        {"fault.json": json.dumps({"errorShare": error_share})},
        {"scenario": "bad", "errorShare": error_share},
    )


def register_wrong(root: Path, base: ModelVersion) -> ModelVersion:
    """``1 - p`` of ``base``, always 200."""
    return _custom(root, base, WRONG_MODEL, {}, {"scenario": "wrong"})


def register_scenario(
    root: Path, scenario: str, base: ModelVersion, error_share: float = 0.2
) -> ModelVersion:
    """The next version of ``fraud`` for ``scenario`` (good, bad or wrong) over ``base``."""
    if scenario == "good":
        return register_good(root)
    if scenario == "bad":
        return register_bad(root, base, error_share)
    if scenario == "wrong":
        return register_wrong(root, base)
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")


# --------------------------------------------------------------------------- traffic


def v2_body(row: np.ndarray) -> bytes:
    """An OIP v2 request for one row (floats written with repr: they round-trip exactly)."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, len(row)],
                    "datatype": "FP64",
                    "data": [float(v) for v in row],
                }
            ]
        }
    ).encode()


@dataclass
class Rows:
    """A pool of request rows, their bodies and v1's score for each."""

    features: np.ndarray
    v1_scores: np.ndarray
    bodies: list[bytes]

    @classmethod
    def for_version(cls, v1: ModelVersion, n: int = 500, seed: int = 99) -> Rows:
        features, _ = generate(n, seed=seed)
        model = joblib.load(v1.path / "model.joblib")
        scores = np.asarray(model.predict_proba(features)[:, 1], dtype=np.float64)
        return cls(features, scores, [v2_body(row) for row in features])

    def __len__(self) -> int:
        return len(self.bodies)

    def is_wrong(self, index: int, score: float) -> bool:
        return abs(score - float(self.v1_scores[index])) > WRONG_TOLERANCE

    def bad_rows(self, error_share: float = 0.2) -> list[int]:
        """Rows a bad model fails when the row is alone in its batch."""
        return [i for i, row in enumerate(self.features) if row_is_bad(row, error_share)]


# ------------------------------------------------------------------------------ load


@dataclass
class Answer:
    """One request of an open-loop run."""

    scheduled: float  # seconds since the run started
    latency: float  # from the scheduled time to the end of the response
    status: int  # HTTP status; 0: connection error or timeout
    row: int
    version: str = ""  # model_version of a 200 answer
    score: float | None = None
    error: str = ""


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() at t=0
    sent: int = 0
    unfinished: int = 0
    stopped_early: bool = False


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes, bool]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep, chunked = 0, True, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    body = b""
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        body = b"".join(parts)
    elif length:
        body = await reader.readexactly(length)
    return status, body, keep


async def open_loop(
    url: str,
    rows: Rows,
    rate: float,
    seconds: float,
    *,
    model: str = MODEL,
    max_requests: int = 100_000,
    max_connections: int = 256,
    request_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
    on_start: Callable[[LoadResult], None] | None = None,
) -> LoadResult:
    """``rate`` evenly spaced requests/s for ``seconds`` (at most ``max_requests``), rows in
    turn from ``rows``; stops sending early when ``stop`` is set. A request never waits
    longer than ``request_timeout`` (counted from its scheduled time, so queueing in the
    client is latency too) and is never retried; stragglers get ``request_timeout`` after
    the last send, then are cancelled and counted in ``unfinished``."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v2/models/{model}/infer"
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in rows.bodies
    ]
    count = min(max_requests, math.floor(seconds * rate))
    loop = asyncio.get_running_loop()
    result = LoadResult(started=loop.time())
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    slots = asyncio.Semaphore(max_connections)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, index: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        async with slots:
            try:
                left = request_timeout - (loop.time() - result.started - scheduled)
                async with asyncio.timeout(max(0.001, left)):
                    while True:
                        pooled = bool(idle)
                        if pooled:
                            conn = idle.pop()
                        else:
                            conn = await asyncio.open_connection(host, port)
                            opened.append(conn[1])
                        try:
                            status, body, keep = await _exchange(conn[0], conn[1], heads[index])
                        except (ConnectionError, asyncio.IncompleteReadError) as exc:
                            # a pooled connection the server closed meanwhile (uvicorn closes
                            # after a 500 without saying so): nothing of the response came,
                            # so send again once on a fresh one, as the router and httpx do
                            conn[1].close()
                            conn = None
                            partial = getattr(exc, "partial", b"")
                            if pooled and not partial:
                                continue
                            raise
                        break
                answer = Answer(scheduled, loop.time() - result.started - scheduled, status, index)
                if status == 200:
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        doc = json.loads(body)
                        answer.version = str(doc.get("model_version", ""))
                        answer.score = float(doc["outputs"][0]["data"][0])
                else:
                    answer.error = body[:200].decode("utf-8", "replace")
                result.answers.append(answer)
                if keep:
                    idle.append(conn)
                else:
                    conn[1].close()
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                if conn is not None:
                    conn[1].close()
                result.answers.append(
                    Answer(
                        scheduled,
                        loop.time() - result.started - scheduled,
                        0,
                        index,
                        error=type(exc).__name__,
                    )
                )

    if on_start is not None:
        on_start(result)
    try:
        for i in range(count):
            if stop is not None and stop.is_set():
                result.stopped_early = True
                break
            scheduled = i / rate
            delay = result.started + scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled, i % len(heads)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
        if tasks:
            _done, pending = await asyncio.wait(list(tasks), timeout=request_timeout + 1)
            result.unfinished = len(pending)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for writer in opened:
            writer.close()
        for writer in opened:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return result


class BackgroundLoad:
    """:func:`open_loop` on its own event loop in a thread, so a synchronous test can
    poll state meanwhile. ``live`` is the result being filled (answers are appended as
    they come); ``stop()`` ends the sending early; ``join(timeout)`` returns the result.
    Times: ``open_loop`` runs on the event loop's clock, which is ``time.monotonic``."""

    def __init__(self, url: str, rows: Rows, rate: float, seconds: float, **kwargs: Any) -> None:
        self.live: LoadResult | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        started = threading.Event()

        def on_start(result: LoadResult) -> None:
            self.live = result
            started.set()

        async def go() -> LoadResult:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            return await open_loop(
                url, rows, rate, seconds, stop=self._stop, on_start=on_start, **kwargs
            )

        def main() -> None:
            try:
                self._result = asyncio.run(go())
            except BaseException as exc:  # surfaced by join
                self._error = exc
            finally:
                started.set()

        self._thread = threading.Thread(target=main, name="rollout-load", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise AssertionError("the load generator did not start within 10s")
        if self._error is not None:
            raise self._error

    @property
    def started(self) -> float:
        """``time.monotonic()`` at the load's t=0."""
        assert self.live is not None
        return self.live.started

    def answers_since(self, monotonic: float) -> int:
        """Answers (any status) to requests scheduled at or after ``monotonic``."""
        live = self.live
        if live is None:
            return 0
        since = monotonic - live.started
        return sum(1 for a in list(live.answers) if a.scheduled >= since)

    def stop(self) -> None:
        loop, event = self._loop, self._stop
        if loop is not None and event is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def join(self, timeout: float) -> LoadResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the load generator did not finish within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def finish(self, timeout: float = 30.0) -> LoadResult:
        """``stop`` then ``join``."""
        self.stop()
        return self.join(timeout)


def summarize(result: LoadResult, rows: Rows, new_version: str | None = None) -> dict[str, Any]:
    """Counts by outcome: non-2xx, answers per model_version, answers judged wrong vs v1."""
    answers = result.answers
    by_version: dict[str, int] = {}
    statuses: dict[str, int] = {}
    wrong = 0
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
        if a.status == 200:
            by_version[a.version] = by_version.get(a.version, 0) + 1
            if a.score is not None and rows.is_wrong(a.row, a.score):
                wrong += 1
    failed = sum(1 for a in answers if not 200 <= a.status < 300)
    return {
        "requests": len(answers),
        "sent": result.sent,
        "unfinished": result.unfinished,
        "non_2xx": failed,
        "statuses": statuses,
        "by_version": by_version,
        "wrong_vs_v1": wrong,
        "from_new_version": by_version.get(new_version, 0) if new_version else None,
    }


__all__ = [
    "MODEL",
    "SCENARIOS",
    "Answer",
    "BackgroundLoad",
    "LoadResult",
    "Rows",
    "open_loop",
    "register_bad",
    "register_good",
    "register_scenario",
    "register_v1",
    "register_wrong",
    "row_is_bad",
    "summarize",
    "v2_body",
]
