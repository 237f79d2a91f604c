"""Unit tests for framework detection: real saved models in tmp_path, no sockets, no processes."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pilothouse.registry.frameworks import (
    FRAMEWORKS,
    detect_framework,
    is_lightgbm_text,
    is_xgboost_json,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(42)
    x = rng.normal(size=(120, 3))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    return x, y


def test_frameworks_match_the_spec_literal() -> None:
    from typing import get_args

    from pilothouse.spec.resources import Framework

    assert FRAMEWORKS == ("sklearn", "xgboost", "lightgbm", "onnx", "custom")
    assert set(get_args(Framework)) == set(FRAMEWORKS)


def test_sklearn_joblib_file_and_folder(tmp_path: Path, data: Any) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path / "out"
    folder.mkdir()
    joblib.dump(LogisticRegression().fit(*data), folder / "model.joblib")
    (folder / "metrics.json").write_text('{"auc": 0.9}', encoding="utf-8")
    assert detect_framework(folder / "model.joblib") == "sklearn"
    assert detect_framework(folder) == "sklearn"
    for suffix in (".pkl", ".pickle"):
        other = tmp_path / f"m{suffix}"
        other.write_bytes((folder / "model.joblib").read_bytes())
        assert detect_framework(other) == "sklearn"


def test_xgboost_json_and_ubj(tmp_path: Path, data: Any) -> None:
    xgb = importlib.import_module("xgboost")
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(*data)
    model.save_model(tmp_path / "xgb.json")
    model.save_model(tmp_path / "xgb.ubj")
    assert is_xgboost_json(tmp_path / "xgb.json")
    assert detect_framework(tmp_path / "xgb.json") == "xgboost"
    assert detect_framework(tmp_path / "xgb.ubj") == "xgboost"
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "booster.json").write_bytes((tmp_path / "xgb.json").read_bytes())
    (folder / "signature.json").write_text('{"inputs": []}', encoding="utf-8")
    assert detect_framework(folder) == "xgboost"


def test_xgboost_model_named_like_the_manifest_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.json").write_text(
        json.dumps({"learner": {}, "version": [3, 0, 0]}), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="manifest"):
        detect_framework(folder)


def test_lightgbm_text_model(tmp_path: Path, data: Any) -> None:
    lgb = importlib.import_module("lightgbm")
    model = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, n_jobs=1).fit(*data)
    model.booster_.save_model(tmp_path / "model.txt")
    (tmp_path / "model.lgb").write_bytes((tmp_path / "model.txt").read_bytes())
    assert detect_framework(tmp_path / "model.txt") == "lightgbm"
    assert detect_framework(tmp_path / "model.lgb") == "lightgbm"


def test_lightgbm_header_without_leading_tree_line(tmp_path: Path) -> None:
    path = tmp_path / "booster.txt"
    path.write_text("version=v4\nnum_class=1\nnum_tree_per_iteration=1\n", encoding="utf-8")
    assert is_lightgbm_text(path)
    assert detect_framework(path) == "lightgbm"


def test_onnx(tmp_path: Path, data: Any) -> None:
    importlib.import_module("onnx")
    skl2onnx = importlib.import_module("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    onx = skl2onnx.convert_sklearn(
        LogisticRegression().fit(*data), initial_types=[("X", FloatTensorType([None, 3]))]
    )
    (tmp_path / "model.onnx").write_bytes(onx.SerializeToString())
    assert detect_framework(tmp_path / "model.onnx") == "onnx"
    assert detect_framework(tmp_path) == "onnx"


def test_custom_folder_wins_over_its_own_artifacts(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("class Model: ...\n", encoding="utf-8")
    (tmp_path / "weights.pkl").write_bytes(b"\x80\x04N.")
    (tmp_path / "other.onnx").write_bytes(b"not really")
    assert detect_framework(tmp_path) == "custom"
    assert detect_framework(tmp_path / "model.py") == "custom"


def test_custom_folder_with_numpy_weights(tmp_path: Path) -> None:
    """What examples/recommendation writes: model.py beside .npz/.npy data and metadata."""
    (tmp_path / "model.py").write_text("class Model: ...\n", encoding="utf-8")
    np.savez(tmp_path / "weights.npz", users=np.zeros((3, 2)), items=np.ones((4, 2)))
    np.save(tmp_path / "seen.npy", np.arange(3))
    (tmp_path / "metrics.json").write_text('{"recall_at_10": 0.3}', encoding="utf-8")
    (tmp_path / "signature.json").write_text('{"inputs": []}', encoding="utf-8")
    assert detect_framework(tmp_path) == "custom"


def test_numpy_weights_alone_are_not_a_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "weights.npz", users=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="cannot detect"):
        detect_framework(tmp_path)


def test_nested_model_py_is_not_custom(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "model.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot detect"):
        detect_framework(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("config.json", json.dumps({"learner": {}})),  # no "version"
        ("list.json", json.dumps(["learner", "version"])),
        ("broken.json", '{"learner": '),
        ("notes.txt", "tree of life\nversion=v1\n"),  # no num_class, first line not "tree"
        ("README.md", "# a model"),
        ("model.bin", "\x00\x01"),
    ],
)
def test_not_a_model(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"looked for .*model\.py.*\.joblib.*\.onnx.*learner"):
        detect_framework(tmp_path / name)
    with pytest.raises(ValueError, match="--framework"):
        detect_framework(tmp_path)


def test_metadata_and_hidden_files_are_not_artifacts(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}", encoding="utf-8")
    (tmp_path / "signature.json").write_text("{}", encoding="utf-8")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "old.joblib").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot detect"):
        detect_framework(tmp_path)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot detect"):
        detect_framework(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        detect_framework(tmp_path / "nope")


def test_two_frameworks_side_by_side_are_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model.joblib").write_bytes(b"joblib")
    with pytest.raises(ValueError, match=r"several frameworks \(onnx: model\.onnx; sklearn"):
        detect_framework(tmp_path)
