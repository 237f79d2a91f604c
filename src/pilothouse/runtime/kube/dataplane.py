"""KubeDataPlane: the data-plane port over router pods.

Each ModelDeployment gets its own router: a ConfigMap with the traffic the controllers
set, a Deployment of router pods (which watch that ConfigMap and the revisions' pods and
EndpointSlices themselves), a PDB and the Service that is the deployment's URL. What the
routers measured is read from each ready router pod's control port (bearer token from the
Secret ``pilothouse-router-control``, made once per namespace) and merged; a replica's
``/metrics`` is read from the pod itself.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from pilothouse.ports.dataplane import DeploymentLoad, Responses, Traffic
from pilothouse.runtime.kube import wire
from pilothouse.runtime.kube.children import Applier, controller_uid
from pilothouse.runtime.kube.client import Kube, KubeError
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.objects import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    REPLICA_PORT,
    REVISION_LABEL,
    ROUTER_CONTROL_PORT,
    ROUTER_SECRET,
    PodDefaults,
    router_name,
    router_objects,
    service_name,
)
from pilothouse.runtime.kube.workload import FIELD_MANAGER, pod_ready

log = logging.getLogger("pilothouse.operator.dataplane")

#: a router or replica that does not answer this fast fails this pass's reading
READ_TIMEOUT = 2.0
T = TypeVar("T")


class RoutersUnreadable(RuntimeError):
    """Some ready router pods did not say what they measured: deciding on the others'
    numbers alone would read a loaded deployment as idle (and scale it down)."""


def _http_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


class KubeDataPlane:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        owners: Informer,
        pods: Informer,
        defaults: PodDefaults,
        *,
        deployments: Informer | None = None,
        configmaps: Informer | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.owners = owners
        self.pods = pods
        self.defaults = defaults
        watched = {"Deployment": deployments, "ConfigMap": configmaps}
        self.applier = Applier(
            kube, FIELD_MANAGER, {k: v for k, v in watched.items() if v is not None}
        )
        self._token: str | None = None
        self._http = httpx.AsyncClient(timeout=READ_TIMEOUT, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def token(self) -> str:
        """The routers' control token: the namespace's Secret, made when missing (read again
        after a router refused it: the Secret was replaced)."""
        if self._token is not None:
            return self._token
        secret = await self.kube.get("v1", "Secret", self.namespace, ROUTER_SECRET)
        if secret is None:
            token = secrets.token_urlsafe(32)
            try:
                await self.kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": ROUTER_SECRET,
                            "namespace": self.namespace,
                            "labels": {"app.kubernetes.io/managed-by": "pilothouse"},
                        },
                        "type": "Opaque",
                        "data": {"token": base64.b64encode(token.encode()).decode()},
                    }
                )
            except KubeError as exc:
                if exc.status != 409:  # another operator made it first: read theirs
                    raise
                secret = await self.kube.get("v1", "Secret", self.namespace, ROUTER_SECRET)
            else:
                self._token = token
                return token
        encoded = ((secret or {}).get("data") or {}).get("token")
        if not encoded:
            raise RuntimeError(
                f"the Secret {self.namespace}/{ROUTER_SECRET} has no 'token': delete it and"
                " the operator makes a new one"
            )
        self._token = base64.b64decode(encoded).decode()
        return self._token

    async def set_traffic(self, deployment: str, traffic: Traffic) -> str:
        owner = self.owners.get(deployment, self.namespace)
        url = f"http://{service_name(deployment)}.{self.namespace}.svc"
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return url
        await self.token()
        for obj in router_objects(owner, wire.encode_traffic(traffic), self.defaults):
            await self.applier.apply(obj)
        return url

    async def remove(self, deployment: str) -> None:
        name = router_name(deployment)
        for api_version, kind, obj_name in (
            ("apps/v1", "Deployment", name),
            ("policy/v1", "PodDisruptionBudget", name),
            ("v1", "Service", service_name(deployment)),
            ("v1", "ConfigMap", name),
        ):
            self.applier.forget(kind, obj_name)
            owned = await self.kube.get(api_version, kind, self.namespace, obj_name)
            if owned is None or controller_uid(owned) is None:
                continue  # gone, or never ours (see children.py)
            try:
                await self.kube.delete(api_version, kind, self.namespace, obj_name)
            except KubeError as exc:
                if exc.status != 404:
                    raise

    def _ready_pods(
        self, deployment: str, component: str, revision: str | None = None
    ) -> list[dict[str, Any]]:
        want = {DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: component}
        if revision is not None:
            want[REVISION_LABEL] = revision
        return [
            pod
            for pod in self.pods.select(want)
            if not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("podIP")
            and pod_ready(pod)
        ]

    async def _control(
        self, deployment: str, path: str, since: float, decode: Callable[[Any], T]
    ) -> list[T]:
        """What every ready router pod answers; RoutersUnreadable when one did not."""
        token = await self.token()
        routers = self._ready_pods(deployment, "router")

        async def read(pod: dict[str, Any]) -> T:
            ip = _http_host(pod["status"]["podIP"])
            response = await self._http.get(
                f"http://{ip}:{ROUTER_CONTROL_PORT}{path}",
                params={"since": repr(since)},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 401:
                self._token = None  # the Secret was replaced: read it again next time
            response.raise_for_status()
            return decode(response.json())

        results = await asyncio.gather(*(read(p) for p in routers), return_exceptions=True)
        out: list[T] = []
        failed: list[str] = []
        for pod, result in zip(routers, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(f"{pod['metadata']['name']}: {type(result).__name__}: {result}")
            else:
                out.append(result)
        if failed:
            raise RoutersUnreadable(
                f"{deployment}: {len(failed)} of {len(routers)} router(s) did not answer"
                f" {path}: " + "; ".join(failed)
            )
        return out

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        return wire.merge_loads(
            await self._control(deployment, "/control/load", since, wire.decode_load)
        )

    async def responses(self, deployment: str, since: float) -> Responses:
        answers = await self._control(
            deployment, "/control/responses", since, wire.decode_responses
        )
        samples = sorted((s for a in answers for s in a.samples), key=lambda s: s.time)
        mirrors = sorted((m for a in answers for m in a.mirrors), key=lambda m: m.time)
        return Responses(samples, mirrors)

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        pods = self._ready_pods(deployment, "replica", revision)

        async def read(pod: dict[str, Any]) -> str:
            ip = _http_host(pod["status"]["podIP"])
            response = await self._http.get(f"http://{ip}:{REPLICA_PORT}/metrics")
            response.raise_for_status()
            return response.text

        results = await asyncio.gather(*(read(p) for p in pods), return_exceptions=True)
        return [r for r in results if isinstance(r, str)]
