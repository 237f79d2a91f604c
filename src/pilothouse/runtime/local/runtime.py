"""LocalRuntime: the local backend's process engine (what kubelet does for pods).

Replicas and training workers are items placed on nodes (the machine itself, or
virtual nodes from ``nodes.yaml``) by the local scheduler (``scheduler.py``): they wait,
with the scheduler's reason, until it binds them. ``LocalWorkload`` (``workload.py``) turns
the workload port's revisions and gangs into these items. Replicas are ``pilothouse serve``
processes, each given an already-bound listening socket on its node's address (no port
races), probed for readiness and liveness (HTTP or a command, as kubelet does), and put
behind the embedded router only while ready; one that stops answering its liveness probe
is killed and replaced. Training workers start as a gang once all of them are placed, with
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
50 ms. Each serving revision without a GPU keeps one *standby*: a model server that
imported everything ahead of need and becomes the next replica of that revision when one
is started, serving within a few hundred milliseconds instead of seconds;
``standby=False`` or ``$PILOTHOUSE_STANDBY=0`` turns them off.

This module is the engine itself: the items, binding and eviction, starting and stopping
them, and what the end of a process means. Every other concern is a module of its own,
used from here:

* ``items.py``: the item ("pod"), its SQLite record, adopting a previous daemon's items;
* ``exits.py``: noticing at once that a process ended (pidfd), waiting for it to be gone;
* ``node_state.py``: node states, cordon/uncordon/drain/fail, the node view;
* ``replicas.py``: starting a replica's model server (socket, arguments, environment);
* ``probes.py``: readiness and liveness probes;
* ``standbys.py``: standby model servers started ahead of need;
* ``workers.py``: starting a training gang (torchrun environment, folders, launcher);
* ``views.py``: what others see of an item (Placement, ReplicaStatus, WorkerStatus, pod);
* ``measure.py``: load, sampled responses, ``/metrics``, CPU sampling;
* ``env.py``: the explicit environment of every process (:func:`child_env`);
* ``logs.py``: the log size limit, the rotation loop, an object's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pilothouse.ports.dataplane import DeploymentLoad, Responses
from pilothouse.router.proxy import Backend, Router, TrafficPolicy
from pilothouse.runtime.local import logs, measure, node_state, views, workers
from pilothouse.runtime.local.env import child_env
from pilothouse.runtime.local.exits import gone, unwatch_exit, watch_exit
from pilothouse.runtime.local.items import Item, adopt_items
from pilothouse.runtime.local.node_state import Node
from pilothouse.runtime.local.nodes import NodeSpec, machine_node
from pilothouse.runtime.local.pods import (
    Bind,
    NodeStatus,
    Placement,
    ReplicaSpec,
    ReplicaStatus,
    WorkerSpec,
    WorkerStatus,
)
from pilothouse.runtime.local.probes import Prober
from pilothouse.runtime.local.replicas import launch_replica, model_args
from pilothouse.runtime.local.standbys import Standbys
from pilothouse.runtime.local.supervisor import Supervisor
from pilothouse.runtime.local.workers import LAUNCHER
from pilothouse.store.sqlite import Store

# LAUNCHER and child_env are used from here by tests and other modules
__all__ = ["LAUNCHER", "LocalRuntime", "child_env"]

log = logging.getLogger("pilothouse.runtime.local")


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
        registry_uri: str = "",
        model_cache: Path | None = None,
    ) -> None:
        """``log_max_bytes``: each process's log is rotated once it is larger (None:
        ``$PILOTHOUSE_LOG_MAX_BYTES``, else 10 MiB), checked every ``log_check_every`` s.
        ``standby``: keep a model server ready to replace a replica of each serving
        revision without a GPU (None: unless ``$PILOTHOUSE_STANDBY`` is 0)."""
        self.home = home
        self.host = host
        #: where replicas fetch their model version from (and cache remote ones)
        self.registry_uri = registry_uri or str(home / "registry")
        self.model_cache = model_cache or home / "cache" / "models"
        self.router = router
        self.store = store
        self.supervisor = Supervisor(store, home / "logs", logs.log_max_bytes(log_max_bytes))
        self.log_check_every = log_check_every
        if standby is None:
            standby = os.environ.get("PILOTHOUSE_STANDBY", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        specs = nodes if nodes else [machine_node(host)]
        states = store.node_states()
        self._nodes: dict[str, Node] = {n.name: Node(n, states.get(n.name, "Ready")) for n in specs}
        self._items: dict[str, Item] = {}
        self._http = httpx.AsyncClient(timeout=2.0)
        self._standbys = Standbys(
            self.supervisor, self._items.values, self._model_args, enabled=standby
        )
        self._probes = Prober(
            self._http,
            readiness_changed=self._readiness_changed,
            save=self._save,
            unresponsive=self._unresponsive,
        )
        self._cpu = measure.CpuSampler(self._running_replicas)
        self._cpu_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._standby_task: asyncio.Task[None] | None = None
        #: called when something waits for a node (the scheduler should look)
        self.on_pending: Callable[[], None] = lambda: None
        #: called with (owner kind, owner name) when one of its processes ended, or one of
        #: its replicas turned ready or unready (its controller should look now)
        self.on_change: Callable[[str, str], None] = lambda kind, name: None

    @property
    def standby(self) -> bool:
        """Whether serving revisions get standby model servers (``standbys.py``)."""
        return self._standbys.enabled

    @standby.setter
    def standby(self, enabled: bool) -> None:
        self._standbys.enabled = enabled

    async def start(self) -> list[str]:
        """Adopt what a previous daemon left running (re-attach its replicas and workers);
        stop processes nobody knows about. Returns the ids of the stopped ones."""
        items, adopted = await asyncio.to_thread(adopt_items, self.store, self.supervisor)
        self._items.update((item.id, item) for item in items)
        if adopted:
            log.info("adopted %d process(es) of a previous daemon: %s", len(adopted), adopted)
        stopped = await asyncio.to_thread(self.supervisor.reap_orphans)
        for item in list(self._items.values()):
            if item.released and not item.alive():
                # let go of before the previous daemon died, and ended meanwhile
                await self._let_go(item)
                continue
            if not item.alive() or item.child is None:
                continue
            watch_exit(item, self._exited)
            if item.doomed or item.released:
                # it was being stopped when the previous daemon died: finish that
                item.tasks.append(
                    asyncio.create_task(self._terminate(item, item.grace), name=f"stop-{item.id}")
                )
            elif item.role == "replica":
                self._probes.watch(item)
        self._cpu_task = asyncio.create_task(self._cpu.run(), name="cpu-sampler")
        self._log_task = asyncio.create_task(
            logs.rotate_logs(self.supervisor, self.log_check_every), name="log-rotation"
        )
        self._standby_task = asyncio.create_task(self._standbys.keep(), name="standbys")
        return [r["id"] for r in stopped]

    def _exited(self, item: Item) -> None:
        """The item's process ended: no more traffic to it, and its owner is told now."""
        unwatch_exit(item)
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

    async def close(self) -> None:
        for task in (self._cpu_task, self._log_task, self._standby_task):
            if task is not None:
                task.cancel()
        self._standbys.close()  # stop_all below ends their processes
        for item in self._items.values():
            unwatch_exit(item)
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

    def _save(self, item: Item) -> None:
        self.store.put_placement(item.record())

    def _forget(self, item_id: str) -> None:
        item = self._items.pop(item_id, None)
        if item is not None:
            unwatch_exit(item)
            for task in item.tasks:
                task.cancel()
        self.store.delete_placement(item_id)

    # -- scheduling ----------------------------------------------------------------------

    async def nodes(self) -> list[NodeStatus]:
        return self.node_statuses()

    def node_statuses(self) -> list[NodeStatus]:
        return [n.status() for n in self._nodes.values()]

    async def placements(self) -> list[Placement]:
        """What waits for a node, and what holds room on one."""
        out = []
        for item in self._items.values():
            if item.node is None and item.released:
                continue
            if item.node is not None and not item.alive():
                continue
            out.append(views.placement(item))
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

    async def _terminate(self, item: Item, grace: float) -> None:
        """SIGTERM (and SIGCONT: a stopped process must run to handle it), SIGKILL after
        ``grace``; forget the item once it is gone if its owner let go of it already."""
        if item.child is not None:
            self.supervisor.signal(item.id, signal.SIGTERM)
            self.supervisor.signal(item.id, signal.SIGCONT)
            if not await gone(item.child, grace):
                self.supervisor.kill(item.id)
                await gone(item.child, 3600.0)
        if item.released and self._items.get(item.id) is item:
            await self._let_go(item)
        self.on_pending()  # its room is free

    # -- nodes -----------------------------------------------------------------------------

    def node_view(self) -> dict[str, Any]:
        """Every node with capacity, allocated, free and what runs on it; and what waits."""
        return node_state.node_view(self._nodes.values(), list(self._items.values()))

    async def node_action(self, name: str, action: str) -> str:
        """cordon | uncordon | drain | fail; KeyError: no such node; ValueError: not now."""
        node = self._nodes.get(name)
        if node is None:
            known = ", ".join(sorted(self._nodes))
            raise KeyError(f"node {name!r} not found; nodes: {known}")
        on_node = [i for i in self._items.values() if i.node == name and i.alive() and not i.doomed]
        message, effect = node_state.node_transition(node, action, [i.id for i in on_node])
        if effect == "drain":
            await self.evict([i.id for i in on_node], f"node {name} drained")
        elif effect == "fail":
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
        self.store.set_node_state(name, node.state)
        self.on_pending()
        return message

    # -- replicas -------------------------------------------------------------------------

    async def start_replica(self, spec: ReplicaSpec) -> str:
        replica_id = f"{spec.deployment}-{spec.revision}-{uuid.uuid4().hex[:4]}"
        item = Item(
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

    async def _spawn_replica(self, item: Item) -> None:
        spec = item.replica
        assert spec is not None
        assert item.node is not None
        node = self._nodes[item.node]
        host = node.spec.address
        started = await launch_replica(
            item, host, node.spec.name, self._model_args(spec), self.supervisor, self._standbys
        )
        if isinstance(started, str):
            item.ended_code, item.message = 127, started
            item.ended_at = time.time()
            self._save(item)
            return
        child, port = started
        item.child, item.host, item.port = child, host, port
        item.started_at, item.phase = child.started_at, "Running"
        watch_exit(item, self._exited)
        if item.doomed or item.released:
            # evicted (drain, lost node) while it was being started: stop it now
            self._save(item)
            item.tasks.append(
                asyncio.create_task(self._terminate(item, spec.grace), name=f"stop-{item.id}")
            )
            return
        item.message = "starting"
        self._save(item)
        self._probes.watch(item)
        log.info(
            "started replica %s on %s (%s:%d)%s",
            item.id,
            node.spec.name,
            host,
            port,
            " from a standby" if child.record.get("fromStandby") else "",
        )

    def _model_args(self, spec: ReplicaSpec) -> list[str]:
        return model_args(spec, self.registry_uri, self.model_cache)

    def _readiness_changed(self, item: Item) -> None:
        """A replica turned ready or unready: its controller looks now; a revision that
        serves may want a standby."""
        self.on_change(item.owner_kind, item.owner_name)
        if item.ready:
            self._standbys.wake()

    def _unresponsive(self, item: Item, message: str) -> None:
        """Its liveness probe failed too often: out of the router, killed and replaced."""
        item.doomed, item.ready, item.phase = True, False, "Terminating"
        item.message = message
        self._save(item)
        self.router.remove_backend(item.owner_name, item.id)
        log.warning("replica %s: %s", item.id, item.message)
        grace = item.grace
        item.tasks.append(asyncio.create_task(self._terminate(item, grace), name=f"kill-{item.id}"))

    @staticmethod
    def _stopping(item: Item) -> bool:
        """A task already terminates its process (eviction, liveness, lost node, stop)."""
        return any(
            t.get_name().startswith(("evict-", "kill-", "lost-", "stop-")) and not t.done()
            for t in item.tasks
        )

    async def stop_replica(self, replica_id: str) -> None:
        """Let go of a replica: out of the router first (it finishes what it has), then
        SIGTERM, and SIGKILL after its grace period, in the background (no caller waits)."""
        item = self._items.get(replica_id)
        if item is None or item.released:
            return
        item.ready = False
        self.router.remove_backend(item.owner_name, replica_id)
        if item.node is None:
            self._forget(replica_id)
            self.on_pending()
            return
        item.released, item.phase = True, "Terminating"
        self._save(item)
        if not item.alive():
            await self._let_go(item)
            self.on_pending()
            return
        if not self._stopping(item):
            grace = item.grace
            item.tasks.append(
                asyncio.create_task(self._terminate(item, grace), name=f"stop-{item.id}")
            )

    async def _let_go(self, item: Item) -> None:
        """Forget an item whose process is gone: its record, its room, its state file."""
        unwatch_exit(item)
        for task in item.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.to_thread(self.supervisor.stop, item.id, 0.0)
        self._items.pop(item.id, None)
        self._cpu.forget(item.id)
        self.store.delete_placement(item.id)
        if item.state_file:
            await asyncio.to_thread(Path(item.state_file).unlink, missing_ok=True)

    def running_count(self, kind: str, name: str) -> int:
        """Processes of an owner that still run (those being stopped included)."""
        return sum(
            1
            for i in self._items.values()
            if i.owner_kind == kind and i.owner_name == name and i.node is not None and i.alive()
        )

    async def list_replicas(self, deployment: str) -> list[ReplicaStatus]:
        return sorted(
            (
                views.replica_status(item)
                for item in self._items.values()
                if item.role == "replica" and item.owner_name == deployment and not item.released
            ),
            key=lambda s: s.started_at,
        )

    def set_backends(self, deployment: str, ready: list[ReplicaStatus]) -> None:
        """Route the deployment's endpoint to these ready replicas (its EndpointSlice)."""
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
        self.router.set_backends(deployment, backends)

    async def set_policy(self, deployment: str, policy: TrafficPolicy, port: int = 0) -> str:
        """The deployment's traffic policy; returns its endpoint URL (``port``: keep it)."""
        url = await self.router.ensure_route(deployment, port)
        self.router.set_policy(deployment, policy)
        return url

    async def remove_traffic(self, deployment: str) -> None:
        await self.router.remove(deployment)

    # -- measurements (measure.py) ------------------------------------------------------

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        route = self.router.route(deployment)
        if route is None:
            return DeploymentLoad({})
        return measure.deployment_load(route, self._cpu.history(deployment), since)

    async def responses(self, deployment: str, since: float) -> Responses:
        route = self.router.route(deployment)
        if route is None:
            return Responses()
        return measure.route_responses(route, since)

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        """The ``/metrics`` of the revision's ready replicas."""
        return await measure.scrape_metrics(
            [
                (i.host, i.port)
                for i in self._running_replicas(deployment)
                if i.replica is not None and i.replica.revision == revision and i.ready
            ]
        )

    def _running_replicas(self, deployment: str | None = None) -> list[Item]:
        return [
            i
            for i in self._items.values()
            if i.role == "replica"
            and i.replica is not None
            and i.child is not None
            and (deployment is None or i.owner_name == deployment)
            and i.child.poll() is None
        ]

    # -- training workers ------------------------------------------------------------

    def output_dir(self, job: str, attempt: int, incarnation: str = "") -> Path:
        return workers.output_dir(self.home, job, attempt, incarnation)

    def checkpoint_dir(self, job: str, checkpoint_id: str) -> Path:
        return workers.checkpoint_dir(self.home, job, checkpoint_id)

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
            item = Item(
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

    async def _spawn_gang(self, members: list[Item]) -> None:
        """Start a placed gang (members in rank order), rank 0's node the address the ranks
        rendezvous at (see ``workers.gang_env``)."""
        first = members[0]
        assert first.worker is not None
        assert first.node is not None
        master = self._nodes[first.node].spec.address
        master_port = await asyncio.to_thread(workers.free_port, master)
        envs = workers.gang_env(members, self.home, master, master_port)
        for member, env in zip(members, envs, strict=True):
            await self._spawn_worker(member, env)

    async def _spawn_worker(self, item: Item, extra_env: dict[str, str]) -> None:
        spec = item.worker
        assert spec is not None
        started = await workers.launch_worker(item, extra_env, self.supervisor, self.home / "run")
        if isinstance(started, str):
            item.ended_code, item.message, item.ended_at = 127, started, time.time()
            item.started_at = item.ended_at
            self._save(item)
            return
        child, state_file = started
        item.child, item.state_file = child, str(state_file)
        item.started_at, item.phase, item.message = child.started_at, "Running", ""
        self._save(item)
        watch_exit(item, self._exited)
        if item.doomed or item.released:
            # evicted (drain, lost node) while it was being started: stop it now
            item.tasks.append(
                asyncio.create_task(self._terminate(item, spec.grace), name=f"stop-{item.id}")
            )

    def pods(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The processes of one object, as ``kubectl get pods -o wide`` shows pods: for
        people and tests on this machine (controllers never see them)."""
        return [
            views.pod(item)
            for item in sorted(self._items.values(), key=lambda i: (i.created, i.id))
            if item.owner_kind == kind and item.owner_name == name and not item.released
        ]

    def worker_spec(self, worker_id: str) -> WorkerSpec | None:
        item = self._items.get(worker_id)
        return item.worker if item is not None else None

    async def list_workers(self, job: str) -> list[WorkerStatus]:
        return sorted(
            (
                views.worker_status(i)
                for i in self._items.values()
                if i.role == "worker" and i.owner_name == job and not i.released
            ),
            key=lambda s: (s.attempt, s.rank),
        )

    async def stop_workers(self, job: str, keep_attempt: int | None = None) -> None:
        """Let go of the job's workers (but those of ``keep_attempt``): SIGTERM now, SIGKILL
        after their grace period, in the background (a new attempt waits for their room;
        no caller waits)."""
        items = [
            i
            for i in self._items.values()
            if i.role == "worker"
            and i.owner_name == job
            and (keep_attempt is None or i.worker is None or i.worker.attempt != keep_attempt)
        ]
        for item in items:
            if item.released:
                continue
            item.released = True
            if not item.alive():
                await self._let_go(item)
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

    # -- logs (logs.py) -----------------------------------------------------------------

    def log_files(self, kind: str, name: str) -> list[Path]:
        return logs.log_files(self.supervisor.log_dir, kind, name)

    def remove_logs(self, kind: str, name: str) -> None:
        logs.remove_logs(self.supervisor.log_dir, kind, name)

    async def stop_everything(self) -> None:
        with contextlib.suppress(Exception):
            await self.close()
