"""``pilothouse get nodes``, ``describe node`` and ``pilothouse node``: see and steer nodes.

The embedded runtime places training workers and model replicas on nodes (this
machine, or the virtual nodes of ``$PILOTHOUSE_HOME/nodes.yaml``). These verbs show
what each node has, what holds it and what waits for room, and post the user's
intent (cordon, uncordon, drain, fail) to the control API, which answers with the
node and a line saying what happened, or with why the action does not apply.
"""

from __future__ import annotations

import click
from rich.padding import Padding

from pilothouse.api.client import Client
from pilothouse.cli.main import client, handle_errors
from pilothouse.cli.render import (
    console,
    dump,
    err_console,
    evicted_lines,
    node_items_table,
    node_view,
    nodes_view,
)

#: what ``get``/``describe`` accept as the kind "node"
NODE_WORDS = ("node", "nodes", "no")
ACTIONS = ("cordon", "uncordon", "drain", "fail")


def node_ref(kind: str, name: str | None) -> tuple[bool, str | None]:
    """Whether ``kind`` (``nodes``, ``no``, ``node/NAME``) means nodes, and the node's name."""
    word, slash, rest = kind.partition("/")
    if word.lower() not in NODE_WORDS:
        return False, name
    return True, (rest or None) if slash else name


def get_nodes(c: Client, name: str | None, output: str) -> None:
    """``get nodes [NAME]``: a table (with pending items below), or the API's JSON/YAML."""
    one = c.node(name) if name else None
    body = {"items": [one], "pending": []} if one is not None else c.nodes()
    if output in ("json", "yaml"):
        dump(one if one is not None else body, output)
    elif output == "name":
        for item in body.get("items") or []:
            print(f"node/{item['name']}")
    elif not body.get("items") and not body.get("pending"):
        console.print("No nodes found.")
    else:
        console.print(nodes_view(body, wide=output == "wide"))


def describe_node(c: Client, name: str) -> None:
    console.print(node_view(c.node(name)))


@click.group("node")
def node() -> None:
    """Cordon, uncordon, drain or fail a node (see them with `pilothouse get nodes`)."""


@node.command()
@click.argument("name")
@handle_errors
def cordon(name: str) -> None:
    """Place nothing new on NAME; what runs there keeps running."""
    console.print(client().node_action(name, "cordon")["message"], highlight=False)


@node.command()
@click.argument("name")
@handle_errors
def uncordon(name: str) -> None:
    """Let the scheduler place work on NAME again."""
    console.print(client().node_action(name, "uncordon")["message"], highlight=False)


@node.command()
@click.argument("name")
@handle_errors
def drain(name: str) -> None:
    """Cordon NAME and evict what runs there, so its owners place it elsewhere."""
    c = client()
    before = c.node(name)
    body = c.node_action(name, "drain")
    console.print(body["message"], highlight=False)
    for line in evicted_lines(before, body):
        console.print(f"  evicted {line}", highlight=False)


@node.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def fail(name: str, yes: bool) -> None:
    """Simulate losing NAME: kill everything on it at once (no graceful eviction)."""
    c = client()
    before = c.node(name)
    items = before.get("items") or []
    if not yes:
        if items:
            console.print(f"node {name} runs {len(items)} item(s); failing it kills them all:")
            console.print(Padding(node_items_table(items), (0, 0, 0, 2), expand=False))
        if not click.confirm(f"Fail node {name}?", default=False, err=True):
            err_console.print("aborted; nothing was done")
            raise SystemExit(1)
    body = c.node_action(name, "fail")
    console.print(body["message"], highlight=False)
    for line in evicted_lines(before, body):
        console.print(f"  killed {line}", highlight=False)
