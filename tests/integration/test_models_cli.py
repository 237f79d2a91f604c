"""``pilothouse models``: register a model trained elsewhere, promote it, deploy it by stage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import Platform
from tests.integration.servers import register_fraud_model, sample_rows

pytestmark = pytest.mark.integration


def _export(tmp: Path) -> Path:
    """A scikit-learn model saved by someone else (a folder with model + signature)."""
    version = register_fraud_model(tmp / "elsewhere", rows=2000)
    out = tmp / "export"
    out.mkdir()
    for name in ("model.joblib", "signature.json"):
        (out / name).write_bytes((version.path / name).read_bytes())
    return out


def test_register_promote_and_deploy_by_stage(platform: Platform, tmp_path: Path) -> None:
    p = platform
    exported = _export(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"auc": 0.91}))
    first = p.cli(
        "models", "register", "fraud", str(exported), "--metrics", str(tmp_path / "metrics.json")
    )
    assert first.returncode == 0, first.stderr
    assert "registered fraud:1 (sklearn" in first.stdout
    assert p.cli("models", "register", "fraud", str(exported / "model.joblib")).returncode == 0

    listed = json.loads(p.cli("models", "list", "-o", "json").stdout)
    assert listed == [
        {
            **listed[0],
            "name": "fraud",
            "versions": 2,
            "latest": 2,
            "production": None,
            "framework": "sklearn",
        }
    ]
    shown = json.loads(p.cli("models", "show", "fraud:1", "-o", "json").stdout)
    assert shown["metrics"] == {"auc": 0.91}
    assert set(shown["files"]) == {"model.joblib", "signature.json"}
    assert all(len(digest) == 64 for digest in shown["files"].values())

    assert p.cli("models", "promote", "fraud:1", "--stage", "production").returncode == 0
    moved = p.cli("models", "promote", "fraud:2", "--stage", "production")
    assert moved.returncode == 0
    assert "fraud:1 -> archived" in moved.stdout
    assert "fraud:2 -> production" in moved.stdout
    assert (
        json.loads(p.cli("models", "show", "fraud@production", "-o", "json").stdout)["version"] == 2
    )

    spec = tmp_path / "deploy.yaml"
    spec.write_text(
        """apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud-prod}
spec: {model: fraud@production, replicas: 1}
"""
    )
    assert p.cli("apply", "-f", str(spec)).returncode == 0
    waited = p.cli("wait", "modeldeployment/fraud-prod", "--for=condition=Ready", "--timeout=90s")
    assert waited.returncode == 0, waited.stderr
    assert p.get_json("modeldeployments", "fraud-prod")["status"]["model"] == "fraud:2"
    predicted = p.cli(
        "predict", "fraud-prod", "--data", json.dumps({"instances": sample_rows(2).tolist()})
    )
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["predictions"]) == 2

    refused = p.cli("models", "delete", "fraud:2")
    assert refused.returncode == 1
    assert "fraud-prod" in refused.stderr
    assert p.cli("models", "delete", "fraud:1").returncode == 0
    again = p.cli("models", "register", "fraud", str(exported))
    assert "registered fraud:3" in again.stdout, "a deleted version number is never reused"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["models", "show", "nope"], 1, "has no version"),
        (["models", "show", "Bad Name"], 2, "expected a model reference"),
        (["models", "promote", "fraud", "--stage", "production"], 2, "NAME:VERSION"),
        (["models", "promote", "fraud:1", "--stage", "gold"], 2, "gold"),
        (["models", "register", "Bad_Name", "."], 2, "DNS-1123"),
        (["models", "delete", "nope:4"], 1, "no version 4"),
    ],
)
def test_models_bad_input(
    fresh_platform: Platform, args: list[str], code: int, needle: str
) -> None:
    result = fresh_platform.cli(*args)
    assert result.returncode == code, result.stdout + result.stderr
    assert needle in result.stderr + result.stdout


def test_register_detects_unknown_files(fresh_platform: Platform) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "notes.md").write_text("not a model")
        result = fresh_platform.cli("models", "register", "thing", tmp)
    assert result.returncode == 2
    assert "--framework" in result.stderr
