"""Runs the reconcile loops: a work queue of keys, each with its next due time.

Changes (from the API, or from the backends: a replica turned ready, a worker ended)
wake a key at once; every reconcile returns when to look again; a periodic resync
revisits everything (level-based safety net). Reconciles of different objects run
concurrently, one at a time per object (a key woken while it runs is run again right
after), so one slow object never holds up the others. One failing reconcile is logged,
recorded as an event and retried later; it never stops the loop. Every pass is timed;
a slow one (nothing in a reconcile should wait on the world) is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pilothouse.controllers import modeldeployment, queue, trainingjob
from pilothouse.controllers.base import Context, Result, TerminalError

log = logging.getLogger("pilothouse.controllers")

Reconciler = Callable[[Context, str], Awaitable[Result]]
RECONCILERS: dict[str, Reconciler] = {
    "ModelDeployment": modeldeployment.reconcile,
    "TrainingJob": trainingjob.reconcile,
    "Queue": queue.reconcile,
}
#: a failing reconcile is retried after RETRY_AFTER_ERROR, doubling per failure of that
#: key up to RETRY_MAX (client-go's per-item exponential back-off); a pass that succeeds
#: resets it
RETRY_AFTER_ERROR = 0.5
RETRY_MAX = 60.0
RESYNC_EVERY = 10.0
#: reconciles running at once (each holds one key)
WORKERS = 16
#: a reconcile slower than this is logged (nothing in one should wait on the world)
SLOW_PASS = 2.0

Key = tuple[str, str]


class Manager:
    def __init__(
        self, ctx: Context, workers: int = WORKERS, kinds: tuple[str, ...] | None = None
    ) -> None:
        self.ctx = ctx
        ctx.trigger = self.trigger
        #: the kinds this manager reconciles (the operator's first part: ModelDeployments)
        self.reconcilers = {k: RECONCILERS[k] for k in (kinds or tuple(RECONCILERS))}
        self._failures: dict[Key, int] = {}
        self._due: dict[Key, float] = {}
        self._running: dict[Key, asyncio.Task[None]] = {}
        #: keys woken while their reconcile ran: run again right after
        self._again: set[Key] = set()
        self._slots = asyncio.Semaphore(workers)
        self._wake = asyncio.Event()
        self._stopping = False

    def trigger(self, kind: str, name: str) -> None:
        key = (kind, name)
        if key in self._running:
            self._again.add(key)
        self._due[key] = 0.0
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _reconcile(self, kind: str, name: str) -> None:
        started = time.perf_counter()
        try:
            result = await self.reconcilers[kind](self.ctx, name)
        except TerminalError as exc:
            log.error("%s/%s: %s", kind, name, exc)
            self._record(kind, name, "ReconcileFailed", str(exc))
            return
        except Exception as exc:
            failures = self._failures.get((kind, name), 0)
            self._failures[(kind, name)] = failures + 1
            delay = min(RETRY_AFTER_ERROR * 2**failures, RETRY_MAX)
            log.exception("%s/%s: reconcile failed; retrying in %.1fs", kind, name, delay)
            self._record(kind, name, "ReconcileError", f"{type(exc).__name__}: {exc}")
            self._schedule((kind, name), self.ctx.clock() + delay)
            return
        finally:
            took = time.perf_counter() - started
            if took > SLOW_PASS:
                log.warning("%s/%s: a reconcile took %.2fs", kind, name, took)
        self._failures.pop((kind, name), None)
        if result.requeue_after is not None:
            self._schedule((kind, name), self.ctx.clock() + result.requeue_after)

    def _schedule(self, key: Key, due: float) -> None:
        current = self._due.get(key)
        self._due[key] = min(due, current) if current is not None else due

    async def _run(self, key: Key) -> None:
        try:
            async with self._slots:
                await self._reconcile(*key)
        finally:
            self._running.pop(key, None)
            if key in self._again:
                self._again.discard(key)
                self._due[key] = 0.0
            self._wake.set()

    def _record(self, kind: str, name: str, reason: str, message: str) -> None:
        """Best effort: failing to record an event must not stop the loop."""
        try:
            self.ctx.event(kind, name, "Warning", reason, message)
        except Exception:
            log.exception("%s/%s: could not record event %s", kind, name, reason)

    async def run(self) -> None:
        """Run until stopped; an unexpected error in one pass is logged, and the loop goes on."""
        try:
            while not self._stopping:
                try:
                    await self._loop()
                except Exception:
                    log.exception("controller loop failed; restarting it in 1s")
                    await asyncio.sleep(1.0)
        finally:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _loop(self) -> None:
        next_resync = 0.0
        while not self._stopping:
            now = self.ctx.clock()
            if now >= next_resync:
                for kind in self.reconcilers:
                    for obj in self.ctx.state.list(kind):
                        self._due.setdefault((kind, obj.name), now)
                next_resync = now + RESYNC_EVERY
            self._wake.clear()
            for key in [k for k, t in self._due.items() if t <= now and k not in self._running]:
                self._due.pop(key, None)
                if key[0] in self.reconcilers:
                    self._running[key] = asyncio.create_task(
                        self._run(key), name=f"reconcile-{key[0]}/{key[1]}"
                    )
            waiting = [t for k, t in self._due.items() if k not in self._running]
            soonest = min([*waiting, next_resync])
            timeout = max(0.05, min(soonest - self.ctx.clock(), 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
