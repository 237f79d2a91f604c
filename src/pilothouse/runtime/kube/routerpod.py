"""A router pod: one ModelDeployment's traffic, with its replicas taken from the cluster.

It is the embedded router (``router.proxy``: one ``Route`` on the pod's IP) fed by three
watches of its own namespace, so that the operator is never in the request path:

- the ConfigMap ``NAME-router``: ``data["traffic.json"]`` is the ``Traffic`` the rollout
  controller set (wire.py). Until there is one, every request is answered 503 with a body
  that says so.
- the replica pods (``pilothouse.dev/deployment=NAME,pilothouse.dev/component=replica``)
  and the revisions' EndpointSlices (``pilothouse.dev/deployment=NAME`` and a
  ``pilothouse.dev/revision`` label, copied from the revision's Service). Both are merged
  by pod IP (``ReplicaEndpoints``): a pod the slices do not list as ready yet is probed
  directly, and gets traffic the moment it answers, instead of after the kubelet's probe
  period and the EndpointSlice controller's batching; a pod being deleted or gone, an
  endpoint that is terminating, or one whose readiness went from true to false (its pod's
  Ready condition; a slice's for an address whose pod is not known) leaves the route at
  once, requests in flight finishing.

When a request waits with no ready replica at all and the traffic says
``hold_when_empty`` (scaled to zero), the router wakes the operator by setting the
annotation ``pilothouse.dev/wake`` on its ConfigMap, at most once every ``WAKE_EVERY``
seconds; the request is answered as soon as a replica is ready.

A second listener, the control port, serves what the route measured to the operator
(``/control/load``, ``/control/responses``, bearer token) and the pod's probes
(``/readyz``: the three watches have listed; ``/healthz``). On SIGTERM the pod stops being
ready, stops accepting, lets the requests in flight finish (bounded) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pilothouse.ports.dataplane import Traffic
from pilothouse.router.proxy import Route, Router
from pilothouse.router.upstream import Backend, Upstream
from pilothouse.runtime.kube import wire
from pilothouse.runtime.kube.client import Kube, KubeError
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.objects import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    REPLICA_PORT,
    REVISION_LABEL,
    WAKE_ANNOTATION,
    router_name,
)
from pilothouse.runtime.local.measure import deployment_load, route_responses

__all__ = ["ControlServer", "ReplicaEndpoints", "RouterPod", "RouterPodOptions"]

log = logging.getLogger("pilothouse.routerpod")

#: a replica not yet ready in any EndpointSlice is probed this often...
PROBE_EVERY = 0.2
#: ...each probe bounded by this
PROBE_TIMEOUT = 0.5
#: the wake annotation is set at most this often
WAKE_EVERY = 2.0
#: the watches deliver every object again this often (the level-based safety net)
RESYNC = 30.0
#: a control request must send its head within this
CONTROL_READ_TIMEOUT = 2.0
CONTROL_HEAD_LIMIT = 16 * 1024
#: control connections open at once; more are closed at once (it is a low-rate port)
CONTROL_CONNECTIONS = 64
TRAFFIC_KEY = "traffic.json"


# -- replicas from pods and EndpointSlices -------------------------------------------------------


@dataclass
class _Address:
    """What the pod watch and the slices say about one pod IP."""

    ip: str
    revision: str = ""
    pod: str = ""
    #: None: no pod with this IP is known
    pod_ready: bool | None = None
    pod_deleting: bool = False
    pod_ended: bool = False
    #: None: no slice lists it
    slice_ready: bool | None = None
    slice_terminating: bool = False
    slice: str = ""

    @property
    def name(self) -> str:
        return f"{self.pod or '?'} ({self.ip}, revision {self.revision or '?'})"


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass
class ReplicaEndpoints:
    """Which replicas of one deployment get traffic, merged by IP from its pods and its
    revisions' EndpointSlices; ``apply`` is called with the whole new list on each change.

    A replica is in when it is ready by any account (its pod's Ready condition, a slice's
    ``ready``, or a direct probe that answered 200) and out when any account says it is
    going: the pod is being deleted, ended or gone (a slice that still lists its address
    does not bring it back), a slice says ``terminating``, or its readiness went from true
    to false (the kubelet's probe failed: a direct probe does not overrule that; the next
    true does). A pod with an IP that is in by no account is probed every ``PROBE_EVERY``
    seconds until it is, or is gone.
    """

    apply: Callable[[list[Backend]], None]
    port: int = REPLICA_PORT
    probe_every: float = PROBE_EVERY
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: in the route now, by IP
    current: dict[str, Backend] = field(default_factory=dict)
    _pod_ready: dict[str, bool] = field(default_factory=dict)
    _slice_ready: dict[str, bool] = field(default_factory=dict)
    _fell: set[str] = field(default_factory=set)
    _probed: set[str] = field(default_factory=set)
    #: addresses of pods being deleted, ended or deleted, until no slice lists them
    _departed: set[str] = field(default_factory=set)
    _probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _closed: bool = False

    # -- events ------------------------------------------------------------------------------

    def pod_event(self, type_: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if type_ == "DELETED":
            self.pods.pop(name, None)
            if ip := (pod.get("status") or {}).get("podIP"):
                self._departed.add(ip)
        else:
            self.pods[name] = pod
        self.sync()

    def slice_event(self, type_: str, slice_: dict[str, Any]) -> None:
        name = slice_["metadata"]["name"]
        if type_ == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = slice_
        self.sync()

    def close(self) -> None:
        self._closed = True
        for task in self._probes.values():
            task.cancel()
        self._probes.clear()

    # -- the merge ---------------------------------------------------------------------------

    def _addresses(self) -> dict[str, _Address]:
        seen: dict[str, _Address] = {}
        for name, pod in sorted(self.pods.items()):
            ip = (pod.get("status") or {}).get("podIP")
            revision = (pod["metadata"].get("labels") or {}).get(REVISION_LABEL, "")
            if not ip or not revision:
                continue
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            ended = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            known = seen.get(ip)
            if known is not None and not (known.pod_deleting or known.pod_ended):
                continue  # an IP handed to a new pod: the live one speaks for it
            seen[ip] = _Address(
                ip,
                revision,
                name,
                pod_ready=_pod_ready(pod),
                pod_deleting=deleting,
                pod_ended=ended,
            )
        for slice_name, slice_ in sorted(self.slices.items()):
            revision = (slice_["metadata"].get("labels") or {}).get(REVISION_LABEL, "")
            if not revision or slice_.get("addressType", "IPv4") == "FQDN":
                continue
            for endpoint in slice_.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                # an unset ready condition means ready (the API's own reading of it)
                ready = conditions.get("ready") is not False
                terminating = conditions.get("terminating") is True
                target = (endpoint.get("targetRef") or {}).get("name", "")
                for ip in endpoint.get("addresses") or []:
                    address = seen.get(ip)
                    if address is None:
                        address = seen[ip] = _Address(ip, revision, target)
                    if address.slice_ready is None:
                        address.slice_ready, address.slice = ready, slice_name
                    else:  # listed twice: ready only when every listing says so
                        address.slice_ready = address.slice_ready and ready
                    address.slice_terminating |= terminating
        return seen

    def _transitions(self, seen: dict[str, _Address]) -> None:
        """Readiness that went from true to false puts an IP out until it goes from false
        to true again. The pod's Ready condition is the account that counts when the pod
        is known (slices follow it, later: a slice still saying what the pod said before
        must not undo it); a slice's ready condition counts for an IP without a known pod."""
        for ip, address in seen.items():
            slice_counts = address.pod_ready is None
            for last, now, counts in (
                (self._pod_ready, address.pod_ready, True),
                (self._slice_ready, address.slice_ready, slice_counts),
            ):
                if now is None:
                    last.pop(ip, None)
                    continue
                before = last.get(ip)
                last[ip] = now
                if not counts:
                    continue
                if before is True and not now:
                    self._fell.add(ip)
                    self._probed.discard(ip)
                elif now and before is not True:
                    self._fell.discard(ip)
        for table in (self._pod_ready, self._slice_ready):
            for ip in [ip for ip in table if ip not in seen]:
                del table[ip]
        for ip, address in seen.items():
            if address.pod_deleting or address.pod_ended:
                self._departed.add(ip)
            elif address.pod_ready is not None:
                self._departed.discard(ip)  # a live pod has the address (again)
        self._fell &= set(seen)
        self._probed &= set(seen)
        self._departed &= set(seen)

    def _out(self, address: _Address) -> str | None:
        if address.pod_deleting:
            return "its pod is being deleted"
        if address.pod_ended:
            return "its pod ended"
        if address.pod_ready is None and address.ip in self._departed:
            return "its pod is gone"
        if address.slice_terminating:
            return f"terminating in EndpointSlice {address.slice}"
        if address.ip in self._fell:
            return "no longer ready"
        return None

    def _in(self, address: _Address) -> str | None:
        if address.ip in self._probed:
            return "answered its readiness probe"
        if address.pod_ready:
            return "its pod is Ready"
        if address.slice_ready:
            return f"ready in EndpointSlice {address.slice}"
        return None

    def sync(self) -> None:
        """Work out the route's replicas again and apply them if they changed."""
        if self._closed:
            return
        seen = self._addresses()
        self._transitions(seen)
        wanted: dict[str, Backend] = {}
        reasons: dict[str, str] = {}
        probe: dict[str, _Address] = {}
        for ip, address in seen.items():
            out = self._out(address)
            if out is not None:
                reasons[ip] = out
                continue
            why = self._in(address)
            if why is not None:
                wanted[ip] = Backend(ip, ip, self.port, address.revision)
                reasons[ip] = why
            elif address.pod and address.pod_ready is not None:
                probe[ip] = address
                reasons[ip] = "not ready yet"
        for ip in [ip for ip in self._probes if ip not in probe]:
            self._probes.pop(ip).cancel()
        for ip, address in probe.items():
            task = self._probes.get(ip)
            if task is None or task.done():
                self._probes[ip] = asyncio.get_running_loop().create_task(
                    self._probe(address), name=f"probe-{ip}"
                )
        if wanted == self.current:
            return
        for ip, backend in self.current.items():
            if wanted.get(ip) != backend:
                gone = seen.get(ip)
                if ip in wanted:
                    reason = f"its revision is {wanted[ip].revision} now"
                else:
                    reason = reasons.get(ip, "its pod and endpoints are gone")
                log.info(
                    "replica %s removed: %s",
                    f"{gone.pod or '?'} ({ip}, revision {backend.revision})" if gone else ip,
                    reason,
                )
        for ip, backend in wanted.items():
            if self.current.get(ip) != backend:
                log.info("replica %s added: %s", seen[ip].name, reasons[ip])
        self.current = wanted
        self.apply(list(wanted.values()))

    async def _probe(self, address: _Address) -> None:
        """Probe a replica's readiness until it answers 200 (the task is cancelled when
        the replica is gone, going, or ready by another account)."""
        upstream = Upstream(Backend(address.ip, address.ip, self.port, address.revision))
        while True:
            if await upstream.probe(PROBE_TIMEOUT):
                break
            await asyncio.sleep(self.probe_every)
        if self._probes.get(address.ip) is asyncio.current_task():
            del self._probes[address.ip]
        self._probed.add(address.ip)
        self.sync()


