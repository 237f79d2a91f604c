"""``pilothouse``: the command line. Verbs mirror kubectl; no business logic lives here."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx
from rich.markup import escape

from pilothouse import __version__
from pilothouse.api.client import ApiClientError, Client, NotRunning, tls_verify
from pilothouse.api.home import Home
from pilothouse.cli import daemonctl, render
from pilothouse.cli.render import console, err_console
from pilothouse.spec.loader import LoadResult, load_paths
from pilothouse.spec.quantity import QuantityError, parse_bytes, parse_duration
from pilothouse.spec.resources import KINDS, Resource, kind_for
from pilothouse.spec.schema import json_schema

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USAGE = 2


def handle_errors(func: F) -> F:
    """Turn control-plane errors into one red line and a non-zero exit."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotRunning as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(1)
        except ApiClientError as exc:
            causes = (exc.body.get("details") or {}).get("causes", [])
            text = str(exc)
            if causes and ", nothing applied" in text:
                # the message repeats the first causes; say it once, then each cause
                text = text.split(", nothing applied", 1)[0] + ", nothing applied:"
            err_console.print(f"[red]error:[/] {escape(text)}")
            for cause in causes:
                where = f"document {cause['document']}: " if cause.get("document") else ""
                err_console.print(
                    f"  - {where}{cause.get('field') or '(document)'}: "
                    f"{escape(str(cause.get('message')))}"
                )
            sys.exit(EXIT_USAGE if exc.code in (400, 404, 409, 422) else 1)
        except httpx.HTTPError as exc:
            err_console.print(f"[red]error:[/] cannot reach the control plane: {exc}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


#: where the group keeps the cluster chosen by --kubeconfig/--context (click's ctx.meta)
CLUSTER = "pilothouse.cluster"
#: commands of the embedded control plane only (refused with --kubeconfig/--context)
EMBEDDED_ONLY = ("up", "down", "status", "demo", "models", "node", "serve")
#: commands that find their cluster with options of their own (after the command's name)
OWN_CLUSTER_OPTIONS = ("kube", "operator", "router")


def client() -> Client:
    """The control plane the command talks to: the cluster that --kubeconfig/--context
    chose (a KubeClient, with the same methods), else the embedded one."""
    ctx = click.get_current_context(silent=True)
    target = ctx.meta.get(CLUSTER) if ctx is not None else None
    if ctx is not None and target is not None:
        from pilothouse.cli.kubeclient import KubeClient

        kube = KubeClient(target)
        ctx.call_on_close(kube.close)
        return kube
    return Client.from_home(Home.from_env())


def resolve_kind(word: str) -> type[Resource]:
    try:
        return kind_for(word)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0])) from exc


def split_ref(ref: str, name: str | None = None) -> tuple[type[Resource], str | None]:
    if "/" in ref:
        kind_word, _, ref_name = ref.partition("/")
        return resolve_kind(kind_word), ref_name
    return resolve_kind(ref), name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pilothouse")
@click.option(
    "--kubeconfig",
    metavar="PATH",
    default=None,
    help="Work on this kubeconfig's Kubernetes cluster instead of the embedded control plane.",
)
@click.option(
    "--context",
    "kube_context",
    metavar="CTX",
    default=None,
    help="Work on the cluster of this kubeconfig context (of --kubeconfig, $KUBECONFIG or "
    "~/.kube/config).",
)
@click.option(
    "-n",
    "--namespace",
    metavar="NS",
    default=None,
    help="With --kubeconfig/--context: the namespace [default: the context's, else default].",
)
@click.pass_context
def cli(
    ctx: click.Context, kubeconfig: str | None, kube_context: str | None, namespace: str | None
) -> None:
    """Run ML training jobs and model deployments with Kubernetes-grade guarantees.

    State lives in $PILOTHOUSE_HOME (default ~/.pilothouse), the embedded control plane's.
    With --kubeconfig or --context, get, describe, apply, delete, predict, logs, wait and
    rollout work on that Kubernetes cluster instead, in namespace -n (its pilothouse
    operator acts on what they change); without them, on the embedded control plane.
    """
    if kubeconfig is None and kube_context is None:
        if namespace is not None:
            raise click.UsageError(
                "-n/--namespace goes with --kubeconfig or --context "
                "(the embedded control plane has no namespaces)"
            )
        return
    command = ctx.invoked_subcommand
    if command in EMBEDDED_ONLY:
        raise click.UsageError(
            f"`pilothouse {command}` works on the embedded control plane; "
            "leave out --kubeconfig/--context"
        )
    if command in OWN_CLUSTER_OPTIONS:
        raise click.UsageError(
            f"`pilothouse {command}` finds its cluster with options of its own: give them "
            f"after `{command} ...` (see `pilothouse {command} --help`)"
        )
    from pilothouse.cli.kubeclient import ClusterTarget

    ctx.meta[CLUSTER] = ClusterTarget(kubeconfig, kube_context, namespace)


