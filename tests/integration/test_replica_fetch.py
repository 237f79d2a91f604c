"""A replica fetches and verifies its own model version, as a pod would:
``pilothouse serve --model NAME:VERSION --registry URI [--cache DIR]`` as a real process,
against a registry folder and against S3 (moto's server over HTTP on 127.0.0.1).

It serves the version it was given; it exits with code 3, its log naming the model, the
registry and the cause, when the version is unknown, the registry unreachable or an
artifact tampered with; replicas of one version starting at once fetch it once; a
damaged cached copy is fetched again."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import joblib
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from pilothouse.registry.local import ModelVersion, sha256_file
from pilothouse.registry.objectstore import ObjectStoreRegistry
from pilothouse.serving.server import EXIT_MODEL_UNAVAILABLE, ModelSource, fetch_version
from tests.integration.conftest import wait_for
from tests.integration.servers import register_fraud_model, sample_rows

pytestmark = pytest.mark.integration

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT = 60.0


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        wait_for("the replica to fetch, verify and load its model", self.ready, START_TIMEOUT)

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"replica still running after {timeout}s:\n{self.output()}"
            ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def replicas() -> Iterator[list[Started]]:
    started: list[Started] = []
    yield started
    for replica in started:
        replica.stop()


def start(replicas: list[Started], tmp_path: Path, args: list[str], env: dict[str, str]) -> Started:
    """``python -m pilothouse serve ARGS`` on a socket bound here (no port race), its
    stdout and stderr in one log, with exactly ``env`` (and PATH, PYTHONPATH: what the
    runtime gives every replica)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    log = tmp_path / f"replica-{port}.log"
    base = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pilothouse", "serve", *args, "--fd", str(sock.fileno())],
            pass_fds=(sock.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
        )
    sock.close()
    replica = Started(process, f"http://127.0.0.1:{port}", log)
    replicas.append(replica)
    return replica


def expected_scores(version_dir: Path, rows: np.ndarray) -> np.ndarray:
    model = joblib.load(version_dir / "model.joblib")
    return np.asarray(model.predict_proba(rows)[:, 1])


