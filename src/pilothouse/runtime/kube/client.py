"""A Kubernetes API client on plain dicts: the JSON the API server speaks, in and out.

kubernetes_asyncio supplies the connection (kubeconfig and in-cluster loading, TLS, client
certificates, bearer tokens and their refresh hooks, its aiohttp session); the requests are
made here, so that every kind is handled the same way (no generated model classes to
convert) and a watch is read as the stream it is. `connect` finds the cluster as kubectl
and client-go do: a kubeconfig (argument, $KUBECONFIG, ~/.kube/config), else the pod's
service account, whose bound token rotates and is therefore re-read from its file.

Every non-2xx answer raises `KubeError` with the Status body's reason and message; an
answer that never came (refused, reset, timed out) raises its subclass `KubeUnreachable`
(status 0), so that ``except KubeError`` covers "the API server did not do it".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.config_exception import ConfigException

from pilothouse import __version__
from pilothouse.spec.resources import API_VERSION, KINDS

log = logging.getLogger("pilothouse.kube")

Obj = dict[str, Any]
Objs = list[Obj]

USER_AGENT = f"pilothouse/{__version__}"
#: items per page of a list (limit + continue), as client-go's pager
LIST_PAGE_SIZE = 500
#: where a pod finds its service account (PILOTHOUSE_SERVICEACCOUNT_DIR overrides it)
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: the in-cluster token is re-read this often (bound tokens rotate; kubelet refreshes the
#: file well before expiry, client-go re-reads it every minute)
TOKEN_REREAD_SECONDS = 30.0
#: a watch's socket may stay silent this long past the server's own timeoutSeconds
WATCH_READ_GRACE = 30.0
#: retries of a request answered 429 (API priority and fairness), honouring Retry-After
THROTTLE_RETRIES = 3
MAX_RETRY_AFTER = 10.0

#: CPython before 3.12.8 (and 3.13.0) leaks the socket of an SSL connection closed while
#: its shutdown is pending (python/cpython#118960); aiohttp then aborts them itself
SSL_CLEANUP_NEEDED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON


@dataclass(frozen=True)
class KindInfo:
    plural: str
    namespaced: bool


#: (apiVersion, kind) -> its resource; `register_kind` adds more
KIND_TABLE: dict[tuple[str, str], KindInfo] = {
    ("v1", "Pod"): KindInfo("pods", True),
    ("v1", "Service"): KindInfo("services", True),
    ("v1", "ConfigMap"): KindInfo("configmaps", True),
    ("v1", "Secret"): KindInfo("secrets", True),
    ("v1", "Event"): KindInfo("events", True),
    ("v1", "ServiceAccount"): KindInfo("serviceaccounts", True),
    ("v1", "Namespace"): KindInfo("namespaces", False),
    ("v1", "Node"): KindInfo("nodes", False),
    ("apps/v1", "Deployment"): KindInfo("deployments", True),
    ("apps/v1", "ReplicaSet"): KindInfo("replicasets", True),
    ("policy/v1", "PodDisruptionBudget"): KindInfo("poddisruptionbudgets", True),
    ("discovery.k8s.io/v1", "EndpointSlice"): KindInfo("endpointslices", True),
    ("coordination.k8s.io/v1", "Lease"): KindInfo("leases", True),
    ("scheduling.k8s.io/v1", "PriorityClass"): KindInfo("priorityclasses", False),
    ("events.k8s.io/v1", "Event"): KindInfo("events", True),
    ("rbac.authorization.k8s.io/v1", "Role"): KindInfo("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): KindInfo("rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): KindInfo("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): KindInfo("clusterrolebindings", False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): KindInfo(
        "customresourcedefinitions", False
    ),
    # ours (spec/resources.py), all namespaced: ModelDeployment, TrainingJob, Queue
    **{(API_VERSION, cls.KIND): KindInfo(cls.PLURAL, True) for cls in KINDS.values()},
}


def register_kind(api_version: str, kind: str, plural: str, namespaced: bool) -> None:
    """Teach `Kube.path` one more kind (the table holds those pilothouse uses)."""
    KIND_TABLE[(api_version, kind)] = KindInfo(plural, namespaced)


def kind_info(api_version: str, kind: str) -> KindInfo:
    try:
        return KIND_TABLE[(api_version, kind)]
    except KeyError:
        raise ValueError(
            f"unknown kind {kind!r} of {api_version!r} (register_kind teaches another)"
        ) from None


class KubeError(Exception):
    """A non-2xx answer: ``status`` is the HTTP status, ``reason`` and ``message`` come from
    the Status body when there is one (``reason`` e.g. NotFound, AlreadyExists, Conflict,
    Expired), else from the HTTP reason phrase and the body's text."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


