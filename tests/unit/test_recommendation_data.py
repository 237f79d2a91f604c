"""Unit tests for the recommendation example's synthetic interaction generator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "recommendation"


def _load_data_module() -> ModuleType:
    """examples/recommendation/data.py under a name of its own ("data" is too common)."""
    name = "recommendation_example_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_DIR / "data.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


data = _load_data_module()
ARRAYS = ("train_users", "train_items", "test_users", "test_items")


def test_same_seed_gives_identical_arrays() -> None:
    a = data.generate(300, 120, seed=11)
    b = data.generate(300, 120, seed=11)
    for name in ARRAYS:
        assert getattr(a, name).dtype == np.int64
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()


def test_default_seed_is_seven() -> None:
    a = data.generate(200, 100)
    b = data.generate(200, 100, seed=7)
    assert all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ARRAYS)


def test_different_seeds_differ() -> None:
    a = data.generate(300, 120, seed=1)
    b = data.generate(300, 120, seed=2)
    assert not np.array_equal(a.seen(), b.seen())


def test_ids_in_range_and_sorted_by_user_then_item() -> None:
    d = data.generate(300, 120, seed=3)
    for users, items in ((d.train_users, d.train_items), (d.test_users, d.test_items)):
        assert users.min() >= 0
        assert users.max() < 300
        assert items.min() >= 0
        assert items.max() < 120
        keys = users * 120 + items
        assert np.all(np.diff(keys) > 0), "pairs are sorted and unique"


def test_every_user_has_held_out_items_apart_from_training() -> None:
    d = data.generate(400, 150, seed=5, test_per_user=2)
    assert np.array_equal(np.bincount(d.test_users, minlength=400), np.full(400, 2))
    train_counts = np.bincount(d.train_users, minlength=400)
    assert train_counts.min() >= data.MIN_INTERACTIONS - 2
    assert train_counts.max() <= 150 // 2
    assert not d.seen()[d.test_users, d.test_items].any()


def test_mean_interactions_is_roughly_as_asked() -> None:
    d = data.generate(2000, 500, seed=7, mean_interactions=30)
    per_user = (len(d.train_users) + len(d.test_users)) / 2000
    assert 28 < per_user < 32


def test_interactions_have_structure_not_noise() -> None:
    """Popular items are much more popular than the median, and item pairs co-occur far
    more (or less) often than independent choices would make them: what a recommender
    can learn. Independent choices put under 1 % of pairs above twice the expected
    co-occurrence and about 4 % below half of it."""
    d = data.generate(2000, 500, seed=7)
    counts = np.bincount(d.train_items, minlength=500)
    assert counts.max() > 5 * np.median(counts)
    seen = d.seen().astype(np.float64)
    co = seen.T @ seen  # item x item co-occurrence
    np.fill_diagonal(co, 0)
    expected = np.outer(counts, counts) / 2000
    enough = expected >= 5
    lift = co[enough] / expected[enough]
    assert (lift > 2).mean() > 0.05
    assert (lift < 0.5).mean() > 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"users": 0}, "at least one user"),
        ({"items": 6}, "too few items"),
        ({"mean_interactions": 2}, "mean_interactions"),
        ({"test_per_user": 0}, "test_per_user"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    args = {"users": 50, "items": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.generate(**args)
