"""The operator process: leader election, then the controllers over the Kubernetes backend.

Several replicas run; the one holding the ``Lease`` ``pilothouse-operator`` acts, the
others wait. A leader that cannot renew its lease stops acting and exits (its pod is
restarted and waits as a follower), as controller-runtime's managers do: two operators
never both write. ``/healthz`` answers while the process lives; ``/readyz`` once it leads
with its caches synced, or waits as a follower.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from pilothouse.controllers.base import Context
from pilothouse.controllers.manager import Manager
from pilothouse.runtime.kube.backend import KIND, KubeBackend
from pilothouse.runtime.kube.client import cancel_and_wait, connect
from pilothouse.runtime.kube.leader import LeaderElector
from pilothouse.runtime.kube.objects import PodDefaults

log = logging.getLogger("pilothouse.operator")
LEASE = "pilothouse-operator"


@dataclass(frozen=True)
class OperatorOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    defaults: PodDefaults = field(default_factory=PodDefaults)
    health_host: str = "0.0.0.0"
    health_port: int = 8090
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = ""


class _Health:
    """A tiny HTTP/1.1 answerer for kubelet's probes (no dependency, no routing)."""

    def __init__(self) -> None:
        self.ready = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b"/"
            ok = path == b"/healthz" or (path == b"/readyz" and self.ready)
            body = b"ok\n" if ok else b"not ready\n"
            status = (
                b"200 OK"
                if ok
                else (b"503 Service Unavailable" if path == b"/readyz" else b"404 Not Found")
            )
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: text/plain\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


async def run_operator(options: OperatorOptions) -> int:
    """Run until SIGTERM/SIGINT (0) or until leadership is lost (1)."""
    kube = await connect(options.kubeconfig, options.context, options.namespace)
    namespace = options.namespace or kube.namespace
    identity = (
        options.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    )
    health = _Health()
    server = await asyncio.start_server(health.handle, options.health_host, options.health_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = LeaderElector(
        kube,
        namespace,
        LEASE,
        identity,
        lease_duration=options.lease_duration,
        renew_deadline=options.renew_deadline,
        retry_period=options.retry_period,
    )

    async def lead() -> None:
        log.info("%s leads in namespace %s", identity, namespace)
        backend = KubeBackend(kube, namespace, options.defaults, identity=identity)
        ctx = Context(backend.state, backend.workload, backend.dataplane, time.time)
        manager = Manager(ctx, kinds=(KIND,))
        backend.on_change(manager.trigger)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await backend.start()
            health.ready = True
            log.info("caches synced: %d ModelDeployment(s)", len(backend.owners.list()))
            tasks.append(asyncio.create_task(manager.run(), name="manager"))
            tasks.append(asyncio.create_task(stop.wait(), name="stop"))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # stopped, or the lease lost (lead() cancelled): nothing of this leader may
            # act any more, so the reconciles end before the caches go
            manager.stop()
            await cancel_and_wait(*tasks)
            health.ready = False
            await backend.close(flush=elector.is_leader)

    log.info("%s waits for the lease %s/%s", identity, namespace, LEASE)
    health.ready = True  # a follower is ready: it does what it should (wait)
    election = asyncio.create_task(elector.run(lead), name="election")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({election, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            if not elector.is_leader:
                await cancel_and_wait(election)  # a follower has nothing to hand over
            else:
                # lead() sees the stop and returns; the elector then releases the lease
                done, _ = await asyncio.wait({election}, timeout=15)
                if not done:
                    await cancel_and_wait(election)
            return 0
        # the election ended without a stop: leadership was lost
        log.error(
            "%s lost the lease %s/%s; exiting so that a fresh process waits as a follower",
            identity,
            namespace,
            LEASE,
        )
        return 1
    finally:
        stopper.cancel()
        server.close()
        await kube.close()
