"""The registry in S3-compatible object storage, against a real S3 API server on 127.0.0.1
(moto's server, over HTTP): commit markers, claimed version numbers, verified fetches,
and a control plane that trains nothing but deploys from the bucket."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from pilothouse.api.home import Home
from pilothouse.registry.local import ChecksumMismatch, ModelNotFound, RegistryError
from pilothouse.registry.objectstore import ObjectStoreRegistry, open_registry
from tests.integration.conftest import Platform
from tests.integration.servers import register_fraud_model, sample_rows

pytestmark = pytest.mark.integration

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="models")
    yield url
    server.stop()


@pytest.fixture
def bucket_registry(
    s3_endpoint: str, tmp_path: Path, request: pytest.FixtureRequest
) -> ObjectStoreRegistry:
    options = {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    return ObjectStoreRegistry(f"s3://models/{request.node.name}", tmp_path / "cache", options)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = register_fraud_model(tmp_path_factory.mktemp("local"), rows=2000)
    folder = tmp_path_factory.mktemp("artifact")
    for name in ("model.joblib", "signature.json", "metrics.json"):
        (folder / name).write_bytes((version.path / name).read_bytes())
    return folder


def test_register_resolve_promote_delete(
    bucket_registry: ObjectStoreRegistry, artifact: Path
) -> None:
    reg = bucket_registry
    first = reg.register("fraud", artifact, framework="sklearn", lineage={"from": "test"})
    second = reg.register("fraud", artifact, framework="sklearn")
    assert (first.version, second.version) == (1, 2)
    assert first.uri.endswith("/fraud/1")
    assert reg.models() == ["fraud"]
    assert reg.resolve("fraud").version == 2
    assert reg.resolve("fraud:1").lineage == {"from": "test"}
    assert first.metrics["rows"] == 2000
    reg.promote("fraud", 1, "production")
    changed = reg.promote("fraud", 2, "production")
    assert [(v.version, v.stage) for v in changed] == [(1, "archived"), (2, "production")]
    assert reg.resolve("fraud@production").version == 2
    reg.delete("fraud", 2)
    with pytest.raises(ModelNotFound):
        reg.resolve("fraud:2")
    assert reg.register("fraud", artifact, framework="sklearn").version == 3, (
        "numbers are never reused"
    )


def test_concurrent_registrations_get_distinct_complete_versions(
    bucket_registry: ObjectStoreRegistry, artifact: Path
) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            results.append(bucket_registry.register("race", artifact, framework="sklearn").version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(set(results)) == 6, f"every writer owns its own number: {results}"
    # numbers lost in a contended claim stay unused (gaps), never shared
    assert sorted(v.version for v in bucket_registry.versions("race")) == sorted(results)
    for version in bucket_registry.versions("race"):
        local = bucket_registry.fetch(version)
        assert (local.path / "model.joblib").is_file()


def test_half_written_version_is_invisible(
    bucket_registry: ObjectStoreRegistry, artifact: Path
) -> None:
    reg = bucket_registry
    # a writer that claimed 1 and uploaded its artifact, then crashed before the manifest
    number = reg._claim("crashy")
    reg.fs.put_file(str(artifact / "model.joblib"), reg._key("crashy", number, "model.joblib"))
    assert reg.versions("crashy") == []
    with pytest.raises(ModelNotFound):
        reg.resolve("crashy")
    assert reg.register("crashy", artifact, framework="sklearn").version == 2


def test_fetch_verifies_checksums(bucket_registry: ObjectStoreRegistry, artifact: Path) -> None:
    reg = bucket_registry
    version = reg.register("fraud", artifact, framework="sklearn")
    local = reg.fetch(version)
    assert local.path.is_dir()
    assert reg.fetch(version).path == local.path, "a cached copy is reused"
    other = reg.register("tampered", artifact, framework="sklearn")
    reg.fs.pipe_file(reg._key("tampered", other.version, "model.joblib"), b"not the model")
    with pytest.raises(ChecksumMismatch, match=r"model\.joblib"):
        reg.fetch(other)
    assert not (reg.cache / "tampered" / str(other.version)).exists(), (
        "nothing unverified is cached"
    )


def test_a_fetch_that_loses_the_race_uses_the_winners_copy(
    bucket_registry: ObjectStoreRegistry, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fetchers of one version with no lock between them: the first to download is
    held just before it moves its copy into place until the second has finished; both
    get the verified copy, and no half-built folder is left."""
    reg = bucket_registry
    version = reg.register("raced", artifact, framework="sklearn")
    real_replace = os.replace
    first_waits, second_done = threading.Event(), threading.Event()

    def replace(src: str | Path, dst: str | Path) -> None:
        if not first_waits.is_set():
            first_waits.set()
            assert second_done.wait(timeout=30), "the second fetch did not finish"
        real_replace(src, dst)

    monkeypatch.setattr("pilothouse.registry.objectstore.os.replace", replace)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(lambda: reg.fetch(version).path)
        assert first_waits.wait(timeout=30)
        second = reg.fetch(version).path
        second_done.set()
        assert first.result(timeout=30) == second
    final = reg.cache / "raced" / str(version.version)
    assert second == final
    assert (final / "model.joblib").read_bytes() == (artifact / "model.joblib").read_bytes()
    assert [p.name for p in final.parent.iterdir()] == [str(version.version)]


