"""Progressive rollouts under real traffic, through the whole embedded platform.

One control plane for the module; each test deploys ``fraud:1`` (v1, two replicas) under
its own name, starts a bounded open-loop load of real v2 requests through the router
(``rollout_models.open_loop``: every answer's status, ``model_version`` and score), applies
the next version and waits, with deadlines, on the deployment's state:

* a good version (``fraud:2``, retrained) is promoted by the canary, no request fails;
* a version that answers ~20 % of requests with a 500 (``fraud:3``) is rolled back by
  the ``errorRate`` check; after the rollback every answer is v1's again; so is one that
  answers every request with a 500 (``fraud:5``); the router retries each of the
  canary's 500s on v1, so no client sees one;
* a silently wrong version (``fraud:4``, ``1 - p`` with 200s) is rolled back by the model
  checks (agreement / KS on mirrored traffic) while ``errorRate`` keeps passing;
* blue-green: the new revision gets mirrored copies first, all traffic switches at once,
  the old revision stays up ``scaleDownDelay`` and then goes;
* rolling: replicas are replaced one by one under load, nothing fails.

Which revision answered is read from the OIP v2 body's ``model_version``, and checked
against the predictions (v1's score for each row is known; the wrong version's is not).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pilothouse.api.client import Client
from pilothouse.registry.local import ModelVersion
from tests.integration.conftest import Platform, replicas, wait_for
from tests.integration.rollout_models import (
    MODEL,
    Answer,
    BackgroundLoad,
    Rows,
    register_bad,
    register_good,
    register_v1,
    register_wrong,
)

pytestmark = pytest.mark.integration

RATE = 80.0  # requests/s through the router
LOAD_SECONDS = 60.0  # the most any load runs; each test stops it as soon as it has seen enough
WAIT = 45.0  # deadline for one rollout to end
ERROR_SHARE = 0.2
PROBES = {"readiness": {"path": "/v2/health/ready", "period": "1s"}}
#: analysis every 2 s, 25 requests (or mirrored pairs, or scores) per measurement: at 80
#: requests/s and 50 % weight the stable revision's mirrored half gives 40 pairs an interval
CHECKS = [
    {"name": "errors", "metric": "errorRate", "max": 0.05},
    {"name": "latency", "metric": "latencyP99", "max": 1.0},
    {"name": "agreement", "metric": "agreement", "min": 0.9},
    {"name": "drift", "metric": "ks", "max": 0.3},
]
#: how a failed model check reads in the rollout's message and the RolledBack event
MODEL_CHECK_FAILED = r"agreement [0-9.e+-]+ < min 0\.9|ks [0-9.e+-]+ > max 0\.3"
CANARY = {
    "strategy": "canary",
    "canary": {
        "steps": [
            {"setWeight": 20},
            {"pause": {"duration": "2s"}},
            {"setWeight": 50},
            {"pause": {"duration": "2s"}},
            {"setWeight": 100},
        ]
    },
    "analysis": {"interval": "2s", "minSamples": 25, "mirrorPercent": 50, "checks": CHECKS},
}


@dataclass
class Models:
    v1: ModelVersion
    good: ModelVersion
    bad: ModelVersion
    wrong: ModelVersion
    broken: ModelVersion
    rows: Rows


@pytest.fixture(scope="module")
def models(shared_platform: Platform) -> Models:
    root = shared_platform.home.models
    v1 = register_v1(root)
    good = register_good(root)
    bad = register_bad(root, v1, ERROR_SHARE)
    wrong = register_wrong(root, v1)
    broken = register_bad(root, v1, 1.0)
    assert [v.version for v in (v1, good, bad, wrong, broken)] == [1, 2, 3, 4, 5]
    return Models(v1, good, bad, wrong, broken, Rows.for_version(v1))


# ----------------------------------------------------------------------------- helpers


def _doc(name: str, version: int, rollout: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": f"{MODEL}:{version}",
            "replicas": 2,
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "probes": PROBES,
            "rollout": rollout,
        },
    }


def _apply(api: Client, doc: dict[str, Any]) -> float:
    """Apply through the control API; the monotonic time it was accepted."""
    api.apply([doc])
    return time.monotonic()


def _status(api: Client, name: str) -> dict[str, Any]:
    obj = api.get("modeldeployments", name)
    status: dict[str, Any] = obj.get("status") or {}
    status["_current"] = status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
    return status


def _version_of(revision: str | None) -> int | None:
    """A revision is ``MODELVERSION-digest`` (controllers/modeldeployment.revision_of)."""
    return int(revision.split("-", 1)[0]) if revision else None


def _is_healthy_on(st: dict[str, Any], version: int) -> bool:
    """The rollout is Healthy with ``version`` stable and nothing else (for the current spec)."""
    rollout = st.get("rollout") or {}
    return bool(
        st["_current"]
        and rollout.get("phase") == "Healthy"
        and _version_of(rollout.get("stableRevision")) == version
        and not rollout.get("canaryRevision")
        and st.get("modelVersion") == version
    )


def _healthy_on(api: Client, name: str, version: int) -> dict[str, Any] | None:
    st = _status(api, name)
    return st if _is_healthy_on(st, version) else None


def _alive(st: dict[str, Any], revision: str | None = None) -> int:
    """Replicas the status counts as running or starting (of ``revision``, or of all)."""
    return sum(
        r["ready"] + r["starting"] + r["pending"]
        for r in st.get("revisions") or []
        if revision is None or r["revision"] == revision
    )


def _ready_count(st: dict[str, Any], revision: str | None = None) -> int:
    """Ready replicas the status counts (of ``revision``, or of all)."""
    return sum(
        r["ready"]
        for r in st.get("revisions") or []
        if revision is None or r["revision"] == revision
    )


def _only_revision(st: dict[str, Any], revision: str, count: int) -> bool:
    return (
        _alive(st) == count
        and _ready_count(st, revision) == count
        and (st.get("rollout") or {}).get("replicas", {}).get(revision, {}).get("ready") == count
    )


def _deploy_v1(api: Client, name: str, rollout: dict[str, Any]) -> dict[str, Any]:
    _apply(api, _doc(name, 1, rollout))
    st = wait_for("v1 to be healthy", lambda: _healthy_on(api, name, 1), timeout=60, every=0.2)
    stable = st["rollout"]["stableRevision"]

    def settled() -> dict[str, Any] | None:
        st = _status(api, name)
        return st if _only_revision(st, stable, 2) else None

    return wait_for("two ready v1 replicas", settled, timeout=60, every=0.2)


@dataclass
class Watch:
    """Status snapshots (with their monotonic time) taken while a test waits.

    The time is when the status had been read; ``status["_asked"]`` is when it was asked
    for: a state a snapshot shows held at some moment between the two."""

    api: Client
    name: str
    snapshots: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def take(self) -> dict[str, Any]:
        asked = time.monotonic()
        st = _status(self.api, self.name)
        st["_asked"] = asked
        self.snapshots.append((time.monotonic(), st))
        return st

    def until(
        self, what: str, accept: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> tuple[float, dict[str, Any]]:
        """Poll until ``accept(status)``; (the monotonic time it was seen, that status)."""

        def probe() -> tuple[float, dict[str, Any]] | None:
            st = self.take()
            return (time.monotonic(), st) if accept(st) else None

        try:
            return wait_for(what, probe, timeout=timeout, every=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {self.summary()}") from None

    def summary(self) -> dict[str, Any]:
        """What the last snapshot says about the rollout (for failure messages)."""
        if not self.snapshots:
            return {}
        st = self.snapshots[-1][1]
        rollout = st.get("rollout") or {}
        analysis = rollout.get("analysis") or {}
        return {
            "phase": rollout.get("phase"),
            "stable": rollout.get("stableRevision"),
            "canary": rollout.get("canaryRevision"),
            "step": rollout.get("step"),
            "weight": rollout.get("weight"),
            "message": rollout.get("message"),
            "replicas": rollout.get("replicas"),
            "verdict": analysis.get("verdict"),
            "analysis": analysis.get("message"),
            "checks": [
                (c.get("name"), c.get("phase"), c.get("value"), c.get("samples"))
                for c in analysis.get("checks") or []
            ],
            "revisions": [
                (r.get("revision"), r.get("ready"), r.get("starting"), r.get("pending"))
                for r in st.get("revisions") or []
            ],
            "conditions": [(c.get("type"), c.get("reason")) for c in st.get("conditions") or []],
        }


def _start_load(url: str, rows: Rows) -> BackgroundLoad:
    return BackgroundLoad(
        url, rows, RATE, LOAD_SECONDS, max_requests=int(RATE * LOAD_SECONDS), request_timeout=10
    )


def _traffic_after(load: BackgroundLoad, since: float, seconds: float) -> None:
    """Wait until the load has been answered for ``seconds`` worth of requests sent after
    ``since`` (a measurement window, counted in answers, with a deadline)."""
    wanted = int(RATE * seconds)
    wait_for(
        f"{wanted} answers to requests sent after the event",
        lambda: load.answers_since(since) >= wanted,
        timeout=seconds + 15,
        every=0.1,
    )


def _failures(answers: list[Answer]) -> list[tuple[float, int, str]]:
    return [(round(a.scheduled, 2), a.status, a.error[:80]) for a in answers if a.status != 200]


def _events(api: Client, name: str) -> list[dict[str, Any]]:
    return api.events("modeldeployments", name)


def _check(st: dict[str, Any], name: str) -> dict[str, Any]:
    checks = ((st.get("rollout") or {}).get("analysis") or {}).get("checks") or []
    found: dict[str, Any] = next(c for c in checks if c["name"] == name)
    return found


def _history(st: dict[str, Any]) -> dict[int, str]:
    """model version -> outcome, from status.history."""
    out: dict[int, str] = {}
    for entry in st.get("history") or []:
        out[int(str(entry["model"]).rsplit(":", 1)[1])] = entry["outcome"]
    return out


def _served_after(answers: list[Answer], since: float) -> list[Answer]:
    return [a for a in answers if a.scheduled >= since]


# ------------------------------------------------------------------------------- tests


def test_canary_promotes_a_good_version_without_a_failed_request(
    models: Models, api: Client, deployments: list[str]
) -> None:
    name = "canary-good"
    deployments.append(name)
    st = _deploy_v1(api, name, CANARY)
    v1_revision = st["rollout"]["stableRevision"]
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        applied = _apply(api, _doc(name, models.good.version, CANARY))
        _, canary_st = watch.until(
            "the canary to take live traffic",
            lambda s: (
                (s.get("rollout") or {}).get("weight", 0) > 0
                and (s.get("rollout") or {}).get("phase") == "Progressing"
            ),
        )
        canary = canary_st["rollout"]["canaryRevision"]
        assert _version_of(canary) == 2
        assert canary_st["rollout"]["stableRevision"] == v1_revision
        promoted_at, done = watch.until(
            "the good version to be promoted", lambda s: _is_healthy_on(s, 2)
        )
        wait_for(
            "only revision 2's replicas left",
            lambda: _only_revision(watch.take(), canary, 2),
            timeout=30,
            every=0.2,
        )
        _traffic_after(load, promoted_at + 0.5, 1.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    answers = result.answers
    assert len(answers) >= RATE * 5, f"too little traffic: {len(answers)} answers"
    assert _failures(answers) == [], "a good version must not fail a single request"
    assert result.unfinished == 0
    versions = {a.version for a in answers}
    assert versions <= {"1", "2"}, versions
    during = [a for a in answers if load.started + a.scheduled >= applied]
    assert any(a.version == "2" for a in during), "the canary served live traffic"
    after = [a for a in answers if load.started + a.scheduled >= promoted_at + 0.5]
    assert after, "traffic after the promotion"
    assert all(a.version == "2" for a in after), "after promotion only v2 answers"
    assert not any(models.rows.is_wrong(a.row, a.score or 0.0) for a in answers)

    rollout = done["rollout"]
    assert rollout["stableRevision"] == canary
    assert rollout["phase"] == "Healthy"
    assert done["url"] == st["url"], "the endpoint stays the same through a rollout"
    history = _history(done)
    assert history[1] == "Superseded", done["history"]
    assert history[2] == "Stable", done["history"]
    assert all(c["failed"] == 0 for c in rollout["analysis"]["checks"]), rollout["analysis"]
    weights = [
        s["rollout"]["weight"]
        for t, s in watch.snapshots
        if (s.get("rollout") or {}).get("canaryRevision") == canary
    ]
    assert 20 in weights, f"the canary walked its steps: {sorted(set(weights))}"
    reasons = [e["reason"] for e in _events(api, name)]
    assert {"RolloutStarted", "RolloutPromoted"} <= set(reasons), reasons
    assert "RolledBack" not in reasons


def test_canary_with_errors_is_rolled_back_by_the_error_rate_check(
    models: Models, api: Client, deployments: list[str]
) -> None:
    name = "canary-bad"
    deployments.append(name)
    st = _deploy_v1(api, name, CANARY)
    v1_revision = st["rollout"]["stableRevision"]
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        applied = _apply(api, _doc(name, models.bad.version, CANARY))
        ready_at, ready_st = watch.until(
            "the faulty canary to take traffic",
            lambda s: (
                (r := s.get("rollout") or {}).get("canaryRevision") is not None
                and (r.get("replicas") or {}).get(r["canaryRevision"], {}).get("ready", 0) >= 1
            ),
        )
        bad_revision = ready_st["rollout"]["canaryRevision"]
        rolled_at, rolled = watch.until(
            f"the rollback, within {WAIT:g}s of the apply",
            lambda s: (s.get("rollout") or {}).get("phase") == "Degraded",
            timeout=max(0.0, applied + WAIT - time.monotonic()),
        )
        watch.until(
            "the faulty replicas to be gone",
            lambda s: _only_revision(s, v1_revision, 2),
            timeout=30,
        )
        _traffic_after(load, rolled_at + 0.5, 3.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    rollout = rolled["rollout"]
    assert rollout["stableRevision"] == v1_revision
    assert not rollout.get("canaryRevision")
    assert rollout.get("abortedRevision") == bad_revision
    # the rollout's message says which check failed, with its value and bound
    assert re.search(r"errorRate [0-9.e+-]+ > max 0\.05", rollout["message"]), rollout
    errors = _check(rolled, "errors")
    assert errors["failed"] >= 1, errors
    assert errors["value"] > 0.05, errors
    assert _check(rolled, "agreement")["failed"] == 0, "the faulty version predicts like v1"
    assert _history(rolled)[3] == "RolledBack", rolled["history"]
    assert _history(rolled)[1] == "Stable", rolled["history"]
    event = next(e for e in _events(api, name) if e["reason"] == "RolledBack")
    assert "errorRate" in event["message"], event
    assert re.search(r"errorRate [0-9.e+-]+ > max 0\.05", event["message"]), event

    answers = result.answers
    # the canary's 500s were retried on the stable revision (responses are buffered and
    # inference is idempotent): the analysis counted them, no client saw one
    assert _failures(answers) == [], _failures(answers)[:5]
    after = _served_after(answers, rolled_at + 0.5 - load.started)
    assert len(after) >= RATE * 2
    assert all(a.status == 200 and a.version == "1" for a in after), "all traffic back on v1"
    assert not any(models.rows.is_wrong(a.row, a.score or 0.0) for a in after)
    print(
        f"errors canary: ready {ready_at - applied:.1f}s, rolled back {rolled_at - applied:.1f}s "
        f"after the apply; {len(answers)} requests, none failed; {rollout['message']}"
    )


def test_silently_wrong_canary_is_rolled_back_by_the_model_checks(
    models: Models, api: Client, deployments: list[str]
) -> None:
    name = "canary-wrong"
    deployments.append(name)
    st = _deploy_v1(api, name, CANARY)
    v1_revision = st["rollout"]["stableRevision"]
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        applied = _apply(api, _doc(name, models.wrong.version, CANARY))
        rolled_at, rolled = watch.until(
            "the rollback", lambda s: (s.get("rollout") or {}).get("phase") == "Degraded"
        )
        watch.until(
            "the wrong replicas to be gone", lambda s: _only_revision(s, v1_revision, 2), 30
        )
        _traffic_after(load, rolled_at + 0.5, 2.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    rollout = rolled["rollout"]
    assert rollout["stableRevision"] == v1_revision
    assert re.search(MODEL_CHECK_FAILED, rollout["message"]), rollout
    model_checks = [_check(rolled, "agreement"), _check(rolled, "drift")]
    assert any(c["failed"] >= 1 for c in model_checks), model_checks
    errors = _check(rolled, "errors")
    assert errors["failed"] == 0, f"errorRate kept passing: {errors}"
    assert errors["phase"] == "Successful", f"errorRate measured and passing: {errors}"
    assert errors["value"] == 0.0, errors
    event = next(e for e in _events(api, name) if e["reason"] == "RolledBack")
    assert re.search(MODEL_CHECK_FAILED, event["message"]), event
    assert _history(rolled)[4] == "RolledBack"

    answers = result.answers
    assert _failures(answers) == [], "the wrong version answers 200: nothing failed"
    wrong = [a for a in answers if models.rows.is_wrong(a.row, a.score or 0.0)]
    print(
        f"wrong canary: rolled back {rolled_at - applied:.1f}s after the apply; {len(wrong)} "
        f"wrong answers of {len(answers)}; {rollout['message']}"
    )
    assert wrong, "some clients did get the wrong version's answers before the rollback"
    assert all(a.version == "4" for a in wrong), "wrong answers are v4's, found by predictions"
    assert max(load.started + a.scheduled for a in wrong) <= rolled_at + 0.5
    after = _served_after(answers, rolled_at + 0.5 - load.started)
    assert after
    assert all(a.version == "1" and not models.rows.is_wrong(a.row, a.score or 0.0) for a in after)


def test_canary_failing_every_request_is_rolled_back_not_paused(
    models: Models, api: Client, deployments: list[str]
) -> None:
    """A version whose every answer is a 500 must be rolled back like the 20 % one, and
    its failures never reach a client: each is retried on the stable revision. (The
    router never ejects the replicas of a revision that fails as a whole -- its failures
    are not outliers among its peers -- so the analysis gets the traffic it needs and
    must not read the rollout as "too little data" and pause with the broken revision
    still deployed.)"""
    name = "canary-broken"
    deployments.append(name)
    st = _deploy_v1(api, name, CANARY)
    v1_revision = st["rollout"]["stableRevision"]
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        _apply(api, _doc(name, models.broken.version, CANARY))
        rolled_at, rolled = watch.until(
            "the rollback of a version that fails every request",
            lambda s: (s.get("rollout") or {}).get("phase") in ("Degraded", "Paused"),
        )
        assert rolled["rollout"]["phase"] == "Degraded", (
            f"a canary failing 100 % of its requests was not rolled back: {watch.summary()}"
        )
        watch.until(
            "the broken replicas to be gone", lambda s: _only_revision(s, v1_revision, 2), 30
        )
        _traffic_after(load, rolled_at + 0.5, 2.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    assert rolled["rollout"]["stableRevision"] == v1_revision
    assert _history(rolled)[5] == "RolledBack", rolled["history"]
    assert any(e["reason"] == "RolledBack" for e in _events(api, name))
    after = _served_after(result.answers, rolled_at + 0.5 - result.started)
    assert after
    assert all(a.status == 200 and a.version == "1" for a in after), "all traffic back on v1"
    assert _failures(result.answers) == [], "every canary failure was retried on v1"


def _replica_requests(endpoint: str) -> float:
    """``pilothouse_model_requests_total`` summed over labels, from a replica's /metrics."""
    text = httpx.get(f"http://{endpoint}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pilothouse_model_requests_total{")
    )


