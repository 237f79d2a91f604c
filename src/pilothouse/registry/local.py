"""A model registry in a local directory.

Layout: ``ROOT/NAME/VERSION/`` holds the artifact files and ``model.json``
(framework, signature, metrics, lineage, stage, sha256 of every file). A
version is written aside in ``ROOT/NAME/.incoming-*`` and renamed into place,
so readers never see half a version; the rename fails if another writer took
the number first, and we retry with the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pilothouse.spec.types import is_model_name, split_model_ref

MANIFEST = "model.json"
STAGES = ("staging", "production", "archived")
_METADATA_FILES = ("metrics.json", "signature.json")
#: a version number has at most this many digits (a folder or key name is not trusted)
MAX_VERSION_DIGITS = 18


class RegistryError(Exception):
    """Base for registry problems."""


class ModelNotFound(RegistryError, KeyError):
    """No model or version matches the reference."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not found"


class InvalidReference(RegistryError, ValueError):
    """A model name or version that may not become a folder or key: refused before any
    path is built from it."""


def check_model_name(name: object) -> str:
    """``name`` if it is a valid model name (no '/', '..', absolute path, odd character)."""
    if not is_model_name(name):
        raise InvalidReference(
            f"invalid model name {name!r}: expected lowercase letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit"
        )
    assert isinstance(name, str)
    return name


def check_version_number(number: object) -> int:
    """``number`` if it is a version number (a positive int, not a bool or a string)."""
    if type(number) is not int or not 0 < number < 10**MAX_VERSION_DIGITS:
        raise InvalidReference(f"invalid model version {number!r}: expected a positive integer")
    return number


def parse_version_entry(entry: str) -> int | None:
    """The version a folder or key name stands for: ASCII digits only ('٣', '²', '1e3',
    '01x' are not versions); None for anything else."""
    if entry.isascii() and entry.isdigit() and len(entry) <= MAX_VERSION_DIGITS:
        number = int(entry)
        return number if number > 0 and str(number) == entry else None
    return None


def check_manifest(data: Any, name: str, number: int, where: str) -> dict[str, Any]:
    """A manifest read back from ``NAME/N/model.json`` must say it is NAME version N: a
    crafted or misplaced one is refused before anything is built or written from it."""
    if not isinstance(data, dict):
        raise RegistryError(f"{where}: manifest is not a JSON object; refusing it")
    got_name, got_version = data.get("name"), data.get("version")
    if got_name != name or type(got_version) is not int or got_version != number:
        raise RegistryError(
            f"{where}: manifest says {got_name!r} version {got_version!r} but is stored as "
            f"{name!r} version {number}; refusing it (tampered or misplaced)"
        )
    return data


class ChecksumMismatch(RegistryError):
    """An artifact file differs from what was registered; it must not be loaded."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    framework: str
    files: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    created: str = ""
    #: where the version lives when the registry is remote (object storage); "" when local
    uri: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "framework": self.framework,
            "files": self.files,
            "metrics": self.metrics,
            "signature": self.signature,
            "lineage": self.lineage,
            "stage": self.stage,
            "created": self.created,
            **({"uri": self.uri} if self.uri else {}),
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(version: ModelVersion) -> None:
    """Check every file against its registered sha256 before anything is deserialised."""
    for rel, expected in sorted(version.files.items()):
        path = version.path / rel
        if not path.is_file():
            raise ChecksumMismatch(path, expected, "<missing>")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatch(path, expected, actual)


def build_manifest(
    name: str,
    number: int,
    framework: str,
    files: dict[str, str],
    metrics: dict[str, Any] | None,
    signature: dict[str, Any] | None,
    lineage: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "version": number,
        "framework": framework,
        "files": files,
        "metrics": metrics or {},
        "signature": signature,
        "lineage": lineage or {},
        "stage": None,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _safe_files(files: dict[str, str], where: str) -> dict[str, str]:
    """Manifest file names must stay inside the version: no absolute paths, no '..'."""
    for rel in files:
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or "\x00" in rel:
            raise RegistryError(f"{where}: manifest lists an unsafe file path {rel!r}")
    return files


def version_from_manifest(data: dict[str, Any], path: Path, uri: str = "") -> ModelVersion:
    _safe_files(dict(data.get("files") or {}), uri or str(path))
    return ModelVersion(
        name=data["name"],
        version=int(data["version"]),
        path=path,
        framework=data["framework"],
        files=dict(data["files"]),
        metrics=dict(data.get("metrics") or {}),
        signature=data.get("signature"),
        lineage=dict(data.get("lineage") or {}),
        stage=data.get("stage"),
        created=data.get("created", ""),
        uri=uri,
    )


def read_version(path: Path) -> ModelVersion:
    """Read one version directory's manifest."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelNotFound(f"no model version at {path}") from exc
    return version_from_manifest(data, path)


