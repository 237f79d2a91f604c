"""The runtime's item: one replica or training worker ("pod"), and its record in SQLite.

``LocalRuntime`` keeps one :class:`Item` per process it places, starts and stops; every
change that must survive the daemon is written with :meth:`Item.record`, and a daemon
started again reads them back with :func:`adopt_items` (re-attaching the processes that
still run instead of starting duplicates). Kept apart from the runtime so that what an
item *is* (its fields, phases and persisted form) reads in one place.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from pilothouse.runtime.local.pods import ReplicaSpec, Requests, WorkerSpec
from pilothouse.runtime.local.supervisor import UNKNOWN_EXIT, Child, Supervisor
from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.runtime.local")


@dataclass
class Item:
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
    def from_record(cls, r: dict[str, Any]) -> Item:
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


def adopt_items(store: Store, supervisor: Supervisor) -> tuple[list[Item], list[str]]:
    """Every item a previous daemon recorded, with the processes of those still bound
    re-attached (``supervisor.adopt``); and the ids of those whose process still runs.

    A bound item with no recorded process never started: it ends as lost. A record that
    cannot be read is dropped."""
    processes = {r["id"]: r for r in store.processes()}
    items: list[Item] = []
    adopted = []
    for record in store.placements():
        try:
            item = Item.from_record(record)
        except (KeyError, TypeError, ValueError):
            log.warning("dropping an unreadable placement record: %s", record.get("id"))
            store.delete_placement(str(record.get("id")))
            continue
        if item.node is not None and item.ended_code is None:
            proc = processes.get(item.id)
            if proc is None:
                # bound, but no process was recorded: it never started
                item.ended_code = UNKNOWN_EXIT
                item.disrupted = item.disrupted or "lost while the control plane was down"
            else:
                item.child = supervisor.adopt(proc)
                item.ready = False
                if item.role == "replica" and not item.port and proc.get("endpoint"):
                    host, _, port = str(proc["endpoint"]).rpartition(":")
                    item.host, item.port = host, int(port)
                if item.child.poll() is None:
                    adopted.append(item.id)
                    item.message = "adopted; probing" if item.role == "replica" else ""
                elif not item.disrupted and item.role == "replica":
                    item.message = "exited while the control plane was down"
        items.append(item)
    return items, adopted
