"""How objects look on a terminal: tables for ``get``, sections for ``describe``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import yaml
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)
#: revisions ``describe`` lists; ``rollout history`` lists them all
DESCRIBE_HISTORY = 5


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "-"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _condition(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def columns(kind: str) -> list[str]:
    return {
        "TrainingJob": ["NAME", "PHASE", "ATTEMPT", "RESTARTS", "QUEUE", "OUTPUT", "AGE"],
        "ModelDeployment": ["NAME", "MODEL", "READY", "URL", "AGE"],
        "Queue": ["NAME", "WEIGHT", "PRIORITY", "USED / QUOTA", "WAITING", "AGE"],
    }[kind]


def row(obj: dict[str, Any]) -> list[str]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    name = meta["name"] + (" (deleting)" if meta.get("deletionTimestamp") else "")
    created = age(meta.get("creationTimestamp"))
    if obj["kind"] == "TrainingJob":
        output = (status.get("outputModel") or {}).get("ref", "-")
        phase = status.get("phase", "Pending")
        if phase == "Running" and _condition(obj, "Scheduled") == "False":
            phase = "Pending"  # submitted, waiting for a node (its message says why)
        restarts = str(status.get("restarts", 0))
        if status.get("disruptions"):
            restarts += f" (+{status['disruptions']} disrupted)"
        return [
            name,
            phase,
            str(status.get("attempt", 0)),
            restarts,
            spec.get("queue", "default"),
            output,
            created,
        ]
    if obj["kind"] == "ModelDeployment":
        ready = f"{status.get('readyReplicas', 0)}/{status.get('desiredReplicas', '?')}"
        model = status.get("model") or spec.get("model", "-")
        rollout = status.get("rollout") or {}
        desired_model = status.get("desiredModel")
        if rollout.get("canaryRevision") and desired_model and desired_model != model:
            model = f"{model} -> {desired_model} ({rollout.get('weight', 0):g}%)"
        elif rollout.get("phase") == "Degraded" and desired_model and desired_model != model:
            model = f"{model} ({desired_model} rolled back)"
        return [
            name,
            model,
            ready,
            status.get("url", "-"),
            created,
        ]
    used, quota = status.get("used") or {}, spec.get("quota") or {}
    shares = [
        f"{key} {used.get(key, 0)}/{quota[key]}"
        if quota.get(key) is not None
        else f"{key} {used.get(key, 0)}"
        for key in ("cpu", "memory", "gpu")
    ]
    return [
        name,
        str(spec.get("weight", 1.0)),
        str(spec.get("priority", 0)),
        ", ".join(shares),
        str(status.get("pendingWorkers", 0)),
        created,
    ]


def print_table(kind: str, objects: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns(kind):
        table.add_column(column, no_wrap=True)
    for obj in objects:
        table.add_row(*row(obj))
    console.print(table)


def dump(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(
            yaml.safe_dump(
                data, sort_keys=False, default_flow_style=False, allow_unicode=True
            ).rstrip()
        )


def revisions_table(revisions: list[dict[str, Any]]) -> Table:
    """``status.revisions``: what runs of each revision of a ModelDeployment."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("REVISION", "MODEL", "READY", "STARTING", "PENDING", "FAILED", "RESTARTS"):
        table.add_column(column, no_wrap=True)
    table.add_column("NODES")
    table.add_column("MESSAGE")
    for r in revisions:
        reason, message = r.get("reason") or "", r.get("message") or ""
        table.add_row(
            str(r.get("revision", "-")),
            str(r.get("model") or "-"),
            f"{r.get('ready', 0)}/{r.get('desired', 0)}",
            str(r.get("starting", 0)),
            str(r.get("pending", 0)),
            str(r.get("failed", 0)),
            str(r.get("restarts", 0)) + (" (crash loop)" if r.get("crashLooping") else ""),
            ",".join(r.get("nodes") or []) or "-",
            f"{reason}: {message}" if reason and message else reason or message,
            style="red" if r.get("crashLooping") else "",
        )
    return table


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def pods_table(kind: str, pods: list[dict[str, Any]]) -> Table:
    """The object's replicas (ModelDeployment) or workers (TrainingJob) from
    ``GET .../{name}/pods``: what runs where, as ``kubectl get pods -o wide``."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    workers = kind == "TrainingJob"
    columns = (
        ("ID", "NODE", "PHASE", "RANK", "ATTEMPT", "PID", "EXIT")
        if workers
        else ("ID", "NODE", "PHASE", "READY", "REVISION", "PID", "ENDPOINT")
    )
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("MESSAGE")
    for p in pods:
        if workers:
            middle = [_cell(p.get(key)) for key in ("rank", "attempt", "pid", "exitCode")]
        else:
            ended = f" (exit {p['exitCode']})" if p.get("exitCode") is not None else ""
            middle = [
                "yes" if p.get("ready") else "no",
                _cell(p.get("revision")),
                _cell(p.get("pid")),
                _cell(p.get("endpoint")) + ended,
            ]
        table.add_row(
            _cell(p.get("id")),
            _cell(p.get("node")),
            _cell(p.get("phase")),
            *middle,
            p.get("message") or "",
        )
    return table


def describe(
    obj: dict[str, Any],
    events: list[dict[str, Any]],
    pods: list[dict[str, Any]] | None = None,
) -> None:
    """``pods``: the object's replicas or workers (``GET .../pods``), for the kinds that
    run something; None shows no Pods section."""
    meta, status = obj["metadata"], obj.get("status") or {}
    console.print(f"[bold]Name:[/]        {meta['name']}")
    console.print(f"[bold]Kind:[/]        {obj['kind']} ({obj['apiVersion']})")
    console.print(
        f"[bold]Created:[/]     {meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)"
    )
    console.print(
        f"[bold]Generation:[/]  {meta.get('generation')} (observed {status.get('observedGeneration', '-')})"
    )
    if meta.get("labels"):
        console.print(
            f"[bold]Labels:[/]      {', '.join(f'{k}={v}' for k, v in meta['labels'].items())}"
        )
    if meta.get("deletionTimestamp"):
        console.print(f"[bold red]Deleting since {meta['deletionTimestamp']}[/]")
    console.print("[bold]Spec:[/]")
    console.print(
        "  "
        + yaml.safe_dump(obj.get("spec"), sort_keys=False, allow_unicode=True)
        .rstrip()
        .replace("\n", "\n  "),
        highlight=False,
    )
    # the revisions, the rollout and its history get their own sections below;
    # ``internal`` is the controller's bookkeeping behind them, not for people
    hidden = ("conditions", "revisions", "rollout", "history", "internal")
    shown = {k: v for k, v in status.items() if k not in hidden}
    if shown:
        console.print("[bold]Status:[/]")
        console.print(
            "  "
            + yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
            .rstrip()
            .replace("\n", "\n  "),
            highlight=False,
        )
    if status.get("revisions"):
        console.print("[bold]Revisions:[/]")
        console.print(Padding(revisions_table(status["revisions"]), (0, 0, 0, 2)))
    if pods is not None:
        console.print("[bold]Pods:[/]" + ("" if pods else "  <none>"))
        if pods:
            console.print(Padding(pods_table(obj["kind"], pods), (0, 0, 0, 2)))
    if status.get("rollout"):
        console.print("[bold]Rollout:[/]")
        console.print(Padding(rollout_view(status["rollout"], datetime.now(UTC)), (0, 0, 0, 2)))
    history = status.get("history") or []
    if history:
        more = (
            f" (last {DESCRIBE_HISTORY} of {len(history)})"
            if len(history) > DESCRIBE_HISTORY
            else ""
        )
        console.print(f"[bold]History:[/]{more}")
        table = history_table(history[-DESCRIBE_HISTORY:], current_revision(status))
        console.print(Padding(table, (0, 0, 0, 2)))
    conditions = status.get("conditions") or []
    if conditions:
        table = Table(title=None, box=None, header_style="bold", pad_edge=False)
        for column in ("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"):
            table.add_column(column)
        for c in conditions:
            table.add_row(
                c["type"],
                c["status"],
                c.get("reason", ""),
                c.get("message", ""),
                age(c.get("lastTransitionTime")),
            )
        console.print("[bold]Conditions:[/]")
        console.print(table)
    console.print("[bold]Events:[/]" + ("" if events else "  <none>"))
    if events:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("TYPE", "REASON", "AGE", "COUNT", "MESSAGE"):
            table.add_column(column)
        for e in events:
            style = "yellow" if e["type"] == "Warning" else ""
            table.add_row(
                e["type"],
                e["reason"],
                age(e.get("lastTimestamp")),
                str(e.get("count", 1)),
                e["message"],
                style=style,
            )
        console.print(table)


# -- rollouts ----------------------------------------------------------------------------
#
# Pure functions of a ModelDeployment's ``status.rollout`` / ``status.history`` (and, where
# a countdown is shown, of ``now``): ``rollout status``, ``rollout history`` and
# ``describe`` all draw from them, so the three views never disagree.

PHASE_STYLES = {"Healthy": "green", "Progressing": "yellow", "Paused": "cyan", "Degraded": "red"}
CHECK_STYLES = {"Successful": "green", "Failed": "red", "Error": "red", "Inconclusive": "yellow"}
VERDICT_STYLES = {"Passing": "green", "Failed": "red", "Inconclusive": "yellow"}
OUTCOME_STYLES = {"Stable": "green", "Progressing": "yellow", "RolledBack": "red", "Aborted": "red"}
HISTORY_COLUMNS = ("NUMBER", "REVISION", "MODEL", "OUTCOME", "AGE", "APPLIED-BY", "CAUSE")


def parse_time(timestamp: str | None) -> datetime | None:
    if not timestamp:
        return None
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    return then if then.tzinfo else then.replace(tzinfo=UTC)


def span(seconds: float) -> str:
    """A short duration for humans: ``45s``, ``2m05s``, ``1h30m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def number(value: float | int | None) -> str:
    """A measured value: ``-`` when absent, else at most four significant digits."""
    if value is None:
        return "-"
    return f"{value:.4g}"


