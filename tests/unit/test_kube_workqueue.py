"""The Kubernetes backend's work queue keeps client-go's promises: a key waits in the queue
at most once, is never handed to two workers at once, comes back after `done` when it was
added while being processed, and a failing key is backed off exponentially until forgotten."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pilothouse.runtime.kube.informer import WorkQueue, WorkQueueShutDown


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 10))


def test_a_key_waits_in_the_queue_at_most_once() -> None:
    async def body() -> None:
        queue = WorkQueue()
        for key in ("a", "b", "a", "a", "c", "b"):
            queue.add(key)
        assert len(queue) == 3
        assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]
        assert len(queue) == 0

    run(body)


def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    async def body() -> None:
        queue = WorkQueue()
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")  # changed while a worker has it
        queue.add("a")
        assert len(queue) == 0  # not queued: the worker has it
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0.05)
        assert not second.done()
        queue.done("a")  # processed: queued once more, since it was added meanwhile
        assert await asyncio.wait_for(second, 1) == "a"
        queue.done("a")
        assert len(queue) == 0
        queue.add("a")  # not processed any more: queued at once
        assert len(queue) == 1

    run(body)


def test_done_without_a_new_add_does_not_queue_the_key_again() -> None:
    async def body() -> None:
        queue = WorkQueue()
        queue.add("a")
        assert await queue.get() == "a"
        queue.done("a")
        assert len(queue) == 0

    run(body)


def test_waiting_workers_each_get_a_different_key() -> None:
    async def body() -> None:
        queue = WorkQueue()
        workers = [asyncio.create_task(queue.get()) for _ in range(3)]
        await asyncio.sleep(0)
        for key in ("a", "b", "c"):
            queue.add(key)
        assert sorted(await asyncio.gather(*workers)) == ["a", "b", "c"]

    run(body)


def test_rate_limited_adds_back_off_exponentially_until_forgotten() -> None:
    async def body() -> None:
        queue = WorkQueue(base_delay=0.02, max_delay=0.1)
        loop = asyncio.get_running_loop()
        waited = []
        for _ in range(4):
            started = loop.time()
            queue.add_rate_limited("a")
            assert len(queue) == 0  # not before its delay
            assert await queue.get() == "a"
            waited.append(loop.time() - started)
            queue.done("a")
        assert queue.num_requeues("a") == 4
        for got, expected in zip(waited, (0.02, 0.04, 0.08, 0.1), strict=True):
            assert got >= expected * 0.9, waited  # capped at max_delay
        assert waited[3] < 0.16 + 0.05, waited  # 0.1, not 0.16
        queue.forget("a")
        assert queue.num_requeues("a") == 0
        assert queue.when("a") == pytest.approx(0.02)  # starts over

    run(body)


def test_add_after_keeps_the_earliest_and_an_add_makes_it_due_at_once() -> None:
    async def body() -> None:
        queue = WorkQueue()
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.05)  # earlier wins
        queue.add_after("a", 2.0)  # later ignored
        assert await queue.get() == "a"
        assert 0.04 <= loop.time() - started < 1.0
        queue.done("a")
        queue.add_after("b", 5.0)
        queue.add("b")
        assert await asyncio.wait_for(queue.get(), 1) == "b"

    run(body)


def test_shutdown_drains_what_is_queued_then_ends_the_workers() -> None:
    async def body() -> None:
        queue = WorkQueue()
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.shutdown()
        with pytest.raises(WorkQueueShutDown):
            await asyncio.wait_for(waiting, 1)

        queue = WorkQueue()
        queue.add("a")
        queue.add_after("b", 0.01)
        queue.shutdown()
        queue.add("c")  # ignored
        assert await queue.get() == "a"
        with pytest.raises(WorkQueueShutDown):
            await asyncio.wait_for(queue.get(), 1)
        assert queue.shutting_down

    run(body)
