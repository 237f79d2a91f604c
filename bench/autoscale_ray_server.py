"""Ray Serve with its autoscaler at its defaults, serving a model that sleeps.

Runs with the separate Ray virtualenv (never pilothouse's own)::

    bench/.venv-ray/bin/python bench/autoscale_ray_server.py --port 8003 \\
        --delay 0.02 --states-file /tmp/states.jsonl [--min 1 --max 6]

One deployment, route prefix ``/``: any path takes ``{"instances": [[...], ...]}``
and answers ``{"predictions": [first feature of each row]}`` after sleeping
``--delay`` seconds, one call at a time per replica (a lock), like a pilothouse
``custom`` model (whose calls are serialised). ``autoscaling_config`` is
``{"min_replicas": MIN, "max_replicas": MAX}``: everything else (target ongoing
requests, upscale/downscale delays, look-back period, ``max_ongoing_requests``) is
Ray Serve's default. Ray is started with ``num_cpus=--num-cpus`` (default 8) so that
six replicas of one CPU each fit on a small machine (the default would allow as
many replicas as cores).

Every second the driver appends ``{"time": ..., "states": {STATE: count}}`` (from
``serve.status()``) to ``--states-file``. Prints ``READY`` once the application
runs; on SIGTERM/SIGINT shuts Serve and Ray down and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

APP = "slow"
DEPLOYMENT = "SlowModel"


@serve.deployment
class SlowModel:
    """Body read on the replica's event loop; the sleep in a thread, one at a time."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()

    async def __call__(self, request: Request) -> dict[str, list[float]]:
        body = await request.json()
        rows = body["instances"]
        await asyncio.to_thread(self._sleep)
        return {"predictions": [float(row[0]) for row in rows]}

    def _sleep(self) -> None:
        with self.lock:
            time.sleep(self.delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ray Serve autoscaling a sleeping model.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=6)
    parser.add_argument("--num-cpus", type=int, default=8)
    parser.add_argument("--states-file", type=Path, required=True)
    args = parser.parse_args(argv)
    app = SlowModel.options(
        name=DEPLOYMENT,
        autoscaling_config={"min_replicas": args.min, "max_replicas": args.max},
    ).bind(args.delay)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    ray.init(include_dashboard=False, num_cpus=args.num_cpus)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(app, name=APP, route_prefix="/")
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print("READY", flush=True)
        with args.states_file.open("a", encoding="utf-8") as out:
            while not stop.is_set():
                started = time.time()
                try:
                    status = serve.status().applications[APP].deployments[DEPLOYMENT]
                    states = {
                        str(k.value if hasattr(k, "value") else k): v
                        for k, v in status.replica_states.items()
                    }
                    record: dict[str, Any] = {
                        "time": started,
                        "states": states,
                        "status": str(status.status.value),
                    }
                except Exception as exc:  # keep polling; note why this second is missing
                    record = {"time": started, "error": f"{type(exc).__name__}: {exc}"}
                out.write(json.dumps(record) + "\n")
                out.flush()
                stop.wait(max(0.0, 1.0 - (time.time() - started)))
        print("stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
