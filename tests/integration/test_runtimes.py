"""Model runtimes end to end: train a real tiny model, save it, register it, load, predict.

Scores must equal the framework's own ``predict_proba[:, 1]`` (or the predicted class /
value), verification must happen before anything is deserialised, and missing files
or libraries must be reported as UnsupportedFramework.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pilothouse.registry.frameworks import detect_framework
from pilothouse.registry.local import ChecksumMismatch, LocalRegistry, ModelVersion
from pilothouse.serving.runtimes import (
    ModelLoadError,
    UnsupportedFramework,
    load_predictor,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 4


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(2024)
    x = rng.normal(size=(240, N_FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] + rng.normal(scale=0.5, size=240) > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def multiclass(data: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    x, _ = data
    return x, np.digitize(x[:, 0] + x[:, 1], [-0.7, 0.7])  # classes 0, 1, 2


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


def register(
    registry: LocalRegistry, folder: Path, framework: str, name: str = "m"
) -> ModelVersion:
    assert detect_framework(folder) == framework
    return registry.register(name, folder, framework=framework)


def out_dir(tmp_path: Path, name: str = "out") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "metrics.json").write_text('{"auc": 0.9}', encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- sklearn


def test_sklearn_binary(tmp_path: Path, registry: LocalRegistry, data: Any) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = data
    model = LogisticRegression().fit(x, y)
    folder = out_dir(tmp_path)
    joblib.dump(model, folder / "model.joblib")
    predictor = load_predictor(register(registry, folder, "sklearn"))
    scores = predictor.predict(x)
    assert scores.dtype == np.float64
    assert scores.shape == (len(x),)
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=1e-12)


def test_sklearn_multiclass_gives_the_predicted_class(
    tmp_path: Path, registry: LocalRegistry, multiclass: Any
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = multiclass
    labels = np.array(["low", "mid", "high"])[y]
    numeric = LogisticRegression().fit(x, y)
    named = LogisticRegression().fit(x, labels)
    folder = out_dir(tmp_path)
    joblib.dump(numeric, folder / "model.joblib")
    scores = load_predictor(register(registry, folder, "sklearn")).predict(x)
    np.testing.assert_array_equal(scores, numeric.predict(x).astype(float))
    assert set(scores) == {0.0, 1.0, 2.0}

    joblib.dump(named, folder / "model.joblib")
    scores = load_predictor(register(registry, folder, "sklearn", "named")).predict(x)
    index = {label: i for i, label in enumerate(named.classes_)}
    np.testing.assert_array_equal(scores, [index[p] for p in named.predict(x)])


def test_sklearn_regressor(tmp_path: Path, registry: LocalRegistry, data: Any) -> None:
    import joblib
    from sklearn.linear_model import Ridge

    x, _ = data
    target = x @ np.array([1.0, -2.0, 0.5, 3.0])
    model = Ridge().fit(x, target)
    folder = out_dir(tmp_path)
    joblib.dump(model, folder / "regressor.pkl")
    scores = load_predictor(register(registry, folder, "sklearn")).predict(x)
    np.testing.assert_allclose(scores, model.predict(x), rtol=1e-12)


# --------------------------------------------------------------------------- xgboost


@pytest.mark.parametrize("filename", ["xgb.json", "model.ubj"])
def test_xgboost_classifier(
    tmp_path: Path, registry: LocalRegistry, data: Any, filename: str
) -> None:
    xgb = importlib.import_module("xgboost")
    x, y = data
    model = xgb.XGBClassifier(n_estimators=12, max_depth=3, n_jobs=1).fit(x, y)
    folder = out_dir(tmp_path)
    model.save_model(folder / filename)
    scores = load_predictor(register(registry, folder, "xgboost")).predict(x)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=1e-5)


def test_xgboost_raw_booster_and_early_stopping(
    tmp_path: Path, registry: LocalRegistry, data: Any
) -> None:
    xgb = importlib.import_module("xgboost")
    x, y = data
    model = xgb.XGBClassifier(
        n_estimators=200, learning_rate=0.5, max_depth=4, early_stopping_rounds=3, n_jobs=1
    ).fit(x[:160], y[:160], eval_set=[(x[160:], y[160:])], verbose=False)
    assert model.best_iteration < 199  # it did stop early: the best iteration matters
    folder = out_dir(tmp_path)
    model.get_booster().save_model(folder / "booster.json")
    scores = load_predictor(register(registry, folder, "xgboost")).predict(x)
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=1e-5)


def test_xgboost_regressor_and_multiclass(
    tmp_path: Path, registry: LocalRegistry, multiclass: Any
) -> None:
    xgb = importlib.import_module("xgboost")
    x, y = multiclass
    regressor = xgb.XGBRegressor(n_estimators=8, max_depth=3, n_jobs=1).fit(x, x[:, 0] * 2)
    folder = out_dir(tmp_path, "reg")
    regressor.save_model(folder / "reg.ubj")
    scores = load_predictor(register(registry, folder, "xgboost", "reg")).predict(x)
    np.testing.assert_allclose(scores, regressor.predict(x), rtol=1e-5)

    classifier = xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(x, y)
    folder = out_dir(tmp_path, "multi")
    classifier.save_model(folder / "multi.json")
    scores = load_predictor(register(registry, folder, "xgboost", "multi")).predict(x)
    np.testing.assert_array_equal(scores, classifier.predict(x).astype(float))


# --------------------------------------------------------------------------- lightgbm


@pytest.mark.parametrize("filename", ["model.txt", "booster.lgb"])
def test_lightgbm_classifier(
    tmp_path: Path, registry: LocalRegistry, data: Any, filename: str
) -> None:
    lgb = importlib.import_module("lightgbm")
    x, y = data
    model = lgb.LGBMClassifier(n_estimators=12, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y)
    folder = out_dir(tmp_path)
    model.booster_.save_model(folder / filename)
    scores = load_predictor(register(registry, folder, "lightgbm")).predict(x)
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=1e-12)


def test_lightgbm_multiclass(tmp_path: Path, registry: LocalRegistry, multiclass: Any) -> None:
    lgb = importlib.import_module("lightgbm")
    x, y = multiclass
    model = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y)
    folder = out_dir(tmp_path)
    model.booster_.save_model(folder / "model.txt")
    scores = load_predictor(register(registry, folder, "lightgbm")).predict(x)
    np.testing.assert_array_equal(scores, model.predict(x).astype(float))


# --------------------------------------------------------------------------- onnx


def _onnx(model: Any, double: bool = False, zipmap: bool = True) -> bytes:
    importlib.import_module("onnxruntime")
    skl2onnx = importlib.import_module("skl2onnx")
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor = DoubleTensorType if double else FloatTensorType
    options = None if zipmap else {id(model): {"zipmap": False}}
    onx = skl2onnx.convert_sklearn(
        model, initial_types=[("X", tensor([None, N_FEATURES]))], options=options
    )
    return bytes(onx.SerializeToString())


# float32 carries ~7 significant digits: near 0 a probability computed in float32 is
# off by ~1e-8 absolute, which is a large *relative* error, hence the small atol.
@pytest.mark.parametrize(
    ("double", "zipmap", "rtol", "atol"),
    [(False, True, 1e-5, 1e-6), (False, False, 1e-5, 1e-6), (True, False, 1e-12, 0.0)],
    ids=["float-zipmap", "float-tensor", "double-tensor"],
)
def test_onnx_classifier(
    tmp_path: Path,
    registry: LocalRegistry,
    data: Any,
    double: bool,
    zipmap: bool,
    rtol: float,
    atol: float,
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = data
    model = LogisticRegression().fit(x, y)
    folder = out_dir(tmp_path)
    (folder / "model.onnx").write_bytes(_onnx(model, double=double, zipmap=zipmap))
    scores = load_predictor(register(registry, folder, "onnx")).predict(x)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_onnx_multiclass_gives_the_predicted_class(
    tmp_path: Path, registry: LocalRegistry, multiclass: Any, zipmap: bool
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = multiclass
    model = LogisticRegression().fit(x, y)
    folder = out_dir(tmp_path)
    (folder / "model.onnx").write_bytes(_onnx(model, zipmap=zipmap))
    scores = load_predictor(register(registry, folder, "onnx")).predict(x)
    proba = model.predict_proba(x)
    clear = np.sort(proba, axis=1)[:, -1] - np.sort(proba, axis=1)[:, -2] > 1e-4  # no float32 ties
    np.testing.assert_array_equal(scores[clear], model.predict(x)[clear].astype(float))


def test_onnx_regressor_uses_the_first_output(
    tmp_path: Path, registry: LocalRegistry, data: Any
) -> None:
    from sklearn.linear_model import Ridge

    x, _ = data
    model = Ridge().fit(x, x @ np.array([1.0, -2.0, 0.5, 3.0]))
    folder = out_dir(tmp_path)
    (folder / "ridge.onnx").write_bytes(_onnx(model))
    scores = load_predictor(register(registry, folder, "onnx")).predict(x)
    np.testing.assert_allclose(scores, model.predict(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- custom

CUSTOM_MODEL = """
from pathlib import Path
import json