def test_reserved_manifest_name_is_refused(
    bucket_registry: ObjectStoreRegistry, tmp_path: Path
) -> None:
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(RegistryError, match="reserved"):
        bucket_registry.register("xgb", tmp_path / "model.json", framework="xgboost")


def test_control_plane_deploys_from_the_bucket(
    s3_endpoint: str, artifact: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "PILOTHOUSE_HOME": str(tmp_path / "home"),
        "PILOTHOUSE_REGISTRY": "s3://models/cluster-registry",
        "NO_COLOR": "1",
    }
    platform = Platform(Home(tmp_path / "home"), env)
    try:
        assert platform.cli("up").returncode == 0
        registered = platform.cli("models", "register", "fraud", str(artifact))
        assert registered.returncode == 0, registered.stderr
        listed = json.loads(platform.cli("models", "list", "-o", "json").stdout)
        assert [m["name"] for m in listed] == ["fraud"]
        spec = tmp_path / "deploy.yaml"
        spec.write_text(
            "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\n"
            "metadata: {name: fraud}\nspec: {model: 'fraud:1', replicas: 1}\n"
        )
        assert platform.cli("apply", "-f", str(spec)).returncode == 0
        waited = platform.cli(
            "wait", "modeldeployment/fraud", "--for=condition=Ready", "--timeout=90s"
        )
        assert waited.returncode == 0, (
            waited.stderr + platform.cli("describe", "md", "fraud").stdout
        )
        predicted = platform.cli(
            "predict", "fraud", "--data", json.dumps({"instances": sample_rows(2).tolist()})
        )
        assert predicted.returncode == 0, predicted.stderr
        assert len(json.loads(predicted.stdout)["predictions"]) == 2
        cached = tmp_path / "home" / "cache" / "models" / "fraud" / "1" / "model.joblib"
        assert cached.is_file(), "replicas load a verified local copy"
    finally:
        platform.cli("down")


