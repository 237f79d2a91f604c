"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection.

Replicas of the operator race for one Lease; the holder acts, the others wait. A Lease is
free when it has no holder or its holder stopped renewing it: leaseDurationSeconds have
passed since this process last saw the record change. That is judged on this process's own
monotonic clock, never by comparing renewTime with it (the replicas' clocks may disagree).
Every write carries the resourceVersion it read, so of two replicas that both find the
Lease free only one write succeeds (the other gets 409 Conflict: someone else won).

The leader renews every retry_period. A renewal that has not succeeded for renew_deadline
(shorter than the lease duration, so that it stops before anyone else may start) ends the
leadership: `lead()` is cancelled and `run` returns, and the caller should exit, since a
replica that lost the Lease must stop acting. A leader that sees another holder on the
Lease stops at once. When `lead()` returns or `run` is cancelled, the Lease is released
(no holder, leaseDurationSeconds 1) so that another replica takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pilothouse.runtime.kube.client import Kube, KubeError, Obj, cancel_and_wait

log = logging.getLogger("pilothouse.kube.leader")

LEASE_API = "coordination.k8s.io/v1"
#: acquisition attempts wait retry_period * (1 + up to JITTER): replicas that started
#: together do not keep trying in step (client-go's JitterFactor)
JITTER = 1.2
#: how long releasing the Lease may take when lead() ends or run() is cancelled
RELEASE_TIMEOUT = 5.0


def micro_time(when: dt.datetime | None = None) -> str:
    """A MicroTime: RFC 3339 in UTC with microseconds."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(spec: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        spec.get(f)
        for f in (
            "holderIdentity",
            "leaseDurationSeconds",
            "acquireTime",
            "renewTime",
            "leaseTransitions",
        )
    )


class _HeldByAnother(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class LeaderElector:
    """One replica's side of the election for Lease ``namespace``/``name``."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        if not identity:
            raise ValueError("the identity must not be empty")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._path = kube.path(LEASE_API, "Lease", namespace, name)
        self._leading = False
        #: the Lease's record as last seen, and when (monotonic) it was first seen so
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._holder = ""

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def holder(self) -> str:
        """The holder of the Lease as last seen ("" when none)."""
        return self._holder

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the Lease, then run ``lead()`` while renewing it. Returns when lead()
        returned (the Lease released) or when the leadership was lost (lead() cancelled:
        stop acting). Cancelled, it cancels lead() and releases the Lease."""
        acquired = await self._acquire()
        task = asyncio.ensure_future(lead())
        try:
            lost = await self._renew_while(task, acquired)
        except BaseException:  # cancelled (or a bug): stop acting, then let the Lease go
            await self._end(task)
            await self._release()
            raise
        if lost:
            self._leading = False
            await self._end(task)
            return
        try:
            await self._release()
        finally:
            self._leading = False
        task.result()  # lead()'s exception, if it raised one

    async def _end(self, task: asyncio.Future[None]) -> None:
        """Stop lead() and wait until it stopped (what it raised is logged)."""
        await cancel_and_wait(task)

    async def _acquire(self) -> float:
        """Try until this replica holds the Lease; when (loop time) the winning try began."""
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            try:
                if await self._try(acquiring=True):
                    self._leading = True
                    log.info("%s: acquired lease %s/%s", self.identity, self.namespace, self.name)
                    return sent
            except _HeldByAnother:
                pass
            except KubeError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            except Exception:
                log.exception("lease %s/%s: acquiring failed", self.namespace, self.name)
            await asyncio.sleep(self.retry_period * (1 + random.random() * JITTER))

    async def _renew_while(self, task: asyncio.Future[None], renewed: float) -> bool:
        """Renew until ``task`` ends (False) or the leadership is lost (True): another
        holder is seen, or no renewal succeeded for renew_deadline. That is measured from
        when the last successful renewal was sent, not answered, so this replica stops
        before anyone who saw that renewal may take the Lease."""
        loop = asyncio.get_running_loop()
        while True:
            left = self.renew_deadline - (loop.time() - renewed)
            await asyncio.wait({task}, timeout=min(self.retry_period, max(left, 0.0)))
            if task.done():
                return False
            sent = loop.time()
            left = self.renew_deadline - (sent - renewed)
            if left <= 0:
                log.error(
                    "%s: could not renew lease %s/%s for %.1fs: stopping",
                    self.identity,
                    self.namespace,
                    self.name,
                    sent - renewed,
                )
                return True
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(left):
                    if await self._try(acquiring=False):
                        renewed = sent
            except _HeldByAnother as other:
                log.error(
                    "%s: lease %s/%s is held by %s: stopping",
                    self.identity,
                    self.namespace,
                    self.name,
                    other.holder,
                )
                return True
            except (KubeError, TimeoutError) as exc:
                log.warning("lease %s/%s: renewal failed: %s", self.namespace, self.name, exc)
            except Exception:
                log.exception("lease %s/%s: renewal failed", self.namespace, self.name)

    async def _try(self, *, acquiring: bool, request_timeout: float = 10.0) -> bool:
        """One acquire-or-renew: True if this replica holds the Lease afterwards. Raises
        _HeldByAnother when another holder's lease is valid (or, renewing, at all)."""
        now = micro_time()
        lease: Obj | None
        try:
            lease = await self.kube.request("GET", self._path, timeout=request_timeout)
        except KubeError as exc:
            if exc.status != 404:
                raise
            lease = None
        if lease is None:
            body = {
                "apiVersion": LEASE_API,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self._seconds(),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            collection = self.kube.path(LEASE_API, "Lease", self.namespace)
            try:
                created = await self.kube.request(
                    "POST", collection, body=body, timeout=request_timeout
                )
            except KubeError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            self._observe(created.get("spec") or {})
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        self._observe(spec)
        holder = str(spec.get("holderIdentity") or "")
        if holder and holder != self.identity:
            if not acquiring:
                raise _HeldByAnother(holder)
            duration = float(spec.get("leaseDurationSeconds") or 0)
            if time.monotonic() < self._observed_at + duration:
                raise _HeldByAnother(holder)
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._seconds(),
            "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": transitions if mine else transitions + 1,
        }
        try:  # carries metadata.resourceVersion: a 409 if it changed since the read
            updated = await self.kube.request(
                "PUT", self._path, body=lease, timeout=request_timeout
            )
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self._observe(updated.get("spec") or {})
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        self._holder = str(spec.get("holderIdentity") or "")

    def _seconds(self) -> int:
        return max(1, round(self.lease_duration))

    async def _release(self) -> None:
        """Give the Lease up if this replica still holds it (best effort: a failure only
        means the others wait for it to expire)."""
        try:
            lease = await self.kube.request("GET", self._path, timeout=RELEASE_TIMEOUT)
            spec: dict[str, Any] = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            now = micro_time()
            lease["spec"] = {
                **spec,
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
            }
            released = await self.kube.request(
                "PUT", self._path, body=lease, timeout=RELEASE_TIMEOUT
            )
            self._observe(released.get("spec") or {})
            log.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)
        except KubeError as exc:
            log.warning("lease %s/%s: could not release it: %s", self.namespace, self.name, exc)
        finally:
            self._leading = False


__all__ = ["LeaderElector", "micro_time"]
