"""The replica process: load one verified model version and serve it over HTTP.

A replica gets its model one of two ways:

* ``--model NAME:VERSION --registry URI`` (how the runtime starts replicas, as a pod
  would be): the replica opens the registry (a folder, ``file://`` or
  ``s3://bucket/prefix``), resolves that exact version, fetches it into the local cache
  (``$PILOTHOUSE_HOME/cache/models`` unless ``--cache``: the daemon's cache, shared by
  every replica on the machine), verifies every checksum, then loads it. A registry
  folder is read in place (nothing to copy). Concurrent replicas of one version fetch it
  once: a lock file per version in the cache (``NAME/.VERSION.lock``, ``flock``) lets
  one download (into a private folder renamed into place, as the registry does) while
  the others wait, then find the verified copy. A cached copy that fails its checksums
  (a damaged disk, a hand edit) is moved aside and fetched again. Anything that stops
  the replica from serving its model (unknown model or version, unreachable registry,
  checksum mismatch, a model that does not load) is fatal: the log names the model, the
  registry and the cause, and the process exits with ``EXIT_MODEL_UNAVAILABLE`` (3).
* ``--model-dir DIR`` (by hand): the version folder is verified and loaded as it is; a
  failure leaves the replica running but never ready, the reason on
  ``/v2/health/ready`` and in its log.

Either way the HTTP listener starts first and the model is fetched and loaded in the
background: ``/v2/health/live`` answers during a slow download, while readiness stays
false (503, its reason "fetching NAME:VERSION from URI", then "loading NAME:VERSION")
until the model is loaded, so the router never sends traffic to a replica that cannot
answer.

Every answer is JSON. Input the replica can check is a 4xx that names the field
(``serving/protocol.py``); a model that refuses an input (``ValueError``) is a
400 for that request alone, even inside a merged batch (``serving/batching.py``);
a model that fails, or answers NaN or infinity, is a 500 counted as such in
``pilothouse_model_requests_total``. Connections are bounded: a new one must
start a request within ``first_byte_timeout``, a request head must be complete
within ``head_timeout`` of its first byte and within ``MAX_HEAD_BYTES``, an idle
keep-alive one is closed after ``keep_alive_timeout``, and past
``limit_concurrency`` connections requests get 503.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import orjson
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pilothouse.registry.local import (
    MANIFEST,
    BaseRegistry,
    ChecksumMismatch,
    LocalRegistry,
    ModelNotFound,
    ModelVersion,
    RegistryError,
    check_model_name,
    parse_version_entry,
    read_version,
    verify,
)
from pilothouse.serving.batching import Batcher
from pilothouse.serving.connections import ConnectionLimits, timed_protocol
from pilothouse.serving.openapi import openapi_document
from pilothouse.serving.protocol import (
    BadOutput,
    BadRequest,
    decode_request,
    encode_v1,
    encode_v2_output,
)
from pilothouse.serving.runtimes import Predictor, UnsupportedFramework, load_predictor
from pilothouse.spec.types import split_model_ref

log = logging.getLogger("pilothouse.serving")
MAX_BODY_BYTES = 16 * 2**20
#: the most bytes a request head (request line and headers) may take
MAX_HEAD_BYTES = 64 * 2**10
#: the status a replica counts when the client went away before the answer (nginx's)
CLIENT_CLOSED = 499
#: the exit code of a replica that cannot get its model (``--model``): not found, registry
#: unreachable, checksum mismatch, not loadable; its log says which
EXIT_MODEL_UNAVAILABLE = 3


@dataclass(frozen=True)
class ServerOptions:
    """How a replica serves: batching, draining on shutdown."""

    max_batch_size: int = 64
    max_batch_delay: float = 0.0
    drain_seconds: float = 1.0
    graceful_timeout: float = 30.0
    #: threads one model call may use (OpenMP/BLAS); replicas, not threads, are how we scale
    model_threads: int = 1
    #: seconds a new connection may stay silent before its first request starts
    first_byte_timeout: float = 5.0
    #: seconds from a request's first byte to the end of its head (request line, headers)
    head_timeout: float = 10.0
    #: seconds an idle keep-alive connection stays open between requests (uvicorn's default)
    keep_alive_timeout: int = 5
    #: connections served at once; past it, requests get 503 (uvicorn's ``limit_concurrency``)
    limit_concurrency: int | None = 1024
    #: the HTTP/1.1 parser: llhttp (``httptools``, the default) or pure-Python ``h11``
    http: Literal["httptools", "h11"] = "httptools"


@dataclass(frozen=True)
class ModelSource:
    """A model version the replica fetches and verifies itself: an exact reference, the
    registry it is in (a folder, ``file://`` or ``s3://bucket/prefix``), and the local
    cache remote versions are fetched into."""

    name: str
    version: int
    registry: str
    cache: Path

    @classmethod
    def parse(cls, ref: str, registry: str, cache: Path) -> ModelSource:
        """ValueError unless ``ref`` is ``NAME:VERSION`` (an exact version number) and
        ``registry`` is not empty."""
        name, version, stage = split_model_ref(ref)
        number = parse_version_entry(version) if version is not None else None
        if stage is not None or number is None:
            raise ValueError(
                f"model reference {ref!r} must name an exact version ('{name}:N'): a replica "
                "serves the one version the control plane resolved"
            )
        if not registry.strip():
            raise ValueError("the registry URI is empty")
        return cls(check_model_name(name), number, registry, cache)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def cached_dir(self) -> Path:
        """Where a remote registry's copy of this version is cached (the registry's layout)."""
        return self.cache / self.name / str(self.version)


@dataclass
class ModelSlot:
    """The one model this replica serves, where it comes from, and how loading it went."""

    name: str
    #: the version folder to load (given, or where ``source`` was fetched to)
    version_dir: Path | None = None
    #: the registry version to fetch first (``--model``); failing to serve it is fatal
    source: ModelSource | None = None
    version: ModelVersion | None = None
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    error: str | None = None
    #: what the replica is doing while not ready (readiness reports it)
    status: str = "loading"
    #: the model could not be had and the replica is exiting (``EXIT_MODEL_UNAVAILABLE``)
    failed: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.predictor is not None and not self.draining


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pilothouse_model_requests",
            "Inference requests by protocol and HTTP status",
            ["protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pilothouse_model_request_duration_seconds",
            "Inference request latency",
            ["protocol"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "pilothouse_model_inflight_requests", "Requests being served", registry=self.registry
        )
        self.load_seconds = Gauge(
            "pilothouse_model_load_seconds",
            "Time to verify and load the model",
            registry=self.registry,
        )
        self.fetch_seconds = Gauge(
            "pilothouse_model_fetch_seconds",
            "Time to resolve and fetch the model from the registry (0 when given a folder)",
            registry=self.registry,
        )
        self.rows = Histogram(
            "pilothouse_model_batch_rows",
            "Rows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=self.registry,
        )


class JSONResponse(Response):
    """A JSON response encoded by orjson (NaN and infinity never get here: see ``BadOutput``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    slot: ModelSlot,
    options: ServerOptions | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> Starlette:
    """The replica's app; it loads ``slot``'s model in the background once started.

    ``on_fatal`` is called (from the loading thread) when a model from a registry
    (``slot.source``) cannot be fetched, verified or loaded: the server should exit.
    """
    opts = options or ServerOptions()
    metrics = Metrics()
    # Batched model calls run one at a time on one thread: no oversubscribed OpenMP
    # pools, no thread churn, and the event loop stays free for health checks.
    # OpenMP keeps its thread limit per thread, so the limit is set in that thread.
    model_thread = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="model",
        initializer=_limit_threads,
        initargs=(opts.model_threads,),
    )

    def load() -> None:
        if slot.source is not None:
            source = slot.source
            try:
                version, predictor, fetch_seconds, load_seconds = obtain(source, slot)
            except Exception as exc:  # whatever it is, this replica cannot serve its model
                slot.error = (
                    f"cannot serve {source.ref} from registry {source.registry}: "
                    f"{explain_failure(exc, source)}"
                )
                slot.failed = True
                log.error("%s; exiting", slot.error)
                if on_fatal is not None:
                    on_fatal()
                return
        else:
            assert slot.version_dir is not None
            started = time.perf_counter()
            try:
                version = read_version(slot.version_dir)
                predictor = load_predictor(version)
            except (RegistryError, UnsupportedFramework, OSError, ValueError) as exc:
                slot.error = str(exc)
                log.error("model not loaded, replica stays not ready: %s", exc)
                return
            fetch_seconds, load_seconds = 0.0, time.perf_counter() - started
        metrics.fetch_seconds.set(fetch_seconds)
        metrics.load_seconds.set(load_seconds)
        slot.version = version
        if opts.max_batch_size > 1:
            slot.batcher = Batcher(
                predictor.predict,
                max_batch_size=opts.max_batch_size,
                max_delay=opts.max_batch_delay,
                on_batch=metrics.rows.observe,
                executor=model_thread,
            )
        slot.predictor = predictor
        log.info(
            "loaded %s (%s) from %s in %.2fs",
            version.ref,
            version.framework,
            version.path,
            load_seconds,
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield
        slot.draining = True
        model_thread.shutdown(wait=False)

    async def read_body(request: Request) -> bytes:
        """The request body, refused (``_TooLarge``) past ``MAX_BODY_BYTES``."""
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > MAX_BODY_BYTES
        ):
            raise _TooLarge()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if chunk:
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _TooLarge()
                chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def check_model(request: Request) -> ModelSlot | JSONResponse:
        name = request.path_params["name"]
        if name != slot.name:
            return _error(
                404, f"model '{name}' is not served here (this replica serves '{slot.name}')"
            )
        version = request.path_params.get("version")
        if (
            slot.version is not None
            and version is not None
            and version != str(slot.version.version)
        ):
            return _error(
                404,
                f"model '{name}' version '{version}' not found (serving {slot.version.version})",
            )
        if slot.predictor is None:  # still loading, or refused; draining replicas still serve
            return _error(503, slot.error or f"model '{name}' is not ready")
        return slot

    async def infer(request: Request, protocol: str) -> Response:
        started = time.perf_counter()
        metrics.inflight.inc()
        status = 500
        try:
            checked = check_model(request)
            if isinstance(checked, JSONResponse):
                status = checked.status_code
                return checked
            assert checked.predictor is not None
            assert checked.version is not None
            try:
                raw = await read_body(request)
                features, body = decode_request(
                    protocol,
                    raw,
                    request.headers.get("inference-header-content-length"),
                    checked.version.signature,
                )
            except _TooLarge:
                status = 413
                return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            except BadRequest as exc:
                status = 400
                return _error(400, str(exc))
            except ClientDisconnect:
                status = CLIENT_CLOSED
                return Response(status_code=CLIENT_CLOSED)
            try:
                if checked.batcher is not None:
                    scores = await checked.batcher.submit(features)
                else:
                    # Batching off: call the model inline, as a bare endpoint would; a
                    # hop to another thread per request costs more than small models do.
                    scores = checked.predictor.predict(features)
                    metrics.rows.observe(features.shape[0])
                if protocol == "v1":
                    answer = encode_v1(scores)
                else:
                    answer = {
                        "model_name": checked.name,
                        "model_version": str(checked.version.version),
                        "outputs": [encode_v2_output(scores)],
                    }
                    if isinstance(body.get("id"), str):
                        answer["id"] = body["id"]
            except BadOutput as exc:
                status = 500
                log.error("the model's answer cannot be sent: %s", exc)
                return _error(500, f"the model's answer cannot be sent: {exc}")
            except ValueError as exc:
                status = 400
                return _error(400, f"the model rejected the input: {exc}")
            except Exception as exc:
                status = 500
                log.error("the model failed: %s: %s", type(exc).__name__, exc)
                return _error(500, f"the model failed: {type(exc).__name__}: {exc}")
            status = 200
            return JSONResponse(answer)
        finally:
            metrics.inflight.dec()
            metrics.requests.labels(protocol, str(status)).inc()
            metrics.latency.labels(protocol).observe(time.perf_counter() - started)

    async def v2_infer(request: Request) -> Response:
        return await infer(request, "v2")

    async def v1_predict(request: Request) -> Response:
        return await infer(request, "v1")

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        if slot.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": slot.error or slot.status}, status_code=503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": "pilothouse", "version": "0.1.0", "extensions": []})

    async def model_metadata(request: Request) -> Response:
        checked = check_model(request)
        if isinstance(checked, JSONResponse):
            return checked
        assert checked.version is not None
        signature = checked.version.signature or {}
        return JSONResponse(
            {
                "name": checked.name,
                "versions": [str(checked.version.version)],
                "platform": checked.version.framework,
                "inputs": [
                    {"name": i["name"], "datatype": i.get("datatype", "FP64"), "shape": [-1]}
                    for i in signature.get("inputs", [])
                ],
                "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
            }
        )

    async def model_ready(request: Request) -> Response:
        checked = check_model(request)
        if isinstance(checked, JSONResponse):
            return checked
        return JSONResponse({"name": checked.name, "ready": True})

    async def openapi(_: Request) -> Response:
        return JSONResponse(openapi_document(slot.name))

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/v1/models/{name}:predict", v1_predict, methods=["POST"]),
        Route("/metrics", prometheus),
        Route("/openapi.json", openapi),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(_: Request, exc: Exception) -> Response:
        return _error(
            404, "no such endpoint; see /v2/models/{name}/infer or /v1/models/{name}:predict"
        )

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"method {request.method} not allowed here")

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client gets JSON like every other answer.
        return _error(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, method_not_allowed)
    app.add_exception_handler(Exception, server_error)
    return app


