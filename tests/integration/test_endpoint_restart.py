"""A deployment keeps its endpoint across a control-plane restart: clients that read
status.url once keep working after `pilothouse down` / `up` (when the port is still free)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.conftest import Platform, wait_for
from tests.integration.servers import register_fraud_model, sample_rows

pytestmark = pytest.mark.integration

DEPLOYMENT = """
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: steady}
spec:
  model: fraud:1
  replicas: 1
  resources: {cpu: 100m, memory: 128Mi}
"""


def ready(platform: Platform) -> dict[str, Any] | None:
    st = dict(platform.get_json("md", "steady").get("status") or {})
    conditions = st.get("conditions") or []
    if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
        return st
    return None


def predict(url: str) -> int:
    body = {"instances": sample_rows(2).tolist()}
    return httpx.post(f"{url}/v1/models/fraud:predict", json=body, timeout=10).status_code


def test_the_endpoint_survives_a_restart(platform: Platform) -> None:
    register_fraud_model(platform.home.root / "models")
    assert platform.cli("apply", "-f", "-", input_text=DEPLOYMENT).returncode == 0
    before = wait_for("ready", lambda: ready(platform), timeout=60)
    assert predict(before["url"]) == 200
    assert platform.cli("down", timeout=60).returncode == 0
    with pytest.raises(httpx.TransportError):
        predict(before["url"])  # really down
    assert platform.cli("up", timeout=60).returncode == 0

    def answers() -> bool:
        try:
            return predict(before["url"]) == 200
        except httpx.TransportError:
            return False

    # the status survives in SQLite, so only the old URL answering proves the endpoint
    wait_for("the old endpoint answering again", answers, timeout=60, every=0.25)
    after = wait_for("ready again", lambda: ready(platform), timeout=60)
    assert after["url"] == before["url"]
