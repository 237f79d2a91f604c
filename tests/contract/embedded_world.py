"""The embedded world: the real controllers against the embedded backend, in real time.

What ``pilothouse up`` runs, in the test's own event loop: the ``Manager`` with every
controller, ``LocalBackend`` (the process engine, its scheduler, the SQLite state, the
router on 127.0.0.1), a real SQLite store and a real model registry in a temporary
folder. Replicas are real ``pilothouse serve`` processes serving small scikit-learn
models, training workers are real processes, traffic is real HTTP through the router.

How each harness operation maps onto it:

* ``apply``/``delete``/``request``: what the control API does (``api.apply.Applier``:
  validate, check placement and models, store, wake the controller; ``mark_deleted``;
  rollout requests recorded with ``set_requests``), then the manager's trigger;
* ``add_model``: a logistic regression on the fraud example's synthetic transactions,
  registered as the next version of the name; ``error_rate``: a ``custom`` version
  (``tests.integration.rollout_models.BAD_MODEL``) whose ``predict`` raises for that share
  of the rows (the server answers 500); ``broken``: its artifact is changed after it was
  registered, so a replica fails the checksum and exits before it is ever ready;
* ``advance``/``until``: real time (``until`` polls every ``POLL`` seconds up to its
  deadline); a test's watch of something that merely holds (``seconds``) lasts at most
  ``HOLD_SECONDS``;
* ``crash_replicas``: SIGKILL to ready replicas' processes; ``finish_worker``: workers run
  ``train.py`` (written here), which waits for a file of its rank and attempt and exits
  with the code written in it (rank 0 writes a model to its output folder first);
  ``break_output``: rank 0 writes nothing, so registering the empty folder fails;
  ``offer_load``: an open-loop HTTP load from a background thread
  (``rollout_models.BackgroundLoad``, bounded in requests and time);
* observation: the store, the workload port (``revisions``, ``gang``) and the router's
  routes (``weights``).

A TrainingJob applied without a ``workingDir`` gets this world's work folder as its
``workingDir`` (where ``train.py`` is): the suite's jobs run ``python train.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pilothouse.api.apply import Applier, validate_documents
from pilothouse.controllers.base import Context
from pilothouse.controllers.manager import RECONCILERS, Manager
from pilothouse.ports.workload import GangState, MemberPhase, RevisionState
from pilothouse.registry.local import LocalRegistry
from pilothouse.router.proxy import Router
from pilothouse.runtime.local.backend import LocalBackend
from pilothouse.runtime.local.nodes import NodeSpec
from pilothouse.spec.types import split_model_ref
from pilothouse.store.sqlite import NotFound, Store
from tests.contract.harness import (
    NODE_CPU,
    NODE_MEMORY,
    NODE_NAME,
    Condition,
    document,
    holds,
    rollout_requests,
)

if TYPE_CHECKING:
    from tests.integration.rollout_models import BackgroundLoad, Rows

#: how often ``until`` looks at the world
POLL = 0.05
#: how long a fault injection waits for the backend to notice what it did
NOTICE = 15.0
#: the longest one offered load runs (and the most requests it sends per rps)
LOAD_SECONDS = 600.0
#: the worker script's own limit: it exits 124 if nobody finishes it by then
WORKER_LIMIT = 900
#: how long a worker takes to stop on SIGTERM (a checkpoint; less than the suite's grace
#: periods): what the memory world's workers do with their whole grace period
WORKER_STOP_SECONDS = 2

#: the longest a test watches something merely hold (``seconds``): longer than every
#: timer the suite's specs set (autoscaling windows and grace 10 s, pauses 4 s)
HOLD_SECONDS = 15.0

#: deadlines of ``until`` here: the suite's, times SLACK, plus SLACK_SECONDS
SLACK = 3.0
SLACK_SECONDS = 10.0

TRAIN_PY = '''"""A training worker of the embedded contract world (tests/contract/embedded_world.py).

