"""Helpers to register a small real model and run real replica processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pilothouse.registry.local import LocalRegistry, ModelVersion
from tests.integration.conftest import EXAMPLE, wait_for

sys.path.insert(0, str(EXAMPLE))
from fraud_data import FEATURES, generate


def register_fraud_model(root: Path, rows: int = 4000) -> ModelVersion:
    """A small logistic regression on the example's synthetic transactions."""
    features, labels = generate(rows, seed=11)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        joblib.dump(model, out / "model.joblib")
        (out / "signature.json").write_text(
            json.dumps(
                {
                    "inputs": [{"name": f, "datatype": "FP64"} for f in FEATURES],
                    "outputs": [{"name": "score", "datatype": "FP64"}],
                }
            )
        )
        (out / "metrics.json").write_text(json.dumps({"rows": rows}))
        return LocalRegistry(root).register("fraud", out, framework="sklearn")


def sample_rows(n: int = 4) -> np.ndarray:
    features, _ = generate(n, seed=99)
    return features


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=10)


@contextmanager
def run_replica(
    version_dir: Path, log_dir: Path, *extra: str, name: str = "fraud"
) -> Iterator[Replica]:
    """``pilothouse serve`` on a socket bound here (no port race), until ready."""
    with launch_replica(
        lambda fd: [
            sys.executable,
            "-m",
            "pilothouse",
            "serve",
            "--model-dir",
            str(version_dir),
            "--name",
            name,
            "--fd",
            str(fd),
            *extra,
        ],
        log_dir,
    ) as replica:
        yield replica


@contextmanager
def launch_replica(argv: Callable[[int], list[str]], log_dir: Path) -> Iterator[Replica]:
    """Run ``argv(fd)``, a model server listening on ``fd`` (a socket bound here: no port
    race), until it answers ``/v2/health/live``; stopped at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    log = log_dir / f"replica-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv(sock.fileno()),
            pass_fds=(sock.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    sock.close()
    replica = Replica(process, f"http://127.0.0.1:{port}", log)
    try:

        def live() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"replica exited: {log.read_text()}")
            try:
                return httpx.get(f"{replica.url}/v2/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("replica to answer", live, timeout=60)
        yield replica
    finally:
        replica.stop()
