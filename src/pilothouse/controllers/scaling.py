"""How many replicas a deployment wants right now: static, or from the autoscaler.

Reads the data plane's per-second load samples through the runtime port, asks
the pure autoscaling policy, and keeps what a human needs to follow it (the
metric, both window averages, panic mode, the last decisions) in the status.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

from pilothouse.controllers.base import Context, timestamp
from pilothouse.policy.autoscaler import AutoscalerSpec, AutoscalerState, Metric, decide_scale
from pilothouse.runtime.port import LoadSample
from pilothouse.spec.resources import ModelDeploymentSpec

KIND = "ModelDeployment"
DECISIONS_KEPT = 10


def _value(sample: LoadSample, metric: str) -> float:
    if metric == "rps":
        return sample.requests / sample.seconds if sample.seconds > 0 else 0.0
    if metric == "cpu":
        return sample.cpu or 0.0
    return sample.concurrency


async def desired_replicas(
    ctx: Context,
    name: str,
    spec: ModelDeploymentSpec,
    ready: int,
    status: dict[str, Any],
    now: float,
    *,
    revisions: set[str] | None = None,
    key: str = "autoscaler",
    min_replicas: int | None = None,
) -> int:
    """The replica count to converge on; updates ``status[key]`` when autoscaling.

    ``revisions``: scale on the traffic of these revisions only (during a canary or
    blue-green rollout each revision scales on its own share); None: all of them.
    """
    scaling = spec.autoscaling
    if scaling is None:
        status.pop(key, None)
        return spec.replicas.min
    load = await ctx.runtime.load(name, since=now - scaling.stable_window)
    # the deployment's traffic, whichever revision served it, one value per second
    per_second: dict[float, float] = defaultdict(float)
    for revision, revision_samples in load.revisions.items():
        if revisions is not None and revision not in revisions:
            continue
        for sample in revision_samples:
            per_second[round(sample.time, 1)] += _value(sample, scaling.metric)
    samples: list[tuple[float, float]] = sorted(per_second.items())
    if load.queued and key == "autoscaler":
        # requests held at the router (scale from zero, or every replica busy) are demand too
        samples.append((now, float(load.queued) + (samples[-1][1] if samples else 0.0)))
    previous: dict[str, Any] = dict(status.get(key) or {})
    state = AutoscalerState(**(previous.get("state") or {}))
    decision = decide_scale(
        AutoscalerSpec(
            target=scaling.target,
            min_replicas=spec.replicas.min if min_replicas is None else min_replicas,
            max_replicas=spec.replicas.max,
            metric=Metric(scaling.metric),
            stable_window=scaling.stable_window,
            panic_window=min(scaling.panic_window, scaling.stable_window * 0.999),
            panic_threshold=scaling.panic_threshold,
            max_scale_up_rate=scaling.max_scale_up_rate,
            max_scale_down_rate=scaling.max_scale_down_rate,
            scale_to_zero_grace=scaling.scale_to_zero_grace,
        ),
        samples,
        ready,
        state,
        now,
    )
    decisions: list[dict[str, Any]] = list(previous.get("lastDecisions") or [])
    last_desired = previous.get("desiredReplicas")
    if last_desired != decision.desired_replicas:
        decisions.append(
            {
                "time": timestamp(now),
                "from": last_desired if last_desired is not None else ready,
                "to": decision.desired_replicas,
                "reason": decision.reason,
            }
        )
        if last_desired is not None:
            ctx.event(
                KIND,
                name,
                "Normal",
                "Scaled",
                (f"{', '.join(sorted(revisions))}: " if revisions else "")
                + f"{last_desired} -> {decision.desired_replicas}: {decision.reason}",
            )
    status[key] = {
        "metric": scaling.metric,
        "target": scaling.target,
        "stableWindow": scaling.stable_window,
        "panicWindow": scaling.panic_window,
        "stableAverage": round(decision.stable_average, 3),
        "panicAverage": round(decision.panic_average, 3),
        "inPanic": decision.in_panic,
        "queued": load.queued,
        "readyReplicas": ready,
        "desiredReplicas": decision.desired_replicas,
        "reason": decision.reason,
        "lastDecisions": decisions[-DECISIONS_KEPT:],
        "state": asdict(decision.state),
    }
    return decision.desired_replicas
