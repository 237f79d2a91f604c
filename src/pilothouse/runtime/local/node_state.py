"""The runtime's nodes: each one's state, what a node action changes, what runs where.

``nodes.py`` says which nodes there are (the machine, or ``nodes.yaml``); this module
holds what the runtime knows of them while it runs: whether each is Ready, Cordoned (no
new work) or Lost, the transitions ``pilothouse node cordon|uncordon|drain|fail`` make,
and the node view (capacity, allocated, free, GPUs and items on each; what waits). The
evictions an action causes are the runtime's (``LocalRuntime.node_action``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.nodes import NodeSpec
from pilothouse.runtime.local.pods import NodeStatus, Requests
from pilothouse.spec.quantity import format_bytes, format_cpu_millis


@dataclass
class Node:
    """A node as the runtime holds it: what it is (``nodes.py``) and its state now."""

    spec: NodeSpec
    #: Ready | Cordoned | Lost
    state: str = "Ready"

    def status(self) -> NodeStatus:
        return NodeStatus(
            name=self.spec.name,
            address=self.spec.address,
            capacity=Requests(self.spec.cpu, self.spec.memory, len(self.spec.gpus)),
            gpu_ids=self.spec.gpus,
            state=self.state,
            virtual=self.spec.virtual,
            labels=dict(self.spec.labels),
        )


def node_transition(node: Node, action: str, on_node: list[str]) -> tuple[str, str]:
    """Apply ``action`` (cordon | uncordon | drain | fail) to the node's state, given the
    ids of the items that run on it: (what to tell the user, what the runtime must do to
    those items: "" | "drain" | "fail"). ValueError: not now, or no such action."""
    name = node.spec.name
    if action == "cordon":
        if node.state == "Lost":
            raise ValueError(f"node {name} is lost; `node uncordon {name}` brings it back")
        node.state = "Cordoned"
        return f"node {name} cordoned: no new work is placed on it", ""
    if action == "uncordon":
        message = (
            f"node {name} is back (it was lost)"
            if node.state == "Lost"
            else f"node {name} uncordoned: it takes new work"
        )
        node.state = "Ready"
        return message, ""
    if action == "drain":
        if node.state == "Lost":
            raise ValueError(f"node {name} is lost: there is nothing to drain")
        node.state = "Cordoned"
        message = f"node {name} drained: {len(on_node)} item(s) evicted" + (
            f" ({', '.join(on_node)})" if on_node else ""
        )
        return message, "drain"
    if action == "fail":
        if node.state == "Lost":
            raise ValueError(f"node {name} is already lost")
        node.state = "Lost"
        return (
            f"node {name} failed: {len(on_node)} item(s) lost; they are replaced elsewhere",
            "fail",
        )
    raise ValueError(f"unknown node action {action!r}; expected cordon, uncordon, drain or fail")


def node_view(nodes: Iterable[Node], items: list[Item]) -> dict[str, Any]:
    """Every node with capacity, allocated, free and what runs on it; and what waits."""
    shown: list[dict[str, Any]] = []
    for node in nodes:
        on_node = [i for i in items if i.node == node.spec.name and i.alive()]
        cap = node.status().capacity
        used = Requests(
            sum(i.requests.cpu for i in on_node),
            sum(i.requests.memory for i in on_node),
            sum(i.requests.gpu for i in on_node),
        )
        holders = {g: i.id for i in on_node for g in i.gpus}
        shown.append(
            {
                "name": node.spec.name,
                "address": node.spec.address,
                "state": node.state,
                "virtual": node.spec.virtual,
                "labels": dict(node.spec.labels),
                "capacity": _quantities(cap),
                "allocated": _quantities(used),
                "free": _quantities(
                    Requests(cap.cpu - used.cpu, cap.memory - used.memory, cap.gpu - used.gpu)
                ),
                "gpus": [{"id": g, "assignedTo": holders.get(g)} for g in node.spec.gpus],
                "items": [
                    {
                        "id": i.id,
                        "owner": f"{i.owner_kind}/{i.owner_name}",
                        "role": i.role,
                        "requests": _quantities(i.requests),
                        "gpus": list(i.gpus),
                        "phase": "Terminating" if i.doomed or i.released else i.phase,
                        "pid": i.child.pid if i.child is not None else None,
                    }
                    for i in sorted(on_node, key=lambda i: i.id)
                ],
            }
        )
    pending = [
        {
            "id": i.id,
            "owner": f"{i.owner_kind}/{i.owner_name}",
            "role": i.role,
            "requests": _quantities(i.requests),
            "reason": i.reason or "waiting for the scheduler",
        }
        for i in sorted(items, key=lambda i: i.created)
        if i.node is None and not i.released
    ]
    return {"items": shown, "pending": pending}


def _quantities(r: Requests) -> dict[str, Any]:
    return {"cpu": format_cpu_millis(r.cpu), "memory": _readable_bytes(r.memory), "gpu": r.gpu}


def _readable_bytes(amount: int) -> str:
    """Memory as a person reads it: exact when it is a whole Gi/Mi, else rounded
    (``23.5Gi``, ``191Mi``) — the machine's MemTotal is rarely a round number."""
    gib, mib = 2**30, 2**20
    if amount % mib == 0 or amount < mib:
        return format_bytes(amount)
    if amount >= gib:
        return f"{amount / gib:.1f}Gi"
    return f"{round(amount / mib)}Mi"