class _TooLarge(Exception):
    pass


# -- a model from the registry: resolve, fetch into the cache, verify, load -------------


def obtain(
    source: ModelSource, slot: ModelSlot | None = None
) -> tuple[ModelVersion, Predictor, float, float]:
    """``source``'s version fetched (or found in the cache), verified and loaded: the
    version, its predictor, and the seconds fetching and loading took. ``slot.status``
    (when given) follows along. Raises whatever stopped it (see ``explain_failure``).

    A copy already in the cache that fails its checksums is moved aside and fetched
    again, once; a registry folder that fails them is the registry's own problem.
    """
    started = time.perf_counter()
    if slot is not None:
        slot.status = f"fetching {source.ref} from {source.registry}"
    registry = open_registry_for(source)
    version, cached = fetch_version(registry, source)
    fetched = time.perf_counter()
    if slot is not None:
        slot.status = f"loading {source.ref}"
    if isinstance(registry, LocalRegistry):
        how = "found in the registry folder"
    else:
        how = "found in the cache" if cached else "fetched into the cache"
    log.info(
        "%s from %s: %s (%s) in %.2fs",
        source.ref,
        source.registry,
        how,
        version.path,
        fetched - started,
    )
    try:
        predictor = load_predictor(version)  # verifies every checksum first
    except ChecksumMismatch as exc:
        if not cached:
            raise
        log.warning(
            "the cached copy of %s at %s is damaged (%s); fetching it again",
            source.ref,
            version.path,
            exc,
        )
        version = refetch(registry, version, source)
        predictor = load_predictor(version)
    return version, predictor, fetched - started, time.perf_counter() - fetched


