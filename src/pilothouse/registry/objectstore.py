"""A model registry in object storage (S3-compatible or any fsspec filesystem).

Object stores have no rename, so a version is made visible by a commit marker:
artifact files are uploaded under ``NAME/N/`` first and ``NAME/N/model.json``
is written last; readers only see versions whose manifest exists. Version
numbers are claimed, not computed: a writer puts ``NAME/.claims/N/<uuid>``
and owns N only if, listing that folder afterwards, its claim is the only one
(with the read-after-write consistency S3 gives, two writers can both lose and
retry, never both win). Claims are never removed, so a number is never reused.
Replicas load a local copy fetched into a cache and verified by checksum.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

from pilothouse.registry.local import (
    MANIFEST,
    BaseRegistry,
    ModelNotFound,
    ModelVersion,
    RegistryError,
    build_manifest,
    check_manifest,
    check_model_name,
    check_version_number,
    parse_version_entry,
    read_metadata,
    reserved_clash,
    sha256_file,
    verify,
    version_from_manifest,
)
from pilothouse.spec.types import is_model_name

_METADATA_ONLY = {"metrics.json", "signature.json"}


class ObjectStoreRegistry(BaseRegistry):
    def __init__(
        self, uri: str, cache: Path, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.uri = uri.rstrip("/")
        self.cache = cache
        options = {
            "use_listings_cache": False,
            "skip_instance_cache": True,
            **(storage_options or {}),
        }
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **options)
        self.root = self.root.rstrip("/")

    def _key(self, *parts: str | int) -> str:
        return "/".join([self.root, *(str(p) for p in parts)])

    def _listing(self, key: str) -> list[str]:
        try:
            return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(key, detail=False)]
        except FileNotFoundError:
            return []

    def _manifest_data(self, name: str, number: int) -> dict[str, Any] | None:
        """The manifest stored under ``NAME/N/``, checked to be NAME version N; None when
        there is none (the version is not committed)."""
        key = self._key(check_model_name(name), check_version_number(number), MANIFEST)
        try:
            raw = self.fs.cat_file(key)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(
                f"{self.uri}/{name}/{number}: manifest is not JSON ({exc})"
            ) from exc
        return check_manifest(data, name, number, f"{self.uri}/{name}/{number}/{MANIFEST}")

    def _read_manifest(self, name: str, number: int) -> ModelVersion | None:
        data = self._manifest_data(name, number)
        if data is None:
            return None
        path = self.cache / name / str(number)
        return version_from_manifest(data, path, uri=f"{self.uri}/{name}/{number}")

    def _cache_dir(self, name: str, number: int) -> Path:
        """Where version N of NAME is cached: built only from a valid name and number, and
        refused if a folder on the way is a symlink (it could lead out of the cache)."""
        folder = self.cache / check_model_name(name)
        final = folder / str(check_version_number(number))
        for step in (self.cache, folder, final):
            if step.is_symlink():
                raise RegistryError(
                    f"refusing to cache {name}:{number}: {step} is a symlink (the cache must "
                    "hold real folders only)"
                )
        return final

    def versions(self, name: str) -> list[ModelVersion]:
        out = []
        for entry in self._listing(self._key(check_model_name(name))):
            number = parse_version_entry(entry)
            if number is not None:
                version = self._read_manifest(name, number)
                if version is not None:
                    out.append(version)
        return sorted(out, key=lambda v: v.version)

    def models(self) -> list[str]:
        return sorted(n for n in self._listing(self.root) if is_model_name(n) and self.versions(n))

    def get(self, name: str, version: int) -> ModelVersion:
        found = self._read_manifest(name, version)
        if found is None:
            raise ModelNotFound(f"model '{name}' has no version {version}")
        return found

    def _claim(self, name: str) -> int:
        me = uuid.uuid4().hex
        check_model_name(name)
        for _attempt in range(50):
            claims = self._listing(self._key(name, ".claims"))
            taken = [n for entry in claims if (n := parse_version_entry(entry)) is not None]
            number = max(taken, default=0) + 1
            self.fs.pipe_file(self._key(name, ".claims", number, me), b"")
            if self._listing(self._key(name, ".claims", number)) == [me]:
                return number
            # lost (or tied): step aside for a random moment so writers fall out of lockstep
            time.sleep(random.uniform(0.0, 0.05 * (_attempt + 1)))
        raise RegistryError(f"could not claim a version number for {name} (too much contention)")

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
        check_model_name(name)
        reserved_clash(name, source)
        base = source if source.is_dir() else source.parent
        paths = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        files = {str(p.relative_to(base)): sha256_file(p) for p in paths if p.name != MANIFEST}
        if not any(Path(f).name not in _METADATA_ONLY for f in files):
            raise RegistryError(f"cannot register {name}: {source} holds no model artifact")
        if source.is_dir():
            found_metrics, found_signature = read_metadata(source)
            metrics = found_metrics if metrics is None else metrics
            signature = found_signature if signature is None else signature
        number = self._claim(name)
        for rel in files:
            self.fs.put_file(str(base / rel), self._key(name, number, rel))
        manifest = build_manifest(name, number, framework, files, metrics, signature, lineage)
        # the commit marker: the version exists from this write on
        self.fs.pipe_file(
            self._key(name, number, MANIFEST), json.dumps(manifest, indent=2).encode()
        )
        return self.get(name, number)

    def _set_stage(self, version: ModelVersion, stage: str | None) -> ModelVersion:
        data = self._manifest_data(version.name, version.version)
        if data is None:
            raise ModelNotFound(f"model '{version.name}' has no version {version.version}")
        data["stage"] = stage
        key = self._key(version.name, version.version, MANIFEST)
        self.fs.pipe_file(key, json.dumps(data, indent=2).encode())
        return self.get(version.name, version.version)

    def delete(self, name: str, version: int) -> ModelVersion:
        target = self.get(name, version)
        self.fs.rm_file(self._key(name, version, MANIFEST))  # invisible from here on
        for rel in target.files:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._key(name, version, rel))
        return target

    def fetch(self, version: ModelVersion) -> ModelVersion:
        """Download a version into the local cache (once), verified before it is used.

        The cache folder is built from the validated name and number only (never from a
        manifest's text), and nothing is written before the stored manifest is checked to
        be that version's.
        """
        final = self._cache_dir(version.name, version.version)
        stored = self._manifest_data(version.name, version.version)
        if stored is None:
            raise ModelNotFound(f"model '{version.name}' has no version {version.version}")
        if version_from_manifest(stored, final, version.uri).files != version.files:
            raise RegistryError(
                f"{version.uri or version.ref}: the stored manifest lists other files than "
                "the version asked for; refusing it (versions never change their files)"
            )
        if (final / MANIFEST).is_file():
            try:
                cached_data = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
                cached = version_from_manifest(
                    check_manifest(cached_data, version.name, version.version, str(final)),
                    final,
                    version.uri,
                )
            except (RegistryError, ValueError, KeyError, TypeError):
                cached = None
            if cached is not None and cached.files == version.files:
                return cached
            shutil.rmtree(final, ignore_errors=True)
        staging = final.parent / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for rel in version.files:
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._key(version.name, version.version, rel), str(target))
            self.fs.get_file(
                self._key(version.name, version.version, MANIFEST), str(staging / MANIFEST)
            )
            local = version_from_manifest(version.as_dict(), staging, version.uri)
            verify(local)
            try:
                os.replace(staging, final)
            except OSError:
                # another fetcher of the same version got there first: its copy is as good
                # (verified the same way before its rename); ours goes
                if not (final / MANIFEST).is_file():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return version_from_manifest(version.as_dict(), final, version.uri)


def open_registry(uri: str, cache: Path) -> BaseRegistry:
    """A plain path or ``file://`` URI is a LocalRegistry; anything else goes through fsspec.

    Storage options (endpoint, credentials) come from the usual environment
    (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) or from $PILOTHOUSE_REGISTRY_OPTIONS (JSON).
    """
    from pilothouse.registry.local import LocalRegistry

    if "://" not in uri or uri.startswith("file://"):
        return LocalRegistry(Path(uri.removeprefix("file://")).expanduser())
    raw = os.environ.get("PILOTHOUSE_REGISTRY_OPTIONS", "")
    try:
        options = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise RegistryError(f"PILOTHOUSE_REGISTRY_OPTIONS is not valid JSON: {exc}") from exc
    return ObjectStoreRegistry(uri, cache, options)
