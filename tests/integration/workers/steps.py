"""A training worker for tests: counts steps, checkpointing with ``pilothouse.sdk``.

Each step "works" for ``--step-time`` seconds and appends its number to the state, so a
resumed run that redid or skipped work shows it in ``result-RANK.json``. On SIGTERM it
saves and exits 143 (preempted). ``--hold FILE`` makes step ``--hold-at`` wait (at most
two minutes) until FILE exists, so a test can keep a job running as long as it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pilothouse.sdk import Checkpointer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-time", type=float, default=0.1)
    parser.add_argument("--hold", default="")
    parser.add_argument("--hold-at", type=int, default=1)
    args = parser.parse_args()
    rank = os.environ.get("RANK", "0")
    ckpt = Checkpointer()
    state: dict[str, list[int]] = {"work": []}
    step = 0
    latest = ckpt.load_latest()
    if latest is not None:
        step, state = latest
        print(f"rank {rank}: resumed from step {step}", flush=True)
    print(f"rank {rank}: pid {os.getpid()} on {os.environ.get('PILOTHOUSE_NODE')}", flush=True)
    while step < args.steps:
        if ckpt.stop_requested:
            ckpt.save(state, step)
            print(f"rank {rank}: stopped at step {step}; checkpoint saved", flush=True)
            ckpt.exit_preempted()
        if args.hold and step == args.hold_at:
            deadline = time.monotonic() + 120
            while not Path(args.hold).exists() and not ckpt.stop_requested:
                if time.monotonic() > deadline:
                    print("hold file never appeared", flush=True)
                    return 3
                time.sleep(0.05)
            if ckpt.stop_requested:
                continue
        time.sleep(args.step_time)  # the work of one step
        step += 1
        state["work"].append(step)
        if ckpt.due():
            ckpt.save(state, step)
            print(f"rank {rank}: checkpoint at step {step}", flush=True)
    out = Path(os.environ["PILOTHOUSE_OUTPUT_DIR"]) / f"result-{rank}.json"
    out.write_text(json.dumps({"steps": step, "work": state["work"]}))
    print(f"rank {rank}: done after {step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
