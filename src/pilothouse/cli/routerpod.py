"""``pilothouse router``: one router pod of a ModelDeployment (runtime/kube/routerpod.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

TOKEN_ENV = "PILOTHOUSE_ROUTER_TOKEN"


@click.command()
@click.option("--deployment", required=True, help="The ModelDeployment this router serves.")
@click.option("-n", "--namespace", required=True, help="Its namespace.")
@click.option("--host", required=True, help="The address to listen on (the pod's IP).")
@click.option("--port", default=8080, show_default=True, help="The deployment's traffic.")
@click.option(
    "--control-port", default=8081, show_default=True, help="/control/*, /readyz, /healthz."
)
@click.option("--kubeconfig", default=None, help="Run out of cluster with this kubeconfig.")
@click.option("--context", default=None, help="The kubeconfig context to use.")
@click.option(
    "--insecure-control",
    is_flag=True,
    help=f"Serve the control port without a token when ${TOKEN_ENV} is not set.",
)
@click.option(
    "--drain",
    default=0.0,
    show_default=True,
    help="Seconds to keep serving, not ready, after SIGTERM (the pod's preStop usually waits).",
)
@click.option(
    "--finish",
    default=8.0,
    show_default=True,
    help="Seconds requests in flight may take to finish after SIGTERM.",
)
@click.option("--log-level", default="INFO", show_default=True)
def router(
    deployment: str,
    namespace: str,
    host: str,
    port: int,
    control_port: int,
    kubeconfig: str | None,
    context: str | None,
    insecure_control: bool,
    drain: float,
    finish: float,
    log_level: str,
) -> None:
    """Run a router pod of one ModelDeployment on Kubernetes.

    It serves the deployment's traffic on --host:--port, spread over the revisions'
    replicas as its ConfigMap NAME-router says, and what it measured on --control-port
    (bearer token from $PILOTHOUSE_ROUTER_TOKEN). In a pod it uses its ServiceAccount;
    out of cluster, --kubeconfig/--context.
    """
    from pilothouse.runtime.kube.client import KubeConfigError
    from pilothouse.runtime.kube.routerpod import RouterPodOptions, serve

    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not insecure_control:
        raise click.UsageError(
            f"the control port needs a token: set ${TOKEN_ENV} (or pass --insecure-control)"
        )
    if drain < 0 or finish < 0:
        raise click.UsageError("--drain and --finish must not be negative")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = RouterPodOptions(
        deployment=deployment,
        namespace=namespace,
        host=host,
        port=port,
        control_port=control_port,
        token=token,
        insecure_control=insecure_control,
        drain_seconds=drain,
        finish_seconds=finish,
    )
    main = serve(options, kubeconfig=kubeconfig, context=context)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            asyncio.run(main)
        else:
            uvloop.run(main)
    except (OSError, KubeConfigError) as exc:
        # cannot listen, or no cluster to watch: one line, and the pod restarts
        logging.getLogger("pilothouse.routerpod").error("%s", exc)
        sys.exit(1)
    sys.exit(0)
