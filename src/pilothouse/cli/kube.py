"""``pilothouse kube``: what a Kubernetes cluster needs to hold pilothouse's kinds.

``pilothouse kube crds | kubectl apply -f -`` installs the CustomResourceDefinitions
generated from the same models ``pilothouse apply`` validates with, so the API server
accepts and refuses what the CLI does (as far as OpenAPI can say it; spec/crd.py).
"""

from __future__ import annotations

import click
import yaml

from pilothouse.spec.crd import crds


@click.group()
def kube() -> None:
    """Manifests for running pilothouse's kinds on a Kubernetes cluster."""


@kube.command("crds")
def print_crds() -> None:
    """Print the CustomResourceDefinitions as one YAML stream (pipe to kubectl apply -f -)."""
    click.echo(yaml.safe_dump_all(crds(), explicit_start=True, sort_keys=False), nl=False)