def percent(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g}%"


def check_value(check: dict[str, Any], value: Any) -> str:
    """A check's value with its unit: latencies in milliseconds, the rest as numbers."""
    if value is not None and str(check.get("metric", "")).startswith("latency"):
        return f"{float(value) * 1000:.3g} ms"
    return number(value)


def check_bound(check: dict[str, Any]) -> str:
    """The pass band of an analysis check: ``≤ 0.05``, ``≥ 0.95`` or ``≤ 250 ms``."""
    low, high = check.get("min"), check.get("max")
    parts = ([f"≥ {check_value(check, low)}"] if low is not None else []) + (
        [f"≤ {check_value(check, high)}"] if high is not None else []
    )
    return ", ".join(parts) or "-"


def step_text(rollout: dict[str, Any]) -> str:
    """``2/5``: the current step counted from 1 (``status.rollout.step`` is its 0-based
    index), as the controller's messages count; ``-`` when no canary walks its steps."""
    steps, step = rollout.get("steps"), rollout.get("step")
    return "-" if steps is None or step is None else f"{step + 1}/{steps}"


def revision_text(rollout: dict[str, Any], revision: str | None) -> str:
    """``3-ab12cd (2/2 ready)``; ``-`` when there is no such revision."""
    if not revision:
        return "-"
    counts = (rollout.get("replicas") or {}).get(revision)
    if not counts:
        return revision
    return f"{revision} ({counts.get('ready', 0)}/{counts.get('desired', 0)} ready)"