class KubeUnreachable(KubeError):
    """No answer: the connection failed, was reset, or the request timed out (status 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "Unreachable", message)


class KubeConfigError(RuntimeError):
    """No usable cluster configuration: says what was tried."""


def loads(data: bytes) -> Any:
    """JSON as the API server sends it: orjson, or the standard library for what orjson
    refuses (an integer beyond 64 bits in a custom resource)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _error(status: int, phrase: str | None, data: bytes) -> KubeError:
    body: Any = None
    with contextlib.suppress(ValueError):
        body = loads(data) if data else None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return KubeError(
            int(body.get("code") or status),
            str(body.get("reason") or phrase or ""),
            str(body.get("message") or ""),
            body,
        )
    text = data.decode("utf-8", "replace").strip()[:1000]
    return KubeError(status, phrase or "", text, body)


def _retry_after(headers: Any) -> float:
    try:
        return min(max(float(headers.get("Retry-After", "1")), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0


def _fill(items: Objs, api_version: str, kind: str) -> Objs:
    for item in items:
        item.setdefault("apiVersion", api_version)
        item.setdefault("kind", kind)
    return items


class Kube:
    """One API server, one default namespace (``namespace``: the one ``connect`` found).

    ``api`` is the kubernetes_asyncio ApiClient underneath, for the generated API classes
    when one is wanted (its token refresh hooks apply to both)."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str = "default",
        *,
        reauthenticate: Callable[[], bool] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        #: on a 401: re-read the credentials; True if they changed (then the request is retried)
        self._reauthenticate = reauthenticate

    # -- paths ------------------------------------------------------------------------

    def path(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of a kind's collection (``name`` None; all namespaces when a
        namespaced kind gets no ``namespace``), of one object, or of its subresource.
        Cluster-scoped kinds ignore ``namespace``; an unknown kind is a ValueError."""
        info = kind_info(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if info.namespaced and namespace:
            prefix += f"/namespaces/{quote(namespace, safe='')}"
        path = f"{prefix}/{info.plural}"
        if name is not None:
            if not name:
                raise ValueError(f"{kind}: empty name")
            path += f"/{quote(name, safe='')}"
        if subresource is not None:
            if name is None:
                raise ValueError(f"{kind}: a subresource ({subresource}) needs a name")
            path += f"/{subresource}"
        return path

    def namespaced(self, api_version: str, kind: str) -> bool:
        return kind_info(api_version, kind).namespaced

    def _object_path(self, obj: Obj, subresource: str | None = None) -> str:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        meta = obj.get("metadata") or {}
        if not api_version or not kind or not meta.get("name"):
            raise ValueError("an object needs apiVersion, kind and metadata.name")
        return self.path(
            api_version, kind, meta.get("namespace") or self.namespace, meta["name"], subresource
        )

    # -- requests ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str | None,
        limit: aiohttp.ClientTimeout,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        config = self.api.configuration
        headers = {"Accept": "application/json, */*", "User-Agent": USER_AGENT}
        # auth_settings runs the configuration's refresh hook (rotated tokens, exec plugins)
        bearer = (await config.auth_settings()).get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = bearer["value"]
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            headers["Content-Type"] = content_type or "application/json"
        url = f"{config.host}{path}"
        if query:
            url += "?" + urlencode(query)
        extra: dict[str, Any] = {}
        if config.proxy:
            extra["proxy"] = config.proxy
        if config.tls_server_name:
            extra["server_hostname"] = config.tls_server_name
        session: aiohttp.ClientSession = self.api.rest_client.pool_manager
        try:
            async with session.request(
                method, url, headers=headers, data=data, timeout=limit, **extra
            ) as response:
                yield response
        except TimeoutError as exc:
            raise KubeUnreachable(f"{method} {path}: timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = 30,  # noqa: ASYNC109 - the whole request's, passed to aiohttp
    ) -> Any:
        """One request; the decoded JSON answer (None when empty, text when the answer is
        not JSON, e.g. a pod's log). A non-2xx answer raises
        KubeError; 429 is retried after its Retry-After (the server did nothing), a 401
        once after re-reading a rotated token."""
        limit = aiohttp.ClientTimeout(total=timeout)
        throttled = 0
        reauthenticated = False
        while True:
            # (a failure while reading the body is turned into KubeUnreachable by _open)
            async with self._open(method, path, query, body, content_type, limit) as response:
                data = await response.read()
                status = response.status
                if 200 <= status < 300:
                    if not data:
                        return None
                    if "json" in response.content_type:
                        return loads(data)
                    return data.decode(response.charset or "utf-8", "replace")
                if status == 429 and throttled < THROTTLE_RETRIES:
                    throttled += 1
                    delay = _retry_after(response.headers)
                elif status == 401 and not reauthenticated and self._reauthenticate is not None:
                    reauthenticated = True
                    if not self._reauthenticate():
                        raise _error(status, response.reason, data)
                    delay = 0.0
                else:
                    raise _error(status, response.reason, data)
            log.debug("%s %s: %s; retrying in %.1fs", method, path, status, delay)
            await asyncio.sleep(delay)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> Obj | None:
        """The object, or None when there is none (404)."""
        try:
            obj: Obj = await self.request("GET", self.path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = LIST_PAGE_SIZE,
    ) -> Objs:
        """Every object (all namespaces when ``namespace`` is None), page by page, each with
        apiVersion and kind filled in."""
        items, _ = await self.list_with_version(
            api_version,
            kind,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
        )
        return items

    async def list_with_version(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = LIST_PAGE_SIZE,
    ) -> tuple[Objs, str]:
        """`list`, and the list's resourceVersion (where a watch resumes from). A consistent
        read: every page is of the snapshot of the first; if the snapshot expired between
        pages (410), the list starts over in one piece, as client-go's pager does."""
        path = self.path(api_version, kind, namespace)
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: Objs = []
        page = {**query, "limit": str(limit)} if limit > 0 else dict(query)
        while True:
            try:
                answer = await self.request("GET", path, query=page)
            except KubeError as exc:
                if exc.status == 410 and "continue" in page:
                    log.info("%s: the list's snapshot expired between pages; listing at once", path)
                    items, page = [], dict(query)
                    continue
                raise
            items.extend(answer.get("items") or [])
            meta = answer.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return _fill(items, api_version, kind), str(meta.get("resourceVersion") or "")
            page = {**query, "limit": str(limit), "continue": token}

    async def create(self, obj: Obj, *, field_manager: str | None = None) -> Obj:
        """POST: a new object (in metadata.namespace, else this client's namespace); 409
        AlreadyExists if the name is taken."""
        meta = obj.get("metadata") or {}
        info = kind_info(obj["apiVersion"], obj["kind"])
        namespace = (meta.get("namespace") or self.namespace) if info.namespaced else None
        query = {"fieldManager": field_manager} if field_manager else None
        created: Obj = await self.request(
            "POST", self.path(obj["apiVersion"], obj["kind"], namespace), query=query, body=obj
        )
        return created

    async def replace(self, obj: Obj, *, subresource: str | None = None) -> Obj:
        """PUT: the whole object; with metadata.resourceVersion set, a 409 Conflict if it
        changed since (optimistic concurrency)."""
        replaced: Obj = await self.request("PUT", self._object_path(obj, subresource), body=obj)
        return replaced

    async def apply(
        self,
        obj: Obj,
        *,
        field_manager: str = "pilothouse",
        force: bool = True,
        subresource: str | None = None,
    ) -> Obj:
        """Server-side apply: ``obj`` is this manager's whole intent for the fields it sets.
        Without ``force``, fields another manager owns with another value are a 409
        Conflict; with it, they change hands."""
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        applied: Obj = await self.request(
            "PATCH",
            self._object_path(obj, subresource),
            query=query,
            body=obj,
            content_type=APPLY_PATCH,
        )
        return applied

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        """``patch_type``: "merge" (RFC 7386), "json" (RFC 6902, a list of operations) or
        "strategic" (built-in kinds only)."""
        if patch_type not in PATCH_TYPES:
            raise ValueError(f"patch_type {patch_type!r}: one of {', '.join(PATCH_TYPES)}")
        patched: Obj = await self.request(
            "PATCH",
            self.path(api_version, kind, namespace, name, subresource),
            body=patch,
            content_type=PATCH_TYPES[patch_type],
        )
        return patched

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        grace_seconds: int | None = None,
    ) -> bool:
        """Ask for the deletion; False when the object was already gone."""
        options: Obj = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            await self.request(
                "DELETE", self.path(api_version, kind, namespace, name), body=options
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        """The changes after ``resource_version`` of the collection at ``path``, as
        (ADDED|MODIFIED|DELETED|BOOKMARK, object) until the server ends the watch (after
        ``timeout_seconds``). A resourceVersion too old for the server (compacted, or out of
        its watch cache's window) raises KubeError 410 (reason Expired or Gone): list again.
        Close the iterator (``contextlib.aclosing``) to end the watch early."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if bookmarks:
            query["allowWatchBookmarks"] = "true"
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        limit = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=timeout_seconds + WATCH_READ_GRACE
        )
        async with self._open("GET", path, query, None, None, limit) as response:
            if not 200 <= response.status < 300:
                raise _error(response.status, response.reason, await response.read())
            buffer = bytearray()
            # chunks, not readline: an event is one line of any length (a large object)
            async for chunk in response.content.iter_any():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line = bytes(buffer[start:end])
                    start = end + 1
                    if line.strip():
                        yield _event(line)
                del buffer[:start]
            if bytes(buffer).strip():
                yield _event(bytes(buffer))

    async def close(self) -> None:
        await self.api.close()
        await asyncio.sleep(0)  # the aborted connections' sockets close on the next turn


def _event(line: bytes) -> tuple[str, Obj]:
    event = loads(line)
    type_, obj = str(event.get("type") or ""), event.get("object") or {}
    if type_ == "ERROR":
        status = int(obj.get("code") or 500)
        raise KubeError(status, str(obj.get("reason") or ""), str(obj.get("message") or ""), obj)
    return type_, obj


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until they ended. A cancellation of the caller meanwhile
    propagates (``suppress(CancelledError)`` around ``await task`` would swallow it, and
    Python 3.11's ``wait_for`` can lose one); what a task raised instead is logged."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("%r ended with an error", task, exc_info=task.exception())


# --- finding the cluster -------------------------------------------------------------------


class _ServiceAccountToken:
    """The pod's bound token, re-read from its file every TOKEN_REREAD_SECONDS (and at once
    after a 401), set as the configuration's bearer token by its refresh hook."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = ""
        self.read_at = 0.0

    def read(self) -> bool:
        """Read the file; True if the token changed."""
        token = self.path.read_text().strip()
        if not token:
            raise KubeConfigError(f"the service account token file {self.path} is empty")
        self.read_at = time.monotonic()
        changed, self.token = token != self.token, token
        return changed

    def reread(self) -> bool:
        try:
            return self.read()
        except (OSError, KubeConfigError) as exc:
            log.warning("could not re-read the service account token: %s", exc)
            return False

    def hook(self, config: Any, *_: Any) -> None:
        if time.monotonic() - self.read_at >= TOKEN_REREAD_SECONDS:
            self.reread()
        config.api_key["BearerToken"] = f"Bearer {self.token}"


def _host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


async def _from_kubeconfig(files: str, context: str | None) -> tuple[Any, str | None]:
    config = type.__call__(Configuration)
    try:
        loader = await kube_config.load_kube_config(
            config_file=files, context=context, client_configuration=config, persist_config=False
        )
    except (ConfigException, OSError, KeyError, TypeError, ValueError, AssertionError) as exc:
        where = f"context {context!r} of " if context else ""
        raise KubeConfigError(f"cannot use {where}kubeconfig {files}: {exc}") from exc
    current = loader.current_context or {}
    namespace = (current.get("context") or {}).get("namespace")
    user = getattr(loader, "_user", None)
    if user is not None and "exec" in user and hasattr(loader, "token"):
        # an exec plugin's token expires: run the plugin again when it has (it caches)
        async def refresh(cfg: Any, *_: Any) -> None:
            await loader.load_from_exec_plugin()
            cfg.api_key["BearerToken"] = loader.token

        config.refresh_api_key_hook = refresh
    return config, namespace


def _in_cluster(directory: Path) -> tuple[Any, _ServiceAccountToken]:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    token = _ServiceAccountToken(directory / "token")
    try:
        token.read()
    except OSError as exc:
        raise KubeConfigError(f"in-cluster: cannot read the token {token.path}: {exc}") from exc
    ca = directory / "ca.crt"
    if not _read(ca):
        raise KubeConfigError(f"in-cluster: no CA certificate at {ca}")
    config = type.__call__(Configuration)
    config.host = f"https://{_host_port(host, port)}"
    config.ssl_ca_cert = str(ca)
    config.api_key["BearerToken"] = f"Bearer {token.token}"
    config.refresh_api_key_hook = token.hook
    return config, token


def _ssl_context(config: Any) -> ssl.SSLContext:
    """The TLS settings of the configuration, as kubernetes_asyncio's REST client reads them."""
    context = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        context.load_cert_chain(config.cert_file, keyfile=config.key_file)
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.disable_strict_ssl_verification:
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


async def _api_client(config: Any) -> ApiClient:
    """kubernetes_asyncio's ApiClient, on an aiohttp session of our own: TLS connections that
    end early (a watch closed mid-stream) are aborted when the session closes, not left to an
    SSL shutdown that outlives the loop (CPython before 3.12.8 leaks them: aiohttp's
    enable_cleanup_closed); and, as Go's net/http does, a loopback API server is never reached
    through a proxy from the environment (aiohttp would send it to HTTPS_PROXY unless
    NO_PROXY names it)."""
    api = ApiClient(configuration=config)
    given: aiohttp.ClientSession = api.rest_client.pool_manager
    connector = aiohttp.TCPConnector(
        limit=config.connection_pool_maxsize,
        ssl=_ssl_context(config),
        enable_cleanup_closed=SSL_CLEANUP_NEEDED,
    )
    api.rest_client.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=not _loopback(config.host), read_bufsize=2**21
    )
    await given.close()
    return api


def _kubeconfig_files(kubeconfig: str | None) -> tuple[str | None, list[str]]:
    """The kubeconfig file(s) to use, if any, and what was looked for in vain."""

    def found(paths: str) -> bool:
        return any(os.path.exists(os.path.expanduser(p)) for p in paths.split(os.pathsep) if p)

    if kubeconfig:
        if not found(kubeconfig):
            raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
        return kubeconfig, []
    listed = os.environ.get("KUBECONFIG")
    if listed:  # as kubectl: when set, ~/.kube/config is not read
        return (listed, []) if found(listed) else (None, [f"$KUBECONFIG={listed} (no such file)"])
    default = Path("~/.kube/config").expanduser()
    return (str(default), []) if default.exists() else (None, [f"{default} (no such file)"])


async def connect(
    kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
) -> Kube:
    """The cluster, as kubectl finds it: ``kubeconfig`` (a path, or several joined with
    ":"), else $KUBECONFIG, else ~/.kube/config if it exists, else in-cluster (the pod's
    service account in $PILOTHOUSE_SERVICEACCOUNT_DIR, default SERVICEACCOUNT_DIR, and
    KUBERNETES_SERVICE_HOST/PORT). The namespace: ``namespace``, else the kubeconfig
    context's, else the service account's namespace file, else "default"."""
    directory = Path(os.environ.get("PILOTHOUSE_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    files, tried = _kubeconfig_files(kubeconfig)
    reauthenticate: Callable[[], bool] | None = None
    context_namespace: str | None = None
    if files is not None:
        config, context_namespace = await _from_kubeconfig(files, context)
    elif os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("KUBERNETES_SERVICE_PORT"):
        config, token = _in_cluster(directory)
        reauthenticate = token.reread
    else:
        tried.append("in-cluster (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT not set)")
        raise KubeConfigError(
            "no Kubernetes cluster configured; tried: "
            + "; ".join(tried)
            + ". Pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account."
        )
    chosen = namespace or context_namespace or _read(directory / "namespace") or "default"
    return Kube(await _api_client(config), chosen, reauthenticate=reauthenticate)


__all__ = [
    "KIND_TABLE",
    "LIST_PAGE_SIZE",
    "Kube",
    "KubeConfigError",
    "KubeError",
    "KubeUnreachable",
    "cancel_and_wait",
    "connect",
    "kind_info",
    "register_kind",
]
