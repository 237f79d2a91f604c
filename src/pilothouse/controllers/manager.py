"""Runs the reconcile loops: a work queue of keys, each with its next due time.

Changes from the API wake a key at once; every reconcile returns when to look
again; a periodic resync revisits everything (level-based safety net). One
failing reconcile is logged, recorded as an event and retried later; it never
stops the loop. Every pass is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pilothouse.controllers import modeldeployment, queue, scheduler, trainingjob
from pilothouse.controllers.base import Context, Result, TerminalError

log = logging.getLogger("pilothouse.controllers")

Reconciler = Callable[[Context, str], Awaitable[Result]]
RECONCILERS: dict[str, Reconciler] = {
    "ModelDeployment": modeldeployment.reconcile,
    "TrainingJob": trainingjob.reconcile,
    "Queue": queue.reconcile,
    scheduler.KIND: scheduler.reconcile,
}
#: keys that are not stored objects but are always reconciled
SINGLETONS = ((scheduler.KIND, scheduler.KEY),)
RETRY_AFTER_ERROR = 5.0
RESYNC_EVERY = 10.0


class Manager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.trigger = self.trigger
        self._due: dict[tuple[str, str], float] = {key: 0.0 for key in SINGLETONS}
        self._wake = asyncio.Event()
        self._stopping = False
        self.last_pass_seconds: dict[str, float] = {}

    def trigger(self, kind: str, name: str) -> None:
        self._due[(kind, name)] = 0.0
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _reconcile(self, kind: str, name: str) -> None:
        started = time.perf_counter()
        try:
            result = await RECONCILERS[kind](self.ctx, name)
        except TerminalError as exc:
            log.error("%s/%s: %s", kind, name, exc)
            self._record(kind, name, "ReconcileFailed", str(exc))
            return
        except Exception as exc:
            log.exception("%s/%s: reconcile failed; retrying in %ss", kind, name, RETRY_AFTER_ERROR)
            self._record(kind, name, "ReconcileError", f"{type(exc).__name__}: {exc}")
            self._due[(kind, name)] = self.ctx.clock() + RETRY_AFTER_ERROR
            return
        finally:
            self.last_pass_seconds[f"{kind}/{name}"] = time.perf_counter() - started
        if result.requeue_after is not None:
            due = self.ctx.clock() + result.requeue_after
            current = self._due.get((kind, name))
            self._due[(kind, name)] = min(due, current) if current is not None else due

    def _record(self, kind: str, name: str, reason: str, message: str) -> None:
        """Best effort: failing to record an event must not stop the loop."""
        try:
            self.ctx.event(kind, name, "Warning", reason, message)
        except Exception:
            log.exception("%s/%s: could not record event %s", kind, name, reason)

    async def run(self) -> None:
        """Run until stopped; an unexpected error in one pass is logged, and the loop goes on."""
        while not self._stopping:
            try:
                await self._loop()
            except Exception:
                log.exception("controller loop failed; restarting it in 1s")
                await asyncio.sleep(1.0)

    async def _loop(self) -> None:
        next_resync = 0.0
        while not self._stopping:
            now = self.ctx.clock()
            if now >= next_resync:
                for obj in self.ctx.store.list_objects():
                    key = (obj["kind"], obj["metadata"]["name"])
                    self._due.setdefault(key, now)
                for key in SINGLETONS:
                    self._due.setdefault(key, now)
                next_resync = now + RESYNC_EVERY
            for key in [k for k, t in self._due.items() if t <= now]:
                self._due.pop(key, None)
                if key[0] in RECONCILERS:
                    await self._reconcile(*key)
            self._wake.clear()
            soonest = min([*self._due.values(), next_resync])
            timeout = max(0.05, min(soonest - self.ctx.clock(), 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
