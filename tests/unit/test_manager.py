"""The control loop: reconciles of different objects run side by side, one at a time per
object, and a key woken while it runs is run again after (real asyncio, in-memory ports)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pilothouse.controllers import manager as manager_module
from pilothouse.controllers.base import Context, Result
from pilothouse.controllers.manager import Manager
from pilothouse.runtime.memory import MemoryDataPlane, MemoryState, MemoryWorkload

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _context() -> Context:
    clock = time.time
    return Context(
        state=MemoryState(clock),
        workload=MemoryWorkload(clock),
        dataplane=MemoryDataPlane(clock),
        clock=clock,
    )


async def _run_until(manager: Manager, done: asyncio.Event) -> None:
    loop = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        manager.stop()
        await asyncio.wait_for(loop, 10)


async def test_a_slow_object_does_not_hold_up_another(monkeypatch: pytest.MonkeyPatch) -> None:
    release_slow = asyncio.Event()
    fast_done = asyncio.Event()
    finished: list[str] = []

    async def reconcile(_ctx: Context, name: str) -> Result:
        if name == "slow":
            await release_slow.wait()
        finished.append(name)
        if name == "fast":
            fast_done.set()
        return Result()

    monkeypatch.setitem(manager_module.RECONCILERS, "Slow", reconcile)
    manager = Manager(_context())
    manager.trigger("Slow", "slow")
    manager.trigger("Slow", "fast")
    await _run_until(manager, fast_done)
    # the fast one finished while the slow one still waited
    assert finished == ["fast"]
    release_slow.set()


async def test_one_reconcile_at_a_time_per_object_and_a_wake_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = 0
    most = 0
    passes: list[int] = []
    second_pass = asyncio.Event()
    first_started = asyncio.Event()
    release_first = asyncio.Event()

    async def reconcile(_ctx: Context, _name: str) -> Result:
        nonlocal running, most
        running += 1
        most = max(most, running)
        passes.append(len(passes) + 1)
        if len(passes) == 1:
            first_started.set()
            await release_first.wait()
        running -= 1
        if len(passes) == 2:
            second_pass.set()
        return Result()

    monkeypatch.setitem(manager_module.RECONCILERS, "Obj", reconcile)
    manager = Manager(_context())
    manager.trigger("Obj", "a")

    async def wake_while_running() -> None:
        await first_started.wait()
        manager.trigger("Obj", "a")  # a change while the first pass runs
        manager.trigger("Obj", "a")
        release_first.set()

    waker = asyncio.create_task(wake_while_running())
    await _run_until(manager, second_pass)
    await waker
    assert most == 1
    assert passes[:2] == [1, 2]
