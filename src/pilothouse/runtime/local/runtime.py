"""LocalRuntime: the runtime port implemented with local processes.

Replicas and training workers are items placed on nodes (the machine itself, or
virtual nodes from ``nodes.yaml``) by the scheduler controller: they wait, with the
scheduler's reason, until it binds them. Replicas are ``pilothouse serve`` processes,
each given an already-bound listening socket on its node's address (no port races),
probed for readiness and liveness (HTTP or a command, as kubelet does), and put behind
the embedded router only while ready; one that stops answering its liveness probe is
killed and replaced. Training workers start as a gang once all of them are placed, with
the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the
GPUs they were given (CUDA_VISIBLE_DEVICES), an output folder and a checkpoint folder
that survives attempts; a small launcher records their exit code.

Every item is recorded in SQLite: a daemon killed with SIGKILL and started again
adopts the processes that still run (and learns how the others ended) instead of
starting duplicates.

Environment: a process gets what the platform and its spec set, not the control plane's
whole environment (secrets such as AWS_SECRET_ACCESS_KEY in it stay there): see
:func:`child_env`. A spec's ``passEnv`` names what it wants of it besides.

Logs: each process writes its own log through its stdout; they are rotated by size
(``X.log`` and one backup ``X.log.1``, each at most ``log_max_bytes``, default 10 MiB or
``$PILOTHOUSE_LOG_MAX_BYTES``), checked every ``log_check_every`` seconds.

Replacement: the end of every process is noticed at once (a pidfd in the event loop, not
a poll) and reported with ``on_change(kind, name)`` (the daemon wakes that object's
controller), as is a replica turning ready or unready; a starting replica is probed every
50 ms. Most of a model server's start is importing (about 1.5 s of CPU for scikit-learn)
and loading its model, so each serving revision without a GPU keeps one *standby*
(``pilothouse.serving.standby``): a process that imported all that ahead of need and
becomes the next replica of that revision when one is started (a replacement, a scale-up)
-- it is handed the replica's listening socket, log, environment and arguments, and
serves within a few hundred milliseconds instead of seconds. A standby is made one at a
time, only while no replica of its deployment is starting, holds no room on a node (it
serves nothing and holds no model), and is stopped when its revision no longer runs;
``standby=False`` or ``$PILOTHOUSE_STANDBY=0`` turns them off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pilothouse.router.metrics import LATENCY_BOUNDS
from pilothouse.router.proxy import Backend, Router, TrafficPolicy
from pilothouse.runtime.local.nodes import NodeSpec, machine_node
from pilothouse.runtime.local.supervisor import (
    LOG_MAX_BYTES,
    UNKNOWN_EXIT,
    Child,
    Supervisor,
    is_same_process,
)
from pilothouse.runtime.port import (
    Bind,
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    NodeStatus,
    Placement,
    ProbeSpec,
    ReplicaSpec,
    ReplicaStatus,
    Requests,
    Responses,
    ResponseSample,
    Traffic,
    WorkerSpec,
    WorkerStatus,
)
from pilothouse.spec.quantity import QuantityError, format_bytes, format_cpu_millis, parse_bytes
from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.runtime.local")


@dataclass
class _Item:
    """One replica or training worker: waiting for a node, placed and running, or ended.

    Kubernetes would call it a pod. It holds room on its node from the moment it is bound
    until its process is gone; its record in SQLite lets a restarted daemon find it again.
    """

    id: str
    role: str  # "replica" | "worker"
    owner_kind: str
    owner_name: str
    requests: Requests
    created: float
    replica: ReplicaSpec | None = None
    worker: WorkerSpec | None = None
    node: str | None = None
    gpus: tuple[str, ...] = ()
    #: Pending | Starting | Running | Terminating
    phase: str = "Pending"
    reason: str = ""
    child: Child | None = None
    host: str = ""
    port: int = 0
    ready: bool = False
    ever_ready: bool = False
    failures: int = 0
    message: str = "waiting to be placed"
    #: stopped by the platform (node lost, drained, preempted): not the item's own failure
    disrupted: str = ""
    #: the platform is stopping it (liveness failure, eviction): its owner replaces it now
    doomed: bool = False
    #: its owner let go of it (it still holds room until its process is gone)
    released: bool = False
    #: how it ended when there is no process to ask (could not start; lost with a daemon)
    ended_code: int | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    output_dir: str = ""
    state_file: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: a pidfd of its process, readable once it ended (watched by the event loop)
    exit_fd: int | None = None

    @property
    def gang(self) -> str | None:
        """The job attempt's gang; a job deleted and applied again is another gang."""
        if self.worker is None:
            return None
        incarnation = f"-{self.worker.checkpoint_id[:8]}" if self.worker.checkpoint_id else ""
        return f"{self.worker.job}-a{self.worker.attempt}{incarnation}"

    @property
    def grace(self) -> float:
        """Seconds between SIGTERM and SIGKILL when it is stopped."""
        if self.worker is not None:
            return self.worker.grace
        return self.replica.grace if self.replica is not None else 10.0

    def exit_code(self) -> int | None:
        if self.ended_code is not None:
            return self.ended_code
        return self.child.poll() if self.child is not None else None

    def alive(self) -> bool:
        """Its process runs (or is about to: bound, not yet spawned)."""
        if self.node is None or self.ended_code is not None:
            return False
        return self.child is None or self.child.poll() is None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "ownerKind": self.owner_kind,
            "ownerName": self.owner_name,
            "requests": asdict(self.requests),
            "created": self.created,
            "node": self.node,
            "gpus": list(self.gpus),
            "phase": self.phase,
            "reason": self.reason,
            "host": self.host,
            "port": self.port,
            "disrupted": self.disrupted,
            "doomed": self.doomed,
            "released": self.released,
            "endedCode": self.ended_code,
            "startedAt": self.started_at,
            "everReady": self.ever_ready,
            "outputDir": self.output_dir,
            "stateFile": self.state_file,
            "message": self.message,
            "replica": asdict(self.replica) if self.replica else None,
            "worker": asdict(self.worker) if self.worker else None,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> _Item:
        worker = None
        if isinstance(r.get("worker"), dict):
            w = dict(r["worker"])
            w["requests"] = Requests(**(w.get("requests") or {}))
            w["pass_env"] = tuple(w.get("pass_env") or ())
            worker = WorkerSpec(**w)
        replica = (
            ReplicaSpec.from_dict(r["replica"]) if isinstance(r.get("replica"), dict) else None
        )
        return cls(
            id=r["id"],
            role=r["role"],
            owner_kind=r["ownerKind"],
            owner_name=r["ownerName"],
            requests=Requests(**(r.get("requests") or {})),
            created=float(r.get("created") or 0.0),
            replica=replica,
            worker=worker,
            node=r.get("node"),
            gpus=tuple(r.get("gpus") or ()),
            phase=str(r.get("phase") or "Pending"),
            reason=str(r.get("reason") or ""),
            host=str(r.get("host") or ""),
            port=int(r.get("port") or 0),
            disrupted=str(r.get("disrupted") or ""),
            doomed=bool(r.get("doomed")),
            released=bool(r.get("released")),
            ended_code=r.get("endedCode"),
            started_at=float(r.get("startedAt") or 0.0),
            ever_ready=bool(r.get("everReady")),
            output_dir=str(r.get("outputDir") or ""),
            state_file=str(r.get("stateFile") or ""),
            message=str(r.get("message") or ""),
        )


