"""A model server started ahead of need, so that a replica replacing a dead one starts in
milliseconds instead of seconds.

    python -m pilothouse.serving.standby --control FD --model NAME:VERSION --registry URI
        [--cache DIR] [--threads N]
    python -m pilothouse.serving.standby --control FD --model-dir DIR [--threads N]

Most of a replica's start is importing (the server, numpy, scikit-learn or another
framework: about 1.5 s of CPU) and unpickling its model. A standby does that work while
nothing waits for it: it imports the server and the command line, loads the model once
in a background thread (checksums verified, as a replica does) and drops it, then waits
on ``--control``, a Unix socket shared with the control plane (SOCK_SEQPACKET). Given the
model as a replica is (``--model NAME:VERSION --registry URI [--cache DIR]``), the
warm-up fetches it as a replica would (same cache, same per-version lock), so the replica
it becomes finds its version in the cache; it needs the replica's registry environment
(AWS_*, $PILOTHOUSE_REGISTRY_OPTIONS, $PILOTHOUSE_HOME for the default cache) for that.

The control plane hands it a replica to become with one message: JSON
``{"args": [...]}`` (the arguments of ``pilothouse serve``, as a replica started cold
gets them) and two file descriptors (SCM_RIGHTS): the replica's listening socket and its
log file (opened for appending). The standby then

* writes its output to that log from now on (stdout and stderr),
* takes the environment in the message (``env``) as its own, exactly the replica's,
* shows the command line a replica started cold shows (``ps``, ``pgrep -f``),
* and runs ``pilothouse serve ARGS --fd N`` in this very process (``runpy``, as
  ``python -m pilothouse`` does): the model loads again, fast now that everything it
  needs is imported, and the process is a replica like any other (same signals, same
  exit codes, same draining).

If the control socket closes before a message came (the control plane ended), the
standby exits. The warm-up load never blocks the assignment: the replica starts at once
(imports still in progress are finished, not repeated).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import os
import runpy
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pilothouse.registry.local import read_version

if TYPE_CHECKING:
    from pilothouse.serving.server import ModelSource

#: modules a replica imports before it can answer (the warm-up imports them first)
_SERVER_MODULES = ("pilothouse.serving.server", "pilothouse.cli.main")
MAX_MESSAGE = 1 << 20


def warm_up(model: Path | ModelSource) -> None:
    """Import what serving this model needs, by loading it once; keep nothing of it. A
    registry version is fetched into the cache first, as a replica fetches it."""
    for module in _SERVER_MODULES:
        importlib.import_module(module)
    from pilothouse.serving.runtimes import load_predictor
    from pilothouse.serving.server import obtain

    if isinstance(model, Path):
        predictor = load_predictor(read_version(model))
    else:
        _version, predictor, _fetch, _load = obtain(model)
    del predictor
    gc.collect()


def _source(ref: str, registry: str, cache: Path) -> ModelSource:
    from pilothouse.serving.server import ModelSource

    return ModelSource.parse(ref, registry, cache)


def _warm_up_quietly(opts: argparse.Namespace) -> None:
    try:
        if opts.model_dir is not None:
            warm_up(opts.model_dir)
        else:
            warm_up(_source(opts.model, opts.registry, opts.cache))
    except Exception as exc:  # the replica will report it when it loads for real
        print(f"standby: warm-up failed: {type(exc).__name__}: {exc}", flush=True)


def set_command_line(argv: list[str]) -> bool:
    """Show ``argv`` as this process's command line (``/proc/self/cmdline``, what ``ps``
    and ``pgrep -f`` read) by writing it over the original arguments, as setproctitle
    does; cut to the room they had. False if this platform does not allow it."""
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, IndexError, ValueError):
        return False
    room = end - start
    if start <= 0 or room <= 1:
        return False
    data = b"\0".join(a.encode(errors="replace") for a in argv)[: room - 1]
    ctypes.memmove(start, data.ljust(room, b"\0"), room)
    return True


def _receive(control: socket.socket) -> tuple[dict[str, object], list[int]] | None:
    """The assignment (message, [listening socket, log]), or None if the control plane
    closed the socket."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 2)
    except OSError:
        return None
    if not data:
        return None
    message = json.loads(data)
    if not isinstance(message, dict) or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise SystemExit("standby: malformed assignment")
    return message, fds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pilothouse.serving.standby")
    parser.add_argument("--control", type=int, required=True)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", type=Path, default=None)
    model.add_argument("--model", metavar="NAME:VERSION", default=None)
    parser.add_argument("--registry", metavar="URI", default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--room", default="", help="room for the replica's command line")
    opts = parser.parse_args(argv)
    if opts.model is not None and (not opts.registry or opts.cache is None):
        parser.error("--model needs --registry and --cache")
    # as `pilothouse serve` does before loading: OpenMP/BLAS read these when they load
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(opts.threads))
    control = socket.socket(fileno=opts.control)
    threading.Thread(
        target=_warm_up_quietly, args=(opts,), name="standby-warm-up", daemon=True
    ).start()

    received = _receive(control)
    control.close()
    if received is None:
        return  # the control plane ended before it needed us
    message, (listener, log) = received
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    env = message.get("env")
    if isinstance(env, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    given = message.get("args")
    args = [str(a) for a in given] if isinstance(given, list) else []
    args += ["--fd", str(listener)]
    with contextlib.suppress(Exception):
        set_command_line([sys.executable, "-m", "pilothouse", *args])
    sys.argv = [sys.argv[0], *args]
    runpy.run_module("pilothouse", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
