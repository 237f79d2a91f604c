"""Checkpoints for training code that pilothouse may stop and restart at any time.

The platform restarts a failed or preempted worker gang and expects it to resume
from its newest good checkpoint, so that lost work is bounded by the checkpoint
interval. It tells the workers where and how often through the environment:

=============================== ==================================================
``PILOTHOUSE_CHECKPOINT_DIR``      a folder that survives restarts, shared by the gang
``PILOTHOUSE_CHECKPOINT_INTERVAL`` seconds between periodic saves (float)
``PILOTHOUSE_CHECKPOINT_KEEP``     how many complete checkpoints to keep (int)
``RANK``                           this worker's rank in the gang (0 writes)
=============================== ==================================================

When it preempts or drains a job it sends SIGTERM and waits a grace period before
SIGKILL. The contract: on SIGTERM, :attr:`Checkpointer.stop_requested` turns true;
the loop saves at its next step boundary and calls :meth:`Checkpointer.exit_preempted`
(exit status 143, "terminated", which the platform does not count as a failure of
the code)::

    from pilothouse.sdk import Checkpointer

    ckpt = Checkpointer()                          # env defaults; handles SIGTERM
    resumed = ckpt.load_latest()                   # (step, state) or None
    step, state = resumed if resumed else (0, init_state())
    while step < total_steps:
        state = train_one_step(state)
        step += 1
        if ckpt.due() or ckpt.stop_requested:
            ckpt.save(state, step)
        if ckpt.stop_requested:
            ckpt.exit_preempted()                  # SystemExit(143)

Why it is safe to be killed at any instant: a checkpoint is written into a
hidden temporary folder beside the others, its payload and manifest (with the
payload's sha256) are fsync'd, and only then is the folder renamed to
``step-<12-digit step>`` (and the parent folder fsync'd). The rename is the
commit: a crash before it leaves a ``.tmp-*`` folder that loading ignores and the
next save removes. :meth:`Checkpointer.load_latest` also re-hashes the payload, so
a checkpoint damaged afterwards (a torn disk write, a truncated copy) is skipped,
with a line on stderr, in favour of the next older one.

The state is **pickled**: anything picklable (dicts of numpy arrays, a
``numpy.random.Generator``'s ``bit_generator.state``, Python ints, ...) works, and
loading a checkpoint can run arbitrary code, exactly like ``pickle.load``. Load
only checkpoints your own job wrote (trusted data only). numpy arrays come back
with a new dtype object rather than numpy's own, and a few numpy paths (``ufunc.at``)
are several times slower on those: ``array.view(array.dtype.type)`` after loading
fixes that without a copy (examples/recommendation/train.py does it).

This module imports only the standard library, so that ``import pilothouse.sdk``
stays cheap inside training processes; nothing in it imports the rest of
pilothouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

ENV_DIR = "PILOTHOUSE_CHECKPOINT_DIR"
ENV_INTERVAL = "PILOTHOUSE_CHECKPOINT_INTERVAL"
ENV_KEEP = "PILOTHOUSE_CHECKPOINT_KEEP"
ENV_RANK = "RANK"

#: Defaults when neither an argument nor the environment says (as the TrainingJob spec).
DEFAULT_INTERVAL = 300.0
DEFAULT_KEEP = 3
#: Exit status of a worker that saved and stopped because it was asked to (128 + SIGTERM).
PREEMPTED_EXIT_CODE = 143

FORMAT = "pilothouse-checkpoint/1"
MANIFEST = "manifest.json"
PAYLOAD = "state.pkl"
STEP_DIGITS = 12
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SCRATCH_PREFIXES = (".tmp-", ".old-")


class CheckpointError(Exception):
    """The checkpointer is misconfigured (no folder, a bad interval or keep, a bad step)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A binary file wrapper that hashes and counts what pickle writes through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)  # bytes, or a PickleBuffer for large frames (protocol 5)
        self.sha256.update(view)
        self.size += view.nbytes
        return self._handle.write(view)


def _warn(message: str) -> None:
    print(f"pilothouse checkpoint: {message}", file=sys.stderr, flush=True)


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw.removesuffix("s"))
    except ValueError:
        raise CheckpointError(f"{name}={raw!r}: expected a number of seconds") from None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise CheckpointError(f"{name}={raw!r}: expected an integer") from None


