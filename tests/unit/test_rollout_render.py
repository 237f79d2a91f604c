"""How a rollout looks (``rollout status``, ``rollout history``, ``describe``) and when a
watch of it ends, as pure functions of a ModelDeployment's status."""

from __future__ import annotations

import copy
import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console, RenderableType

from pilothouse.cli import render
from pilothouse.cli.render import (
    analysis_table,
    check_bound,
    current_revision,
    history_table,
    number,
    phase_text,
    revision_text,
    rollout_fields,
    rollout_lines,
    rollout_view,
    step_text,
)
from pilothouse.cli.rollout import Verdict, new_lines, verdict

NOW = datetime(2026, 11, 29, 8, 59, 35, tzinfo=UTC)


def _text(renderable: RenderableType) -> str:
    out = Console(file=io.StringIO(), width=200, no_color=True, highlight=False)
    out.print(renderable)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def _check(**overrides: Any) -> dict[str, Any]:
    check: dict[str, Any] = {
        "name": "errors",
        "metric": "errorRate",
        "min": None,
        "max": 0.05,
        "phase": "Successful",
        "value": 0.01,
        "samples": 412,
        "message": "",
        "successful": 3,
        "failed": 0,
        "consecutiveErrors": 0,
        "inconclusive": 0,
    }
    check.update(overrides)
    return check


def _canary(**overrides: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "strategy": "canary",
        "phase": "Paused",
        "stableRevision": "3-ab12cd",
        "canaryRevision": "4-ef34gh",
        "stableRevisionNumber": 3,
        "canaryRevisionNumber": 4,
        "step": 1,
        "steps": 5,
        "weight": 10.0,
        "mirrorPercent": 50.0,
        "pauseUntil": "2026-11-29T09:00:00Z",
        "pausedReason": "CanaryPauseStep",
        "startedAt": "2026-11-29T08:50:00Z",
        "message": "holding 10% for 30s",
        "replicas": {
            "3-ab12cd": {"desired": 2, "ready": 2},
            "4-ef34gh": {"desired": 1, "ready": 0},
        },
        "analysis": {
            "verdict": "Passing",
            "message": "1 check passing",
            "lastRun": "2026-11-29T08:59:30Z",
            "checks": [_check()],
        },
        "abortedRevision": None,
    }
    rollout.update(overrides)
    return rollout


def _deployment(rollout: dict[str, Any] | None, generation: int = 2, observed: int = 2) -> Any:
    status: dict[str, Any] = {"observedGeneration": observed, "model": "fraud-detector:4"}
    if rollout is not None:
        status["rollout"] = rollout
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "fraud-detector",
            "generation": generation,
            "creationTimestamp": "2026-11-29T08:00:00Z",
        },
        "spec": {"model": "fraud-detector:4", "replicas": 2},
        "status": status,
    }


def _history(numbers: range) -> list[dict[str, Any]]:
    return [
        {
            "number": n,
            "revision": f"{n}-rev{n}",
            "model": f"fraud-detector:{n}",
            "template": {"model": f"fraud-detector:{n}", "replicas": 2},
            "createdAt": f"2026-11-29T08:{n:02d}:00Z",
            "appliedBy": "alice@host",
            "cause": f"model fraud-detector:{n - 1} -> fraud-detector:{n}",
            "outcome": "Superseded",
        }
        for n in numbers
    ]


# -- small formats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "shown"),
    [
        (None, 0.05, "≤ 0.05"),
        (0.95, None, "≥ 0.95"),
        (0.9, 1.1, "≥ 0.9, ≤ 1.1"),
        (0, None, "≥ 0"),
        (None, None, "-"),
    ],
)
def test_check_bound_names_the_pass_band(low: float | None, high: float | None, shown: str) -> None:
    assert check_bound(_check(min=low, max=high)) == shown


def test_numbers_keep_four_significant_digits() -> None:
    assert number(None) == "-"
    assert number(0.01) == "0.01"
    assert number(0.912345) == "0.9123"
    assert number(412) == "412"
    assert number(0) == "0"


