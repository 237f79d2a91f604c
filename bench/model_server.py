"""Benchmark a pilothouse model-server replica against a bare floor and Ray Serve.

    .venv/bin/python bench/model_server.py [--duration 10] [--quick]

In one run, on this machine, with the same load generator (``wrk``, one thread,
POSTing one fixed single-row v1 request) it:

1. trains the fraud-detection example model once (``examples/fraud-detection/train.py
   --rows 50000``) and registers it in a temporary ``LocalRegistry``;
2. measures, one server at a time, at 8 and at 64 connections:

   * ``bare``        -- ``bench/bare_server.py``: Starlette + uvicorn + ``predict_proba``;
   * ``pilothouse-batch-off`` -- ``pilothouse serve --max-batch-size 1``;
   * ``pilothouse-batch-on``  -- ``pilothouse serve`` (``--max-batch-size 64``);
   * ``ray``         -- ``bench/ray_server.py`` in ``bench/.venv-ray`` (skipped if absent);

3. prints a table and the ratios the project tracks, and writes the results as
   JSON to ``bench/results/model_server-<timestamp>.json``.

This is a measurement, never a CI gate: it exits 0 whether or not targets are met
(non-zero only if the benchmark itself could not run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
EXAMPLE_DIR = REPO / "examples" / "fraud-detection"
RESULTS_DIR = BENCH_DIR / "results"
RAY_VENV = BENCH_DIR / ".venv-ray"
RAY_PYTHON = RAY_VENV / "bin" / "python"

MODEL_NAME = "fraud"
TRAIN_ROWS = 50_000
CONNECTIONS = (8, 64)
WARMUP_SECONDS = 1
WRK_TIMEOUT = "10s"
READY_TIMEOUT = 60.0
RAY_READY_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
RAY_STOP_TIMEOUT = 60.0
# One transaction, features in fraud_data.FEATURES order.
ROW = [42.5, 0.0, 13.0, 1.0, 0.0, 0.0, 3.0, 0.95, 4.2, 1460.0]
BODY = json.dumps({"instances": [ROW]})
INFER_PATH = f"/v1/models/{MODEL_NAME}:predict"
# Marks the environment of every server process this run starts (and what they start),
# so that leftovers can be found and killed without touching anyone else's processes.
RUN_TAG_VAR = "PILOTHOUSE_BENCH_RUN"

TARGET_OFF_VS_BARE = 0.8
TARGET_ON_VS_BARE = 1.0
TARGET_VS_RAY = 10.0


class BenchError(Exception):
    """The benchmark could not run (not: a target was missed)."""


@dataclass
class WrkResult:
    server: str
    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float | None
    p75_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    # CPU used during the measurement, in cores (1.0 = one core busy all the time):
    # by the server and all it started, by wrk, and by everything else on the machine.
    server_cpu: float | None = None
    wrk_cpu: float | None = None
    other_cpu: float | None = None


@dataclass
class ServerSpec:
    name: str
    description: str
    argv: list[str]
    ready_timeout: float
    stop_timeout: float
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- wrk


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, server: str, connections: int) -> WrkResult:
    """Read wrk's ``--latency`` report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", output, re.MULTILINE)
    if rps is None or total is None:
        raise BenchError(f"could not parse wrk output:\n{output}")
    percentiles: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE):
        percentiles[pct] = _to_ms(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {}
    )
    return WrkResult(
        server=server,
        connections=connections,
        duration_s=_to_ms(total.group(2)) / 1000.0,
        requests=int(total.group(1)),
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles.get("50"),
        p75_ms=percentiles.get("75"),
        p90_ms=percentiles.get("90"),
        p99_ms=percentiles.get("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def write_lua(directory: Path) -> Path:
    path = directory / "post.lua"
    path.write_text(
        "-- POST one fixed single-row v1 request.\n"
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n',
        encoding="utf-8",
    )
    return path


def run_wrk(url: str, lua: Path, connections: int, seconds: float) -> str:
    argv = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{max(1, round(seconds))}s",
        "--timeout",
        WRK_TIMEOUT,
        "--latency",
        "--script",
        str(lua),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (
        (done.stdout or done.stderr).splitlines()[0].strip() if done.stdout or done.stderr else ""
    )


# --------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(pgid, session id) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[2]), int(fields[3])


def _has_tag(pid: int, tag: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_TAG_VAR}={tag}".encode() in environ.split(b"\0")


def _all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _busy_ticks() -> int:
    """Clock ticks all CPUs spent busy (or stolen by the hypervisor) since boot."""
    first = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return user + nice + system + irq + softirq + steal


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class CpuMeter:
    """CPU time of the server, of wrk (our waited-for children) and of the machine."""

    session: int
    tag: str
    wall: float = 0.0
    server: int = 0
    busy: int = 0
    children: float = 0.0

    def _server_ticks(self) -> int:
        return sum(_cpu_ticks(pid) for pid in ours(self.session, self.tag))

    def start(self) -> None:
        times = os.times()
        self.wall = time.monotonic()
        self.server = self._server_ticks()
        self.busy = _busy_ticks()
        self.children = times.children_user + times.children_system

    def stop(self) -> tuple[float, float, float]:
        """(server, wrk, other) CPU in cores since ``start``."""
        times = os.times()
        wall = time.monotonic() - self.wall
        tick = float(os.sysconf("SC_CLK_TCK"))
        server = (self._server_ticks() - self.server) / tick
        busy = (_busy_ticks() - self.busy) / tick
        wrk = times.children_user + times.children_system - self.children
        other = max(0.0, busy - server - wrk)
        return server / wall, wrk / wall, other / wall


def ours(session: int, tag: str) -> list[int]:
    """Live processes of the session we started, or carrying this run's tag."""
    me = os.getpid()
    found = []
    for pid in _all_pids():
        if pid == me:
            continue
        stat = _proc_stat(pid)
        if stat is not None and (stat[1] == session or _has_tag(pid, tag)):
            found.append(pid)
    return found


def kill_leftovers(session: int, tag: str, seconds: float = 10.0) -> list[int]:
    """SIGKILL what is left of a run (its session or its tag) until none is; returns survivors."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = ours(session, tag)
        if not left:
            return []
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    return ours(session, tag)


class Server:
    """One server process in its own session; ``stop`` ends it and everything it started."""

    def __init__(self, spec: ServerSpec, log_path: Path, tag: str) -> None:
        self.spec = spec
        self.log_path = log_path
        self.tag = tag
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.spec.env, RUN_TAG_VAR: self.tag}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.spec.argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str) -> float:
        """POST the benchmark body until it answers 200; the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + self.spec.ready_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.spec.name} exited with {self.proc.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            request = urllib.request.Request(
                url,
                data=BODY.encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    payload = json.loads(response.read())
                    if response.status == 200 and len(payload.get("predictions", [])) == 1:
                        return time.monotonic() - started
                    last = f"HTTP {response.status}: {payload}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise BenchError(
            f"{self.spec.name} not ready within {self.spec.ready_timeout:.0f}s ({last}); "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the server's PID and wait; then SIGKILL whatever of ours is left.

        Only the leader gets SIGTERM: it shuts down what it started (Ray's driver
        needs its GCS and raylet alive to do so). Then its process group, and every
        process of its session or carrying this run's tag, are SIGKILLed.
        """
        if self.proc is None:
            return
        session = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            print(
                f"  {self.spec.name}: no exit {self.spec.stop_timeout:.0f}s after SIGTERM; killing"
            )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
        # Ray's workers run in process groups of their own but stay in our session.
        kill_leftovers(session, self.tag)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        left = ours(session, self.tag)
        if left:
            print(f"  warning: {self.spec.name}: processes still alive after kill: {left}")
        self.proc = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------- model


def train_and_register(workdir: Path) -> Path:
    """Train the example model into workdir and register it; the version's folder."""
    from pilothouse.registry.local import LocalRegistry

    output = workdir / "train-output"
    env = {**os.environ, "PILOTHOUSE_OUTPUT_DIR": str(output)}
    print(f"training the fraud model ({TRAIN_ROWS} rows) ...", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "train.py", "--rows", str(TRAIN_ROWS)],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"train.py exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    print(
        f"  trained in {time.monotonic() - started:.1f}s (auc {metrics.get('auc', float('nan')):.3f})"
    )
    version = LocalRegistry(workdir / "registry").register(MODEL_NAME, output, framework="sklearn")
    print(f"  registered {version.ref} at {version.path}")
    return version.path


# ------------------------------------------------------------------------ run


def server_specs(
    model_dir: Path,
    port_of: dict[str, int],
    with_ray: bool,
    env: dict[str, str],
    ray_max_ongoing: int | None = None,
) -> list[ServerSpec]:
    model = str(model_dir / "model.joblib")
    bare = [sys.executable, str(BENCH_DIR / "bare_server.py"), "--model", model]
    pilothouse = [sys.executable, "-m", "pilothouse", "serve", "--model-dir", str(model_dir)]
    pilothouse += ["--name", MODEL_NAME, "--drain", "0"]
    ray = [str(RAY_PYTHON), str(BENCH_DIR / "ray_server.py"), "--model", model]
    ray_what = "defaults"
    if ray_max_ongoing is not None:
        ray += ["--max-ongoing-requests", str(ray_max_ongoing)]
        ray_what = f"max_ongoing_requests={ray_max_ongoing}"
    specs = [
        ServerSpec(
            "bare",
            "Starlette + uvicorn, predict_proba inline (bench/bare_server.py)",
            [*bare, "--port", str(port_of["bare"])],
            READY_TIMEOUT,
            STOP_TIMEOUT,
            env,
        ),
        ServerSpec(
            "pilothouse-batch-off",
            "pilothouse serve --max-batch-size 1",
            [*pilothouse, "--port", str(port_of["pilothouse-batch-off"]), "--max-batch-size", "1"],
            READY_TIMEOUT,
            STOP_TIMEOUT,
            env,
        ),
        ServerSpec(
            "pilothouse-batch-on",
            "pilothouse serve --max-batch-size 64",
            [*pilothouse, "--port", str(port_of["pilothouse-batch-on"]), "--max-batch-size", "64"],
            READY_TIMEOUT,
            STOP_TIMEOUT,
            env,
        ),
    ]
    if with_ray:
        specs.append(
            ServerSpec(
                "ray",
                f"Ray Serve, 1 replica, route_prefix /, {ray_what} (bench/ray_server.py)",
                [*ray, "--port", str(port_of["ray"])],
                RAY_READY_TIMEOUT,
                RAY_STOP_TIMEOUT,
                env,
            )
        )
    return specs


def measure(
    spec: ServerSpec, port: int, lua: Path, seconds: float, logs: Path, tag: str
) -> tuple[list[WrkResult], dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{INFER_PATH}"
    server = Server(spec, logs / f"{spec.name}.log", tag)
    info: dict[str, Any] = {
        "description": spec.description,
        "argv": spec.argv,
        "env": spec.env,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    results = []
    print(
        f"{spec.name}: starting ({spec.description}); load average {info['loadavg_before'][0]}",
        flush=True,
    )
    try:
        server.start()
        info["ready_s"] = round(server.wait_ready(url), 2)
        print(f"  ready after {info['ready_s']:.1f}s; warming up {WARMUP_SECONDS}s", flush=True)
        run_wrk(url, lua, CONNECTIONS[0], WARMUP_SECONDS)
        for connections in CONNECTIONS:
            print(f"  {connections} connections, {seconds:g}s ...", end=" ", flush=True)
            assert server.proc is not None
            meter = CpuMeter(server.proc.pid, tag)
            meter.start()
            output = run_wrk(url, lua, connections, seconds)
            cpu = meter.stop()
            result = parse_wrk(output, spec.name, connections)
            result.server_cpu, result.wrk_cpu, result.other_cpu = (round(c, 2) for c in cpu)
            results.append(result)
            errors = sum(result.socket_errors.values())
            print(
                f"{result.requests_per_s:,.0f} req/s, p50 {_fmt(result.p50_ms)} ms, "
                f"p99 {_fmt(result.p99_ms)} ms, non-2xx {result.non_2xx}; CPU cores: "
                f"server {_fmt(result.server_cpu)}, wrk {_fmt(result.wrk_cpu)}, "
                f"other {_fmt(result.other_cpu)}"
                + (f", socket errors {result.socket_errors}" if errors else ""),
                flush=True,
            )
        alive = server.proc is not None and server.proc.poll() is None
        info["alive_after_load"] = alive
        if not alive:
            print(f"  warning: {spec.name} died under load; log tail:\n{server.log_tail()}")
    finally:
        server.stop()
    info["log_tail"] = server.log_tail(15)
    return results, info


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def compute_ratios(results: list[WrkResult]) -> list[dict[str, Any]]:
    by = {(r.server, r.connections): r for r in results}

    def rps(server: str, connections: int) -> float | None:
        r = by.get((server, connections))
        return None if r is None else r.requests_per_s

    ratios: list[dict[str, Any]] = []
    for c in CONNECTIONS:
        ratios.append(
            {
                "name": f"pilothouse(batching off)/bare throughput @{c}",
                "value": _ratio(rps("pilothouse-batch-off", c), rps("bare", c)),
                "target": f">= {TARGET_OFF_VS_BARE}",
                "met": None,
                "_ok": lambda v: v >= TARGET_OFF_VS_BARE,
            }
        )
    ratios.append(
        {
            "name": f"pilothouse(batching on)/bare throughput @{CONNECTIONS[-1]}",
            "value": _ratio(
                rps("pilothouse-batch-on", CONNECTIONS[-1]), rps("bare", CONNECTIONS[-1])
            ),
            "target": f"> {TARGET_ON_VS_BARE}",
            "met": None,
            "_ok": lambda v: v > TARGET_ON_VS_BARE,
        }
    )
    if any(r.server == "ray" for r in results):
        for c in CONNECTIONS:
            candidates = [
                r for r in results if r.server.startswith("pilothouse") and r.connections == c
            ]
            ray = by.get(("ray", c))
            if not candidates or ray is None:
                continue
            best = max(candidates, key=lambda r: r.requests_per_s)
            ratios.append(
                {
                    "name": f"pilothouse(best: {best.server})/ray throughput @{c}",
                    "value": _ratio(best.requests_per_s, ray.requests_per_s),
                    "target": f">= {TARGET_VS_RAY}x",
                    "met": None,
                    "_ok": lambda v: v >= TARGET_VS_RAY,
                }
            )
            ratios.append(
                {
                    "name": f"p99 ms @{c}: pilothouse(best: {best.server}) vs ray",
                    "value": _ratio(ray.p99_ms, best.p99_ms),
                    "detail": f"{_fmt(best.p99_ms)} vs {_fmt(ray.p99_ms)} (ray/pilothouse)",
                    "target": "lower than ray (ratio > 1)",
                    "met": None,
                    "_ok": lambda v: v > 1.0,
                }
            )
    for ratio in ratios:
        ok = ratio.pop("_ok")
        if ratio["value"] is not None:
            ratio["met"] = bool(ok(ratio["value"]))
    return ratios


def print_table(results: list[WrkResult], ratios: list[dict[str, Any]]) -> None:
    header = (
        f"{'server':<22} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'sock err':>8} {'srv cpu':>8} {'other cpu':>9}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.server:<22} {r.connections:>5} {r.requests_per_s:>10,.1f} {_fmt(r.p50_ms):>8} "
            f"{_fmt(r.p99_ms):>8} {r.non_2xx:>8} {sum(r.socket_errors.values()):>8} "
            f"{_fmt(r.server_cpu):>8} {_fmt(r.other_cpu):>9}"
        )
    print("(cpu: cores busy during the measurement; 'other' is everything but server and wrk)")
    print()
    print("ratios (targets are tracked, never enforced):")
    for ratio in ratios:
        value = "n/a" if ratio["value"] is None else f"{ratio['value']:.2f}"
        met = {True: "met", False: "MISSED", None: "n/a"}[ratio["met"]]
        detail = f"  [{ratio['detail']}]" if "detail" in ratio else ""
        print(f"  {ratio['name']:<55} {value:>7}  target {ratio['target']:<26} {met}{detail}")


def source_fingerprint() -> str:
    """sha256 over pilothouse's source files: which code a result was measured on."""
    digest = hashlib.sha256()
    src = REPO / "src" / "pilothouse"
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def environment(with_ray: bool) -> dict[str, Any]:
    import numpy
    import sklearn
    import starlette
    import uvicorn

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": wrk_version(),
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__,
        "pilothouse_source_sha256": source_fingerprint(),
    }
    if with_ray:
        done = subprocess.run(
            [
                str(RAY_PYTHON),
                "-c",
                "import ray, sklearn; print(ray.__version__, sklearn.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        parts = done.stdout.split()
        env["ray"] = parts[0] if len(parts) == 2 else f"unknown ({done.stderr.strip()[-200:]})"
        env["ray_venv_scikit-learn"] = parts[1] if len(parts) == 2 else None
    return env


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark pilothouse's model server.")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measurement (default 10)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve even if installed")
    parser.add_argument(
        "--ray-max-ongoing-requests",
        dest="ray_max_ongoing",
        type=int,
        default=None,
        help="Ray Serve replica's max_ongoing_requests (default: Ray's default, 5 in Ray 2.60)",
    )
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=None,
        help="set OMP_NUM_THREADS for every server (default: inherit, as pilothouse runs)",
    )
    args = parser.parse_args(argv)
    seconds: float = 3.0 if args.quick else args.duration
    if not 1 <= seconds <= 600:
        parser.error("--duration must be between 1 and 600 seconds")

    if shutil.which("wrk") is None:
        print(
            "error: wrk not found on PATH. Install it (Debian/Ubuntu: "
            "`apt-get update && apt-get install -y wrk`) and run again.",
            file=sys.stderr,
        )
        return 2
    with_ray = False
    if args.no_ray:
        print("ray: skipped (--no-ray)")
    elif not RAY_PYTHON.exists():
        print(f"ray: skipped ({RAY_VENV.relative_to(REPO)} not found; see bench/README.md)")
    else:
        with_ray = True

    server_env = {} if args.omp_threads is None else {"OMP_NUM_THREADS": str(args.omp_threads)}
    before = _busy_ticks()
    time.sleep(1.0)
    busy_before = (_busy_ticks() - before) / float(os.sysconf("SC_CLK_TCK"))
    if busy_before > 0.3:
        print(
            f"warning: {busy_before:.2f} cores busy before the run: other work on this machine "
            "will skew the numbers (see 'other cpu' below)"
        )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    results: list[WrkResult] = []
    servers: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-") as tmp:
            workdir = Path(tmp)
            env = environment(with_ray)
            if with_ray and env.get("ray_venv_scikit-learn") != env["scikit-learn"]:
                print(
                    f"warning: scikit-learn {env.get('ray_venv_scikit-learn')} in the Ray venv, "
                    f"{env['scikit-learn']} here: the model may not unpickle the same"
                )
            model_dir = train_and_register(workdir)
            lua = write_lua(workdir)
            logs = workdir / "logs"
            logs.mkdir()
            names = ["bare", "pilothouse-batch-off", "pilothouse-batch-on", "ray"]
            ports = {name: free_port() for name in names}
            specs = server_specs(model_dir, ports, with_ray, server_env, args.ray_max_ongoing)
            for spec in specs:
                try:
                    measured, info = measure(spec, ports[spec.name], lua, seconds, logs, tag)
                except BenchError as exc:
                    if spec.name != "ray":
                        raise
                    print(f"ray: failed, continuing without it: {exc}")
                    servers[spec.name] = {"error": str(exc)}
                    continue
                results.extend(measured)
                servers[spec.name] = info
    except KeyboardInterrupt:
        print("\ninterrupted; every server started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    ratios = compute_ratios(results)
    print_table(results, ratios)
    RESULTS_DIR.mkdir(exist_ok=True)
    gitignore = RESULTS_DIR / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n!.gitignore\n", encoding="utf-8")
    out = RESULTS_DIR / f"model_server-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "benchmark": "model_server",
        "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {
            "duration_s": seconds,
            "connections": list(CONNECTIONS),
            "wrk_threads": 1,
            "wrk_timeout": WRK_TIMEOUT,
            "warmup_s": WARMUP_SECONDS,
            "train_rows": TRAIN_ROWS,
            "server_env": server_env,
            "ray_max_ongoing_requests": args.ray_max_ongoing,
            "cores_busy_before": round(busy_before, 2),
            "inherited_OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "path": INFER_PATH,
            "body": BODY,
        },
        "environment": env,
        "servers": servers,
        "results": [asdict(r) for r in results],
        "ratios": ratios,
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
