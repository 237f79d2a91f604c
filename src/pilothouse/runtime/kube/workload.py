"""KubeWorkload: the workload port over Deployments and pods.

Each revision of a ModelDeployment is a ``Deployment`` (with a PodDisruptionBudget and a
headless Service, so that its EndpointSlices list its pods). The template goes through
server-side apply (one field manager); the replica count goes through the ``scale``
subresource, as an autoscaler writes it. What runs is read from the informers' caches of
Deployments and pods: counts per revision, restarts, crash loops, why pods wait. Revisions
left out are deleted (their pods are drained: routers drop a terminating pod at once and
it keeps serving what it has in flight during its preStop pause).

Training gangs come with the second part of the operator: the gang methods say so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from pilothouse.ports.workload import (
    GangState,
    GangTemplate,
    QueueUsage,
    RevisionState,
    RevisionTarget,
)
from pilothouse.runtime.kube.children import Applier
from pilothouse.runtime.kube.client import Kube, KubeError
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.objects import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    REVISION_LABEL,
    PodDefaults,
    revision_deployment,
    revision_name,
    revision_pdb,
    revision_service,
)

log = logging.getLogger("pilothouse.operator.workload")

FIELD_MANAGER = "pilothouse-operator"
_GANGS_LATER = "TrainingJobs and Queues on Kubernetes come with the operator's part 2"


def _version(revision: str) -> tuple[int, str]:
    """``12-a1b2c3`` -> (12, ...): revisions made in the same second sort by version."""
    number, _, rest = revision.partition("-")
    return (int(number), rest) if number.isdigit() else (-1, revision)


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


class _Counts:
    def __init__(self, revision: str) -> None:
        self.revision = revision
        self.desired = 0
        self.ready = 0
        self.starting = 0
        self.pending = 0
        self.failed = 0
        self.restarts = 0
        self.crash_looping = False
        self.nodes: set[str] = set()
        self.reason = ""
        self.message = ""
        self.created = ""

    def note(self, reason: str, message: str) -> None:
        if not self.reason:
            self.reason, self.message = reason, message

    def add_pod(self, pod: dict[str, Any]) -> None:
        status = pod.get("status") or {}
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return  # terminating: routers have dropped it; it finishes what it has
        for cs in status.get("containerStatuses") or []:
            self.restarts += int(cs.get("restartCount") or 0)
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason == "CrashLoopBackOff":
                self.crash_looping = True
                last = (cs.get("lastState") or {}).get("terminated") or {}
                self.note(
                    "CrashLoopBackOff",
                    f"{meta['name']}: exited with code {last.get('exitCode', '?')}"
                    f" ({last.get('reason') or 'Error'}); restarts are backed off",
                )
            elif reason and reason not in ("ContainerCreating", "PodInitializing"):
                self.note(reason, f"{meta['name']}: {waiting.get('message') or reason}")
        phase = status.get("phase") or "Pending"
        if phase in ("Failed", "Succeeded"):
            self.failed += 1
            self.note("ReplicaFailed", f"{meta['name']}: {status.get('reason') or phase}")
            return
        scheduled = _condition(pod, "PodScheduled")
        if not (pod.get("spec") or {}).get("nodeName"):
            self.pending += 1
            if scheduled is not None and scheduled.get("status") == "False":
                self.note(
                    str(scheduled.get("reason") or "Unschedulable"),
                    str(scheduled.get("message") or "no node fits the replica"),
                )
            return
        if pod_ready(pod):
            self.ready += 1
            self.nodes.add(str(pod["spec"]["nodeName"]))
        else:
            self.starting += 1

    def state(self) -> RevisionState:
        return RevisionState(
            revision=self.revision,
            desired=self.desired,
            ready=self.ready,
            starting=self.starting,
            pending=self.pending,
            failed=self.failed,
            restarts=self.restarts,
            crash_looping=self.crash_looping,
            nodes=tuple(sorted(self.nodes)),
            reason="" if self.ready >= self.desired else self.reason,
            message="" if self.ready >= self.desired else self.message,
        )


class KubeWorkload:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        owners: Informer,
        deployments: Informer,
        pods: Informer,
        defaults: PodDefaults,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.owners = owners
        self.deployments = deployments
        self.pods = pods
        self.defaults = defaults
        self.applier = Applier(kube, FIELD_MANAGER, {"Deployment": deployments})

    def _mine(self, informer: Informer, deployment: str) -> list[dict[str, Any]]:
        return informer.select({DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: "replica"})

    async def apply_revisions(self, deployment: str, targets: dict[str, RevisionTarget]) -> None:
        owner = self.owners.get(deployment, self.namespace)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return
        for revision, target in targets.items():
            name = revision_name(deployment, revision)
            current = self.deployments.get(name, self.namespace)
            if current is None:
                obj = revision_deployment(
                    owner, target.template, revision, self.defaults, target.replicas
                )
                # created with its count (an apply without it would start one replica first)
                try:
                    await self.kube.create(obj, field_manager=FIELD_MANAGER)
                except KubeError as exc:
                    if exc.status != 409:
                        raise
                    # the name is taken (or our cache lags): never over someone else's
                    await self.applier.check_ours(obj)
                else:
                    log.info(
                        "%s: revision %s created with %d replica(s)",
                        deployment,
                        revision,
                        target.replicas,
                    )
                    self.applier.sent(
                        "Deployment",
                        name,
                        revision_deployment(owner, target.template, revision, self.defaults, None),
                    )
            else:
                await self.applier.apply(
                    revision_deployment(owner, target.template, revision, self.defaults, None)
                )
                if int((current.get("spec") or {}).get("replicas", 1)) != target.replicas:
                    await self.kube.patch(
                        "apps/v1",
                        "Deployment",
                        self.namespace,
                        name,
                        {"spec": {"replicas": target.replicas}},
                        subresource="scale",
                    )
                    log.info("%s: revision %s scaled to %d", deployment, revision, target.replicas)
            await self.applier.apply(revision_pdb(owner, deployment, revision))
            await self.applier.apply(revision_service(owner, deployment, revision))
        wanted = {revision_name(deployment, r) for r in targets}
        for obj in self._mine(self.deployments, deployment):
            name = obj["metadata"]["name"]
            if name not in wanted and not obj["metadata"].get("deletionTimestamp"):
                await self._delete_revision(name)
                log.info(
                    "%s: revision %s removed",
                    deployment,
                    obj["metadata"]["labels"].get(REVISION_LABEL),
                )

    async def _delete_revision(self, name: str) -> None:
        for api_version, kind in (
            ("apps/v1", "Deployment"),
            ("policy/v1", "PodDisruptionBudget"),
            ("v1", "Service"),
        ):
            await self.kube.delete(api_version, kind, self.namespace, name)
            self.applier.forget(kind, name)

    async def revisions(self, deployment: str) -> list[RevisionState]:
        counts: dict[str, _Counts] = {}
        for obj in self._mine(self.deployments, deployment):
            revision = obj["metadata"]["labels"].get(REVISION_LABEL, "")
            c = counts.setdefault(revision, _Counts(revision))
            c.created = str(obj["metadata"].get("creationTimestamp") or "")
            if not obj["metadata"].get("deletionTimestamp"):
                c.desired = int((obj.get("spec") or {}).get("replicas", 1))
        by_revision: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pod in self._mine(self.pods, deployment):
            by_revision[pod["metadata"]["labels"].get(REVISION_LABEL, "")].append(pod)
        for revision, pods in by_revision.items():
            c = counts.setdefault(revision, _Counts(revision))
            if not c.created:
                c.created = min(str(p["metadata"].get("creationTimestamp") or "") for p in pods)
            for pod in pods:
                c.add_pod(pod)
        ordered = sorted(counts.values(), key=lambda c: (c.created, _version(c.revision)))
        return [c.state() for c in ordered]

    async def delete_deployment(self, deployment: str) -> bool:
        for obj in self._mine(self.deployments, deployment):
            if not obj["metadata"].get("deletionTimestamp"):
                await self._delete_revision(obj["metadata"]["name"])
        return not self._mine(self.deployments, deployment) and not self._mine(
            self.pods, deployment
        )

    # Training gangs are the operator's second part; it reconciles ModelDeployments only
    # (Manager(kinds=("ModelDeployment",))), so nothing calls these: each says so if one does.

    async def apply_gang(self, gang: GangTemplate) -> None:
        raise NotImplementedError(_GANGS_LATER)

    async def gang(self, job: str) -> GangState | None:
        raise NotImplementedError(_GANGS_LATER)

    async def delete_gang(self, job: str) -> bool:
        raise NotImplementedError(_GANGS_LATER)

    async def queue_usage(self) -> dict[str, QueueUsage]:
        raise NotImplementedError(_GANGS_LATER)