def test_blue_green_mirrors_then_switches_at_once_then_scales_the_old_down(
    models: Models, api: Client, deployments: list[str]
) -> None:
    name = "blue-green"
    deployments.append(name)
    scale_down_delay = 4.0
    blue_green = {
        "strategy": "blueGreen",
        "blueGreen": {
            "previewMirrorPercent": 100,
            "autoPromotionDelay": "3s",
            "scaleDownDelay": f"{scale_down_delay:g}s",
        },
        "analysis": {"interval": "2s", "minSamples": 25, "checks": CHECKS},
    }
    st = _deploy_v1(api, name, blue_green)
    v1_revision = st["rollout"]["stableRevision"]
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        _apply(api, _doc(name, models.good.version, blue_green))
        preview_at, preview = watch.until(
            "the preview (new revision at full size, no live traffic)",
            lambda s: (
                (r := s.get("rollout") or {}).get("canaryRevision") is not None
                and (r.get("replicas") or {}).get(r["canaryRevision"], {}).get("ready", 0) == 2
            ),
        )
        green = preview["rollout"]["canaryRevision"]
        green_endpoints = [
            r["endpoint"] for r in replicas(api, name) if r["revision"] == green and r["ready"]
        ]
        assert len(green_endpoints) == 2, "the preview at full size"
        switched_at, switched = watch.until(
            "the switch", lambda s: (s.get("rollout") or {}).get("weight") == 100
        )
        # the switch came after the last status without it was asked for: a bound on its
        # time that does not move with how late this test saw it
        not_yet = [
            s["_asked"] for _, s in watch.snapshots if (s.get("rollout") or {}).get("weight") != 100
        ]
        assert not_yet, "a status from before the switch"
        unswitched_at = max(not_yet)
        assert _alive(switched, v1_revision) == 2, "blue stays up after the switch"
        assert _ready_count(switched, v1_revision) == 2, "blue stays up after the switch"
        mirrored = sum(_replica_requests(e) for e in green_endpoints)
        done_at, done = watch.until(
            "promotion after scaleDownDelay", lambda s: _is_healthy_on(s, 2)
        )
        gone_at, _ = watch.until("blue's replicas gone", lambda s: _only_revision(s, green, 2), 30)
        _traffic_after(load, done_at + 0.5, 1.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    answers = result.answers
    assert _failures(answers) == []
    before_switch = [a for a in answers if load.started + a.scheduled < preview_at]
    assert before_switch
    assert all(a.version == "1" for a in before_switch)
    # the preview got copies of live requests while no client was answered by it
    served_by_green_before = [
        a for a in answers if a.version == "2" and load.started + a.scheduled < unswitched_at - 1.0
    ]
    assert served_by_green_before == [], "no live answer from green before the switch"
    assert mirrored > RATE, f"green replicas saw {mirrored} (mirrored) requests before the switch"
    # all at once: after the switch, every answer is green's
    after = [a for a in answers if load.started + a.scheduled >= switched_at + 0.5]
    assert after
    assert all(a.version == "2" for a in after)
    # the old revision stayed up, both replicas, until the promotion
    switched_phase = [
        s
        for _, s in watch.snapshots
        if (s.get("rollout") or {}).get("weight") == 100
        and (s.get("rollout") or {}).get("canaryRevision") == green
    ]
    assert switched_phase, "the switched state was seen"
    for s in switched_phase:
        assert _alive(s, v1_revision) == 2, ("blue stays up until the promotion", s["revisions"])
    # ... which came scaleDownDelay after the switch: measured from the last status before
    # the switch (earlier than it) to the first one after (later), so the lag of this
    # test's polling can only lengthen it; the 1 s allows for the controller's pass
    assert gone_at - unswitched_at >= scale_down_delay - 1.0, gone_at - unswitched_at
    assert done_at - unswitched_at >= scale_down_delay - 1.0, done_at - unswitched_at
    events = [e["reason"] for e in _events(api, name)]
    assert {"RolloutSwitched", "RolloutPromoted"} <= set(events), events
    assert _history(done)[1] == "Superseded"


def test_rolling_update_replaces_replicas_under_load(
    models: Models, api: Client, deployments: list[str]
) -> None:
    name = "rolling"
    deployments.append(name)
    rolling = {"strategy": "rolling", "rolling": {"maxSurge": 1, "maxUnavailable": 0}}
    st = _deploy_v1(api, name, rolling)
    watch = Watch(api, name)
    load = _start_load(st["url"], models.rows)
    try:
        _apply(api, _doc(name, models.good.version, rolling))
        done_at, done = watch.until("the rolling update", lambda s: _is_healthy_on(s, 2))
        new = done["rollout"]["stableRevision"]
        watch.until("only new replicas", lambda s: _only_revision(s, new, 2), 30)
        _traffic_after(load, done_at + 0.5, 1.0)
        result = load.finish()
    finally:
        load.stop()  # a no-op once finished

    answers = result.answers
    assert _failures(answers) == []
    after = [a for a in answers if load.started + a.scheduled >= done_at + 0.5]
    assert after
    assert all(a.version == "2" for a in after)
    most_alive = max(_alive(s) for _, s in watch.snapshots)
    assert most_alive <= 3, "maxSurge 1 over 2 replicas: never more than 3"
    fewest_ready = min(_ready_count(s) for _, s in watch.snapshots)
    assert fewest_ready >= 2, "maxUnavailable 0: two ready replicas all along"
    assert _history(done)[1] == "Superseded"
