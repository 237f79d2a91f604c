"""The log endpoint: ``GET .../{plural}/{name}/log[?tail=N][&follow=true]``.

An object may have several log files (one per replica or worker); they are sent one
after another, each line prefixed with ``[file-stem]`` when there are several. With
``follow`` the response stays open and sends new lines every quarter second until the
object is gone (or a day has passed). Reading the files, rotation included, is
``api.logtail``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pilothouse.api.errors import ApiError
from pilothouse.api.logtail import LogCursor, read_log, read_new, split_lines
from pilothouse.api.objects import kind_for
from pilothouse.store.sqlite import NotFound, Store

#: how often a followed log is checked for new lines, in seconds
FOLLOW_INTERVAL = 0.25
#: a followed log response ends after this long, in seconds
MAX_FOLLOW = 24 * 3600

#: the log files of an object: (kind, name) -> paths
LogFiles = Callable[[str, str], list[Path]]


@dataclass(frozen=True)
class LogEndpoints:
    store: Store
    log_files: LogFiles

    async def logs(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        self.store.get(cls.KIND, name)
        follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
        tail = _tail_param(request)
        return StreamingResponse(
            stream_logs(self.store, cls.KIND, name, self.log_files, follow, tail),
            media_type="text/plain; charset=utf-8",
        )


def _tail_param(request: Request) -> int:
    """``?tail=N``: the last N lines of each file; -1 (the default) for all of them."""
    tail_param = request.query_params.get("tail", "-1")
    try:
        return int(tail_param)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"tail: expected an integer, got {tail_param!r}") from exc


async def stream_logs(
    store: Store, kind: str, name: str, log_files: LogFiles, follow: bool, tail: int
) -> AsyncIterator[bytes]:
    """Every log file of the object (prefixed when several), then new lines while following.

    With ``tail`` >= 0 only the end of each file is read (backwards, in blocks), taking
    what the current file lacks from its rotated copy ``X.log.1``; without it the rotated
    copy is sent, then the current file, block by block.
    """
    cursors: dict[Path, LogCursor] = {}
    for chunk in _first(log_files(kind, name), tail, cursors):
        yield chunk
    if not follow:
        return
    async for chunk in _follow(store, kind, name, log_files, cursors):
        yield chunk


def _first(files: list[Path], tail: int, cursors: dict[Path, LogCursor]) -> Iterator[bytes]:
    """What is sent first of each file; the cursor following goes on from into ``cursors``."""
    prefix = len(files) > 1
    for path in files:
        lines, stream, cursors[path] = read_log(
            path, tail, f"[{path.stem}] ".encode() if prefix else b""
        )
        if lines:
            yield b"".join(lines)
        yield from stream


async def _follow(
    store: Store, kind: str, name: str, log_files: LogFiles, cursors: dict[Path, LogCursor]
) -> AsyncIterator[bytes]:
    """New lines of every log file of the object (files that appear included), until the
    object is gone or ``MAX_FOLLOW`` has passed."""
    deadline = time.monotonic() + MAX_FOLLOW
    while time.monotonic() < deadline:
        await asyncio.sleep(FOLLOW_INTERVAL)
        try:
            store.get(kind, name)
        except NotFound:
            return
        for path in log_files(kind, name):
            cursor = cursors.setdefault(path, LogCursor())
            new = read_new(path, cursor)
            if new:
                several = len(cursors) > 1
                mark = f"[{path.stem}] ".encode() if several else b""
                yield b"".join(mark + line for line in split_lines(new))
