"""Model runtimes: turn a verified registry version into something that predicts.

The framework recorded in the registry picks the runtime:

========== =============================================================== =====================
framework  artifact                                                        needs (pip)
========== =============================================================== =====================
sklearn    ``.joblib`` / ``.pkl`` / ``.pickle`` (joblib/pickle dump)         scikit-learn, joblib
xgboost    ``save_model`` output, ``.json`` or ``.ubj``                      xgboost
lightgbm   ``Booster.save_model`` text file, ``.txt`` or ``.lgb``            lightgbm
onnx       ``.onnx``, run by onnxruntime on the CPU, one intra-op thread     onnxruntime
custom     ``model.py`` defining ``class Model`` (see below)                 whatever it imports
========== =============================================================== =====================

Every predictor takes a 2-D float64 array (rows x features, in signature order)
and returns a float64 array with one row per input row: 1-D, one score per row,
for every framework, as follows (a ``custom`` model may also answer 2-D, see below):

* binary classifiers: the probability of the positive class (the second class in
  the model's class order, i.e. ``predict_proba(X)[:, 1]``);
* regressors (and anything else with one output per row): the prediction;
* multi-class classifiers: the **predicted class** (the argmax of the class
  probabilities) as a float: the class label itself when labels are numbers,
  else the class's index in the model's class order. It is *not* the probability
  of class 1, which would be meaningless with three or more classes.

:func:`load_predictor` verifies the sha256 of every file of the version before
any framework library is imported or any byte is deserialised; each framework
library is imported only when a version of that framework is loaded, so a
replica serving scikit-learn never imports onnxruntime. A missing library, a
missing artifact, or an artifact the framework cannot read raise
:class:`UnsupportedFramework` (the replica then stays not ready and says why).

A ``custom`` version is a folder whose ``model.py`` defines::

    class Model:
        def load(self, path: pathlib.Path) -> None: ...      # path: the version's folder
        def predict(self, features: numpy.ndarray) -> Sequence[float] | numpy.ndarray: ...

``predict`` answers one number per row (a sequence, or a 1-D array; rows x 1 is
read as 1-D), or a 2-D array of rows x k numbers, k >= 1 the same for every row:
a recommender's top-k item ids, a multi-output regressor's k values. The server
returns the latter as an OIP v2 tensor of shape [rows, k] and as v1 predictions
that are lists of k numbers; batched requests get back exactly their own rows.

Custom code is executed only after checksum verification, and it is executed
from the very bytes that were hashed (never from a bytecode cache, never by
putting the folder on ``sys.path``), under a unique module name. ``model.py`` is
therefore a standalone module: it cannot ``import`` its siblings, but ``load``
can read any file of the version (all of them are verified) through ``path``.
Calls to a custom model's ``predict`` are serialised, since its code may not be
thread-safe.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pilothouse.registry.frameworks import (
    CUSTOM_ENTRYPOINT,
    FRAMEWORKS,
    LIGHTGBM_SUFFIXES,
    METADATA_FILES,
    ONNX_SUFFIXES,
    SKLEARN_SUFFIXES,
    XGBOOST_SUFFIXES,
    is_lightgbm_text,
    is_xgboost_json,
)
from pilothouse.registry.local import ChecksumMismatch, ModelVersion, verify

Scores = npt.NDArray[np.float64]


class Predictor(Protocol):
    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


class UnsupportedFramework(Exception):
    """This version cannot be served here: unknown framework, library or artifact missing."""


class ModelLoadError(UnsupportedFramework):
    """The artifact is there and verified, but its framework (or custom code) failed to load it."""


def _rows(features: npt.NDArray[np.float64], n_features: int | None) -> npt.NDArray[np.float64]:
    """The input as a 2-D float64 array; ValueError (a bad request) if its shape is wrong."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows x features, got {array.ndim}-D")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(f"the model takes {n_features} features per row, got {array.shape[1]}")
    return array


