"""Train the recommendation example: matrix factorisation on implicit feedback (BPR).

A pilothouse TrainingJob runs this script as a local process from inside
``examples/recommendation/``::

    python train.py [--users N] [--items N] [--factors F] [--epochs E] [--seed S] [--quick]

It generates deterministic synthetic interactions (see ``data``) and learns a
user vector, an item vector and an item bias such that, for each training
interaction (user, item) and a sampled item the user did not touch, the model
scores the interacted item higher: Bayesian Personalised Ranking, trained by
mini-batch SGD in numpy.

Training can be stopped at any moment and resumed with the same result, to
the bit. It saves a checkpoint (the weights, the epoch and batch reached, the
state of the random generator at the start of the epoch and the running loss)
every ``PILOTHOUSE_CHECKPOINT_INTERVAL`` seconds and on SIGTERM (then exits
143), through ``pilothouse.sdk.Checkpointer``; at start it resumes from the
newest good checkpoint, redraws that epoch's shuffle and negatives from the
saved generator state and continues at the saved batch. Killed (even by
SIGKILL) and restarted, it ends with the same weights as a run never stopped.

At the end it writes into ``$PILOTHOUSE_OUTPUT_DIR`` (default ``./output``):

* ``weights.npz``    -- user and item factors, item biases, the training items of
  every user (CSR) and the items by popularity;
* ``model.py``       -- the ``custom`` serving model: one feature, ``user_id``; the
  answer is the user's 10 best items (ids as floats) they have not interacted with
  in training, or the 10 most popular items for an unknown user;
* ``metrics.json``   -- recall@10 and NDCG@10 on the held-out interactions, final
  loss, sizes;
* ``signature.json`` -- the model's input/output signature for serving.

Checkpoints go to ``$PILOTHOUSE_CHECKPOINT_DIR`` (default ``./checkpoints``).
Progress is printed to stdout, one line per epoch, so it shows up live in the job logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data

from pilothouse.sdk import Checkpointer

K = 10
QUICK = {"users": 400, "items": 150, "factors": 16, "epochs": 80}
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the pilothouse recommendation example.")
    parser.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    parser.add_argument("--items", type=int, default=500, help="items (default 500)")
    parser.add_argument("--factors", type=int, default=32, help="latent factors (default 32)")
    parser.add_argument(
        "--epochs", type=int, default=100, help="passes over the data (default 100)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="triples per SGD step")
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate")
    parser.add_argument("--reg", type=float, default=0.01, help="L2 regularisation")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run for tests: "
        + ", ".join(f"--{k} {v}" for k, v in QUICK.items())
        + " (explicit flags win)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default="./checkpoints",
        help="used when PILOTHOUSE_CHECKPOINT_DIR is not set (default ./checkpoints)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in QUICK.items():
            if f"--{key}" not in given:
                setattr(args, key, value)
    if args.items < 4 * K:
        parser.error(f"--items must be at least {4 * K}, got {args.items}")
    for name in ("users", "factors", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    return args


def initial_state(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Weights, position and random generator of a run that has not started."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own, apart from the data's
    scale = 0.1
    return {
        "config": config,
        "user_factors": rng.normal(scale=scale, size=(config["users"], config["factors"])),
        "item_factors": rng.normal(scale=scale, size=(config["items"], config["factors"])),
        "item_bias": np.zeros(config["items"]),
        "epoch": 0,  # epochs completed
        "batch": 0,  # batches completed in the current epoch
        "rng": rng.bit_generator.state,  # as at the start of the current epoch
        "loss_sum": 0.0,  # over the current epoch's completed batches
        "history": [],  # (epoch, loss, recall@10) of completed epochs
    }


def draw_epoch(
    rng: np.random.Generator, users: IntArray, seen: npt.NDArray[np.bool_]
) -> tuple[IntArray, IntArray]:
    """One epoch's shuffle of the training pairs and a negative item for each."""
    order = rng.permutation(len(users))
    negatives = rng.integers(0, seen.shape[1], size=len(users))
    bad = seen[users[order], negatives]
    while bad.any():  # resample negatives the user did interact with
        negatives[bad] = rng.integers(0, seen.shape[1], size=int(bad.sum()))
        bad = seen[users[order], negatives]
    return order, negatives


