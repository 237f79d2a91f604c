"""The processes' logs: how large one may grow, the rotation loop, and finding them.

Each process writes its own log through its stdout, under the supervisor's log folder
(``<kind>s/<name>/...``); the supervisor rotates one by size (``X.log`` and one backup
``X.log.1``). This module holds the runtime's side of that: the limit (argument, else
``$PILOTHOUSE_LOG_MAX_BYTES``, else 10 MiB), the loop that asks for rotation every few
seconds, and listing or removing an object's logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from pilothouse.runtime.local.supervisor import LOG_MAX_BYTES, Supervisor
from pilothouse.spec.quantity import QuantityError, parse_bytes

log = logging.getLogger("pilothouse.runtime.local")


def log_max_bytes(value: int | None) -> int:
    """The limit given, else ``$PILOTHOUSE_LOG_MAX_BYTES`` (bytes or a quantity such as
    ``10Mi``), else 10 MiB; never under 4 KiB."""
    if value is None:
        raw = os.environ.get("PILOTHOUSE_LOG_MAX_BYTES", "").strip()
        value = LOG_MAX_BYTES
        if raw:
            try:
                value = parse_bytes(raw)
            except QuantityError as exc:
                log.warning("PILOTHOUSE_LOG_MAX_BYTES=%r ignored: %s", raw, exc)
    return max(4096, int(value))


async def rotate_logs(supervisor: Supervisor, every: float) -> None:
    """Every ``every`` seconds, rotate the logs that grew over the limit."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(supervisor.rotate_logs)
        except Exception:  # never stop rotating because one pass failed
            log.exception("log rotation failed; trying again later")


def log_files(log_dir: Path, kind: str, name: str) -> list[Path]:
    """An object's logs (not their backups), oldest first."""
    folder = log_dir / f"{kind.lower()}s" / name
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)


def remove_logs(log_dir: Path, kind: str, name: str) -> None:
    folder = log_dir / f"{kind.lower()}s" / name
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
