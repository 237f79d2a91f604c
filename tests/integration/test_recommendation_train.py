"""The recommendation example's train.py as a real process: stopped and resumed, bit for bit.

An uninterrupted ``--quick`` run is the reference. A run killed with SIGKILL after
its first checkpoint, and a run stopped with SIGTERM (which saves and exits 143),
are each started again on the same checkpoint folder and must end with exactly
the reference's weights. The written model folder is then registered and served
by the custom runtime. Waits are on conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pilothouse.registry.local import LocalRegistry
from pilothouse.serving.runtimes import load_predictor
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recommendation"
QUICK = ["--quick", "--seed", "3"]
WEIGHTS = ("user_factors", "item_factors", "item_bias")
DEADLINE = 120.0


@dataclass
class Run:
    checkpoints: Path
    output: Path
    log: Path

    def start(self, *extra: str, interval: float = 0.3) -> subprocess.Popen[bytes]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PILOTHOUSE_") and k not in ("RANK", "WORLD_SIZE")
        }
        env.update(
            PILOTHOUSE_CHECKPOINT_DIR=str(self.checkpoints),
            PILOTHOUSE_CHECKPOINT_INTERVAL=str(interval),
            PILOTHOUSE_CHECKPOINT_KEEP="3",
            PILOTHOUSE_OUTPUT_DIR=str(self.output),
            PYTHONUNBUFFERED="1",
        )
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "train.py", *QUICK, *extra],
                cwd=EXAMPLE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def finish(self, process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(timeout=DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def complete(self) -> bool:
        """Some committed checkpoint (its manifest is inside, written before the rename)."""
        return any(self.checkpoints.glob("step-*/manifest.json"))

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")


def new_run(root: Path) -> Run:
    root.mkdir(parents=True)
    return Run(root / "checkpoints", root / "output", root / "train.log")


def weights(output: Path) -> dict[str, np.ndarray[Any, Any]]:
    with np.load(output / "weights.npz") as saved:
        return {name: saved[name] for name in saved.files}


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert wa[name].dtype == wb[name].dtype
        assert wa[name].tobytes() == wb[name].tobytes(), f"{name} differs"
    assert json.loads((a / "metrics.json").read_text()) == json.loads(
        (b / "metrics.json").read_text()
    )


def interrupt_after_first_checkpoint(run: Run, sig: signal.Signals) -> int:
    """Start a run, send ``sig`` once a checkpoint is committed, return its exit status."""
    process = run.start()
    try:
        wait_for(
            "the first checkpoint",
            lambda: run.complete() or process.poll() is not None,
            timeout=DEADLINE,
            every=0.02,
        )
        assert process.poll() is None, f"finished before it could be stopped:\n{run.text()}"
        process.send_signal(sig)
    finally:
        status = run.finish(process)
    assert not (run.output / "weights.npz").exists(), "it finished; the test proves nothing"
    return status


def example_data() -> ModuleType:
    """examples/recommendation/data.py under a name of its own ("data" is too common)."""
    name = "recommendation_example_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / "data.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


def resumed_step(log: str) -> int:
    found = re.findall(r"resumed from checkpoint step (\d+)", log)
    assert len(found) == 1, log
    return int(found[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = new_run(tmp_path_factory.mktemp("reference") / "run")
    status = run.finish(run.start(interval=3600))
    assert status == 0, run.text()
    assert "training from scratch" in run.text()
    return run


def test_uninterrupted_run_writes_a_model(reference: Run) -> None:
    files = sorted(p.name for p in reference.output.iterdir())
    assert files == ["metrics.json", "model.py", "signature.json", "weights.npz"]
    metrics = json.loads((reference.output / "metrics.json").read_text())
    assert metrics["recall_at_10"] > 3 * 10 / metrics["items"]  # far better than chance
    assert 0 < metrics["ndcg_at_10"] <= 1
    assert metrics["final_loss"] > 0
    assert re.search(r"\[epoch 80/80\] loss [\d.]+ recall@10 [\d.]+ elapsed", reference.text())
    signature = json.loads((reference.output / "signature.json").read_text())
    assert [i["name"] for i in signature["inputs"]] == ["user_id"]


def test_sigkill_then_restart_resumes_to_identical_weights(tmp_path: Path, reference: Run) -> None:
    run = new_run(tmp_path / "killed")
    assert interrupt_after_first_checkpoint(run, signal.SIGKILL) == -signal.SIGKILL
    assert run.finish(run.start()) == 0, run.text()
    assert resumed_step(run.text()) > 0
    assert_identical(reference.output, run.output)


def test_sigterm_saves_exits_143_and_resumes_to_identical_weights(
    tmp_path: Path, reference: Run
) -> None:
    run = new_run(tmp_path / "terminated")
    assert interrupt_after_first_checkpoint(run, signal.SIGTERM) == 143, run.text()
    stopped = re.findall(r"\[stop\] SIGTERM: saved step (\d+)", run.text())
    assert len(stopped) == 1, run.text()
    assert run.finish(run.start()) == 0, run.text()
    assert resumed_step(run.text()) == int(stopped[0])
    assert_identical(reference.output, run.output)


def test_checkpoints_of_other_settings_are_refused(tmp_path: Path, reference: Run) -> None:
    run = Run(reference.checkpoints, tmp_path / "other-output", tmp_path / "other.log")
    assert run.finish(run.start("--factors", "8")) == 2
    assert "another run" in run.text()


def test_model_serves_top_10_unseen_items(tmp_path: Path, reference: Run) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    version = registry.register("recommender", reference.output, framework="custom")
    assert version.metrics["recall_at_10"] > 0
    predictor = load_predictor(version)

    interactions = example_data().generate(400, 150, seed=3)
    seen = interactions.seen()

    users = np.array([[0.0], [5.0], [17.0], [399.0]])
    top = predictor.predict(users)
    assert top.shape == (4, 10)
    assert top.dtype == np.float64
    for row, user in zip(top, users[:, 0].astype(int), strict=True):
        items = row.astype(int)
        assert np.array_equal(items, row), "item ids are whole numbers"
        assert len(set(items.tolist())) == 10
        assert ((items >= 0) & (items < 150)).all()
        assert not seen[user, items].any(), f"user {user} already has some of {items}"

    # Users the model does not know get the most popular items, in popularity order.
    counts = np.bincount(interactions.train_items, minlength=150)
    popular = np.argsort(-counts, kind="stable")[:10].astype(np.float64)
    unknown = predictor.predict(np.array([[-1.0], [400.0], [2.5]]))
    assert (unknown == popular).all()
    # One call with known and unknown users answers each row on its own.
    mixed = predictor.predict(np.array([[5.0], [-1.0]]))
    assert np.array_equal(mixed, np.stack([top[1], popular]))
