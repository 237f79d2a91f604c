"""Reading one log file and its rotated copy, for ``?tail=N`` and for following.

The runtime rotates logs in place: ``X.log`` keeps its inode and loses its older part,
``X.log.1`` is replaced atomically by that older part (one backup). ``read_log`` sends
what a request asks for first (the last N lines, read backwards in blocks, or both files
as one stream), ``read_new`` what was written since, found again after a rotation from
the last bytes sent (``LogCursor``). Nothing here knows about HTTP; ``api.logs`` does.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: blocks read backwards from the end of a log file for ``?tail=N``
TAIL_BLOCK = 64 * 1024
#: at most this much of one file is read back for a tail (a file without newlines)
MAX_TAIL_BYTES = 16 * 2**20
#: what a log cursor remembers of the bytes sent last, to find its place after a rotation
SIGNATURE_BYTES = 4096
#: how much of a rotated copy is searched for that place (the end of it)
MAX_RESUME_BYTES = 64 * 2**20


def backup_of(path: Path) -> Path:
    """The rotated copy of a log (``X.log`` -> ``X.log.1``, one backup).

    The runtime rotates in place: ``X.log`` keeps its inode and loses its older part,
    ``X.log.1`` is replaced atomically by that older part, and ``X.log`` may begin in
    the middle of the line ``X.log.1`` ends with (read as one stream, they are whole).
    """
    return path.with_name(path.name + ".1")


@dataclass
class LogCursor:
    """Where following a log goes on from: the offset in ``X.log``, which ``X.log.1`` was
    there, and the last bytes sent (to find the place again after a rotation)."""

    offset: int = 0
    backup: tuple[int, int, int] | None = None
    sent: bytes = b""
    block: int = 4096

    def advance(self, data: bytes) -> None:
        self.sent = (self.sent + data)[-SIGNATURE_BYTES:]


def split_lines(data: bytes) -> list[bytes]:
    """Split on b"\\n" only (a carriage return is part of a line), keeping the ends."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def tail_lines(handle: IO[bytes], end: int, count: int) -> list[bytes]:
    """The last ``count`` lines of ``handle[:end]`` (see ``_tail``)."""
    return _tail(handle, end, count)[0]


def _tail(handle: IO[bytes], end: int, count: int) -> tuple[list[bytes], bool]:
    """The last ``count`` lines of ``handle[:end]``, read backwards in blocks from ``end``
    (never more of the file than those lines and one block, at most ``MAX_TAIL_BYTES``);
    and whether they are all the file holds (the first one starts at its first byte)."""
    if count <= 0 or end <= 0:
        return [], end <= 0
    position = end
    blocks: list[bytes] = []
    newlines = 0
    while position > 0 and end - position < MAX_TAIL_BYTES:
        step = min(TAIL_BLOCK, position)
        position -= step
        handle.seek(position)
        block = handle.read(step)
        blocks.append(block)
        newlines += block.count(b"\n")
        if newlines > count:  # count + 1 newlines: the last `count` lines are complete
            break
    lines = split_lines(b"".join(reversed(blocks)))
    if position > 0:
        lines = lines[1:]  # the first piece may start mid-line
    return lines[-count:], position == 0 and len(lines) <= count


def read_log(
    path: Path, tail: int, prefix: bytes = b""
) -> tuple[list[bytes], Iterator[bytes], LogCursor]:
    """What a log request sends first for one log file and its rotated copy.

    Returns the lines of a tail (``tail >= 0``) or, without tail, a stream of the backup
    then the file (as one stream: a line cut by the rotation is whole again); and the
    cursor following continues from.
    """
    current = _open(path)
    backup = _open(backup_of(path))
    cursor = LogCursor(backup=_identity(backup))
    if current is None:
        if backup is not None:
            backup.close()
        return [], iter(()), cursor
    end = _start_cursor(cursor, current, backup)
    if tail >= 0:
        lines = _tail_of_both(current, backup, end, tail)
        return [prefix + line for line in lines], iter(()), cursor
    return [], _everything(current, backup, end, prefix), cursor


def _start_cursor(cursor: LogCursor, current: IO[bytes], backup: IO[bytes] | None) -> int:
    """Place ``cursor`` at the end of ``current`` (remembering the bytes that end it,
    from ``backup`` too when ``current`` is short); the size of ``current``."""
    info = os.fstat(current.fileno())
    end = cursor.offset = info.st_size
    cursor.block = info.st_blksize or 4096
    cursor.advance(_ending(current, end, SIGNATURE_BYTES))
    if backup is not None and len(cursor.sent) < SIGNATURE_BYTES:
        before = _ending(backup, os.fstat(backup.fileno()).st_size, SIGNATURE_BYTES)
        cursor.sent = (before + cursor.sent)[-SIGNATURE_BYTES:]
    return end


