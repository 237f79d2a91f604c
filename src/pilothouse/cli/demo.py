"""``pilothouse demo``: the fraud-detection story end to end, with visible progress.

up -> train (TrainingJob, a local process) -> register (model version with
metrics) -> deploy (ModelDeployment, 2 replicas behind the router) -> predict ->
train a second version -> roll it out as a canary under live traffic, judged on
errors, latency, agreement with the first version on mirrored requests and drift.
The platform is left running for the user to explore.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from pilothouse.api.client import ApiClientError, Client
from pilothouse.api.home import Home
from pilothouse.cli import daemonctl
from pilothouse.cli.main import _documents, predict_once
from pilothouse.cli.render import console, err_console
from pilothouse.spec.loader import load_paths

JOB = "fraud-train"
JOB2 = "fraud-train-v2"
DEPLOYMENT = "fraud-detector"
#: demo traffic during the rollout: requests per second, and the most it sends
TRAFFIC_RPS = 40.0
TRAFFIC_MAX_REQUESTS = 6000


def find_example() -> Path | None:
    """examples/fraud-detection from the current folder upwards, or next to the source tree."""
    here = Path.cwd().resolve()
    for base in (here, *here.parents, Path(__file__).resolve().parents[3]):
        candidate = base / "examples" / "fraud-detection"
        if (candidate / "trainingjob.yaml").is_file():
            return candidate
    return None


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


STEPS = 7


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/{STEPS}][/] [bold]{text}[/]")


def run_demo(rows: int, timeout: float) -> int:
    started = time.monotonic()
    deadline = started + timeout
    example = find_example()
    if example is None:
        err_console.print(
            "[red]error:[/] examples/fraud-detection not found; run the demo from a pilothouse checkout"
        )
        return 1
    home = Home.from_env()

    _step(1, "control plane")
    if not daemonctl.healthy(home):
        with console.status("starting pilothouse…"):
            try:
                daemonctl.start_background(home, "127.0.0.1", 0)
            except daemonctl.StartFailed as exc:
                err_console.print(f"[red]error:[/] {exc}")
                return 1
    c = Client.from_home(home)
    console.print(f"  pilothouse is up at {c.url} (state in {home.root})")

    with console.status("removing the previous demo deployment…"):
        _delete_if_present(c, "modeldeployments", DEPLOYMENT, deadline)

    _step(2, f"train the fraud model ({rows:,} synthetic card transactions)")
    job = _train(c, example, JOB, rows, 7, started, deadline)
    if job is None:
        return 1
    status = job.get("status") or {}
    _step(3, "register the model")
    output = status.get("outputModel") or {}
    metrics = output.get("metrics") or {}
    console.print(f"  registered [bold]{output.get('ref')}[/] in {home.registry_uri}")
    for key in ("auc", "average_precision", "precision_at_100", "precision_at_500", "fraud_rate"):
        if key in metrics:
            console.print(f"    {key:<18} {metrics[key]:.4f}")

    _step(4, "deploy it: 2 replicas behind the embedded router")
    deployment_docs = _documents(load_paths([str(example / "modeldeployment.yaml")]))
    deployment_docs[0]["spec"]["model"] = output.get("ref")
    c.apply(deployment_docs)
    deployment: dict[str, Any] = {}
    with console.status("starting replicas…") as spinner:
        while time.monotonic() < deadline:
            deployment = c.get("modeldeployments", DEPLOYMENT)
            st = deployment.get("status") or {}
            spinner.update(
                f"replicas of {st.get('model', '…')}: {st.get('readyReplicas', 0)}/{st.get('desiredReplicas', 2)} ready"
            )
            ready = _condition(deployment, "Ready")
            if ready and ready["status"] == "True" and st.get("model") == output.get("ref"):
                break
            time.sleep(0.25)
    st = deployment.get("status") or {}
    ready = _condition(deployment, "Ready")
    if not ready or ready["status"] != "True":
        err_console.print(
            f"[red]error:[/] the deployment did not become ready: {st.get('message')}"
        )
        err_console.print("  see: pilothouse describe modeldeployment fraud-detector")
        return 1
    console.print(
        f"  modeldeployment/{DEPLOYMENT}: {st['readyReplicas']}/{st['desiredReplicas']} replicas of {st['model']} ready at {st['url']}"
    )

    _step(5, "predict")
    sample_path = example / "sample-request.json"
    sample = json.loads(sample_path.read_text())
    code, body = predict_once(c, DEPLOYMENT, sample)
    if code != 200:
        err_console.print(f"[red]error:[/] prediction failed with HTTP {code}: {body}")
        return 1
    labels = [
        "ordinary grocery purchase, daytime, card present",
        "3 am, abroad, card not present, 7.6x usual amount",
    ]
    for label, score in zip(labels, body["predictions"], strict=False):
        console.print(f"  fraud score [bold]{score:.4f}[/]  ← {label}")

    _step(6, "train a second version (another seed)")
    job2 = _train(c, example, JOB2, rows, 8, started, deadline)
    if job2 is None:
        return 1
    output2 = (job2.get("status") or {}).get("outputModel") or {}
    metrics2 = output2.get("metrics") or {}
    console.print(
        f"  registered [bold]{output2.get('ref')}[/]: auc {metrics2.get('auc', 0):.4f} "
        f"(first version {metrics.get('auc', 0):.4f})"
    )

    _step(7, f"roll out {output2.get('ref')} as a canary under live traffic")
    outcome = _rollout(c, example, deployment_docs, str(output2.get("ref")), st["url"], deadline)
    if outcome is None:
        return 1

    url = st["url"]
    model = str(st["model"]).split(":")[0]
    console.print(
        f"\n[bold green]Done in {time.monotonic() - started:.0f}s.[/] pilothouse keeps running."
    )
    console.print(
        f"  endpoint:  {url}  (v1: /v1/models/{model}:predict, OIP v2: /v2/models/{model}/infer)"
    )
    console.print("  try:")
    console.print(
        f"    curl -s -X POST {url}/v1/models/{model}:predict -H 'content-type: application/json' -d @{sample_path}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"    pilothouse predict {DEPLOYMENT} --data @{sample_path}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "    pilothouse get modeldeployments;  pilothouse describe modeldeployment fraud-detector"
    )
    console.print("    pilothouse logs trainingjob/fraud-train")
    console.print(
        f"    pilothouse rollout history {DEPLOYMENT};  pilothouse rollout undo {DEPLOYMENT}"
    )
    console.print("  stop everything:  [bold]pilothouse down[/]")
    return 0


def _exists(c: Client, plural: str, name: str) -> bool:
    try:
        c.get(plural, name)
    except ApiClientError as exc:
        if exc.code == 404:
            return False
        raise
    return True


def _delete_if_present(c: Client, plural: str, name: str, deadline: float) -> None:
    if not _exists(c, plural, name):
        return
    c.delete(plural, name)
    while time.monotonic() < deadline and _exists(c, plural, name):
        time.sleep(0.2)


def _train(
    c: Client, example: Path, name: str, rows: int, seed: int, started: float, deadline: float
) -> dict[str, Any] | None:
    """Run the example's TrainingJob as ``name`` with ``seed``; the finished job, or None."""
    with console.status("removing the previous demo run…"):
        _delete_if_present(c, "trainingjobs", name, deadline)
    docs = _documents(load_paths([str(example / "trainingjob.yaml")]))
    docs[0]["metadata"]["name"] = name
    docs[0]["spec"]["args"] = ["--rows", str(rows), "--seed", str(seed)]
    c.apply(docs)
    console.print(
        f"  trainingjob/{name} created: {' '.join(docs[0]['spec']['command'] + docs[0]['spec']['args'])}"
    )
    seen = 0
    job: dict[str, Any] = {}
    with console.status("training…") as spinner:
        while time.monotonic() < deadline:
            job = c.get("trainingjobs", name)
            phase = (job.get("status") or {}).get("phase", "Pending")
            spinner.update(f"training… ({phase}, {time.monotonic() - started:.0f}s)")
            lines = [
                line
                for line in c.logs("trainingjobs", name)
                if not line.startswith("--- pilothouse")
            ]
            for line in lines[seen:]:
                console.print(f"  [dim]│[/] {line}", highlight=False)
            seen = len(lines)
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.3)
    status = job.get("status") or {}
    if status.get("phase") != "Succeeded":
        err_console.print(
            f"[red]error:[/] training did not succeed: {status.get('message', 'timed out')}"
        )
        err_console.print(
            f"  see: pilothouse describe trainingjob {name}; pilothouse logs trainingjob/{name}"
        )
        return None
    return job