# -- the router pod -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterPodOptions:
    deployment: str
    namespace: str
    host: str
    port: int = 8080
    control_port: int = 8081
    #: the control port's bearer token; None only with insecure_control
    token: str | None = None
    insecure_control: bool = False
    #: after SIGTERM: seconds to keep serving while not ready (the pod's preStop hook
    #: usually waits already), then at most ``finish_seconds`` for requests in flight
    drain_seconds: float = 0.0
    finish_seconds: float = 8.0


def _describe(traffic: Traffic) -> str:
    weights = ", ".join(f"{r}={w:g}" for r, w in sorted(traffic.weights.items())) or "all equal"
    parts = [f"weights {weights}"]
    if traffic.mirror_revision and traffic.mirror_percent > 0:
        parts.append(f"mirror {traffic.mirror_percent:g}% to {traffic.mirror_revision}")
    if traffic.hold_when_empty:
        parts.append("hold when empty")
    if traffic.max_concurrency:
        parts.append(f"max concurrency {traffic.max_concurrency}")
    parts.append(f"queue {traffic.queue_limit} for {traffic.queue_timeout:g}s")
    return "; ".join(parts)


class RouterPod:
    """The router of one deployment, its watches and its control port."""

    def __init__(self, kube: Kube, options: RouterPodOptions) -> None:
        if options.token is None and not options.insecure_control:
            raise ValueError("the control port needs a token (or insecure_control)")
        self.kube = kube
        self.options = options
        self.key = options.deployment
        self.configmap = router_name(options.deployment)
        self.router = Router(host=options.host, on_activate=self._wake)
        self.endpoints = ReplicaEndpoints(self._set_backends)
        self.traffic: Traffic | None = None
        self.stopping = asyncio.Event()
        self.terminating = False
        self._woke = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        deployment, namespace = options.deployment, options.namespace
        self.configmaps = Informer(
            kube,
            "v1",
            "ConfigMap",
            namespace,
            field_selector=f"metadata.name={self.configmap}",
            resync=RESYNC,
        )
        self.pods = Informer(
            kube,
            "v1",
            "Pod",
            namespace,
            label_selector=f"{DEPLOYMENT_LABEL}={deployment},{COMPONENT_LABEL}=replica",
            resync=RESYNC,
        )
        self.slices = Informer(
            kube,
            "discovery.k8s.io/v1",
            "EndpointSlice",
            namespace,
            # the revisions' Services have a revision label; the deployment's own (the
            # routers') has none
            label_selector=f"{DEPLOYMENT_LABEL}={deployment},{REVISION_LABEL}",
            resync=RESYNC,
        )
        self.informers = [self.configmaps, self.pods, self.slices]
        self._synced = {"ConfigMap": False, "pods": False, "EndpointSlices": False}
        self.configmaps.add_handler(self._on_configmap)
        self.pods.add_handler(self.endpoints.pod_event)
        self.slices.add_handler(self.endpoints.slice_event)
        self.control = ControlServer(self, options.token)
        self._control_server: asyncio.Server | None = None

    @property
    def route(self) -> Route:
        route = self.router.route(self.key)
        assert route is not None, "the route is made in start()"
        return route

    def waiting_for(self) -> list[str]:
        """What keeps the pod from being ready (nothing: ready)."""
        if self.terminating:
            return ["shutting down"]
        return [f"{what} listed" for what, done in self._synced.items() if not done]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (traffic refused until the ConfigMap is read), then start the watches."""
        options = self.options
        url = await self.router.ensure_route(self.key, options.port)
        bound = self.route.server.sockets[0].getsockname()[1] if self.route.server else 0
        if options.port and bound != options.port:
            await self.router.close()
            raise OSError(f"cannot listen on {options.host}:{options.port}")
        self.route.refusal = (
            f"the router has no traffic configuration yet (ConfigMap {self.configmap}"
            f" in {options.namespace} not read)"
        )
        self._control_server = await asyncio.start_server(
            self.control.handle,
            options.host,
            options.control_port,
            limit=CONTROL_HEAD_LIMIT,
            reuse_address=True,
        )
        log.info(
            "router of %s/%s: traffic on %s, control on %s:%d",
            options.namespace,
            self.key,
            url,
            options.host,
            options.control_port,
        )
        for informer in self.informers:
            await informer.start()
        self._spawn(self._wait_synced())

    async def _wait_synced(self) -> None:
        names = list(self._synced)
        for name, informer in zip(names, self.informers, strict=True):
            while True:
                try:
                    await informer.wait_synced(RESYNC)
                    break
                except TimeoutError:
                    log.warning("still waiting to list %s", name)
            if name == "ConfigMap" and informer.list() == []:
                log.warning(
                    "ConfigMap %s not found in %s: answering 503 until it exists",
                    self.configmap,
                    self.options.namespace,
                )
            self._synced[name] = True
        log.info("ready: ConfigMap, pods and EndpointSlices listed")

    async def run(self) -> None:
        """Serve until ``stopping`` is set (SIGTERM), then shut down gracefully."""
        try:
            await self.start()
            await self.stopping.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        options = self.options
        self.terminating = True
        log.info("shutting down: no longer ready")
        if options.drain_seconds > 0:
            await asyncio.sleep(options.drain_seconds)
        route = self.router.route(self.key)
        if route is not None and route.server is not None:
            route.server.close()  # no new connections; open ones are served to the end
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.finish_seconds
        while route is not None and loop.time() < deadline:
            if not self._busy(route):
                break
            await asyncio.sleep(0.05)
        if route is not None and self._busy(route):
            log.warning(
                "%d request(s) still in flight after %.0fs",
                self._busy(route),
                options.finish_seconds,
            )
        for informer in self.informers:
            with contextlib.suppress(Exception):
                await informer.stop()
        self.endpoints.close()
        for task in list(self._tasks):
            task.cancel()
        await self.router.close()
        if self._control_server is not None:
            self._control_server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._control_server.wait_closed()
        log.info("stopped")

    @staticmethod
    def _busy(route: Route) -> int:
        """Requests at a replica (one that left the route too) or waiting for one."""
        return sum(m.inflight for m in route.meters.values()) + route.queued

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- watches -----------------------------------------------------------------------------

    def _set_backends(self, backends: list[Backend]) -> None:
        self.router.set_backends(self.key, backends)

    def _on_configmap(self, type_: str, obj: dict[str, Any]) -> None:
        if obj["metadata"].get("name") != self.configmap:
            return
        if type_ == "DELETED":
            self.traffic = None
            self.route.refusal = f"the router's ConfigMap {self.configmap} was deleted"
            log.warning("ConfigMap %s deleted: answering 503", self.configmap)
            return
        raw = (obj.get("data") or {}).get(TRAFFIC_KEY)
        try:
            if raw is None:
                raise ValueError(f"no {TRAFFIC_KEY} in it")
            traffic = wire.decode_traffic(json.loads(raw))
        except ValueError as exc:  # json.JSONDecodeError is one
            log.error(
                "ConfigMap %s: %s; %s",
                self.configmap,
                exc,
                "keeping the traffic it had" if self.traffic else "answering 503",
            )
            if self.traffic is None:
                self.route.refusal = f"the router's ConfigMap {self.configmap} is invalid: {exc}"
            return
        if traffic == self.traffic:
            return
        log.info("traffic %s: %s", "changed" if self.traffic else "set", _describe(traffic))
        self.traffic = traffic
        self.router.set_policy(self.key, traffic)
        self.route.refusal = None

    # -- waking the operator -----------------------------------------------------------------

    def _wake(self, key: str) -> None:
        """A request waits and no replica is ready (scaled to zero): ask for one."""
        now = time.monotonic()
        if now - self._woke < WAKE_EVERY:
            return
        self._woke = now
        self._spawn(self._annotate())

    async def _annotate(self) -> None:
        patch = {"metadata": {"annotations": {WAKE_ANNOTATION: f"{time.time():.3f}"}}}
        try:
            await self.kube.patch("v1", "ConfigMap", self.options.namespace, self.configmap, patch)
        except KubeError as exc:
            log.warning("could not wake the operator (ConfigMap %s): %s", self.configmap, exc)
            self._woke = -math.inf  # try again with the next request that waits
            return
        log.info("no ready replica and a request waits: woke the operator")


# -- the control port -------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ControlServer:
    """The router pod's control port: a few low-rate GETs, one per connection."""

    def __init__(self, pod: RouterPod, token: str | None) -> None:
        self.pod = pod
        self._token = None if token is None else token.encode()
        self._open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= CONTROL_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            try:
                async with asyncio.timeout(CONTROL_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
                data, status, extra = self.answer(head)
            except asyncio.LimitOverrunError:
                data, status, extra = b'{"error": "request head too large"}', 431, []
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            lines = [
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                "content-type: application/json",
                f"content-length: {len(data)}",
                "connection: close",
                *extra,
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._open -= 1
            writer.close()

    def answer(self, head: bytes) -> tuple[bytes, int, list[str]]:
        """The JSON body, status and extra header lines for one request head."""
        try:
            method, path, query, headers = _parse_head(head)
            body = self._route(method, path, query, headers)
            return json.dumps(body, allow_nan=False).encode(), 200, []
        except _BadRequest as exc:
            extra = (
                ['www-authenticate: Bearer realm="pilothouse-router"'] if exc.status == 401 else []
            )
            return json.dumps({"error": exc.message}).encode(), exc.status, extra
        except Exception:
            # a bug of ours: the operator gets an answer, and the log says what it was
            log.exception("control request failed: %r", head[:200])
            return json.dumps({"error": "internal error"}).encode(), 500, []

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> dict[str, Any]:
        if path not in ("/healthz", "/readyz", "/control/load", "/control/responses"):
            raise _BadRequest(404, f"no such path: {path}")
        if method != "GET":
            raise _BadRequest(405, f"{method} is not allowed here: only GET")
        if path == "/healthz":
            return {"status": "ok"}
        if path == "/readyz":
            waiting = self.pod.waiting_for()
            if waiting:
                raise _BadRequest(503, "not ready: " + ", ".join(waiting))
            return {"status": "ready"}
        self._authorize(headers.get("authorization", ""))
        since = _since(query)
        route = self.pod.route
        if path == "/control/load":
            return wire.encode_load(deployment_load(route, [], since))
        return wire.encode_responses(route_responses(route, since))

    def _authorize(self, given: str) -> None:
        if self._token is None:
            return
        scheme, _, credentials = given.strip().partition(" ")
        # compared in constant time whatever was given (an empty or other scheme too)
        matches = hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), self._token)
        if not (matches and scheme.lower() == "bearer"):
            raise _BadRequest(401, "a valid Authorization: Bearer token is required")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, list[str]], dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError as exc:
        raise _BadRequest(400, "malformed request line") from exc
    if not version.startswith("HTTP/1."):
        raise _BadRequest(400, f"unsupported protocol {version}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    parts = urlsplit(target)
    return method, parts.path, parse_qs(parts.query, keep_blank_values=True), headers


def _since(query: dict[str, list[str]]) -> float:
    values = query.get("since", [])
    if len(values) != 1:
        raise _BadRequest(400, "give since=T once (wall-clock seconds)")
    try:
        since = float(values[0])
    except ValueError:
        raise _BadRequest(400, f"since is not a number: {values[0]!r}") from None
    if not math.isfinite(since):
        raise _BadRequest(400, f"since must be a finite number, got {values[0]!r}")
    return since


# -- the process ----------------------------------------------------------------------------------


async def serve(
    options: RouterPodOptions, kubeconfig: str | None = None, context: str | None = None
) -> None:
    """Run a router pod until SIGTERM or SIGINT."""
    from pilothouse.runtime.kube.client import connect

    kube = await connect(kubeconfig=kubeconfig, context=context, namespace=options.namespace)
    try:
        pod = RouterPod(kube, options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pod.stopping.set)
        await pod.run()
    finally:
        await kube.close()
