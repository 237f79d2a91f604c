"""Unit tests for the checkpoint SDK: real files in tmp_path, an injected clock, no processes.

The SIGTERM contract with a real process is in tests/integration/test_checkpoint_signals.py.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pilothouse.sdk import PREEMPTED_EXIT_CODE, Checkpointer, CheckpointError
from pilothouse.sdk.checkpoint import MANIFEST, PAYLOAD

ENV = (
    "PILOTHOUSE_CHECKPOINT_DIR",
    "PILOTHOUSE_CHECKPOINT_INTERVAL",
    "PILOTHOUSE_CHECKPOINT_KEEP",
    "RANK",
)


@pytest.fixture(autouse=True)
def _clean_env_and_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ckpt(directory: Path, **kwargs: object) -> Checkpointer:
    return Checkpointer(directory, handle_signals=False, **kwargs)  # type: ignore[arg-type]


def test_round_trip_of_numpy_state(tmp_path: Path) -> None:
    c = ckpt(tmp_path)
    rng = np.random.default_rng(3)
    state: dict[str, Any] = {
        "w": rng.normal(size=(4, 3)),
        "big": rng.normal(size=(300, 200)),  # pickled in frames of its own (protocol 5)
        "rng": rng.bit_generator.state,
        "epoch": 2,
    }
    folder = c.save(state, 17)
    assert folder == tmp_path / "step-000000000017"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, PAYLOAD]
    loaded = c.load_latest()
    assert loaded is not None
    step, got = loaded
    assert step == 17
    assert np.array_equal(got["w"], state["w"])
    assert got["big"].tobytes() == state["big"].tobytes()
    assert got["rng"] == state["rng"]
    assert got["epoch"] == 2


def test_empty_or_missing_folder_loads_nothing(tmp_path: Path) -> None:
    assert ckpt(tmp_path / "nothing-here").load_latest() is None
    assert ckpt(tmp_path).load_latest() is None


def test_newest_step_wins_by_number_not_by_name_or_age(tmp_path: Path) -> None:
    c = ckpt(tmp_path, keep=10)
    for step in (5, 100, 20):
        c.save({"step": step}, step)
    assert c.load_latest() == (100, {"step": 100})
    assert c.steps() == [5, 20, 100]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    c = ckpt(tmp_path, keep=2)
    for step in range(1, 6):
        c.save(step, step)
    assert c.steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000000000004",
        "step-000000000005",
    ]


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    c = ckpt(tmp_path)
    c.save("first", 3)
    c.save("second", 3)
    assert c.load_latest() == (3, "second")
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000003"]


def test_leftovers_of_a_crashed_save_are_ignored_then_removed(tmp_path: Path) -> None:
    c = ckpt(tmp_path)
    c.save({"good": True}, 1)
    # A writer killed before its rename leaves a scratch folder with a partial payload...
    scratch = tmp_path / ".tmp-step-000000000002-999-deadbeef"
    scratch.mkdir()
    (scratch / PAYLOAD).write_bytes(pickle.dumps({"good": False})[:5])
    assert c.load_latest() == (1, {"good": True})
    # ...which the next save clears away.
    c.save({"good": True}, 3)
    assert not scratch.exists()
    assert c.steps() == [1, 3]


def test_a_save_that_fails_midway_leaves_no_trace(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("cannot pickle this")

    c = ckpt(tmp_path)
    c.save("ok", 1)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        c.save({"a": np.zeros(1000), "b": Unpicklable()}, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000001"]
    assert c.load_latest() == (1, "ok")


def test_corrupt_payload_is_skipped_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ckpt(tmp_path)
    c.save({"v": 1}, 1)
    newest = c.save({"v": 2}, 2)
    assert newest is not None
    payload = newest / PAYLOAD
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    payload.write_bytes(bytes(data))
    assert c.load_latest() == (1, {"v": 1})
    err = capsys.readouterr().err
    assert "step-000000000002" in err
    assert "sha256" in err


def test_truncated_and_manifestless_checkpoints_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ckpt(tmp_path, keep=5)
    c.save("one", 1)
    truncated = c.save("two", 2)
    no_manifest = c.save("three", 3)
    assert truncated is not None
    assert no_manifest is not None
    (truncated / PAYLOAD).write_bytes((truncated / PAYLOAD).read_bytes()[:-3])
    (no_manifest / MANIFEST).unlink()
    assert c.load_latest() == (1, "one")
    err = capsys.readouterr().err
    assert "step-000000000003: no manifest.json" in err
    assert "step-000000000002" in err


def test_only_rank_zero_writes_and_every_rank_reads_it(tmp_path: Path) -> None:
    worker = ckpt(tmp_path, rank=1)
    assert not worker.writes
    assert worker.save({"from": 1}, 1) is None
    assert not any(tmp_path.iterdir())
    ckpt(tmp_path, rank=0).save({"from": 0}, 1)
    assert worker.load_latest() == (1, {"from": 0})


def test_all_ranks_write_their_own_checkpoints(tmp_path: Path) -> None:
    for rank in (0, 1):
        ckpt(tmp_path, rank=rank, all_ranks=True).save({"rank": rank}, 4)
    assert ckpt(tmp_path, rank=1, all_ranks=True).load_latest() == (4, {"rank": 1})
    assert ckpt(tmp_path, rank=0, all_ranks=True).load_latest() == (4, {"rank": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0", "rank-1"]


def test_defaults_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILOTHOUSE_CHECKPOINT_DIR", str(tmp_path / "ck"))
    monkeypatch.setenv("PILOTHOUSE_CHECKPOINT_INTERVAL", "2.5")
    monkeypatch.setenv("PILOTHOUSE_CHECKPOINT_KEEP", "7")
    monkeypatch.setenv("RANK", "3")
    c = Checkpointer(handle_signals=False)
    assert (c.directory, c.interval, c.keep, c.rank) == (tmp_path / "ck", 2.5, 7, 3)
    explicit = Checkpointer(tmp_path / "other", interval=1, keep=1, rank=0, handle_signals=False)
    assert (explicit.directory, explicit.interval, explicit.keep, explicit.rank) == (
        tmp_path / "other",
        1.0,
        1,
        0,
    )


def test_defaults_without_environment(tmp_path: Path) -> None:
    c = ckpt(tmp_path)
    assert (c.interval, c.keep, c.rank) == (300.0, 3, 0)


def test_no_folder_anywhere_names_the_variable() -> None:
    with pytest.raises(CheckpointError, match="PILOTHOUSE_CHECKPOINT_DIR"):
        Checkpointer(handle_signals=False)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("PILOTHOUSE_CHECKPOINT_INTERVAL", "soon", "PILOTHOUSE_CHECKPOINT_INTERVAL"),
        ("PILOTHOUSE_CHECKPOINT_INTERVAL", "-1", "non-negative"),
        ("PILOTHOUSE_CHECKPOINT_KEEP", "two", "PILOTHOUSE_CHECKPOINT_KEEP"),
        ("PILOTHOUSE_CHECKPOINT_KEEP", "0", "at least 1"),
    ],
)
def test_bad_environment_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, match: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(CheckpointError, match=match):
        ckpt(tmp_path)


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_step_must_be_a_non_negative_int(tmp_path: Path, step: object) -> None:
    with pytest.raises(CheckpointError, match="step"):
        ckpt(tmp_path).save("x", step)  # type: ignore[arg-type]


def test_due_counts_from_start_and_from_each_save(tmp_path: Path) -> None:
    clock = Clock()
    c = ckpt(tmp_path, interval=10.0, clock=clock)
    assert not c.due()
    clock.now += 9.9
    assert not c.due()
    assert c.due(now=clock.now + 0.1)
    clock.now += 0.1
    assert c.due()
    c.save("s", 1)
    assert not c.due()
    clock.now += 10
    assert c.due()


def test_due_timer_restarts_on_ranks_that_do_not_write(tmp_path: Path) -> None:
    clock = Clock()
    c = ckpt(tmp_path, interval=5.0, rank=2, clock=clock)
    clock.now += 5
    assert c.due()
    c.save("ignored", 1)
    assert not c.due()


def test_sigterm_sets_stop_requested(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path)  # installs the handler: we are on the main thread
    assert not c.stop_requested
    os.kill(os.getpid(), signal.SIGTERM)  # handlers run before the next bytecode
    assert c.stop_requested


def test_opting_out_of_signal_handling_leaves_the_handler_alone(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    c = ckpt(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before
    c.request_stop()
    assert c.stop_requested


def test_exit_preempted_is_status_143(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        ckpt(tmp_path).exit_preempted()
    assert exited.value.code == PREEMPTED_EXIT_CODE == 143