def sgd_step(
    state: dict[str, Any], u: IntArray, i: IntArray, j: IntArray, lr: float, reg: float
) -> float:
    """One BPR step on triples (user, interacted item, other item); returns the summed loss."""
    p, q, b = state["user_factors"], state["item_factors"], state["item_bias"]
    pu, qi, qj = p[u], q[i], q[j]
    diff = qi - qj
    x = np.einsum("ij,ij->i", pu, diff) + b[i] - b[j]
    loss = float(np.logaddexp(0.0, -x).sum())
    g = (1.0 / (1.0 + np.exp(x)))[:, None]  # sigmoid(-x): d(-log sigmoid(x)) / dx, negated
    np.add.at(p, u, lr * (g * diff - reg * pu))
    np.add.at(q, i, lr * (g * pu - reg * qi))
    np.add.at(q, j, lr * (-g * pu - reg * qj))
    np.add.at(b, i, lr * (g[:, 0] - reg * b[i]))
    np.add.at(b, j, lr * (-g[:, 0] - reg * b[j]))
    return loss


def top_k(scores: FloatArray, k: int = K) -> IntArray:
    """Indices of the k highest scores of each row, best first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def evaluate(
    state: dict[str, Any], interactions: data.Interactions, seen: npt.NDArray[np.bool_]
) -> dict[str, float]:
    """recall@K and NDCG@K of the held-out items, excluding each user's training items."""
    scores = state["user_factors"] @ state["item_factors"].T + state["item_bias"]
    scores[seen] = -np.inf
    users = np.unique(interactions.test_users)
    top = top_k(scores[users])
    held_out = np.zeros_like(seen)
    held_out[interactions.test_users, interactions.test_items] = True
    hits = np.take_along_axis(held_out[users], top, axis=1)
    n_test = held_out[users].sum(axis=1)
    recall = hits.sum(axis=1) / np.minimum(n_test, K)
    discount = 1.0 / np.log2(np.arange(2, K + 2))
    ideal = np.array([discount[: min(n, K)].sum() for n in n_test])
    ndcg = (hits * discount).sum(axis=1) / ideal
    return {"recall_at_10": float(recall.mean()), "ndcg_at_10": float(ndcg.mean())}


MODEL_PY = '''"""Serving code of the pilothouse recommendation example (the custom framework).

Input: one row per request, [user_id]. Output: the user's 10 best item ids (as
floats, best first) among the items they did not interact with in training; an
unknown user id (out of range, not a whole number) gets the 10 most popular items.
"""

from pathlib import Path

import numpy as np

K = 10


class Model:
    def load(self, path: Path) -> None:
        with np.load(path / "weights.npz") as weights:
            self.users = weights["user_factors"]
            self.items = weights["item_factors"]
            self.bias = weights["item_bias"]
            self.seen_indptr = weights["seen_indptr"]
            self.seen_indices = weights["seen_indices"]
            self.popular = weights["popular"][:K].astype(np.float64)

    def predict(self, features: np.ndarray) -> np.ndarray:
        ids = np.asarray(features, dtype=np.float64)[:, 0]
        out = np.tile(self.popular, (len(ids), 1))
        known = (ids >= 0) & (ids < len(self.users)) & (ids == np.floor(ids))
        rows = np.flatnonzero(known)
        if len(rows):
            users = ids[rows].astype(np.int64)
            scores = self.users[users] @ self.items.T + self.bias
            for n, user in enumerate(users):
                start, end = self.seen_indptr[user], self.seen_indptr[user + 1]
                scores[n, self.seen_indices[start:end]] = -np.inf
            best = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            out[rows] = best
        return out
'''


def signature() -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": "user_id", "datatype": "FP64"}],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1, K]}],
    }


