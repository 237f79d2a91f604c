"""During a canary each revision autoscales on its own traffic share, and the stable one is
never scaled below what it ran when the rollout began (a rollback must find it able to take
all traffic back); after promotion the new revision keeps its autoscaler's state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Platform, wait_for
from tests.integration.rollout_models import MODEL, BackgroundLoad, Rows, register_good, register_v1

pytestmark = pytest.mark.integration


def apply(platform: Platform, tmp: Path, model: str) -> None:
    doc = {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "scaled"},
        "spec": {
            "model": model,
            "replicas": {"min": 1, "max": 3},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "autoscaling": {
                "metric": "rps",
                "target": 10,
                "stableWindow": "6s",
                "panicWindow": "2s",
                "scaleToZeroGrace": "0s",
            },
            "rollout": {
                "strategy": "canary",
                "canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]},
            },
        },
    }
    path = tmp / f"scaled-{model.replace(':', '-')}.json"
    path.write_text(json.dumps(doc))
    result = platform.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr


def status(platform: Platform) -> dict[str, Any]:
    return dict(platform.get_json("md", "scaled").get("status") or {})


def test_each_revision_scales_on_its_own_share(platform: Platform, tmp_path: Path) -> None:
    models = platform.home.root / "models"
    v1 = register_v1(models)
    register_good(models)
    apply(platform, tmp_path, f"{MODEL}:1")
    first = wait_for(
        "v1 serving",
        lambda: (s := status(platform)).get("readyReplicas", 0) >= 1 and s,
        timeout=60,
    )
    load = BackgroundLoad(first["url"], Rows.for_version(v1, n=200), rate=40, seconds=60)
    try:
        # 40 req/s against a target of 10 per replica: the stable revision grows to its max
        wait_for(
            "v1 scaled to 3",
            lambda: status(platform).get("autoscaler", {}).get("desiredReplicas") == 3,
            timeout=30,
        )
        apply(platform, tmp_path, f"{MODEL}:2")
        paused = wait_for(
            "canary at 50 % waiting for promote",
            lambda: (
                (s := status(platform))["rollout"].get("step") == 1
                and s["rollout"].get("canaryRevision")
                and s
            ),
            timeout=60,
        )
        stable, canary = paused["rollout"]["stableRevision"], paused["rollout"]["canaryRevision"]
        # the stable revision keeps the 3 replicas it ran when the rollout began
        assert [r["desired"] for r in paused["revisions"] if r["revision"] == stable] == [3]
        # half the traffic (20 req/s) is the canary's own: its autoscaler asks for 2
        # and the stable revision's own share dropped to ~20 req/s (2 replicas' worth)
        both = wait_for(
            "each revision measured on its own share",
            lambda: (
                (s := status(platform)).get("canaryAutoscaler", {}).get("desiredReplicas") == 2
                and s["autoscaler"]["stableAverage"] < 28
                and s
            ),
            timeout=30,
        )
        assert both["canaryAutoscaler"]["metric"] == "rps"
        assert 12 <= both["canaryAutoscaler"]["stableAverage"] <= 28
        # ... but it keeps the 3 replicas it had when the rollout began
        assert both["autoscaler"]["desiredReplicas"] == 3
        assert both["rollout"]["replicas"][stable]["desired"] == 3
        assert both["rollout"]["replicas"][canary]["desired"] == 2
        with platform.api() as api:
            promoted = api.post(
                "/apis/pilothouse.dev/v1alpha1/modeldeployments/scaled/rollout",
                json={"action": "promote"},
            )
            assert promoted.status_code == 200, promoted.text
        done = wait_for(
            "promoted",
            lambda: (
                (s := status(platform))["rollout"]["phase"] == "Healthy"
                and s["rollout"]["stableRevision"] == canary
                and s
            ),
            timeout=60,
        )
        assert "canaryAutoscaler" not in done
        running = [r for r in done["revisions"] if r["ready"] or r["starting"] or r["pending"]]
        assert [r["revision"] for r in running] == [canary]
        assert {r["revision"] for r in platform.replicas("scaled")} == {canary}
    finally:
        load.stop()
        result = load.join(30)
    failed = [a for a in result.answers if a.status != 200]
    assert not failed, failed[:5]
