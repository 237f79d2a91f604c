"""Autoscaling and traffic fields of a ModelDeployment: defaults, and bad values refused at apply."""

from __future__ import annotations

import textwrap

import pytest

from pilothouse.spec.loader import load_text
from pilothouse.spec.resources import ModelDeployment


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