It waits until the file ``control/JOB-aATTEMPT-rRANK`` appears beside it and exits with
the code written in it (rank 0 of a successful attempt first copies ``model.joblib`` to
its output folder, unless ``control/JOB.broken`` exists: its output stays empty). On
SIGTERM it takes STOP_SECONDS s (a checkpoint) and exits 143.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path


def stop(_signum, _frame):
    """Stopped by the platform (preempted, deleted): "save a checkpoint", then go."""
    print("SIGTERM: saving a checkpoint", flush=True)
    time.sleep(STOP_SECONDS)
    sys.exit(143)


signal.signal(signal.SIGTERM, stop)
here = Path(__file__).resolve().parent
control = here / "control"
job = os.environ["PILOTHOUSE_JOB"]
attempt = os.environ["PILOTHOUSE_ATTEMPT"]
rank = os.environ["RANK"]
flag = control / f"{job}-a{attempt}-r{rank}"
(control / f"{flag.name}.started").write_text(str(os.getpid()))
print(f"rank {rank} of {job}, attempt {attempt}: pid {os.getpid()}, waiting", flush=True)
deadline = time.monotonic() + LIMIT
while not flag.exists():
    if time.monotonic() > deadline:
        print("nobody finished this worker in time", file=sys.stderr, flush=True)
        sys.exit(124)
    time.sleep(0.05)
code = int(flag.read_text().strip() or "0")
if code == 0 and rank == "0" and not (control / f"{job}.broken").exists():
    shutil.copyfile(here / "model.joblib", Path(os.environ["PILOTHOUSE_OUTPUT_DIR"]) / "model.joblib")
