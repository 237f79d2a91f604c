"""A process node: a minimal kubelet that runs pods as local processes (virtual-kubelet style).

    python tests/k8s/node_agent.py --kubeconfig KUBECONFIG --node NAME --pod-cidr CIDR \
        --work DIR [--cpu 4 --memory 8Gi --pods 20 --max-pod-ips N]

It registers the Node (labelled pilothouse.dev/node-kind=process, tainted
pilothouse.dev/process-node=true:NoSchedule so that only pods meant for it land here),
renews its Lease in kube-node-lease, and for every pod bound to it:

- runs each container's ``command`` + ``args`` as a local process in a session of its own,
  with ``env`` from the pod spec (literal values and the downward-API fields status.podIP,
  status.hostIP, metadata.name, metadata.namespace, metadata.uid, spec.nodeName) and
  Kubernetes' ``$(VAR)`` expansion in command and args; the image is not used;
- gives the pod its own address from ``--pod-cidr`` as its pod IP (the processes bind it),
  or the node's address for ``hostNetwork`` pods; a pod that finds no free address stays
  Pending with reason ``NoPodIP``; a pod that ends (Succeeded/Failed) gives its address back;
- reports phase, pod IP, container states and restart counts, and readiness from the
  container's readinessProbe (httpGet, tcpSocket or exec) as the pod status;
- restarts exited containers as restartPolicy says;
- when a container's main process exits, kills what it left running in its session (as a
  container runtime kills the container's cgroup);
- when the pod is deleted, stops its processes without holding up the other pods: SIGTERM
  at once, SIGKILL to everything left in the containers' sessions once the grace period is
  over, then completes the deletion.

The agent is a child subreaper (PR_SET_CHILD_SUBREAPER): processes that a container forked
and orphaned become its children, so it can kill and reap them. Each pod is handled on its
own: an error with one pod is logged with its name and the others go on.

Container output goes to ``DIR/pods/NAMESPACE_POD/CONTAINER.log``; ``DIR/pids`` lists the
running containers' PIDs and ``DIR/sessions`` every container session it started (for the
test fixtures to check that nothing outlives the agent). On SIGTERM it stops every process it
started and exits. Each container process dies with it (PDEATHSIG).
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
from collections.abc import Callable
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
#: (connect, read) seconds for every API request: a stuck apiserver never hangs the agent
REQUEST_TIMEOUT = (5, 15)
#: how long the agent waits for its pods' processes when it is stopped itself
SHUTDOWN_GRACE = 2.0
TERMINAL = ("Succeeded", "Failed")
log = logging.getLogger("node-agent")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies when the agent dies


def become_subreaper() -> None:
    """Orphans of the containers' processes are re-parented to the agent, not to init."""
    if _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    session: int