import numpy as np

MARKER = {marker!r}
if MARKER:
    Path(MARKER).write_text("model.py was imported", encoding="utf-8")


class Model:
    def load(self, path: Path) -> None:
        params = json.loads((path / "weights.json").read_text(encoding="utf-8"))
        self.coef = np.asarray(params["coef"])
        self.bias = float(params["bias"])

    def predict(self, features):
        return list(1.0 / (1.0 + np.exp(-(features @ self.coef + self.bias))))
"""


def custom_folder(tmp_path: Path, marker: Path | None = None) -> Path:
    folder = out_dir(tmp_path, "custom")
    source = CUSTOM_MODEL.format(marker=str(marker) if marker else "")
    (folder / "model.py").write_text(source, encoding="utf-8")
    weights = {"coef": [0.5, -1.0, 0.25, 2.0], "bias": -0.1}
    (folder / "weights.json").write_text(json.dumps(weights), encoding="utf-8")
    return folder


def test_custom_model(tmp_path: Path, registry: LocalRegistry, data: Any) -> None:
    x, _ = data
    version = register(registry, custom_folder(tmp_path), "custom")
    before = set(sys.modules)
    scores = load_predictor(version).predict(x)
    expected = 1.0 / (1.0 + np.exp(-(x @ np.array([0.5, -1.0, 0.25, 2.0]) - 0.1)))
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert str(version.path) not in sys.path
    added = [m for m in set(sys.modules) - before if m.startswith("pilothouse_custom_")]
    assert len(added) == 1
    # Loading again gives a module of its own; no bytecode is written into the registry.
    load_predictor(version)
    assert not (version.path / "__pycache__").exists()


def test_custom_code_never_runs_when_a_file_is_corrupt(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    marker = tmp_path / "imported.marker"
    version = register(registry, custom_folder(tmp_path, marker), "custom")
    weights = version.path / "weights.json"
    original = weights.read_bytes()
    weights.write_bytes(original.replace(b"0.5", b"9.5"))
    with pytest.raises(ChecksumMismatch, match=r"weights\.json"):
        load_predictor(version)
    assert not marker.exists(), "model.py ran before the checksums were verified"

    weights.write_bytes(original)  # intact again: now, and only now, the code runs
    load_predictor(version)
    assert marker.exists()


def test_custom_code_that_was_changed_is_refused(tmp_path: Path, registry: LocalRegistry) -> None:
    marker = tmp_path / "imported.marker"
    version = register(registry, custom_folder(tmp_path, marker), "custom")
    code = version.path / "model.py"
    code.write_text(code.read_text(encoding="utf-8") + "\nEVIL = True\n", encoding="utf-8")
    with pytest.raises(ChecksumMismatch, match=r"model\.py"):
        load_predictor(version)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("raise RuntimeError('boom')\n", ModelLoadError, "boom"),
        ("class NotModel: ...\n", UnsupportedFramework, "no class Model"),
        ("class Model:\n    def predict(self, x): ...\n", UnsupportedFramework, "load"),
        (
            "class Model:\n    def load(self, p): raise FileNotFoundError('w.bin')\n"
            "    def predict(self, x): ...\n",
            ModelLoadError,
            r"w\.bin",
        ),
    ],
    ids=["import-fails", "no-model-class", "no-load", "load-fails"],
)
def test_broken_custom_code(
    tmp_path: Path, registry: LocalRegistry, source: str, error: type[Exception], match: str
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.py").write_text(source, encoding="utf-8")
    with pytest.raises(error, match=match):
        load_predictor(register(registry, folder, "custom"))


# ------------------------------------------------------------- custom, rows x k answers

TOP_K_MODEL = """
import numpy as np


