"""client-go's shared informer (reflector + cache), in asyncio.

An `Informer` keeps a local copy of one kind's objects (one namespace or all, optionally
selected by labels or fields): it lists them page by page, then watches from the list's
resourceVersion, asking for bookmarks so that a resumed watch starts from a recent point.
A watch that ends or breaks is resumed where it left off; one whose resourceVersion is too
old for the server (410: compacted, or past the watch cache's window) is replaced by a new
list, and the difference between the cache and that list is delivered as
ADDED/MODIFIED/DELETED, so a handler never misses a deletion that happened while it was
not watching. A resourceVersion older than the cached one for the same object is never
delivered over it. Every `resync` seconds each cached object is delivered again as RESYNC:
the level-based safety net of a controller that acts on what is, not on what it was told.

Handlers run on the loop, after the cache changed, and should only note the key (the
operator wakes the owner's key in `controllers.manager.Manager`, its keyed work queue); one
that raises is logged and the informer goes on. Everything the informer hands out
(handlers' objects, `get`, `list`, `select`) is a deep copy: callers may change it freely.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
from collections.abc import Callable

from pilothouse.runtime.kube.client import (
    LIST_PAGE_SIZE,
    Kube,
    KubeError,
    Obj,
    Objs,
    cancel_and_wait,
)

log = logging.getLogger("pilothouse.kube.informer")

Handler = Callable[[str, Obj], None]
Changes = list[tuple[str, Obj]]

#: a failed list or watch is retried after BACKOFF_BASE, doubled per failure in a row up to
#: BACKOFF_MAX (jittered): client-go's reflector uses 800ms and 30s
BACKOFF_BASE = 0.8
BACKOFF_MAX = 30.0
#: the server ends each watch after a random [WATCH_TIMEOUT, 2*WATCH_TIMEOUT) seconds (as
#: client-go), so watches of many clients do not all start over at once
WATCH_TIMEOUT = 300
#: a watch that ends by itself sooner than this, with nothing delivered, counts as a failure
#: (a server or proxy that closes every watch at once would otherwise be hammered)
SHORT_WATCH = 1.0


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _older(candidate: str, cached: str) -> bool:
    """Whether resourceVersion ``candidate`` is older than ``cached``. They are opaque to
    clients, but the API server's are etcd revisions (integers); what does not parse as one
    is never judged older."""
    try:
        return int(candidate) < int(cached)
    except ValueError:
        return False


def _same_object(a: Obj, b: Obj) -> bool:
    ua, ub = _uid(a), _uid(b)
    return not ua or not ub or ua == ub


class Informer:
    """A cache of one kind's objects kept up to date by list + watch (see the module)."""

    def __init__(
        self,
        kube: Kube,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resync: float = 30.0,
        page_size: int = LIST_PAGE_SIZE,
        watch_timeout: int | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.kube = kube
        self.api_version = api_version
        self.kind = kind
        self.namespaced = kube.namespaced(api_version, kind)
        #: None: all namespaces (and always for a cluster-scoped kind)
        self.namespace = namespace if self.namespaced else None
        self.label_selector = label_selector
        self.field_selector = field_selector
        #: seconds between RESYNC deliveries; 0 turns them off
        self.resync = resync
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._path = kube.path(api_version, kind, self.namespace)
        self._what = f"{kind} informer ({self.namespace or 'all namespaces'})"
        self._cache: dict[str, Obj] = {}
        self._handlers: list[Handler] = []
        self._resource_version = ""
        self._failures = 0
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the interface ----------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """``handler(type, obj)`` with type ADDED, MODIFIED, DELETED (obj: its last known
        state) or RESYNC, on the loop, after the cache changed."""
        self._handlers.append(handler)

    async def start(self) -> None:
        """Start listing and watching in the background; returns at once."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._run(), name=self._what))
        if self.resync > 0:
            self._tasks.append(asyncio.create_task(self._resync(), name=f"{self._what} resync"))

    async def wait_synced(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Until the first full list is in the cache (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str:
        """Where the watch resumes: the last list's, event's or bookmark's resourceVersion."""
        return self._resource_version

    def get(self, name: str, namespace: str | None = None) -> Obj | None:
        """A deep copy of the cached object (``namespace`` defaults to the informer's; an
        informer of all namespaces needs it for a namespaced kind)."""
        obj = self._cache.get(self._key_of(name, namespace or self.namespace))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self) -> Objs:
        """Deep copies of every cached object."""
        return copy.deepcopy(list(self._cache.values()))

    def select(self, labels: dict[str, str]) -> Objs:
        """Deep copies of the cached objects whose labels include ``labels`` (only those
        are copied: a reconcile of one owner never pays for the whole namespace)."""
        wanted = labels.items()
        return [
            copy.deepcopy(obj)
            for obj in self._cache.values()
            if wanted <= ((obj.get("metadata") or {}).get("labels") or {}).items()
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    # -- the cache --------------------------------------------------------------------

    def _key_of(self, name: str, namespace: str | None) -> str:
        return f"{namespace}/{name}" if self.namespaced and namespace else name

    def _key(self, obj: Obj) -> str:
        meta = obj.get("metadata") or {}
        return self._key_of(str(meta.get("name") or ""), meta.get("namespace"))

    def _deliver(self, type_: str, obj: Obj) -> None:
        for handler in list(self._handlers):
            try:
                handler(type_, copy.deepcopy(obj))
            except Exception:
                log.exception("%s: a handler failed on %s %s", self._what, type_, self._key(obj))

    def _changes(self, key: str, obj: Obj) -> Changes:
        """What storing ``obj`` under ``key`` delivers (nothing if it is not newer); stores it."""
        cached = self._cache.get(key)
        if cached is None:
            self._cache[key] = obj
            return [("ADDED", obj)]
        new, old = _rv(obj), _rv(cached)
        if new == old or _older(new, old):
            return []
        self._cache[key] = obj
        if _same_object(obj, cached):
            return [("MODIFIED", obj)]
        # the same name, another object: the one cached was deleted while we did not look
        return [("DELETED", cached), ("ADDED", obj)]

    def _store(self, obj: Obj) -> None:
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        for type_, changed in self._changes(self._key(obj), obj):
            self._deliver(type_, changed)

    def _remove(self, obj: Obj) -> None:
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        key = self._key(obj)
        cached = self._cache.get(key)
        if cached is None or _older(_rv(obj), _rv(cached)):
            return
        del self._cache[key]
        self._deliver("DELETED", obj)

    def _replace(self, items: Objs) -> None:
        """A new list: the cache becomes it, and the difference is delivered, after."""
        listed = {self._key(obj): obj for obj in items}
        events: Changes = []
        for key in [k for k in self._cache if k not in listed]:
            events.append(("DELETED", self._cache.pop(key)))
        for key, obj in listed.items():
            events.extend(self._changes(key, obj))
        for type_, obj in events:
            self._deliver(type_, obj)

    # -- list and watch ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._list_and_watch()
            except Exception:  # a bug, or an answer nobody foresaw: log it, start over
                log.exception("%s: list and watch failed; starting over", self._what)
                await self._back_off("")

    async def _list_and_watch(self) -> None:
        relist = True
        while True:
            if relist:
                try:
                    items, version = await self.kube.list_with_version(
                        self.api_version,
                        self.kind,
                        self.namespace,
                        label_selector=self.label_selector,
                        field_selector=self.field_selector,
                        limit=self.page_size,
                    )
                except KubeError as exc:
                    await self._back_off(f"list failed: {exc}")
                    continue
                self._replace(items)
                self._resource_version = version
                relist = False
                self._synced.set()
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                events = await self._watch()
            except KubeError as exc:
                if exc.status == 410:
                    # too old for the server: list again now (after a back-off only if the
                    # last attempt failed too), and deliver what changed meanwhile
                    log.info("%s: %s; listing again", self._what, exc.message or exc.reason)
                    relist = True
                    self._failures += 1
                    if self._failures > 1:
                        await self._back_off("", count=False)
                    continue
                # no answer, throttled, or the server's trouble (e.g. its watch cache not yet
                # at our resourceVersion, 504): resume from the same point; anything else
                # (e.g. 403): a list sets it right, level-based
                if not (exc.status in (0, 429) or exc.status >= 500):
                    relist = True
                await self._back_off(f"watch failed: {exc}")
                continue
            # the server ended the watch: resume from where it ended
            if events == 0 and loop.time() - started < SHORT_WATCH:
                await self._back_off("the watch ended at once")
            else:
                self._failures = 0

    async def _watch(self) -> int:
        """One watch, until the server ends it; how many events (bookmarks too) it gave."""
        events = 0
        timeout = self.watch_timeout or random.randrange(WATCH_TIMEOUT, 2 * WATCH_TIMEOUT)
        stream = self.kube.watch(
            self._path,
            resource_version=self._resource_version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=timeout,
            bookmarks=True,
        )
        async with contextlib.aclosing(stream):
            async for type_, obj in stream:
                events += 1
                self._failures = 0
                if type_ in ("ADDED", "MODIFIED"):
                    self._store(obj)
                elif type_ == "DELETED":
                    self._remove(obj)
                elif type_ != "BOOKMARK":
                    log.warning("%s: unknown watch event %r", self._what, type_)
                    continue
                if version := _rv(obj):
                    self._resource_version = version
        return events

    async def _back_off(self, why: str, *, count: bool = True) -> None:
        if count:
            self._failures += 1
        delay = min(self.backoff_base * 2.0 ** min(self._failures - 1, 30), self.backoff_max)
        delay *= random.uniform(0.8, 1.2)
        if why:
            log.warning("%s: %s; retrying in %.1fs", self._what, why, delay)
        await asyncio.sleep(delay)

    async def _resync(self) -> None:
        await self._synced.wait()
        while True:
            await asyncio.sleep(self.resync)
            for obj in list(self._cache.values()):
                self._deliver("RESYNC", obj)