def read_metadata(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """metrics.json and signature.json of an artifact folder, when present."""
    found: list[dict[str, Any] | None] = []
    for name in ("metrics.json", "signature.json"):
        file = folder / name
        found.append(json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None)
    return found[0], found[1]


def reserved_clash(name: str, source: Path) -> None:
    """Refuse sources that cannot be registered as they are (missing, or using our manifest name)."""
    if not source.exists():
        raise RegistryError(f"cannot register {name}: {source} does not exist")
    if source.name == MANIFEST or (source.is_dir() and (source / MANIFEST).exists()):
        raise RegistryError(
            f"cannot register {name}: '{MANIFEST}' is reserved for the registry's manifest; "
            "rename the model file (XGBoost: save it as model.ubj)"
        )


class BaseRegistry(ABC):
    """What every registry shares: resolving references and moving stages."""

    @abstractmethod
    def versions(self, name: str) -> list[ModelVersion]:
        """Implemented by each storage."""

    @abstractmethod
    def get(self, name: str, version: int) -> ModelVersion:
        """Implemented by each storage."""

    @abstractmethod
    def _set_stage(self, version: ModelVersion, stage: str | None) -> ModelVersion:
        """Implemented by each storage."""

    @abstractmethod
    def models(self) -> list[str]:
        """Implemented by each storage."""

    @abstractmethod
    def register(
        self,
        name: str,
        source: Path,
        *,
        framework: str,
        metrics: dict[str, Any] | None = None,
        signature: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Implemented by each storage."""

    @abstractmethod
    def delete(self, name: str, version: int) -> ModelVersion:
        """Implemented by each storage."""

    def fetch(self, version: ModelVersion) -> ModelVersion:
        """A local copy a replica can load (local registries are already local)."""
        return version

    def resolve(self, ref: str) -> ModelVersion:
        """``name``/``name:latest`` -> newest, ``name:N`` -> N, ``name@stage`` -> newest in stage."""
        name, version, stage = split_model_ref(ref)
        if version is not None:
            return self.get(name, int(version))
        candidates = self.versions(name)
        if stage is not None:
            candidates = [v for v in candidates if v.stage == stage]
        if not candidates:
            what = f"in stage '{stage}'" if stage else "registered"
            raise ModelNotFound(f"model '{name}' has no version {what}")
        return candidates[-1]

    def promote(self, name: str, version: int, stage: str) -> list[ModelVersion]:
        """Move a version to ``stage``; the version that held staging/production before is archived.

        Returns every version whose stage changed. Only the manifest is
        rewritten; artifact files (and their checksums) are untouched.
        """
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGES)}")
        target = self.get(name, version)
        changed = []
        if stage in ("staging", "production"):
            for other in self.versions(name):
                if other.version != version and other.stage == stage:
                    changed.append(self._set_stage(other, "archived"))
        changed.append(self._set_stage(target, stage))
        return changed


class LocalRegistry(BaseRegistry):
    """Versions under one directory; safe for concurrent registering processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _versions_dir(self, name: str) -> Path:
        return self.root / check_model_name(name)

    def _read(self, name: str, number: int) -> ModelVersion:
        path = self._versions_dir(name) / str(check_version_number(number))
        try:
            data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model '{name}' has no version {number}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path / MANIFEST}: not a JSON manifest ({exc})") from exc
        return version_from_manifest(check_manifest(data, name, number, str(path)), path)

    def versions(self, name: str) -> list[ModelVersion]:
        base = self._versions_dir(name)
        if not base.is_dir():
            return []
        out = []
        for child in base.iterdir():
            number = parse_version_entry(child.name)
            if number is not None and (child / MANIFEST).is_file():
                out.append(self._read(name, number))
        return sorted(out, key=lambda v: v.version)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if is_model_name(p.name) and p.is_dir() and self.versions(p.name)
        )

    def get(self, name: str, version: int) -> ModelVersion:
        path = self._versions_dir(name) / str(check_version_number(version))
        if not (path / MANIFEST).is_file():
            raise ModelNotFound(f"model '{name}' has no version {version}")
        return self._read(name, version)

    def register(
        self,
        name: str,
        source: Path,
        *,
        framework: str,
        metrics: dict[str, Any] | None = None,
        signature: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Copy ``source`` (a file or folder) in as the next version of ``name``.

        ``metrics.json`` and ``signature.json`` in a source folder are read as
        the version's metrics and signature unless given explicitly.
        """
        reserved_clash(name, source)
        base = self._versions_dir(name)
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".incoming-{uuid.uuid4().hex}"
        try:
            if source.is_dir():
                shutil.copytree(source, staging)
            else:
                staging.mkdir()
                shutil.copy2(source, staging / source.name)
            found_metrics, found_signature = read_metadata(staging)
            metrics = found_metrics if metrics is None else metrics
            signature = found_signature if signature is None else signature
            files = {
                str(p.relative_to(staging)): sha256_file(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            if not any(Path(f).name not in _METADATA_FILES for f in files):
                raise RegistryError(f"cannot register {name}: {source} holds no model artifact")
            return self._commit(name, staging, framework, files, metrics, signature, lineage)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _set_stage(self, version: ModelVersion, stage: str | None) -> ModelVersion:
        manifest_path = version.path / MANIFEST
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        data["stage"] = stage
        tmp = version.path / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, manifest_path)
        return read_version(version.path)

    def delete(self, name: str, version: int) -> ModelVersion:
        """Remove one version; it disappears at once (renamed aside, then removed)."""
        target = self.get(name, version)
        # A tombstone keeps the number taken: a deleted version is never reissued,
        # so a deployment pinned to NAME:N can never silently get another model.
        (self._versions_dir(name) / ".tombstones" / str(version)).mkdir(parents=True, exist_ok=True)
        trash = self._versions_dir(name) / f".deleted-{uuid.uuid4().hex}"
        os.rename(target.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return target

    def _commit(
        self,
        name: str,
        staging: Path,
        framework: str,
        files: dict[str, str],
        metrics: dict[str, Any] | None,
        signature: dict[str, Any] | None,
        lineage: dict[str, Any] | None,
    ) -> ModelVersion:
        base = self._versions_dir(name)
        for _attempt in range(100):
            tombstones = base / ".tombstones"
            taken = [*base.iterdir(), *(tombstones.iterdir() if tombstones.is_dir() else [])]
            existing = [n for p in taken if (n := parse_version_entry(p.name)) is not None]
            number = max(existing, default=0) + 1
            manifest = build_manifest(name, number, framework, files, metrics, signature, lineage)
            tmp = staging / f".{MANIFEST}.tmp"
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(tmp, staging / MANIFEST)
            try:
                # Renaming a directory onto an existing non-empty one fails: the
                # number is ours only if nobody committed it first.
                os.rename(staging, base / str(number))
            except OSError:
                continue
            return read_version(base / str(number))
        raise RegistryError(f"could not allocate a version number for {name}")
