"""``pilothouse demo``: the fraud-detection story end to end, with visible progress.

up -> train (TrainingJob, a local process) -> register (model version with
metrics) -> deploy (ModelDeployment, 2 replicas behind the router) -> predict.
The platform is left running for the user to explore.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pilothouse.api.client import ApiClientError, Client
from pilothouse.api.home import Home
from pilothouse.cli import daemonctl
from pilothouse.cli.main import _documents, predict_once
from pilothouse.cli.render import console, err_console
from pilothouse.spec.loader import load_paths

JOB = "fraud-train"
DEPLOYMENT = "fraud-detector"


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


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/5][/] [bold]{text}[/]")


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

    _step(2, f"train the fraud model ({rows:,} synthetic card transactions)")
    try:
        c.get("trainingjobs", JOB)
        with console.status("removing the previous demo run…"):
            c.delete("trainingjobs", JOB)
            while time.monotonic() < deadline:
                try:
                    c.get("trainingjobs", JOB)
                except ApiClientError as exc:
                    if exc.code == 404:
                        break
                    raise
                time.sleep(0.2)
    except ApiClientError as exc:
        if exc.code != 404:
            raise
    loaded = load_paths([str(example / "trainingjob.yaml")])
    docs = _documents(loaded)
    docs[0]["spec"]["args"] = ["--rows", str(rows), "--seed", "7"]
    c.apply(docs)
    console.print(
        f"  trainingjob/{JOB} created: {' '.join(docs[0]['spec']['command'] + docs[0]['spec']['args'])}"
    )
    seen = 0
    job: dict[str, Any] = {}
    with console.status("training…") as spinner:
        while time.monotonic() < deadline:
            job = c.get("trainingjobs", JOB)
            phase = (job.get("status") or {}).get("phase", "Pending")
            spinner.update(f"training… ({phase}, {time.monotonic() - started:.0f}s)")
            lines = [
                line
                for line in c.logs("trainingjobs", JOB)
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
            "  see: pilothouse describe trainingjob fraud-train; pilothouse logs trainingjob/fraud-train"
        )
        return 1

    _step(3, "register the model")
    output = status.get("outputModel") or {}
    metrics = output.get("metrics") or {}
    console.print(f"  registered [bold]{output.get('ref')}[/] in {home.registry_uri}")
    for key in ("auc", "average_precision", "precision_at_100", "precision_at_500", "fraud_rate"):
        if key in metrics:
            console.print(f"    {key:<18} {metrics[key]:.4f}")

    _step(4, "deploy it: 2 replicas behind the embedded router")
    c.apply(_documents(load_paths([str(example / "modeldeployment.yaml")])))
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
    console.print("  stop everything:  [bold]pilothouse down[/]")
    return 0