def processes() -> list[Proc]:
    """Every process on the machine, from /proc/PID/stat (state, parent, session)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        found.append(Proc(int(entry.name), fields[0].decode(), int(fields[1]), int(fields[3])))
    return found


def session_alive(session: int) -> list[int]:
    """PIDs of the live (not zombie) processes in ``session``."""
    me = os.getpid()
    return [p.pid for p in processes() if p.session == session and p.state != "Z" and p.pid != me]


def signal_session(session: int, sig: int) -> int:
    """Sends ``sig`` to every live process of ``session``; returns how many there were."""
    pids = session_alive(session)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(pids)


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
    #: the session (= PID of the main process) of the latest start; 0 before the first
    session: int = 0
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
    host_network: bool
    containers: list[Container]
    start_time: str
    restart_policy: str
    env: dict[str, str]
    reported: dict[str, Any] | None = None
    #: set when stopping began: SIGKILL to what is left of the containers after this
    kill_at: float | None = None
    ip_released: bool = False
    phase: str = "Running"
    transitions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
        # the apiserver is local: never through a proxy from the environment
        configuration.proxy = None
        configuration.no_proxy = "*"
        api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = args.node
        self.node_ip = args.node_ip
        self.work = Path(args.work)
        self.capacity = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods)}
        network = ipaddress.ip_network(args.pod_cidr)
        hosts = [str(ip) for ip in list(network.hosts())[1:]]  # .1 is the node's
        self.free_ips = hosts[: args.max_pod_ips] if args.max_pod_ips else hosts
        self.pods: dict[str, PodRuntime] = {}
        self.stopping = threading.Event()
        self.node_uid = ""
        self.pid_file = self.work / "pids"
        self.sessions_file = self.work / "sessions"
        self.started = now()
        self.no_ip_reported: set[str] = set()
        self.errors: dict[str, str] = {}

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
            node = self.core.create_node(body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 409:
                raise
            node = self.core.read_node(self.node, _request_timeout=REQUEST_TIMEOUT)
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
            _request_timeout=REQUEST_TIMEOUT,
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
                self.node,
                "kube-node-lease",
                {"spec": body["spec"]},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease(
                "kube-node-lease", body, _request_timeout=REQUEST_TIMEOUT
            )

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(RENEW_EVERY):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self.core.patch_node_status(
                        self.node,
                        {"status": {"conditions": self.conditions()}},
                        _request_timeout=REQUEST_TIMEOUT,
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
        self.reap_orphans()
        try:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node}", _request_timeout=REQUEST_TIMEOUT
            ).items
        except Exception:
            # the apiserver is away: pods being stopped still get their SIGKILL on time
            for runtime in list(self.pods.values()):
                if runtime.kill_at is not None:
                    self.guarded(runtime.key, runtime.uid, lambda r=runtime: self.stop_step(r))
            raise
        seen = {pod.metadata.uid for pod in pods}
        self.no_ip_reported &= seen
        # stopping first: it frees addresses and never waits, so starts are not held up
        for uid, runtime in list(self.pods.items()):
            if uid not in seen:  # gone from the API (force-deleted): stop what runs
                self.guarded(runtime.key, uid, lambda r=runtime: self.vanished(r))
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                self.guarded(self.name(pod), pod.metadata.uid, lambda p=pod: self.delete(p))
        for pod in pods:
            if pod.metadata.deletion_timestamp is None:
                self.guarded(self.name(pod), pod.metadata.uid, lambda p=pod: self.handle(p))
        for uid in set(self.errors) - seen - set(self.pods):
            del self.errors[uid]
        self.record_pids()

    @staticmethod
    def name(pod: Any) -> str:
        return f"{pod.metadata.namespace}/{pod.metadata.name}"

    def guarded(self, key: str, uid: str, step: Callable[[], None]) -> None:
        """One pod's trouble is that pod's: logged with its name, the other pods go on. A
        repeated error is logged in full once, then in one line."""
        try:
            step()
        except Exception as error:
            text = f"{type(error).__name__}: {error}"
            if self.errors.get(uid) == text:
                log.warning("pod %s: still failing: %s", key, text.splitlines()[0])
            else:
                log.exception("pod %s: failed", key)
            self.errors[uid] = text
        else:
            self.errors.pop(uid, None)

    def handle(self, pod: Any) -> None:
        runtime = self.pods.get(pod.metadata.uid)
        if runtime is None:
            if pod.status.phase in TERMINAL:
                return
            runtime = self.start_pod(pod)
            if runtime is None:
                return
        self.tend(runtime)
        if runtime.phase in TERMINAL:
            self.release(runtime)
        self.report(runtime)

    def start_pod(self, pod: Any) -> PodRuntime | None:
        raw = self.core.api_client.sanitize_for_serialization(pod)
        spec = raw["spec"]
        host_network = bool(spec.get("hostNetwork"))
        if host_network:
            ip = self.node_ip
        elif self.free_ips:
            ip = self.free_ips[0]
        else:
            self.report_no_ip(pod)
            return None
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
            host_network=host_network,
            containers=[],
            start_time=now(),
            restart_policy=spec.get("restartPolicy", "Always"),
            env=fields,
            ip_released=host_network,  # the node's address is not the pool's
        )
        for c in spec["containers"]:
            probe = Probe(c["readinessProbe"]) if c.get("readinessProbe") else None
            if probe:
                probe.next_at = time.monotonic() + probe.spec.get("initialDelaySeconds", 0)
            runtime.containers.append(
                Container(c["name"], c, pod_dir / f"{c['name']}.log", probe=probe)
            )
        if not host_network:
            self.free_ips.remove(ip)
        self.no_ip_reported.discard(runtime.uid)
        self.pods[runtime.uid] = runtime
        for container in runtime.containers:
            self.run(runtime, container)
        log.info("pod %s: started on %s", runtime.key, ip)
        return runtime

    def report_no_ip(self, pod: Any) -> None:
        """No address left: the pod stays Pending and says why (checked again each pass)."""
        if pod.metadata.uid in self.no_ip_reported:
            return
        message = f"node {self.node} has no free pod IP left (all in use by running pods)"
        log.warning("pod %s: %s", self.name(pod), message)
        t = now()
        body = {
            "metadata": {"uid": pod.metadata.uid},
            "status": {
                "phase": "Pending",
                "reason": "NoPodIP",
                "message": message,
                "hostIP": self.node_ip,
                "hostIPs": [{"ip": self.node_ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                    {
                        "type": "PodReadyToStartContainers",
                        "status": "False",
                        "reason": "NoPodIP",
                        "message": message,
                        "lastTransitionTime": t,
                    },
                    {"type": "Ready", "status": "False", "lastTransitionTime": t},
                ],
            },
        }
        if self.patch_status(pod.metadata.namespace, pod.metadata.name, body):
            self.no_ip_reported.add(pod.metadata.uid)

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
                    start_new_session=True,  # the container: its session, found by its id
                    preexec_fn=_die_with_parent,  # only calls prctl
                )
            except OSError as error:
                container.terminated = {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(error),
                }
                return
        container.session = container.process.pid
        with self.sessions_file.open("a") as sessions:
            sessions.write(f"{container.session}\n")
        container.started_at = now()
        container.terminated = None
        if container.probe:
            container.probe.ready = False
            container.probe.successes = container.probe.failures = 0
        self.record_pids()
        log.info(
            "pod %s container %s: pid %d: %s",
            runtime.key,
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

    def reap_orphans(self) -> None:
        """Reaps the exited processes that were re-parented to the agent (it is a subreaper);
        its own containers' main processes are left to their Popen."""
        me = os.getpid()
        mine = {
            c.process.pid
            for r in self.pods.values()
            for c in r.containers
            if c.process is not None and c.process.returncode is None
        }
        for p in processes():
            if p.ppid == me and p.state == "Z" and p.pid not in mine:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)

    def tend(self, runtime: PodRuntime) -> None:
        """Notice exits, restart as the policy says, run readiness probes that are due."""
        if runtime.kill_at is not None:
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
                # the container is over: what it forked goes with it
                left = signal_session(container.session, signal.SIGKILL)
                container.process = None
                container.last_exit = state
                container.terminated = state
                restart = runtime.restart_policy == "Always" or (
                    runtime.restart_policy == "OnFailure" and code != 0
                )
                if restart:
                    backoff = min(10.0, 0.5 * 2**container.restarts)
                    container.restart_at = time.monotonic() + backoff
                log.info(
                    "pod %s container %s exited %s (%d processes left in its session killed)",
                    runtime.key,
                    container.name,
                    code,
                    left,
                )
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
                status = httpx.get(
                    url, headers=headers, timeout=timeout, verify=False, trust_env=False
                ).status_code
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
            # a precondition: a pod re-created under the same name is another pod
            "metadata": {"uid": runtime.uid},
            "status": {
                "phase": runtime.phase,
                "reason": None,
                "message": None,
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
            },
        }
        if body == runtime.reported:
            return
        if self.patch_status(runtime.namespace, runtime.name, body):
            runtime.reported = body

    def patch_status(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """Merge-patches the pod's status; False if the pod (with that UID) is gone."""
        try:
            self.core.patch_namespaced_pod_status(
                name,
                namespace,
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            # 404: deleted; 409/422: the name is another pod's now (the UID precondition)
            if error.status not in (404, 409, 422):
                raise
            log.info("pod %s/%s: status not written (%s)", namespace, name, error.status)
            return False
        return True

    # --- stopping: never waits; checked again on each pass ----------------------------------

    def delete(self, pod: Any) -> None:
        runtime = self.pods.get(pod.metadata.uid)
        if runtime is not None:
            grace = float(pod.metadata.deletion_grace_period_seconds or 0)
            if runtime.kill_at is None:
                log.info("pod %s: deleting (grace %ss)", runtime.key, grace)
            self.begin_stop(runtime, grace)
            if not self.stop_step(runtime):
                return
            self.pods.pop(runtime.uid, None)
            self.release(runtime)
            log.info("pod %s: stopped", runtime.key)
        # the kubelet's last word: containers are gone, the pod object may go
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def vanished(self, runtime: PodRuntime) -> None:
        self.begin_stop(runtime, 0.0)
        if self.stop_step(runtime):
            self.pods.pop(runtime.uid, None)
            self.release(runtime)
            log.info("pod %s: gone from the API; its processes are stopped", runtime.key)

    def begin_stop(self, runtime: PodRuntime, grace: float) -> None:
        """SIGTERM to each container (its process group) the first time; a shorter grace
        period given later (a second delete) brings the deadline forward."""
        deadline = time.monotonic() + grace
        if runtime.kill_at is not None:
            runtime.kill_at = min(runtime.kill_at, deadline)
            return
        runtime.kill_at = deadline
        for c in runtime.containers:
            c.restart_at = 0.0
            if c.process is not None and c.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.process.pid, signal.SIGTERM)

    def stop_step(self, runtime: PodRuntime) -> bool:
        """True once nothing of the pod's containers runs; SIGKILL to all that is left of
        their sessions when the grace period is over."""
        assert runtime.kill_at is not None
        sessions = [c.session for c in runtime.containers if c.session]
        for c in runtime.containers:
            if c.process is not None:
                c.process.poll()  # reaps the main process
        alive = {s for s in sessions if session_alive(s)}
        if not alive:
            for c in runtime.containers:
                c.process = None
            return True
        if time.monotonic() >= runtime.kill_at:
            for s in alive:
                signal_session(s, signal.SIGKILL)
        return False

    def release(self, runtime: PodRuntime) -> None:
        if not runtime.ip_released:
            runtime.ip_released = True
            self.free_ips.append(runtime.ip)

    def shutdown(self) -> None:
        self.stopping.set()
        for runtime in self.pods.values():
            self.begin_stop(runtime, SHUTDOWN_GRACE)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 3
        while self.pods and time.monotonic() < deadline:
            self.reap_orphans()
            for uid, runtime in list(self.pods.items()):
                if self.stop_step(runtime):
                    del self.pods[uid]
            time.sleep(0.05)  # polling the processes' exit, bounded by the deadline
        for runtime in self.pods.values():
            for c in runtime.containers:
                if c.session:
                    signal_session(c.session, signal.SIGKILL)
        self.reap_orphans()
        self.pods.clear()
        self.record_pids()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-ip", default="127.0.0.1")
    parser.add_argument("--pod-cidr", required=True)
    parser.add_argument(
        "--max-pod-ips", type=int, default=0, help="use only the first N addresses of the CIDR"
    )
    parser.add_argument("--work", required=True)
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    Path(args.work).mkdir(parents=True, exist_ok=True)
    become_subreaper()
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
