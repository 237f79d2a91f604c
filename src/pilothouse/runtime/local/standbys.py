"""Standbys: model servers started ahead of need, one per serving revision without a GPU.

Most of a model server's start is importing (about 1.5 s of CPU for scikit-learn) and
loading its model. A standby (``pilothouse.serving.standby``) has done that already and
waits on a control socket; when a replica of its revision is started (a replacement, a
scale-up) it is handed the replica's listening socket, log, environment and arguments,
and serves within a few hundred milliseconds instead of seconds. A standby is made one at
a time, only while no replica of its deployment is starting, holds no room on a node (it
serves nothing and holds no model), and is stopped when its revision no longer runs.
:class:`Standbys` keeps them; ``LocalRuntime`` asks it for one when it starts a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pilothouse.runtime.local.env import child_env, registry_env, registry_of
from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.pods import ReplicaSpec
from pilothouse.runtime.local.supervisor import Child, Supervisor

log = logging.getLogger("pilothouse.runtime.local")

#: (deployment, revision)
Key = tuple[str, str]


@dataclass
class Standby:
    """A model server that imported what a revision's replicas need and waits, on
    ``control``, to be made one of them (serving/standby.py)."""

    id: str
    child: Child
    control: socket.socket


class Standbys:
    """The standbys of the serving revisions (``enabled``: make new ones).

    ``items()``: the runtime's items (which revisions serve, which replicas start);
    ``model_args(spec)``: the arguments that make a server fetch the revision's model."""

    def __init__(
        self,
        supervisor: Supervisor,
        items: Callable[[], Iterable[Item]],
        model_args: Callable[[ReplicaSpec], list[str]],
        *,
        enabled: bool,
    ) -> None:
        self.supervisor = supervisor
        self.enabled = enabled
        self._items = items
        self._model_args = model_args
        self._standbys: dict[Key, Standby] = {}
        #: revisions whose standby failed: none again for them until then (monotonic)
        self._pause: dict[Key, float] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look now (a replica turned ready), not at the next second."""
        self._wake.set()

    def close(self) -> None:
        """Let go of every standby; their processes are stopped with all the others."""
        for standby in self._standbys.values():
            standby.control.close()
        self._standbys.clear()

    def wanted(self) -> dict[Key, ReplicaSpec]:
        """The revisions that should have a standby: serving now (a ready replica), on no
        GPU (a standby cannot know which GPU its replica gets), with no replica of their
        deployment still starting (the standby's warm-up would slow it down)."""
        starting = {
            i.owner_name
            for i in self._items()
            if i.role == "replica" and not i.released and not i.ever_ready and i.alive()
        }
        wanted: dict[Key, ReplicaSpec] = {}
        for i in self._items():
            spec = i.replica
            if (
                spec is not None
                and i.ready
                and not i.released
                and not i.doomed
                and spec.requests.gpu == 0
                and i.owner_name not in starting
            ):
                wanted[(spec.deployment, spec.revision)] = spec
        return wanted

    async def keep(self) -> None:
        """Every second, and at once when a replica turned ready: one standby for each
        revision that serves (see :meth:`wanted`), made one at a time; none for a revision
        nothing runs of any more."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            try:
                await self.tend()
            except Exception:  # a failed pass never stops the loop
                log.exception("could not tend the standby model servers")

    async def tend(self) -> None:
        """One pass: drop the standbys that died or are not needed, start one missing."""
        live = {
            (i.owner_name, i.replica.revision)
            for i in self._items()
            if i.replica is not None and not i.released
        }
        now = time.monotonic()
        for key, standby in list(self._standbys.items()):
            if standby.child.poll() is not None:
                # died before it was needed: not again for this revision for a while
                log.warning(
                    "standby %s ended (exit code %s) before it was needed; see %s",
                    standby.id,
                    standby.child.poll(),
                    standby.child.record.get("log"),
                )
                self._pause[key] = now + 60.0
                await self.drop(key)
            elif key not in live:
                await self.drop(key)
        if not self.enabled:
            return
        for key, spec in self.wanted().items():
            if key not in self._standbys and self._pause.get(key, 0.0) <= now:
                await self.start(spec)
                return  # one at a time: each costs a second or two of CPU

    async def start(self, spec: ReplicaSpec) -> None:
        """Start the revision's standby (not again for a minute if it cannot start)."""
        key = (spec.deployment, spec.revision)
        standby_id = f"standby-{spec.deployment}-{spec.revision}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            model = self._model_args(spec)
            argv = [
                sys.executable,
                "-m",
                "pilothouse.serving.standby",
                "--control",
                str(theirs.fileno()),
                *model,
                # room for the command line it shows once it is a replica
                "--room=" + "." * 256,
            ]
            env = child_env(
                {
                    **registry_env(registry_of(model)),
                    "CUDA_VISIBLE_DEVICES": "",
                    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                }
            )
            child = await asyncio.to_thread(
                self.supervisor.spawn,
                standby_id,
                owner_kind="ModelDeployment",
                owner_name=spec.deployment,
                role="standby",
                argv=argv,
                env=child_env(env, spec.pass_env),
                cwd=None,
                log_name=f"modeldeployments/{spec.deployment}/{standby_id}.out",
                pass_fds=(theirs.fileno(),),
                extra={"revision": spec.revision},
            )
        except OSError as exc:
            ours.close()
            log.warning("could not start a standby for %s/%s: %s", *key, exc)
            self._pause[key] = time.monotonic() + 60.0
            return
        finally:
            theirs.close()
        self._standbys[key] = Standby(standby_id, child, ours)
        log.info("started standby %s (pid %d)", standby_id, child.pid)

    async def drop(self, key: Key) -> None:
        standby = self._standbys.pop(key, None)
        if standby is not None:
            standby.control.close()  # it ends by itself when it sees that
            await asyncio.to_thread(self.supervisor.stop, standby.id, 2.0)

    async def take(
        self,
        item: Item,
        listener: socket.socket,
        args: list[str],
        env: dict[str, str],
        log_name: str,
        extra: dict[str, Any],
    ) -> Child | None:
        """Make the revision's standby this replica (its listening socket and log passed
        over the control socket), or None if there is none that runs."""
        spec = item.replica
        assert spec is not None
        standby = self._standbys.pop((spec.deployment, spec.revision), None)
        if standby is None:
            return None
        try:
            if standby.child.poll() is not None:
                raise OSError(f"it ended with code {standby.child.poll()}")
            log_path = self.supervisor.log_dir / log_name
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                message = json.dumps({"args": args, "env": env}).encode()
                socket.send_fds(standby.control, [message], [listener.fileno(), log_fd])
            finally:
                os.close(log_fd)
        except OSError as exc:
            log.warning("standby %s not used for %s: %s", standby.id, item.id, exc)
            standby.control.close()
            await asyncio.to_thread(self.supervisor.stop, standby.id, 1.0)
            return None
        standby.control.close()
        return self.supervisor.assign(
            standby.id,
            item.id,
            owner_name=spec.deployment,
            role="replica",
            argv=[sys.executable, "-m", "pilothouse", *args, "--fd", "?"],
            log_name=log_name,
            extra={**extra, "fromStandby": standby.id},
        )
