"""Unit tests for the fraud-detection example's synthetic data generator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "fraud-detection"
if str(EXAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_DIR))

import fraud_data  # noqa: E402


def column(X: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
    return X[:, fraud_data.FEATURES.index(name)]


def test_same_seed_gives_identical_arrays() -> None:
    X1, y1 = fraud_data.generate(5000, seed=11)
    X2, y2 = fraud_data.generate(5000, seed=11)
    assert np.array_equal(X1, X2)
    assert np.array_equal(y1, y2)
    assert X1.tobytes() == X2.tobytes()


def test_default_seed_is_seven() -> None:
    X1, y1 = fraud_data.generate(2000)
    X2, y2 = fraud_data.generate(2000, seed=7)
    assert np.array_equal(X1, X2)
    assert np.array_equal(y1, y2)


def test_different_seeds_differ() -> None:
    X1, y1 = fraud_data.generate(5000, seed=1)
    X2, y2 = fraud_data.generate(5000, seed=2)
    assert not np.array_equal(X1, X2)
    assert not np.array_equal(y1, y2)


@pytest.mark.parametrize("seed", [7, 123])
def test_fraud_rate_between_one_and_two_percent(seed: int) -> None:
    _, y = fraud_data.generate(50_000, seed=seed)
    assert 0.01 <= float(y.mean()) <= 0.02


def test_shapes_and_dtypes() -> None:
    X, y = fraud_data.generate(1234, seed=3)
    assert X.shape == (1234, len(fraud_data.FEATURES))
    assert y.shape == (1234,)
    assert X.dtype == np.float64
    assert np.issubdtype(y.dtype, np.integer)
    assert set(np.unique(y).tolist()) <= {0, 1}
    assert np.isfinite(X).all()


def test_features_are_unique_and_match_columns() -> None:
    X, _ = fraud_data.generate(10, seed=0)
    assert len(fraud_data.FEATURES) == X.shape[1]
    assert len(set(fraud_data.FEATURES)) == len(fraud_data.FEATURES)
    assert all(isinstance(name, str) and name for name in fraud_data.FEATURES)


def test_zero_rows() -> None:
    X, y = fraud_data.generate(0)
    assert X.shape == (0, len(fraud_data.FEATURES))
    assert y.shape == (0,)


def test_feature_ranges_are_sane() -> None:
    X, _ = fraud_data.generate(20_000, seed=5)
    hour = column(X, "hour")
    assert hour.min() >= 0
    assert hour.max() <= 23
    assert np.array_equal(hour, np.round(hour))
    category = column(X, "merchant_category")
    assert category.min() >= 0
    assert category.max() <= 11
    assert np.array_equal(category, np.round(category))
    for flag in ("card_present", "is_foreign"):
        assert set(np.unique(column(X, flag)).tolist()) <= {0.0, 1.0}
    assert (column(X, "amount") > 0).all()
    assert (column(X, "amount_to_avg_ratio") > 0).all()
    assert (column(X, "distance_from_home_km") >= 0).all()
    assert (column(X, "account_age_days") >= 1).all()
    txn_1h = column(X, "txn_count_1h")
    txn_24h = column(X, "txn_count_24h")
    assert (txn_1h >= 0).all()
    assert (txn_24h >= txn_1h).all()


def test_fraud_correlates_with_risk_signals() -> None:
    X, y = fraud_data.generate(50_000, seed=9)
    fraud = y == 1
    assert column(X, "is_foreign")[fraud].mean() > column(X, "is_foreign")[~fraud].mean()
    assert column(X, "card_present")[fraud].mean() < column(X, "card_present")[~fraud].mean()
    assert column(X, "txn_count_1h")[fraud].mean() > column(X, "txn_count_1h")[~fraud].mean()
