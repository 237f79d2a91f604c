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
  container runtime kills the container's cgroup): the session is *draining* and gets SIGKILL
  on every pass until nothing of it is left (a process forked between one pass's scan and its
  kill dies on the next); the pod's address goes back to the pool only once all of its
  sessions are drained;
- when the pod is deleted, stops its processes without holding up the other pods: SIGTERM
  at once, SIGKILL to everything left in the containers' sessions once the grace period is
  over, then completes the deletion;
- runs readiness probes in a small thread pool (one in flight per container, each bounded by
  its timeoutSeconds) and takes their results on a later pass: a slow probe holds up no pod;
- compares what it would report with the pod status the API lists and patches whenever they
  differ, so a status changed by someone else is put right on the next pass; a pod the API
  says is over (Succeeded/Failed) while it still runs here is stopped.

Sessions are signalled only while they are known to be the containers': each is recorded with
its leader's start time (field 22 of /proc/PID/stat), a process counts as the session's only
if it started no earlier than that leader (and a live process with the leader's PID has that
start time), and a session found empty once is *drained* and never signalled again — its
number is free for the kernel to hand out to some other process then.

The agent is a child subreaper (PR_SET_CHILD_SUBREAPER): processes that a container forked
and orphaned become its children, so it can kill and reap them. Each pod is handled on its
own: an error with one pod is logged with its name and the others go on.

Limit: containers are sessions, not cgroups. A process that calls setsid() (or setpgid into
another session) leaves its container's session and escapes the kill on container exit and on
pod deletion; while the agent runs it is still re-parented to the agent when orphaned, and at
shutdown the agent SIGKILLs every live child of its own outside its own session (its PPid
checked first) and lists them in ``DIR/escaped`` (``PID SESSION COMMAND`` per line) for the
test fixtures to fail on. An escapee is found then only if it has been re-parented to the
agent by then (its parent gone); one whose parent itself escaped and still lives is not found
at all. A cgroup-based kill would close this and is out of scope.

Container output goes to ``DIR/pods/NAMESPACE_POD/CONTAINER.log``; ``DIR/pids`` lists the
running containers' PIDs and ``DIR/sessions`` records every container session it started
(``start SID LEADER_START`` when it starts, ``drained SID LEADER_START TICKS`` when nothing of
it is left, TICKS being the boot-clock time then in the same clock ticks as
/proc/PID/stat's start times), for the test fixtures to check, by identity and never by bare
number, that nothing outlives the agent. On SIGTERM it stops every process it started and
exits. Each container process dies with it (PDEATHSIG).
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
    #: start time, clock ticks after boot (field 22 of /proc/PID/stat)
    start: int


def _parse_stat(pid: int | str, raw: bytes) -> Proc:
    fields = raw.rsplit(b")", 1)[1].split()
    return Proc(int(pid), fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]))


def process(pid: int) -> Proc | None:
    """One process from /proc/PID/stat; None if there is none with that PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return _parse_stat(pid, stat.read())
    except (OSError, IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    """Every process on the machine, from /proc/PID/stat (state, parent, session, start)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                found.append(_parse_stat(entry.name, stat.read()))
        except (OSError, IndexError, ValueError):
            continue
    return found


