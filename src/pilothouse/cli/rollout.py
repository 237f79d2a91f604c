"""``pilothouse rollout``: watch and steer a ModelDeployment's progressive rollout.

Modelled on Argo Rollouts' kubectl plugin. The controller decides; these verbs only
show ``status.rollout`` and ``status.history`` and post the user's intent (promote,
abort, pause, resume, retry, undo) to the control API, which answers with the
updated object or with why the action does not apply now.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import httpx
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from pilothouse.api.client import Client, NotRunning
from pilothouse.api.home import Home
from pilothouse.cli.main import _duration, client, handle_errors
from pilothouse.cli.render import (
    console,
    current_revision,
    dump,
    err_console,
    history_table,
    rollout_lines,
    rollout_view,
)

PLURAL = "modeldeployments"
#: how often ``status --watch`` reads the object (and redraws the live view)
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Verdict:
    """Where a watched rollout ended: the exit code and the line that says so."""

    code: int
    message: str


def verdict(obj: dict[str, Any]) -> Verdict | None:
    """Whether a watch can stop at this snapshot of the object; ``None``: keep watching.

    A status the controller wrote before the latest spec change says nothing about
    that change, so nothing is decided until ``observedGeneration`` catches up. Healthy
    counts once the stable revision has all its replicas ready (the controller calls a
    first revision Healthy as soon as it is chosen, before anything serves).
    """
    name = obj["metadata"]["name"]
    status = obj.get("status") or {}
    rollout = status.get("rollout")
    if not rollout or status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
        return None
    phase = rollout.get("phase")
    if phase == "Degraded":
        why = rollout.get("message") or (rollout.get("analysis") or {}).get("message") or "-"
        return Verdict(1, f"modeldeployment/{name} rollout is degraded: {why}")
    if phase != "Healthy" or rollout.get("canaryRevision"):
        return None
    stable = rollout.get("stableRevision")
    counts = (rollout.get("replicas") or {}).get(stable) or {}
    if counts.get("ready", 0) < counts.get("desired", 0):
        return None
    return Verdict(0, f"modeldeployment/{name} rollout is healthy at revision {stable or '-'}")


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of ``now`` a log has not just seen (in order)."""
    seen = set(before)
    return [line for line in now if line not in seen]


@click.group()
def rollout() -> None:
    """Watch and steer the progressive rollout of a ModelDeployment."""


@rollout.command()
@click.argument("name")
@click.option("-w", "--watch", is_flag=True, help="Follow until it is healthy or degraded.")
@click.option("--timeout", default="10m", show_default=True, help="With --watch: give up after.")
@handle_errors
def status(name: str, watch: bool, timeout: str) -> None:
    """Show NAME's rollout: phase, step, weights, analysis.

    Revisions with their ready replicas, and one row per analysis check. With --watch, exit 0 once it is healthy on one revision, 1 when it degrades or
    the timeout passes. Not on a terminal, only lines that changed are printed.
    """
    limit = _duration(timeout, "--timeout")
    c = client()
    obj = c.get(PLURAL, name)
    if not watch:
        if console.is_terminal:
            console.print(_view(obj))
        else:  # whole lines for logs and scripts, never cut to a terminal's width
            for line in _lines(obj):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    deadline = time.monotonic() + limit
    try:
        if console.is_terminal:
            with Live(_view(obj), console=console, refresh_per_second=2) as live:
                obj = _follow(c, name, obj, deadline, lambda o: live.update(_view(o)))
        else:
            printed: list[str] = []

            def log(o: dict[str, Any]) -> None:
                nonlocal printed
                lines = _lines(o)
                stamp = datetime.now(UTC).strftime("%H:%M:%SZ")
                for line in new_lines(printed, lines):
                    console.print(f"{stamp} {line}", highlight=False, markup=False, soft_wrap=True)
                printed = lines

            obj = _follow(c, name, obj, deadline, log)
    except KeyboardInterrupt:
        sys.exit(130)
    ended = verdict(obj)
    if ended is None:
        last = (obj.get("status") or {}).get("rollout") or {}
        _error(
            f"timed out after {timeout} waiting for modeldeployment/{name} to finish its "
            f"rollout (phase {last.get('phase', '-')}: {last.get('message') or '-'})"
        )
        sys.exit(1)
    if ended.code:
        _error(ended.message)
    else:
        console.print(ended.message, highlight=False, markup=False)
    sys.exit(ended.code)