class Model:
    def load(self, path):
        self.k = int((path / "k.txt").read_text(encoding="utf-8"))

    def predict(self, features):
        # row r -> [10 * x_r0 + j for j < k]: every row's answer names its row
        return features[:, :1] * 10 + np.arange(self.k)
"""


def top_k_version(tmp_path: Path, registry: LocalRegistry, k: int, name: str = "topk") -> Any:
    folder = out_dir(tmp_path, name)
    (folder / "model.py").write_text(TOP_K_MODEL, encoding="utf-8")
    (folder / "k.txt").write_text(str(k), encoding="utf-8")
    return register(registry, folder, "custom", name)


def expected_top_k(x: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
    return np.asarray(x[:, :1] * 10 + np.arange(k), dtype=np.float64)


def test_custom_model_may_answer_rows_by_k(tmp_path: Path, registry: LocalRegistry) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    out = load_predictor(top_k_version(tmp_path, registry, k=5)).predict(x)
    assert out.shape == (4, 5)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, expected_top_k(x, 5))


def test_custom_rows_by_one_is_one_score_per_row(tmp_path: Path, registry: LocalRegistry) -> None:
    x = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = load_predictor(top_k_version(tmp_path, registry, k=1)).predict(x)
    np.testing.assert_array_equal(out, [0.0, 20.0, 40.0])


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ("np.zeros((len(features), 2, 2))", r"shape \(3, 2, 2\)"),
        ("np.zeros((len(features) + 1, 4))", r"shape \(4, 4\) for 3 rows"),
        ("np.zeros((len(features), 0))", r"shape \(3, 0\)"),
        ("[[1.0, 2.0], [3.0], [4.0, 5.0]]", "not an array of numbers"),
        ("[1.0, 2.0]", r"shape \(2,\) for 3 rows"),
    ],
    ids=["3-d", "wrong-rows", "zero-width", "ragged", "too-few"],
)
def test_custom_answers_of_the_wrong_shape_are_a_broken_model(
    tmp_path: Path, registry: LocalRegistry, answer: str, match: str
) -> None:
    folder = out_dir(tmp_path, "bad")
    source = (
        "import numpy as np\n"
        "class Model:\n"
        "    def load(self, path): pass\n"
        f"    def predict(self, features): return {answer}\n"
    )
    (folder / "model.py").write_text(source, encoding="utf-8")
    predictor = load_predictor(register(registry, folder, "custom", "bad"))
    with pytest.raises(RuntimeError, match=match):
        predictor.predict(np.zeros((3, 2)))


def test_batched_rows_by_k_answers_split_back_per_request(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    import asyncio

    from pilothouse.serving.batching import Batcher

    predictor = load_predictor(top_k_version(tmp_path, registry, k=3))
    requests = [np.array([[float(i), 0.0]] * (i % 3 + 1)) for i in range(7)]
    batches: list[int] = []

    async def run() -> list[np.ndarray[Any, Any]]:
        batcher = Batcher(predictor.predict, max_batch_size=64, on_batch=batches.append)
        return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))

    answers = asyncio.run(run())
    assert max(batches) > requests[0].shape[0], "no two requests shared a model call"
    assert sum(batches) == sum(r.shape[0] for r in requests)
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, expected_top_k(request, 3))


def test_replica_serves_rows_by_k_over_v1_and_v2(tmp_path: Path, registry: LocalRegistry) -> None:
    """A real replica: tensors of shape [rows, k], v1 lists of lists, and concurrent
    (batched) requests that each get their own rows back."""
    import asyncio

    import httpx

    from tests.integration.conftest import wait_for
    from tests.integration.servers import run_replica

    version = top_k_version(tmp_path, registry, k=4)
    logs = tmp_path / "logs"
    logs.mkdir()
    with run_replica(version.path, logs, "--max-batch-delay", "0.05", name="topk") as replica:
        wait_for(
            "model ready",
            lambda: httpx.get(f"{replica.url}/v2/health/ready").status_code == 200,
            timeout=60,
        )
        rows = [[1.0, 0.5], [2.0, 0.5]]
        v2 = httpx.post(
            f"{replica.url}/v2/models/topk/infer",
            json={
                "id": "r1",
                "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": rows}],
            },
        )
        assert v2.status_code == 200, v2.text
        body = v2.json()
        assert body["id"] == "r1"
        assert body["outputs"] == [
            {
                "name": "score",
                "shape": [2, 4],
                "datatype": "FP64",
                "data": [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0],
            }
        ]
        v1 = httpx.post(f"{replica.url}/v1/models/topk:predict", json={"instances": rows})
        assert v1.status_code == 200, v1.text
        assert v1.json() == {"predictions": [[10.0, 11.0, 12.0, 13.0], [20.0, 21.0, 22.0, 23.0]]}

        async def one(client: httpx.AsyncClient, user: int) -> tuple[int, Any]:
            response = await client.post(
                f"{replica.url}/v1/models/topk:predict", json={"instances": [[user, 0.0]]}
            )
            return user, response.json()["predictions"]

        async def many() -> list[tuple[int, Any]]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(await asyncio.gather(*(one(client, u) for u in range(40))))

        for user, predictions in asyncio.run(many()):
            assert predictions == [[10.0 * user + j for j in range(4)]]
        metrics = httpx.get(f"{replica.url}/metrics").text
        calls = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("pilothouse_model_batch_rows_count")
        )
        assert calls < 42, "40 concurrent requests never shared a model call"


# --------------------------------------------------------------------------- failures


def test_corrupt_artifact_is_refused_before_deserialising(
    tmp_path: Path, registry: LocalRegistry, data: Any
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = data
    folder = out_dir(tmp_path)
    (folder / "model.onnx").write_bytes(_onnx(LogisticRegression().fit(x, y)))
    version = register(registry, folder, "onnx")
    artifact = version.path / "model.onnx"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatch, match=r"model\.onnx"):
        load_predictor(version)


def test_framework_libraries_are_imported_lazily_and_only_after_verification(
    tmp_path: Path, registry: LocalRegistry, data: Any
) -> None:
    """A fresh interpreter: serving sklearn imports no other framework; a corrupt ONNX
    version fails verification without onnxruntime ever being imported."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = data
    model = LogisticRegression().fit(x, y)
    folder = out_dir(tmp_path, "sk")
    joblib.dump(model, folder / "model.joblib")
    sk = register(registry, folder, "sklearn", "sk")
    folder = out_dir(tmp_path, "ox")
    (folder / "model.onnx").write_bytes(_onnx(model))
    ox = register(registry, folder, "onnx", "ox")
    (ox.path / "model.onnx").write_bytes(b"tampered")

    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from pathlib import Path
        from pilothouse.registry.local import ChecksumMismatch, read_version
        from pilothouse.serving.runtimes import load_predictor

        frameworks = ("onnxruntime", "onnx", "xgboost", "lightgbm", "skl2onnx")
        load_predictor(read_version(Path({str(sk.path)!r}))).predict(np.zeros((1, 4)))
        assert not [m for m in frameworks if m in sys.modules], sorted(sys.modules)
        try:
            load_predictor(read_version(Path({str(ox.path)!r})))
        except ChecksumMismatch:
            pass
        else:
            raise AssertionError("a tampered artifact was loaded")
        assert "onnxruntime" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("framework", "expected"),
    [
        ("sklearn", ".joblib/.pkl/.pickle"),
        ("xgboost", ".json/.ubj"),
        ("lightgbm", ".txt/.lgb"),
        ("onnx", ".onnx"),
        ("custom", "model.py"),
    ],
)
def test_missing_artifact(
    tmp_path: Path, registry: LocalRegistry, framework: str, expected: str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "README.md").write_text("weights live elsewhere", encoding="utf-8")
    (folder / "notes.txt").write_text("not a lightgbm model", encoding="utf-8")
    version = registry.register("m", folder, framework=framework)
    with pytest.raises(UnsupportedFramework) as caught:
        load_predictor(version)
    message = str(caught.value)
    assert expected in message
    assert "README.md" in message
    assert "notes.txt" in message


