"""Rollout bad input is refused at apply and leaves the running revision alone; `rollout
undo` and the revision history work through the real control plane."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import Platform, wait_for
from tests.integration.servers import register_fraud_model

pytestmark = pytest.mark.integration


def deployment(model: str, rollout: str = "") -> str:
    return f"""
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: fraud}}
spec:
  model: {model}
  replicas: 1
  resources: {{cpu: 100m, memory: 128Mi}}
{rollout}
"""


def status(platform: Platform) -> dict[str, Any]:
    return dict(platform.get_json("md", "fraud").get("status") or {})


def healthy_on(platform: Platform, model: str) -> dict[str, Any] | None:
    st = status(platform)
    rollout = st.get("rollout") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
    if st.get("model") == model and rollout.get("phase") == "Healthy" and ready:
        return st
    return None


def test_bad_rollouts_are_refused_at_apply_and_the_running_revision_stays(
    platform: Platform,
) -> None:
    models = platform.home.root / "models"
    register_fraud_model(models)  # fraud:1
    register_fraud_model(models)  # fraud:2
    applied = platform.cli("apply", "-f", "-", input_text=deployment("fraud:1"))
    assert applied.returncode == 0, applied.stderr
    before = wait_for("fraud:1 serving", lambda: healthy_on(platform, "fraud:1"), timeout=60)
    generation = platform.get_json("md", "fraud")["metadata"]["generation"]

    # a new deployment may wait for its model (trained later): accepted, with a warning
    waiting = platform.cli(
        "apply", "-f", "-", input_text=deployment("fraud:9").replace("name: fraud", "name: later")
    )
    assert waiting.returncode == 0, waiting.stderr
    assert "warning: model 'fraud' has no version 9" in waiting.stderr
    assert "starts once that version is registered" in waiting.stderr
    # a model version that does not exist: 422 naming spec.model, nothing applied
    missing = platform.cli("apply", "-f", "-", input_text=deployment("fraud:9"))
    assert missing.returncode != 0
    assert "spec.model" in missing.stderr
    assert "no version 9" in missing.stderr
    # steps that do not end at 100, an unknown metric, weights out of range: exit 2
    for rollout, expected in [
        (
            "  rollout:\n    strategy: canary\n    canary:\n"
            "      steps: [{setWeight: 20}, {pause: {duration: 1s}}, {setWeight: 50}]",
            "steps must end at setWeight: 100",
        ),
        (
            "  rollout:\n    analysis:\n      checks: [{name: acc, metric: accuracy, min: 0.9}]",
            "unknown metric 'accuracy'",
        ),
        (
            "  rollout:\n    strategy: canary\n    canary:\n      steps: [{setWeight: 120}]",
            "setWeight",
        ),
    ]:
        result = platform.cli("apply", "-f", "-", input_text=deployment("fraud:2", rollout))
        assert result.returncode == 2, result.stdout + result.stderr
        assert expected in result.stderr, result.stderr
    after = platform.get_json("md", "fraud")
    assert after["metadata"]["generation"] == generation
    assert after["spec"]["model"] == "fraud:1"
    assert after["status"]["revision"] == before["revision"]
    assert after["status"]["rollout"]["phase"] == "Healthy"


def test_history_and_undo(platform: Platform) -> None:
    models = platform.home.root / "models"
    register_fraud_model(models)
    register_fraud_model(models)
    assert platform.cli("apply", "-f", "-", input_text=deployment("fraud:1")).returncode == 0
    first = wait_for("fraud:1 serving", lambda: healthy_on(platform, "fraud:1"), timeout=60)
    # the default strategy (rolling, no checks) replaces the replica without a gap
    assert platform.cli("apply", "-f", "-", input_text=deployment("fraud:2")).returncode == 0
    second = wait_for("fraud:2 serving", lambda: healthy_on(platform, "fraud:2"), timeout=60)
    history = second["history"]
    assert [(h["number"], h["model"], h["outcome"]) for h in history] == [
        (1, "fraud:1", "Superseded"),
        (2, "fraud:2", "Stable"),
    ]
    assert history[1]["cause"] == "model fraud:1 -> fraud:2"
    assert "@" in history[1]["appliedBy"]  # who applied it: the CLI sends user@host

    with platform.api() as api:
        refused = api.post(
            "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/rollout",
            json={"action": "undo", "toRevision": 7},
        )
        assert refused.status_code == 409, refused.text
        assert "no revision 7" in refused.json()["message"]
        bad = api.post(
            "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/rollout",
            json={"action": "jump"},
        )
        assert bad.status_code == 400
        assert "action" in bad.json()["message"]
        undone = api.post(
            "/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/rollout",
            json={"action": "undo"},
        )
        assert undone.status_code == 200, undone.text
        assert undone.json()["spec"]["model"] == "fraud:1"
    back = wait_for("fraud:1 serving again", lambda: healthy_on(platform, "fraud:1"), timeout=60)
    assert back["revision"] == first["revision"]  # the same template: the same revision
    numbers = {h["model"]: (h["number"], h["outcome"]) for h in back["history"]}
    assert numbers == {"fraud:2": (2, "Superseded"), "fraud:1": (3, "Stable")}
    serving = [(r["revision"], r["ready"]) for r in back["revisions"] if r["ready"]]
    assert serving == [(first["revision"], 1)]
    assert [r["revision"] for r in platform.replicas("fraud")] == [first["revision"]]
    client = platform.client()
    try:
        events = json.dumps(client.events("modeldeployments", "fraud"))
    finally:
        client.close()
    assert "RolloutPromoted" in events
