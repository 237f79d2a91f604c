"""The embedded control plane process: API, controllers, runtime and router in one loop.

Started by ``pilothouse up`` (in the background) or ``pilothouse up
--foreground``. On SIGTERM/SIGINT it stops serving, stops every process it
started, and removes ``daemon.json``. If it dies without that chance, the
next start (or ``pilothouse down``) stops the leftovers recorded in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import logging.handlers
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from pilothouse.api.home import Home
from pilothouse.api.server import create_app, daemon_info
from pilothouse.controllers.base import Context
from pilothouse.controllers.manager import Manager
from pilothouse.registry.objectstore import open_registry
from pilothouse.router.proxy import Router, RouterLimits
from pilothouse.runtime.local.backend import LocalBackend
from pilothouse.runtime.local.nodes import load_nodes
from pilothouse.serving.connections import ConnectionLimits, timed_protocol
from pilothouse.store.sqlite import SchemaError, Store

log = logging.getLogger("pilothouse.daemon")

#: files the daemon creates (database, logs, daemon.json) are its owner's only
UMASK = 0o077
#: a connection to the control API must finish its request head this long after it
#: opened (or after its previous response): idle or trickling connections are closed
HEAD_TIMEOUT = 10.0
#: an idle keep-alive connection between two requests
KEEPALIVE_TIMEOUT = 5.0
#: file descriptors kept aside for everything but client connections (the database,
#: logs, pipes to replicas, their health checks)
RESERVED_FDS = 512


class TLSConfigError(ValueError):
    """``--tls-cert``/``--tls-key`` that cannot serve: one missing, unreadable, not a pair."""


def check_tls(cert: str | Path | None, key: str | Path | None) -> tuple[Path, Path] | None:
    """Both or neither; each must exist and the pair must load. Returns absolute paths."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TLSConfigError(
            "--tls-cert and --tls-key go together: give both (a certificate and its "
            "private key, PEM) or neither"
        )
    cert_path, key_path = Path(cert).expanduser().resolve(), Path(key).expanduser().resolve()
    for flag, path in (("--tls-cert", cert_path), ("--tls-key", key_path)):
        if not path.is_file():
            raise TLSConfigError(f"{flag}: {path} is not a file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"--tls-cert {cert_path} / --tls-key {key_path}: cannot load them as a PEM "
            f"certificate and its private key ({exc})"
        ) from exc
    return cert_path, key_path


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; any other name or address reaches further."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def data_plane_warning(data_host: str) -> str | None:
    """The warning to give when routers and replicas listen beyond this machine."""
    if is_loopback(data_host):
        return None
    return (
        f"the data plane (routers and replicas) listens on {data_host}: predictions and "
        "replica metrics there are unauthenticated; anyone who can reach that address can "
        "use them"
    )


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 2**20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def api_connection_limit(nofile: int) -> int:
    """Connections plus requests in flight the control API takes before answering 503:
    a quarter of the open-files limit (routers and replicas share it), 100 to 8192."""
    return max(100, min(nofile // 4, 8192))


def router_connection_cap(nofile: int, max_connections: int) -> int:
    """Client connections across every route: ``--max-connections`` when given, else
    what the open-files limit leaves after the control API and the reserve, halved (a
    proxied connection holds a client and an upstream socket), 64 to 65536."""
    if max_connections > 0:
        return max_connections
    spare = nofile - api_connection_limit(nofile) - RESERVED_FDS
    return max(64, min(spare // 2, 65536))


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


async def run(
    home: Home,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    data_host: str = "127.0.0.1",
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    max_connections: int = 0,
    body_budget: int = RouterLimits.body_budget,
) -> None:
    """Serve the control API on ``host:port`` (TLS with ``tls_cert``/``tls_key``); routers
    and replicas listen on ``data_host`` (loopback unless asked otherwise)."""
    os.umask(UMASK)
    tls = check_tls(tls_cert, tls_key)
    home.ensure()
    home.secure_logs()
    before, nofile, hard = raise_open_files_limit()
    log.info(
        "open files: soft limit %d (was %d), hard limit %s",
        nofile,
        before,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    warning = data_plane_warning(data_host)
    if warning is not None:
        log.warning("%s", warning)
    token = home.ensure_token()
    store = Store(home.db)
    registry = open_registry(home.registry_uri, home.model_cache)
    # routers serve TLS with the control API's certificate when it has one; their
    # connection cap is --max-connections, or derived from the open-files limit
    router_cap = router_connection_cap(nofile, max_connections)
    log.info(
        "connection caps: control API %d, routers %d", api_connection_limit(nofile), router_cap
    )
    router = Router(
        data_host,
        limits=RouterLimits(max_connections=router_cap, body_budget=body_budget),
        tls=(str(tls[0]), str(tls[1])) if tls is not None else None,
    )
    nodes = load_nodes(home.nodes_file if home.nodes_file.exists() else None, data_host)
    backend = LocalBackend(
        store,
        registry,
        home.root,
        router,
        data_host,
        nodes,
        registry_uri=home.registry_uri,
        model_cache=home.model_cache,
    )
    runtime = backend.runtime
    manager = Manager(
        Context(
            state=backend.state,
            workload=backend.workload,
            dataplane=backend.dataplane,
            clock=time.time,
        )
    )
    # a replica or worker exited, a replica turned ready or unready, a gang was placed:
    # its owner's controller looks now
    backend.on_change(manager.trigger)
    orphans = await backend.start()
    if orphans:
        log.warning("stopped %d process(es) left by a previous daemon: %s", len(orphans), orphans)
    # a request held at a deployment scaled to zero wakes its controller at once
    router.on_activate = lambda key: manager.trigger("ModelDeployment", key)

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    url = f"{'https' if tls else 'http'}://{shown}:{bound[1]}"
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
        pods=runtime.pods,
        info=lambda: daemon_info(
            started,
            url,
            store,
            lambda: sum(1 for ch in runtime.supervisor.children.values() if ch.poll() is None),
        ),
    )
    server = _EmbeddedServer(
        uvicorn.Config(
            app,
            http=timed_protocol(
                ConnectionLimits(
                    first_byte=HEAD_TIMEOUT, head=HEAD_TIMEOUT, keep_alive=KEEPALIVE_TIMEOUT
                )
            ),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
            timeout_keep_alive=int(KEEPALIVE_TIMEOUT),
            limit_concurrency=api_connection_limit(nofile),
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
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
    home.write_daemon_info(
        {"pid": os.getpid(), "url": url, "startedAt": started}
        | ({"tlsCert": str(tls[0])} if tls else {})
    )
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
        await backend.close()
        store.close()
        info = home.read_daemon_info()
        if info and info.get("pid") == os.getpid():
            home.daemon_file.unlink(missing_ok=True)
        log.info("stopped")


LOG_BYTES = 10 * 2**20
LOG_BACKUPS = 3


def main(
    home: Home,
    host: str,
    port: int,
    log_file: Path | None = None,
    *,
    data_host: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    max_connections: int = 0,
    body_budget: int = RouterLimits.body_budget,
) -> None:
    """Run the daemon; in the background it logs to ``log_file``, rotated at 10 MiB."""
    # before the log file, the database or anything else is created: all of it private
    os.umask(UMASK)
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
    daemon = run(
        home,
        host,
        port,
        data_host=data_host,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_connections=max_connections,
        body_budget=body_budget,
    )
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency; keep the daemon usable
            asyncio.run(daemon)
        else:
            uvloop.run(daemon)
    except SchemaError as exc:
        # a state file this release cannot read (a newer release's, or a failed
        # migration): say so and stop, touching nothing
        log.error("%s", exc)
        raise SystemExit(2) from None