def phase_text(rollout: dict[str, Any], now: datetime | None) -> str:
    """The phase, and until when a timed pause holds.

    With ``now`` the pause shows its countdown (``resumes in 25s``); without, the
    absolute time, so the text only changes when the rollout does.
    """
    phase = str(rollout.get("phase") or "Unknown")
    until = parse_time(rollout.get("pauseUntil"))
    if until is None:
        return phase
    if now is None:
        return f"{phase} (until {rollout['pauseUntil']})"
    left = (until - now).total_seconds()
    # once the time is up, whatever still holds the rollout is in its message
    return f"{phase} (resumes in {span(left)})" if left > 0 else phase


def paused_reason(rollout: dict[str, Any]) -> str | None:
    """Why the rollout is paused, unless its message says so already."""
    reason = rollout.get("pausedReason")
    return str(reason) if reason and reason != rollout.get("message") else None


def verdict_text(analysis: dict[str, Any], now: datetime | None) -> str:
    out = str(analysis.get("verdict") or "-")
    out += f": {analysis['message']}" if analysis.get("message") else ""
    last = parse_time(analysis.get("lastRun"))
    if last is not None and now is not None:
        out += f" (measured {span((now - last).total_seconds())} ago)"
    return out


def rollout_fields(rollout: dict[str, Any], now: datetime | None) -> list[tuple[str, str]]:
    """The rollout as label/value pairs, in the order they are shown."""
    strategy = rollout.get("strategy") or "rolling"
    fields = [("Strategy", str(strategy)), ("Phase", phase_text(rollout, now))]
    reason = paused_reason(rollout)
    if reason:
        fields.append(("Paused", reason))
    if strategy == "canary":
        fields.append(("Step", step_text(rollout)))
    fields += [
        ("Weight", f"{percent(rollout.get('weight'))} of live traffic to the new revision"),
        ("Mirror", f"{percent(rollout.get('mirrorPercent'))} of stable traffic copied to it"),
        ("Stable", revision_text(rollout, rollout.get("stableRevision"))),
        ("New", revision_text(rollout, rollout.get("canaryRevision"))),
    ]
    if rollout.get("abortedRevision"):
        fields.append(("Aborted", str(rollout["abortedRevision"])))
    started = parse_time(rollout.get("startedAt"))
    if started is not None:
        when = str(rollout["startedAt"])
        fields.append(
            (
                "Started",
                when if now is None else f"{when} ({span((now - started).total_seconds())} ago)",
            )
        )
    analysis = rollout.get("analysis") or {}
    if analysis.get("verdict"):  # none when no new revision is being judged
        fields.append(("Analysis", verdict_text(analysis, now)))
    if rollout.get("message"):
        fields.append(("Message", str(rollout["message"])))
    return fields


