"""Applying resources: validate, refuse what could never run, store, notify.

Both ways in (``PUT`` of one object, ``POST .../apply`` of a batch) and a rollout undo go
through ``Applier.apply``, so they refuse the same things with the same 422: invalid
fields, duplicates in a batch, a request larger than any node or a gang larger than the
cluster, a queue that does not exist or whose quota it exceeds, a serving deployment
moved to a model that is not registered. All checks run before anything is written;
the store applies a batch atomically, so nothing is ever half-applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pilothouse.api.errors import ApiError
from pilothouse.policy.scheduler import NodeInfo, Resources, check_fits
from pilothouse.registry.local import BaseRegistry, ModelNotFound
from pilothouse.runtime.local.pods import NodeStatus
from pilothouse.spec.loader import validate_document
from pilothouse.spec.quantity import format_bytes, format_cpu_millis
from pilothouse.spec.resources import (
    API_VERSION,
    ModelDeployment,
    Queue,
    QueueQuota,
    QueueSpec,
    Resource,
    ResourceRequests,
    TrainingJob,
    TrainingJobSpec,
)
from pilothouse.store.sqlite import NotFound, Store


def resource_doc(resource: Resource) -> dict[str, Any]:
    """The stored form of a validated resource: canonical spec, user metadata only."""
    dumped = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = dumped["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": resource.KIND,
        "metadata": {
            "name": meta["name"],
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        },
        "spec": dumped.get("spec") or {},
    }


def validate_documents(items: list[Any], source: str) -> list[Resource]:
    """Every item as a resource, or one 422 naming every invalid field and duplicate."""
    resources: list[Resource] = []
    errors: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for number, item in enumerate(items, start=1):
        resource, problems = validate_document(item, source, number)
        errors.extend(p.as_dict() for p in problems)
        if resource is not None:
            if resource.key() in seen:
                message = f"duplicate {resource.KIND} '{resource.metadata.name}'"
                errors.append(_cause(number, "metadata.name", message, source))
            seen.add(resource.key())
            resources.append(resource)
    if errors:
        raise invalid(errors)
    return resources


def invalid(errors: list[dict[str, Any]]) -> ApiError:
    """422 listing every invalid field (the first five in the message)."""
    lines = "; ".join(f"document {e['document']}: {e['field']}: {e['message']}" for e in errors[:5])
    return ApiError(
        422,
        "Invalid",
        f"{len(errors)} invalid field(s), nothing applied: {lines}",
        {"causes": errors},
    )


def _cause(number: int, field: str, message: str, source: str = "request") -> dict[str, Any]:
    """One entry of a 422's ``details.causes``."""
    return {"source": source, "document": number, "field": field, "message": message}


@dataclass(frozen=True)
class Applier:
    """Applies validated resources to the store after the checks that need the cluster
    (``nodes``: placement and quotas) and the model registry (models of deployments);
    either is skipped where the control plane has none."""

    store: Store
    on_change: Callable[[str, str], None]
    registry: BaseRegistry | None = None
    nodes: Callable[[], list[NodeStatus]] | None = None

    def apply(self, resources: list[Resource], user: str = "api") -> list[dict[str, Any]]:
        """Check, store atomically, notify; one result (and any warning) per resource."""
        self.check_placement(resources)
        warnings = self.check_models(resources)
        outcomes = self.store.apply([resource_doc(r) for r in resources])
        for resource, outcome in zip(resources, outcomes, strict=True):
            if isinstance(resource, ModelDeployment) and outcome.value != "unchanged":
                self.store.set_requests(resource.KIND, resource.metadata.name, {"appliedBy": user})
        for resource in resources:
            self.on_change(resource.KIND, resource.metadata.name)
        return [
            {"kind": r.KIND, "name": r.metadata.name, "result": o.value}
            | ({"warning": warnings[n]} if n in warnings else {})
            for n, (r, o) in enumerate(zip(resources, outcomes, strict=True), start=1)
        ]

    def check_placement(self, resources: list[Resource]) -> None:
        """Refuse at apply what could never run: requests larger than any node, a gang
        larger than the cluster, a queue that does not exist (nothing is stored)."""
        if self.nodes is None:
            return
        cluster = [_node_info(n) for n in self.nodes()]
        quotas = self._quotas(resources)
        errors: list[dict[str, Any]] = []
        for number, resource in enumerate(resources, start=1):
            if self._unchanged(resource):
                continue  # unchanged: applying it again must not fail on today's nodes
            errors.extend(_placement_errors(number, resource, quotas, cluster))
        if errors:
            raise invalid(errors)

    def _quotas(self, resources: list[Resource]) -> dict[str, QueueQuota]:
        """The quota of every queue: stored (not being deleted), then those in the batch."""
        quotas = {
            q["metadata"]["name"]: QueueSpec.model_validate(q.get("spec") or {}).quota
            for q in self.store.list_objects(Queue.KIND)
            if not q["metadata"].get("deletionTimestamp")
        }
        quotas.update({r.metadata.name: r.spec.quota for r in resources if isinstance(r, Queue)})
        return quotas

    def _unchanged(self, resource: Resource) -> bool:
        try:
            stored = self.store.get(resource.KIND, resource.metadata.name)
        except NotFound:
            return False
        return bool(stored.get("spec") == resource_doc(resource)["spec"])

    def check_models(self, resources: list[Resource]) -> dict[int, str]:
        """A deployment that already serves must not be moved to a model that does not exist:
        reject the change at apply. A new deployment may wait for its model to be trained:
        accepted, with a warning (document number -> text)."""
        warnings: dict[int, str] = {}
        if self.registry is None:
            return warnings
        errors: list[dict[str, Any]] = []
        for number, resource in enumerate(resources, start=1):
            if not isinstance(resource, ModelDeployment):
                continue
            serving = self._serving(resource)
            missing = _missing_model(self.registry, resource)
            if missing is None:
                continue
            if not serving:
                warnings[number] = f"{missing}; it starts once that version is registered"
                continue
            message = f"{missing}; the running revision is left as it is"
            errors.append(_cause(number, "spec.model", message))
        if errors:
            raise invalid(errors)
        return warnings

    def _serving(self, deployment: ModelDeployment) -> bool:
        """Whether the stored deployment of that name already runs a revision."""
        try:
            current = self.store.get(deployment.KIND, deployment.metadata.name)
        except NotFound:
            return False
        return bool((current.get("status") or {}).get("revision"))


