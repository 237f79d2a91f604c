"""``pilothouse operator``: the Kubernetes operator (runtime/kube/operator.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click


def _tolerations(items: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    from pilothouse.runtime.kube.manifests import parse_toleration

    try:
        return tuple(parse_toleration(t) for t in items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--toleration") from None


def _selector(items: tuple[str, ...]) -> dict[str, str]:
    from pilothouse.runtime.kube.manifests import parse_node_selector

    try:
        return dict(parse_node_selector(i) for i in items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--node-selector") from None


@click.command()
@click.option("--kubeconfig", default=None, help="Run out of cluster with this kubeconfig.")
@click.option("--context", default=None, help="The kubeconfig context to use.")
@click.option(
    "-n",
    "--namespace",
    default=None,
    help="The namespace to serve [default: the context's, or the pod's].",
)
@click.option(
    "--registry", default="", help="The model registry (s3://BUCKET/PREFIX) replicas fetch from."
)
@click.option("--image", default=None, help="The image of replica and router pods.")
@click.option(
    "--toleration",
    "tolerations",
    multiple=True,
    help="KEY[=VALUE][:EFFECT], added to every replica and router pod.",
)
@click.option(
    "--node-selector", "node_selector", multiple=True, help="KEY=VALUE, added to every pod."
)
@click.option(
    "--unreachable-seconds",
    default=10,
    show_default=True,
    help="How long a replica stays on a node that stopped answering.",
)
@click.option("--router-replicas", default=2, show_default=True)
@click.option(
    "--registry-secret",
    default="pilothouse-registry",
    show_default=True,
    help="Secret whose AWS_* variables replicas read the registry with.",
)
@click.option(
    "--priority-class", default="", help="PriorityClass of replica and router pods [default: none]."
)
@click.option("--health-host", default="0.0.0.0", show_default=True)
@click.option(
    "--health-port",
    default=8090,
    show_default=True,
    help="/healthz and /readyz (0: any free port).",
)
@click.option(
    "--lease-duration", default=15.0, show_default=True, help="Seconds a leader's lease lasts."
)
@click.option("--renew-deadline", default=10.0, show_default=True)
@click.option("--retry-period", default=2.0, show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
def operator(
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    registry: str,
    image: str | None,
    tolerations: tuple[str, ...],
    node_selector: tuple[str, ...],
    unreachable_seconds: int,
    router_replicas: int,
    registry_secret: str,
    priority_class: str,
    health_host: str,
    health_port: int,
    lease_duration: float,
    renew_deadline: float,
    retry_period: float,
    log_level: str,
) -> None:
    """Run the operator: the controllers over one namespace of a Kubernetes cluster.

    In a pod it uses its ServiceAccount; out of cluster, --kubeconfig/--context. Several
    replicas may run: a Lease elects the one that acts.
    """
    from pilothouse.operator import OperatorOptions, run_operator
    from pilothouse.runtime.kube.objects import DEFAULT_IMAGE, PodDefaults

    if not 0 < renew_deadline < lease_duration:
        raise click.BadParameter(
            "must be above 0 and below --lease-duration", param_hint="--renew-deadline"
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # a line per request to the routers and the registry otherwise
    for noisy in ("httpx", "aiobotocore", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    defaults = PodDefaults(
        image=image or DEFAULT_IMAGE,
        registry=registry,
        tolerations=_tolerations(tolerations),
        node_selector=_selector(node_selector),
        unreachable_seconds=unreachable_seconds,
        router_replicas=router_replicas,
        registry_secret=registry_secret,
        priority_class=priority_class,
    )
    options = OperatorOptions(
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        defaults=defaults,
        health_host=health_host,
        health_port=health_port,
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
    )
    sys.exit(asyncio.run(run_operator(options)))
