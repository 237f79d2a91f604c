"""Dynamic batching: concurrent requests share one model call, the way Triton does it.

Requests queue while the model is busy; when it is free, the batcher takes
queued requests up to ``max_batch_size`` rows, optionally waits up to
``max_delay`` for more, calls the model once, and splits the scores back.
With ``max_delay=0`` (the default) nothing waits: a lone request runs at
once, and batches form only from requests that arrived during the previous
call — batching costs no latency at low load and saves most of it at high load.

A merged call that raises cannot say which request was at fault: each request
of that batch is then run alone, so a request the model refuses (or crashes
on) gets its own error and its neighbours their own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]
Features = npt.NDArray[np.float64]


@dataclass
class _Pending:
    features: Features
    future: asyncio.Future[Scores]


class Batcher:
    """Merges concurrent ``submit`` calls into model calls run one at a time in a thread."""

    def __init__(
        self,
        predict: Callable[[Features], Scores],
        max_batch_size: int = 64,
        max_delay: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self._on_batch = on_batch
        self._executor = executor
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._worker: asyncio.Task[None] | None = None
        self._more = asyncio.Event()

    async def submit(self, features: Features) -> Scores:
        future: asyncio.Future[Scores] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(features, future))
        self._queued_rows += features.shape[0]
        if self._queued_rows >= self.max_batch_size:
            self._more.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[_Pending]:
        """Queued requests up to max_batch_size rows (always at least one request)."""
        batch = [self._queue.popleft()]
        rows = batch[0].features.shape[0]
        width = batch[0].features.shape[1]
        while (
            self._queue
            and self._queue[0].features.shape[1] == width
            and rows + self._queue[0].features.shape[0] <= self.max_batch_size
        ):
            item = self._queue.popleft()
            rows += item.features.shape[0]
            batch.append(item)
        self._queued_rows -= rows
        return batch

    async def _drain(self) -> None:
        while self._queue:
            if self.max_delay > 0 and self._queued_rows < self.max_batch_size:
                self._more.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._more.wait(), self.max_delay)
            batch = [p for p in self._take() if not p.future.cancelled()]
            if not batch:
                continue
            if not await self._run(batch):
                # The merged call failed: run each request alone, so that only a request
                # the model refuses (or fails on) gets an error, and only its own.
                for pending in batch:
                    if not pending.future.done():
                        await self._run([pending])

    async def _run(self, batch: list[_Pending]) -> bool:
        """One model call for ``batch``; False, and nothing set, if a merged call failed."""
        merged = (
            batch[0].features if len(batch) == 1 else np.concatenate([p.features for p in batch])
        )
        try:
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(self._executor, self._predict, merged)
            if scores.shape[0] != merged.shape[0]:
                raise RuntimeError(
                    f"the model returned {scores.shape[0]} scores for {merged.shape[0]} rows"
                )
        except Exception as exc:
            if len(batch) > 1:
                return False
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return True
        if self._on_batch is not None:
            self._on_batch(merged.shape[0])
        start = 0
        for pending in batch:
            size = pending.features.shape[0]
            if not pending.future.done():
                pending.future.set_result(scores[start : start + size])
            start += size
        return True