if code != 0:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"RuntimeError: boom (rank {rank} exits with code {code})", file=sys.stderr, flush=True)
sys.exit(code)
'''.replace("LIMIT", str(WORKER_LIMIT)).replace("STOP_SECONDS", str(WORKER_STOP_SECONDS))

_trained: dict[str, bytes] = {}


def _fraud_data() -> ModuleType:
    """The fraud example's synthetic transactions (``tests.integration.servers`` puts the
    example on ``sys.path``)."""
    import tests.integration.servers  # noqa: F401

    return importlib.import_module("fraud_data")


def _model_bytes() -> bytes:
    """A small fitted scikit-learn pipeline (joblib), trained once per test process."""
    if "model" not in _trained:
        import io

        import joblib
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features, labels = _fraud_data().generate(1000, seed=11)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(features, labels)
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        _trained["model"] = buffer.getvalue()
    return _trained["model"]


def _signature() -> dict[str, Any]:
    return {
        "inputs": [{"name": f, "datatype": "FP64"} for f in _fraud_data().FEATURES],
        "outputs": [{"name": "score", "datatype": "FP64"}],
    }


def _rows() -> Rows:
    """The request bodies offered load sends (rows in turn; their v1 scores unused)."""
    import numpy as np

    from tests.integration.rollout_models import Rows, v2_body

    features, _ = _fraud_data().generate(400, seed=99)
    return Rows(features, np.zeros(len(features)), [v2_body(row) for row in features])


class _Errors(logging.Handler):
    """Reconciles that raised (the manager logs them and goes on)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.seen.append(text)


class EmbeddedWorld:
    name = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.control = self.work / "control"
        self.control.mkdir(parents=True)
        (self.work / "train.py").write_text(TRAIN_PY)
        (self.work / "model.joblib").write_bytes(_model_bytes())
        self.store = Store(root / "state.db")
        registry_root = root / "registry"
        registry_root.mkdir()
        self.registry = LocalRegistry(registry_root)
        self.router = Router("127.0.0.1")
        node = NodeSpec(
            name=NODE_NAME,
            cpu=NODE_CPU * 1000,
            memory=NODE_MEMORY,
            address="127.0.0.1",
            virtual=True,
        )
        self.backend = LocalBackend(
            self.store,
            self.registry,
            root / "home",
            self.router,
            "127.0.0.1",
            [node],
            registry_uri=str(registry_root),
            model_cache=root / "cache",
        )
        self.manager = Manager(
            Context(
                state=self.backend.state,
                workload=self.backend.workload,
                dataplane=self.backend.dataplane,
                clock=time.time,
            )
        )
        self.backend.on_change(self.manager.trigger)
        self.router.on_activate = lambda key: self.manager.trigger("ModelDeployment", key)
        self.applier = Applier(
            self.store,
            self.manager.trigger,
            registry=self.registry,
            nodes=self.backend.runtime.node_statuses,
        )
        self.started = time.time()
        self._controllers: asyncio.Task[None] | None = None
        self._loads: dict[str, BackgroundLoad] = {}
        self._rows: Rows | None = None
        self._errors = _Errors()
        self._closed = False
        self._remove_root = False

    @classmethod
    async def create(cls, root: Path | None = None) -> EmbeddedWorld:
        """A started world in ``root`` (a folder of its own; without one, a temporary
        folder removed at ``close``)."""
        made = cls(root or Path(tempfile.mkdtemp(prefix="pilothouse-embedded-")))
        made._remove_root = root is None
        logging.getLogger("pilothouse.controllers").addHandler(made._errors)
        try:
            await made.backend.start()
            made._controllers = asyncio.create_task(made.manager.run(), name="controllers")
        except BaseException:
            await made.close()
            raise
        return made

    def now(self) -> float:
        return time.time()

    # --- what users do ----------------------------------------------------------------

    async def apply(self, doc: str | dict[str, Any]) -> None:
        data = json.loads(json.dumps(document(doc)))  # a copy: the caller's stays as it is
        if data.get("kind") == "TrainingJob":
            spec = data.setdefault("spec", {})
            if "workingDir" not in spec:
                spec["workingDir"] = str(self.work)
        resources = validate_documents([data], "test")
        self.applier.apply(resources, "contract-test")

    async def delete(self, kind: str, name: str) -> None:
        if kind == "TrainingJob":
            # a worker process the status says runs may still be starting (its command
            # not yet run): a SIGTERM then ends it at once, where the suite means a
            # worker that runs and takes its time to stop
            await self._wait(partial(self._workers_started, name), f"{name}'s workers started")
        self.store.mark_deleted(kind, name)
        self.manager.trigger(kind, name)

    async def request(self, kind: str, name: str, action: str, *, full: bool = False) -> None:
        found = self.store.get(kind, name)
        rollout = dict((found.get("status") or {}).get("rollout") or {})
        nonce = str(time.time_ns())
        self.store.set_requests(kind, name, rollout_requests(action, rollout, nonce, full=full))
        self.manager.trigger(kind, name)

    async def add_model(
        self,
        name: str,
        *,
        framework: str = "sklearn",
        stage: str | None = None,
        broken: bool = False,
        error_rate: float = 0.0,
    ) -> str:
        if framework != "sklearn":
            raise NotImplementedError(
                f"the embedded world registers sklearn models, not {framework}"
            )
        return await asyncio.to_thread(self._register, name, stage, broken, error_rate)

    def _register(self, name: str, stage: str | None, broken: bool, error_rate: float) -> str:
        model = _model_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "signature.json").write_text(json.dumps(_signature()))
            if error_rate:
                from tests.integration.rollout_models import BAD_MODEL

                (out / "model.py").write_text(BAD_MODEL)
                (out / "inner.joblib").write_bytes(model)
                (out / "fault.json").write_text(json.dumps({"errorShare": error_rate}))
                kind = "custom"
            else:
                (out / "model.joblib").write_bytes(model)
                kind = "sklearn"
            version = self.registry.register(name, out, framework=kind)
        if broken:
            # registered, then changed: a replica fails the checksum and exits at start
            artifact = version.path / ("inner.joblib" if error_rate else "model.joblib")
            with artifact.open("ab") as handle:
                handle.write(b"corrupted after registration")
        if stage is not None:
            self.registry.promote(name, version.version, stage)
        return version.ref

    # --- time -------------------------------------------------------------------------

    def seconds(self, hold: float) -> float:
        return min(hold, HOLD_SECONDS)

    async def advance(self, seconds: float) -> None:
        self._check_controllers()
        await asyncio.sleep(seconds)

    async def until(self, condition: Condition, within: float, what: str) -> None:
        # real processes on a loaded machine: the suite's bounds are the memory world's
        # (what the controllers decide, on a fake clock); here a condition must come to
        # hold, with slack for processes that start slowly (speed is measured in bench/)
        within = within * SLACK + SLACK_SECONDS
        end = time.monotonic() + within
        while True:
            self._check_controllers()
            if await holds(condition):
                return
            if time.monotonic() >= end:
                raise AssertionError(f"{what}: not within {within:g}s\n{self.describe()}")
            await asyncio.sleep(POLL)

    # --- what the world does ----------------------------------------------------------

    async def crash_replicas(self, deployment: str, revision: str, n: int = 1) -> None:
        ready = [
            p
            for p in self.backend.runtime.pods("ModelDeployment", deployment)
            if p.get("revision") == revision and p.get("ready") and p.get("pid")
        ]
        if len(ready) < n:
            raise AssertionError(
                f"{deployment}: {len(ready)} ready replica(s) of {revision}, cannot crash {n}\n"
                + self.describe()
            )
        victims = {p["id"] for p in ready[:n]}
        for pod in ready[:n]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pod["pid"]), signal.SIGKILL)

        def noticed() -> bool:
            return not any(
                p["id"] in victims and p.get("ready") and p.get("exitCode") is None
                for p in self.backend.runtime.pods("ModelDeployment", deployment)
            )

        await self._wait(noticed, f"the backend noticed {sorted(victims)} died")

    async def finish_worker(self, job: str, rank: int, code: int = 0) -> None:
        gang = await self.backend.workload.gang(job)
        if gang is None:
            raise AssertionError(f"{job} has no workers to finish\n{self.describe()}")
        attempt = gang.attempt
        flag = self.control / f"{job}-a{attempt}-r{rank}"
        tmp = flag.with_name(flag.name + ".tmp")
        tmp.write_text(str(code))
        tmp.replace(flag)

        def ended() -> bool:
            return any(
                p.get("rank") == rank
                and p.get("attempt") == attempt
                and (p.get("exitCode") is not None or not p.get("running"))
                for p in self.backend.runtime.pods("TrainingJob", job)
            ) or not any(
                p.get("rank") == rank and p.get("attempt") == attempt
                for p in self.backend.runtime.pods("TrainingJob", job)
            )

        await self._wait(ended, f"worker {rank} of {job} attempt {attempt} exited")

    async def _workers_started(self, job: str) -> bool:
        """Every running worker of the job's current attempt runs ``train.py`` (which then
        stops as a worker does on SIGTERM)."""
        gang = await self.backend.workload.gang(job)
        if gang is None:
            return True
        return all(
            (self.control / f"{job}-a{gang.attempt}-r{m.rank}.started").exists()
            for m in gang.members
            if m.phase == MemberPhase.RUNNING
        )

    async def break_output(self, job: str) -> None:
        (self.control / f"{job}.broken").write_text("")

    async def offer_load(self, deployment: str, rps: float) -> None:
        from tests.integration.rollout_models import BackgroundLoad

        previous = self._loads.pop(deployment, None)
        if previous is not None:
            await asyncio.to_thread(previous.finish, 30.0)
        if rps <= 0:
            return

        def url() -> str | None:
            found = self.get("ModelDeployment", deployment)
            value = ((found or {}).get("status") or {}).get("url")
            return value if isinstance(value, str) and value else None

        await self._wait(lambda: url() is not None, f"{deployment} has an endpoint")
        found = self.get("ModelDeployment", deployment)
        assert found is not None
        model, _, _ = split_model_ref(str(found["spec"]["model"]))
        if self._rows is None:
            self._rows = await asyncio.to_thread(_rows)
        rows = self._rows
        endpoint = url()
        assert endpoint is not None
        self._loads[deployment] = await asyncio.to_thread(
            BackgroundLoad,
            endpoint,
            rows,
            rps,
            LOAD_SECONDS,
            model=model,
            max_requests=int(rps * LOAD_SECONDS),
            max_connections=64,
        )

    # --- observation ------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.store.get(kind, name)
        except NotFound:
            return None
        found["deleting"] = bool(found["metadata"].get("deletionTimestamp"))
        return found

    def events(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        return [(e.type, e.reason, e.message) for e in self.store.events(kind, name)]

    async def revisions(self, deployment: str) -> list[RevisionState]:
        return await self.backend.workload.revisions(deployment)

    async def gang(self, job: str) -> GangState | None:
        return await self.backend.workload.gang(job)

    def weights(self, deployment: str) -> dict[str, float]:
        route = self.router.route(deployment)
        if route is None:
            return {}
        ready = Counter(u.backend.revision for u in route.upstreams.values() if not u.ejected())
        weights = route.policy.weights
        if weights:
            shares = {rev: w for rev, w in weights.items() if w > 0 and ready.get(rev)}
        else:
            shares = {rev: float(n) for rev, n in ready.items()}
        total = sum(shares.values())
        return {rev: 100.0 * w / total for rev, w in shares.items()} if total else {}

    def describe(self) -> str:
        runtime = self.backend.runtime
        lines = [f"t={time.time() - self.started:.1f}s (real time)"]
        for kind in RECONCILERS:
            for obj in self.store.list_objects(kind):
                name = obj["metadata"]["name"]
                status = {
                    k: v
                    for k, v in (obj["status"] or {}).items()
                    if k not in ("internal", "history")
                }
                lines.append(
                    f"{kind}/{name} gen={obj['metadata']['generation']} "
                    f"deleting={bool(obj['metadata'].get('deletionTimestamp'))} "
                    f"status={json.dumps(status, sort_keys=True, default=str)}"
                )
                for pod in runtime.pods(kind, name):
                    lines.append(f"  pod {json.dumps(pod, sort_keys=True, default=str)}")
                lines.extend(
                    f"  event {e.last_seen} x{e.count} {e.type} {e.reason}: {e.message}"
                    for e in self.store.events(kind, name)[-15:]
                )
                if kind != "Queue":
                    lines.extend(self._log_tails(kind, name))
        for deployment, route in self.router.routes.items():
            lines.append(
                f"route {deployment} {route.url} weights={route.policy.weights} "
                f"upstreams={[(u.backend.id, u.backend.revision) for u in route.upstreams.values()]}"
            )
        if self._errors.seen:
            lines.append(f"reconcile errors: {self._errors.seen[-10:]}")
        return "\n".join(lines)

    def _log_tails(self, kind: str, name: str) -> list[str]:
        out: list[str] = []
        for path in self.backend.runtime.log_files(kind, name)[-4:]:
            try:
                tail = path.read_text(errors="replace").splitlines()[-3:]
            except OSError:
                continue
            out.extend(f"  log {path.name}: {line[:300]}" for line in tail)
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for load in list(self._loads.values()):
                load.stop()
            for load in list(self._loads.values()):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(load.join, 30.0)
            self._loads.clear()
            self.manager.stop()
            if self._controllers is not None:
                self._controllers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._controllers
            await self.backend.close()
        finally:
            self.store.close()
            logging.getLogger("pilothouse.controllers").removeHandler(self._errors)
            if self._remove_root:
                shutil.rmtree(self.root, ignore_errors=True)
        if self._errors.seen:
            raise AssertionError(f"reconciles raised: {self._errors.seen}")

    # --- helpers ----------------------------------------------------------------------

    def _check_controllers(self) -> None:
        task = self._controllers
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            raise AssertionError(f"the controllers stopped: {error!r}\n{self.describe()}")

    async def _wait(self, condition: Condition, what: str) -> None:
        end = time.monotonic() + NOTICE
        while not await holds(condition):
            if time.monotonic() >= end:
                raise AssertionError(f"{what}: not within {NOTICE:g}s\n{self.describe()}")
            await asyncio.sleep(POLL)
