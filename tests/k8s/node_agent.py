"""A process node: a minimal kubelet that runs pods as local processes (virtual-kubelet style).

    python tests/k8s/node_agent.py --kubeconfig KUBECONFIG --node NAME --pod-cidr CIDR \
        --work DIR [--cpu 4 --memory 8Gi --pods 20]

It registers the Node (labelled pilothouse.dev/node-kind=process, tainted
pilothouse.dev/process-node=true:NoSchedule so that only pods meant for it land here),
renews its Lease in kube-node-lease, and for every pod bound to it:

- runs each container's ``command`` + ``args`` as a local process, with ``env`` from the
  pod spec (literal values and the downward-API fields status.podIP, status.hostIP,
  metadata.name, metadata.namespace, metadata.uid, spec.nodeName) and Kubernetes'
  ``$(VAR)`` expansion in command and args; the image is not used;
- gives the pod its own address from ``--pod-cidr`` as its pod IP (the processes bind it);
- reports phase, pod IP, container states and restart counts, and readiness from the
  container's readinessProbe (httpGet, tcpSocket or exec) as the pod status;
- restarts exited containers as restartPolicy says;
- when the pod is deleted, stops its processes (SIGTERM, SIGKILL after the grace period)
  and completes the deletion.

Container output goes to ``DIR/pods/NAMESPACE_POD/CONTAINER.log``. On SIGTERM it stops every
process it started (by PID) and exits. Each process it starts dies with it (PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

LEASE_SECONDS = 10
RENEW_EVERY = 2.0
STATUS_EVERY = 10.0
SYNC_EVERY = 0.25
log = logging.getLogger("node-agent")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies when the agent dies


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$ escapes, others stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(sub, text)


@dataclass
class Probe:
    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    ready: bool = False
    next_at: float = 0.0


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    last_exit: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    probe: Probe | None = None
    restart_at: float = 0.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def ready(self) -> bool:
        if not self.running:
            return False
        return self.probe.ready if self.probe else True


@dataclass
class PodRuntime:
    uid: str
    namespace: str
    name: str
    ip: str
    containers: list[Container]
    start_time: str
    restart_policy: str
    env: dict[str, str]
    reported: dict[str, Any] | None = None
    deleting_since: float | None = None
    stopped: bool = False
    phase: str = "Running"
    transitions: dict[str, str] = field(default_factory=dict)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        config.load_kube_config(config_file=args.kubeconfig)
        self.core = client.CoreV1Api()
        self.coordination = client.CoordinationV1Api()
        self.node = args.node
        self.node_ip = args.node_ip
        self.work = Path(args.work)
        self.capacity = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods)}
        network = ipaddress.ip_network(args.pod_cidr)
        self.free_ips = [str(ip) for ip in list(network.hosts())[1:]]  # .1 is the node's
        self.pods: dict[str, PodRuntime] = {}
        self.stopping = threading.Event()
        self.node_uid = ""
        self.pid_file = self.work / "pids"
        self.started = now()

    # --- node and lease ---------------------------------------------------------------------

    def conditions(self) -> list[dict[str, str]]:
        t = now()
        ok = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "pilothouse process node agent",
                "lastHeartbeatTime": t,
                "lastTransitionTime": self.started,
            }
            for kind, status, reason in ok
        ]

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "pilothouse.dev/node-kind": "process",
                },
            },
            "spec": {
                "taints": [
                    {"key": "pilothouse.dev/process-node", "value": "true", "effect": "NoSchedule"}
                ]
            },
        }
        try:
            node = self.core.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise
            node = self.core.read_node(self.node)
        self.node_uid = node.metadata.uid
        self.core.patch_node_status(
            self.node,
            {
                "status": {
                    "capacity": self.capacity,
                    "allocatable": self.capacity,
                    "conditions": self.conditions(),
                    "addresses": [
                        {"type": "InternalIP", "address": self.node_ip},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                        "kubeletVersion": "pilothouse-process-node",
                        "kubeProxyVersion": "",
                        "containerRuntimeVersion": "process://",
                        "kernelVersion": os.uname().release,
                        "osImage": "local processes",
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                    },
                }
            },
        )
        self.renew_lease()
        log.info("registered node %s", self.node)

    def renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node_uid}
                ],
            },
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node, "kube-node-lease", {"spec": body["spec"]}
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", body)

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(RENEW_EVERY):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self.core.patch_node_status(
                        self.node, {"status": {"conditions": self.conditions()}}
                    )
                    last_status = time.monotonic()
            except Exception:
                log.exception("heartbeat failed")

    # --- pods -------------------------------------------------------------------------------

    def sync_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("sync failed")
            self.stopping.wait(SYNC_EVERY)

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}"
        ).items
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            runtime = self.pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self.delete(pod, runtime)
                continue
            if runtime is None:
                if pod.status.phase in ("Succeeded", "Failed"):
                    continue
                runtime = self.start_pod(pod)
            self.tend(runtime)
            self.report(runtime)
        for uid in list(self.pods):
            if uid not in seen:  # gone from the API (force-deleted): stop what runs
                runtime = self.pods.pop(uid)
                self.stop_pod(runtime, grace=0)
                self.release(runtime)

    def start_pod(self, pod: Any) -> PodRuntime:
        raw = self.core.api_client.sanitize_for_serialization(pod)
        spec = raw["spec"]
        ip = self.free_ips.pop(0)
        pod_dir = self.work / "pods" / f"{pod.metadata.namespace}_{pod.metadata.name}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        fields = {
            "status.podIP": ip,
            "status.hostIP": self.node_ip,
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": self.node,
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        }
        runtime = PodRuntime(
            uid=pod.metadata.uid,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            ip=ip,
            containers=[],
            start_time=now(),
            restart_policy=spec.get("restartPolicy", "Always"),
            env=fields,
        )
        for c in spec["containers"]:
            probe = Probe(c["readinessProbe"]) if c.get("readinessProbe") else None
            if probe:
                probe.next_at = time.monotonic() + probe.spec.get("initialDelaySeconds", 0)
            runtime.containers.append(
                Container(c["name"], c, pod_dir / f"{c['name']}.log", probe=probe)
            )
        self.pods[runtime.uid] = runtime
        for container in runtime.containers:
            self.run(runtime, container)
        log.info("pod %s/%s: started on %s", runtime.namespace, runtime.name, ip)
        return runtime

    def container_env(self, runtime: PodRuntime, spec: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
            "HOSTNAME": runtime.name,
        }
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand(item.get("value") or "", env)
            elif ref := (item.get("valueFrom") or {}).get("fieldRef"):
                env[item["name"]] = runtime.env.get(ref["fieldPath"], "")
        return env

    def run(self, runtime: PodRuntime, container: Container) -> None:
        spec = container.spec
        env = self.container_env(runtime, spec)
        argv = [expand(a, env) for a in (spec.get("command") or []) + (spec.get("args") or [])]
        cwd = spec.get("workingDir") or str(container.log.parent)
        with container.log.open("ab") as out:
            if not argv:
                container.terminated = {
                    "exitCode": 128,
                    "reason": "NoCommand",
                    "message": "a process node needs the container's command",
                }
                return
            try:
                container.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # only calls prctl
                )
            except OSError as error:
                container.terminated = {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(error),
                }
                return
        container.started_at = now()
        container.terminated = None
        if container.probe:
            container.probe.ready = False
            container.probe.successes = container.probe.failures = 0
        self.record_pids()
        log.info(
            "pod %s/%s container %s: pid %d: %s",
            runtime.namespace,
            runtime.name,
            container.name,
            container.process.pid,
            argv,
        )

    def record_pids(self) -> None:
        pids = [
            str(c.process.pid)
            for r in self.pods.values()
            for c in r.containers
            if c.process is not None and c.process.poll() is None
        ]
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text("\n".join(pids) + "\n")
        tmp.replace(self.pid_file)

    def tend(self, runtime: PodRuntime) -> None:
        """Notice exits, restart as the policy says, run readiness probes that are due."""
        if runtime.stopped:
            return
        for container in runtime.containers:
            process = container.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                state = {
                    "exitCode": code if code >= 0 else 128 - code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": container.started_at,
                    "finishedAt": now(),
                }
                container.process = None
                container.last_exit = state
                container.terminated = state
                restart = runtime.restart_policy == "Always" or (
                    runtime.restart_policy == "OnFailure" and code != 0
                )
                if restart:
                    backoff = min(10.0, 0.5 * 2**container.restarts)
                    container.restart_at = time.monotonic() + backoff
                log.info("pod %s container %s exited %s", runtime.name, container.name, code)
            due = container.restart_at and time.monotonic() >= container.restart_at
            if container.process is None and due:
                container.restart_at = 0.0
                container.restarts += 1
                self.run(runtime, container)
            if container.running and container.probe:
                self.probe(runtime, container)
        if all(c.process is None and not c.restart_at for c in runtime.containers):
            failed = any((c.terminated or {}).get("exitCode", 1) != 0 for c in runtime.containers)
            runtime.phase = "Failed" if failed else "Succeeded"

    def probe(self, runtime: PodRuntime, container: Container) -> None:
        probe = container.probe
        assert probe is not None
        if time.monotonic() < probe.next_at:
            return
        spec = probe.spec
        probe.next_at = time.monotonic() + spec.get("periodSeconds", 10)
        ok = self.check(runtime, container, spec, float(spec.get("timeoutSeconds", 1)))
        if ok:
            probe.failures = 0
            probe.successes += 1
            if probe.successes >= spec.get("successThreshold", 1):
                probe.ready = True
        else:
            probe.successes = 0
            probe.failures += 1
            if probe.failures >= spec.get("failureThreshold", 3):
                probe.ready = False

    def port(self, container: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in container.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    def check(
        self, runtime: PodRuntime, container: Container, spec: dict[str, Any], timeout: float
    ) -> bool:
        try:
            if get := spec.get("httpGet"):
                host = get.get("host") or runtime.ip
                scheme = (get.get("scheme") or "HTTP").lower()
                url = f"{scheme}://{host}:{self.port(container, get['port'])}{get.get('path', '/')}"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                status = httpx.get(url, headers=headers, timeout=timeout, verify=False).status_code
                return 200 <= status < 400
            if tcp := spec.get("tcpSocket"):
                address = (tcp.get("host") or runtime.ip, self.port(container, tcp["port"]))
                with socket.create_connection(address, timeout=timeout):
                    return True
            if exec_ := spec.get("exec"):
                result = subprocess.run(
                    exec_["command"],
                    env=self.container_env(runtime, container.spec),
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
                return result.returncode == 0
        except (httpx.HTTPError, OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return False

    def report(self, runtime: PodRuntime) -> None:
        ready = runtime.phase == "Running" and all(c.ready for c in runtime.containers)

        def condition(kind: str, value: bool) -> dict[str, Any]:
            status = "True" if value else "False"
            key = f"{kind}={status}"
            if runtime.transitions.get(kind, "").split("@")[0] != key:
                runtime.transitions[kind] = f"{key}@{now()}"
            return {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": runtime.transitions[kind].split("@")[1],
            }

        statuses = []
        for c in runtime.containers:
            if c.running:
                state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
            elif c.restart_at:
                state = {"waiting": {"reason": "CrashLoopBackOff"}}
            else:
                state = {"terminated": c.terminated or {"exitCode": 0, "reason": "Completed"}}
            status: dict[str, Any] = {
                "name": c.name,
                "image": c.spec.get("image", ""),
                "imageID": "",
                "containerID": f"process://{c.process.pid}" if c.running and c.process else "",
                "ready": c.ready,
                "started": c.running,
                "restartCount": c.restarts,
                "state": state,
            }
            if c.last_exit and c.running:
                status["lastState"] = {"terminated": c.last_exit}
            statuses.append(status)
        body = {
            "status": {
                "phase": runtime.phase,
                "hostIP": self.node_ip,
                "hostIPs": [{"ip": self.node_ip}],
                "podIP": runtime.ip,
                "podIPs": [{"ip": runtime.ip}],
                "startTime": runtime.start_time,
                "conditions": [
                    condition("PodReadyToStartContainers", True),
                    condition("Initialized", True),
                    condition("ContainersReady", ready),
                    condition("Ready", ready),
                    condition("PodScheduled", True),
                ],
                "containerStatuses": statuses,
            }
        }
        if body == runtime.reported:
            return
        try:
            self.core.patch_namespaced_pod_status(
                runtime.name,
                runtime.namespace,
                body,
                _content_type="application/merge-patch+json",
            )
            runtime.reported = body
        except ApiException as error:
            if error.status != 404:
                raise

    def delete(self, pod: Any, runtime: PodRuntime | None) -> None:
        grace = pod.metadata.deletion_grace_period_seconds or 0
        if runtime is not None:
            if runtime.deleting_since is None:
                runtime.deleting_since = time.monotonic()
                log.info(
                    "pod %s/%s: deleting (grace %ss)",
                    pod.metadata.namespace,
                    pod.metadata.name,
                    grace,
                )
            self.stop_pod(runtime, grace=min(float(grace), 30.0))
            self.pods.pop(runtime.uid, None)
            self.release(runtime)
        # the kubelet's last word: containers are gone, the pod object may go
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
            )

    def stop_pod(self, runtime: PodRuntime, grace: float) -> None:
        processes = [c.process for c in runtime.containers if c.process is not None]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything left in its group
        for c in runtime.containers:
            c.process = None
            c.restart_at = 0.0
        runtime.stopped = True
        self.record_pids()

    def release(self, runtime: PodRuntime) -> None:
        self.free_ips.append(runtime.ip)

    def shutdown(self) -> None:
        self.stopping.set()
        for runtime in list(self.pods.values()):
            self.stop_pod(runtime, grace=5)
        self.pods.clear()
        self.record_pids()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-ip", default="127.0.0.1")
    parser.add_argument("--pod-cidr", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    Path(args.work).mkdir(parents=True, exist_ok=True)
    agent = Agent(args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.register()
    heartbeat = threading.Thread(target=agent.heartbeat_loop, name="heartbeat", daemon=True)
    heartbeat.start()
    try:
        agent.sync_loop()
    finally:
        agent.shutdown()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
