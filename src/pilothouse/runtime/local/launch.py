"""Run a training worker's command and record how it ended, for whoever watches later.

Started as a script (``python launch.py STATE_FILE -- argv...``), not as a module, so it
imports nothing of pilothouse and starts in milliseconds. It writes ``STATE_FILE`` with
the command's PID when it starts and its exit code when it ends (``128 + N`` for a signal,
as a shell reports it), each time atomically. A control plane that was restarted while the
worker ran (it is then no longer the worker's parent and cannot ``wait`` for it) reads the
real exit code from that file.

Signals: the supervisor signals the whole process group, so the command receives SIGTERM
itself; this launcher only keeps waiting (and records the code) instead of dying first.
The handler is a function, not SIG_IGN, so the command starts with default dispositions.
The supervisor starts this launcher with those signals blocked: one that comes while it is
still starting waits until its handlers are in place (instead of killing it and leaving
the command unwatched), and one that came before the command existed is passed on to the
command once it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType


def _write(path: Path, data: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: launch.py STATE_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    state = Path(argv[0])
    command = argv[2:]

    #: signals that came before the command ran (it missed them: passed on once it runs)
    early: list[int] = []
    started = False

    def keep_waiting(signum: int, _frame: FrameType | None) -> None:
        """The group's signal reached the command as well: wait for how it ends."""
        if not started:
            early.append(signum)

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in signals:
        signal.signal(sig, keep_waiting)
    # held (blocked) by the supervisor until now: any that came are delivered here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    # from here on a group signal reaches the command itself (once it exists): passing it
    # on as well would signal it twice (torchrun, for one, aborts on a second SIGTERM)
    started = True
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"--- pilothouse: cannot start {command[0]!r}: {exc.strerror or exc}", flush=True)
        _write(state, {"pid": 0, "exitCode": 127})
        return 127
    _write(state, {"pid": child.pid})
    for signum in dict.fromkeys(early):
        child.send_signal(signum)

    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
            continue
    exit_code = 128 - code if code < 0 else code
    _write(state, {"pid": child.pid, "exitCode": exit_code})
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