def _error(message: str) -> None:
    """``error: ...`` as the other verbs print it; server text is never read as markup."""
    err_console.print(Text.assemble(("error:", "red"), " ", message), highlight=False)


def _view(obj: dict[str, Any]) -> RenderableType:
    head = Text.assemble(("Name:", "bold"), f"      modeldeployment/{obj['metadata']['name']}")
    rollout_status = (obj.get("status") or {}).get("rollout")
    if not rollout_status:
        return Group(head, Text("no rollout status yet"))
    return Group(head, rollout_view(rollout_status, datetime.now(UTC)))


def _lines(obj: dict[str, Any]) -> list[str]:
    rollout_status = (obj.get("status") or {}).get("rollout")
    if not rollout_status:
        return ["no rollout status yet"]
    return rollout_lines(rollout_status)


def _follow(
    c: Client,
    name: str,
    obj: dict[str, Any],
    deadline: float,
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Show each snapshot until a verdict or the deadline; the last snapshot read."""
    show(obj)
    while verdict(obj) is None and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        try:
            obj = c.get(PLURAL, name)
        except httpx.TransportError:
            # the control plane restarting is not the rollout's verdict; it may come
            # back on another port: read daemon.json again
            with contextlib.suppress(NotRunning, OSError):
                fresh = Client.from_home(Home.from_env())
                c.close()
                c = fresh
            continue
        show(obj)
    return obj


# -- history ---------------------------------------------------------------------------


@rollout.command()
@click.argument("name")
@click.option(
    "--revision", type=click.IntRange(min=1), default=None, help="Print this revision's template."
)
@handle_errors
def history(name: str, revision: int | None) -> None:
    """List NAME's revisions, oldest first.

    * marks the revision that serves now; --revision N prints N's template as YAML.
    """
    status = client().get(PLURAL, name).get("status") or {}
    entries: list[dict[str, Any]] = status.get("history") or []
    if revision is None:
        if not entries:
            console.print(f"modeldeployment/{name} has no revisions yet.")
            return
        console.print(history_table(entries, current_revision(status)))
        return
    for entry in entries:
        if entry.get("number") == revision:
            dump(entry.get("template") or {}, "yaml")
            return
    known = ", ".join(str(e.get("number")) for e in entries) or "none"
    _error(f"modeldeployment/{name} has no revision {revision} (known: {known})")
    sys.exit(2)


# -- actions ---------------------------------------------------------------------------


def _act(name: str, action: str, done: str, **fields: Any) -> None:
    client().rollout_action(name, action, **fields)
    console.print(f"modeldeployment/{name} {done}", highlight=False)


@rollout.command()
@click.argument("name")
@click.option("--full", is_flag=True, help="Skip the remaining steps and analysis.")
@handle_errors
def promote(name: str, full: bool) -> None:
    """Move past the current pause or step.

    With --full, skip the remaining steps and analysis and switch all traffic now.
    """
    if full:
        _act(name, "promote", "fully promoted", full=True)
    else:
        _act(name, "promote", "promoted")


@rollout.command()
@click.argument("name")
@handle_errors
def abort(name: str) -> None:
    """Stop the rollout; all traffic back to stable."""
    _act(name, "abort", "aborted")


@rollout.command()
@click.argument("name")
@handle_errors
def pause(name: str) -> None:
    """Hold the rollout where it is until resumed."""
    _act(name, "pause", "paused")


@rollout.command()
@click.argument("name")
@handle_errors
def resume(name: str) -> None:
    """Continue a paused rollout."""
    _act(name, "resume", "resumed")


@rollout.command()
@click.argument("name")
@handle_errors
def retry(name: str) -> None:
    """Roll out an aborted revision again."""
    _act(name, "retry", "retried")


@rollout.command()
@click.argument("name")
@click.option(
    "--to-revision",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the previous revision.",
)
@handle_errors
def undo(name: str, to_revision: int | None) -> None:
    """Roll back to an earlier revision.

    The earlier revision's template becomes the spec again and rolls out through the
    deployment's strategy, like any change.
    """
    if to_revision is None:
        _act(name, "undo", "rolled back")
    else:
        _act(name, "undo", f"rolled back to revision {to_revision}", toRevision=to_revision)