@dataclass
class _Node:
    spec: NodeSpec
    state: str = "Ready"

    def status(self) -> NodeStatus:
        return NodeStatus(
            name=self.spec.name,
            address=self.spec.address,
            capacity=Requests(self.spec.cpu, self.spec.memory, len(self.spec.gpus)),
            gpu_ids=self.spec.gpus,
            state=self.state,
            virtual=self.spec.virtual,
            labels=dict(self.spec.labels),
        )


@dataclass
class _Standby:
    """A model server that imported what a revision's replicas need and waits, on
    ``control``, to be made one of them (serving/standby.py)."""

    id: str
    child: Child
    control: socket.socket


LAUNCHER = Path(__file__).with_name("launch.py")


#: what every process gets of the control plane's environment: where programs and
#: libraries are (its own Python's bin first on PATH), who and where it runs, its locale,
#: which certificate authorities to trust, thread settings, CUDA settings, and the
#: platform's own PILOTHOUSE_* settings. Proxies are not among them (their URLs may hold
#: credentials): ``passEnv: [HTTPS_PROXY, NO_PROXY]``.
_INHERITED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    }
)
_INHERITED_PREFIXES = ("LC_", "OMP_", "CUDA_", "PILOTHOUSE_")
#: the control plane's own registry access (a URI, and storage options that may hold
#: credentials): replicas load a local copy it fetched and verified, and a job's output is
#: registered by the control plane, so no process needs them unless its spec asks
_CONTROL_PLANE_ONLY = frozenset({"PILOTHOUSE_REGISTRY", "PILOTHOUSE_REGISTRY_OPTIONS"})