# -- control plane -------------------------------------------------------------------


@cli.command()
@click.option(
    "--foreground", is_flag=True, help="Stay attached instead of running in the background."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the control API.")
@click.option(
    "--port", default=0, show_default=True, help="Port of the control API (0: any free port)."
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --foreground: log here, rotated at 10 MiB, instead of to stderr.",
)
@click.option(
    "--nodes",
    "nodes_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="YAML file of virtual nodes to run on (kept in the home for later starts); "
    "without it: the machine itself, or the nodes given before.",
)
@click.option(
    "--data-plane-host",
    default="127.0.0.1",
    show_default=True,
    help="Address routers and replicas listen on (whatever --host is). Predictions and "
    "replica metrics are unauthenticated there.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Serve the control API (and routers) over TLS with this PEM certificate (with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The PEM private key of --tls-cert.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Client connections the routers hold at once, all routes together "
    "(0: automatic, from the open-files limit).",
)
@click.option(
    "--router-body-budget",
    default="256Mi",
    show_default=True,
    help="Request and response bodies the routers hold at once, all connections together "
    "(a quantity: 64Mi, 1Gi); past it, 503 with Retry-After.",
)
def up(
    foreground: bool,
    host: str,
    port: int,
    log_file: Path | None,
    nodes_file: Path | None,
    data_plane_host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_connections: int,
    router_body_budget: str,
) -> None:
    """Start the embedded control plane."""
    home = Home.from_env()
    try:
        body_budget = parse_bytes(router_body_budget)
    except (QuantityError, ValueError) as exc:
        err_console.print(
            f"[red]error:[/] --router-body-budget: expected a quantity of bytes such as 64Mi "
            f"(at least 1Mi), got {router_body_budget!r}: {escape(str(exc))}",
            highlight=False,
        )
        sys.exit(EXIT_USAGE)
    if body_budget < 2**20:
        err_console.print(
            f"[red]error:[/] --router-body-budget: expected at least 1Mi, got {router_body_budget!r}",
            highlight=False,
        )
        sys.exit(EXIT_USAGE)
    tls: tuple[Path, Path] | None = None
    warning: str | None = None
    if tls_cert or tls_key or data_plane_host != "127.0.0.1":
        # the daemon module is heavy (uvicorn, the router): only when these flags need it
        from pilothouse.api.daemon import TLSConfigError, check_tls, data_plane_warning

        try:
            tls = check_tls(tls_cert, tls_key)
        except TLSConfigError as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            sys.exit(EXIT_USAGE)
        warning = data_plane_warning(data_plane_host)
    if nodes_file is not None:
        from pilothouse.runtime.local.nodes import NodeConfigError, load_nodes

        try:
            declared = load_nodes(nodes_file, data_plane_host)
        except NodeConfigError as exc:
            err_console.print(f"[red]error:[/] {exc}")
            sys.exit(2)
        if daemonctl.healthy(home):
            err_console.print(
                "[red]error:[/] the control plane is running; `pilothouse down` first, then "
                "`pilothouse up --nodes` (its nodes are read when it starts)"
            )
            sys.exit(1)
        home.ensure()
        shutil.copyfile(nodes_file, home.nodes_file)
        home.nodes_file.chmod(0o600)
        console.print(
            f"nodes: {len(declared)} from {nodes_file} "
            f"({', '.join(n.name for n in declared[:6])}{' …' if len(declared) > 6 else ''})"
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] binding the control API to {host} exposes it beyond this machine "
            "(the token is still required)"
        )
    if warning is not None:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if foreground:
        from pilothouse.api.daemon import main as daemon_main

        daemon_main(
            home,
            host,
            port,
            log_file,
            data_host=data_plane_host,
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
            max_connections=max_connections,
            body_budget=body_budget,
        )
        return
    if daemonctl.healthy(home):
        info = home.read_daemon_info() or {}
        console.print(f"pilothouse is already running at {info.get('url')} (pid {info.get('pid')})")
        return
    with console.status("starting the control plane…"):
        try:
            info = daemonctl.start_background(
                home,
                host,
                port,
                data_host=data_plane_host,
                tls=tls,
                max_connections=max_connections,
                body_budget=body_budget,
            )
        except daemonctl.StartFailed as exc:
            err_console.print(f"[red]error:[/] {exc}")
            sys.exit(1)
    console.print(f"pilothouse is up at {info['url']} (pid {info['pid']}, home {home.root})")