def open_registry_for(source: ModelSource) -> BaseRegistry:
    """The registry ``source`` names (storage options from the environment, as the
    daemon's: AWS_*, $PILOTHOUSE_REGISTRY_OPTIONS)."""
    from pilothouse.registry.objectstore import open_registry

    registry = open_registry(source.registry, source.cache)
    if isinstance(registry, LocalRegistry) and not registry.root.is_dir():
        raise RegistryError(f"the registry folder {registry.root} does not exist")
    return registry


def fetch_version(registry: BaseRegistry, source: ModelSource) -> tuple[ModelVersion, bool]:
    """The version on this machine: a registry folder's own (checked when loaded), or a
    remote one fetched into the cache under the version's lock, its download verified.
    Second: whether it was a copy already in the cache (not verified here)."""
    try:
        version = registry.get(source.name, source.version)
    except ModelNotFound as exc:
        raise ModelNotFound(f"{exc}{_known_versions(registry, source.name)}") from exc
    if isinstance(registry, LocalRegistry):
        return registry.fetch(version), False
    with _version_lock(source):
        cached = (source.cached_dir / MANIFEST).is_file()
        return _fetch_into_cache(registry, version, source), cached


def refetch(registry: BaseRegistry, version: ModelVersion, source: ModelSource) -> ModelVersion:
    """Fetch ``version`` again after its cached copy failed its checksums: under the lock,
    the copy is moved aside (then removed) if it still fails them (another replica may
    have replaced it already), and fetched again."""
    with _version_lock(source):
        cached = registry.fetch(version)  # what is there now (fetched if it is gone)
        try:
            verify(cached)
        except ChecksumMismatch:
            aside = cached.path.parent / f".damaged-{uuid.uuid4().hex}"
            os.rename(cached.path, aside)
            shutil.rmtree(aside, ignore_errors=True)
            cached = _fetch_into_cache(registry, version, source)
        return cached


