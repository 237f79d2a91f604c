"""How objects look on a terminal: tables for ``get``, sections for ``describe``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


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
        "TrainingJob": ["NAME", "PHASE", "ATTEMPT", "RESTARTS", "OUTPUT", "AGE"],
        "ModelDeployment": ["NAME", "MODEL", "READY", "URL", "AGE"],
        "Queue": ["NAME", "WEIGHT", "PRIORITY", "AGE"],
    }[kind]


def row(obj: dict[str, Any]) -> list[str]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    name = meta["name"] + (" (deleting)" if meta.get("deletionTimestamp") else "")
    created = age(meta.get("creationTimestamp"))
    if obj["kind"] == "TrainingJob":
        output = (status.get("outputModel") or {}).get("ref", "-")
        return [
            name,
            status.get("phase", "Pending"),
            str(status.get("attempt", 0)),
            str(status.get("restarts", 0)),
            output,
            created,
        ]
    if obj["kind"] == "ModelDeployment":
        ready = f"{status.get('readyReplicas', 0)}/{status.get('desiredReplicas', '?')}"
        return [
            name,
            status.get("model") or spec.get("model", "-"),
            ready,
            status.get("url", "-"),
            created,
        ]
    return [name, str(spec.get("weight", 1.0)), str(spec.get("priority", 0)), created]


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
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())


def describe(obj: dict[str, Any], events: list[dict[str, Any]]) -> None:
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
        "  " + yaml.safe_dump(obj.get("spec"), sort_keys=False).rstrip().replace("\n", "\n  "),
        highlight=False,
    )
    shown = {
        k: v for k, v in status.items() if k not in ("conditions", "replicaPolicy", "nextStartAt")
    }
    if shown:
        console.print("[bold]Status:[/]")
        console.print(
            "  " + yaml.safe_dump(shown, sort_keys=False).rstrip().replace("\n", "\n  "),
            highlight=False,
        )
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