def _scores(values: Any, rows: int, what: str) -> Scores:
    """One float64 score per row, or RuntimeError: a model answering otherwise is broken."""
    out = np.asarray(values, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1 or out.shape[0] != rows:
        raise RuntimeError(
            f"{what} returned an array of shape {out.shape} for {rows} rows; "
            "pilothouse serves exactly one score per row"
        )
    return out


def _outputs(values: Any, rows: int, what: str) -> Scores:
    """A custom model's answer: one score per row (1-D), or rows x k values (2-D, k >= 1)."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:  # ragged rows, strings, objects
        raise RuntimeError(
            f"{what} returned something that is not an array of numbers: {exc}"
        ) from exc
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim in (1, 2) and out.shape[0] == rows and (out.ndim == 1 or out.shape[1] > 0):
        return out
    raise RuntimeError(
        f"{what} returned an array of shape {out.shape} for {rows} rows; a custom model "
        "answers one number per row, or a 2-D array of rows x k numbers"
    )


def _empty() -> Scores:
    return np.empty(0, dtype=np.float64)


def _labels_as_float(labels: Any, classes: Any) -> Scores:
    """Class labels as floats: themselves if numeric, else their index in ``classes``."""
    array = np.asarray(labels)
    if array.dtype.kind in "biuf":
        return np.asarray(array, dtype=np.float64)
    index = {label: i for i, label in enumerate(list(classes))}
    return np.asarray([index[label] for label in array.tolist()], dtype=np.float64)


class SklearnPredictor:
    """A scikit-learn estimator saved with joblib.

    Binary classifier: probability of the positive class. Multi-class: the predicted
    class (label as float, or its index in ``classes_`` if labels are not numbers).
    Regressor: the prediction.
    """

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        classes = getattr(estimator, "classes_", None)
        self._classes = None if classes is None else list(classes)
        self._binary_proba = (
            hasattr(estimator, "predict_proba") and classes is not None and len(classes) == 2
        )
        n_features = getattr(estimator, "n_features_in_", None)
        self._n_features = int(n_features) if isinstance(n_features, int | np.integer) else None

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = _rows(features, self._n_features)
        if x.shape[0] == 0:
            return _empty()
        if self._binary_proba:
            proba = np.asarray(self._estimator.predict_proba(x))
            return _scores(proba[:, 1], x.shape[0], "the scikit-learn model")
        predicted = self._estimator.predict(x)
        if self._classes is not None:
            predicted = _labels_as_float(predicted, self._classes)
        return _scores(predicted, x.shape[0], "the scikit-learn model")


class XGBoostPredictor:
    """An XGBoost ``Booster`` (also what ``XGBClassifier``/``XGBRegressor.save_model`` wrote).

    ``binary:logistic`` gives probabilities; ``multi:softprob`` gives the argmax class;
    regression objectives give the prediction. Like the scikit-learn wrapper, a model
    trained with early stopping predicts with its best iteration.
    """

    def __init__(self, booster: Any) -> None:
        self._booster = booster
        config = json.loads(booster.save_config())
        self.objective = str(config["learner"]["objective"]["name"])
        best = booster.attr("best_iteration")
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        n_features = int(booster.num_features())
        self._n_features = n_features if n_features > 0 else None

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = _rows(features, self._n_features)
        if x.shape[0] == 0:
            return _empty()
        # Columns come in signature order and carry no names: do not match names.
        out = np.asarray(
            self._booster.inplace_predict(
                x, iteration_range=self._iteration_range, validate_features=False
            )
        )
        if out.ndim == 2 and out.shape[1] > 1 and self.objective.startswith("multi:"):
            out = np.argmax(out, axis=1)
        return _scores(out, x.shape[0], f"the XGBoost model ({self.objective})")


class LightGBMPredictor:
    """A LightGBM ``Booster`` text model: probability if binary, argmax class if multi-class."""

    def __init__(self, booster: Any) -> None:
        self._booster = booster
        n_features = int(booster.num_feature())
        self._n_features = n_features if n_features > 0 else None

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = _rows(features, self._n_features)
        if x.shape[0] == 0:
            return _empty()
        out = np.asarray(self._booster.predict(x))
        if out.ndim == 2 and out.shape[1] > 1:
            # Only multi-class models answer with one column per class (0..K-1).
            out = np.argmax(out, axis=1)
        return _scores(out, x.shape[0], "the LightGBM model")


_ONNX_INPUT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}
# skl2onnx names the probabilities "probabilities" (zipmap=False) or
# "output_probability" (a ZipMap: one {class: probability} map per row).
_ONNX_PROBABILITY_NAMES = ("output_probability", "probabilities", "probability")
_ONNX_LABEL_NAMES = ("output_label", "label")


class OnnxPredictor:
    """An ONNX model on onnxruntime's CPU provider.

    The first (only) input is fed the rows, cast to its element type. A classifier
    (an output of ZipMap maps, or a probability tensor as skl2onnx names it) scores
    like any classifier here; otherwise the first output, one value per row.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise UnsupportedFramework(
                f"the ONNX model has {len(inputs)} inputs ({names}); pilothouse feeds one "
                "2-D tensor of rows x features"
            )
        first = inputs[0]
        if first.type not in _ONNX_INPUT_TYPES:
            raise UnsupportedFramework(
                f"the ONNX model's input '{first.name}' is {first.type}; "
                f"supported: {', '.join(_ONNX_INPUT_TYPES)}"
            )
        self._input = str(first.name)
        self._dtype = _ONNX_INPUT_TYPES[first.type]
        shape = list(first.shape or [])
        if shape and len(shape) != 2:
            raise UnsupportedFramework(
                f"the ONNX model's input '{first.name}' has shape {shape}; expected [rows, features]"
            )
        self._n_features = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

        outputs = session.get_outputs()
        self._probability: str | None = None
        self._zipmap = False
        for output in outputs:
            if str(output.type).startswith("seq(map("):
                self._probability, self._zipmap = str(output.name), True
                break
        if self._probability is None:
            for output in outputs:
                if output.name in _ONNX_PROBABILITY_NAMES and str(output.type).startswith(
                    "tensor("
                ):
                    self._probability = str(output.name)
                    break
        self._label = next(
            (
                str(o.name)
                for o in outputs
                if o.name in _ONNX_LABEL_NAMES and str(o.type).startswith("tensor(")
            ),
            None,
        )
        self._first = str(outputs[0].name)
        if self._probability is not None:
            self._fetch = [self._probability] + ([self._label] if self._label else [])
        else:
            self._fetch = [self._first]

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = _rows(features, self._n_features)
        rows = x.shape[0]
        if rows == 0:
            return _empty()
        results = self._session.run(self._fetch, {self._input: x.astype(self._dtype)})
        if self._probability is None:
            return _scores(np.asarray(results[0]).reshape(-1), rows, "the ONNX model")
        classes: list[Any]
        if self._zipmap:
            maps = results[0]
            classes = list(maps[0].keys())
            proba = np.asarray([[row[c] for c in classes] for row in maps], dtype=np.float64)
        else:
            proba = np.asarray(results[0], dtype=np.float64)
            classes = list(range(proba.shape[1])) if proba.ndim == 2 else []
        if proba.ndim != 2 or proba.shape[1] < 2:
            return _scores(proba, rows, "the ONNX model")
        if proba.shape[1] == 2:
            return _scores(proba[:, 1], rows, "the ONNX model")
        if self._label is not None:
            labels = np.asarray(results[1])
            if labels.dtype.kind in "biuf":
                return _scores(labels.reshape(-1), rows, "the ONNX model")
        return _scores(
            _labels_as_float([classes[i] for i in np.argmax(proba, axis=1)], classes),
            rows,
            "the ONNX model",
        )


class CustomPredictor:
    """Wraps a custom ``Model``; calls are serialised, its code may not be thread-safe."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = _rows(features, None)
        with self._lock:
            out = self._model.predict(x)
        return _outputs(out, x.shape[0], f"custom {type(self._model).__name__}.predict")


def _require(version: ModelVersion, module: str, pip: str) -> ModuleType:
    """Import a framework library now, or say which pip package would provide it."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: a shared library that does not load
        raise UnsupportedFramework(
            f"{version.ref}: framework '{version.framework}' needs the Python package "
            f"'{pip}' (pip install {pip}), which cannot be imported here: {exc}"
        ) from exc


def _artifact(
    version: ModelVersion,
    suffixes: tuple[str, ...],
    accept: Callable[[Path], bool] | None = None,
    kind: str = "",
) -> Path:
    """The one artifact file of the version (``model.<ext>`` wins among several)."""
    candidates = sorted(
        rel
        for rel in version.files
        if Path(rel).name not in METADATA_FILES
        and Path(rel).suffix.lower() in suffixes
        and (accept is None or accept(version.path / rel))
    )
    if not candidates:
        has = ", ".join(sorted(version.files)) or "no files"
        raise UnsupportedFramework(
            f"{version.ref}: a '{version.framework}' version needs "
            f"{kind or 'a file'} ending in {'/'.join(suffixes)}, but it has: {has}"
        )
    if len(candidates) > 1:
        preferred = [rel for rel in candidates if "/" not in rel and Path(rel).stem == "model"]
        if len(preferred) != 1:
            raise UnsupportedFramework(
                f"{version.ref}: several '{version.framework}' artifacts ({', '.join(candidates)}); "
                f"register only one, or name the one to serve 'model' (e.g. model{suffixes[0]})"
            )
        candidates = preferred
    return version.path / candidates[0]


def _deserialise(version: ModelVersion, artifact: Path, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as exc:
        raise ModelLoadError(
            f"{version.ref}: {version.framework} could not load {artifact.name}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _load_sklearn(version: ModelVersion) -> Predictor:
    artifact = _artifact(version, SKLEARN_SUFFIXES)
    joblib = _require(version, "joblib", "joblib")
    _require(version, "sklearn", "scikit-learn")
    return SklearnPredictor(_deserialise(version, artifact, lambda: joblib.load(artifact)))


def _load_xgboost(version: ModelVersion) -> Predictor:
    def accept(path: Path) -> bool:
        return path.suffix.lower() == ".ubj" or is_xgboost_json(path)

    artifact = _artifact(version, XGBOOST_SUFFIXES, accept, "an XGBoost save_model file")
    xgb = _require(version, "xgboost", "xgboost")

    def load() -> Any:
        booster = xgb.Booster()
        booster.load_model(str(artifact))
        return XGBoostPredictor(booster)

    predictor: Predictor = _deserialise(version, artifact, load)
    return predictor


def _load_lightgbm(version: ModelVersion) -> Predictor:
    artifact = _artifact(
        version, LIGHTGBM_SUFFIXES, is_lightgbm_text, "a LightGBM Booster.save_model text file"
    )
    lgb = _require(version, "lightgbm", "lightgbm")
    predictor: Predictor = _deserialise(
        version, artifact, lambda: LightGBMPredictor(lgb.Booster(model_file=str(artifact)))
    )
    return predictor


def _load_onnx(version: ModelVersion) -> Predictor:
    artifact = _artifact(version, ONNX_SUFFIXES)
    ort = _require(version, "onnxruntime", "onnxruntime")

    def session() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; replicas log their own story
        return ort.InferenceSession(
            str(artifact), sess_options=options, providers=["CPUExecutionProvider"]
        )

    loaded = _deserialise(version, artifact, session)
    try:
        return OnnxPredictor(loaded)
    except UnsupportedFramework as exc:
        raise UnsupportedFramework(f"{version.ref}: {exc}") from exc


def _module_name(version: ModelVersion) -> str:
    safe = re.sub(r"\W", "_", version.name)
    return f"pilothouse_custom_{safe}_v{version.version}_{uuid.uuid4().hex[:12]}"


def _load_custom(version: ModelVersion) -> Predictor:
    if CUSTOM_ENTRYPOINT not in version.files:
        has = ", ".join(sorted(version.files)) or "no files"
        raise UnsupportedFramework(
            f"{version.ref}: a 'custom' version needs {CUSTOM_ENTRYPOINT} (defining class Model) "
            f"at the top of its folder, but it has: {has}"
        )
    source_path = version.path / CUSTOM_ENTRYPOINT
    # Execute exactly the bytes we hash: no window between check and use, no .pyc.
    source = source_path.read_bytes()
    expected = version.files[CUSTOM_ENTRYPOINT]
    actual = hashlib.sha256(source).hexdigest()
    if actual != expected:
        raise ChecksumMismatch(source_path, expected, actual)

    name = _module_name(version)
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(source_path))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(source_path)
    sys.modules[name] = module  # dataclasses, pickle and typing look modules up by name
    try:
        code = compile(source, str(source_path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(
            f"{version.ref}: importing {CUSTOM_ENTRYPOINT} failed: {type(exc).__name__}: {exc}"
        ) from exc

    model_class = getattr(module, "Model", None)
    if not isinstance(model_class, type):
        sys.modules.pop(name, None)
        raise UnsupportedFramework(f"{version.ref}: {CUSTOM_ENTRYPOINT} defines no class Model")
    if not callable(getattr(model_class, "predict", None)) or not callable(
        getattr(model_class, "load", None)
    ):
        sys.modules.pop(name, None)
        raise UnsupportedFramework(
            f"{version.ref}: {CUSTOM_ENTRYPOINT}'s Model must define load(path) and predict(features)"
        )
    try:
        model = model_class()
        model.load(version.path)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(
            f"{version.ref}: custom Model.load failed: {type(exc).__name__}: {exc}"
        ) from exc
    return CustomPredictor(model)


_LOADERS: dict[str, Callable[[ModelVersion], Predictor]] = {
    "sklearn": _load_sklearn,
    "xgboost": _load_xgboost,
    "lightgbm": _load_lightgbm,
    "onnx": _load_onnx,
    "custom": _load_custom,
}
assert tuple(_LOADERS) == FRAMEWORKS


def load_predictor(version: ModelVersion) -> Predictor:
    """Verify every checksum, then deserialise; nothing is imported or unpickled before."""
    verify(version)
    loader = _LOADERS.get(version.framework)
    if loader is None:
        raise UnsupportedFramework(
            f"{version.ref}: framework '{version.framework}' is not supported "
            f"(supported: {', '.join(FRAMEWORKS)})"
        )
    return loader(version)