def _fetch_into_cache(
    registry: BaseRegistry, version: ModelVersion, source: ModelSource
) -> ModelVersion:
    try:
        return registry.fetch(version)
    except OSError:
        # another process that takes no lock (the daemon) renamed its copy into place
        # first: ours was in the way and is gone; theirs is verified as ours would be
        if (source.cached_dir / MANIFEST).is_file():
            return registry.fetch(version)
        raise


@contextmanager
def _version_lock(source: ModelSource) -> Iterator[None]:
    """Held while a version is fetched into (or repaired in) the cache: one process at a
    time per version, on this machine; the others wait, then find the copy it made.
    ``flock`` on ``CACHE/NAME/.VERSION.lock``, released by the kernel if the holder dies."""
    folder = source.cache / source.name
    for step in (source.cache, folder):
        if step.is_symlink():
            raise RegistryError(
                f"refusing to cache {source.ref}: {step} is a symlink (the cache must hold "
                "real folders only)"
            )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(
        folder / f".{source.version}.lock",
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is fetching %s into %s; waiting for it", source.ref, folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _known_versions(registry: BaseRegistry, name: str) -> str:
    """What the registry has of ``name``, to say beside "no such version"."""
    try:
        numbers = [str(v.version) for v in registry.versions(name)]
    except Exception:  # the message is only a hint: never fail on it
        return ""
    if not numbers:
        return f" (no version of '{name}' is registered there)"
    return f" (registered versions of '{name}': {', '.join(numbers)})"


def explain_failure(exc: BaseException, source: ModelSource) -> str:
    """What went wrong fetching or loading ``source``, for the log and readiness."""
    if isinstance(exc, ChecksumMismatch):
        rel, where = exc.path.name, str(exc.path)
        for parent in exc.path.parents:
            if parent.name.startswith(".incoming-"):  # a download being checked
                rel = exc.path.relative_to(parent).as_posix()
                where = f"{source.registry.rstrip('/')}/{source.name}/{source.version}/{rel}"
                break
            if parent.name == str(source.version) and parent.parent.name == source.name:
                rel = exc.path.relative_to(parent).as_posix()
                break
        return (
            f"checksum mismatch for file '{rel}' ({where}): expected sha256 {exc.expected}, "
            f"got {exc.actual}; the artifact differs from what was registered, refusing to "
            "load it"
        )
    if isinstance(exc, ModelNotFound):
        return f"not found: {exc}"
    if isinstance(exc, RegistryError | UnsupportedFramework):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _limit_threads(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def protocol_class(options: ServerOptions) -> type[asyncio.Protocol]:
    """The uvicorn protocol class for ``options``, its deadlines bound in."""
    limits = ConnectionLimits(
        first_byte=options.first_byte_timeout,
        head=options.head_timeout,
        keep_alive=options.keep_alive_timeout,
    )
    return timed_protocol(limits, options.http)


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: readiness turns false at once, the replica keeps serving for
    ``drain_seconds`` (so probes and the router notice), then stops accepting and
    finishes in-flight requests (uvicorn's graceful shutdown)."""

    def __init__(self, config: uvicorn.Config, slot: ModelSlot, drain_seconds: float) -> None:
        super().__init__(config)
        self.slot = slot
        self.drain_seconds = drain_seconds
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.slot.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.slot.draining = True
        log.info("draining for %.1fs before shutdown", self.drain_seconds)
        self._timer = threading.Timer(
            self.drain_seconds, lambda: super(_DrainingServer, self).handle_exit(sig, None)
        )
        self._timer.daemon = True
        self._timer.start()


def serve(
    model: Path | ModelSource,
    name: str,
    host: str,
    port: int,
    fd: int | None = None,
    options: ServerOptions | None = None,
) -> None:
    """Run the replica until SIGTERM: drain, then finish in-flight requests and exit.

    ``model``: a version folder, or a registry version to fetch and verify first; if
    that fails the replica exits with ``EXIT_MODEL_UNAVAILABLE`` (``SystemExit``).
    """
    opts = options or ServerOptions()
    # OpenMP/BLAS read these when they load, which happens when the model is
    # unpickled, after this line: one replica, ``model_threads`` cores (default 1).
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(opts.model_threads))
    _limit_threads(opts.model_threads)  # libraries already loaded, if any
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if isinstance(model, ModelSource):
        slot = ModelSlot(name=name, source=model)
    else:
        slot = ModelSlot(name=name, version_dir=model)
    server: _DrainingServer | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(slot, opts, on_fatal=stop)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(opts.graceful_timeout),
        http=protocol_class(opts),
        ws="none",
        timeout_keep_alive=opts.keep_alive_timeout,
        limit_concurrency=opts.limit_concurrency,
    )
    server = _DrainingServer(config, slot, opts.drain_seconds)
    if fd is not None:
        sock = socket.socket(fileno=fd)
        server.run(sockets=[sock])
    else:
        server.run()
    if slot.failed:
        raise SystemExit(EXIT_MODEL_UNAVAILABLE)