@cli.command()
def down() -> None:
    """Stop the control plane and every process it started."""
    home = Home.from_env()
    with console.status("stopping…"):
        was_running, leftovers = daemonctl.stop(home)
    if was_running:
        console.print(
            "pilothouse stopped"
            + (f" ({leftovers} leftover process(es) stopped)" if leftovers else "")
        )
    elif leftovers:
        console.print(f"pilothouse was not running; stopped {leftovers} leftover process(es)")
    else:
        console.print("pilothouse is not running")


@cli.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def status(output: str) -> None:
    """Say whether the control plane runs, where, and what it runs."""
    home = Home.from_env()
    try:
        c = client()
    except NotRunning as exc:
        if output == "json":
            print(json.dumps({"running": False, "home": str(home.root)}))
        else:
            console.print(str(exc))
        sys.exit(3)
    info = c.status()
    deployments = c.list_objects("modeldeployments")
    jobs = c.list_objects("trainingjobs")
    if output == "json":
        print(json.dumps({"running": True, "home": str(home.root), **info}, indent=2))
        return
    console.print(
        f"pilothouse {info['version']} is running at {info['url']} (pid {info['pid']}, up {info['uptimeSeconds']:.0f}s)"
    )
    console.print(f"home: {home.root}; processes: {info['processes']}")
    for obj in deployments:
        st = obj.get("status") or {}
        console.print(
            f"  modeldeployment/{obj['metadata']['name']}: {st.get('readyReplicas', 0)}/{st.get('desiredReplicas', '?')} ready, {st.get('model', '-')} at {st.get('url', '-')}"
        )
    for obj in jobs:
        st = obj.get("status") or {}
        console.print(f"  trainingjob/{obj['metadata']['name']}: {st.get('phase', 'Pending')}")


# -- resources -------------------------------------------------------------------------