def test_step_counts_from_one_like_the_controllers_messages() -> None:
    assert step_text(_canary(step=0, steps=5)) == "1/5"
    assert step_text(_canary(step=4, steps=5)) == "5/5"
    assert step_text(_canary(step=None, steps=5)) == "-", "no canary walks the steps"
    assert step_text(_canary(step=None, steps=None)) == "-"


def test_revision_shows_its_ready_and_desired_replicas() -> None:
    rollout = _canary()
    assert revision_text(rollout, "3-ab12cd") == "3-ab12cd (2/2 ready)"
    assert revision_text(rollout, "4-ef34gh") == "4-ef34gh (0/1 ready)"
    assert revision_text(rollout, "9-unknown") == "9-unknown"
    assert revision_text(rollout, None) == "-"


def test_a_timed_pause_counts_down_against_the_given_clock() -> None:
    rollout = _canary()
    assert phase_text(rollout, NOW) == "Paused (resumes in 25s)"
    later = datetime(2026, 11, 29, 9, 1, tzinfo=UTC)
    assert phase_text(rollout, later) == "Paused", "time is up: the message says what holds it"
    assert phase_text(rollout, None) == "Paused (until 2026-11-29T09:00:00Z)"


def test_a_timed_pause_step_counts_down_whatever_the_phase() -> None:
    timed_step = _canary(phase="Progressing", pausedReason=None)
    assert phase_text(timed_step, NOW) == "Progressing (resumes in 25s)"


def test_an_untimed_pause_has_no_countdown() -> None:
    assert phase_text(_canary(pauseUntil=None), NOW) == "Paused"
    assert phase_text(_canary(phase="Progressing", pauseUntil=None), NOW) == "Progressing"
    assert phase_text({}, NOW) == "Unknown"


def test_why_it_is_paused_is_said_once() -> None:
    fields = dict(rollout_fields(_canary(pausedReason="paused by the user"), NOW))
    assert fields["Paused"] == "paused by the user"
    same = _canary(pausedReason="paused by the user", message="paused by the user")
    fields = dict(rollout_fields(same, NOW))
    assert "Paused" not in fields, "the message says it already"
    assert fields["Message"] == "paused by the user"


# -- the rollout view --------------------------------------------------------------------


def test_canary_fields_in_order() -> None:
    fields = dict(rollout_fields(_canary(), NOW))
    assert list(fields) == [
        "Strategy",
        "Phase",
        "Paused",
        "Step",
        "Weight",
        "Mirror",
        "Stable",
        "New",
        "Started",
        "Analysis",
        "Message",
    ]
    assert fields["Step"] == "2/5"
    assert fields["Weight"].startswith("10% ")
    assert fields["Mirror"].startswith("50% ")
    assert fields["Stable"] == "3-ab12cd (2/2 ready)"
    assert fields["New"] == "4-ef34gh (0/1 ready)"
    assert fields["Started"] == "2026-11-29T08:50:00Z (9m35s ago)"
    assert fields["Analysis"] == "Passing: 1 check passing (measured 5s ago)"


def test_a_healthy_rolling_deployment_has_no_step_or_new_revision() -> None:
    rollout: dict[str, Any] = {
        "strategy": "rolling",
        "phase": "Healthy",
        "stableRevision": "3-ab12cd",
        "canaryRevision": None,
        "weight": 0.0,
        "mirrorPercent": 0.0,
        "replicas": {"3-ab12cd": {"desired": 2, "ready": 2}},
        "analysis": {"verdict": None, "message": "", "lastRun": None, "checks": []},
    }
    fields = dict(rollout_fields(rollout, NOW))
    assert "Step" not in fields
    assert "Analysis" not in fields, "no verdict: nothing is being judged"
    assert fields["New"] == "-"
    assert fields["Phase"] == "Healthy"