def _passed(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``patterns`` (names, or prefixes ending in ``*``)."""
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def child_env(
    extra: dict[str, str],
    pass_env: tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a replica, worker or probe: an explicit one.

    * from the control plane's environment (``environ``, default ``os.environ``): PATH
      (with the platform's Python first), HOME, USER, LOGNAME, the locale (LANG,
      LANGUAGE, LC_*, TZ), TMPDIR, VIRTUAL_ENV, PYTHONPATH and LD_LIBRARY_PATH (how the
      platform's own Python and libraries are found), the certificate authorities to
      trust (SSL_CERT_FILE, SSL_CERT_DIR, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), thread
      settings (OMP_*, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS), CUDA_* and the platform's
      PILOTHOUSE_* settings (its home, a benchmark's run tag) except the registry's
      (PILOTHOUSE_REGISTRY, PILOTHOUSE_REGISTRY_OPTIONS);
    * whatever else of it the spec's ``passEnv`` names (``AWS_PROFILE``, ``AWS_*``);
    * ``PYTHONUNBUFFERED=1``, then ``extra``: the spec's ``env`` and what the platform sets
      (PILOTHOUSE_*, CUDA_VISIBLE_DEVICES, the torchrun variables), which win.

    Nothing else: credentials in the control plane's environment (AWS_SECRET_ACCESS_KEY,
    tokens) do not reach user processes unless a spec passes them. Model servers need
    none to find their model: the control plane fetches each version from the registry
    (S3 included, with its own credentials), verifies it, and gives the replica that local
    copy (``--model-dir``); a training job's output is registered by the control plane too.
    A job that reads its own data from S3 names what it needs: ``passEnv: [AWS_*]``.
    """
    source = os.environ if environ is None else environ
    env = {
        name: value
        for name, value in source.items()
        if (
            (name in _INHERITED or name.startswith(_INHERITED_PREFIXES))
            and name not in _CONTROL_PLANE_ONLY
        )
        or _passed(name, pass_env)
    }
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _log_max_bytes(value: int | None) -> int:
    """The limit given, else ``$PILOTHOUSE_LOG_MAX_BYTES`` (bytes or a quantity such as
    ``10Mi``), else 10 MiB; never under 4 KiB."""
    if value is None:
        raw = os.environ.get("PILOTHOUSE_LOG_MAX_BYTES", "").strip()
        value = LOG_MAX_BYTES
        if raw:
            try:
                value = parse_bytes(raw)
            except QuantityError as exc:
                log.warning("PILOTHOUSE_LOG_MAX_BYTES=%r ignored: %s", raw, exc)
    return max(4096, int(value))


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _start_failure(exc: OSError, program: str, cwd: str | None) -> str:
    """Why a worker could not start, in words a user can act on."""
    if cwd is not None and not Path(cwd).is_dir():
        return f"working directory does not exist: {cwd}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program}"
    return f"cannot start {program!r}: {exc.strerror or exc}"


class LocalRuntime:
    def __init__(
        self,
        store: Store,
        home: Path,
        router: Router,
        host: str = "127.0.0.1",
        nodes: list[NodeSpec] | None = None,
        *,
        log_max_bytes: int | None = None,
        log_check_every: float = 2.0,
        standby: bool | None = None,
    ) -> None:
        """``log_max_bytes``: each process's log is rotated once it is larger (None:
        ``$PILOTHOUSE_LOG_MAX_BYTES``, else 10 MiB), checked every ``log_check_every`` s.
        ``standby``: keep a model server ready to replace a replica of each serving
        revision without a GPU (None: unless ``$PILOTHOUSE_STANDBY`` is 0)."""
        self.home = home
        self.host = host
        self.router = router
        self.store = store
        self.supervisor = Supervisor(store, home / "logs", _log_max_bytes(log_max_bytes))
        self.log_check_every = log_check_every
        if standby is None:
            standby = os.environ.get("PILOTHOUSE_STANDBY", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        self.standby = standby
        self._standbys: dict[tuple[str, str], _Standby] = {}
        #: revisions whose standby failed: none again for them until then (monotonic)
        self._standby_pause: dict[tuple[str, str], float] = {}
        self._standby_wake = asyncio.Event()
        specs = nodes if nodes else [machine_node(host)]
        states = store.node_states()
        self._nodes: dict[str, _Node] = {
            n.name: _Node(n, states.get(n.name, "Ready")) for n in specs
        }
        self._items: dict[str, _Item] = {}
        self._http = httpx.AsyncClient(timeout=2.0)
        self._cpu_seen: dict[str, tuple[int, float]] = {}
        self._cpu_history: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self._cpu_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._standby_task: asyncio.Task[None] | None = None
        #: called when something waits for a node (the scheduler should look)
        self.on_pending: Callable[[], None] = lambda: None
        #: called with (owner kind, owner name) when one of its processes ended, or one of
        #: its replicas turned ready or unready (its controller should look now)
        self.on_change: Callable[[str, str], None] = lambda kind, name: None

    async def start(self) -> list[str]:
        """Adopt what a previous daemon left running (re-attach its replicas and workers);
        stop processes nobody knows about. Returns the ids of the stopped ones."""
        adopted = await asyncio.to_thread(self._adopt)
        if adopted:
            log.info("adopted %d process(es) of a previous daemon: %s", len(adopted), adopted)
        stopped = await asyncio.to_thread(self.supervisor.reap_orphans)
        for item in list(self._items.values()):
            if item.released and not item.alive():
                # let go of before the previous daemon died, and ended meanwhile
                await asyncio.to_thread(self.supervisor.stop, item.id, 0.0)
                self._forget(item.id)
                if item.state_file:
                    await asyncio.to_thread(Path(item.state_file).unlink, missing_ok=True)
                continue
            if not item.alive() or item.child is None:
                continue
            self._watch_exit(item)
            if item.doomed or item.released:
                # it was being stopped when the previous daemon died: finish that
                item.tasks.append(
                    asyncio.create_task(self._terminate(item, item.grace), name=f"stop-{item.id}")
                )
            elif item.role == "replica":
                self._watch_replica(item)
        self._cpu_task = asyncio.create_task(self._sample_cpu(), name="cpu-sampler")
        self._log_task = asyncio.create_task(self._rotate_logs(), name="log-rotation")
        self._standby_task = asyncio.create_task(self._keep_standbys(), name="standbys")
        return [r["id"] for r in stopped]

    async def _rotate_logs(self) -> None:
        """Every ``log_check_every`` seconds, rotate the logs that grew over the limit."""
        while True:
            await asyncio.sleep(self.log_check_every)
            try:
                await asyncio.to_thread(self.supervisor.rotate_logs)
            except Exception:  # never stop rotating because one pass failed
                log.exception("log rotation failed; trying again later")

    # -- noticing that a process ended -----------------------------------------------------

    def _watch_exit(self, item: _Item) -> None:
        """Notice the end of the item's process at once: its pidfd becomes readable then.
        Without pidfds (not Linux >= 5.3) a task polls it every 0.1 s instead."""
        child = item.child
        if child is None or item.exit_fd is not None:
            return
        try:
            fd = os.pidfd_open(child.pid)
        except ProcessLookupError:
            self._exited(item)  # gone (and reaped) already
            return
        except (AttributeError, OSError):
            item.tasks.append(asyncio.create_task(self._poll_exit(item), name=f"exit-{item.id}"))
            return
        # the pidfd names our process only if it had not ended (and been reaped, its PID
        # free for another) before it was opened
        ours = (
            child.poll() is None
            if not child.adopted
            else is_same_process(child.pid, child.start_ticks)
        )
        if not ours:
            os.close(fd)
            self._exited(item)
            return
        item.exit_fd = fd
        asyncio.get_running_loop().add_reader(fd, self._exited, item)

    def _unwatch_exit(self, item: _Item) -> None:
        fd, item.exit_fd = item.exit_fd, None
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def _poll_exit(self, item: _Item) -> None:
        child = item.child
        assert child is not None
        while child.poll() is None:  # noqa: ASYNC110 - nothing to wait on without a pidfd
            await asyncio.sleep(0.1)
        self._exited(item)

    def _exited(self, item: _Item) -> None:
        """The item's process ended: no more traffic to it, and its owner is told now."""
        self._unwatch_exit(item)
        if item.released or self._items.get(item.id) is not item:
            return  # let go of already: nobody waits for this
        code = item.exit_code()
        if item.role == "replica":
            was_ready, item.ready = item.ready, False
            self.router.remove_backend(item.owner_name, item.id)
            if not item.doomed:
                item.message = f"exited with code {code}"
            log.info(
                "replica %s exited with code %s%s",
                item.id,
                code,
                " (it was ready)" if was_ready else "",
            )
        else:
            log.info("worker %s exited with code %s", item.id, code)
        self.on_change(item.owner_kind, item.owner_name)

    def _adopt(self) -> list[str]:
        processes = {r["id"]: r for r in self.store.processes()}
        adopted = []
        for record in self.store.placements():
            try:
                item = _Item.from_record(record)
            except (KeyError, TypeError, ValueError):
                log.warning("dropping an unreadable placement record: %s", record.get("id"))
                self.store.delete_placement(str(record.get("id")))
                continue
            if item.node is not None and item.ended_code is None:
                proc = processes.get(item.id)
                if proc is None:
                    # bound, but no process was recorded: it never started
                    item.ended_code = UNKNOWN_EXIT
                    item.disrupted = item.disrupted or "lost while the control plane was down"
                else:
                    item.child = self.supervisor.adopt(proc)
                    item.ready = False
                    if item.role == "replica" and not item.port and proc.get("endpoint"):
                        host, _, port = str(proc["endpoint"]).rpartition(":")
                        item.host, item.port = host, int(port)
                    if item.child.poll() is None:
                        adopted.append(item.id)
                        item.message = "adopted; probing" if item.role == "replica" else ""
                    elif not item.disrupted and item.role == "replica":
                        item.message = "exited while the control plane was down"
            self._items[item.id] = item
        return adopted

    async def close(self) -> None:
        for task in (self._cpu_task, self._log_task, self._standby_task):
            if task is not None:
                task.cancel()
        for standby in self._standbys.values():
            standby.control.close()  # stop_all below ends their processes
        self._standbys.clear()
        for item in self._items.values():
            self._unwatch_exit(item)
            for task in item.tasks:
                task.cancel()
        # Workers stopped with the control plane resume when it is back (their job sees a
        # disruption, not a failure): those still running now, and those still waiting for
        # a node. One that already ended keeps how it ended. Replicas are started afresh.
        running = {i.id for i in self._items.values() if i.alive() and not i.released}
        stopping = {i.id for i in self._items.values() if i.alive() and (i.released or i.doomed)}
        graces = [i.grace for i in self._items.values() if i.id in running or i.id in stopping]
        await asyncio.to_thread(
            self.supervisor.stop_all, min(max(graces, default=10.0), 45.0), stopping
        )
        for item in list(self._items.values()):
            if item.role == "worker" and not item.released:
                if item.id in running:
                    item.disrupted = item.disrupted or "the control plane was stopped"
                    code = item.exit_code()
                    item.ended_code = code if code is not None else 143
                self.store.put_placement(item.record())
            else:
                self.store.delete_placement(item.id)
                if item.state_file:
                    await asyncio.to_thread(Path(item.state_file).unlink, missing_ok=True)
        await self.router.close()
        await self._http.aclose()

    def _save(self, item: _Item) -> None:
        self.store.put_placement(item.record())

    def _forget(self, item_id: str) -> None:
        item = self._items.pop(item_id, None)
        if item is not None:
            self._unwatch_exit(item)
            for task in item.tasks:
                task.cancel()
        self.store.delete_placement(item_id)

    # -- scheduling ----------------------------------------------------------------------

    async def nodes(self) -> list[NodeStatus]:
        return self.node_statuses()

    def node_statuses(self) -> list[NodeStatus]:
        return [n.status() for n in self._nodes.values()]

    async def placements(self) -> list[Placement]:
        out = []
        for item in self._items.values():
            if item.node is None and item.released:
                continue
            if item.node is not None and not item.alive():
                continue
            spec = item.worker
            out.append(
                Placement(
                    id=item.id,
                    owner_kind=item.owner_kind,
                    owner_name=item.owner_name,
                    role=item.role,
                    requests=item.requests,
                    created=item.created,
                    node=item.node,
                    gpus=item.gpus,
                    phase="Terminating" if item.doomed or item.released else item.phase,
                    reason=item.reason,
                    gang=item.gang,
                    gang_size=spec.world_size if spec else 1,
                    queue=spec.queue if spec else None,
                    priority=spec.priority
                    if spec
                    else (item.replica.priority if item.replica else 0),
                    queue_priority=spec.queue_priority if spec else 0,
                    preemptible=spec is not None,
                    spread=spec is None,
                )
            )
        return out

    async def bind(self, bindings: list[Bind], reasons: dict[str, str]) -> None:
        for item_id, reason in reasons.items():
            item = self._items.get(item_id)
            if item is None or item.node is not None:
                continue
            message = f"waiting to be placed: {reason}"
            if item.message != message:
                item.reason, item.message = reason, message
                self._save(item)
        gangs: set[str] = set()
        for binding in bindings:
            item = self._items.get(binding.id)
            if item is None or item.node is not None or binding.node not in self._nodes:
                continue
            item.node, item.gpus = binding.node, tuple(binding.gpus)
            item.phase, item.reason, item.message = "Starting", "", "starting"
            self._save(item)
            if item.role == "replica":
                await self._spawn_replica(item)
            elif item.gang is not None:
                gangs.add(item.gang)
        for gang in sorted(gangs):
            members = sorted(
                (i for i in self._items.values() if i.gang == gang and not i.released),
                key=lambda i: i.worker.rank if i.worker else 0,
            )
            size = members[0].worker.world_size if members and members[0].worker else 0
            waiting = [m for m in members if m.node is None]
            if len(members) == size and not waiting and all(m.child is None for m in members):
                await self._spawn_gang(members)

    async def evict(self, ids: list[str], reason: str) -> None:
        for item_id in ids:
            item = self._items.get(item_id)
            if item is None:
                continue
            if item.node is None:
                self._forget(item_id)
                continue
            if not item.alive() or item.doomed:
                continue
            item.disrupted, item.doomed, item.phase = reason, True, "Terminating"
            item.ready, item.message = False, reason
            self._save(item)
            if item.replica is not None:
                self.router.remove_backend(item.owner_name, item.id)
            grace = item.grace
            item.tasks.append(
                asyncio.create_task(self._terminate(item, grace), name=f"evict-{item_id}")
            )
        self.on_pending()

    async def _terminate(self, item: _Item, grace: float) -> None:
        """SIGTERM (and SIGCONT: a stopped process must run to handle it), SIGKILL after
        ``grace``; forget the item once it is gone if its owner let go of it already."""
        if item.child is not None:
            self.supervisor.signal(item.id, signal.SIGTERM)
            self.supervisor.signal(item.id, signal.SIGCONT)
            if not await _gone(item.child, grace):
                self.supervisor.kill(item.id)
                await _gone(item.child, 3600.0)
        if item.released and self._items.get(item.id) is item:
            self._unwatch_exit(item)
            await asyncio.to_thread(self.supervisor.stop, item.id, 0.0)
            self._items.pop(item.id, None)
            self._cpu_seen.pop(item.id, None)
            self.store.delete_placement(item.id)
            if item.state_file:
                await asyncio.to_thread(Path(item.state_file).unlink, missing_ok=True)
        self.on_pending()  # its room is free

    # -- nodes -----------------------------------------------------------------------------

    def node_view(self) -> dict[str, Any]:
        """Every node with capacity, allocated, free and what runs on it; and what waits."""
        items: list[dict[str, Any]] = []
        for node in self._nodes.values():
            on_node = [i for i in self._items.values() if i.node == node.spec.name and i.alive()]
            cap = node.status().capacity
            used = Requests(
                sum(i.requests.cpu for i in on_node),
                sum(i.requests.memory for i in on_node),
                sum(i.requests.gpu for i in on_node),
            )
            holders = {g: i.id for i in on_node for g in i.gpus}
            items.append(
                {
                    "name": node.spec.name,
                    "address": node.spec.address,
                    "state": node.state,
                    "virtual": node.spec.virtual,
                    "labels": dict(node.spec.labels),
                    "capacity": _quantities(cap),
                    "allocated": _quantities(used),
                    "free": _quantities(
                        Requests(cap.cpu - used.cpu, cap.memory - used.memory, cap.gpu - used.gpu)
                    ),
                    "gpus": [{"id": g, "assignedTo": holders.get(g)} for g in node.spec.gpus],
                    "items": [
                        {
                            "id": i.id,
                            "owner": f"{i.owner_kind}/{i.owner_name}",
                            "role": i.role,
                            "requests": _quantities(i.requests),
                            "gpus": list(i.gpus),
                            "phase": "Terminating" if i.doomed or i.released else i.phase,
                            "pid": i.child.pid if i.child is not None else None,
                        }
                        for i in sorted(on_node, key=lambda i: i.id)
                    ],
                }
            )
        pending = [
            {
                "id": i.id,
                "owner": f"{i.owner_kind}/{i.owner_name}",
                "role": i.role,
                "requests": _quantities(i.requests),
                "reason": i.reason or "waiting for the scheduler",
            }
            for i in sorted(self._items.values(), key=lambda i: i.created)
            if i.node is None and not i.released
        ]
        return {"items": items, "pending": pending}

    async def node_action(self, name: str, action: str) -> str:
        """cordon | uncordon | drain | fail; KeyError: no such node; ValueError: not now."""
        node = self._nodes.get(name)
        if node is None:
            known = ", ".join(sorted(self._nodes))
            raise KeyError(f"node {name!r} not found; nodes: {known}")
        on_node = [i for i in self._items.values() if i.node == name and i.alive() and not i.doomed]
        if action == "cordon":
            if node.state == "Lost":
                raise ValueError(f"node {name} is lost; `node uncordon {name}` brings it back")
            message = f"node {name} cordoned: no new work is placed on it"
            node.state = "Cordoned"
        elif action == "uncordon":
            message = (
                f"node {name} is back (it was lost)"
                if node.state == "Lost"
                else f"node {name} uncordoned: it takes new work"
            )
            node.state = "Ready"
        elif action == "drain":
            if node.state == "Lost":
                raise ValueError(f"node {name} is lost: there is nothing to drain")
            node.state = "Cordoned"
            await self.evict([i.id for i in on_node], f"node {name} drained")
            message = f"node {name} drained: {len(on_node)} item(s) evicted" + (
                f" ({', '.join(i.id for i in on_node)})" if on_node else ""
            )
        elif action == "fail":
            if node.state == "Lost":
                raise ValueError(f"node {name} is already lost")
            node.state = "Lost"
            for item in on_node:
                item.disrupted, item.doomed, item.phase = f"node {name} lost", True, "Terminating"
                item.ready, item.message = False, f"node {name} lost"
                if item.replica is not None:
                    self.router.remove_backend(item.owner_name, item.id)
                self.supervisor.kill(item.id)
                self._save(item)
                item.tasks.append(
                    asyncio.create_task(self._terminate(item, 0.0), name=f"lost-{item.id}")
                )
            message = (
                f"node {name} failed: {len(on_node)} item(s) lost; they are replaced elsewhere"
            )
        else:
            raise ValueError(
                f"unknown node action {action!r}; expected cordon, uncordon, drain or fail"
            )
        self.store.set_node_state(name, node.state)
        self.on_pending()
        return message

    # -- replicas -------------------------------------------------------------------------

    async def start_replica(self, spec: ReplicaSpec) -> str:
        replica_id = f"{spec.deployment}-{spec.revision}-{uuid.uuid4().hex[:4]}"
        item = _Item(
            id=replica_id,
            role="replica",
            owner_kind="ModelDeployment",
            owner_name=spec.deployment,
            requests=spec.requests,
            created=time.time(),
            replica=spec,
        )
        self._items[replica_id] = item
        self._save(item)
        self.on_pending()
        return replica_id

    async def _spawn_replica(self, item: _Item) -> None:
        spec = item.replica
        assert spec is not None
        assert item.node is not None
        node = self._nodes[item.node]
        host = node.spec.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            sock.listen(1024)
            sock.set_inheritable(True)
            port = sock.getsockname()[1]
            args = [
                "serve",
                "--model-dir",
                spec.model_dir,
                "--name",
                spec.model_name,
                "--max-batch-size",
                str(spec.max_batch_size),
                "--max-batch-delay",
                str(spec.max_batch_delay),
            ]
            env = child_env(
                {
                    "PILOTHOUSE_REPLICA_ID": item.id,
                    "PILOTHOUSE_NODE": node.spec.name,
                    "CUDA_VISIBLE_DEVICES": ",".join(item.gpus),
                    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                },
                spec.pass_env,
            )
            log_name = f"modeldeployments/{spec.deployment}/{item.id}.log"
            extra = {"endpoint": f"{host}:{port}", "revision": spec.revision}
            try:
                child = await self._from_standby(item, sock, args, env, log_name, extra)
                if child is None:
                    child = await asyncio.to_thread(
                        self.supervisor.spawn,
                        item.id,
                        owner_kind="ModelDeployment",
                        owner_name=spec.deployment,
                        role="replica",
                        argv=[
                            sys.executable,
                            "-m",
                            "pilothouse",
                            *args,
                            "--fd",
                            str(sock.fileno()),
                        ],
                        env=env,
                        cwd=None,
                        log_name=log_name,
                        pass_fds=(sock.fileno(),),
                        extra=extra,
                    )
            except OSError as exc:
                item.ended_code, item.message = 127, f"cannot start the model server: {exc}"
                item.ended_at = time.time()
                self._save(item)
                return
        finally:
            sock.close()
        item.child, item.host, item.port = child, host, port
        item.started_at, item.phase = child.started_at, "Running"
        self._watch_exit(item)
        if item.doomed or item.released:
            # evicted (drain, lost node) while it was being started: stop it now
            self._save(item)
            item.tasks.append(
                asyncio.create_task(self._terminate(item, spec.grace), name=f"stop-{item.id}")
            )
            return
        item.message = "starting"
        self._save(item)
        self._watch_replica(item)
        log.info(
            "started replica %s on %s (%s:%d)%s",
            item.id,
            node.spec.name,
            host,
            port,
            " from a standby" if child.record.get("fromStandby") else "",
        )

    # -- standbys: model servers started ahead of need ----------------------------------

    def _standby_wanted(self) -> dict[tuple[str, str], ReplicaSpec]:
        """The revisions that should have a standby: serving now (a ready replica), on no
        GPU (a standby cannot know which GPU its replica gets), with no replica of their
        deployment still starting (the standby's warm-up would slow it down)."""
        starting = {
            i.owner_name
            for i in self._items.values()
            if i.role == "replica" and not i.released and not i.ever_ready and i.alive()
        }
        wanted: dict[tuple[str, str], ReplicaSpec] = {}
        for i in self._items.values():
            spec = i.replica
            if (
                spec is not None
                and i.ready
                and not i.released
                and not i.doomed
                and spec.requests.gpu == 0
                and i.owner_name not in starting
            ):
                wanted[(spec.deployment, spec.revision)] = spec
        return wanted

    async def _keep_standbys(self) -> None:
        """Every second, and at once when a replica turned ready: one standby for each
        revision that serves (see _standby_wanted), made one at a time; none for a revision
        nothing runs of any more."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._standby_wake.wait(), 1.0)
            self._standby_wake.clear()
            try:
                await self._tend_standbys()
            except Exception:  # a failed pass never stops the loop
                log.exception("could not tend the standby model servers")

    async def _tend_standbys(self) -> None:
        live = {
            (i.owner_name, i.replica.revision)
            for i in self._items.values()
            if i.replica is not None and not i.released
        }
        now = time.monotonic()
        for key, standby in list(self._standbys.items()):
            if standby.child.poll() is not None:
                # died before it was needed: not again for this revision for a while
                log.warning(
                    "standby %s ended (exit code %s) before it was needed; see %s",
                    standby.id,
                    standby.child.poll(),
                    standby.child.record.get("log"),
                )
                self._standby_pause[key] = now + 60.0
                await self._drop_standby(key)
            elif key not in live:
                await self._drop_standby(key)
        if not self.standby:
            return
        for key, spec in self._standby_wanted().items():
            if key not in self._standbys and self._standby_pause.get(key, 0.0) <= now:
                await self._start_standby(spec)
                return  # one at a time: each costs a second or two of CPU

    async def _start_standby(self, spec: ReplicaSpec) -> None:
        key = (spec.deployment, spec.revision)
        standby_id = f"standby-{spec.deployment}-{spec.revision}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            argv = [
                sys.executable,
                "-m",
                "pilothouse.serving.standby",
                "--control",
                str(theirs.fileno()),
                "--model-dir",
                spec.model_dir,
                # room for the command line it shows once it is a replica
                "--room=" + "." * 160,
            ]
            env = child_env({"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
            child = await asyncio.to_thread(
                self.supervisor.spawn,
                standby_id,
                owner_kind="ModelDeployment",
                owner_name=spec.deployment,
                role="standby",
                argv=argv,
                env=child_env(env, spec.pass_env),
                cwd=None,
                log_name=f"modeldeployments/{spec.deployment}/{standby_id}.out",
                pass_fds=(theirs.fileno(),),
                extra={"revision": spec.revision},
            )
        except OSError as exc:
            ours.close()
            log.warning("could not start a standby for %s/%s: %s", *key, exc)
            self._standby_pause[key] = time.monotonic() + 60.0
            return
        finally:
            theirs.close()
        self._standbys[key] = _Standby(standby_id, child, ours)
        log.info("started standby %s (pid %d)", standby_id, child.pid)

    async def _drop_standby(self, key: tuple[str, str]) -> None:
        standby = self._standbys.pop(key, None)
        if standby is not None:
            standby.control.close()  # it ends by itself when it sees that
            await asyncio.to_thread(self.supervisor.stop, standby.id, 2.0)

    async def _from_standby(
        self,
        item: _Item,
        listener: socket.socket,
        args: list[str],
        env: dict[str, str],
        log_name: str,
        extra: dict[str, Any],
    ) -> Child | None:
        """Make the revision's standby this replica (its listening socket and log passed
        over the control socket), or None if there is none that runs."""
        spec = item.replica
        assert spec is not None
        standby = self._standbys.pop((spec.deployment, spec.revision), None)
        if standby is None:
            return None
        try:
            if standby.child.poll() is not None:
                raise OSError(f"it ended with code {standby.child.poll()}")
            log_path = self.supervisor.log_dir / log_name
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                message = json.dumps({"args": args, "env": env}).encode()
                socket.send_fds(standby.control, [message], [listener.fileno(), log_fd])
            finally:
                os.close(log_fd)
        except OSError as exc:
            log.warning("standby %s not used for %s: %s", standby.id, item.id, exc)
            standby.control.close()
            await asyncio.to_thread(self.supervisor.stop, standby.id, 1.0)
            return None
        standby.control.close()
        return self.supervisor.assign(
            standby.id,
            item.id,
            owner_name=spec.deployment,
            role="replica",
            argv=[sys.executable, "-m", "pilothouse", *args, "--fd", "?"],
            log_name=log_name,
            extra={**extra, "fromStandby": standby.id},
        )

    def _watch_replica(self, item: _Item) -> None:
        item.tasks.append(asyncio.create_task(self._readiness(item), name=f"ready-{item.id}"))
        spec = item.replica
        if spec is not None and spec.liveness is not None:
            item.tasks.append(
                asyncio.create_task(self._liveness(item, spec.liveness), name=f"live-{item.id}")
            )

    async def _check(self, item: _Item, probe: ProbeSpec) -> tuple[bool, str]:
        """One probe: (healthy, what went wrong)."""
        if probe.command:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *probe.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=child_env(
                        {"PILOTHOUSE_REPLICA_ENDPOINT": f"{item.host}:{item.port}"},
                        item.replica.pass_env if item.replica is not None else (),
                    ),
                    start_new_session=True,
                )
            except OSError as exc:
                return False, f"cannot run {probe.command[0]!r}: {exc.strerror or exc}"
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), probe.timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                return False, f"command timed out after {probe.timeout:g}s"
            if proc.returncode == 0:
                return True, ""
            text = out.decode("utf-8", "replace").strip().splitlines()
            return False, f"exit code {proc.returncode}" + (f": {text[-1][:160]}" if text else "")
        url = f"http://{item.host}:{item.port}{probe.path}"
        try:
            response = await self._http.get(url, timeout=probe.timeout)
        except httpx.TimeoutException:
            return False, f"no answer within {probe.timeout:g}s"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if 200 <= response.status_code < 300:
            return True, ""
        return False, f"HTTP {response.status_code} {response.text[:160]}"

    async def _readiness(self, item: _Item) -> None:
        spec = item.replica
        assert spec is not None
        assert item.child is not None
        probe = ProbeSpec(
            path=spec.readiness_path,
            command=spec.readiness_command,
            period=spec.probe_period,
            timeout=spec.probe_timeout,
            failure_threshold=spec.failure_threshold,
        )
        # a replica that never was ready is starting: probed every 50 ms (HTTP; a command
        # costs a process each time: 250 ms), so it takes traffic as soon as it answers
        starting = min(0.25 if probe.command else 0.05, probe.period)
        while item.child.poll() is None and not item.doomed:
            ok, detail = await self._check(item, probe)
            if item.doomed or item.child.poll() is not None:
                break
            if ok:
                if not item.ready:
                    item.message = "ready"
                    item.ready, item.failures = True, 0
                    log.info(
                        "replica %s ready %.2fs after its start",
                        item.id,
                        time.time() - item.started_at,
                    )
                    self.on_change(item.owner_kind, item.owner_name)
                    self._standby_wake.set()
                item.failures = 0
                if not item.ever_ready:
                    item.ever_ready = True
                    self._save(item)
            else:
                item.failures += 1
                if item.ready and item.failures >= probe.failure_threshold:
                    item.ready = False
                    self.on_change(item.owner_kind, item.owner_name)
                item.message = f"readiness probe failed: {detail}"
            if item.ready:
                pause = probe.period
            else:
                pause = starting if not item.ever_ready else min(0.25, probe.period)
            await asyncio.sleep(pause)
        item.ready = False
        if not item.doomed:
            item.message = f"exited with code {item.child.poll()}"

    async def _liveness(self, item: _Item, probe: ProbeSpec) -> None:
        """Kill a replica that stops answering (hung, deadlocked, SIGSTOPped), as kubelet does.

        Failures count once the probe passed (a model that loads slowly is not killed) or,
        with ``initial_delay``, from that long after the start."""
        assert item.child is not None
        counting = False
        failures = 0
        started = time.monotonic()
        while item.child.poll() is None and not item.doomed:
            await asyncio.sleep(probe.period)
            ok, detail = await self._check(item, probe)
            if ok:
                counting, failures = True, 0
                continue
            if probe.initial_delay and time.monotonic() - started >= probe.initial_delay:
                counting = True
            if not counting:
                continue
            failures += 1
            if failures >= probe.failure_threshold and item.child.poll() is None:
                item.doomed, item.ready, item.phase = True, False, "Terminating"
                item.message = (
                    f"liveness probe failed {failures} times ({detail}); killed and replaced"
                )
                self._save(item)
                self.router.remove_backend(item.owner_name, item.id)
                log.warning("replica %s: %s", item.id, item.message)
                grace = item.grace
                item.tasks.append(
                    asyncio.create_task(self._terminate(item, grace), name=f"kill-{item.id}")
                )
                return

    @staticmethod
    def _stopping(item: _Item) -> bool:
        """A task already terminates its process (eviction, liveness, lost node, stop)."""
        return any(
            t.get_name().startswith(("evict-", "kill-", "lost-", "stop-")) and not t.done()
            for t in item.tasks
        )

    async def stop_replica(self, replica_id: str) -> None:
        item = self._items.get(replica_id)
        if item is None or item.released:
            return
        item.ready = False
        # No new requests first; the replica then drains and finishes what it has.
        self.router.remove_backend(item.owner_name, replica_id)
        if item.node is None:
            self._forget(replica_id)
            return
        if item.doomed and item.alive():
            # already being stopped (liveness, eviction, lost node): let that finish
            item.released = True
            self._save(item)
            if not self._stopping(item):
                grace = item.grace
                item.tasks.append(
                    asyncio.create_task(self._terminate(item, grace), name=f"stop-{item.id}")
                )
            return
        item.released, item.phase = True, "Terminating"
        self._unwatch_exit(item)
        for task in item.tasks:
            task.cancel()
        grace = item.grace
        await asyncio.to_thread(self.supervisor.stop, replica_id, grace)
        self._items.pop(replica_id, None)
        self.store.delete_placement(replica_id)
        self.on_pending()

    async def list_replicas(self, deployment: str) -> list[ReplicaStatus]:
        out = []
        for item in self._items.values():
            if item.role != "replica" or item.owner_name != deployment or item.released:
                continue
            code = item.exit_code()
            pending = item.node is None
            exited = not pending and (code is not None or item.doomed or not item.alive())
            out.append(
                ReplicaStatus(
                    id=item.id,
                    revision=item.replica.revision if item.replica else "",
                    ready=item.ready and not exited and not pending,
                    exited=exited,
                    started_at=item.started_at or item.created,
                    endpoint=f"{item.host}:{item.port}" if item.port else None,
                    pid=item.child.pid if item.child is not None else None,
                    exit_code=code,
                    exited_at=(item.child.finished_at if item.child else item.ended_at)
                    if exited
                    else None,
                    message=item.message,
                    ever_ready=item.ever_ready,
                    pending=pending,
                    node=item.node,
                    disrupted=item.disrupted,
                )
            )
        return sorted(out, key=lambda s: s.started_at)

    async def set_traffic(
        self, deployment: str, ready: list[ReplicaStatus], traffic: Traffic | None = None
    ) -> str:
        t = traffic or Traffic()
        url = await self.router.ensure_route(deployment, t.port)
        backends = []
        for status in ready:
            item = self._items.get(status.id)
            if item is not None and item.replica is not None and item.port:
                backends.append(
                    Backend(
                        status.id,
                        item.host,
                        item.port,
                        status.revision,
                        item.replica.readiness_path,
                    )
                )
        self.router.set_policy(
            deployment,
            TrafficPolicy(
                weights=dict(t.weights),
                mirror_revision=t.mirror_revision,
                mirror_percent=t.mirror_percent,
                max_concurrency=t.max_concurrency,
                queue_limit=t.queue_limit,
                queue_timeout=t.queue_timeout,
                hold_when_empty=t.hold_when_empty,
                max_ejection_percent=t.max_ejection_percent,
            ),
        )
        self.router.set_backends(deployment, backends)
        return url

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        route = self.router.route(deployment)
        if route is None:
            return DeploymentLoad({})
        history = list(self._cpu_history.get(deployment, ()))

        def cpu_at(when: float, revision: str) -> float | None:
            """The CPU sample taken closest to a bucket's end (each covers its own second)."""
            best = min(history, key=lambda h: abs(h[0] - when), default=None)
            if best is None or abs(best[0] - when) > 1.5:
                return None
            return best[1].get(revision, 0.0)

        revisions = {
            revision: [
                LoadSample(
                    b.end,
                    b.seconds,
                    b.concurrency,
                    b.requests,
                    b.errors,
                    cpu_at(b.end, revision),
                    LATENCY_BOUNDS,
                    b.latency_counts,
                )
                for b in buckets
            ]
            for revision, buckets in route.buckets(since).items()
        }
        return DeploymentLoad(revisions, queued=route.queued)

    def _running_replicas(self, deployment: str | None = None) -> list[_Item]:
        return [
            i
            for i in self._items.values()
            if i.role == "replica"
            and i.replica is not None
            and i.child is not None
            and (deployment is None or i.owner_name == deployment)
            and i.child.poll() is None
        ]

    async def _sample_cpu(self) -> None:
        """Once a second: cores used by each revision's replicas during that second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for deployment in {i.owner_name for i in self._running_replicas()}:
                history = self._cpu_history.setdefault(deployment, deque(maxlen=180))
                history.append((now, self._cpu_by_revision(deployment)))

    def _cpu_by_revision(self, deployment: str) -> dict[str, float]:
        """Cores each revision's replicas used since the previous call (from /proc)."""
        now = time.monotonic()
        totals: dict[str, float] = {}
        for item in self._running_replicas(deployment):
            assert item.child is not None
            assert item.replica is not None
            ticks = _cpu_ticks(item.child.pid)
            if ticks is None:
                continue
            previous = self._cpu_seen.get(item.id)
            self._cpu_seen[item.id] = (ticks, now)
            if previous is None or now <= previous[1]:
                continue
            cores = (ticks - previous[0]) / _CLOCK_TICKS / (now - previous[1])
            revision = item.replica.revision
            totals[revision] = totals.get(revision, 0.0) + cores
        return totals

    async def responses(self, deployment: str, since: float) -> Responses:
        route = self.router.route(deployment)
        if route is None:
            return Responses()
        samples = [
            ResponseSample(when, revision, body)
            for revision, kept in route.samples.items()
            for when, body in kept
            if when > since
        ]
        mirrors = [
            MirrorPair(
                m.time,
                m.primary_revision,
                m.primary_status,
                m.primary_body,
                m.mirror_revision,
                m.mirror_status,
                m.mirror_body,
            )
            for m in route.mirrors
            if m.time > since
        ]
        return Responses(samples, mirrors)

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        targets = [
            (i.host, i.port)
            for i in self._running_replicas(deployment)
            if i.replica is not None and i.replica.revision == revision and i.ready
        ]
        if not targets:
            return []
        texts: list[str] = []
        async with httpx.AsyncClient(timeout=2.0) as http:
            for host, port in targets:
                try:
                    response = await http.get(f"http://{host}:{port}/metrics")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    texts.append(response.text)
        return texts

    async def remove_traffic(self, deployment: str) -> None:
        await self.router.remove(deployment)

    # -- training workers ------------------------------------------------------------

    def output_dir(self, job: str, attempt: int, incarnation: str = "") -> Path:
        folder = f"{job}-{incarnation[:8]}" if incarnation else job
        return self.home / "outputs" / folder / f"attempt-{attempt}"

    def checkpoint_dir(self, job: str, checkpoint_id: str) -> Path:
        return self.home / "checkpoints" / (f"{job}-{checkpoint_id[:8]}" if checkpoint_id else job)

    async def start_gang(self, specs: list[WorkerSpec]) -> None:
        now = time.time()
        for spec in specs:
            worker_id = f"{spec.job}-a{spec.attempt}-r{spec.rank}"
            existing = self._items.get(worker_id)
            if existing is not None and existing.worker is not None:
                if existing.worker.checkpoint_id == spec.checkpoint_id and not existing.released:
                    continue  # submitted already (idempotent)
                # a deleted job of the same name is still stopping: keep both apart
                worker_id = f"{worker_id}-{uuid.uuid4().hex[:4]}"
            item = _Item(
                id=worker_id,
                role="worker",
                owner_kind="TrainingJob",
                owner_name=spec.job,
                requests=spec.requests,
                created=now,
                worker=spec,
                output_dir=str(self.output_dir(spec.job, spec.attempt, spec.checkpoint_id)),
            )
            self._items[worker_id] = item
            self._save(item)
        self.on_pending()

    async def _spawn_gang(self, members: list[_Item]) -> None:
        """Start a placed gang: every worker with its rank, its node's GPUs and the address
        of rank 0 (MASTER_ADDR:MASTER_PORT) the ranks rendezvous at, as torchrun sets them."""
        first = members[0]
        assert first.worker is not None
        assert first.node is not None
        master = self._nodes[first.node].spec.address
        master_port = await asyncio.to_thread(_free_port, master)
        node_order: list[str] = []
        for m in members:
            if m.node not in node_order and m.node is not None:
                node_order.append(m.node)
        for m in members:
            spec = m.worker
            assert spec is not None
            assert m.node is not None
            same_node = [x for x in members if x.node == m.node]
            env = {
                **spec.env,
                "PILOTHOUSE_JOB": spec.job,
                "PILOTHOUSE_ATTEMPT": str(spec.attempt),
                "PILOTHOUSE_OUTPUT_DIR": m.output_dir,
                "PILOTHOUSE_NODE": m.node,
                "PILOTHOUSE_CHECKPOINT_DIR": str(self.checkpoint_dir(spec.job, spec.checkpoint_id)),
                "PILOTHOUSE_CHECKPOINT_INTERVAL": f"{spec.checkpoint_interval:g}",
                "PILOTHOUSE_CHECKPOINT_KEEP": str(spec.checkpoint_keep),
                "RANK": str(spec.rank),
                "LOCAL_RANK": str(same_node.index(m)),
                "LOCAL_WORLD_SIZE": str(len(same_node)),
                "GROUP_RANK": str(node_order.index(m.node)),
                "NODE_RANK": str(node_order.index(m.node)),
                "WORLD_SIZE": str(spec.world_size),
                "MASTER_ADDR": master,
                "MASTER_PORT": str(master_port),
                "TORCHELASTIC_RESTART_COUNT": str(max(0, spec.attempt - 1)),
                "CUDA_VISIBLE_DEVICES": ",".join(m.gpus),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
            await self._spawn_worker(m, env)

    async def _spawn_worker(self, item: _Item, extra_env: dict[str, str]) -> None:
        spec = item.worker
        assert spec is not None
        log_name = f"trainingjobs/{spec.job}/worker-{spec.rank}.log"
        log_path = self.supervisor.log_dir / log_name
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        await asyncio.to_thread(
            _prepare_worker,
            [Path(item.output_dir), Path(extra_env["PILOTHOUSE_CHECKPOINT_DIR"])],
            log_path,
            f"--- pilothouse: attempt {spec.attempt} of {spec.job} at {stamp} on node {item.node}",
        )
        env = child_env(extra_env, spec.pass_env)
        cwd = spec.working_dir
        problem = _cannot_start(spec.command[0], cwd, env.get("PATH", ""))
        state_file = self.home / "run" / f"{item.id}.json"
        child = None
        if problem is None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.unlink(missing_ok=True)
            try:
                child = await asyncio.to_thread(
                    self.supervisor.spawn,
                    item.id,
                    owner_kind="TrainingJob",
                    owner_name=spec.job,
                    role="worker",
                    argv=[
                        sys.executable,
                        "-I",
                        str(LAUNCHER),
                        str(state_file),
                        "--",
                        *spec.command,
                    ],
                    env=env,
                    cwd=cwd,
                    log_name=log_name,
                    extra={"attempt": spec.attempt, "rank": spec.rank},
                    state_file=str(state_file),
                )
            except OSError as exc:
                problem = _start_failure(exc, spec.command[0], cwd)
        if child is None:
            reason = problem or "cannot start"
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(f"--- pilothouse: {reason}\n")
            item.ended_code, item.message, item.ended_at = 127, reason, time.time()
            item.started_at = item.ended_at
            self._save(item)
            return
        item.child, item.state_file = child, str(state_file)
        item.started_at, item.phase, item.message = child.started_at, "Running", ""
        self._save(item)
        self._watch_exit(item)
        if item.doomed or item.released:
            # evicted (drain, lost node) while it was being started: stop it now
            item.tasks.append(
                asyncio.create_task(self._terminate(item, spec.grace), name=f"stop-{item.id}")
            )

    def _worker_status(self, item: _Item) -> WorkerStatus:
        spec = item.worker
        assert spec is not None
        pending = item.node is None
        code = None if pending else item.exit_code()
        running = not pending and code is None and item.alive()
        if pending:
            message = item.message
        elif item.disrupted:
            message = item.disrupted
        elif code is not None and code != 0:
            message = item.message or f"exit code {code}"
            if code == UNKNOWN_EXIT and item.child is not None and item.child.adopted:
                message = "ended while the control plane was down (exit code unknown)"
        else:
            message = ""
        # the command's own PID (what a user would signal), once the launcher has said it
        pid = None
        if item.child is not None:
            command_pid = item.child.launcher_state().get("pid")
            if isinstance(command_pid, int) and command_pid > 0:
                pid = command_pid
        return WorkerStatus(
            id=item.id,
            job=spec.job,
            attempt=spec.attempt,
            rank=spec.rank,
            running=running,
            exit_code=code,
            started_at=item.started_at or item.created,
            finished_at=(item.child.finished_at if item.child else item.ended_at)
            if code is not None
            else None,
            pid=pid,
            message=message,
            output_dir=item.output_dir,
            pending=pending,
            node=item.node,
            disrupted=item.disrupted,
        )

    async def list_workers(self, job: str) -> list[WorkerStatus]:
        return sorted(
            (
                self._worker_status(i)
                for i in self._items.values()
                if i.role == "worker" and i.owner_name == job and not i.released
            ),
            key=lambda s: (s.attempt, s.rank),
        )

    async def stop_workers(self, job: str) -> None:
        """Let go of the job's workers: SIGTERM now, SIGKILL after their grace period, in
        the background (a new attempt waits for their room; no controller waits)."""
        items = [i for i in self._items.values() if i.role == "worker" and i.owner_name == job]
        for item in items:
            if item.released:
                continue
            item.released = True
            if not item.alive():
                if item.child is not None:
                    await asyncio.to_thread(self.supervisor.stop, item.id, 0.0)
                self._forget(item.id)
                if item.state_file:
                    await asyncio.to_thread(Path(item.state_file).unlink, missing_ok=True)
                continue
            item.phase = "Terminating"
            self._save(item)
            if self._stopping(item):
                continue  # evicted already: one SIGTERM, one grace period
            grace = item.grace
            item.tasks.append(
                asyncio.create_task(self._terminate(item, grace), name=f"stop-{item.id}")
            )
        if items:
            self.on_pending()

    def log_files(self, kind: str, name: str) -> list[Path]:
        folder = self.supervisor.log_dir / f"{kind.lower()}s" / name
        if not folder.is_dir():
            return []
        return sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)

    def remove_logs(self, kind: str, name: str) -> None:
        folder = self.supervisor.log_dir / f"{kind.lower()}s" / name
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    async def stop_everything(self) -> None:
        with contextlib.suppress(Exception):
            await self.close()


async def _gone(child: Child, within: float) -> bool:
    """Whether ``child`` ended within ``within`` seconds (polled every 50 ms)."""
    for _ in range(max(1, int(within / 0.05))):
        if child.poll() is not None:
            return True
        await asyncio.sleep(0.05)
    return child.poll() is not None


def _prepare_worker(folders: list[Path], log_path: Path, banner: str) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write(banner + "\n")


def _quantities(r: Requests) -> dict[str, Any]:
    return {"cpu": format_cpu_millis(r.cpu), "memory": _readable_bytes(r.memory), "gpu": r.gpu}


def _readable_bytes(amount: int) -> str:
    """Memory as a person reads it: exact when it is a whole Gi/Mi, else rounded
    (``23.5Gi``, ``191Mi``) — the machine's MemTotal is rarely a round number."""
    gib, mib = 2**30, 2**20
    if amount % mib == 0 or amount < mib:
        return format_bytes(amount)
    if amount >= gib:
        return f"{amount / gib:.1f}Gi"
    return f"{round(amount / mib)}Mi"


def _free_port(host: str) -> int:
    """A port free on ``host`` now (rank 0 binds it moments later, as torchrun's does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cannot_start(program: str, cwd: str | None, path: str) -> str | None:
    """Why ``program`` cannot be started from ``cwd``, or None (checked before launching, so
    the job says "command not found" instead of a launcher's exit code)."""
    if cwd is not None and not Path(cwd).is_dir():
        return f"working directory does not exist: {cwd}"
    if "/" in program:
        target = Path(program) if Path(program).is_absolute() else Path(cwd or ".") / program
        if not target.is_file():
            return f"command not found: {program}"
        if not os.access(target, os.X_OK):
            return f"command is not executable: {program}"
        return None
    if shutil.which(program, path=path) is None:
        return f"command not found: {program}"
    return None