class Checkpointer:
    """Save and restore training state atomically in a folder that outlives the process.

    Every argument left as None comes from the environment (see the module
    docstring), then from the defaults: ``interval`` 300 s, ``keep`` 3, ``rank`` 0.
    There is no default folder: without ``directory`` and without
    ``PILOTHOUSE_CHECKPOINT_DIR`` the constructor raises :class:`CheckpointError`.

    By default only rank 0 writes (the gang shares the folder and the state is the
    same on every rank); :meth:`save` on the other ranks does nothing, and every
    rank's :meth:`load_latest` reads rank 0's checkpoints. With ``all_ranks=True``
    each rank keeps its own checkpoints in ``<directory>/rank-<rank>`` (for state
    that differs per rank) and loads its own.

    ``handle_signals=True`` installs the SIGTERM handler that sets
    :attr:`stop_requested` (only possible from the main thread; elsewhere call
    :meth:`install_signal_handlers` from the main thread yourself). ``clock`` is the
    monotonic clock :meth:`due` reads when not given ``now``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        interval: float | None = None,
        keep: int | None = None,
        *,
        rank: int | None = None,
        all_ranks: bool = False,
        handle_signals: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if directory is None:
            directory = os.environ.get(ENV_DIR) or None
        if directory is None:
            raise CheckpointError(
                f"no checkpoint folder: pass Checkpointer(directory=...) or set {ENV_DIR} "
                "(pilothouse sets it for TrainingJobs with a checkpoint policy)"
            )
        interval = _env_float(ENV_INTERVAL) if interval is None else interval
        interval = DEFAULT_INTERVAL if interval is None else float(interval)
        if not interval >= 0:  # also refuses NaN
            raise CheckpointError(f"interval must be a non-negative number of seconds: {interval}")
        keep = _env_int(ENV_KEEP) if keep is None else keep
        keep = DEFAULT_KEEP if keep is None else keep
        if keep < 1:
            raise CheckpointError(f"keep must be at least 1: {keep}")
        rank = _env_int(ENV_RANK) if rank is None else rank
        self.rank: int = 0 if rank is None else rank
        self.all_ranks = all_ranks
        base = Path(directory)
        self.directory: Path = base / f"rank-{self.rank}" if all_ranks else base
        self.interval: float = interval
        self.keep: int = keep
        self._clock = clock
        self._last_save = clock()
        self._stop = threading.Event()
        if handle_signals and threading.current_thread() is threading.main_thread():
            self.install_signal_handlers()

    # -- stopping ----------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM arrived (or :meth:`request_stop` was called)."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the loop to save and stop, as SIGTERM does (e.g. from a watchdog thread)."""
        self._stop.set()

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """Make each of ``signals`` set :attr:`stop_requested` instead of killing the process.

        Must be called from the main thread (a Python rule for signal handlers).
        """

        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        for signum in signals:
            signal.signal(signum, handler)

    def exit_preempted(self) -> NoReturn:
        """Leave with status 143 after the final save: stopped on request, not failed."""
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(PREEMPTED_EXIT_CODE)

    # -- saving --------------------------------------------------------------------------

    @property
    def writes(self) -> bool:
        """Whether :meth:`save` writes on this rank."""
        return self.all_ranks or self.rank == 0

    def due(self, now: float | None = None) -> bool:
        """True when ``interval`` seconds (monotonic) passed since the last save (or start)."""
        current = self._clock() if now is None else now
        return current - self._last_save >= self.interval

    def save(self, state: Any, step: int) -> Path | None:
        """Atomically write ``state`` as the checkpoint of ``step``; prune to ``keep``.

        Returns the checkpoint's folder, or None on a rank that does not write
        (which still restarts its :meth:`due` timer, so all ranks agree on when
        the next save is due). Saving a step that exists replaces it.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
        if not self.writes:
            self._last_save = self._clock()
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:0{STEP_DIGITS}d}"
        token = f"{os.getpid()}-{os.urandom(4).hex()}"
        scratch = self.directory / f".tmp-{name}-{token}"
        scratch.mkdir()
        try:
            with (scratch / PAYLOAD).open("wb") as handle:
                writer = _HashingWriter(handle)
                pickle.dump(state, writer, protocol=pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            manifest = {
                "format": FORMAT,
                "step": step,
                "payload": PAYLOAD,
                "sha256": writer.sha256.hexdigest(),
                "bytes": writer.size,
                "rank": self.rank,
                "attempt": os.environ.get("PILOTHOUSE_ATTEMPT"),
                "saved_at": time.time(),
            }
            with (scratch / MANIFEST).open("w", encoding="utf-8") as text:
                json.dump(manifest, text, indent=2)
                text.flush()
                os.fsync(text.fileno())
            _fsync_dir(scratch)
            final = self.directory / name
            replaced = None
            if final.exists():
                replaced = self.directory / f".old-{name}-{token}"
                os.rename(final, replaced)
            os.rename(scratch, final)  # the commit point
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        self._last_save = self._clock()
        self._prune()
        return final

    def _prune(self) -> None:
        """Keep the ``keep`` newest checkpoints; remove scratch left by crashed saves."""
        for entry in self.directory.iterdir():
            if entry.name.startswith(_SCRATCH_PREFIXES):
                shutil.rmtree(entry, ignore_errors=True)
        for _, old in self._checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # -- loading -------------------------------------------------------------------------

    def _checkpoints(self) -> list[tuple[int, Path]]:
        """Committed checkpoint folders, oldest first (not yet verified)."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first (not verified)."""
        return [step for step, _ in self._checkpoints()]

    def load_latest(self) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest complete, verified checkpoint, or None.

        Checkpoints that are incomplete, fail their sha256 or do not unpickle are
        skipped (each with a line on stderr).
        """
        for step, folder in reversed(self._checkpoints()):
            try:
                return step, self._read(step, folder)
            except _Unusable as exc:
                _warn(f"skipping {folder.name}: {exc}")
        return None

    def _read(self, step: int, folder: Path) -> Any:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _Unusable(f"no {MANIFEST} (incomplete)") from None
        except (OSError, ValueError) as exc:
            raise _Unusable(f"unreadable {MANIFEST}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _Unusable(f"{MANIFEST} is not a {FORMAT} manifest")
        if manifest.get("step") != step:
            raise _Unusable(f"{MANIFEST} says step {manifest.get('step')!r}")
        try:
            payload = (folder / PAYLOAD).read_bytes()
        except OSError as exc:
            raise _Unusable(f"cannot read {PAYLOAD}: {exc}") from None
        if len(payload) != manifest.get("bytes"):
            raise _Unusable(
                f"{PAYLOAD} has {len(payload)} bytes, the manifest says {manifest.get('bytes')}"
            )
        if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
            raise _Unusable(f"{PAYLOAD} does not match its sha256 (corrupt)")
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise _Unusable(f"{PAYLOAD} does not unpickle: {type(exc).__name__}: {exc}") from None


class _Unusable(Exception):
    pass
