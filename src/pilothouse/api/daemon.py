"""The embedded control plane process: API, controllers, runtime and router in one loop.

Started by ``pilothouse up`` (in the background) or ``pilothouse up
--foreground``. On SIGTERM/SIGINT it stops serving, stops every process it
started, and removes ``daemon.json``. If it dies without that chance, the
next start (or ``pilothouse down``) stops the leftovers recorded in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from pilothouse.api.home import Home
from pilothouse.api.server import create_app, daemon_info
from pilothouse.controllers import scheduler
from pilothouse.controllers.base import Context
from pilothouse.controllers.manager import Manager
from pilothouse.registry.objectstore import open_registry
from pilothouse.router.proxy import Router
from pilothouse.runtime.local.nodes import load_nodes
from pilothouse.runtime.local.runtime import LocalRuntime
from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.daemon")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _until_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """uvicorn exposes only a ``started`` flag; poll it (bounded) before announcing the URL."""
    for _ in range(500):
        if server.started or serving.done():
            return
        await asyncio.sleep(0.02)


async def run(home: Home, host: str = "127.0.0.1", port: int = 0) -> None:
    home.ensure()
    token = home.ensure_token()
    store = Store(home.db)
    registry = open_registry(home.registry_uri, home.model_cache)
    # the data plane (router, replicas) stays on IPv4 loopback unless the API is
    # exposed on an IPv4 address; an IPv6 API address does not move it
    data_host = host if ":" not in host and host != "localhost" else "127.0.0.1"
    router = Router(data_host)
    nodes = load_nodes(home.nodes_file if home.nodes_file.exists() else None, data_host)
    runtime = LocalRuntime(store, home.root, router, data_host, nodes)
    orphans = await runtime.start()
    if orphans:
        log.warning("stopped %d process(es) left by a previous daemon: %s", len(orphans), orphans)
    manager = Manager(Context(store=store, runtime=runtime, registry=registry, clock=time.time))
    # a request held at a deployment scaled to zero wakes its controller at once
    router.on_activate = lambda key: manager.trigger("ModelDeployment", key)
    # something waits for a node, or room was freed: the scheduler looks at once
    runtime.on_pending = lambda: manager.trigger(scheduler.KIND, scheduler.KEY)

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    url = f"http://{shown}:{bound[1]}"
    started = time.time()
    app = create_app(
        store,
        token=token,
        on_change=manager.trigger,
        log_files=runtime.log_files,
        registry=registry,
        nodes=runtime.node_statuses,
        node_view=runtime.node_view,
        node_action=runtime.node_action,
        info=lambda: daemon_info(
            started,
            url,
            store,
            lambda: sum(1 for ch in runtime.supervisor.children.values() if ch.poll() is None),
        ),
    )
    server = _EmbeddedServer(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    )

    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        log.info("shutting down")
        server.should_exit = True
        manager.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)

    controllers = asyncio.create_task(manager.run(), name="controllers")
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="api")
    await _until_started(server, serving)
    home.write_daemon_info({"pid": os.getpid(), "url": url, "startedAt": started})
    log.info("control API on %s (pid %d)", url, os.getpid())
    try:
        await asyncio.wait({controllers, serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)
        controllers.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await controllers
        await runtime.close()
        store.close()
        info = home.read_daemon_info()
        if info and info.get("pid") == os.getpid():
            home.daemon_file.unlink(missing_ok=True)
        log.info("stopped")


LOG_BYTES = 10 * 2**20
LOG_BACKUPS = 3


def main(home: Home, host: str, port: int, log_file: Path | None = None) -> None:
    """Run the daemon; in the background it logs to ``log_file``, rotated at 10 MiB."""
    handler: logging.Handler = (
        logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
        if log_file is not None
        else logging.StreamHandler()
    )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    # one line per readiness probe would grow daemon.log without bound
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the daemon usable
        asyncio.run(run(home, host, port))
    else:
        uvloop.run(run(home, host, port))