def test_unknown_framework(tmp_path: Path, registry: LocalRegistry) -> None:
    (tmp_path / "model.pt").write_bytes(b"torch")
    version = registry.register("m", tmp_path / "model.pt", framework="pytorch")
    with pytest.raises(UnsupportedFramework, match="supported: sklearn, xgboost"):
        load_predictor(version)


def test_missing_library_names_the_pip_package(
    tmp_path: Path, registry: LocalRegistry, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lgb = importlib.import_module("lightgbm")
    x, y = data
    model = lgb.LGBMClassifier(n_estimators=2, verbose=-1, n_jobs=1).fit(x, y)
    folder = out_dir(tmp_path)
    model.booster_.save_model(folder / "model.txt")
    version = register(registry, folder, "lightgbm")
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # how Python spells "not installed"
    with pytest.raises(UnsupportedFramework, match="pip install lightgbm"):
        load_predictor(version)


def test_unreadable_artifact_is_a_load_error(tmp_path: Path, registry: LocalRegistry) -> None:
    importlib.import_module("onnxruntime")
    (tmp_path / "model.onnx").write_bytes(b"this is not a protobuf")
    version = registry.register("m", tmp_path / "model.onnx", framework="onnx")
    with pytest.raises(ModelLoadError, match=r"could not load model\.onnx"):
        load_predictor(version)


def test_several_artifacts_prefer_model_or_refuse(
    tmp_path: Path, registry: LocalRegistry, data: Any
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = data
    model = LogisticRegression().fit(x, y)
    folder = out_dir(tmp_path)
    joblib.dump(model, folder / "model.joblib")
    joblib.dump(StandardScaler().fit(x), folder / "scaler.joblib")
    scores = load_predictor(register(registry, folder, "sklearn")).predict(x)
    np.testing.assert_allclose(scores, model.predict_proba(x)[:, 1], rtol=1e-12)

    (folder / "model.joblib").rename(folder / "classifier.joblib")
    with pytest.raises(UnsupportedFramework, match="several 'sklearn' artifacts"):
        load_predictor(register(registry, folder, "sklearn", "ambiguous"))


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "lightgbm", "onnx"])
def test_wrong_number_of_features_is_a_bad_request(
    tmp_path: Path, registry: LocalRegistry, data: Any, framework: str
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = data
    folder = out_dir(tmp_path)
    if framework == "sklearn":
        joblib.dump(LogisticRegression().fit(x, y), folder / "model.joblib")
    elif framework == "xgboost":
        xgb = importlib.import_module("xgboost")
        xgb.XGBClassifier(n_estimators=2, n_jobs=1).fit(x, y).save_model(folder / "m.ubj")
    elif framework == "lightgbm":
        lgb = importlib.import_module("lightgbm")
        lgb.LGBMClassifier(n_estimators=2, verbose=-1, n_jobs=1).fit(x, y).booster_.save_model(
            folder / "model.txt"
        )
    else:
        (folder / "model.onnx").write_bytes(_onnx(LogisticRegression().fit(x, y)))
    predictor = load_predictor(register(registry, folder, framework))
    with pytest.raises(ValueError, match="takes 4 features per row, got 3"):
        predictor.predict(x[:, :3])
    assert predictor.predict(x[:0]).shape == (0,)
