"""Unit tests for the local-directory model registry (filesystem under tmp_path only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pilothouse.registry.local import (
    MANIFEST,
    ChecksumMismatch,
    LocalRegistry,
    ModelNotFound,
    RegistryError,
    verify,
)

METRICS = {"auc": 0.93, "rows": 1000}
SIGNATURE: dict[str, Any] = {"inputs": [{"name": n, "datatype": "FP64"} for n in "abc"]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_folder(base: Path, payload: bytes = b"\x80\x04fake-joblib") -> Path:
    folder = base / "out"
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(payload)
    (folder / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    (folder / "signature.json").write_text(json.dumps(SIGNATURE), encoding="utf-8")
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


def incoming(registry: LocalRegistry, name: str) -> list[Path]:
    base = registry.root / name
    return sorted(base.glob(".incoming-*")) if base.is_dir() else []


def test_register_folder_creates_version_one(registry: LocalRegistry, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src")
    mv = registry.register("m", folder, framework="sklearn")
    assert mv.name == "m"
    assert mv.version == 1
    assert mv.ref == "m:1"
    assert mv.framework == "sklearn"
    assert mv.path == registry.root / "m" / "1"
    assert (mv.path / MANIFEST).is_file()
    assert mv.metrics == METRICS
    assert mv.signature == SIGNATURE
    assert mv.stage is None
    assert mv.files == {
        name: sha((folder / name).read_bytes())
        for name in ("metrics.json", "model.joblib", "signature.json")
    }
    assert (mv.path / "model.joblib").read_bytes() == (folder / "model.joblib").read_bytes()
    assert registry.models() == ["m"]


def test_explicit_metrics_override_the_file(registry: LocalRegistry, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src")
    mv = registry.register("m", folder, framework="sklearn", metrics={"auc": 0.5})
    assert mv.metrics == {"auc": 0.5}
    assert mv.signature == SIGNATURE


def test_second_register_is_version_two(registry: LocalRegistry, tmp_path: Path) -> None:
    registry.register("m", model_folder(tmp_path / "one", b"one"), framework="sklearn")
    second = registry.register("m", model_folder(tmp_path / "two", b"two"), framework="sklearn")
    assert second.version == 2
    assert [v.version for v in registry.versions("m")] == [1, 2]
    assert registry.resolve("m").version == 2
    assert registry.resolve("m:latest").version == 2
    assert registry.resolve("m:1").version == 1
    assert (registry.resolve("m:1").path / "model.joblib").read_bytes() == b"one"
    assert registry.get("m", 2).files["model.joblib"] == sha(b"two")


def test_stage_without_versions_in_it_is_not_found(registry: LocalRegistry, tmp_path: Path) -> None:
    registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    with pytest.raises(ModelNotFound, match="production"):
        registry.resolve("m@production")


def test_unknown_model_is_not_found(registry: LocalRegistry) -> None:
    with pytest.raises(ModelNotFound, match="'nosuchmodel'"):
        registry.resolve("nosuchmodel")
    with pytest.raises(ModelNotFound, match="nosuchmodel"):
        registry.resolve("nosuchmodel:3")
    assert registry.versions("nosuchmodel") == []
    assert registry.models() == []


def test_unknown_version_is_not_found(registry: LocalRegistry, tmp_path: Path) -> None:
    registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    with pytest.raises(ModelNotFound, match="no version 7"):
        registry.resolve("m:7")


def test_model_not_found_is_a_registry_error_and_key_error() -> None:
    assert issubclass(ModelNotFound, RegistryError)
    assert issubclass(ModelNotFound, KeyError)


def test_folder_without_artifact_is_rejected(registry: LocalRegistry, tmp_path: Path) -> None:
    folder = tmp_path / "metrics-only"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RegistryError, match="no model artifact"):
        registry.register("m", folder, framework="sklearn")
    assert incoming(registry, "m") == []
    assert registry.versions("m") == []


def test_missing_source_is_rejected(registry: LocalRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register("m", tmp_path / "nope", framework="sklearn")


def test_no_staging_directory_is_left_after_success(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    assert incoming(registry, "m") == []
    assert sorted(p.name for p in (registry.root / "m").iterdir()) == ["1"]


def test_no_staging_directory_is_left_after_bad_json(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    folder = model_folder(tmp_path / "src")
    (folder / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        registry.register("m", folder, framework="sklearn")
    assert incoming(registry, "m") == []
    assert registry.versions("m") == []


def test_register_single_file(registry: LocalRegistry, tmp_path: Path) -> None:
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(b"just-bytes")
    mv = registry.register("single", artifact, framework="sklearn")
    assert mv.version == 1
    assert mv.files == {"model.joblib": sha(b"just-bytes")}
    assert mv.metrics == {}
    assert mv.signature is None
    assert (mv.path / "model.joblib").read_bytes() == b"just-bytes"
    assert incoming(registry, "single") == []
    verify(mv)


def test_nested_files_are_recorded(registry: LocalRegistry, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src")
    (folder / "assets").mkdir()
    (folder / "assets" / "vocab.txt").write_bytes(b"a\nb\n")
    mv = registry.register("m", folder, framework="sklearn")
    assert mv.files[str(Path("assets") / "vocab.txt")] == sha(b"a\nb\n")
    verify(mv)


def test_verify_passes_on_an_intact_version(registry: LocalRegistry, tmp_path: Path) -> None:
    mv = registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    verify(mv)
    verify(registry.resolve("m:1"))


def test_verify_detects_a_modified_file(registry: LocalRegistry, tmp_path: Path) -> None:
    mv = registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    target = mv.path / "model.joblib"
    expected = mv.files["model.joblib"]
    target.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch) as info:
        verify(mv)
    err = info.value
    assert err.path == target
    assert err.expected == expected
    assert err.actual == sha(b"tampered")
    message = str(err)
    assert str(target) in message
    assert expected in message
    assert sha(b"tampered") in message
    assert isinstance(err, RegistryError)


def test_verify_reports_a_deleted_file_as_missing(registry: LocalRegistry, tmp_path: Path) -> None:
    mv = registry.register("m", model_folder(tmp_path / "src"), framework="sklearn")
    target = mv.path / "signature.json"
    target.unlink()
    with pytest.raises(ChecksumMismatch) as info:
        verify(mv)
    assert info.value.path == target
    assert info.value.actual == "<missing>"
    assert "<missing>" in str(info.value)
    assert mv.files["signature.json"] in str(info.value)


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/passwd", "a/../../b", ""])
def test_manifest_with_unsafe_paths_is_refused(tmp_path: Path, bad: str) -> None:
    from pilothouse.registry.local import RegistryError, read_version

    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.json").write_text(
        json.dumps({"name": "m", "version": 1, "framework": "sklearn", "files": {bad: "0" * 64}})
    )
    with pytest.raises(RegistryError, match="unsafe file path"):
        read_version(version_dir)
