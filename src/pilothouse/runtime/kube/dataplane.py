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
import hashlib
import json
import logging
import secrets
from typing import Any

import httpx

from pilothouse.ports.dataplane import DeploymentLoad, Responses, Traffic
from pilothouse.runtime.kube import wire
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
)
from pilothouse.runtime.kube.workload import FIELD_MANAGER, pod_ready

log = logging.getLogger("pilothouse.operator.dataplane")

#: a router or replica that does not answer this fast is left out of this pass
READ_TIMEOUT = 2.0


class KubeDataPlane:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        owners: Informer,
        pods: Informer,
        defaults: PodDefaults,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.owners = owners
        self.pods = pods
        self.defaults = defaults
        self._applied: dict[tuple[str, str], str] = {}
        self._token: str | None = None
        self._http = httpx.AsyncClient(timeout=READ_TIMEOUT, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def token(self) -> str:
        """The routers' control token: the namespace's Secret, made when missing."""
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
                if exc.status != 409:
                    raise
                secret = await self.kube.get("v1", "Secret", self.namespace, ROUTER_SECRET)
            else:
                self._token = token
                return token
        if secret is None:
            raise RuntimeError(f"the Secret {ROUTER_SECRET} vanished while being read")
        self._token = base64.b64decode(secret["data"]["token"]).decode()
        return self._token

    async def set_traffic(self, deployment: str, traffic: Traffic) -> str:
        owner = self.owners.get(deployment, self.namespace)
        url = f"http://{deployment}.{self.namespace}.svc"
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return url
        await self.token()
        for obj in router_objects(owner, wire.encode_traffic(traffic), self.defaults):
            key = (obj["kind"], obj["metadata"]["name"])
            digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
            if self._applied.get(key) == digest:
                continue
            await self.kube.apply(obj, field_manager=FIELD_MANAGER, force=True)
            self._applied[key] = digest
        return url

    async def remove(self, deployment: str) -> None:
        name = router_name(deployment)
        for api_version, kind, obj_name in (
            ("apps/v1", "Deployment", name),
            ("policy/v1", "PodDisruptionBudget", name),
            ("v1", "Service", deployment),
            ("v1", "ConfigMap", name),
        ):
            self._applied.pop((kind, obj_name), None)
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

    async def _control(self, deployment: str, path: str, since: float) -> list[Any]:
        token = await self.token()
        routers = self._ready_pods(deployment, "router")

        async def read(pod: dict[str, Any]) -> Any:
            ip = pod["status"]["podIP"]
            response = await self._http.get(
                f"http://{ip}:{ROUTER_CONTROL_PORT}{path}",
                params={"since": repr(since)},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            return response.json()

        results = await asyncio.gather(*(read(p) for p in routers), return_exceptions=True)
        out = []
        for pod, result in zip(routers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "%s: router %s did not answer %s: %s",
                    deployment,
                    pod["metadata"]["name"],
                    path,
                    result,
                )
                continue
            out.append(result)
        return out

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        answers = await self._control(deployment, "/control/load", since)
        return wire.merge_loads([wire.decode_load(a) for a in answers])

    async def responses(self, deployment: str, since: float) -> Responses:
        answers = await self._control(deployment, "/control/responses", since)
        samples, mirrors = [], []
        for answer in answers:
            got = wire.decode_responses(answer)
            samples.extend(got.samples)
            mirrors.extend(got.mirrors)
        samples.sort(key=lambda s: s.time)
        mirrors.sort(key=lambda m: m.time)
        return Responses(samples, mirrors)

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        pods = self._ready_pods(deployment, "replica", revision)

        async def read(pod: dict[str, Any]) -> str:
            response = await self._http.get(
                f"http://{pod['status']['podIP']}:{REPLICA_PORT}/metrics"
            )
            response.raise_for_status()
            return response.text

        results = await asyncio.gather(*(read(p) for p in pods), return_exceptions=True)
        return [r for r in results if isinstance(r, str)]
