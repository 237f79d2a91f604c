"""``spec.rollout``: defaults, clear errors naming the field (through the loader, with
lines, and through the pydantic model), round trips, and the JSON schema."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pilothouse.spec.loader import load_text
from pilothouse.spec.resources import (
    ANALYSIS_METRICS,
    API_VERSION,
    SERVER_METRICS,
    Analysis,
    AnalysisCheck,
    BlueGreenStrategy,
    CanaryStep,
    CanaryStrategy,
    ModelDeployment,
    ModelDeploymentSpec,
    Pause,
    RollingStrategy,
    Rollout,
    resolve_surge,
)
from pilothouse.spec.schema import json_schema

#: the line of the first line of the rollout body in ``md()``
FIRST = 8


def md(rollout: str) -> str:
    """A ModelDeployment document whose ``spec.rollout`` is ``rollout`` (from line 8)."""
    body = textwrap.indent(textwrap.dedent(rollout).strip("\n"), "    ")
    return (
        f"apiVersion: {API_VERSION}\n"
        "kind: ModelDeployment\n"
        "metadata:\n"
        "  name: fraud\n"
        "spec:\n"
        "  model: fraud-detector\n"
        "  rollout:\n"
        f"{body}\n"
    )


def load_rollout(rollout: str) -> Rollout:
    result = load_text(md(rollout), "md.yaml")
    assert result.ok, [str(e) for e in result.errors]
    [resource] = result.resources
    assert isinstance(resource, ModelDeployment)
    return resource.spec.rollout


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- defaults


def test_default_rollout_is_rolling() -> None:
    rollout = ModelDeploymentSpec(model="fraud-detector").rollout
    assert rollout == Rollout()
    assert rollout.strategy == "rolling"
    assert rollout.rolling == RollingStrategy(max_surge="25%", max_unavailable=0)
    assert rollout.canary is None
    assert rollout.blue_green is None
    assert rollout.analysis == Analysis(interval=10.0, min_samples=20, mirror_percent=0.0)
    assert rollout.analysis.checks == []
    assert rollout.revision_history_limit == 10


def test_canary_without_a_block_gets_the_default_steps() -> None:
    rollout = load_rollout("strategy: canary")
    assert rollout.canary is not None
    assert [(s.set_weight, s.pause) for s in rollout.canary.steps] == [
        (10, None),
        (None, Pause(duration=30.0)),
        (50, None),
        (None, Pause(duration=30.0)),
        (100, None),
    ]
    assert rollout.rolling is None
    assert rollout.blue_green is None


def test_blue_green_without_a_block_gets_the_defaults() -> None:
    rollout = load_rollout("strategy: blueGreen")
    assert rollout.blue_green == BlueGreenStrategy(
        preview_mirror_percent=100.0, auto_promotion_delay=30.0, scale_down_delay=30.0
    )
    assert rollout.canary is None
    assert rollout.rolling is None


def test_a_full_canary_rollout_loads() -> None:
    rollout = load_rollout(
        """
        strategy: canary
        canary:
          steps:
            - setWeight: 0
            - pause: {}
            - setWeight: 25
            - pause: {duration: 1m30s}
            - setWeight: 100
            - pause: {duration: 10s}
        analysis:
          interval: 15s
          minSamples: 50
          mirrorPercent: 20
          checks:
            - name: errors
              metric: errorRate
              max: 0.02
              failureLimit: 1
            - name: p99
              metric: latencyP99
              max: 0.25
            - name: agree
              metric: agreement
              min: 0.95
            - name: requests
              metric: server:pilothouse_model_requests_total
              min: 1
              inconclusiveLimit: 0
              consecutiveErrorLimit: 2
        revisionHistoryLimit: 3
        """
    )
    assert rollout.canary is not None
    steps = rollout.canary.steps
    assert steps[0] == CanaryStep(set_weight=0)
    assert steps[1] == CanaryStep(pause=Pause())
    assert steps[1].pause is not None
    assert steps[1].pause.duration is None
    assert steps[3] == CanaryStep(pause=Pause(duration=90.0))
    assert rollout.analysis.interval == 15.0
    assert rollout.analysis.min_samples == 50
    assert rollout.analysis.mirror_percent == 20.0
    checks = {c.name: c for c in rollout.analysis.checks}
    assert checks["errors"] == AnalysisCheck(
        name="errors", metric="errorRate", max=0.02, failure_limit=1
    )
    assert checks["p99"].min is None
    assert checks["agree"].min == 0.95
    assert checks["requests"].metric == "server:pilothouse_model_requests_total"
    assert checks["requests"].inconclusive_limit == 0
    assert checks["requests"].consecutive_error_limit == 2
    assert checks["p99"].consecutive_error_limit == 4
    assert checks["p99"].inconclusive_limit == 3
    assert checks["p99"].failure_limit == 0
    assert rollout.revision_history_limit == 3


def test_every_analysis_metric_and_server_metric_is_accepted() -> None:
    for metric in [*ANALYSIS_METRICS, *(f"server:{m}" for m in SERVER_METRICS)]:
        check = AnalysisCheck(name="c", metric=metric, max=1.0)
        assert check.metric == metric


def test_agreement_checks_are_fine_with_blue_green_preview_mirroring() -> None:
    rollout = load_rollout(
        """
        strategy: blueGreen
        analysis:
          checks:
            - {name: agree, metric: agreement, min: 0.9}
            - {name: diff, metric: scoreDifference, max: 0.1}
        """
    )
    assert rollout.blue_green is not None
    assert rollout.blue_green.preview_mirror_percent == 100.0
    assert rollout.analysis.mirror_percent == 0.0


@pytest.mark.parametrize(
    ("surge", "unavailable"),
    [(0, 1), (1, 0), ("0%", "10%"), ("100%", "0%"), (1000, 1000), (" 25% ", 0)],
)
def test_good_rolling_bounds(surge: int | str, unavailable: int | str) -> None:
    rolling = RollingStrategy(max_surge=surge, max_unavailable=unavailable)
    assert (rolling.max_surge, rolling.max_unavailable) == (surge, unavailable)


@pytest.mark.parametrize(
    ("value", "desired", "round_up", "expected"),
    [
        (2, 10, True, 2),
        ("25%", 4, True, 1),
        ("25%", 5, True, 2),
        ("25%", 5, False, 1),
        ("10%", 1, True, 1),
        ("10%", 1, False, 0),
        ("100%", 7, False, 7),
        ("0%", 7, True, 0),
        (" 50% ", 3, False, 1),
    ],
)
def test_resolve_surge(value: int | str, desired: int, round_up: bool, expected: int) -> None:
    assert resolve_surge(value, desired, round_up=round_up) == expected


# --------------------------------------------------------------------------- bad rollouts

_CANARY = "strategy: canary\ncanary:\n  steps:\n"
_CHECKS = "analysis:\n  checks:\n"

#: (id, rollout YAML, field path under spec.rollout, message substring, line)
BAD_ROLLOUTS: list[tuple[str, str, str, str, int]] = [
    (
        "steps-not-ending-at-100",
        _CANARY + "    - setWeight: 10\n    - pause: {duration: 30s}\n    - setWeight: 50\n",
        "canary",
        "steps must end at setWeight: 100 (the last setWeight is 50)",
        FIRST + 1,
    ),
    (
        "steps-without-a-weight",
        _CANARY + "    - pause: {duration: 30s}\n",
        "canary",
        "steps must end at setWeight: 100 (the last setWeight is missing)",
        FIRST + 1,
    ),
    (
        "steps-ending-lower-after-100",
        _CANARY + "    - setWeight: 100\n    - setWeight: 20\n",
        "canary",
        "the last setWeight is 20",
        FIRST + 1,
    ),
    (
        "steps-empty",
        _CANARY.replace("steps:\n", "steps: []\n"),
        "canary.steps",
        "at least 1 item",
        FIRST + 2,
    ),
    (
        "set-weight-above-100",
        _CANARY + "    - setWeight: 10\n    - setWeight: 101\n",
        "canary.steps[1].setWeight",
        "less than or equal to 100",
        FIRST + 4,
    ),
    (
        "set-weight-below-0",
        _CANARY + "    - setWeight: -5\n    - setWeight: 100\n",
        "canary.steps[0].setWeight",
        "greater than or equal to 0",
        FIRST + 3,
    ),
    (
        "set-weight-not-a-number",
        _CANARY + "    - setWeight: half\n    - setWeight: 100\n",
        "canary.steps[0].setWeight",
        "valid integer",
        FIRST + 3,
    ),
    (
        "step-with-both",
        _CANARY + "    - setWeight: 100\n    - {setWeight: 50, pause: {duration: 5s}}\n",
        "canary.steps[1]",
        "a step is exactly one of setWeight or pause",
        FIRST + 4,
    ),
    (
        "step-with-neither",
        _CANARY + "    - {}\n    - setWeight: 100\n",
        "canary.steps[0]",
        "a step is exactly one of setWeight or pause",
        FIRST + 3,
    ),
    (
        "step-with-unknown-field",
        _CANARY + "    - setWeight: 100\n    - wait: 5s\n",
        "canary.steps[1].wait",
        "unknown field",
        FIRST + 4,
    ),
    (
        "pause-longer-than-a-day",
        _CANARY + "    - pause: {duration: 25h}\n    - setWeight: 100\n",
        "canary.steps[0].pause",
        "duration must be at most 24h",
        FIRST + 3,
    ),
    (
        "unknown-metric",
        _CHECKS + "    - {name: errs, metric: errorrate, max: 0.1}\n",
        "analysis.checks[0]",
        "metric: unknown metric 'errorrate'; expected one of: errorRate, latencyP50",
        FIRST + 2,
    ),
    (
        "unknown-server-metric",
        _CHECKS + "    - {name: reqs, metric: 'server:requests_total', min: 1}\n",
        "analysis.checks[0]",
        "unknown model server metric 'requests_total'; expected one of: "
        "pilothouse_model_requests_total",
        FIRST + 2,
    ),
    (
        "check-without-bounds",
        _CHECKS + "    - {name: errs, metric: errorRate}\n",
        "analysis.checks[0]",
        "a check needs min, max or both",
        FIRST + 2,
    ),
    (
        "check-min-above-max",
        _CHECKS + "    - {name: p50, metric: latencyP50, min: 2, max: 1}\n",
        "analysis.checks[0]",
        "min (2.0) must not be greater than max (1.0)",
        FIRST + 2,
    ),
    (
        "check-bound-not-finite",
        _CHECKS + "    - {name: p50, metric: latencyP50, max: 1e13}\n",
        "analysis.checks[0]",
        "finite numbers within ±1e12",
        FIRST + 2,
    ),
    (
        "check-bad-name",
        _CHECKS + "    - {name: Errors, metric: errorRate, max: 1}\n",
        "analysis.checks[0].name",
        "DNS-1123",
        FIRST + 2,
    ),
    (
        "check-negative-failure-limit",
        _CHECKS + "    - {name: e, metric: errorRate, max: 1, failureLimit: -1}\n",
        "analysis.checks[0].failureLimit",
        "greater than or equal to 0",
        FIRST + 2,
    ),
    (
        "duplicate-check-names",
        _CHECKS
        + "    - {name: errs, metric: errorRate, max: 0.1}\n"
        + "    - {name: p99, metric: latencyP99, max: 1}\n"
        + "    - {name: errs, metric: latencyP50, max: 1}\n",
        "analysis",
        "check names must be unique; repeated: errs",
        FIRST,
    ),
    (
        "agreement-without-mirror",
        "strategy: canary\n" + _CHECKS + "    - {name: agree, metric: agreement, min: 0.9}\n",
        "",
        "check(s) agree compare predictions on mirrored requests: "
        "set analysis.mirrorPercent above 0",
        FIRST - 1,
    ),
    (
        "score-difference-without-mirror-rolling",
        _CHECKS + "    - {name: diff, metric: scoreDifference, max: 0.1}\n",
        "",
        "set analysis.mirrorPercent above 0",
        FIRST - 1,
    ),
    (
        "agreement-without-blue-green-preview-mirror",
        "strategy: blueGreen\nblueGreen: {previewMirrorPercent: 0}\n"
        + _CHECKS
        + "    - {name: agree, metric: agreement, min: 0.9}\n",
        "",
        "set blueGreen.previewMirrorPercent above 0",
        FIRST - 1,
    ),
    (
        "canary-block-with-blue-green",
        "strategy: blueGreen\ncanary:\n  steps: [{setWeight: 100}]\n",
        "",
        "canary settings given but strategy is 'blueGreen'; set strategy: canary or remove "
        "the canary block",
        FIRST - 1,
    ),
    (
        "canary-block-without-strategy",
        "canary:\n  steps: [{setWeight: 100}]\n",
        "",
        "canary settings given but strategy is 'rolling'",
        FIRST - 1,
    ),
    (
        "rolling-block-with-canary",
        "strategy: canary\nrolling: {maxSurge: 1}\n",
        "",
        "rolling settings given but strategy is 'canary'",
        FIRST - 1,
    ),
    (
        "blue-green-block-with-rolling",
        "strategy: rolling\nblueGreen: {}\n",
        "",
        "blueGreen settings given but strategy is 'rolling'",
        FIRST - 1,
    ),
    (
        "unknown-strategy",
        "strategy: recreate\n",
        "strategy",
        "expected 'rolling', 'canary' or 'blueGreen'",
        FIRST,
    ),
    (
        "misspelled-block",
        "strategy: canary\ncanry: {}\n",
        "canry",
        "did you mean 'canary'",
        FIRST + 1,
    ),
    (
        "max-surge-over-100-percent",
        "rolling: {maxSurge: 150%}\n",
        "rolling",
        "maxSurge: expected a count or a percentage like '25%', got '150%'",
        FIRST,
    ),
    (
        "max-surge-not-a-number",
        "rolling: {maxSurge: abc}\n",
        "rolling",
        "maxSurge: expected a count or a percentage like '25%', got 'abc'",
        FIRST,
    ),
    (
        "max-surge-negative",
        "rolling: {maxSurge: -1}\n",
        "rolling",
        "maxSurge must be between 0 and 1000, got -1",
        FIRST,
    ),
    (
        "max-surge-negative-percent",
        "rolling: {maxSurge: '-5%'}\n",
        "rolling",
        "maxSurge: expected a count or a percentage like '25%', got '-5%'",
        FIRST,
    ),
    (
        "max-surge-too-large",
        "rolling: {maxSurge: 1001}\n",
        "rolling",
        "maxSurge must be between 0 and 1000, got 1001",
        FIRST,
    ),
    (
        "max-unavailable-bad",
        "rolling: {maxSurge: 1, maxUnavailable: 'x%'}\n",
        "rolling",
        "maxUnavailable: expected a count or a percentage like '25%', got 'x%'",
        FIRST,
    ),
    (
        "max-unavailable-number-as-string",
        "rolling: {maxUnavailable: '2'}\n",
        "rolling",
        "maxUnavailable: expected a count or a percentage like '25%', got '2'",
        FIRST,
    ),
    (
        "surge-and-unavailable-both-zero",
        "rolling: {maxSurge: 0, maxUnavailable: 0}\n",
        "rolling",
        "maxSurge and maxUnavailable cannot both be 0",
        FIRST,
    ),
    (
        "surge-and-unavailable-both-zero-percent",
        "rolling: {maxSurge: 0%, maxUnavailable: 0}\n",
        "rolling",
        "maxSurge and maxUnavailable cannot both be 0",
        FIRST,
    ),
    (
        "interval-too-short",
        "analysis: {interval: 500ms}\n",
        "analysis",
        "interval must be between 1s and 1h",
        FIRST,
    ),
    (
        "interval-too-long",
        "analysis: {interval: 2h}\n",
        "analysis",
        "interval must be between 1s and 1h",
        FIRST,
    ),
    (
        "interval-not-a-duration",
        "analysis: {interval: soon}\n",
        "analysis.interval",
        "",
        FIRST,
    ),
    (
        "mirror-percent-over-100",
        "analysis: {mirrorPercent: 150}\n",
        "analysis.mirrorPercent",
        "less than or equal to 100",
        FIRST,
    ),
    (
        "min-samples-zero",
        "analysis: {minSamples: 0}\n",
        "analysis.minSamples",
        "greater than or equal to 1",
        FIRST,
    ),
    (
        "auto-promotion-delay-too-long",
        "strategy: blueGreen\nblueGreen: {autoPromotionDelay: 25h}\n",
        "blueGreen",
        "autoPromotionDelay must be at most 24h",
        FIRST + 1,
    ),
    (
        "scale-down-delay-too-long",
        "strategy: blueGreen\nblueGreen: {scaleDownDelay: 48h}\n",
        "blueGreen",
        "scaleDownDelay must be at most 24h",
        FIRST + 1,
    ),
    (
        "preview-mirror-over-100",
        "strategy: blueGreen\nblueGreen: {previewMirrorPercent: 101}\n",
        "blueGreen.previewMirrorPercent",
        "less than or equal to 100",
        FIRST + 1,
    ),
    (
        "history-limit-zero",
        "revisionHistoryLimit: 0\n",
        "revisionHistoryLimit",
        "greater than or equal to 1",
        FIRST,
    ),
]


def _full(path: str) -> str:
    return "spec.rollout" + (f".{path}" if path and not path.startswith("[") else path)


@pytest.mark.parametrize(
    ("rollout", "path", "message", "line"),
    [row[1:] for row in BAD_ROLLOUTS],
    ids=[row[0] for row in BAD_ROLLOUTS],
)
def test_bad_rollout_through_the_loader(rollout: str, path: str, message: str, line: int) -> None:
    result = load_text(md(rollout), "md.yaml")
    assert not result.ok
    assert result.resources == []
    [error] = result.errors
    assert error.path == _full(path), str(error)
    assert message in error.message, str(error)
    assert error.line == line, str(error)
    assert error.source == "md.yaml"
    assert error.document == 1
    assert str(error).startswith(f"md.yaml:{line}: document 1: {_full(path)}: ")


#: pydantic's own words where the loader rewrites them (unknown fields, enums)
_MODEL_MESSAGES = {
    "step-with-unknown-field": "Extra inputs are not permitted",
    "misspelled-block": "Extra inputs are not permitted",
    "unknown-strategy": "Input should be 'rolling', 'canary' or 'blueGreen'",
}


@pytest.mark.parametrize(
    ("name", "rollout", "path", "message"),
    [row[:4] for row in BAD_ROLLOUTS],
    ids=[row[0] for row in BAD_ROLLOUTS],
)
def test_bad_rollout_through_the_model(name: str, rollout: str, path: str, message: str) -> None:
    data = yaml.safe_load(rollout)
    with pytest.raises(ValidationError) as info:
        Rollout.model_validate(data)
    [error] = info.value.errors(include_url=False)
    assert _path(error["loc"]) == path
    assert _MODEL_MESSAGES.get(name, message) in str(error["msg"])


def test_every_known_metric_is_listed_for_an_unknown_one() -> None:
    with pytest.raises(ValidationError) as info:
        AnalysisCheck(name="c", metric="accuracy", max=1.0)
    text = str(info.value)
    assert "'accuracy'" in text
    for metric in ANALYSIS_METRICS:
        assert metric in text
    assert "server:METRIC" in text


def test_every_server_metric_is_listed_for_an_unknown_one() -> None:
    with pytest.raises(ValidationError) as info:
        AnalysisCheck(name="c", metric="server:up", min=1.0)
    text = str(info.value)
    assert "'up'" in text
    for metric in SERVER_METRICS:
        assert metric in text


def test_several_rollout_errors_are_reported_at_once() -> None:
    result = load_text(
        md(
            """
            strategy: canary
            canary:
              steps:
                - setWeight: 101
                - {}
            analysis:
              interval: 1s
              checks:
                - {name: e, metric: nope, max: 1}
            """
        ),
        "md.yaml",
    )
    paths = {e.path: e.line for e in result.errors}
    assert paths == {
        "spec.rollout.canary.steps[0].setWeight": FIRST + 3,
        "spec.rollout.canary.steps[1]": FIRST + 4,
        "spec.rollout.analysis.checks[0]": FIRST + 8,
    }


def test_model_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="maxSurge: expected a count or a percentage"):
        RollingStrategy(max_surge="150%")
    with pytest.raises(ValidationError, match="maxUnavailable must be between 0 and 1000"):
        RollingStrategy(max_unavailable=-1)
    with pytest.raises(ValidationError, match="cannot both be 0"):
        RollingStrategy(max_surge="0%", max_unavailable="0%")
    with pytest.raises(ValidationError, match="the last setWeight is 50"):
        CanaryStrategy(steps=[CanaryStep(set_weight=50)])
    with pytest.raises(ValidationError, match="exactly one of setWeight or pause"):
        CanaryStep()
    with pytest.raises(ValidationError, match="interval must be between 1s and 1h"):
        Analysis(interval=0.5)
    with pytest.raises(ValidationError, match="blueGreen settings given but strategy is 'canary'"):
        Rollout(strategy="canary", blue_green=BlueGreenStrategy())


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("exclude_none", [False, True])
def test_default_rollout_round_trips_through_json(exclude_none: bool) -> None:
    rollout = Rollout()
    dumped = rollout.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)
    text = json.dumps(dumped)
    again = Rollout.model_validate(json.loads(text))
    assert again == rollout
    assert again.model_dump(mode="json", by_alias=True, exclude_none=exclude_none) == dumped
    assert dumped["strategy"] == "rolling"
    assert dumped["rolling"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert dumped["analysis"]["interval"] == "10s"


ROUND_TRIPS = {
    "canary": """
        strategy: canary
        canary:
          steps:
            - setWeight: 5
            - pause: {}
            - setWeight: 40
            - pause: {duration: 2m}
            - setWeight: 100
        analysis:
          interval: 30s
          mirrorPercent: 10
          checks:
            - {name: errors, metric: errorRate, max: 0.01}
            - {name: agree, metric: agreement, min: 0.98, failureLimit: 2}
        """,
    "blue-green": """
        strategy: blueGreen
        blueGreen: {previewMirrorPercent: 50, autoPromotionDelay: 1m, scaleDownDelay: 0s}
        """,
    "rolling": """
        strategy: rolling
        rolling: {maxSurge: 2, maxUnavailable: 50%}
        revisionHistoryLimit: 1
        """,
}


@pytest.mark.parametrize("text", ROUND_TRIPS.values(), ids=list(ROUND_TRIPS))
def test_rollout_round_trips_through_the_stored_form(text: str) -> None:
    """What the API stores (``model_dump(exclude_none=True)``) means the same rollout."""
    result = load_text(md(text), "md.yaml")
    assert result.ok, [str(e) for e in result.errors]
    [resource] = result.resources
    assert isinstance(resource, ModelDeployment)
    stored = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = ModelDeployment.model_validate(json.loads(json.dumps(stored)))
    assert again.spec.rollout == resource.spec.rollout
    # and through the loader, as `get -o yaml | apply -f -` does
    reloaded = load_text(yaml.safe_dump(stored), "again.yaml")
    assert reloaded.ok, [str(e) for e in reloaded.errors]
    [resource_again] = reloaded.resources
    assert isinstance(resource_again, ModelDeployment)
    assert resource_again.spec.rollout == resource.spec.rollout


def test_a_manual_blue_green_stays_manual_when_stored() -> None:
    """``autoPromote: false`` means "wait for promote"; the stored form (nulls dropped)
    must keep it and never switch traffic on its own."""
    rollout = load_rollout("strategy: blueGreen\nblueGreen:\n  autoPromote: false\n")
    assert rollout.blue_green is not None
    assert rollout.blue_green.auto_promote is False
    spec = ModelDeploymentSpec(model="fraud-detector", rollout=rollout)
    stored = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = ModelDeploymentSpec.model_validate(stored)
    assert again.rollout.blue_green is not None
    assert again.rollout.blue_green.auto_promote is False, stored["rollout"]


def test_durations_are_written_back_as_text() -> None:
    rollout = load_rollout(
        """
        strategy: canary
        canary:
          steps: [{setWeight: 50}, {pause: {duration: 90}}, {setWeight: 100}]
        analysis: {interval: 1m}
        """
    )
    dumped = rollout.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["canary"]["steps"] == [
        {"setWeight": 50},
        {"pause": {"duration": "1m30s"}},
        {"setWeight": 100},
    ]
    assert dumped["analysis"]["interval"] == "1m"


# --------------------------------------------------------------------------- JSON schema


def _keys(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def _object(node: dict[str, Any]) -> dict[str, Any]:
    if "properties" in node:
        return node
    branches: list[dict[str, Any]] = node.get("anyOf", [])
    for branch in branches:
        if "properties" in branch:
            return branch
    raise AssertionError(f"no object schema in {node}")


def test_schema_has_the_rollout_without_refs() -> None:
    schema = json_schema(ModelDeployment)
    assert "$ref" not in set(_keys(schema))
    assert "$defs" not in set(_keys(schema))
    assert "#/$defs" not in json.dumps(schema)
    rollout = schema["properties"]["spec"]["properties"]["rollout"]
    props = rollout["properties"]
    assert set(props) == {
        "strategy",
        "rolling",
        "canary",
        "blueGreen",
        "analysis",
        "revisionHistoryLimit",
        "progressDeadline",
    }
    assert set(props["strategy"]["enum"]) == {"rolling", "canary", "blueGreen"}
    assert rollout["additionalProperties"] is False
    step = _object(props["canary"])["properties"]["steps"]["items"]
    assert set(step["properties"]) == {"setWeight", "pause"}
    assert set(_object(props["rolling"])["properties"]) == {"maxSurge", "maxUnavailable"}
    assert set(_object(props["blueGreen"])["properties"]) == {
        "previewMirrorPercent",
        "autoPromote",
        "autoPromotionDelay",
        "scaleDownDelay",
    }
    check = props["analysis"]["properties"]["checks"]["items"]["properties"]
    assert {"name", "metric", "min", "max", "failureLimit"} <= set(check)
    surge = _object(props["rolling"])["properties"]["maxSurge"]
    assert any(branch.get("type") == "string" for branch in surge["anyOf"])


def test_schema_accepts_a_rollout_and_rejects_a_bad_weight() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(ModelDeployment)
    good = yaml.safe_load(md(ROUND_TRIPS["canary"]))
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(good)) == []
    bad = yaml.safe_load(md(_CANARY + "    - setWeight: 101\n"))
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)) != []


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"metric": "agreement", "min": 1.5}, "agreement is between 0 and 1, so min 1.5"),
        ({"metric": "errorRate", "max": -0.1}, "errorRate is between 0 and 1, so max -0.1"),
        ({"metric": "latencyP99", "max": -1}, "latencyP99 is at least 0, so max -1"),
    ],
)
def test_a_bound_that_can_never_pass_is_refused(check: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AnalysisCheck.model_validate({"name": "c", **check})


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\nspec:\n  model: m:1\n  model: m:3\n"
    result = load_text(text, "dup.yaml")
    assert not result.resources
    [error] = result.errors
    assert str(error) == "dup.yaml:6: document 1: spec.model: duplicate key (first at line 5)"


def test_object_level_errors_do_not_dump_the_object() -> None:
    text = "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\nspec:\n  model: m:1\n  rollout:\n    strategy: canary\n    canary:\n      steps: [{setWeight: 50}]\n"
    [error] = load_text(text, "s.yaml").errors
    assert "steps must end at setWeight: 100" in str(error)
    assert "(got {" not in str(error)
