"""The replica process: load one verified model version and serve it over HTTP.

Readiness is false until the model is loaded and stays false if verification
fails (the replica then reports why on ``/v2/health/ready`` and in its log),
so the router never sends traffic to a replica that cannot answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pilothouse.registry.local import ModelVersion, RegistryError, read_version
from pilothouse.serving.protocol import BadRequest, decode_v1, decode_v2
from pilothouse.serving.runtimes import Predictor, UnsupportedFramework, load_predictor

log = logging.getLogger("pilothouse.serving")
MAX_BODY_BYTES = 16 * 2**20


@dataclass
class ModelSlot:
    """The one model this replica serves, and how loading it went."""

    name: str
    version_dir: Path
    version: ModelVersion | None = None
    predictor: Predictor | None = None
    error: str | None = None
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
        self.rows = Histogram(
            "pilothouse_model_batch_rows",
            "Rows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=self.registry,
        )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(slot: ModelSlot) -> Starlette:
    metrics = Metrics()

    def load() -> None:
        started = time.perf_counter()
        try:
            version = read_version(slot.version_dir)
            predictor = load_predictor(version)
        except (RegistryError, UnsupportedFramework, OSError, ValueError) as exc:
            slot.error = str(exc)
            log.error("model not loaded, replica stays not ready: %s", exc)
            return
        slot.version = version
        slot.predictor = predictor
        metrics.load_seconds.set(time.perf_counter() - started)
        log.info(
            "loaded %s (%s) in %.2fs", version.ref, version.framework, time.perf_counter() - started
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield
        slot.draining = True

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _TooLarge()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _TooLarge()
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from exc

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
        if not slot.ready:
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
                body = await read_json(request)
                decode = decode_v2 if protocol == "v2" else decode_v1
                features = decode(body, checked.version.signature)
            except _TooLarge:
                status = 413
                return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            except BadRequest as exc:
                status = 400
                return _error(400, str(exc))
            try:
                scores = await asyncio.to_thread(checked.predictor.predict, features)
            except ValueError as exc:
                status = 400
                return _error(400, f"the model rejected the input: {exc}")
            metrics.rows.observe(features.shape[0])
            values = [float(s) for s in scores]
            status = 200
            if protocol == "v1":
                return JSONResponse({"predictions": values})
            response: dict[str, Any] = {
                "model_name": checked.name,
                "model_version": str(checked.version.version),
                "outputs": [
                    {"name": "score", "shape": [len(values)], "datatype": "FP64", "data": values}
                ],
            }
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                response["id"] = body["id"]
            return JSONResponse(response)
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
        return JSONResponse({"ready": False, "reason": slot.error or "loading"}, status_code=503)

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
    ]
    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(_: Request, exc: Exception) -> Response:
        return _error(
            404, "no such endpoint; see /v2/models/{name}/infer or /v1/models/{name}:predict"
        )

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"method {request.method} not allowed here")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, method_not_allowed)
    return app


class _TooLarge(Exception):
    pass


def serve(model_dir: Path, name: str, host: str, port: int, fd: int | None = None) -> None:
    """Run the replica until SIGTERM; uvicorn drains in-flight requests before exiting."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    slot = ModelSlot(name=name, version_dir=model_dir)
    app = create_app(slot)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if fd is not None:
        sock = socket.socket(fileno=fd)
        server.run(sockets=[sock])
    else:
        server.run()
