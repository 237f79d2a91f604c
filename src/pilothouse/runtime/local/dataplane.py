"""LocalDataPlane: the data-plane port with the embedded router.

Weights, mirroring and limits go to the deployment's route; its endpoints (the ready
replicas) are kept by ``LocalWorkload``, as router pods on Kubernetes would follow the
revisions' EndpointSlices. Measurements come from the router's per-revision buckets, the
replicas' CPU time and their ``/metrics``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pilothouse.ports.dataplane import DeploymentLoad, Responses, Traffic
from pilothouse.runtime.local.runtime import LocalRuntime
from pilothouse.store.sqlite import NotFound, Store

DEPLOYMENT = "ModelDeployment"


class LocalDataPlane:
    def __init__(self, runtime: LocalRuntime, store: Store) -> None:
        self.runtime = runtime
        self.store = store

    def _previous_port(self, deployment: str) -> int:
        """The port the deployment's endpoint had (kept across control-plane restarts, so
        clients need no new address)."""
        try:
            url = self.store.get(DEPLOYMENT, deployment)["status"].get("url")
        except NotFound:
            return 0
        if not isinstance(url, str):
            return 0
        try:
            return urlsplit(url).port or 0
        except ValueError:
            return 0

    async def set_traffic(self, deployment: str, traffic: Traffic) -> str:
        port = 0 if self.runtime.router.route(deployment) else self._previous_port(deployment)
        return await self.runtime.set_policy(deployment, traffic, port)

    async def remove(self, deployment: str) -> None:
        await self.runtime.router.remove(deployment)

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        return await self.runtime.load(deployment, since)

    async def responses(self, deployment: str, since: float) -> Responses:
        return await self.runtime.responses(deployment, since)

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        return await self.runtime.scrape(deployment, revision)