def write_outputs(
    output_dir: Path,
    state: dict[str, Any],
    interactions: data.Interactions,
    metrics: dict[str, Any],
) -> None:
    order = np.lexsort((interactions.train_items, interactions.train_users))
    users, items = interactions.train_users[order], interactions.train_items[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=interactions.n_users))])
    counts = np.bincount(items, minlength=interactions.n_items)
    popular = np.argsort(-counts, kind="stable")
    np.savez(
        output_dir / "weights.npz",
        user_factors=state["user_factors"],
        item_factors=state["item_factors"],
        item_bias=state["item_bias"],
        seen_indptr=indptr.astype(np.int64),
        seen_indices=items.astype(np.int64),
        popular=popular.astype(np.int64),
    )
    (output_dir / "model.py").write_text(MODEL_PY, encoding="utf-8")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "signature.json").write_text(json.dumps(signature(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(os.environ.get("PILOTHOUSE_OUTPUT_DIR", "./output"))
    checkpoints = os.environ.get("PILOTHOUSE_CHECKPOINT_DIR") or args.checkpoint_dir
    ckpt = Checkpointer(checkpoints)  # interval/keep from the environment; handles SIGTERM
    started = time.monotonic()

    interactions = data.generate(args.users, args.items, seed=args.seed)
    seen = interactions.seen()
    train_users, train_items = interactions.train_users, interactions.train_items
    batch_size: int = args.batch_size
    batches = math.ceil(len(train_users) / batch_size)
    config = {
        "users": args.users,
        "items": args.items,
        "factors": args.factors,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "lr": args.lr,
        "reg": args.reg,
        "seed": args.seed,
    }
    log(
        f"[data] {args.users} users x {args.items} items: {len(train_users)} training and "
        f"{len(interactions.test_users)} held-out interactions (seed {args.seed}); "
        f"{args.epochs} epochs of {batches} batches"
    )

    resumed = ckpt.load_latest()
    if resumed is None:
        step, state = 0, initial_state(config, args.seed)
        log(f"[start] no checkpoint in {ckpt.directory}: training from scratch")
    else:
        step, state = resumed
        if state["config"] != config:
            log(
                f"error: the checkpoints in {ckpt.directory} are of another run "
                f"({state['config']}); use another folder or the same flags"
            )
            return 2
        log(
            f"[resume] resumed from checkpoint step {step}: epoch {state['epoch'] + 1}, "
            f"batch {state['batch']} of {batches}"
        )
        # Unpickled arrays carry a new dtype object instead of numpy's own float64, and
        # numpy's ufunc.at (every SGD update here) takes a ~3x slower path for those: a
        # view with the canonical dtype (no copy) keeps a resumed run as fast as a fresh one.
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                state[key] = value.view(value.dtype.type)

    rng = np.random.default_rng()
    while state["epoch"] < args.epochs:
        rng.bit_generator.state = state["rng"]
        order, negatives = draw_epoch(rng, train_users, seen)
        for batch in range(state["batch"], batches):
            pick = slice(batch * batch_size, (batch + 1) * batch_size)
            rows = order[pick]
            state["loss_sum"] += sgd_step(
                state,
                train_users[rows],
                train_items[rows],
                negatives[pick],
                args.lr,
                args.reg,
            )
            state["batch"] = batch + 1
            step += 1
            if ckpt.due() or ckpt.stop_requested:
                ckpt.save(state, step)
                log(
                    f"[checkpoint] saved step {step} (epoch {state['epoch'] + 1}, batch {batch + 1})"
                )
            if ckpt.stop_requested:
                log(f"[stop] SIGTERM: saved step {step}, exiting for a restart")
                ckpt.exit_preempted()
        loss = state["loss_sum"] / len(train_users)
        state["epoch"] += 1
        state["batch"] = 0
        state["rng"] = rng.bit_generator.state
        state["loss_sum"] = 0.0
        quality = evaluate(state, interactions, seen)
        state["history"].append((state["epoch"], loss, quality["recall_at_10"]))
        log(
            f"[epoch {state['epoch']}/{args.epochs}] loss {loss:.4f} "
            f"recall@10 {quality['recall_at_10']:.4f} elapsed {time.monotonic() - started:.1f}s"
        )

    ckpt.save(state, step)  # the finished run: a restart only rewrites the outputs
    quality = evaluate(state, interactions, seen)
    metrics: dict[str, Any] = {
        **quality,
        "final_loss": state["history"][-1][1] if state["history"] else None,
        "epochs": args.epochs,
        "users": args.users,
        "items": args.items,
        "factors": args.factors,
        "train_interactions": len(train_users),
        "test_interactions": len(interactions.test_users),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(output_dir, state, interactions, metrics)
    log(
        f"[done] recall@10 {metrics['recall_at_10']:.4f} ndcg@10 {metrics['ndcg_at_10']:.4f}; "
        f"wrote the model to {output_dir} ({time.monotonic() - started:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