def check_infers(replica: Started, artifact_dir: Path, version: int = 1) -> None:
    rows = sample_rows(5)
    body = {
        "id": "fetch-1",
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}
        ],
    }
    answer = httpx.post(f"{replica.url}/v2/models/fraud/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["model_name"] == "fraud"
    assert data["model_version"] == str(version)
    assert data["id"] == "fetch-1"
    (output,) = data["outputs"]
    assert output["shape"][0] == rows.shape[0]
    np.testing.assert_allclose(output["data"], expected_scores(artifact_dir, rows), rtol=1e-9)


# -- a registry folder ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return register_fraud_model(tmp_path_factory.mktemp("registry"), rows=2000)


def folder_of(version: ModelVersion) -> Path:
    return version.path.parents[1]


def test_replica_fetches_from_a_registry_folder_and_serves(
    folder_version: ModelVersion, tmp_path: Path, replicas: list[Started]
) -> None:
    registry = folder_of(folder_version)
    replica = start(
        replicas,
        tmp_path,
        ["--model", "fraud:1", "--registry", str(registry)],
        {"PILOTHOUSE_HOME": str(tmp_path / "home")},
    )
    replica.wait_ready()
    check_infers(replica, folder_version.path)
    assert "fraud:1" in replica.output()
    assert str(registry) in replica.output()
    metrics = httpx.get(f"{replica.url}/metrics").text
    assert "pilothouse_model_fetch_seconds" in metrics
    # a registry folder is read in place: nothing copied into the cache
    assert not (tmp_path / "home" / "cache").exists()
    # file:// names the same folder
    again = start(
        replicas,
        tmp_path,
        ["--model", "fraud:1", "--registry", f"file://{registry}", "--name", "fraud"],
        {"PILOTHOUSE_HOME": str(tmp_path / "home")},
    )
    again.wait_ready()
    check_infers(again, folder_version.path)


def test_a_tampered_artifact_is_fatal_and_named(tmp_path: Path, replicas: list[Started]) -> None:
    registry = tmp_path / "registry"
    version = register_fraud_model(registry, rows=500)
    artifact = version.path / "model.joblib"
    with artifact.open("ab") as handle:  # changed after it was registered
        handle.write(b"\0tampered")
    replica = start(
        replicas,
        tmp_path,
        ["--model", "fraud:1", "--registry", str(registry)],
        {"PILOTHOUSE_HOME": str(tmp_path / "home")},
    )
    assert replica.wait_exit() == EXIT_MODEL_UNAVAILABLE
    log = replica.output()
    assert f"cannot serve fraud:1 from registry {registry}: checksum mismatch" in log, log
    assert "'model.joblib'" in log
    assert str(artifact) in log
    assert version.files["model.joblib"] in log, "the registered sha256"
    assert sha256_file(artifact) in log, "the sha256 found"
    assert "Traceback" not in log


def test_an_unknown_version_or_model_is_fatal_and_clear(
    folder_version: ModelVersion, tmp_path: Path, replicas: list[Started]
) -> None:
    registry = folder_of(folder_version)
    env = {"PILOTHOUSE_HOME": str(tmp_path / "home")}
    unknown = start(replicas, tmp_path, ["--model", "fraud:7", "--registry", str(registry)], env)
    other = start(replicas, tmp_path, ["--model", "nosuch:1", "--registry", str(registry)], env)
    missing = tmp_path / "no-registry-here"
    nowhere = start(replicas, tmp_path, ["--model", "fraud:1", "--registry", str(missing)], env)

    assert unknown.wait_exit() == EXIT_MODEL_UNAVAILABLE
    assert (
        f"cannot serve fraud:7 from registry {registry}: not found: model 'fraud' has no "
        "version 7 (registered versions of 'fraud': 1)"
    ) in unknown.output(), unknown.output()
    assert other.wait_exit() == EXIT_MODEL_UNAVAILABLE
    assert "model 'nosuch' has no version 1 (no version of 'nosuch' is registered there)" in (
        other.output()
    )
    assert nowhere.wait_exit() == EXIT_MODEL_UNAVAILABLE
    assert f"the registry folder {missing} does not exist" in nowhere.output()
    for replica in (unknown, other, nowhere):
        assert "Traceback" not in replica.output()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "fraud", "--registry", "/r"], "must name an exact version"),
        (["--model", "fraud:latest", "--registry", "/r"], "must name an exact version"),
        (["--model", "fraud@production", "--registry", "/r"], "must name an exact version"),
        (["--model", "../x:1", "--registry", "/r"], "invalid model reference"),
        (["--model", "fraud:1"], "--model needs --registry"),
        (["--registry", "/r"], "exactly one of --model"),
        (["--model", "fraud:1", "--registry", "/r", "--model-dir", "."], "exactly one of"),
        (["--model-dir", "."], "--model-dir needs --name"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pilothouse", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PILOTHOUSE_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# -- S3 (moto's server) -------------------------------------------------------------


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


@pytest.fixture(scope="module")
def artifact(folder_version: ModelVersion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("artifact")
    for name in ("model.joblib", "signature.json", "metrics.json"):
        shutil.copy2(folder_version.path / name, folder / name)
    return folder


@dataclass
class Bucket:
    uri: str
    options: dict[str, object]
    env: dict[str, str]
    home: Path

    @property
    def cache(self) -> Path:
        return self.home / "cache" / "models"

    def registry(self, cache: Path) -> ObjectStoreRegistry:
        return ObjectStoreRegistry(self.uri, cache, self.options)


@pytest.fixture
def bucket(
    s3_endpoint: str, artifact: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Bucket:
    """A prefix of its own with fraud:1 registered; the environment a replica needs to
    read it (credentials, endpoint, its home for the default cache)."""
    uri = f"s3://models/{request.node.name.replace('[', '-').rstrip(']')}"
    options: dict[str, object] = {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    ObjectStoreRegistry(uri, tmp_path / "registering-cache", options).register(
        "fraud", artifact, framework="sklearn"
    )
    home = tmp_path / "home"
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint, "PILOTHOUSE_HOME": str(home)}
    return Bucket(uri, options, env, home)


def test_replica_fetches_from_object_storage_and_serves(
    bucket: Bucket, artifact: Path, tmp_path: Path, replicas: list[Started]
) -> None:
    replica = start(
        replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env
    )
    replica.wait_ready()
    check_infers(replica, artifact)
    # the default cache is the home's (the daemon's), and holds a verified copy
    cached = bucket.cache / "fraud" / "1"
    assert sha256_file(cached / "model.joblib") == sha256_file(artifact / "model.joblib")
    assert json.loads((cached / "model.json").read_text())["version"] == 1
    assert "fetched into the cache" in replica.output()
    # the next replica finds it there
    second = start(replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env)
    second.wait_ready()
    assert "found in the cache" in second.output()


def test_replicas_starting_at_once_fetch_one_copy(
    bucket: Bucket, artifact: Path, tmp_path: Path, replicas: list[Started]
) -> None:
    cache = tmp_path / "shared-cache"
    args = ["--model", "fraud:1", "--registry", bucket.uri, "--cache", str(cache)]
    started = [start(replicas, tmp_path, args, bucket.env) for _ in range(4)]
    for replica in started:
        replica.wait_ready()
        check_infers(replica, artifact)
    fetched = [r for r in started if "fetched into the cache" in r.output()]
    assert len(fetched) == 1, [r.output() for r in started]
    assert sorted(p.name for p in (cache / "fraud").iterdir()) == [".1.lock", "1"]


def test_live_but_not_ready_while_fetching(
    bucket: Bucket, artifact: Path, tmp_path: Path, replicas: list[Started]
) -> None:
    """A fetch that takes long (here: another process holds the version's lock) keeps
    the replica live, and not ready, its reason saying what it waits for."""
    folder = bucket.cache / "fraud"
    folder.mkdir(parents=True)
    lock = os.open(folder / ".1.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        replica = start(
            replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env
        )
        wait_for("the replica to wait for the lock", lambda: "waiting for it" in replica.output())
        assert httpx.get(f"{replica.url}/v2/health/live").status_code == 200
        answer = httpx.get(f"{replica.url}/v2/health/ready")
        assert answer.status_code == 503
        assert answer.json()["reason"] == f"fetching fraud:1 from {bucket.uri}"
        infer = httpx.post(f"{replica.url}/v2/models/fraud/infer", json={"inputs": []})
        assert infer.status_code == 503
    finally:
        os.close(lock)
    replica.wait_ready()
    check_infers(replica, artifact)


def test_concurrent_fetches_in_one_process_share_one_copy(bucket: Bucket, tmp_path: Path) -> None:
    """The lock is per open file, so threads contend as processes do."""
    source = ModelSource("fraud", 1, bucket.uri, tmp_path / "cache")
    results: list[tuple[Path, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def fetch() -> None:
        try:
            barrier.wait(timeout=30)
            version, cached = fetch_version(bucket.registry(source.cache), source)
            results.append((version.path, cached))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert {path for path, _ in results} == {source.cached_dir}
    assert sorted(cached for _, cached in results) == [False] + [True] * 7


def test_a_tampered_object_is_fatal_and_named(
    bucket: Bucket, s3_endpoint: str, tmp_path: Path, replicas: list[Started]
) -> None:
    key = bucket.uri.removeprefix("s3://models/") + "/fraud/1/model.joblib"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    body = s3.get_object(Bucket="models", Key=key)["Body"].read()
    s3.put_object(Bucket="models", Key=key, Body=body + b"\0tampered")
    replica = start(
        replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env
    )
    assert replica.wait_exit() == EXIT_MODEL_UNAVAILABLE
    log = replica.output()
    assert (
        f"cannot serve fraud:1 from registry {bucket.uri}: checksum mismatch for file "
        f"'model.joblib' ({bucket.uri}/fraud/1/model.joblib)"
    ) in log, log
    # nothing unverified was left in the cache
    assert not (bucket.cache / "fraud" / "1").exists()
    assert [p.name for p in (bucket.cache / "fraud").iterdir()] == [".1.lock"]


def test_a_damaged_cached_copy_is_fetched_again(
    bucket: Bucket, artifact: Path, tmp_path: Path, replicas: list[Started]
) -> None:
    first = start(replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env)
    first.wait_ready()
    first.stop()
    cached = bucket.cache / "fraud" / "1" / "model.joblib"
    cached.write_bytes(cached.read_bytes()[:-10])
    second = start(replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], bucket.env)
    second.wait_ready()
    check_infers(second, artifact)
    assert "is damaged" in second.output()
    assert "fetching it again" in second.output()
    assert sha256_file(cached) == sha256_file(artifact / "model.joblib")


def test_an_unreachable_registry_is_fatal_and_named(
    bucket: Bucket, tmp_path: Path, replicas: list[Started]
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {**bucket.env, "AWS_ENDPOINT_URL": endpoint}
        replica = start(replicas, tmp_path, ["--model", "fraud:1", "--registry", bucket.uri], env)
        assert replica.wait_exit(timeout=120) == EXIT_MODEL_UNAVAILABLE
    finally:
        closed.close()
    log = replica.output()
    assert f"cannot serve fraud:1 from registry {bucket.uri}: " in log, log
    assert "Could not connect to the endpoint URL" in log
    assert endpoint in log


def test_a_standby_prefetches_and_becomes_the_replica(
    bucket: Bucket, artifact: Path, tmp_path: Path, replicas: list[Started]
) -> None:
    """A standby given the model as replicas are fetches it while nothing waits; the
    replica it becomes finds it in the cache."""
    env = {
        **{k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ},
        "PYTHONUNBUFFERED": "1",
        **bucket.env,
    }
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    args = ["--model", "fraud:1", "--registry", bucket.uri, "--cache", str(bucket.cache)]
    with (tmp_path / "standby.out").open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilothouse.serving.standby",
                "--control",
                str(theirs.fileno()),
                *args,
                "--room=" + "." * 200,
            ],
            pass_fds=(theirs.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    theirs.close()
    log = tmp_path / "replica.log"
    replica = Started(process, "", log)
    replicas.append(replica)
    manifest = bucket.cache / "fraud" / "1" / "model.json"
    wait_for("the standby to fetch fraud:1 into the cache", manifest.is_file, START_TIMEOUT)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    replica.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        message = json.dumps({"args": ["serve", *args], "env": env}).encode()
        socket.send_fds(ours, [message], [listener.fileno(), log_fd])
    finally:
        os.close(log_fd)
        listener.close()
        ours.close()
    replica.wait_ready()
    check_infers(replica, artifact)
    assert "found in the cache" in replica.output()
