"""Tell which framework saved a model by looking at its files (no framework is imported).

``pilothouse models register NAME PATH`` without ``--framework`` calls
:func:`detect_framework`; the serving runtimes use the same predicates to pick
the artifact of a version, so what is detected here is what can be served.

Rules, for a file or every file under a folder (hidden files skipped):

* ``model.py`` (a folder with it at its top, or the file itself) -> ``custom``;
* ``.joblib`` / ``.pkl`` / ``.pickle`` -> ``sklearn``;
* ``.onnx`` -> ``onnx``;
* ``.ubj``, or ``.json`` whose top-level object has the keys ``"learner"`` and
  ``"version"`` (``save_model`` output) -> ``xgboost``;
* ``.txt`` / ``.lgb`` that is a LightGBM text model (starts with ``tree`` on its
  own line, or has ``version=v`` and ``num_class=`` in its first lines) -> ``lightgbm``.

Artifacts of two different frameworks side by side are ambiguous and refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pilothouse.registry.local import MANIFEST

FRAMEWORKS: tuple[str, ...] = ("sklearn", "xgboost", "lightgbm", "onnx", "custom")

CUSTOM_ENTRYPOINT = "model.py"
SKLEARN_SUFFIXES: tuple[str, ...] = (".joblib", ".pkl", ".pickle")
ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
XGBOOST_SUFFIXES: tuple[str, ...] = (".json", ".ubj")
LIGHTGBM_SUFFIXES: tuple[str, ...] = (".txt", ".lgb")

# What the registry stores beside the artifact; never a model.
METADATA_FILES: frozenset[str] = frozenset({MANIFEST, "metrics.json", "signature.json"})

_LIGHTGBM_HEAD_BYTES = 4096
_LIGHTGBM_HEAD_LINES = 20

_LOOKED_FOR = (
    "a folder with model.py (custom), .joblib/.pkl/.pickle (sklearn), .onnx (onnx), "
    ".ubj or an XGBoost save_model .json with top-level keys 'learner' and 'version' "
    "(xgboost), a LightGBM text model .txt/.lgb (lightgbm)"
)


def is_xgboost_json(path: Path) -> bool:
    """A JSON file written by XGBoost ``save_model``: top-level keys ``learner`` and ``version``."""
    try:
        with path.open("rb") as handle:
            first = handle.read(64).lstrip()
            if not first.startswith(b"{"):
                return False
            handle.seek(0)
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "learner" in data and "version" in data


def is_lightgbm_text(path: Path) -> bool:
    """A LightGBM ``Booster.save_model`` text file, judged from its first lines."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_LIGHTGBM_HEAD_BYTES)
    except OSError:
        return False
    text = head.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if text.startswith("tree\n"):
        return True
    lines = text.split("\n")[:_LIGHTGBM_HEAD_LINES]
    return any(line.startswith("version=v") for line in lines) and any(
        line.startswith("num_class=") for line in lines
    )


def framework_of_file(path: Path) -> str | None:
    """The framework one artifact file belongs to, or None if it is not a model we know."""
    if path.name in METADATA_FILES:
        return None
    suffix = path.suffix.lower()
    if suffix in SKLEARN_SUFFIXES:
        return "sklearn"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix == ".ubj" or (suffix == ".json" and is_xgboost_json(path)):
        return "xgboost"
    if suffix in LIGHTGBM_SUFFIXES and is_lightgbm_text(path):
        return "lightgbm"
    return None


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        rel = child.relative_to(path)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if child.is_file():
            yield child


def detect_framework(path: Path) -> str:
    """The framework of the model in ``path`` (a file or a folder); ValueError if unclear."""
    if not path.exists():
        raise ValueError(f"cannot detect the framework: {path} does not exist")
    found: dict[str, list[str]] = {}
    for file in _files(path):
        if file.name == MANIFEST and is_xgboost_json(file):
            raise ValueError(
                f"{file} is an XGBoost model, but '{MANIFEST}' is the name the registry keeps "
                "for its manifest: save the model under another name (e.g. xgboost.json)"
            )
        framework = framework_of_file(file)
        if framework is not None:
            rel = file.name if file == path else str(file.relative_to(path))
            found.setdefault(framework, []).append(rel)
    # model.py is code that loads whatever else is there, so it wins over any artifact.
    entrypoint = path if path.is_file() else path / CUSTOM_ENTRYPOINT
    if entrypoint.name == CUSTOM_ENTRYPOINT and entrypoint.is_file():
        return "custom"
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise ValueError(
            f"cannot detect the framework of {path}: looked for {_LOOKED_FOR}; "
            "pass --framework to say which it is"
        )
    listing = "; ".join(f"{fw}: {', '.join(files)}" for fw, files in sorted(found.items()))
    raise ValueError(
        f"cannot detect the framework of {path}: artifacts of several frameworks ({listing}); "
        "pass --framework to say which it is"
    )
