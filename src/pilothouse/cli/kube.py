"""``pilothouse kube``: what a Kubernetes cluster needs to run pilothouse.

``pilothouse kube crds | kubectl apply -f -`` installs the CustomResourceDefinitions
generated from the same models ``pilothouse apply`` validates with, so the API server
accepts and refuses what the CLI does (as far as OpenAPI can say it; spec/crd.py).

``pilothouse kube manifests --namespace NS --registry URI`` prints everything an install
needs (the CRDs, the operator's RBAC and Deployment: runtime/kube/manifests.py), each RBAC
rule with a comment saying why; ``pilothouse kube install`` applies the same objects with
server-side apply and waits until the CRDs are Established and the operator is available.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import yaml

from pilothouse.runtime.kube.manifests import (
    DEFAULT_IMAGE,
    REGISTRY_SECRET,
    install_manifests,
    parse_node_selector,
    parse_toleration,
    render_manifests,
)
from pilothouse.spec.crd import crds

if TYPE_CHECKING:
    from pilothouse.runtime.kube.client import Kube

DEFAULT_NAMESPACE = "pilothouse"


@click.group()
def kube() -> None:
    """Manifests for running pilothouse on a Kubernetes cluster."""


@kube.command("crds")
def print_crds() -> None:
    """Print the CustomResourceDefinitions as one YAML stream (pipe to kubectl apply -f -)."""
    click.echo(yaml.safe_dump_all(crds(), explicit_start=True, sort_keys=False), nl=False)


def _tolerations(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, Any]]:
    try:
        return [parse_toleration(v) for v in values]
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _node_selector(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    try:
        return dict(parse_node_selector(v) for v in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def install_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that shape the manifests (``manifests`` and ``install`` share them)."""
    options = [
        click.option(
            "--namespace",
            "-n",
            default=DEFAULT_NAMESPACE,
            show_default=True,
            help="The namespace the operator runs in and serves (created unless 'default').",
        ),
        click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="pilothouse image."),
        click.option(
            "--registry",
            required=True,
            metavar="URI",
            help="The model registry the operator resolves versions in (s3://BUCKET/PREFIX).",
        ),
        click.option(
            "--replicas",
            type=click.IntRange(min=1),
            default=2,
            show_default=True,
            help="Operator replicas (one acts, elected by a Lease; the others stand by).",
        ),
        click.option(
            "--registry-secret",
            default=REGISTRY_SECRET,
            show_default=True,
            help="Secret with the registry's credentials and endpoint, passed by envFrom (optional).",
        ),
        click.option(
            "--toleration",
            "tolerations",
            multiple=True,
            metavar="KEY=VALUE:EFFECT",
            callback=_tolerations,
            help="Toleration for the operator's pods (KEY:EFFECT tolerates any value); repeatable.",
        ),
        click.option(
            "--node-selector",
            "node_selector",
            multiple=True,
            metavar="KEY=VALUE",
            callback=_node_selector,
            help="Node label the operator's pods must run on; repeatable.",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def _manifests(
    namespace: str,
    image: str,
    registry: str,
    replicas: int,
    registry_secret: str,
    tolerations: list[dict[str, Any]],
    node_selector: dict[str, str],
) -> list[dict[str, Any]]:
    return install_manifests(
        namespace,
        image=image,
        registry=registry,
        replicas=replicas,
        tolerations=tolerations,
        node_selector=node_selector,
        registry_secret=registry_secret,
    )


@kube.command("manifests")
@install_options
def print_manifests(
    namespace: str,
    image: str,
    registry: str,
    replicas: int,
    registry_secret: str,
    tolerations: list[dict[str, Any]],
    node_selector: dict[str, str],
) -> None:
    """Print the install manifests: CRDs, namespace, RBAC, the operator (kubectl apply -f -)."""
    objects = _manifests(
        namespace, image, registry, replicas, registry_secret, tolerations, node_selector
    )
    click.echo(render_manifests(objects), nl=False)


# --- install --------------------------------------------------------------------------------


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            found: dict[str, Any] = condition
            return found
    return {}


def rollout_state(deployment: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether a Deployment's rollout is complete (``kubectl rollout status``: the controller
    saw the latest spec, every replica is updated and available, no old one is left), and
    what it is at. A rollout past its progress deadline raises ClickException."""
    if deployment is None:
        return False, "not found"
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return False, "waiting for the deployment controller to see the new spec"
    progressing = _condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        raise click.ClickException(
            f"{_describe(deployment)}: progress deadline exceeded: {progressing.get('message')}"
        )
    wanted = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available} of {wanted} replicas available"


def _pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """Why the operator's pods are not ready (waiting reasons, unschedulable), one per pod."""
    found = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name")
        status = pod.get("status") or {}
        for c in status.get("containerStatuses") or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                found.append(f"{name}: {waiting['reason']}: {waiting.get('message') or ''}".strip())
                break
        else:
            scheduled = _condition(pod, "PodScheduled")
            if scheduled.get("status") == "False":
                found.append(f"{name}: {scheduled.get('reason')}: {scheduled.get('message')}")
    return found


async def _install(
    objects: list[dict[str, Any]],
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    wait: bool,
    patience: float,
) -> None:
    # here, not at the top: kubernetes_asyncio and aiohttp load only for commands that talk
    # to a cluster
    from pilothouse.runtime.kube.client import KubeConfigError, KubeError, connect
    from pilothouse.runtime.kube.manifests import FIELD_MANAGER, OPERATOR

    try:
        kube = await connect(kubeconfig, context, namespace)
    except KubeConfigError as error:
        raise click.ClickException(str(error)) from None
    try:
        for obj in objects:
            meta = obj["metadata"]
            path = kube.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            try:
                # server-side apply, strict: a field this API server does not know fails
                await kube.request(
                    "PATCH",
                    path,
                    query={
                        "fieldManager": FIELD_MANAGER,
                        "force": "true",
                        "fieldValidation": "Strict",
                    },
                    body=obj,
                    content_type="application/apply-patch+yaml",
                )
            except KubeError as error:
                raise click.ClickException(f"applying {_describe(obj)}: {error}") from None
            click.echo(f"applied {_describe(obj)}", err=True)
        if wait:
            await _wait(kube, objects, namespace, OPERATOR, patience)
    finally:
        await kube.close()


async def _wait(
    kube: Kube, objects: list[dict[str, Any]], namespace: str, operator: str, patience: float
) -> None:
    from pilothouse.runtime.kube.client import KubeError

    deadline = time.monotonic() + patience
    said = ""

    def say(line: str) -> None:
        nonlocal said
        if line != said:
            click.echo(line, err=True)
            said = line

    async def pause(what: str) -> None:
        if time.monotonic() >= deadline:
            raise click.ClickException(f"timed out after {patience:.0f}s waiting for {what}")
        await asyncio.sleep(1.0)

    try:
        for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
            name = crd["metadata"]["name"]
            while True:
                found = await kube.get(crd["apiVersion"], crd["kind"], None, name)
                established = _condition(found, "Established")
                if established.get("status") == "True":
                    say(f"CustomResourceDefinition {name} established")
                    break
                say(f"waiting for CustomResourceDefinition {name} to be established")
                await pause(f"CustomResourceDefinition {name} to be established")
        selector = "app.kubernetes.io/name=pilothouse,app.kubernetes.io/component=operator"
        while True:
            deployment = await kube.get("apps/v1", "Deployment", namespace, operator)
            done, state = rollout_state(deployment)
            say(f"Deployment {namespace}/{operator}: {state}")
            if done:
                return
            if time.monotonic() >= deadline:
                pods = await kube.list("v1", "Pod", namespace, label_selector=selector)
                problems = _pod_problems(pods)
                detail = "".join(f"\n  {p}" for p in problems)
                raise click.ClickException(
                    f"timed out after {patience:.0f}s waiting for Deployment {namespace}/{operator}"
                    f" ({state}){detail}"
                )
            await asyncio.sleep(1.0)
    except KubeError as error:
        raise click.ClickException(f"waiting for the install: {error}") from None


@kube.command("install")
@install_options
@click.option("--kubeconfig", default=None, help="Kubeconfig file [default: as kubectl finds it].")
@click.option("--context", default=None, help="Kubeconfig context [default: the current one].")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the CRDs are Established and the operator Deployment is available.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to wait (with --wait).",
)
def install(
    namespace: str,
    image: str,
    registry: str,
    replicas: int,
    registry_secret: str,
    tolerations: list[dict[str, Any]],
    node_selector: dict[str, str],
    kubeconfig: str | None,
    context: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Install (or upgrade) pilothouse in a cluster: server-side apply of the manifests
    (field manager pilothouse-install), then wait for the CRDs and the operator."""
    objects = _manifests(
        namespace, image, registry, replicas, registry_secret, tolerations, node_selector
    )
    asyncio.run(
        _install(
            objects,
            kubeconfig=kubeconfig,
            context=context,
            namespace=namespace,
            wait=wait,
            patience=timeout,
        )
    )
    done = "installed" if wait else "applied (not waited for)"
    click.echo(f"pilothouse {done} in namespace {namespace}", err=True)
