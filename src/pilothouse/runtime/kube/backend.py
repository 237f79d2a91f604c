"""KubeBackend: the three ports over one namespace of a Kubernetes cluster.

It owns the informers every port reads from (ModelDeployments, the operator's
Deployments and pods, the routers' ConfigMaps) and turns their events into wake-ups of
the owning ModelDeployment's controller, as controller-runtime's ``Owns``/``Watches`` do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilothouse.runtime.kube.client import Kube
from pilothouse.runtime.kube.dataplane import KubeDataPlane
from pilothouse.runtime.kube.events import EventRecorder
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.objects import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    GROUP_VERSION,
    MANAGED_BY,
    PodDefaults,
)
from pilothouse.runtime.kube.state import KubeState
from pilothouse.runtime.kube.workload import KubeWorkload

KIND = "ModelDeployment"
#: the level-based safety net: every object is looked at again this often
RESYNC = 30.0


class KubeBackend:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        defaults: PodDefaults,
        *,
        identity: str,
        cache: Path | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        managed = f"{MANAGED_BY}=pilothouse"
        self.owners = Informer(kube, GROUP_VERSION, KIND, namespace, resync=RESYNC)
        self.deployments = Informer(
            kube, "apps/v1", "Deployment", namespace, label_selector=managed, resync=RESYNC
        )
        self.pods = Informer(kube, "v1", "Pod", namespace, label_selector=managed, resync=RESYNC)
        self.configmaps = Informer(
            kube,
            "v1",
            "ConfigMap",
            namespace,
            label_selector=f"{managed},{COMPONENT_LABEL}=router",
            resync=RESYNC,
        )
        self.informers = [self.owners, self.deployments, self.pods, self.configmaps]
        self.recorder = EventRecorder(kube, "operator", identity)
        self.state = KubeState(
            kube, namespace, {KIND: self.owners}, self.recorder, defaults.registry, cache
        )
        self.workload = KubeWorkload(
            kube, namespace, self.owners, self.deployments, self.pods, defaults
        )
        self.dataplane = KubeDataPlane(
            kube,
            namespace,
            self.owners,
            self.pods,
            defaults,
            deployments=self.deployments,
            configmaps=self.configmaps,
        )

    def on_change(self, wake: Callable[[str, str], None]) -> None:
        """Wake a ModelDeployment's controller when it or one of its children changed."""

        def owner(_: str, obj: dict[str, Any]) -> None:
            wake(KIND, obj["metadata"]["name"])

        def child(_: str, obj: dict[str, Any]) -> None:
            name = (obj["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL)
            if name:
                wake(KIND, name)

        self.owners.add_handler(owner)
        for informer in (self.deployments, self.pods, self.configmaps):
            informer.add_handler(child)

    async def start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        await self.recorder.start()
        for informer in self.informers:
            await informer.start()
        await asyncio.gather(*(i.wait_synced(timeout) for i in self.informers))
        self.state.start()

    async def close(self, flush: bool = True) -> None:
        """Stop; ``flush``: first write what is pending (only while the lease is still
        held: a leader that lost it must not write after its successor started)."""
        if flush:
            await self.state.flush()
            await self.recorder.flush()
        await self.state.stop()
        await self.recorder.stop()
        for informer in self.informers:
            await informer.stop()
        await self.dataplane.close()