def analysis_table(analysis: dict[str, Any] | None) -> Table | None:
    """One row per check: what it measures, its last value against its band, its tally."""
    checks = (analysis or {}).get("checks") or []
    if not checks:
        return None
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("CHECK", "METRIC", "VALUE", "BOUND", "SAMPLES", "PHASE", "SUCCESSFUL", "FAILED"):
        table.add_column(column, no_wrap=True)
    table.add_column("MESSAGE")
    for check in checks:
        phase = check.get("phase") or "-"
        table.add_row(
            str(check.get("name", "-")),
            str(check.get("metric", "-")),
            check_value(check, check.get("value")),
            check_bound(check),
            str(check.get("samples", "-")),
            Text(phase, style=CHECK_STYLES.get(phase, "")),
            str(check.get("successful", 0)),
            str(check.get("failed", 0)),
            str(check.get("message") or ""),
        )
    return table


def rollout_view(rollout: dict[str, Any], now: datetime | None) -> Group:
    """What ``rollout status`` (and ``describe``) shows: the fields, then the checks."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in rollout_fields(rollout, now):
        style = ""
        if label == "Phase":
            style = PHASE_STYLES.get(str(rollout.get("phase")), "")
        elif label == "Analysis":
            style = VERDICT_STYLES.get(str((rollout.get("analysis") or {}).get("verdict")), "")
        grid.add_row(label + ":", Text(value, style=style))
    table = analysis_table(rollout.get("analysis"))
    return Group(grid, table) if table is not None else Group(grid)


def rollout_lines(rollout: dict[str, Any]) -> list[str]:
    """The rollout as plain lines for logs, free of countdowns: each changes only when the
    rollout does, so a watcher can print just the lines that differ."""
    head = " ".join(
        f"{label.lower()}={value}"
        for label, value in (
            ("phase", phase_text(rollout, None)),
            ("strategy", rollout.get("strategy") or "rolling"),
            ("step", step_text(rollout)),
            ("weight", percent(rollout.get("weight"))),
            ("mirror", percent(rollout.get("mirrorPercent"))),
        )
    )
    lines = [head]
    reason = paused_reason(rollout)
    if reason:
        lines.append(f"paused: {reason}")
    lines.append(
        f"stable {revision_text(rollout, rollout.get('stableRevision'))}; "
        f"new {revision_text(rollout, rollout.get('canaryRevision'))}"
    )
    analysis = rollout.get("analysis") or {}
    if analysis.get("verdict"):
        # the verdict alone: its message repeats the checks' (and may count measurements)
        lines.append(f"analysis {analysis['verdict']}")
    for check in analysis.get("checks") or []:
        lines.append(
            f"check {check.get('name')}: {check.get('metric')}={check_value(check, check.get('value'))} "
            f"({check_bound(check)}, {check.get('samples', '-')} samples) "
            f"{check.get('phase') or '-'}, {check.get('successful', 0)} successful, "
            f"{check.get('failed', 0)} failed"
            + (f": {check['message']}" if check.get("message") else "")
        )
    if rollout.get("message"):
        # without countdowns ("for 4s more", "in 25s"): a line changes when the rollout does
        message = re.sub(r" for \d+s more| in \d+s(?= |$)", "", str(rollout["message"]))
        lines.append(f"message: {message}")
    return lines


def current_revision(status: dict[str, Any]) -> str | None:
    """The revision that serves: the rollout's stable one, else the one the status names."""
    rollout = status.get("rollout") or {}
    if rollout.get("stableRevision"):
        return str(rollout["stableRevision"])
    if status.get("revision"):
        return str(status["revision"])
    stable = [h for h in status.get("history") or [] if h.get("outcome") == "Stable"]
    return str(stable[-1]["revision"]) if stable else None