def _tail_of_both(current: IO[bytes], backup: IO[bytes] | None, end: int, tail: int) -> list[bytes]:
    """The last ``tail`` lines of ``current[:end]``, with what it lacks taken from the end
    of ``backup``; closes both."""
    with current:
        lines, whole = _tail(current, end, tail)
    if backup is None:
        return lines
    with backup:
        if whole and tail > 0:
            # one more than missing: its last line may go on at the start of X.log
            size = os.fstat(backup.fileno()).st_size
            earlier = tail_lines(backup, size, tail - len(lines) + 1)
            if earlier and lines and not earlier[-1].endswith(b"\n"):
                lines = [*earlier[:-1], earlier[-1] + lines[0], *lines[1:]]
            else:
                lines = earlier + lines
            lines = lines[-tail:]
    return lines


def _everything(
    current: IO[bytes], backup: IO[bytes] | None, end: int, prefix: bytes
) -> Iterator[bytes]:
    """``backup`` then ``current[:end]`` as one stream, block by block; closes both."""
    with current:
        if backup is None:
            yield from _prefixed(_chunks(current, 0, end), prefix)
            return
        with backup:
            size = os.fstat(backup.fileno()).st_size
            both = itertools.chain(_chunks(backup, 0, size), _chunks(current, 0, end))
            yield from _prefixed(both, prefix)


def read_new(path: Path, cursor: LogCursor) -> bytes:
    """What was written to a followed log since ``cursor`` (which moves on), across
    rotations: the unsent end of ``X.log.1`` first, then ``X.log`` from where it goes on."""
    current = _open(path)
    if current is None:
        return b""
    backup = _open(backup_of(path))
    try:
        backup_identity = _identity(backup)
        size = os.fstat(current.fileno()).st_size
        out = b""
        start = cursor.offset
        if backup_identity != cursor.backup or size < cursor.offset:
            out, start = _resume(current, size, backup, cursor)
        cursor.backup = backup_identity
        if size > start:
            out += b"".join(_chunks(current, start, size))
        cursor.offset = max(size, start)
        cursor.advance(out)
        return out
    finally:
        current.close()
        if backup is not None:
            backup.close()


def _resume(
    current: IO[bytes], size: int, backup: IO[bytes] | None, cursor: LogCursor
) -> tuple[bytes, int]:
    """After a rotation: what of ``X.log.1`` is still unsent, and where in ``X.log`` to go
    on, found from the last bytes sent (the runtime cuts whole blocks off the front of
    ``X.log``; a copy-then-truncate or a rename-style rotation is found the same way)."""
    sent = cursor.sent
    old = b""
    if backup is not None:  # at most the rotation limit (one rotation's worth of log)
        old = _ending(backup, os.fstat(backup.fileno()).st_size, MAX_RESUME_BYTES)
    if not sent:
        return old, 0  # nothing was sent yet: all of it
    if old.endswith(sent):
        return b"", 0  # everything up to the cut was sent: X.log from its start
    cut = _cut_from_front(current, size, cursor)
    if cut is not None:
        return b"", cut
    return _unsent_of_backup(old, backup, sent), 0


def _cut_from_front(current: IO[bytes], size: int, cursor: LogCursor) -> int | None:
    """Where in ``X.log`` to go on when it lost a multiple of the block size from its
    front: what of it we had sent is a prefix of it that ends the signature. None when
    that is not what happened."""
    sent = cursor.sent
    k = cursor.offset % cursor.block
    head = _ending(current, min(size, len(sent)), len(sent))
    while 0 < k <= min(size, len(sent)):
        if head[:k] == sent[-k:]:
            return k
        k += cursor.block
    return None


def _unsent_of_backup(old: bytes, backup: IO[bytes] | None, sent: bytes) -> bytes:
    """What of the rotated copy's end ``old`` was not sent yet."""
    # the rotated copy holds what was sent last, and more after it
    signature = sent[-min(len(sent), 512) :]
    found = old.rfind(signature) if old else -1
    if found >= 0:
        return old[found + len(signature) :]
    # or it begins inside what was sent (a small file renamed or copied whole)
    if backup is not None and os.fstat(backup.fileno()).st_size <= len(old):
        for overlap in range(min(len(old), len(sent)), 0, -1):
            if old[:overlap] == sent[-overlap:]:
                return old[overlap:]
    # nothing sent is in it: more than one rotation since (what came between is lost);
    # all of it is new, and it starts with a whole line
    return old


def _identity(handle: IO[bytes] | None) -> tuple[int, int, int] | None:
    """Inode, size and modification time of an open file (how a rotation is noticed)."""
    if handle is None:
        return None
    info = os.fstat(handle.fileno())
    return info.st_ino, info.st_size, info.st_mtime_ns


def _open(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def _ending(handle: IO[bytes], end: int, size: int) -> bytes:
    start = max(0, end - size)
    handle.seek(start)
    return handle.read(end - start)


def _chunks(handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    handle.seek(start)
    left = end - start
    while left > 0:
        block = handle.read(min(TAIL_BLOCK, left))
        if not block:
            return
        left -= len(block)
        yield block


def _prefixed(chunks: Iterator[bytes], prefix: bytes) -> Iterator[bytes]:
    """Whole lines, each with ``prefix`` (an unfinished last line is sent as it is)."""
    if not prefix:
        yield from chunks
        return
    pending = b""
    for chunk in chunks:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield b"".join(prefix + line for line in split_lines(pending[:cut]))
            pending = pending[cut:]
    if pending:
        yield prefix + pending