def boot_ticks() -> int:
    """Now, in the clock of /proc/PID/stat's start times (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True)
class Session:
    """A container's session, by identity: its ID (the leader's PID) and the leader's start
    time. The number alone is not enough: once the session is empty the kernel may give the
    PID (and so the session ID) to an unrelated process."""

    sid: int
    start: int


def members(session: Session, procs: list[Proc], until: int | None = None) -> list[int]:
    """PIDs of the live (not zombie) processes of ``session``: in a session with its ID that
    started no earlier than its leader (and no later than ``until``, boot ticks, if given).
    While any process is in a session the kernel does not reuse its ID, so a live process with
    the leader's PID but another start time means the session is over and the number someone
    else's: then none are the session's."""
    leader = next((p for p in procs if p.pid == session.sid), None)
    if leader is not None and leader.start != session.start:
        return []
    me = os.getpid()
    return [
        p.pid
        for p in procs
        if p.session == session.sid
        and p.state != "Z"
        and p.pid != me
        and p.start >= session.start
        and (until is None or p.start <= until)
    ]


def signal_session(session: Session, sig: int) -> int:
    """Sends ``sig`` to every live process of ``session``; returns how many there were. A
    process it may not signal is logged and skipped (it cannot wedge the agent)."""
    pids = members(session, processes())
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            log.warning("session %d: cannot signal pid %d: %s", session.sid, pid, error)
    return len(pids)


def read_sessions(path: Path) -> dict[Session, int | None]:
    """The sessions an agent recorded in its ``sessions`` file: each with the boot-tick time
    it was found drained, or None while it was not."""
    found: dict[Session, int | None] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "start":
            found.setdefault(Session(int(parts[1]), int(parts[2])), None)
        elif len(parts) >= 4 and parts[0] == "drained":
            found[Session(int(parts[1]), int(parts[2]))] = int(parts[3])
    return found


def recorded_processes(path: Path) -> list[tuple[int, int]]:
    """(pid, session) of the live processes that belong to a session recorded in the agent's
    ``sessions`` file ``path``, by identity (see ``members``): a process in a session that was
    drained counts only if it started before the session was found empty."""
    procs = processes()
    return [
        (pid, session.sid)
        for session, drained_at in read_sessions(path).items()
        for pid in members(session, procs, until=drained_at)
    ]


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
    #: the check in flight (in the probe pool), and which start of the container it is for
    future: concurrent.futures.Future[bool] | None = None
    for_start: str = ""


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    #: the session of the latest start (its ID is the main process's PID); None before the
    #: first and once it is handed to the pod's draining set
    session: Session | None = None
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
    #: sessions of exited containers, SIGKILLed on every pass until nothing of them is left
    draining: list[Session] = field(default_factory=list)
    #: the phase the API gave a pod that still ran here: stopped, then left alone
    api_terminal: str = ""
    #: the gist of the status the API listed last (to log a change by someone else once)
    listed_gist: tuple[Any, ...] | None = None
    ip_released: bool = False
    phase: str = "Running"
    transitions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


#: the pod conditions the agent reports (others, e.g. DisruptionTarget, are someone else's)
OWN_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "PodScheduled",
)


def status_gist(status: dict[str, Any]) -> tuple[Any, ...]:
    """What of a pod status (as the API serializes it) the agent keeps right: phase, pod IP,
    its conditions' statuses and each container's readiness, restarts and state."""
    conditions = tuple(
        sorted(
            (c.get("type"), c.get("status"))
            for c in status.get("conditions") or []
            if c.get("type") in OWN_CONDITIONS
        )
    )
    containers = tuple(
        sorted(
            (
                c.get("name"),
                bool(c.get("ready")),
                c.get("restartCount", 0),
                tuple(sorted(k for k, v in (c.get("state") or {}).items() if v)),
            )
            for c in status.get("containerStatuses") or []
        )
    )
    return (status.get("phase"), status.get("podIP"), conditions, containers)


def api_message(error: ApiException) -> str:
    """The message of an API error's Status body (else its reason)."""
    import json

    with contextlib.suppress(Exception):
        return str(json.loads(error.body).get("message") or error.reason)
    return str(error.reason)


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
        self.escaped_file = self.work / "escaped"
        #: readiness checks run here, never in the sync thread
        self.probe_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="probe")
        #: exec probes' PIDs: children of the agent that reap_orphans must leave to their Popen
        self.probe_pids: dict[int, int] = {}  # PID: start time
        self.children_lock = threading.Lock()

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

    def register(self, patience: float = 60.0) -> None:
        """Registers the node, retrying transient errors (the apiserver starting, restarting
        or overloaded: 429, 5xx, connection errors) for ``patience`` seconds."""
        deadline = time.monotonic() + patience
        wait = 0.5
        while True:
            try:
                self._register()
                return
            except ApiException as error:
                transient = error.status in (0, 429) or error.status >= 500
                if not transient or time.monotonic() >= deadline:
                    raise
                log.warning(
                    "registering node %s: %s %s; retrying", self.node, error.status, error.reason
                )
            except Exception as error:
                if time.monotonic() >= deadline:
                    raise
                log.warning("registering node %s: %s; retrying", self.node, error)
            time.sleep(wait)
            wait = min(wait * 2, 5.0)

    def _register(self) -> None:
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
            # and what exited containers left is killed as ever
            for runtime in list(self.pods.values()):
                if runtime.kill_at is not None:
                    self.guarded(runtime.key, runtime.uid, lambda r=runtime: self.stop_step(r))
                elif runtime.draining:
                    self.guarded(runtime.key, runtime.uid, lambda r=runtime: self.drain(r))
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
        listed = pod.status.phase
        if listed in TERMINAL and runtime.phase not in TERMINAL and not runtime.api_terminal:
            # someone else ended the pod (the API is the truth): stop what still runs here
            log.warning(
                "pod %s: the API says %s while it runs here; stopping it", runtime.key, listed
            )
            runtime.api_terminal = listed
            self.begin_stop(runtime, 0.0)
        if runtime.api_terminal:
            if self.stop_step(runtime):
                self.pods.pop(runtime.uid, None)
                self.release(runtime)
                log.info("pod %s: stopped (%s in the API)", runtime.key, runtime.api_terminal)
            return
        self.tend(runtime)
        if runtime.phase in TERMINAL and not runtime.draining:
            self.release(runtime)
        self.report(runtime, pod)

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
        leader = process(container.process.pid)
        # the leader's start time (it cannot be reaped before the Popen is polled, so this is
        # the container's process, alive or a zombie)
        container.session = Session(container.process.pid, leader.start if leader else 0)
        self.note_session("start", container.session)
        container.started_at = now()
        container.terminated = None
        if container.probe:
            container.probe.ready = False
            container.probe.successes = container.probe.failures = 0
            container.probe.future = None  # a check of the previous start counts no more
        self.record_pids()
        log.info(
            "pod %s container %s: pid %d: %s",
            runtime.key,
            container.name,
            container.process.pid,
            argv,
        )

    def note_session(self, what: str, session: Session) -> None:
        line = f"start {session.sid} {session.start}"
        if what == "drained":
            line = f"drained {session.sid} {session.start} {boot_ticks()}"
        with self.sessions_file.open("a") as sessions:
            sessions.write(line + "\n")

    def drain(self, runtime: PodRuntime) -> bool:
        """SIGKILL to what is left of the pod's exited containers' sessions, on every pass; a
        session found empty is drained: recorded so and never signalled again. True once none
        is left."""
        if not runtime.draining:
            return True
        procs = processes()
        left = []
        for session in runtime.draining:
            pids = members(session, procs)
            if not pids:
                self.note_session("drained", session)
                log.info("pod %s: session %d drained", runtime.key, session.sid)
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except PermissionError as error:
                    log.warning("pod %s: cannot kill pid %d: %s", runtime.key, pid, error)
            left.append(session)
        runtime.draining = left
        return not left

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
        with self.children_lock:  # an exec probe's child is its Popen's to reap
            for p in processes():
                if p.ppid == me and p.state == "Z" and p.pid not in mine | self.probe_pids.keys():
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(p.pid, os.WNOHANG)

    def tend(self, runtime: PodRuntime) -> None:
        """Notice exits, drain what they left, restart as the policy says, run readiness
        probes that are due."""
        if runtime.kill_at is not None:
            return
        self.drain(runtime)  # what earlier exits left: killed again until nothing is left
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
                # the container is over: what it forked goes with it, killed on every pass
                # until its session is empty (what forks between scan and kill dies next)
                left = 0
                if container.session is not None:
                    left = signal_session(container.session, signal.SIGKILL)
                    runtime.draining.append(container.session)
                    container.session = None
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
        self.drain(runtime)
        if all(c.process is None and not c.restart_at for c in runtime.containers):
            failed = any((c.terminated or {}).get("exitCode", 1) != 0 for c in runtime.containers)
            runtime.phase = "Failed" if failed else "Succeeded"

    def probe(self, runtime: PodRuntime, container: Container) -> None:
        """Starts a due check in the probe pool (one in flight per container) and takes the
        result of one that finished; the sync thread never waits for a check. Each check is
        bounded by timeoutSeconds itself (HTTP, connect and exec timeouts)."""
        probe = container.probe
        assert probe is not None
        spec = probe.spec
        if probe.future is not None:
            if not probe.future.done():
                return
            future, probe.future = probe.future, None
            if probe.for_start == container.started_at:
                try:
                    self.count(probe, future.result())
                except Exception:
                    log.exception("pod %s container %s: probe failed", runtime.key, container.name)
                    self.count(probe, False)
        if time.monotonic() < probe.next_at:
            return
        probe.next_at = time.monotonic() + spec.get("periodSeconds", 10)
        probe.for_start = container.started_at
        probe.future = self.probe_pool.submit(
            self.check, runtime, container, spec, float(spec.get("timeoutSeconds", 1))
        )

    @staticmethod
    def count(probe: Probe, ok: bool) -> None:
        spec = probe.spec
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
                with self.children_lock:  # reap_orphans leaves this child to its Popen
                    child = subprocess.Popen(
                        exec_["command"],
                        env=self.container_env(runtime, container.spec),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,  # what it forks is killed with it
                    )
                    started = process(child.pid)
                    self.probe_pids[child.pid] = started.start if started else 0
                try:
                    return child.wait(timeout=timeout) == 0
                except subprocess.TimeoutExpired:
                    # not reaped yet: the group's ID is still the child's
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    return False
                finally:
                    with self.children_lock:
                        self.probe_pids.pop(child.pid, None)
        except (httpx.HTTPError, OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return False

    def report(self, runtime: PodRuntime, pod: Any = None) -> None:
        """Patches the pod's status when what the agent would say differs from what it said
        last, or from the status the API listed (``pod``): a change by someone else (Ready set
        to False, say) is put right on the next pass."""
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
        if pod is not None and runtime.reported is not None:
            listed = self.core.api_client.sanitize_for_serialization(pod.status) or {}
            if status_gist(listed) != status_gist(runtime.reported["status"]):
                if status_gist(listed) != runtime.listed_gist:
                    log.info(
                        "pod %s: the API's status differs from ours; writing ours", runtime.key
                    )
                runtime.reported = None
            runtime.listed_gist = status_gist(listed)
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
            # 404: deleted; 409: the name is another pod's now (the UID precondition); 422:
            # that too, or a status the API rejects (worth a look: logged with its message)
            if error.status not in (404, 409, 422):
                raise
            if error.status == 422:
                log.warning(
                    "pod %s/%s: status not written (422): %s",
                    namespace,
                    name,
                    api_message(error),
                )
            else:
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
        for c in runtime.containers:
            if c.process is not None:
                c.process.poll()  # reaps the main process
            if c.session is not None:  # its session: drained like an exited container's
                runtime.draining.append(c.session)
                c.session = None
        if time.monotonic() >= runtime.kill_at:
            done = self.drain(runtime)  # SIGKILL to what is left; empty sessions drained
        else:
            procs = processes()
            still = []
            for session in runtime.draining:
                if members(session, procs):
                    still.append(session)
                else:
                    self.note_session("drained", session)
            runtime.draining = still
            done = not still
        if done:
            for c in runtime.containers:
                c.process = None
        return done

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
        # what is still left: SIGKILL again until drained (bounded: a fork bomb is not)
        deadline = time.monotonic() + 3
        while self.pods and time.monotonic() < deadline:
            for uid, runtime in list(self.pods.items()):
                runtime.kill_at = 0.0
                if self.stop_step(runtime):
                    del self.pods[uid]
            self.reap_orphans()
            time.sleep(0.05)
        self.kill_probes()
        self.kill_escaped()
        self.reap_orphans()
        self.pods.clear()
        self.record_pids()
        self.probe_pool.shutdown(wait=False, cancel_futures=True)

    def kill_probes(self) -> None:
        """Exec probes still running (each in a session of its own): killed with what they
        forked. Each is checked to be the agent's child still, with the start time it had."""
        me = os.getpid()
        with self.children_lock:
            for pid, start in list(self.probe_pids.items()):
                found = process(pid)
                if found is not None and found.ppid == me and found.start == start:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)

    def kill_escaped(self) -> None:
        """Children of the agent still alive now, outside its own session, left their
        container's session (setsid) and so escaped the kills by session: SIGKILL them (each
        the agent's child still, checked just before: an unreaped child keeps its PID) and list
        them in ``escaped`` for the test fixtures to fail on."""
        me, own = os.getpid(), os.getsid(0)
        # survivors of sessions not drained yet are not escapees: the fixtures find those
        known = {s.sid for r in self.pods.values() for s in r.draining}
        known |= set(self.probe_pids)  # exec probes lead sessions of their own
        found = []
        for p in processes():
            if p.ppid != me or p.state == "Z" or p.session == own or p.session in known:
                continue
            now_ = process(p.pid)
            if now_ is None or now_.ppid != me or now_.start != p.start:
                continue
            try:
                command = Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                command = b"?"
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            found.append(f"{p.pid} {p.session} {command.decode(errors='replace').strip()}")
        if found:
            log.error("processes escaped their container's session (setsid): %s", found)
            with self.escaped_file.open("a") as out:
                out.write("\n".join(found) + "\n")


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
