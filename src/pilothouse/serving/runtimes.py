"""Model runtimes: turn a verified registry version into something that predicts.

Each runtime takes a 2-D float array (rows x features, in signature order) and
returns one score per row. The framework recorded in the registry picks it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pilothouse.registry.local import ModelVersion, verify


class Predictor(Protocol):
    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


class UnsupportedFramework(Exception):
    pass


class SklearnPredictor:
    """A scikit-learn estimator saved with joblib: probability of the positive class if binary."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        classes = getattr(estimator, "classes_", None)
        self._binary_proba = (
            hasattr(estimator, "predict_proba") and classes is not None and len(classes) == 2
        )

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._binary_proba:
            proba = self._estimator.predict_proba(features)
            return np.asarray(proba[:, 1], dtype=np.float64)
        return np.asarray(self._estimator.predict(features), dtype=np.float64)


def load_predictor(version: ModelVersion) -> Predictor:
    """Verify every checksum, then deserialise; nothing is unpickled before verification."""
    verify(version)
    if version.framework == "sklearn":
        import joblib

        artifacts = [f for f in version.files if f.endswith((".joblib", ".pkl", ".pickle"))]
        if not artifacts:
            raise UnsupportedFramework(
                f"{version.ref}: no .joblib/.pkl artifact among {list(version.files)}"
            )
        return SklearnPredictor(joblib.load(version.path / sorted(artifacts)[0]))
    raise UnsupportedFramework(
        f"{version.ref}: framework '{version.framework}' is not supported yet (supported: sklearn)"
    )
