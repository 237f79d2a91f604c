"""The model server as a real process: OIP v2 (with a standard client), v1, batching,
verification, shutdown, and a schema-driven fuzzer that must never see a 5xx."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings

from pilothouse.registry.local import ModelVersion
from tests.integration.conftest import wait_for
from tests.integration.servers import (
    FEATURES,
    Replica,
    register_fraud_model,
    run_replica,
    sample_rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return register_fraud_model(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def replica(version: ModelVersion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with run_replica(version.path, tmp_path_factory.mktemp("logs")) as running:
        wait_for(
            "model ready",
            lambda: httpx.get(f"{running.url}/v2/health/ready").status_code == 200,
            timeout=60,
        )
        yield running


def _expected(version: ModelVersion, rows: np.ndarray) -> np.ndarray:
    import joblib

    model = joblib.load(version.path / "model.joblib")
    return np.asarray(model.predict_proba(rows)[:, 1])


def test_standard_oip_client_works_unchanged(replica: Replica, version: ModelVersion) -> None:
    client = triton.InferenceServerClient(url=replica.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("fraud")
        metadata = client.get_model_metadata("fraud")
        assert metadata["name"] == "fraud"
        assert [i["name"] for i in metadata["inputs"]] == FEATURES
        rows = sample_rows(5)
        for binary in (True, False):
            tensor = triton.InferInput("features", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            result = client.infer(
                "fraud", [tensor], outputs=[triton.InferRequestedOutput("score", binary_data=False)]
            )
            np.testing.assert_allclose(
                result.as_numpy("score"), _expected(version, rows), rtol=1e-9
            )
        as_float32 = triton.InferInput("features", list(rows.shape), "FP32")
        as_float32.set_data_from_numpy(rows.astype(np.float32))
        result = client.infer("fraud", [as_float32])
        np.testing.assert_allclose(result.as_numpy("score"), _expected(version, rows), rtol=1e-4)
        with pytest.raises(triton.InferenceServerException, match="not served here"):
            client.infer("other-model", [as_float32])
    finally:
        client.close()


def test_v1_and_versioned_v2_paths(replica: Replica, version: ModelVersion) -> None:
    rows = sample_rows(3)
    v1 = httpx.post(f"{replica.url}/v1/models/fraud:predict", json={"instances": rows.tolist()})
    assert v1.status_code == 200
    np.testing.assert_allclose(v1.json()["predictions"], _expected(version, rows))
    by_name = [dict(zip(FEATURES, row, strict=True)) for row in rows.tolist()]
    assert (
        httpx.post(f"{replica.url}/v1/models/fraud:predict", json={"instances": by_name}).json()
        == v1.json()
    )
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}
        ],
    }
    v2 = httpx.post(f"{replica.url}/v2/models/fraud/versions/{version.version}/infer", json=body)
    assert v2.status_code == 200
    assert v2.json()["id"] == "req-1"
    wrong_version = httpx.post(f"{replica.url}/v2/models/fraud/versions/999/infer", json=body)
    assert wrong_version.status_code == 404
    assert "999" in wrong_version.json()["error"]


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": []}', 400, "non-empty list"),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}',
            400,
            "expected 10 features",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [2, 10], "datatype": "FP64", "data": [1]}]}',
            400,
            "needs 20 values",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "STRING", "data": []}]}',
            400,
            "datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64"}]}',
            400,
            "missing 'data'",
        ),
        (b"[1, 2, 3]", 400, "inputs"),
    ],
)
def test_bad_input_is_a_4xx_that_says_why(
    replica: Replica, content: bytes, code: int, needle: str
) -> None:
    response = httpx.post(f"{replica.url}/v2/models/fraud/infer", content=content)
    assert response.status_code == code
    assert needle in response.json()["error"]


def test_oversized_body_is_413(replica: Replica) -> None:
    huge = b'{"instances": [' + b"[1.0]," * (3 * 2**20) + b"[1.0]]}"
    response = httpx.post(f"{replica.url}/v1/models/fraud:predict", content=huge)
    assert response.status_code == 413
    assert httpx.get(f"{replica.url}/v2/health/live").status_code == 200


def test_concurrent_requests_share_model_calls(replica: Replica, version: ModelVersion) -> None:
    def calls_and_rows() -> tuple[float, float]:
        text = httpx.get(f"{replica.url}/metrics").text
        values = {}
        for line in text.splitlines():
            if line.startswith(
                ("pilothouse_model_batch_rows_count", "pilothouse_model_batch_rows_sum")
            ):
                name, value = line.split(" ")
                values[name] = float(value)
        return values["pilothouse_model_batch_rows_count"], values[
            "pilothouse_model_batch_rows_sum"
        ]

    rows = sample_rows(1)
    expected = _expected(version, rows)
    before = calls_and_rows()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=replica.url, limits=httpx.Limits(max_connections=64)
        ) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/models/fraud:predict", json={"instances": rows.tolist()})
                    for _ in range(256)
                )
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    for r in responses:
        np.testing.assert_allclose(r.json()["predictions"], expected)
    after = calls_and_rows()
    calls, served_rows = after[0] - before[0], after[1] - before[1]
    assert served_rows == 256
    assert calls < 256, "concurrent requests must be merged into fewer model calls"


def test_corrupted_artifact_is_refused_and_replica_stays_not_ready(
    tmp_path: Path,
) -> None:
    version = register_fraud_model(tmp_path / "registry", rows=2000)
    artifact = version.path / "model.joblib"
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"corrupted!")
    with run_replica(version.path, tmp_path) as running:

        def refused() -> dict[str, str] | None:
            response = httpx.get(f"{running.url}/v2/health/ready")
            body = response.json()
            return (
                body
                if response.status_code == 503 and "checksum" in body.get("reason", "")
                else None
            )

        body = wait_for("checksum refusal", refused, timeout=30)
        assert str(artifact) in body["reason"]
        assert version.files["model.joblib"] in body["reason"]
        infer = httpx.post(
            f"{running.url}/v1/models/fraud:predict", json={"instances": [[0.0] * 10]}
        )
        assert infer.status_code == 503
        assert running.process.poll() is None, "a bad artifact must not crash the replica"


def test_sigterm_turns_readiness_false_then_finishes_in_flight(tmp_path: Path) -> None:
    version = register_fraud_model(tmp_path / "registry", rows=2000)
    with run_replica(version.path, tmp_path, "--drain", "2") as running:
        wait_for(
            "ready",
            lambda: httpx.get(f"{running.url}/v2/health/ready").status_code == 200,
            timeout=60,
        )
        running.process.send_signal(signal.SIGTERM)
        wait_for(
            "readiness to turn false",
            lambda: httpx.get(f"{running.url}/v2/health/ready").status_code == 503,
            timeout=5,
            every=0.02,
        )
        # still serving during the drain window
        served = httpx.post(
            f"{running.url}/v1/models/fraud:predict", json={"instances": sample_rows(1).tolist()}
        )
        assert served.status_code == 200
        code = running.process.wait(timeout=30)
        assert code in (0, -signal.SIGTERM)
    assert "draining" in running.log.read_text()


def test_fuzz_never_a_server_error(replica: Replica) -> None:
    """schemathesis generates requests from the replica's OpenAPI document (valid and
    invalid bodies, paths, types); none may get a 5xx other than the documented 503."""
    schema = schemathesis.openapi.from_url(f"{replica.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    seen: set[int] = set()
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            seen.add(response.status_code)
            assert response.status_code < 500 or response.status_code == 503, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )

        check()
    assert {200, 400} <= seen, f"the fuzzer must reach both answers and refusals, saw {seen}"
    assert httpx.get(f"{replica.url}/v2/health/ready").status_code == 200, "the replica survived"
