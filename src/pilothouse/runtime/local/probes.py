"""Readiness and liveness probes of replicas, as kubelet runs them.

A replica is put behind the router only while its readiness probe passes (HTTP GET, or a
command that exits 0); a starting one is probed every 50 ms so it takes traffic as soon
as it answers. One that stops answering its liveness probe is killed and replaced. The
probes only observe and report: :class:`Prober` tells the runtime through the callbacks
it is given (a replica turned ready or unready, an item to save, a replica to kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

import httpx

from pilothouse.runtime.local.env import child_env
from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.pods import ProbeSpec

log = logging.getLogger("pilothouse.runtime.local")


class Prober:
    """Runs each watched replica's probes in tasks of its own (kept in ``item.tasks``).

    * ``readiness_changed(item)``: the replica turned ready or unready (``item.ready``);
    * ``save(item)``: the item changed in a way worth recording (it was ready once);
    * ``unresponsive(item, message)``: its liveness probe failed too often: kill it.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        readiness_changed: Callable[[Item], None],
        save: Callable[[Item], None],
        unresponsive: Callable[[Item, str], None],
    ) -> None:
        self._http = http
        self._readiness_changed = readiness_changed
        self._save = save
        self._unresponsive = unresponsive

    def watch(self, item: Item) -> None:
        """Probe a started replica until its process ends or it is being stopped."""
        item.tasks.append(asyncio.create_task(self._readiness(item), name=f"ready-{item.id}"))
        spec = item.replica
        if spec is not None and spec.liveness is not None:
            item.tasks.append(
                asyncio.create_task(self._liveness(item, spec.liveness), name=f"live-{item.id}")
            )

    async def check(self, item: Item, probe: ProbeSpec) -> tuple[bool, str]:
        """One probe: (healthy, what went wrong)."""
        if probe.command:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *probe.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=child_env(
                        {"PILOTHOUSE_REPLICA_ENDPOINT": f"{item.host}:{item.port}"},
                        item.replica.pass_env if item.replica is not None else (),
                    ),
                    start_new_session=True,
                )
            except OSError as exc:
                return False, f"cannot run {probe.command[0]!r}: {exc.strerror or exc}"
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), probe.timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                return False, f"command timed out after {probe.timeout:g}s"
            if proc.returncode == 0:
                return True, ""
            text = out.decode("utf-8", "replace").strip().splitlines()
            return False, f"exit code {proc.returncode}" + (f": {text[-1][:160]}" if text else "")
        url = f"http://{item.host}:{item.port}{probe.path}"
        try:
            response = await self._http.get(url, timeout=probe.timeout)
        except httpx.TimeoutException:
            return False, f"no answer within {probe.timeout:g}s"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if 200 <= response.status_code < 300:
            return True, ""
        return False, f"HTTP {response.status_code} {response.text[:160]}"

    async def _readiness(self, item: Item) -> None:
        spec = item.replica
        assert spec is not None
        assert item.child is not None
        probe = ProbeSpec(
            path=spec.readiness_path,
            command=spec.readiness_command,
            period=spec.probe_period,
            timeout=spec.probe_timeout,
            failure_threshold=spec.failure_threshold,
        )
        # a replica that never was ready is starting: probed every 50 ms (HTTP; a command
        # costs a process each time: 250 ms), so it takes traffic as soon as it answers
        starting = min(0.25 if probe.command else 0.05, probe.period)
        while item.child.poll() is None and not item.doomed:
            ok, detail = await self.check(item, probe)
            if item.doomed or item.child.poll() is not None:
                break
            if ok:
                if not item.ready:
                    item.message = "ready"
                    item.ready, item.failures = True, 0
                    log.info(
                        "replica %s ready %.2fs after its start",
                        item.id,
                        time.time() - item.started_at,
                    )
                    self._readiness_changed(item)
                item.failures = 0
                if not item.ever_ready:
                    item.ever_ready = True
                    self._save(item)
            else:
                item.failures += 1
                if item.ready and item.failures >= probe.failure_threshold:
                    item.ready = False
                    self._readiness_changed(item)
                item.message = f"readiness probe failed: {detail}"
            if item.ready:
                pause = probe.period
            else:
                pause = starting if not item.ever_ready else min(0.25, probe.period)
            await asyncio.sleep(pause)
        item.ready = False
        if not item.doomed:
            item.message = f"exited with code {item.child.poll()}"

    async def _liveness(self, item: Item, probe: ProbeSpec) -> None:
        """Kill a replica that stops answering (hung, deadlocked, SIGSTOPped), as kubelet does.

        Failures count once the probe passed (a model that loads slowly is not killed) or,
        with ``initial_delay``, from that long after the start."""
        assert item.child is not None
        counting = False
        failures = 0
        started = time.monotonic()
        while item.child.poll() is None and not item.doomed:
            await asyncio.sleep(probe.period)
            ok, detail = await self.check(item, probe)
            if ok:
                counting, failures = True, 0
                continue
            if probe.initial_delay and time.monotonic() - started >= probe.initial_delay:
                counting = True
            if not counting:
                continue
            failures += 1
            if failures >= probe.failure_threshold and item.child.poll() is None:
                self._unresponsive(
                    item, f"liveness probe failed {failures} times ({detail}); killed and replaced"
                )
                return