def test_bad_registry_options_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PILOTHOUSE_REGISTRY_OPTIONS", "{nope")
    with pytest.raises(RegistryError, match="PILOTHOUSE_REGISTRY_OPTIONS"):
        open_registry("s3://models/x", tmp_path)


# -- crafted manifests and keys: nothing is written outside the cache ------------------


def _craft(reg: ObjectStoreRegistry, name: str, number: int, manifest: dict[str, object]) -> None:
    """Put a manifest (and the file it lists) under ``NAME/N/`` by hand, as an attacker with
    write access to the bucket could."""
    reg.fs.pipe_file(reg._key(name, number, "model.joblib"), b"payload")
    files = {"model.joblib": hashlib.sha256(b"payload").hexdigest()}
    reg.fs.pipe_file(
        reg._key(name, number, "model.json"),
        json.dumps({"framework": "sklearn", "files": files, **manifest}).encode(),
    )


def _written_outside(cache: Path, base: Path) -> list[Path]:
    """What a fetch left outside the cache: in the test's folder, beside it, in /tmp."""
    found = [p for p in base.rglob("*") if not p.is_relative_to(cache)]
    found += [p for p in (base.parent / "escape", Path("/tmp/escape-abs")) if p.exists()]
    return found


@pytest.mark.parametrize(
    "manifest",
    [
        {"name": "../../escape", "version": 1},
        {"name": "/tmp/escape-abs", "version": 1},
        {"name": "evil", "version": "../../escape"},
        {"name": "other", "version": 1},
        {"name": "evil", "version": 7},
        {"name": "evil", "version": True},
    ],
    ids=["dotdot-name", "absolute-name", "dotdot-version", "other-name", "other-version", "bool"],
)
def test_crafted_manifest_is_refused_before_anything_is_written(
    bucket_registry: ObjectStoreRegistry, tmp_path: Path, manifest: dict[str, object]
) -> None:
    reg = bucket_registry
    _craft(reg, "evil", 1, manifest)
    with pytest.raises(RegistryError, match="refusing it"):
        reg.fetch(reg.resolve("evil"))
    with pytest.raises(RegistryError, match="refusing it"):
        reg.get("evil", 1)
    with pytest.raises(RegistryError, match="refusing it"):
        reg.versions("evil")
    assert not _written_outside(reg.cache, tmp_path), "nothing outside the cache"
    assert not (reg.cache / "evil").exists(), "nothing is cached from a refused manifest"


def test_a_version_object_with_a_crafted_name_cannot_write_outside(
    bucket_registry: ObjectStoreRegistry, artifact: Path, tmp_path: Path
) -> None:
    reg = bucket_registry
    good = reg.register("fraud", artifact, framework="sklearn")
    for name, number in (("../escape", good.version), ("fraud", -1), ("fraud/../x", 1)):
        forged = dataclasses.replace(good, name=name, version=number)
        with pytest.raises(RegistryError, match="invalid model"):
            reg.fetch(forged)
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.versions("../../etc")
    assert not _written_outside(reg.cache, tmp_path)


def test_symlinks_in_the_cache_path_are_refused(
    bucket_registry: ObjectStoreRegistry, artifact: Path, tmp_path: Path
) -> None:
    reg = bucket_registry
    version = reg.register("linked", artifact, framework="sklearn")
    outside = tmp_path / "outside"
    outside.mkdir()
    reg.cache.mkdir(parents=True, exist_ok=True)
    (reg.cache / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="symlink"):
        reg.fetch(version)
    assert list(outside.iterdir()) == [], "nothing written through the symlink"
    # a symlinked version folder too
    (reg.cache / "linked").unlink()
    (reg.cache / "linked").mkdir()
    (reg.cache / "linked" / str(version.version)).symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="symlink"):
        reg.fetch(version)
    assert list(outside.iterdir()) == []


def test_listing_ignores_keys_that_are_not_plain_version_numbers(
    bucket_registry: ObjectStoreRegistry, artifact: Path
) -> None:
    reg = bucket_registry
    reg.register("keys", artifact, framework="sklearn")
    # an Arabic-Indic one and a superscript two pass str.isdigit(); neither is a version
    for entry in ("\u0661", "\u00b2", "01", "1e3"):
        manifest = json.loads(reg.fs.cat_file(reg._key("keys", 1, "model.json")))
        reg.fs.pipe_file(reg._key("keys", entry, "model.json"), json.dumps(manifest).encode())
    assert [v.version for v in reg.versions("keys")] == [1]
    assert reg.models() == ["keys"]
