"""Events (events.k8s.io/v1) about the objects pilothouse acts on, as client-go's recorder.

`record` never blocks and never raises: the event is queued and a background task writes
it, so a reconcile is not slowed or failed by its own reporting; a write that fails is
retried briefly, then logged and dropped (events are best effort in Kubernetes too).

Isomorphic events (the same object, type, reason, action and note) are aggregated as
client-go does: a repeat within SERIES_WINDOW of the last one does not make a new Event
but updates the first one's ``series`` (count, lastObservedTime), so a reconcile failing
every few seconds leaves one Event counting up, not thousands. Repeats that come while a
write is pending are folded into that write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from pilothouse.runtime.kube.client import Kube, KubeError, Obj, cancel_and_wait
from pilothouse.runtime.kube.leader import micro_time

log = logging.getLogger("pilothouse.kube.events")

EVENTS_API = "events.k8s.io/v1"
#: a repeat this long (seconds) after the last occurrence starts a new Event (client-go: 6 min)
SERIES_WINDOW = 360.0
#: isomorphic events remembered (least recently seen forgotten first)
MAX_SERIES = 4096
#: Events waiting to be written; beyond, new ones are dropped (and logged)
MAX_PENDING = 1024
#: tries of one write that failed transiently (no answer, 429, 5xx), RETRY_DELAY apart, doubling
WRITE_ATTEMPTS = 3
RETRY_DELAY = 0.5
WRITE_TIMEOUT = 10.0
#: the API server's limits (events.k8s.io validation)
NOTE_BYTES = 1024
FIELD_CHARS = 128
NAME_CHARS = 253

Key = tuple[str, ...]


def _truncate_bytes(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


@dataclass
class _Series:
    """One Event on the server and the occurrences it stands for."""

    name: str
    namespace: str
    #: the Event without its series
    body: Obj
    first: float
    last: float
    #: monotonic time of the last occurrence (the window is judged on it)
    seen: float
    count: int = 1
    created: bool = False


class EventRecorder:
    """Events from ``reportingController`` pilothouse.dev/<component>, ``instance`` (e.g.
    the pod's name) as reportingInstance."""

    def __init__(self, kube: Kube, component: str, instance: str) -> None:
        self.kube = kube
        self.controller = f"pilothouse.dev/{component}"
        self.instance = instance[:FIELD_CHARS]
        self._series: OrderedDict[Key, _Series] = OrderedDict()
        self._pending: OrderedDict[Key, _Series] = OrderedDict()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._last_ns = 0

    def record(
        self, regarding: Obj, type_: str, reason: str, note: str, action: str = "Reconcile"
    ) -> None:
        """Queue an Event about ``regarding`` (its apiVersion, kind, metadata name,
        namespace, uid and resourceVersion are used): ``type_`` Normal or Warning."""
        try:
            self._record(regarding, type_, reason, note, action)
        except Exception:
            log.exception("could not queue event %s %s", type_, reason)

    def _record(self, regarding: Obj, type_: str, reason: str, note: str, action: str) -> None:
        meta = regarding.get("metadata") or {}
        given = {
            "apiVersion": regarding.get("apiVersion"),
            "kind": regarding.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        ref: dict[str, str] = {k: str(v) for k, v in given.items() if v}
        reason, action = reason[:FIELD_CHARS], action[:FIELD_CHARS]
        note = _truncate_bytes(note, NOTE_BYTES)
        key: Key = (
            ref.get("apiVersion", ""),
            ref.get("kind", ""),
            ref.get("namespace", ""),
            ref.get("name", ""),
            ref.get("uid", ""),
            type_,
            reason,
            action,
            note,
        )
        wall, mono = time.time(), time.monotonic()
        series = self._series.get(key)
        if series is not None and mono - series.seen < SERIES_WINDOW:
            series.count += 1
            series.last, series.seen = wall, mono
            self._series.move_to_end(key)
        else:
            # cluster-scoped objects' events live in "default", as client-go puts them
            namespace = ref.get("namespace") or "default"
            body: Obj = {
                "apiVersion": EVENTS_API,
                "kind": "Event",
                "metadata": {"namespace": namespace},
                "eventTime": micro_time_of(wall),
                "reportingController": self.controller,
                "reportingInstance": self.instance,
                "action": action,
                "reason": reason,
                "note": note,
                "type": type_,
                "regarding": ref,
            }
            series = _Series(self._name(ref.get("name", "")), namespace, body, wall, wall, mono)
            self._series[key] = series
            while len(self._series) > MAX_SERIES:
                self._series.popitem(last=False)
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            log.warning("event queue full: dropped %s %s %s", type_, reason, ref.get("name"))
            return
        self._pending[key] = series
        self._idle.clear()
        self._wake.set()

    def _name(self, regarding_name: str) -> str:
        # client-go's <name>.<unix nanoseconds in hex>, kept unique within this process
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        suffix = f".{self._last_ns:x}"
        return (regarding_name or "pilothouse")[: NAME_CHARS - len(suffix)] + suffix

    async def start(self) -> None:
        """Start the writer (records made before are written then)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event recorder")

    async def flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until every queued event was written (or given up on); at most ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("events: %d still unwritten after %.1fs", len(self._pending), timeout)

    async def stop(self) -> None:
        """Stop the writer; what is still queued is dropped (`flush` first to keep it)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._pending:
            log.info("events: %d unwritten at stop", len(self._pending))

    async def _run(self) -> None:
        while True:
            while self._pending:
                _, series = self._pending.popitem(last=False)
                try:
                    await self._write(series)
                except Exception:
                    log.exception("events: writing %s failed", series.name)
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    async def _write(self, series: _Series) -> None:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            count, last = series.count, series.last
            data = {"count": count, "lastObservedTime": micro_time_of(last)}
            try:
                if not series.created:
                    body = {**series.body, "metadata": {**series.body["metadata"]}}
                    body["metadata"]["name"] = series.name
                    if count > 1:
                        body["series"] = data
                    try:
                        await self.kube.request(
                            "POST",
                            self.kube.path(EVENTS_API, "Event", series.namespace),
                            body=body,
                            timeout=WRITE_TIMEOUT,
                        )
                    except KubeError as exc:
                        if exc.status != 409:
                            raise
                        # the name is this series' own: an earlier try got through unanswered
                        series.created = True
                        if count > 1:
                            continue  # its series may not be: patch it
                    series.created = True
                elif count > 1:
                    await self.kube.request(
                        "PATCH",
                        self.kube.path(EVENTS_API, "Event", series.namespace, series.name),
                        body={"series": data},
                        content_type="application/merge-patch+json",
                        timeout=WRITE_TIMEOUT,
                    )
                return
            except KubeError as exc:
                if exc.status == 404 and series.created:
                    # expired (Events live an hour) or deleted: the series goes on in a new one
                    series.created = False
                    series.name = self._name(series.body["regarding"].get("name", ""))
                    continue
                transient = exc.status in (0, 429) or exc.status >= 500
                if not transient or attempt == WRITE_ATTEMPTS:
                    log.warning(
                        "could not record event %s %s about %s: %s",
                        series.body["type"],
                        series.body["reason"],
                        series.body["regarding"].get("name"),
                        exc,
                    )
                    return
                await asyncio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        log.warning("could not record event %s: gave up after %d tries", series.name, attempt)


def micro_time_of(wall: float) -> str:
    return micro_time(dt.datetime.fromtimestamp(wall, dt.UTC))


__all__ = ["EventRecorder"]
