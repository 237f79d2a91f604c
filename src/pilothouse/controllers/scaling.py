"""How many replicas a deployment wants right now: static, or from the autoscaler.

Reads the data plane's per-second load samples, asks the pure autoscaling policy, and
returns what a human needs to follow it (the metric, both window averages, panic mode,
the last decisions) as the public ``AutoscalerStatus``, and the policy's own state for the
internal status.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pilothouse.controllers.base import Context, timestamp
from pilothouse.policy.autoscaler import AutoscalerSpec, AutoscalerState, Metric, decide_scale
from pilothouse.ports.dataplane import LoadSample
from pilothouse.spec.resources import ModelDeploymentSpec
from pilothouse.spec.status import AutoscalerStatus, ScaleDecision

KIND = "ModelDeployment"
DECISIONS_KEPT = 10


@dataclass(frozen=True)
class Scaled:
    desired: int
    public: AutoscalerStatus | None = None
    state: AutoscalerState | None = None


def demand(sample: LoadSample, metric: str) -> float:
    """The demand a second measured; mirrored copies are not demand (they go away with
    the mirror, and scaling on them would also feed back into the mirror's own load)."""
    if metric == "rps":
        live = sample.requests - sample.mirrored_requests
        return max(0, live) / sample.seconds if sample.seconds > 0 else 0.0
    if metric == "cpu":
        return sample.cpu or 0.0
    return max(0.0, sample.concurrency - sample.mirrored_concurrency)


async def desired_replicas(
    ctx: Context,
    name: str,
    spec: ModelDeploymentSpec,
    ready: int,
    previous: AutoscalerStatus | None,
    state: AutoscalerState | None,
    now: float,
    *,
    revisions: set[str] | None = None,
    count_queued: bool = True,
    min_replicas: int | None = None,
) -> Scaled:
    """The replica count to converge on.

    ``revisions``: scale on the traffic of these revisions only (during a canary or
    blue-green rollout each revision scales on its own share); None: all of them.
    """
    scaling = spec.autoscaling
    if scaling is None:
        return Scaled(spec.replicas.min)
    load = await ctx.dataplane.load(name, since=now - scaling.stable_window)
    # the deployment's traffic, whichever revision served it, one value per second
    per_second: dict[float, float] = defaultdict(float)
    for revision, revision_samples in load.revisions.items():
        if revisions is not None and revision not in revisions:
            continue
        for sample in revision_samples:
            per_second[round(sample.time, 1)] += demand(sample, scaling.metric)
    samples: list[tuple[float, float]] = sorted(per_second.items())
    if load.queued and count_queued:
        # requests held at the router (scale from zero, or every replica busy) are demand too
        samples.append((now, float(load.queued) + (samples[-1][1] if samples else 0.0)))
    decision = decide_scale(
        AutoscalerSpec(
            target=scaling.target,
            min_replicas=spec.replicas.min if min_replicas is None else min_replicas,
            max_replicas=spec.replicas.max,
            metric=Metric(scaling.metric),
            stable_window=scaling.stable_window,
            panic_window=scaling.panic_window,
            panic_threshold=scaling.panic_threshold,
            max_scale_up_rate=scaling.max_scale_up_rate,
            max_scale_down_rate=scaling.max_scale_down_rate,
            scale_to_zero_grace=scaling.scale_to_zero_grace,
        ),
        samples,
        ready,
        state or AutoscalerState(),
        now,
    )
    decisions = list(previous.last_decisions) if previous is not None else []
    last_desired = previous.desired_replicas if previous is not None else None
    if last_desired != decision.desired_replicas:
        decisions.append(
            ScaleDecision(
                time=timestamp(now),
                from_=last_desired if last_desired is not None else ready,
                to=decision.desired_replicas,
                reason=decision.reason,
            )
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
    public = AutoscalerStatus(
        metric=scaling.metric,
        target=scaling.target,
        stable_window=scaling.stable_window,
        panic_window=scaling.panic_window,
        stable_average=round(decision.stable_average, 3),
        panic_average=round(decision.panic_average, 3),
        in_panic=decision.in_panic,
        queued=load.queued,
        ready_replicas=ready,
        desired_replicas=decision.desired_replicas,
        reason=decision.reason,
        last_decisions=decisions[-DECISIONS_KEPT:],
    )
    return Scaled(decision.desired_replicas, public, decision.state)