def _load(files: tuple[str, ...]) -> LoadResult:
    stdin_text = sys.stdin.read() if "-" in files else None
    result = load_paths(files, stdin_text)
    if not result.ok:
        err_console.print(
            f"[red]error:[/] {len(result.errors)} problem(s) found; nothing was applied"
        )
        for problem in result.errors:
            err_console.print(f"  {problem}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    return result


def _documents(result: LoadResult) -> list[dict[str, Any]]:
    """Resources as JSON; a relative workingDir is resolved against the declaring file."""
    docs = []
    for resource, (source, _doc) in zip(result.resources, result.origins, strict=True):
        doc = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc.pop("status", None)
        spec = doc.get("spec") or {}
        working_dir = spec.get("workingDir")
        if working_dir and not Path(working_dir).is_absolute():
            base = Path(source).resolve().parent if source != "<stdin>" else Path.cwd()
            spec["workingDir"] = str((base / working_dir).resolve())
        docs.append(doc)
    return docs


@cli.command()
@click.option(
    "-f", "--filename", "files", multiple=True, required=True, help="File, folder or - for stdin."
)
@handle_errors
def apply(files: tuple[str, ...]) -> None:
    """Create or update resources from YAML (all documents or none)."""
    result = _load(files)
    for item in client().apply(_documents(result)):
        console.print(f"{item['kind'].lower()}.pilothouse.dev/{item['name']} {item['result']}")
        if item.get("warning"):
            err_console.print(f"[yellow]warning:[/] {escape(item['warning'])}", highlight=False)


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "yaml", "json", "name"]),
    default="table",
    help="wide: more columns where the kind has them (nodes).",
)
@handle_errors
def get(kind: str, name: str | None, output: str) -> None:
    """List resources of a KIND, or show one (KIND NAME or KIND/NAME); also `get nodes`."""
    from pilothouse.cli import nodes

    is_node, node_name = nodes.node_ref(kind, name)
    if is_node:
        nodes.get_nodes(client(), node_name, output)
        return
    output = "table" if output == "wide" else output
    cls, name = split_ref(kind, name)
    c = client()
    objects = [c.get(cls.PLURAL, name)] if name else c.list_objects(cls.PLURAL)
    if output == "table":
        if not objects:
            console.print(f"No {cls.PLURAL} found.")
            return
        render.print_table(cls.KIND, objects)
    elif output == "name":
        for obj in objects:
            print(f"{cls.KIND.lower()}/{obj['metadata']['name']}")
    elif name:
        render.dump(objects[0], output)
    else:
        render.dump(
            {"apiVersion": "pilothouse.dev/v1alpha1", "kind": f"{cls.KIND}List", "items": objects},
            output,
        )


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@handle_errors
def describe(kind: str, name: str | None) -> None:
    """Show one resource in detail, with its conditions and events (also `describe node NAME`)."""
    from pilothouse.cli import nodes

    is_node, node_name = nodes.node_ref(kind, name)
    if is_node:
        if not node_name:
            raise click.UsageError("describe needs a name: describe node NAME")
        nodes.describe_node(client(), node_name)
        return
    cls, name = split_ref(kind, name)
    if not name:
        raise click.UsageError("describe needs a name: describe KIND NAME")
    c = client()
    obj, events = c.get(cls.PLURAL, name), c.events(cls.PLURAL, name)
    # what runs of it on this machine: replicas or workers (GET .../pods)
    runs = cls.KIND in ("ModelDeployment", "TrainingJob")
    render.describe(obj, events, c.pods(cls.PLURAL, name) if runs else None)


@cli.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-f", "--filename", "files", multiple=True, help="Delete what these files declare.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it is gone.")
@click.option("--timeout", default="60s", show_default=True)
@handle_errors
def delete(
    kind: str | None, name: str | None, files: tuple[str, ...], wait: bool, timeout: str
) -> None:
    """Delete a resource (KIND NAME, KIND/NAME, or -f FILE) and what it runs."""
    targets: list[tuple[type[Resource], str]] = []
    if files:
        targets = [(type(r), r.metadata.name) for r in _load(files).resources]
    elif kind:
        cls, name = split_ref(kind, name)
        if not name:
            raise click.UsageError("delete needs a name: delete KIND NAME")
        targets = [(cls, name)]
    else:
        raise click.UsageError("give KIND NAME or -f FILE")
    c = client()
    limit = _duration(timeout, "--timeout")
    for cls, target in targets:
        c.delete(cls.PLURAL, target)
        if wait:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                try:
                    c.get(cls.PLURAL, target)
                except ApiClientError as exc:
                    if exc.code == 404:
                        break
                    raise
                time.sleep(0.2)
            else:
                err_console.print(
                    f"[red]error:[/] {cls.KIND.lower()}/{target} still exists after {timeout}"
                )
                sys.exit(1)
        console.print(f"{cls.KIND.lower()}.pilothouse.dev/{target} deleted")


