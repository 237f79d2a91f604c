"""``pilothouse models``: list, show, register, promote and delete model versions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pilothouse.api.client import Client, NotRunning
from pilothouse.api.home import Home
from pilothouse.cli.render import age, console, dump, err_console
from pilothouse.registry.frameworks import FRAMEWORKS, detect_framework
from pilothouse.registry.local import (
    STAGES,
    BaseRegistry,
    ModelNotFound,
    ModelVersion,
    RegistryError,
)
from pilothouse.registry.objectstore import open_registry
from pilothouse.spec.types import split_model_ref


def registry() -> BaseRegistry:
    home = Home.from_env()
    return open_registry(home.registry_uri, home.model_cache)


def _resolve(ref: str) -> ModelVersion:
    try:
        return registry().resolve(ref)
    except (ModelNotFound, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(2 if isinstance(exc, ValueError) else 1)


def _pinned(ref: str) -> tuple[str, int]:
    try:
        name, version, stage = split_model_ref(ref)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if version is None or stage is not None:
        raise click.BadParameter(f"expected NAME:VERSION with a version number, got {ref!r}")
    return name, int(version)


@click.group()
def models() -> None:
    """Model versions in the registry ($PILOTHOUSE_HOME/models)."""


@models.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
def list_models(output: str) -> None:
    """Every model with its versions and stages."""
    reg = registry()
    rows: list[dict[str, Any]] = []
    for name in reg.models():
        versions = reg.versions(name)
        stages = {v.stage: v.version for v in versions if v.stage}
        rows.append(
            {
                "name": name,
                "versions": len(versions),
                "latest": versions[-1].version,
                "production": stages.get("production"),
                "staging": stages.get("staging"),
                "framework": versions[-1].framework,
                "created": versions[-1].created,
            }
        )
    if output != "table":
        dump(rows, output)
        return
    if not rows:
        console.print("No models registered.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "VERSIONS", "LATEST", "PRODUCTION", "STAGING", "FRAMEWORK", "AGE"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["versions"]),
            str(r["latest"]),
            str(r["production"] or "-"),
            str(r["staging"] or "-"),
            r["framework"],
            age(r["created"]),
        )
    console.print(table)


@models.command()
@click.argument("ref")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text")
def show(ref: str, output: str) -> None:
    """One version: NAME (the newest), NAME:VERSION or NAME@STAGE."""
    version = _resolve(ref)
    if output != "text":
        dump(version.as_dict(), output)
        return
    console.print(
        f"[bold]{version.ref}[/]  framework={version.framework}  stage={version.stage or '-'}  created={version.created}"
    )
    console.print(f"  path: {version.path}")
    if version.metrics:
        console.print(
            "  metrics: " + ", ".join(f"{k}={v}" for k, v in version.metrics.items()),
            highlight=False,
        )
    if version.lineage:
        console.print("  lineage: " + json.dumps(version.lineage), highlight=False)
    if version.signature:
        inputs = [i.get("name") for i in version.signature.get("inputs", [])]
        console.print(f"  inputs: {', '.join(map(str, inputs))}")
    console.print("  files (sha256):")
    for name, digest in sorted(version.files.items()):
        console.print(f"    {digest}  {name}", highlight=False)


@models.command()
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--framework", type=click.Choice(FRAMEWORKS), help="Detected from the files if omitted."
)
@click.option(
    "--metrics", "metrics_file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--signature", "signature_file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def register(
    name: str,
    path: Path,
    framework: str | None,
    metrics_file: Path | None,
    signature_file: Path | None,
) -> None:
    """Bring in a model trained elsewhere (a file or a folder) as NAME's next version."""
    from pydantic import TypeAdapter, ValidationError

    from pilothouse.spec.types import Name

    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError as exc:
        raise click.BadParameter(
            exc.errors()[0]["msg"].removeprefix("Value error, "), param_hint="NAME"
        ) from exc
    if framework is None:
        try:
            framework = detect_framework(path)
        except ValueError as exc:
            err_console.print(f"[red]error:[/] {exc}; pass --framework")
            sys.exit(2)

    def read(file: Path | None, what: str) -> dict[str, Any] | None:
        if file is None:
            return None
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc
        if not isinstance(data, dict):
            raise click.BadParameter("expected a JSON object", param_hint=what)
        return data

    try:
        version = registry().register(
            name,
            path.resolve(),
            framework=framework,
            metrics=read(metrics_file, "--metrics"),
            signature=read(signature_file, "--signature"),
            lineage={"registeredFrom": str(path.resolve())},
        )
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    console.print(f"registered {version.ref} ({framework}, {len(version.files)} file(s))")


@models.command()
@click.argument("ref")
@click.option("--stage", required=True, type=click.Choice(STAGES))
def promote(ref: str, stage: str) -> None:
    """Move NAME:VERSION to a stage; the previous holder of that stage is archived."""
    name, number = _pinned(ref)
    try:
        changed = registry().promote(name, number, stage)
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    for version in changed:
        console.print(f"{version.ref} -> {version.stage}")


def _in_use(ref: str) -> list[str]:
    """Deployments currently serving ``ref`` (empty when the control plane is down)."""
    try:
        client = Client.from_home(Home.from_env())
    except NotRunning:
        return []
    return [
        d["metadata"]["name"]
        for d in client.list_objects("modeldeployments")
        if ref in _refs_in_use(d.get("status") or {})
    ]


def _refs_in_use(status: dict[str, Any]) -> set[str]:
    """The model versions a deployment runs: the serving one and, during a rollout, the new."""
    refs = {status.get("model"), status.get("desiredModel")}
    rollout = status.get("rollout") or {}
    if rollout.get("canaryRevision"):
        refs |= {
            h.get("model")
            for h in status.get("history") or []
            if h.get("revision") == rollout["canaryRevision"]
        }
    return {r for r in refs if isinstance(r, str)}


@models.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Delete even if a deployment serves it.")
def delete(ref: str, force: bool) -> None:
    """Delete NAME:VERSION (its number is never reused)."""
    name, number = _pinned(ref)
    users = _in_use(f"{name}:{number}")
    if users and not force:
        err_console.print(
            f"[red]error:[/] {name}:{number} is served by modeldeployment(s) {', '.join(users)}; "
            "change them first or pass --force"
        )
        sys.exit(1)
    try:
        registry().delete(name, number)
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    console.print(f"deleted {name}:{number}")
