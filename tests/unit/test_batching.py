"""Dynamic batching: merged calls, split results, bounded batch size, errors per batch."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from pilothouse.serving.batching import Batcher


class SlowModel:
    """Doubles every feature sum; the first call blocks until released, so requests pile up."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features.shape[0])
        self.started.set()
        if len(self.calls) == 1:
            assert self.release.wait(10)
        return features.sum(axis=1) * 2.0


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 1.0] for v in values])


def test_requests_arriving_during_a_call_share_the_next_one() -> None:
    model = SlowModel()

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch_size=64)
        first = asyncio.create_task(batcher.submit(rows(0)))
        assert await asyncio.to_thread(model.started.wait, 10)  # the first call is running
        rest = [asyncio.create_task(batcher.submit(rows(i))) for i in range(1, 11)]
        await asyncio.sleep(0)
        model.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    assert model.calls == [1, 10]
    for i, scores in enumerate(results):
        np.testing.assert_array_equal(scores, [(i + 1.0) * 2.0])


def test_batches_never_exceed_max_batch_size() -> None:
    model = SlowModel()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=4)
        first = asyncio.create_task(batcher.submit(rows(0)))
        assert await asyncio.to_thread(model.started.wait, 10)
        rest = [asyncio.create_task(batcher.submit(rows(i, i))) for i in range(5)]
        await asyncio.sleep(0)
        model.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())
    assert model.calls[0] == 1
    assert all(size <= 4 for size in model.calls[1:])
    assert sum(model.calls) == 11


def test_a_lone_request_does_not_wait() -> None:
    calls: list[int] = []

    def model(features: np.ndarray) -> np.ndarray:
        calls.append(features.shape[0])
        return features[:, 0]

    async def scenario() -> np.ndarray:
        return await Batcher(model, max_batch_size=64, max_delay=0.0).submit(rows(5))

    np.testing.assert_array_equal(asyncio.run(scenario()), [5.0])
    assert calls == [1]


def test_max_delay_gathers_requests_that_arrive_in_the_window() -> None:
    calls: list[int] = []

    def model(features: np.ndarray) -> np.ndarray:
        calls.append(features.shape[0])
        return features[:, 0]

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay=0.5)
        tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(8)]
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert calls == [8], "a full batch goes at once, without waiting out the delay"


def test_a_failing_model_call_fails_its_batch_only() -> None:
    def model(features: np.ndarray) -> np.ndarray:
        if (features[:, 0] < 0).any():
            raise ValueError("negative input")
        return features[:, 0]

    async def scenario() -> tuple[BaseException | np.ndarray, ...]:
        batcher = Batcher(model, max_batch_size=1)
        return tuple(
            await asyncio.gather(
                batcher.submit(rows(-1)), batcher.submit(rows(3)), return_exceptions=True
            )
        )

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, ValueError)
    np.testing.assert_array_equal(good, [3.0])


def test_rows_of_different_widths_are_not_merged() -> None:
    calls: list[tuple[int, int]] = []

    def model(features: np.ndarray) -> np.ndarray:
        calls.append(features.shape)
        return features[:, 0]

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=64)
        await asyncio.gather(
            batcher.submit(np.ones((1, 2))),
            batcher.submit(np.ones((1, 3))),
            batcher.submit(np.ones((1, 2))),
        )

    asyncio.run(scenario())
    assert all(len({shape[1]}) == 1 for shape in calls)
    assert sum(shape[0] for shape in calls) == 3


def test_max_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(lambda x: x, max_batch_size=0)


class RefusesNegatives:
    """Refuses (ValueError) any call with a negative first feature; the first call blocks
    until released, so that the requests behind it are merged into one call."""

    def __init__(self, error: type[Exception] = ValueError) -> None:
        self.calls: list[int] = []
        self.error = error
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features.shape[0])
        self.started.set()
        if len(self.calls) == 1:
            assert self.release.wait(10)
        if (features[:, 0] < 0).any():
            raise self.error(f"negative input in {features.shape[0]} row(s)")
        return features[:, 0] * 10.0


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_a_request_that_fails_a_merged_call_does_not_fail_its_neighbours(
    error: type[Exception],
) -> None:
    model = RefusesNegatives(error)

    async def scenario() -> list[BaseException | np.ndarray]:
        batcher = Batcher(model, max_batch_size=64)
        first = asyncio.create_task(batcher.submit(rows(0)))
        assert await asyncio.to_thread(model.started.wait, 10)
        # queued while the first call runs: one merged call of 5 requests, one of them bad
        rest = [asyncio.create_task(batcher.submit(rows(v))) for v in (1, 2, -3, 4, 5)]
        await asyncio.sleep(0)
        model.release.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    results = asyncio.run(scenario())
    assert model.calls[:2] == [1, 5], "the five queued requests were merged into one call"
    for value, result in zip((0, 1, 2, -3, 4, 5), results, strict=True):
        if value < 0:
            assert isinstance(result, error)
            assert "1 row(s)" in str(result), "the culprit gets the error of its own call"
        else:
            assert isinstance(result, np.ndarray), f"request {value} failed: {result!r}"
            np.testing.assert_array_equal(result, [value * 10.0])
    assert sum(model.calls) == 1 + 5 + 5, "after a failed merged call, each request ran alone"


def test_a_model_answering_the_wrong_number_of_rows_is_a_model_error() -> None:
    async def scenario() -> np.ndarray:
        return await Batcher(lambda x: np.zeros(x.shape[0] + 1), max_batch_size=8).submit(rows(1))

    with pytest.raises(RuntimeError, match="returned 2 scores for 1 rows"):
        asyncio.run(scenario())
