"""Helpers shared by the router, autoscaling and chaos benchmarks.

* :class:`ControlPlane` -- a real pilothouse control plane in a temporary
  ``PILOTHOUSE_HOME``, driven through the ``pilothouse`` CLI (``up``, ``models
  register``, ``apply``, ``wait``, ``get``, ``down``), every process it starts
  tagged so that it and its replicas can be killed even when ``down`` fails;
* :func:`open_loop` -- a bounded open-loop (constant arrival rate) HTTP/1.1 load
  generator on asyncio, with per-request latency measured from the *scheduled*
  send time (no coordinated omission);
* :func:`write_slow_model` -- a ``custom`` model whose ``predict`` sleeps, so one
  replica's capacity is predictable;
* result-file and table helpers.

The wrk helpers, the process-session helpers and the fraud request come from
``bench/model_server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from model_server import (
    BODY,
    EXAMPLE_DIR,
    INFER_PATH,
    MODEL_NAME,
    REPO,
    RESULTS_DIR,
    RUN_TAG_VAR,
    TRAIN_ROWS,
    BenchError,
    kill_leftovers,
)

PYTHON = sys.executable


# ----------------------------------------------------------------------- control plane


class ControlPlane:
    """``pilothouse up`` in a temporary home; ``close`` stops it and all it started."""

    def __init__(self, home: Path, tag: str, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.tag = tag
        self.env = {**os.environ, **(extra_env or {}), "PILOTHOUSE_HOME": str(home)}
        self.env[RUN_TAG_VAR] = tag
        self.daemon_pid: int | None = None
        self._client: Any = None

    def cli(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [PYTHON, "-m", "pilothouse", *args],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise BenchError(
                f"pilothouse {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                f"\ndaemon log tail:\n{self.log_tail()}"
            )
        return done

    def up(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.cli("up", timeout=60)
        info = json.loads((self.home / "daemon.json").read_text(encoding="utf-8"))
        self.daemon_pid = int(info["pid"])
        print(
            f"control plane up at {info.get('url')} (pid {self.daemon_pid}) in "
            f"{time.monotonic() - started:.1f}s; home {self.home}",
            flush=True,
        )

    def client(self) -> Any:
        """The API client (``pilothouse get -o json`` reads the same objects)."""
        if self._client is None:
            from pilothouse.api.client import Client
            from pilothouse.api.home import Home

            self._client = Client.from_home(Home(self.home))
        return self._client

    def register(self, name: str, path: Path, framework: str | None = None) -> str:
        args = ["models", "register", name, str(path)]
        if framework:
            args += ["--framework", framework]
        return self.cli(*args).stdout.strip()

    def apply(self, doc: dict[str, Any]) -> None:
        path = self.home / f"apply-{doc['metadata']['name']}.yaml"
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
        self.cli("apply", "-f", str(path))

    def wait_ready(self, name: str, timeout: float = 120.0) -> float:
        started = time.monotonic()
        self.cli(
            "wait",
            f"md/{name}",
            "--for=condition=Ready",
            "--timeout",
            f"{timeout:.0f}s",
            timeout=timeout + 30,
        )
        return time.monotonic() - started

    def get_md(self, name: str) -> dict[str, Any]:
        """``pilothouse get md NAME -o json`` (through the CLI)."""
        done = self.cli("get", "md", name, "-o", "json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def status_of(self, name: str) -> dict[str, Any]:
        """The same status through the API client: cheap enough to poll every second."""
        status: dict[str, Any] = self.client().get("modeldeployments", name).get("status") or {}
        return status

    def delete_md(self, name: str) -> None:
        self.cli("delete", "md", name, "--timeout", "60s", timeout=90, check=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.home / "daemon.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, limit: int = 40) -> list[str]:
        """WARNING/ERROR lines of the daemon log (and tracebacks' last lines)."""
        try:
            text = (self.home / "daemon.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        keep = [
            line
            for line in text.splitlines()
            if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
        ]
        return keep[-limit:]

    def replica_logs_problems(self, limit: int = 20) -> list[str]:
        found: list[str] = []
        for path in sorted((self.home / "logs" / "modeldeployments").rglob("*.log")):
            with contextlib.suppress(OSError):
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    if any(w in line for w in ("ERROR", "Traceback", "Exception")):
                        found.append(f"{path.name}: {line}")
        return found[-limit:]

    def close(self) -> None:
        """``pilothouse down``; then SIGKILL whatever carries this run's tag."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        with contextlib.suppress(Exception):
            self.cli("down", timeout=60, check=False)
        session = self.daemon_pid or -1
        if self.daemon_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.daemon_pid, signal.SIGKILL)
        left = kill_leftovers(session, self.tag)
        if left:
            print(f"warning: processes of the control plane still alive: {left}")


def deployment(
    name: str,
    model: str,
    replicas: int | dict[str, int],
    *,
    batch: int | None = None,
    autoscaling: dict[str, Any] | None = None,
    traffic: dict[str, Any] | None = None,
    cpu: str = "100m",
    probe_period: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model,
        "replicas": replicas,
        "resources": {"cpu": cpu, "memory": "256Mi"},
    }
    if probe_period is not None:
        spec["probes"] = {"readiness": {"path": "/v2/health/ready", "period": probe_period}}
    if batch is not None:
        spec["batching"] = {"maxBatchSize": batch}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


# ------------------------------------------------------------------------------ models


def train_fraud(workdir: Path) -> Path:
    """Train the example fraud model into a folder (not registered); that folder."""
    output = workdir / "train-output"
    env = {**os.environ, "PILOTHOUSE_OUTPUT_DIR": str(output)}
    print(f"training the fraud model ({TRAIN_ROWS} rows) ...", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [PYTHON, "train.py", "--rows", str(TRAIN_ROWS)],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"train.py exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    print(f"  trained in {time.monotonic() - started:.1f}s", flush=True)
    return output


SLOW_MODEL = '''"""A model whose predict sleeps: one call at a time, a fixed service time."""

import time
from pathlib import Path

import numpy as np


class Model:
    def load(self, path: Path) -> None:
        self.delay = float((Path(path) / "delay.txt").read_text())

    def predict(self, features):
        time.sleep(self.delay)
        return np.asarray(features, dtype=np.float64)[:, 0]
'''


def write_slow_model(directory: Path, delay_s: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(SLOW_MODEL, encoding="utf-8")
    (directory / "delay.txt").write_text(f"{delay_s}\n", encoding="utf-8")
    return directory


# --------------------------------------------------------------------------- load


@dataclass
class Shot:
    """One request of an open-loop run."""

    scheduled: float  # seconds since the run started
    latency: float  # seconds from the scheduled time to the end of the response
    status: int  # HTTP status; 0: connection error / timeout
    error: str = ""


@dataclass
class LoadRun:
    started: float  # time.monotonic() at t=0
    wall_started: float  # time.time() at t=0
    shots: list[Shot] = field(default_factory=list)
    max_connections_used: int = 0
    unfinished: int = 0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _exchange(conn: _Conn, request: bytes) -> tuple[int, bool]:
    """Send one request, read one response; (status, server keeps the connection)."""
    conn.writer.write(request)
    await conn.writer.drain()
    head = await conn.reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    keep = True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await conn.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            await conn.reader.readexactly(size + 2)
    elif length:
        await conn.reader.readexactly(length)
    return status, keep


def make_request(host: str, port: int, path: str = INFER_PATH, body: str = BODY) -> bytes:
    data = body.encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def open_loop(
    host: str,
    port: int,
    phases: Sequence[tuple[float, float]],
    *,
    path: str = INFER_PATH,
    body: str = BODY,
    max_connections: int = 256,
    request_timeout: float = 10.0,
    on_start: Any = None,
) -> LoadRun:
    """Send requests at a constant rate per phase: ``phases`` = [(seconds, requests/s)].

    Requests are evenly spaced. A request waits for an idle keep-alive connection or
    opens one (at most ``max_connections``); its latency counts from its scheduled
    time, so waiting for a connection is latency too. Each request has ``timeout``
    seconds; after the last one is sent, stragglers get ``timeout`` more seconds.
    A failed request is never retried (it counts as status 0).
    """
    timeout = request_timeout
    times: list[float] = []
    offset = 0.0
    for seconds, rate in phases:
        count = math.floor(seconds * rate)
        times.extend(offset + i / rate for i in range(count))
        offset += seconds
    request = make_request(host, port, path, body)
    idle: list[_Conn] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    loop = asyncio.get_running_loop()
    run = LoadRun(started=loop.time(), wall_started=time.time())
    shots = run.shots
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal opened
        conn: _Conn | None = None
        async with slots:
            try:
                async with asyncio.timeout(timeout - (loop.time() - run.started - scheduled)):
                    if idle:
                        conn = idle.pop()
                    else:
                        reader, writer = await asyncio.open_connection(host, port)
                        conn = _Conn(reader, writer)
                        opened += 1
                        run.max_connections_used = max(
                            run.max_connections_used, max_connections - slots._value
                        )
                    status, keep = await _exchange(conn, request)
                shots.append(Shot(scheduled, loop.time() - run.started - scheduled, status))
                if keep:
                    idle.append(conn)
                else:
                    conn.close()
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                if conn is not None:
                    conn.close()
                kind = type(exc).__name__
                shots.append(Shot(scheduled, loop.time() - run.started - scheduled, 0, kind))

    if on_start is not None:
        on_start(run)
    for scheduled in times:
        delay = run.started + scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _done, pending = await asyncio.wait(list(tasks), timeout=timeout + 1)
        run.unfinished = len(pending)
        for task in pending:
            task.cancel()
    for conn in idle:
        conn.close()
    return run


def percentile(values: Sequence[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100.0 * len(ordered)) - 1))
    return ordered[index]


def summarize(shots: Sequence[Shot]) -> dict[str, Any]:
    ok = [s.latency * 1000 for s in shots if 200 <= s.status < 300]
    errors: dict[str, int] = {}
    for s in shots:
        if not 200 <= s.status < 300:
            key = s.error or str(s.status)
            errors[key] = errors.get(key, 0) + 1
    return {
        "requests": len(shots),
        "ok": len(ok),
        "failed": len(shots) - len(ok),
        "errors": errors,
        "p50_ms": _round(percentile(ok, 50)),
        "p99_ms": _round(percentile(ok, 99)),
        "max_ms": _round(max(ok) if ok else None),
    }


def per_second(shots: Sequence[Shot], seconds: int) -> list[dict[str, Any]]:
    """By scheduled second: sent, ok (2xx), failed, p50/p99 of the ok ones; and by
    completion second: completed (throughput)."""
    rows = [
        {"t": t, "sent": 0, "ok": 0, "failed": 0, "done": 0, "_lat": []} for t in range(seconds)
    ]
    for s in shots:
        t = int(s.scheduled)
        if 0 <= t < seconds:
            row = rows[t]
            row["sent"] += 1
            if 200 <= s.status < 300:
                row["ok"] += 1
                row["_lat"].append(s.latency * 1000)
            else:
                row["failed"] += 1
        end = int(s.scheduled + s.latency)
        if 0 <= end < seconds and 200 <= s.status < 300:
            rows[end]["done"] += 1
    for row in rows:
        lat = row.pop("_lat")
        row["p50_ms"] = _round(percentile(lat, 50))
        row["p99_ms"] = _round(percentile(lat, 99))
    return rows


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_result(name: str, started_at: datetime, document: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    gitignore = RESULTS_DIR / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n!.gitignore\n", encoding="utf-8")
    out = RESULTS_DIR / f"{name}-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def print_ratios(ratios: list[dict[str, Any]]) -> None:
    print("ratios (targets are tracked, never enforced):")
    for ratio in ratios:
        value = "n/a" if ratio["value"] is None else f"{ratio['value']:.2f}"
        met = {True: "met", False: "MISSED", None: "-"}[ratio.get("met")]
        detail = f"  [{ratio['detail']}]" if ratio.get("detail") else ""
        target = ratio.get("target") or "-"
        print(f"  {ratio['name']:<52} {value:>8}  target {target:<14} {met}{detail}")


__all__ = [
    "MODEL_NAME",
    "ControlPlane",
    "LoadRun",
    "Shot",
    "deployment",
    "fmt",
    "open_loop",
    "per_second",
    "percentile",
    "print_ratios",
    "summarize",
    "train_fraud",
    "write_result",
    "write_slow_model",
]
