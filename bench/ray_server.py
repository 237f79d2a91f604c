"""Ray Serve serving the same fraud model, for comparison with pilothouse.

Runs with the separate Ray virtualenv (never pilothouse's own)::

    bench/.venv-ray/bin/python bench/ray_server.py --model PATH/model.joblib --port 8003

Starts a local Ray instance, Ray Serve's HTTP proxy on 127.0.0.1:PORT, and one
replica of one deployment (Ray Serve's defaults otherwise, unless
``--max-ongoing-requests N`` is given) under route prefix
``/``: any path, e.g. ``POST /v1/models/fraud:predict``, takes
``{"instances": [[10 floats], ...]}`` and answers ``{"predictions": [...]}``.
Prints ``READY`` once the application is running; on SIGTERM/SIGINT shuts Serve
and Ray down and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import joblib
import numpy as np
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1)
class FraudModel:
    def __init__(self, model_path: str) -> None:
        self.model: Any = joblib.load(model_path)

    async def __call__(self, request: Request) -> dict[str, list[float]]:
        body = await request.json()
        rows = np.asarray(body["instances"], dtype=np.float64)
        scores = self.model.predict_proba(rows)[:, 1]
        return {"predictions": [float(s) for s in scores]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the fraud model with Ray Serve.")
    parser.add_argument("--model", type=Path, required=True, help="a joblib-saved estimator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=None,
        help="per-replica concurrency limit (default: Ray Serve's own default)",
    )
    args = parser.parse_args(argv)
    deployment = FraudModel
    if args.max_ongoing_requests is not None:
        deployment = FraudModel.options(max_ongoing_requests=args.max_ongoing_requests)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    ray.init(include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(deployment.bind(str(args.model.resolve())), name="fraud", route_prefix="/")
        # Installed after Ray's own setup so that ours are the handlers in force.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