def history_table(history: list[dict[str, Any]], current: str | None) -> Table:
    """Revisions oldest first; ``*`` marks the one serving now."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in HISTORY_COLUMNS:
        table.add_column(
            column,
            no_wrap=column in ("NUMBER", "REVISION", "MODEL", "OUTCOME", "AGE"),
            overflow="fold",
        )
    for entry in history:
        mark = "*" if current is not None and entry.get("revision") == current else " "
        outcome = str(entry.get("outcome") or "-")
        table.add_row(
            f"{entry.get('number', '-')}{mark}",
            str(entry.get("revision") or "-"),
            str(entry.get("model") or "-"),
            Text(outcome, style=OUTCOME_STYLES.get(outcome, "")),
            age(entry.get("deployedAt") or entry.get("createdAt"))
            if entry.get("deployedAt") or entry.get("createdAt")
            else "-",
            str(entry.get("appliedBy") or "-"),
            str(entry.get("cause") or "-"),
        )
    return table


# -- nodes -------------------------------------------------------------------------------
#
# Pure functions of the control API's node objects (``GET /api/v1/nodes``): ``get nodes``,
# ``describe node`` and ``node drain`` draw from them.

NODE_STATE_STYLES = {"Ready": "green", "Cordoned": "yellow", "Draining": "yellow", "Lost": "red"}
ITEM_PHASE_STYLES = {"Running": "green", "Starting": "yellow", "Terminating": "yellow"}
NODE_COLUMNS = ("NAME", "STATE", "CPU", "MEMORY", "GPU", "ITEMS")
NODE_WIDE_COLUMNS = (*NODE_COLUMNS, "ADDRESS", "VIRTUAL", "LABELS")


def _amount(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def used_of(node: dict[str, Any], resource: str) -> str:
    """``allocated/capacity`` of one resource (``2/8``, ``4Gi/32Gi``, ``1/2``)."""
    allocated = (node.get("allocated") or {}).get(resource, 0)
    capacity = (node.get("capacity") or {}).get(resource)
    return f"{_amount(allocated)}/{_amount(capacity)}"


def labels_text(labels: dict[str, Any] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (labels or {}).items()) or "-"


def requests_text(requests: dict[str, Any] | None) -> str:
    """``cpu=2 memory=4Gi gpu=1``; a zero or missing GPU request is left out."""
    requests = requests or {}
    parts = [f"{key}={requests[key]}" for key in ("cpu", "memory") if key in requests]
    if requests.get("gpu"):
        parts.append(f"gpu={requests['gpu']}")
    return " ".join(parts) or "-"


def node_row(node: dict[str, Any], wide: bool = False) -> list[str | Text]:
    state = str(node.get("state") or "Unknown")
    cells: list[str | Text] = [
        str(node.get("name", "-")),
        Text(state, style=NODE_STATE_STYLES.get(state, "")),
        used_of(node, "cpu"),
        used_of(node, "memory"),
        used_of(node, "gpu"),
        str(len(node.get("items") or [])),
    ]
    if wide:
        cells += [
            str(node.get("address") or "-"),
            "yes" if node.get("virtual") else "no",
            labels_text(node.get("labels")),
        ]
    return cells


def nodes_table(nodes: list[dict[str, Any]], wide: bool = False) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in NODE_WIDE_COLUMNS if wide else NODE_COLUMNS:
        table.add_column(column, no_wrap=True)
    for node in nodes:
        table.add_row(*node_row(node, wide))
    return table


def pending_table(pending: list[dict[str, Any]]) -> Table | None:
    """Items no node can take now, each with the scheduler's reason; ``None`` if none."""
    if not pending:
        return None
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "OWNER", "REQUESTS"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON")
    for item in pending:
        table.add_row(
            str(item.get("id", "-")),
            str(item.get("owner") or "-"),
            requests_text(item.get("requests")),
            Text(str(item.get("reason") or "-"), style="yellow"),
        )
    return table