def _transactions(example: Path, n: int) -> list[list[float]]:
    """Fresh synthetic transactions from the example's generator (another seed than training)."""
    spec = importlib.util.spec_from_file_location("fraud_data", example / "fraud_data.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {example / 'fraud_data.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    features, _ = module.generate(n, seed=99)
    return [[float(v) for v in row] for row in features]


class _Traffic(threading.Thread):
    """A bounded open-loop stream of single-transaction requests to the endpoint."""

    def __init__(self, url: str, model: str, rows: list[list[float]]) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.rows = url, model, rows
        self.sent = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        interval = 1.0 / TRAFFIC_RPS
        next_at = time.monotonic()
        with httpx.Client(timeout=10.0) as http:
            while not self.stop.is_set() and self.sent < TRAFFIC_MAX_REQUESTS:
                row = self.rows[self.sent % len(self.rows)]
                try:
                    response = http.post(
                        f"{self.url}/v1/models/{self.model}:predict", json={"instances": [row]}
                    )
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent += 1
                self.failed += not ok
                next_at += interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def _rollout(
    c: Client,
    example: Path,
    docs: list[dict[str, Any]],
    new_ref: str,
    url: str,
    deadline: float,
) -> str | None:
    """Apply the new version and follow its canary until it is promoted or rolled back."""
    traffic = _Traffic(url, new_ref.split(":")[0], _transactions(example, 2000))
    traffic.start()
    try:
        docs[0]["spec"]["model"] = new_ref
        c.apply(docs)
        shown = ""
        rollout: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = c.get("modeldeployments", DEPLOYMENT).get("status") or {}
            rollout = st.get("rollout") or {}
            checks = ", ".join(
                f"{k['name']} {k['value']:.3g}"
                for k in rollout.get("analysis", {}).get("checks", [])
                if k.get("value") is not None
            )
            step = rollout.get("step")
            line = (
                f"  {rollout.get('phase', '…'):<11} "
                + (f"step {step + 1}/{rollout.get('steps')}  " if step is not None else "")
                + f"weight {rollout.get('weight', 0):g}%  "
                + (f"({checks})  " if checks else "")
                + f"{rollout.get('message', '')}"
            )
            if line != shown:
                console.print(line, highlight=False, markup=False)
                shown = line
            if (
                st.get("revision") == rollout.get("stableRevision")
                and rollout.get("phase") == "Healthy"
                and st.get("model") == new_ref
            ):
                break
            if rollout.get("phase") == "Degraded":
                break
            time.sleep(0.5)
    finally:
        traffic.stop.set()
        traffic.join(timeout=15.0)
    phase = rollout.get("phase")
    console.print(f"  {traffic.sent} requests during the rollout, {traffic.failed} failed")
    if phase == "Healthy":
        console.print(f"  [green]{new_ref} promoted[/]: it now serves all traffic")
        return "promoted"
    if phase == "Degraded":
        console.print(f"  [yellow]rolled back[/]: {rollout.get('message')}")
        return "rolled back"
    err_console.print("[red]error:[/] the rollout did not finish in time")
    err_console.print(f"  see: pilothouse rollout status {DEPLOYMENT}")
    return None
