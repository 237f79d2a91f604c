"""LocalRuntime: the runtime port implemented with local processes.

Replicas are ``pilothouse serve`` processes, each given an already-bound
listening socket on 127.0.0.1 (no port races), probed over HTTP for readiness,
and put behind the embedded router only while ready. Training workers are the
job's own command with the torchrun-style environment and an output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pilothouse.router.metrics import LATENCY_BOUNDS
from pilothouse.router.proxy import Backend, Router, TrafficPolicy
from pilothouse.runtime.local.supervisor import Child, Supervisor
from pilothouse.runtime.port import (
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    ReplicaSpec,
    ReplicaStatus,
    Responses,
    ResponseSample,
    Traffic,
    WorkerSpec,
    WorkerStatus,
)
from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.runtime.local")


@dataclass
class _Replica:
    spec: ReplicaSpec
    child: Child
    host: str
    port: int
    ready: bool = False
    ever_ready: bool = False
    failures: int = 0
    message: str = "starting"
    probe: asyncio.Task[None] | None = None


@dataclass
class _Worker:
    spec: WorkerSpec
    child: Child | None
    started_at: float
    output_dir: str
    failed_to_start: str = ""
    finished_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """The platform's environment with its own Python first on PATH, plus ``extra``."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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
    def __init__(self, store: Store, home: Path, router: Router, host: str = "127.0.0.1") -> None:
        self.home = home
        self.host = host
        self.router = router
        self.supervisor = Supervisor(store, home / "logs")
        self._replicas: dict[str, _Replica] = {}
        self._workers: dict[str, _Worker] = {}
        self._http = httpx.AsyncClient(timeout=2.0)
        self._cpu_seen: dict[str, tuple[int, float]] = {}
        self._cpu_history: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self._cpu_task: asyncio.Task[None] | None = None

    async def start(self) -> list[str]:
        """Stop what a crashed predecessor left running; returns their ids."""
        stopped = await asyncio.to_thread(self.supervisor.reap_orphans)
        self._cpu_task = asyncio.create_task(self._sample_cpu(), name="cpu-sampler")
        return [r["id"] for r in stopped]

    async def close(self) -> None:
        if self._cpu_task is not None:
            self._cpu_task.cancel()
        for replica in self._replicas.values():
            if replica.probe:
                replica.probe.cancel()
        await asyncio.to_thread(self.supervisor.stop_all)
        await self.router.close()
        await self._http.aclose()

    # -- replicas -------------------------------------------------------------------

    async def start_replica(self, spec: ReplicaSpec) -> str:
        replica_id = f"{spec.deployment}-{spec.revision}-{uuid.uuid4().hex[:4]}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            sock.listen(1024)
            sock.set_inheritable(True)
            port = sock.getsockname()[1]
            argv = [
                sys.executable,
                "-m",
                "pilothouse",
                "serve",
                "--model-dir",
                spec.model_dir,
                "--name",
                spec.model_name,
                "--fd",
                str(sock.fileno()),
                "--max-batch-size",
                str(spec.max_batch_size),
                "--max-batch-delay",
                str(spec.max_batch_delay),
            ]
            child = await asyncio.to_thread(
                self.supervisor.spawn,
                replica_id,
                owner_kind="ModelDeployment",
                owner_name=spec.deployment,
                role="replica",
                argv=argv,
                env=_child_env({"PILOTHOUSE_REPLICA_ID": replica_id}),
                cwd=None,
                log_name=f"modeldeployments/{spec.deployment}/{replica_id}.log",
                pass_fds=(sock.fileno(),),
                extra={"endpoint": f"{self.host}:{port}", "revision": spec.revision},
            )
        finally:
            sock.close()
        replica = _Replica(spec=spec, child=child, host=self.host, port=port)
        replica.probe = asyncio.create_task(self._probe(replica), name=f"probe-{replica_id}")
        self._replicas[replica_id] = replica
        log.info("started replica %s on %s:%d", replica_id, self.host, port)
        return replica_id

    async def _probe(self, replica: _Replica) -> None:
        spec = replica.spec
        url = f"http://{replica.host}:{replica.port}{spec.readiness_path}"
        while replica.child.poll() is None:
            try:
                response = await self._http.get(url, timeout=spec.probe_timeout)
                ok = response.status_code == 200
                detail = "" if ok else response.text[:200]
            except httpx.HTTPError as exc:
                ok, detail = False, type(exc).__name__
            if ok:
                replica.ready, replica.failures, replica.message = True, 0, "ready"
                replica.ever_ready = True
            else:
                replica.failures += 1
                if replica.ready and replica.failures >= spec.failure_threshold:
                    replica.ready = False
                replica.message = f"readiness probe failed: {detail}"
            await asyncio.sleep(
                spec.probe_period if replica.ready else min(0.25, spec.probe_period)
            )
        replica.ready = False
        replica.message = f"exited with code {replica.child.exit_code}"

    async def stop_replica(self, replica_id: str) -> None:
        replica = self._replicas.pop(replica_id, None)
        if replica is None:
            return
        replica.ready = False
        if replica.probe:
            replica.probe.cancel()
        # No new requests first; the replica then drains and finishes what it has.
        self.router.remove_backend(replica.spec.deployment, replica_id)
        await asyncio.to_thread(self.supervisor.stop, replica_id)

    async def list_replicas(self, deployment: str) -> list[ReplicaStatus]:
        out = []
        for replica_id, r in self._replicas.items():
            if r.spec.deployment != deployment:
                continue
            code = r.child.poll()
            out.append(
                ReplicaStatus(
                    id=replica_id,
                    revision=r.spec.revision,
                    ready=r.ready and code is None,
                    exited=code is not None,
                    started_at=r.child.started_at,
                    endpoint=f"{r.host}:{r.port}",
                    pid=r.child.popen.pid,
                    exit_code=code,
                    exited_at=r.child.finished_at,
                    message=r.message,
                    ever_ready=r.ever_ready,
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
            replica = self._replicas.get(status.id)
            if replica is not None:
                backends.append(
                    Backend(
                        status.id,
                        replica.host,
                        replica.port,
                        status.revision,
                        replica.spec.readiness_path,
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

    async def _sample_cpu(self) -> None:
        """Once a second: cores used by each revision's replicas during that second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for deployment in {r.spec.deployment for r in self._replicas.values()}:
                history = self._cpu_history.setdefault(deployment, deque(maxlen=180))
                history.append((now, self._cpu_by_revision(deployment)))

    def _cpu_by_revision(self, deployment: str) -> dict[str, float]:
        """Cores each revision's replicas used since the previous call (from /proc)."""
        now = time.monotonic()
        totals: dict[str, float] = {}
        for replica in self._replicas.values():
            if replica.spec.deployment != deployment or replica.child.poll() is not None:
                continue
            ticks = _cpu_ticks(replica.child.popen.pid)
            if ticks is None:
                continue
            previous = self._cpu_seen.get(replica.child.id)
            self._cpu_seen[replica.child.id] = (ticks, now)
            if previous is None or now <= previous[1]:
                continue
            cores = (ticks - previous[0]) / _CLOCK_TICKS / (now - previous[1])
            totals[replica.spec.revision] = totals.get(replica.spec.revision, 0.0) + cores
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
            (r.host, r.port)
            for r in self._replicas.values()
            if r.spec.deployment == deployment
            and r.spec.revision == revision
            and r.ready
            and r.child.poll() is None
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

    def output_dir(self, job: str, attempt: int) -> Path:
        return self.home / "outputs" / job / f"attempt-{attempt}"

    async def start_worker(self, spec: WorkerSpec) -> WorkerStatus:
        worker_id = f"{spec.job}-a{spec.attempt}-r{spec.rank}"
        output = self.output_dir(spec.job, spec.attempt)
        output.mkdir(parents=True, exist_ok=True)
        env = _child_env(
            {
                **spec.env,
                "PILOTHOUSE_JOB": spec.job,
                "PILOTHOUSE_ATTEMPT": str(spec.attempt),
                "PILOTHOUSE_OUTPUT_DIR": str(output),
                "RANK": str(spec.rank),
                "LOCAL_RANK": str(spec.rank),
                "WORLD_SIZE": str(spec.world_size),
                "MASTER_ADDR": "127.0.0.1",
            }
        )
        log_name = f"trainingjobs/{spec.job}/worker-{spec.rank}.log"
        log_path = self.supervisor.log_dir / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- pilothouse: attempt {spec.attempt} of {spec.job} at {stamp}\n")
        cwd = spec.working_dir
        try:
            child = await asyncio.to_thread(
                self.supervisor.spawn,
                worker_id,
                owner_kind="TrainingJob",
                owner_name=spec.job,
                role="worker",
                argv=spec.command,
                env=env,
                cwd=cwd,
                log_name=log_name,
                extra={"attempt": spec.attempt, "rank": spec.rank},
            )
        except OSError as exc:
            reason = _start_failure(exc, spec.command[0], cwd)
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(f"--- pilothouse: {reason}\n")
            worker = _Worker(spec, None, time.time(), str(output), failed_to_start=reason)
            worker.finished_at = worker.started_at
            self._workers[worker_id] = worker
            return self._worker_status(worker_id, worker)
        worker = _Worker(spec, child, child.started_at, str(output))
        self._workers[worker_id] = worker
        return self._worker_status(worker_id, worker)

    def _worker_status(self, worker_id: str, worker: _Worker) -> WorkerStatus:
        if worker.child is None:
            return WorkerStatus(
                id=worker_id,
                job=worker.spec.job,
                attempt=worker.spec.attempt,
                rank=worker.spec.rank,
                running=False,
                exit_code=127,
                started_at=worker.started_at,
                finished_at=worker.finished_at,
                message=worker.failed_to_start,
                output_dir=worker.output_dir,
            )
        code = worker.child.poll()
        return WorkerStatus(
            id=worker_id,
            job=worker.spec.job,
            attempt=worker.spec.attempt,
            rank=worker.spec.rank,
            running=code is None,
            exit_code=code,
            started_at=worker.started_at,
            finished_at=worker.child.finished_at,
            pid=worker.child.popen.pid,
            message="" if code in (None, 0) else f"exit code {code}",
            output_dir=worker.output_dir,
        )

    async def list_workers(self, job: str) -> list[WorkerStatus]:
        return sorted(
            (self._worker_status(wid, w) for wid, w in self._workers.items() if w.spec.job == job),
            key=lambda s: (s.attempt, s.rank),
        )

    async def stop_workers(self, job: str) -> None:
        for worker_id in [wid for wid, w in self._workers.items() if w.spec.job == job]:
            worker = self._workers.pop(worker_id)
            if worker.child is not None:
                await asyncio.to_thread(self.supervisor.stop, worker_id)

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
