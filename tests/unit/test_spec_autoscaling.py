"""Autoscaling and traffic fields of a ModelDeployment: defaults, and bad values refused at apply."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilothouse.policy.autoscaler import AutoscalerSpec, Metric
from pilothouse.spec.loader import load_text
from pilothouse.spec.resources import Autoscaling, ModelDeployment


def deployment(spec: str) -> str:
    return textwrap.dedent(
        """\
        apiVersion: pilothouse.dev/v1alpha1
        kind: ModelDeployment
        metadata: {name: m}
        spec:
          model: m:1
        """
    ) + textwrap.indent(textwrap.dedent(spec), "  ")


def test_defaults() -> None:
    result = load_text(deployment("autoscaling: {}\nreplicas: {min: 0, max: 5}\n"), "x.yaml")
    assert result.ok, [str(e) for e in result.errors]
    resource = result.resources[0]
    assert isinstance(resource, ModelDeployment)
    scaling = resource.spec.autoscaling
    assert scaling is not None
    assert (scaling.metric, scaling.target, scaling.stable_window, scaling.panic_window) == (
        "concurrency",
        4.0,
        60.0,
        6.0,
    )
    assert resource.spec.traffic.queue_limit == 256
    assert resource.spec.traffic.max_concurrency == 0


@pytest.mark.parametrize(
    ("spec", "path", "needle"),
    [
        ("autoscaling: {target: 0}", "spec.autoscaling.target", "greater than 0"),
        ("autoscaling: {target: -3}", "spec.autoscaling.target", "greater than 0"),
        ("autoscaling: {metric: memory}", "spec.autoscaling.metric", "concurrency"),
        ("autoscaling: {stableWindow: 2s}", "spec.autoscaling", "stableWindow must be between"),
        ("autoscaling: {stableWindow: 2h}", "spec.autoscaling", "stableWindow must be between"),
        ("autoscaling: {panicWindow: 90s}", "spec.autoscaling", "panicWindow must be"),
        ("autoscaling: {panicWindow: 0s}", "spec.autoscaling", "panicWindow must be"),
        (
            "autoscaling: {stableWindow: 10s, panicWindow: 11s}",
            "spec.autoscaling",
            "panicWindow must be at least 1s and at most stableWindow (10s), got 11s",
        ),
        ("autoscaling: {panicThreshold: 1}", "spec.autoscaling.panicThreshold", "greater than 1"),
        (
            "autoscaling: {maxScaleDownRate: 0.5}",
            "spec.autoscaling.maxScaleDownRate",
            "greater than 1",
        ),
        ("autoscaling: {scaleToZeroGrace: 5h}", "spec.autoscaling", "scaleToZeroGrace"),
        ("autoscaling: {stableWindow: soon}", "spec.autoscaling.stableWindow", "duration"),
        ("autoscaling: {targett: 3}", "spec.autoscaling.targett", "did you mean 'target'"),
        ("replicas: {min: 5, max: 2}", "spec.replicas", "must not be greater than max"),
        (
            "traffic: {maxConcurrency: -1}",
            "spec.traffic.maxConcurrency",
            "greater than or equal to 0",
        ),
        ("traffic: {queueLimit: -5}", "spec.traffic.queueLimit", "greater than or equal to 0"),
        ("traffic: {queueTimeout: forever}", "spec.traffic.queueTimeout", "duration"),
    ],
)
def test_bad_autoscaling_and_traffic_are_refused(spec: str, path: str, needle: str) -> None:
    result = load_text(deployment(spec + "\n"), "bad.yaml")
    assert not result.ok
    matching = [e for e in result.errors if e.path == path]
    assert matching, [str(e) for e in result.errors]
    assert needle in matching[0].message, matching[0].message


def policy_spec(scaling: Autoscaling) -> AutoscalerSpec:
    """The policy's spec built from the resource's fields as they are, nothing clamped."""
    return AutoscalerSpec(
        target=scaling.target,
        min_replicas=0,
        max_replicas=1,
        metric=Metric(scaling.metric),
        stable_window=scaling.stable_window,
        panic_window=scaling.panic_window,
        panic_threshold=scaling.panic_threshold,
        max_scale_up_rate=scaling.max_scale_up_rate,
        max_scale_down_rate=scaling.max_scale_down_rate,
        scale_to_zero_grace=scaling.scale_to_zero_grace,
    )


@pytest.mark.parametrize(
    "windows", ["{stableWindow: 10s, panicWindow: 10s}", "{stableWindow: 6s, panicWindow: 1s}"]
)
def test_window_bounds_are_accepted_and_the_policy_takes_them(windows: str) -> None:
    result = load_text(deployment(f"autoscaling: {windows}\n"), "x.yaml")
    assert result.ok, [str(e) for e in result.errors]
    resource = result.resources[0]
    assert isinstance(resource, ModelDeployment)
    scaling = resource.spec.autoscaling
    assert scaling is not None
    policy = policy_spec(scaling)
    assert (policy.stable_window, policy.panic_window) == (
        scaling.stable_window,
        scaling.panic_window,
    )


@st.composite
def autoscalings(draw: st.DrawFn) -> Autoscaling:
    stable = draw(st.floats(6.0, 3600.0))
    return Autoscaling(
        metric=draw(st.sampled_from(["concurrency", "rps", "cpu"])),
        target=draw(st.floats(0.0, 100000.0, exclude_min=True)),
        stable_window=stable,
        panic_window=draw(st.floats(1.0, stable)),
        panic_threshold=draw(st.floats(1.0, 100.0, exclude_min=True)),
        max_scale_up_rate=draw(st.floats(1.0, 10000.0, exclude_min=True)),
        max_scale_down_rate=draw(st.floats(1.0, 10000.0, exclude_min=True)),
        scale_to_zero_grace=draw(st.floats(0.0, 3600.0)),
    )


@given(autoscalings())
def test_every_autoscaling_the_spec_accepts_the_policy_accepts(scaling: Autoscaling) -> None:
    policy_spec(scaling)
