"""Train the fraud-detection example model.

A pilothouse TrainingJob runs this script as a local process from inside
``examples/fraud-detection/``::

    python train.py [--rows N] [--seed S]

It generates a deterministic synthetic transaction set (see ``fraud_data``), trains a
scikit-learn ``HistGradientBoostingClassifier`` on a stratified 80 % split, evaluates it on the
remaining 20 % and writes three files into ``$PILOTHOUSE_OUTPUT_DIR`` (default ``./output``):

* ``model.joblib``   -- the fitted estimator (``predict_proba`` on a float array whose columns
  follow ``fraud_data.FEATURES``);
* ``metrics.json``   -- ROC AUC, average precision, precision@100/500, fraud rate, split sizes;
* ``signature.json`` -- the model's input/output signature for serving.

Progress is printed to stdout, one short line per step, so that it shows up live in the job
logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fraud_data
import joblib
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

MIN_ROWS = 1000
PRECISION_KS = (100, 500)
TEST_SIZE = 0.2


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the pilothouse fraud-detection example.")
    parser.add_argument(
        "--rows", type=int, default=200_000, help="transactions to generate (default 200000)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    if args.rows < MIN_ROWS:
        parser.error(f"--rows must be at least {MIN_ROWS}, got {args.rows}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    return args


def precision_at_k(y_true: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], k: int) -> float:
    """Share of true fraud among the ``k`` highest-scoring rows (ties broken stably)."""
    k = min(k, len(scores))
    if k == 0:
        return 0.0
    top = np.argsort(-scores, kind="stable")[:k]
    return float(y_true[top].mean())


def signature() -> dict[str, list[dict[str, str]]]:
    return {
        "inputs": [{"name": name, "datatype": "FP64"} for name in fraud_data.FEATURES],
        "outputs": [{"name": "score", "datatype": "FP64"}],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: int = args.rows
    seed: int = args.seed
    output_dir = Path(os.environ.get("PILOTHOUSE_OUTPUT_DIR", "./output"))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    log(f"[1/4] generating {rows} transactions (seed {seed})")
    X, y = fraud_data.generate(rows, seed=seed)
    fraud_rate = float(y.mean())
    log(f"      fraud rate {fraud_rate:.2%} ({int(y.sum())} fraudulent)")
    if y.sum() < 2:
        log("error: too few fraudulent transactions to split; increase --rows")
        return 2

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=seed
    )

    log(f"[2/4] training HistGradientBoostingClassifier on {len(y_train)} rows")
    model = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=400,
        max_leaf_nodes=15,
        min_samples_leaf=50,
        l2_regularization=1.0,
        categorical_features=[fraud_data.FEATURES.index("merchant_category")],
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=seed,
    )
    model.fit(X_train, y_train)

    scores = np.asarray(model.predict_proba(X_test)[:, 1], dtype=np.float64)
    metrics: dict[str, float | int] = {
        "auc": float(roc_auc_score(y_test, scores)),
        "average_precision": float(average_precision_score(y_test, scores)),
        "precision_at_100": precision_at_k(y_test, scores, 100),
        "precision_at_500": precision_at_k(y_test, scores, 500),
        "fraud_rate": fraud_rate,
        "train_rows": len(y_train),
        "test_rows": len(y_test),
    }
    log(
        f"[3/4] evaluating: auc={metrics['auc']:.3f} ap={metrics['average_precision']:.3f}"
        f" precision@100={metrics['precision_at_100']:.2f}"
        f" precision@500={metrics['precision_at_500']:.2f}"
    )

    model_path = output_dir / "model.joblib"
    joblib.dump(model, model_path)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "signature.json").write_text(json.dumps(signature(), indent=2) + "\n")
    log(f"[4/4] wrote model to {model_path} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
