"""Starting a replica's process: a ``pilothouse serve`` on its node's address.

A replica is given an already-bound listening socket (no port races), its model version
to fetch and verify (as a pod would), its batching settings and an explicit environment;
it is made from the revision's standby when there is one (``standbys.py``), else started
afresh. What follows the start (watching, probing, routing) is the runtime's.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from pilothouse.runtime.local.env import child_env, registry_env, registry_of
from pilothouse.runtime.local.items import Item
from pilothouse.runtime.local.pods import ReplicaSpec
from pilothouse.runtime.local.standbys import Standbys
from pilothouse.runtime.local.supervisor import Child, Supervisor


def model_args(spec: ReplicaSpec, registry_uri: str, model_cache: Path) -> list[str]:
    """The replica fetches and verifies its model version itself (as a pod would)."""
    return ["--model", spec.model, "--registry", registry_uri, "--cache", str(model_cache)]


async def launch_replica(
    item: Item,
    address: str,
    node_name: str,
    model: list[str],
    supervisor: Supervisor,
    standbys: Standbys,
) -> tuple[Child, int] | str:
    """Start the bound replica's model server listening on ``address`` (``model``: its
    :func:`model_args`): its process and port, or why it could not start. An address it
    cannot listen on raises OSError."""
    spec = item.replica
    assert spec is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        sock.listen(1024)
        sock.set_inheritable(True)
        port: int = sock.getsockname()[1]
        args = [
            "serve",
            *model,
            "--name",
            spec.model_name,
            "--max-batch-size",
            str(spec.max_batch_size),
            "--max-batch-delay",
            str(spec.max_batch_delay),
        ]
        env = child_env(
            {
                **registry_env(registry_of(model)),
                "PILOTHOUSE_REPLICA_ID": item.id,
                "PILOTHOUSE_NODE": node_name,
                "CUDA_VISIBLE_DEVICES": ",".join(item.gpus),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            },
            spec.pass_env,
        )
        log_name = f"modeldeployments/{spec.deployment}/{item.id}.log"
        extra = {"endpoint": f"{address}:{port}", "revision": spec.revision}
        try:
            child = await standbys.take(item, sock, args, env, log_name, extra)
            if child is None:
                child = await asyncio.to_thread(
                    supervisor.spawn,
                    item.id,
                    owner_kind="ModelDeployment",
                    owner_name=spec.deployment,
                    role="replica",
                    argv=[sys.executable, "-m", "pilothouse", *args, "--fd", str(sock.fileno())],
                    env=env,
                    cwd=None,
                    log_name=log_name,
                    pass_fds=(sock.fileno(),),
                    extra=extra,
                )
        except OSError as exc:
            return f"cannot start the model server: {exc}"
    finally:
        sock.close()
    return child, port
