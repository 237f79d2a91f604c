"""The embedded backend: the three ports wired to local processes, SQLite and the router.

``LocalBackend`` is what the daemon (and the embedded contract tier) builds: the process
engine (``LocalRuntime``), its scheduler, and the port adapters controllers use. Changes
flow as they would from informers: a process that ends or turns ready reaches
``LocalWorkload.observe`` (which replaces or re-routes at once) and then the owner's
controller (``on_change``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pilothouse.registry.local import BaseRegistry
from pilothouse.router.proxy import Router
from pilothouse.runtime.local.dataplane import LocalDataPlane
from pilothouse.runtime.local.nodes import NodeSpec
from pilothouse.runtime.local.runtime import LocalRuntime
from pilothouse.runtime.local.scheduler import LocalScheduler
from pilothouse.runtime.local.state import SqliteState
from pilothouse.runtime.local.workload import LocalWorkload
from pilothouse.store.sqlite import Store


class LocalBackend:
    def __init__(
        self,
        store: Store,
        registry: BaseRegistry,
        home: Path,
        router: Router,
        host: str = "127.0.0.1",
        nodes: list[NodeSpec] | None = None,
        *,
        registry_uri: str = "",
        model_cache: Path | None = None,
        standby: bool | None = None,
        log_max_bytes: int | None = None,
        log_check_every: float = 2.0,
    ) -> None:
        self.store = store
        self.runtime = LocalRuntime(
            store,
            home,
            router,
            host,
            nodes,
            standby=standby,
            registry_uri=registry_uri,
            model_cache=model_cache,
            log_max_bytes=log_max_bytes,
            log_check_every=log_check_every,
        )
        self.workload = LocalWorkload(self.runtime, store, registry)
        self.dataplane = LocalDataPlane(self.runtime, store)
        self.state = SqliteState(store, registry, on_finalize=self.runtime.remove_logs)
        self.scheduler = LocalScheduler(self.runtime, store, store.record_event)
        self.runtime.on_pending = self.scheduler.wake
        self.runtime.on_change = self.workload.observe
        self.scheduler.on_change = self.workload.observe

    def on_change(self, wake: Callable[[str, str], None]) -> None:
        """Wake an owner's controller when something of it changed."""
        self.workload.on_change = wake

    async def start(self) -> list[str]:
        """Adopt what a previous daemon left running; returns the ids of orphans stopped."""
        stopped = await self.runtime.start()
        self.scheduler.start()
        return stopped

    async def close(self) -> None:
        await self.scheduler.close()
        await self.workload.close()
        await self.runtime.close()