def test_an_aborted_revision_is_named() -> None:
    fields = dict(rollout_fields(_canary(phase="Degraded", abortedRevision="4-ef34gh"), NOW))
    assert fields["Aborted"] == "4-ef34gh"


def test_analysis_table_has_one_row_per_check() -> None:
    analysis = _canary()["analysis"]
    analysis["checks"].append(
        _check(
            name="agree",
            metric="agreement",
            min=0.95,
            max=None,
            phase="Failed",
            value=0.9,
            samples=80,
            successful=1,
            failed=2,
            message="0.9 is below 0.95",
        )
    )
    table = analysis_table(analysis)
    assert table is not None
    rows = [line.split() for line in _text(table).splitlines()]
    assert rows[0] == [
        "CHECK",
        "METRIC",
        "VALUE",
        "BOUND",
        "SAMPLES",
        "PHASE",
        "SUCCESSFUL",
        "FAILED",
        "MESSAGE",
    ]
    assert rows[1] == ["errors", "errorRate", "0.01", "≤", "0.05", "412", "Successful", "3", "0"]
    assert rows[2][:9] == ["agree", "agreement", "0.9", "≥", "0.95", "80", "Failed", "1", "2"]
    assert " ".join(rows[2][9:]) == "0.9 is below 0.95"


def test_no_checks_no_table() -> None:
    assert analysis_table(None) is None
    assert analysis_table({"verdict": "Pending", "checks": []}) is None


def test_view_shows_fields_then_checks() -> None:
    text = _text(rollout_view(_canary(), NOW))
    assert text.index("Strategy:") < text.index("Message:") < text.index("CHECK")
    assert "resumes in 25s" in text


def test_server_text_is_not_taken_as_markup() -> None:
    text = _text(rollout_view(_canary(message="[red]boom[/] at [b]10%"), NOW))
    assert "[red]boom[/] at [b]10%" in text


# -- plain lines for logs ----------------------------------------------------------------


def test_plain_lines_say_everything_without_a_clock() -> None:
    lines = rollout_lines(_canary())
    assert lines == [
        "phase=Paused (until 2026-11-29T09:00:00Z) strategy=canary step=2/5 weight=10% mirror=50%",
        "paused: CanaryPauseStep",
        "stable 3-ab12cd (2/2 ready); new 4-ef34gh (0/1 ready)",
        "analysis Passing",
        "check errors: errorRate=0.01 (≤ 0.05, 412 samples) Successful, 3 successful, 0 failed",
        "message: holding 10% for 30s",
    ]


def test_only_changed_lines_are_new() -> None:
    before = rollout_lines(_canary())
    after = copy.deepcopy(_canary())
    after["replicas"]["4-ef34gh"]["ready"] = 1
    changed = new_lines(before, rollout_lines(after))
    assert changed == ["stable 3-ab12cd (2/2 ready); new 4-ef34gh (1/1 ready)"]
    assert new_lines(before, rollout_lines(_canary())) == []
    assert new_lines([], before) == before


def test_a_new_measurement_alone_changes_only_its_check_line() -> None:
    before = _canary()
    after = copy.deepcopy(before)
    after["analysis"]["message"] = "1 check passing (4 measurements)"
    after["analysis"]["checks"][0].update(value=0.02, successful=4)
    changed = new_lines(rollout_lines(before), rollout_lines(after))
    assert changed == [
        "check errors: errorRate=0.02 (≤ 0.05, 412 samples) Successful, 4 successful, 0 failed"
    ]


# -- when a watch ends -------------------------------------------------------------------


def test_watch_goes_on_while_a_new_revision_is_in_flight() -> None:
    assert verdict(_deployment(_canary(phase="Progressing"))) is None
    assert verdict(_deployment(_canary(phase="Paused"))) is None
    assert verdict(_deployment(_canary(phase="Healthy"))) is None, "healthy but still a canary"
    assert verdict(_deployment(None)) is None, "the controller has not written a rollout yet"


