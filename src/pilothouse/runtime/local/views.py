"""How the runtime shows an item to others, one view per reader.

* the local scheduler sees a :class:`Placement` (what it asks for, where it is bound);
* ``LocalWorkload`` sees a :class:`ReplicaStatus` or :class:`WorkerStatus` (and turns them
  into the workload port's revisions and gangs);
* people and tests on this machine see a pod (``kubectl get pods -o wide``).

All are read off an :class:`Item` and change nothing, so they live apart from the engine.
"""

from __future__ import annotations

from typing import Any

from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.pods import Placement, ReplicaStatus, WorkerStatus
from pilothouse.runtime.local.supervisor import UNKNOWN_EXIT


def placement(item: Item) -> Placement:
    """The item as the scheduler places it: requests, gang, queue, priority, binding."""
    spec = item.worker
    return Placement(
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
        priority=spec.priority if spec else (item.replica.priority if item.replica else 0),
        queue_priority=spec.queue_priority if spec else 0,
        preemptible=spec is not None,
        spread=spec is None,
    )


def replica_status(item: Item) -> ReplicaStatus:
    """A replica's status for its deployment's loop (ready, exited, pending, ...)."""
    code = item.exit_code()
    pending = item.node is None
    exited = not pending and (code is not None or item.doomed or not item.alive())
    return ReplicaStatus(
        id=item.id,
        revision=item.replica.revision if item.replica else "",
        ready=item.ready and not exited and not pending,
        exited=exited,
        started_at=item.started_at or item.created,
        endpoint=f"{item.host}:{item.port}" if item.port else None,
        pid=item.child.pid if item.child is not None else None,
        exit_code=code,
        exited_at=(item.child.finished_at if item.child else item.ended_at) if exited else None,
        message=item.message,
        ever_ready=item.ever_ready,
        pending=pending,
        node=item.node,
        disrupted=item.disrupted,
    )


def worker_status(item: Item) -> WorkerStatus:
    """A worker's status for its job's gang (running, exit code, why it ended, ...)."""
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


def pod(item: Item) -> dict[str, Any]:
    """The item as ``kubectl get pods -o wide`` shows a pod."""
    shown: dict[str, Any] = {
        "id": item.id,
        "node": item.node,
        "phase": "Terminating" if item.doomed else item.phase,
        "message": item.message,
    }
    ended = item.exit_code() if item.node is not None else None
    if item.doomed and item.alive():
        shown["phase"] = "Terminating"
    elif ended is not None:
        # ended, not yet replaced or let go: as a pod that ended says
        shown["phase"] = "Succeeded" if ended == 0 else "Failed"
    if item.replica is not None:
        status = replica_status(item)
        shown |= {
            "revision": item.replica.revision,
            "ready": status.ready,
            "pid": item.child.pid if item.child is not None else None,
            "endpoint": f"{item.host}:{item.port}" if item.port else None,
            "exitCode": status.exit_code,
        }
    elif item.worker is not None:
        w = worker_status(item)
        shown |= {
            "rank": w.rank,
            "attempt": w.attempt,
            "running": w.running,
            "pending": w.pending,
            "pid": w.pid,
            "exitCode": w.exit_code,
            "message": w.message,
            "outputDir": w.output_dir,
        }
    return shown
