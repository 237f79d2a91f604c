"""Noticing that an item's process ended, and waiting for one to be gone.

The runtime learns of the end of every process at once -- a pidfd in the event loop, not a
poll -- so a replica leaves the router and its owner is told without delay. This module is
that mechanism (and its fallback where pidfds are missing); what an end *means* (router,
messages, ``on_change``) stays with ``LocalRuntime._exited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.supervisor import Child, is_same_process


def watch_exit(item: Item, exited: Callable[[Item], None]) -> None:
    """Call ``exited(item)`` as soon as the item's process ended: its pidfd becomes
    readable then. Without pidfds (not Linux >= 5.3) a task polls it every 0.1 s instead."""
    child = item.child
    if child is None or item.exit_fd is not None:
        return
    try:
        fd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        exited(item)  # gone (and reaped) already
        return
    except (AttributeError, OSError):
        item.tasks.append(asyncio.create_task(_poll_exit(item, exited), name=f"exit-{item.id}"))
        return
    # the pidfd names our process only if it had not ended (and been reaped, its PID
    # free for another) before it was opened
    ours = (
        child.poll() is None if not child.adopted else is_same_process(child.pid, child.start_ticks)
    )
    if not ours:
        os.close(fd)
        exited(item)
        return
    item.exit_fd = fd
    asyncio.get_running_loop().add_reader(fd, exited, item)


def unwatch_exit(item: Item) -> None:
    """Stop watching the item's process (closes its pidfd)."""
    fd, item.exit_fd = item.exit_fd, None
    if fd is not None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


async def _poll_exit(item: Item, exited: Callable[[Item], None]) -> None:
    child = item.child
    assert child is not None
    while child.poll() is None:  # noqa: ASYNC110 - nothing to wait on without a pidfd
        await asyncio.sleep(0.1)
    exited(item)


async def gone(child: Child, within: float) -> bool:
    """Whether ``child`` ended within ``within`` seconds (polled every 50 ms)."""
    for _ in range(max(1, int(within / 0.05))):
        if child.poll() is not None:
            return True
        await asyncio.sleep(0.05)
    return child.poll() is not None