def test_watch_succeeds_when_healthy_on_one_revision() -> None:
    done = _canary(
        phase="Healthy",
        canaryRevision=None,
        stableRevision="4-ef34gh",
        replicas={"4-ef34gh": {"desired": 2, "ready": 2}},
    )
    assert verdict(_deployment(done)) == Verdict(
        0, "modeldeployment/fraud-detector rollout is healthy at revision 4-ef34gh"
    )


def test_watch_waits_for_the_stable_revision_to_be_ready() -> None:
    starting = _canary(
        phase="Healthy",
        canaryRevision=None,
        replicas={"3-ab12cd": {"desired": 2, "ready": 1}},
    )
    assert verdict(_deployment(starting)) is None
    starting["replicas"]["3-ab12cd"]["ready"] = 2
    assert verdict(_deployment(starting)) is not None
    scaled_to_zero = _canary(phase="Healthy", canaryRevision=None, replicas={})
    assert verdict(_deployment(scaled_to_zero)) is not None


def test_watch_fails_on_degraded_with_the_reason() -> None:
    degraded = _canary(phase="Degraded", message="check errors failed 2 times: 0.2 > 0.05")
    assert verdict(_deployment(degraded)) == Verdict(
        1,
        "modeldeployment/fraud-detector rollout is degraded: check errors failed 2 times: 0.2 > 0.05",
    )


def test_watch_ignores_a_status_older_than_the_spec() -> None:
    done = _canary(phase="Healthy", canaryRevision=None)
    assert verdict(_deployment(done, generation=3, observed=2)) is None
    assert verdict(_deployment(_canary(phase="Degraded"), generation=3, observed=2)) is None
    assert verdict(_deployment(done, generation=3, observed=3)) is not None


# -- history -----------------------------------------------------------------------------


def test_history_marks_the_serving_revision_newest_last() -> None:
    entries = _history(range(1, 4))
    entries[-1]["outcome"] = "Stable"
    text = _text(history_table(entries, "3-rev3"))
    lines = text.splitlines()
    assert lines[0].split() == list(render.HISTORY_COLUMNS)
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3*"]
    assert lines[3].split()[1:4] == ["3-rev3", "fraud-detector:3", "Stable"]
    assert re.fullmatch(r"\d+[smhd]", lines[3].split()[4])  # age of the revision
    assert lines[3].rstrip().endswith("alice@host  model fraud-detector:2 -> fraud-detector:3")


def test_current_revision_prefers_the_rollouts_stable_one() -> None:
    history = _history(range(1, 3))
    history[0]["outcome"] = "Stable"
    assert current_revision({"rollout": _canary(), "revision": "x", "history": history}) == (
        "3-ab12cd"
    )
    assert current_revision({"revision": "2-rev2", "history": history}) == "2-rev2"
    assert current_revision({"history": history}) == "1-rev1"
    assert current_revision({}) is None


def test_describe_shows_rollout_and_the_last_five_revisions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    obj = _deployment(_canary(stableRevision="7-rev7"))
    obj["status"]["history"] = _history(range(1, 9))
    monkeypatch.setattr(render.console, "width", 200)
    with render.console.capture() as captured:
        render.describe(obj, [])
    text = captured.get()
    status_part = text[text.index("Status:") : text.index("Rollout:")]
    assert "rollout" not in status_part, "the rollout is its own section, not raw status"
    assert "template" not in text, "templates are for `rollout history --revision`"
    rollout_part = text[text.index("Rollout:") : text.index("History:")]
    assert "Step:      2/5" in rollout_part
    assert "errorRate" in rollout_part
    history_part = text[text.index("History:") : text.index("Events:")]
    assert "(last 5 of 8)" in history_part
    numbers = [line.split()[0] for line in history_part.splitlines()[2:]]
    assert numbers == ["4", "5", "6", "7*", "8"]


def test_describe_without_rollout_has_no_rollout_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render.console, "width", 200)
    with render.console.capture() as captured:
        render.describe(_deployment(None), [])
    assert "Rollout:" not in captured.get()
    assert "History:" not in captured.get()