@cli.command()
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option("--tail", default=-1, help="Lines of each log to show first (-1: all).")
@handle_errors
def logs(ref: str, follow: bool, tail: int) -> None:
    """Print the logs of KIND/NAME (training workers or model replicas)."""
    cls, name = split_ref(ref)
    if not name:
        raise click.UsageError("logs needs KIND/NAME, e.g. logs trainingjob/fraud-train")
    c = client()
    printed = False
    try:
        for line in c.logs(cls.PLURAL, name, follow=follow, tail=tail):
            print(line, flush=True)
            printed = True
    except KeyboardInterrupt:
        pass
    if not printed and not follow:
        status = c.get(cls.PLURAL, name).get("status") or {}
        why = status.get("message") or status.get("phase") or "nothing has run yet"
        err_console.print(f"no logs yet: {why}")


def _duration(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except QuantityError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from exc


@cli.command()
@click.argument("ref")
@click.option("--for", "condition", required=True, help="condition=NAME[=VALUE] or delete")
@click.option("--timeout", default="30s", show_default=True)
@handle_errors
def wait(ref: str, condition: str, timeout: str) -> None:
    """Wait until KIND/NAME has a condition (e.g. --for=condition=Ready)."""
    cls, name = split_ref(ref)
    if not name:
        raise click.UsageError("wait needs KIND/NAME")
    limit = _duration(timeout, "--timeout")
    want_delete = condition == "delete"
    if not want_delete:
        key, _, rest = condition.partition("=")
        if key != "condition" or not rest:
            raise click.BadParameter(
                "expected condition=NAME[=VALUE] or delete", param_hint="--for"
            )
        cond_type, _, cond_value = rest.partition("=")
        cond_value = cond_value or "True"
    c = client()
    deadline = time.monotonic() + limit
    while True:
        try:
            obj = c.get(cls.PLURAL, name)
        except ApiClientError as exc:
            if exc.code == 404 and want_delete:
                console.print(f"{cls.KIND.lower()}/{name} deleted")
                return
            raise
        if not want_delete:
            conditions = {x["type"]: x for x in (obj.get("status") or {}).get("conditions") or []}
            found = conditions.get(cond_type)
            if found and found.get("status", "").lower() == cond_value.lower():
                console.print(f"{cls.KIND.lower()}/{name} condition met")
                return
            failed = conditions.get("Failed")
            if cond_type != "Failed" and failed and failed.get("status") == "True":
                err_console.print(
                    f"[red]error:[/] {cls.KIND.lower()}/{name} failed: {failed.get('message')}"
                )
                sys.exit(1)
        if time.monotonic() >= deadline:
            err_console.print(
                f"[red]error:[/] timed out after {timeout} waiting for {condition} on {cls.KIND.lower()}/{name}"
            )
            sys.exit(1)
        time.sleep(0.25)


def _parse_data(data: str) -> Any:
    text = data
    if data.startswith("@"):
        try:
            text = Path(data[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {data[1:]}: {exc.strerror}", param_hint="--data"
            ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc


def predict_once(c: Client, deployment: str, payload: Any) -> tuple[int, Any]:
    obj = c.get("modeldeployments", deployment)
    st = obj.get("status") or {}
    url, model = st.get("url"), st.get("model")
    if not url or not model:
        raise click.ClickException(
            f"modeldeployment/{deployment} has no endpoint yet: {st.get('message', 'not ready')}"
        )
    name = quote(str(model).split(":")[0], safe="")
    if isinstance(payload, dict) and "inputs" in payload:
        path = f"/v2/models/{name}/infer"
    else:
        path = f"/v1/models/{name}:predict"
    from pilothouse.cli.kubeclient import KubeClient

    if isinstance(c, KubeClient):  # through the API server's service proxy
        return c.predict(deployment, path, payload)
    target = f"{url}{path}"
    info = Home.from_env().read_daemon_info() or {}
    verify = tls_verify(info) if str(url).startswith("https:") else True
    response = httpx.post(target, json=payload, timeout=30.0, verify=verify)
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    return response.status_code, body


@cli.command()
@click.argument("deployment")
@click.option(
    "--data", required=True, help='JSON ({"instances": ...} or OIP v2 {"inputs": ...}) or @file.'
)
@handle_errors
def predict(deployment: str, data: str) -> None:
    """Send one prediction request to a deployment through its router endpoint."""
    code, body = predict_once(client(), deployment, _parse_data(data))
    print(json.dumps(body, indent=2))
    if code >= 400:
        sys.exit(1)


@cli.command()
@click.argument("kind")
def schema(kind: str) -> None:
    """Print the JSON Schema of a KIND (the future CRD schema)."""
    print(json.dumps(json_schema(resolve_kind(kind)), indent=2))


@cli.command(hidden=True)
@click.option(
    "--model",
    "model_ref",
    default=None,
    metavar="NAME:VERSION",
    help="Fetch this exact version from --registry, verify it, and serve it.",
)
@click.option(
    "--registry",
    default=None,
    metavar="URI",
    help="Where --model is: a folder, file://PATH or s3://BUCKET/PREFIX (credentials: AWS_*).",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where versions from a remote registry are cached [default: $PILOTHOUSE_HOME/cache/models].",
)
@click.option(
    "--model-dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Serve the version in this folder instead (by hand).",
)
@click.option("--name", default=None, help="The name served [default: the model's name].")
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8080)
@click.option("--fd", type=int, default=None, help="Serve on this inherited listening socket.")
@click.option("--max-batch-size", default=64, show_default=True, help="1 turns batching off.")
@click.option("--max-batch-delay", default=0.0, show_default=True, help="Seconds a batch may wait.")
@click.option("--drain", default=1.0, show_default=True, help="Seconds to drain after SIGTERM.")
@click.option("--threads", default=1, show_default=True, help="Threads one model call may use.")
def serve(
    model_ref: str | None,
    registry: str | None,
    cache: Path | None,
    model_dir: Path | None,
    name: str | None,
    host: str,
    port: int,
    fd: int | None,
    max_batch_size: int,
    max_batch_delay: float,
    drain: float,
    threads: int,
) -> None:
    """Run one model server replica (started by the runtime, or by hand).

    With --model the replica fetches and verifies its version itself and exits with
    code 3 if it cannot (see serving/server.py).
    """
    from pilothouse.serving.server import ModelSource, ServerOptions
    from pilothouse.serving.server import serve as run_server

    if (model_ref is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --model NAME:VERSION and --model-dir DIR")
    model: Path | ModelSource
    if model_ref is not None:
        if not registry:
            raise click.UsageError("--model needs --registry URI")
        try:
            model = ModelSource.parse(model_ref, registry, cache or Home.from_env().model_cache)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from exc
        name = name or model.name
    else:
        if registry is not None or cache is not None:
            raise click.UsageError("--registry and --cache go with --model, not --model-dir")
        if not name:
            raise click.UsageError("--model-dir needs --name")
        assert model_dir is not None
        model = model_dir
    if max_batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-batch-size")
    if not 0 <= max_batch_delay <= 1:
        raise click.BadParameter("must be between 0 and 1 second", param_hint="--max-batch-delay")
    if threads < 1:
        raise click.BadParameter("must be at least 1", param_hint="--threads")
    options = ServerOptions(max_batch_size, max_batch_delay, drain, model_threads=threads)
    run_server(model, name, host, port, fd, options)


@cli.command()
@click.option(
    "--rows", default=200_000, show_default=True, help="Synthetic transactions to train on."
)
@click.option("--timeout", default="300s", show_default=True)
def demo(rows: int, timeout: str) -> None:
    """Bring pilothouse up and run the fraud-detection story end to end."""
    from pilothouse.cli.demo import run_demo

    sys.exit(run_demo(rows, _duration(timeout, "--timeout")))


def main() -> None:
    from pilothouse.cli.kube import kube
    from pilothouse.cli.models import models
    from pilothouse.cli.nodes import node
    from pilothouse.cli.operator import operator
    from pilothouse.cli.rollout import rollout
    from pilothouse.cli.routerpod import router

    cli.add_command(kube)
    cli.add_command(operator)
    cli.add_command(router)
    cli.add_command(models)
    cli.add_command(node)
    cli.add_command(rollout)
    cli(prog_name="pilothouse")


__all__ = ["KINDS", "cli", "main"]
