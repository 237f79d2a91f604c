"""Deterministic synthetic user-item interactions for the recommendation example.

A recommender example needs implicit feedback (who clicked, watched or bought
what) with structure a model can learn, produced offline in a second, identical
on every machine. This module generates it from a hidden model of taste:

* every user and every item gets a point in a small latent space (``TASTE_DIMS``
  dimensions), and every item a popularity;
* a user's affinity to an item is their taste similarity plus the item's
  popularity; each user interacts with a handful of items (5 plus a Poisson
  number, on average ``mean_interactions``), drawn without replacement with
  probabilities proportional to ``exp(affinity)`` (the Gumbel top-k trick);
* ``test_per_user`` of each user's interactions, chosen at random, are held out
  for evaluation; the rest are the training set.

A model that recovers the latent space ranks the held-out items well above
chance (recall@10 of random guessing is about 10 / items).

All randomness comes from ``numpy.random.default_rng(seed)``, consumed in a fixed
order, so the same arguments always yield bit-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TASTE_DIMS = 6
MIN_INTERACTIONS = 5
TASTE_SCALE = 2.5
POPULARITY_SCALE = 1.0

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Interactions:
    """(user, item) pairs, split into training and held-out test interactions.

    Pairs are sorted by user, then item; ids are 0-based integers below
    ``n_users`` / ``n_items``. A user's train and test items never overlap.
    """

    n_users: int
    n_items: int
    train_users: IntArray
    train_items: IntArray
    test_users: IntArray
    test_items: IntArray

    def seen(self) -> npt.NDArray[np.bool_]:
        """A users x items boolean matrix of the training interactions."""
        matrix = np.zeros((self.n_users, self.n_items), dtype=np.bool_)
        matrix[self.train_users, self.train_items] = True
        return matrix


def generate(
    users: int = 2000,
    items: int = 500,
    seed: int = 7,
    *,
    mean_interactions: int = 30,
    test_per_user: int = 2,
) -> Interactions:
    """Interactions of ``users`` users with ``items`` items (see the module docstring)."""
    if users < 1 or items < 1:
        raise ValueError(f"need at least one user and one item, got {users} x {items}")
    if mean_interactions < MIN_INTERACTIONS or test_per_user < 1:
        raise ValueError(
            f"need mean_interactions >= {MIN_INTERACTIONS} and test_per_user >= 1, "
            f"got {mean_interactions} and {test_per_user}"
        )
    most = items // 2
    if most < MIN_INTERACTIONS or most <= test_per_user:
        raise ValueError(f"too few items ({items}) for {MIN_INTERACTIONS}+ interactions per user")
    rng = np.random.default_rng(seed)
    user_taste = rng.normal(size=(users, TASTE_DIMS))
    item_taste = rng.normal(size=(items, TASTE_DIMS))
    popularity = rng.normal(scale=POPULARITY_SCALE, size=items)
    affinity = TASTE_SCALE * (user_taste @ item_taste.T) / np.sqrt(TASTE_DIMS) + popularity

    counts = MIN_INTERACTIONS + rng.poisson(mean_interactions - MIN_INTERACTIONS, size=users)
    counts = np.minimum(counts, most)
    # Gumbel top-k: the n largest of affinity + Gumbel noise are a draw of n items
    # without replacement with probabilities proportional to exp(affinity).
    perturbed = affinity + rng.gumbel(size=affinity.shape)
    ranked = np.argsort(-perturbed, axis=1, kind="stable")
    chosen = np.arange(items)[None, :] < counts[:, None]  # the first counts[u] of each row

    # Hold out test_per_user of each user's items: rank their chosen items by a random key.
    keys = rng.random(size=(users, items))
    keys[~chosen] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(items)[None, :].repeat(users, axis=0), axis=1)
    is_test = chosen & (position < test_per_user)
    is_train = chosen & ~is_test

    def pairs(mask: npt.NDArray[np.bool_]) -> tuple[IntArray, IntArray]:
        item_ids = np.where(mask, ranked, items)  # items = "not chosen", sorts last
        item_ids.sort(axis=1)
        rows, cols = np.nonzero(item_ids < items)
        return rows.astype(np.int64), item_ids[rows, cols].astype(np.int64)

    train_users, train_items = pairs(is_train)
    test_users, test_items = pairs(is_test)
    return Interactions(users, items, train_users, train_items, test_users, test_items)
