"""Deterministic synthetic credit-card transactions for the fraud-detection example.

The fraud-detection example needs a realistic-looking, labelled tabular data set that can be
produced offline, in seconds, with no download and no licence questions, and that is
identical on every machine so that training runs, metrics and tests are reproducible. This
module generates one.

Each row is a single card transaction described by purely numeric features (see
``FEATURES``). The label is drawn from a hidden logistic risk model that combines the usual
fraud signals -- night-time activity, foreign and card-not-present transactions, amounts far
above the cardholder's norm, bursts of velocity, new accounts, distance from home and risky
merchant categories -- plus unobserved noise, so the problem is learnable but not trivially
separable (a good model reaches a ROC AUC of roughly 0.9-0.98). About 1.5 % of transactions
are fraudulent.

All randomness comes from ``numpy.random.default_rng(seed)``, consumed in a fixed order, so
the same ``(n, seed)`` always yields bit-identical arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FEATURES: list[str] = [
    "amount",
    "merchant_category",
    "hour",
    "card_present",
    "is_foreign",
    "txn_count_1h",
    "txn_count_24h",
    "amount_to_avg_ratio",
    "distance_from_home_km",
    "account_age_days",
]
"""Feature names, in the column order of the ``X`` returned by :func:`generate`."""

N_MERCHANT_CATEGORIES = 12

# Merchant categories (integer codes 0..11), for reference:
#  0 grocery, 1 fuel, 2 restaurants, 3 pharmacy, 4 clothing, 5 travel, 6 entertainment,
#  7 utilities, 8 online marketplace, 9 electronics, 10 jewellery, 11 gift cards / digital goods
_CATEGORY_WEIGHTS = np.array(
    [0.20, 0.12, 0.16, 0.06, 0.09, 0.04, 0.07, 0.05, 0.11, 0.05, 0.02, 0.03], dtype=np.float64
)
# Typical spend per category (median of the log-normal cardholder average, in currency units).
_CATEGORY_MEDIAN_AMOUNT = np.array(
    [45.0, 50.0, 35.0, 25.0, 70.0, 350.0, 40.0, 90.0, 55.0, 250.0, 400.0, 60.0], dtype=np.float64
)
# Probability that a transaction in the category is made with the physical card present.
_CATEGORY_CARD_PRESENT = np.array(
    [0.95, 0.97, 0.85, 0.90, 0.70, 0.30, 0.60, 0.20, 0.02, 0.45, 0.75, 0.10], dtype=np.float64
)
# Additive contribution of the category to the fraud log-odds.
_CATEGORY_RISK = np.array(
    [-0.6, -0.3, -0.5, -0.4, 0.0, 0.4, 0.0, -0.5, 0.5, 0.8, 0.9, 1.1], dtype=np.float64
)
# Relative frequency of transactions by hour of day (quiet at night, busy at lunch / evening).
_HOUR_WEIGHTS = np.array(
    [
        0.8, 0.5, 0.35, 0.25, 0.25, 0.4, 1.0, 2.0, 3.5, 4.5, 5.0, 5.5,
        6.5, 6.0, 5.0, 4.8, 5.0, 5.8, 6.5, 6.0, 5.0, 3.8, 2.5, 1.5,
    ],
    dtype=np.float64,
)  # fmt: skip

# Chosen so that the expected fraud rate is about 1.5 %.
_INTERCEPT = -8.5


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-z))


def generate(n: int, seed: int = 7) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Generate ``n`` synthetic transactions.

    Returns ``(X, y)`` where ``X`` is a float64 array of shape ``(n, len(FEATURES))`` with
    columns in ``FEATURES`` order and ``y`` is an int64 array of 0 (legitimate) / 1 (fraud).
    The output depends only on ``(n, seed)``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)

    category = rng.choice(
        N_MERCHANT_CATEGORIES, size=n, p=_CATEGORY_WEIGHTS / _CATEGORY_WEIGHTS.sum()
    )
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())

    # Account age: mostly established accounts, a thin tail of brand-new ones.
    account_age = np.clip(np.round(rng.gamma(shape=1.6, scale=500.0, size=n)), 1.0, 3650.0)

    card_present = (rng.random(n) < _CATEGORY_CARD_PRESENT[category]).astype(np.float64)
    is_foreign = (rng.random(n) < np.where(category == 5, 0.25, 0.04)).astype(np.float64)

    # Distance from the cardholder's home: short for local purchases, far for foreign ones.
    distance = np.where(
        is_foreign == 1.0,
        rng.lognormal(mean=7.0, sigma=0.8, size=n),
        rng.lognormal(mean=2.0, sigma=1.1, size=n),
    )
    distance = np.round(np.minimum(distance, 20000.0), 1)

    # Spend relative to the cardholder's own average for this kind of purchase.
    ratio = rng.lognormal(mean=0.0, sigma=0.55, size=n)
    # Occasional big-ticket purchases by legitimate customers (overlap with fraud).
    ratio = np.where(rng.random(n) < 0.03, ratio * rng.uniform(2.0, 8.0, size=n), ratio)
    customer_avg = _CATEGORY_MEDIAN_AMOUNT[category] * rng.lognormal(0.0, 0.5, size=n)
    amount = np.maximum(np.round(customer_avg * ratio, 2), 0.5)
    ratio = np.maximum(np.round(ratio, 3), 0.001)

    # Velocity: number of earlier transactions on the card in the last hour / 24 hours.
    # A small share of cards are in a "burst" (legitimate shopping sprees or card testing).
    burst = rng.random(n) < 0.02
    txn_1h = rng.poisson(0.3, size=n) + np.where(burst, rng.poisson(4.0, size=n), 0)
    txn_24h = txn_1h + rng.poisson(3.0, size=n) + np.where(burst, rng.poisson(6.0, size=n), 0)

    # Hidden fraud risk model (log-odds).
    night = (hour <= 5).astype(np.float64)
    not_present = 1.0 - card_present
    log_ratio = np.log(ratio)
    logit = (
        _INTERCEPT
        + _CATEGORY_RISK[category]
        + 2.0 * night
        + 1.8 * is_foreign
        + 1.5 * not_present
        + 0.8 * night * not_present
        + 2.0 * np.maximum(log_ratio, 0.0)
        + 0.45 * np.minimum(txn_1h, 10)
        + 1.5 * (txn_1h >= 4)
        + 0.05 * np.minimum(txn_24h, 30)
        + 2.0 * (account_age < 30)
        + 0.7 * (account_age < 180)
        + 0.3 * np.log1p(distance)
        + rng.normal(0.0, 0.6, size=n)  # unobserved factors
    )
    y = (rng.random(n) < _sigmoid(logit)).astype(np.int64)

    X = np.column_stack(
        [
            amount,
            category.astype(np.float64),
            hour.astype(np.float64),
            card_present,
            is_foreign,
            txn_1h.astype(np.float64),
            txn_24h.astype(np.float64),
            ratio,
            distance,
            account_age,
        ]
    ).astype(np.float64)
    return X, y