def nodes_view(body: dict[str, Any], wide: bool = False) -> Group:
    """``get nodes``: the nodes, then a PENDING section when something waits for room."""
    parts: list[RenderableType] = [nodes_table(body.get("items") or [], wide)]
    pending = pending_table(body.get("pending") or [])
    if pending is not None:
        parts += [Text(""), Text("PENDING", style="bold"), pending]
    return Group(*parts)


def node_items_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "OWNER", "ROLE", "PHASE", "REQUESTS", "GPUS"):
        table.add_column(column, no_wrap=True)
    for item in items:
        phase = str(item.get("phase") or "-")
        table.add_row(
            str(item.get("id", "-")),
            str(item.get("owner") or "-"),
            str(item.get("role") or "-"),
            Text(phase, style=ITEM_PHASE_STYLES.get(phase, "")),
            requests_text(item.get("requests")),
            ",".join(str(g) for g in item.get("gpus") or []) or "-",
        )
    return table


def node_view(node: dict[str, Any]) -> Group:
    """``describe node``: identity, capacity against allocations, GPUs and their holders, items."""
    state = str(node.get("state") or "Unknown")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Name:", str(node.get("name", "-")))
    grid.add_row("State:", Text(state, style=NODE_STATE_STYLES.get(state, "")))
    grid.add_row("Address:", str(node.get("address") or "-"))
    grid.add_row("Virtual:", "yes" if node.get("virtual") else "no (this machine)")
    grid.add_row("Labels:", labels_text(node.get("labels")))

    resources = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RESOURCE", "CAPACITY", "ALLOCATED", "FREE"):
        resources.add_column(column, no_wrap=True)
    for resource in ("cpu", "memory", "gpu"):
        resources.add_row(
            resource,
            _amount((node.get("capacity") or {}).get(resource)),
            _amount((node.get("allocated") or {}).get(resource)),
            _amount((node.get("free") or {}).get(resource)),
        )

    parts: list[RenderableType] = [grid, Text("Resources:", style="bold")]
    parts.append(Padding(resources, (0, 0, 0, 2), expand=False))
    gpus = node.get("gpus") or []
    parts.append(Text("GPUs:" + ("" if gpus else "  <none>"), style="bold"))
    if gpus:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("ID", no_wrap=True)
        table.add_column("ASSIGNED-TO", no_wrap=True)
        for gpu in gpus:
            holder = gpu.get("assignedTo")
            table.add_row(str(gpu.get("id", "-")), str(holder) if holder else "-")
        parts.append(Padding(table, (0, 0, 0, 2), expand=False))
    items = node.get("items") or []
    parts.append(Text("Items:" + ("" if items else "  <none>"), style="bold"))
    if items:
        parts.append(Padding(node_items_table(items), (0, 0, 0, 2), expand=False))
    return Group(*parts)


def evicted_lines(before: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """What a drain (or fail) took off a node, one ``id (owner)`` line each.

    The answer's ``evicted`` list when the server sends one, else the items the node
    held before that it no longer runs (gone, or terminating).
    """
    evicted = body.get("evicted")
    if evicted is None:
        after = {
            i.get("id"): i
            for i in (body.get("node") or {}).get("items") or []
            if i.get("phase") != "Terminating"
        }
        evicted = [i for i in before.get("items") or [] if i.get("id") not in after]
    lines = []
    for item in evicted:
        if isinstance(item, dict):
            owner = f" ({item['owner']})" if item.get("owner") else ""
            lines.append(f"{item.get('id', '-')}{owner}")
        else:
            lines.append(str(item))
    return lines