def _missing_model(registry: BaseRegistry, deployment: ModelDeployment) -> str | None:
    """Why the deployment's model cannot be resolved, or None when it can."""
    try:
        registry.resolve(deployment.spec.model)
    except ModelNotFound as exc:
        return str(exc.args[0] if exc.args else exc)
    return None


def _node_info(node: NodeStatus) -> NodeInfo:
    return NodeInfo(
        name=node.name,
        capacity=Resources(node.capacity.cpu, node.capacity.memory, node.capacity.gpu),
        gpu_ids=node.gpu_ids,
        schedulable=node.state == "Ready",
        state=node.state,
    )


def _placement_errors(
    number: int, resource: Resource, quotas: dict[str, QueueQuota], cluster: list[NodeInfo]
) -> list[dict[str, Any]]:
    """Why a training job or deployment could never run (its queue, its quota, the
    cluster's nodes); other kinds are not placed."""
    if isinstance(resource, TrainingJob):
        errors = _queue_errors(number, resource.spec, quotas)
        count = resource.spec.workers
        requests = resource.spec.resources
    elif isinstance(resource, ModelDeployment):
        errors, count, requests = [], 1, resource.spec.resources
    else:
        return []
    problem = check_fits(Resources(requests.cpu, requests.memory, requests.gpu), count, cluster)
    if problem is not None:
        field = "spec.workers" if count > 1 and "gang" in problem else "spec.resources"
        errors.append(_cause(number, field, problem))
    return errors


def _queue_errors(
    number: int, spec: TrainingJobSpec, quotas: dict[str, QueueQuota]
) -> list[dict[str, Any]]:
    """A job's queue must exist ('default' always does), and its whole gang must fit
    within that queue's quota."""
    errors: list[dict[str, Any]] = []
    if spec.queue not in {"default", *quotas}:
        applied = ", ".join(sorted(quotas)) or "none"
        message = (
            f"queue '{spec.queue}' does not exist (applied queues: {applied}; 'default' "
            "needs no Queue object); apply the Queue first or in the same batch"
        )
        errors.append(_cause(number, "spec.queue", message))
    over = _over_quota(spec.resources, spec.workers, spec.queue, quotas.get(spec.queue))
    if over:
        field = "spec.workers" if spec.workers > 1 else "spec.resources"
        message = f"can never start: {spec.workers} worker(s) need " + "; ".join(over)
        errors.append(_cause(number, field, message))
    return errors


def _over_quota(
    requests: ResourceRequests, count: int, queue: str, quota: QueueQuota | None
) -> list[str]:
    """Each dimension where ``count`` workers of ``requests`` exceed the queue's quota."""
    dimensions: tuple[tuple[str, int, int | None, Callable[[int], str]], ...] = (
        ("cpu", requests.cpu * count, quota.cpu if quota else None, format_cpu_millis),
        ("memory", requests.memory * count, quota.memory if quota else None, format_bytes),
        ("gpu", requests.gpu * count, quota.gpu if quota else None, str),
    )
    return [
        f"{dim} {shown(total)} in all but queue '{queue}' allows {shown(limit)}"
        for dim, total, limit, shown in dimensions
        if limit is not None and total > limit
    ]
