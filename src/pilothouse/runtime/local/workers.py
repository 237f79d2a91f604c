"""Starting training workers: a gang's torchrun environment, folders and launcher.

A gang (one attempt of a job) starts once all its workers are placed. Each worker gets the
torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...), the
GPUs it was given (CUDA_VISIBLE_DEVICES), an output folder per attempt and a checkpoint
folder that survives attempts; it runs under a small launcher (``launch.py``) that records
its command's PID and exit code in a state file. A command that cannot start is said so in
words ("command not found") before anything is launched. The runtime does the bookkeeping
around these (items, records, watching the process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from pilothouse.runtime.local.env import child_env
from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.supervisor import Child, Supervisor

#: runs a worker's command and records its PID and exit code (``launch.py``)
LAUNCHER = Path(__file__).with_name("launch.py")


def output_dir(home: Path, job: str, attempt: int, incarnation: str = "") -> Path:
    """Where an attempt of a job writes its output (a job applied again is another)."""
    folder = f"{job}-{incarnation[:8]}" if incarnation else job
    return home / "outputs" / folder / f"attempt-{attempt}"


def checkpoint_dir(home: Path, job: str, checkpoint_id: str) -> Path:
    """Where a job's checkpoints are kept across its attempts."""
    return home / "checkpoints" / (f"{job}-{checkpoint_id[:8]}" if checkpoint_id else job)


def gang_env(
    members: list[Item], home: Path, master: str, master_port: int
) -> list[dict[str, str]]:
    """Each member's environment (members in rank order, all placed): its rank, its node's
    GPUs and the address of rank 0 (MASTER_ADDR:MASTER_PORT) the ranks rendezvous at, as
    torchrun sets them, with the platform's PILOTHOUSE_* folders and settings."""
    node_order: list[str] = []
    for m in members:
        if m.node not in node_order and m.node is not None:
            node_order.append(m.node)
    envs = []
    for m in members:
        spec = m.worker
        assert spec is not None
        assert m.node is not None
        same_node = [x for x in members if x.node == m.node]
        envs.append(
            {
                **spec.env,
                "PILOTHOUSE_JOB": spec.job,
                "PILOTHOUSE_ATTEMPT": str(spec.attempt),
                "PILOTHOUSE_OUTPUT_DIR": m.output_dir,
                "PILOTHOUSE_NODE": m.node,
                "PILOTHOUSE_CHECKPOINT_DIR": str(
                    checkpoint_dir(home, spec.job, spec.checkpoint_id)
                ),
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
        )
    return envs


async def launch_worker(
    item: Item, extra_env: dict[str, str], supervisor: Supervisor, run_dir: Path
) -> tuple[Child, Path] | str:
    """Start a placed worker under the launcher (its state file in ``run_dir``): its
    process and state file, or why it could not start (written to its log too). Its
    output and checkpoint folders are made first, and its log is headed with the attempt."""
    spec = item.worker
    assert spec is not None
    log_name = f"trainingjobs/{spec.job}/worker-{spec.rank}.log"
    log_path = supervisor.log_dir / log_name
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
    state_file = run_dir / f"{item.id}.json"
    if problem is None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.unlink(missing_ok=True)
        try:
            child = await asyncio.to_thread(
                supervisor.spawn,
                item.id,
                owner_kind="TrainingJob",
                owner_name=spec.job,
                role="worker",
                argv=[sys.executable, "-I", str(LAUNCHER), str(state_file), "--", *spec.command],
                env=env,
                cwd=cwd,
                log_name=log_name,
                extra={"attempt": spec.attempt, "rank": spec.rank},
                state_file=str(state_file),
                hold_signals=True,
            )
        except OSError as exc:
            problem = _start_failure(exc, spec.command[0], cwd)
        else:
            return child, state_file
    reason = problem or "cannot start"
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write(f"--- pilothouse: {reason}\n")
    return reason


def free_port(host: str) -> int:
    """A port free on ``host`` now (rank 0 binds it moments later, as torchrun's does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _prepare_worker(folders: list[Path], log_path: Path, banner: str) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write(banner + "\n")


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


def _start_failure(exc: OSError, program: str, cwd: str | None) -> str:
    """Why a worker could not start, in words a user can act on."""
    if cwd is not None and not Path(cwd).is_dir():
        return f"working directory does not exist: {cwd}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program}"
    return f"cannot start {program!r}: {exc.strerror or exc}"
