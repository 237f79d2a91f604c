"""A process node: a minimal kubelet that runs pods as local processes (virtual-kubelet style).

    python tests/k8s/node_agent.py --kubeconfig KUBECONFIG --node NAME --pod-cidr CIDR \
        --work DIR [--cpu 4 --memory 8Gi --pods 20 --max-pod-ips N --token-refresh-after S]

It registers the Node (labelled pilothouse.dev/node-kind=process, tainted
pilothouse.dev/process-node=true:NoSchedule so that only pods meant for it land here),
renews its Lease in kube-node-lease, and for every pod bound to it:

- runs each container's ``command`` + ``args`` as a local process in a session of its own,
  with Kubernetes' ``$(VAR)`` expansion in command and args; the image is not used;
- makes each container's environment as the kubelet does: KUBERNETES_SERVICE_HOST/PORT (the
  apiserver of the agent's kubeconfig), then ``envFrom`` (Secrets and ConfigMaps, with
  ``prefix`` and ``optional``), then ``env``: literal values, the downward API's fieldRef
  (status.podIP(s), status.hostIP(s), metadata.name, metadata.namespace, metadata.uid,
  metadata.labels['K'], metadata.annotations['K'], spec.nodeName,
  spec.serviceAccountName) and resourceFieldRef (a container's requests and limits, an unset
  limit being the node's allocatable, with ``divisor``), secretKeyRef and configMapKeyRef
  (with ``optional``). A reference that is not optional and finds nothing leaves the
  container waiting with reason CreateContainerConfigError (and a Failed event), tried again
  every second while the pod's other containers run; the pod is Pending until it starts;
- gives a pod whose automountServiceAccountToken is not false (the pod's, else its
  ServiceAccount's) a token of its ServiceAccount, as the kubelet projects one: a TokenRequest
  bound to the pod (the apiserver's default audience, one hour), written with the cluster CA
  (``ca.crt``, the agent's kubeconfig's) and ``namespace`` to
  ``DIR/pods/NAMESPACE_POD/serviceaccount/`` (each file replaced at once) and renewed at
  80 % of its life (``--token-refresh-after`` sets another delay, for tests);
  PILOTHOUSE_SERVICEACCOUNT_DIR names that directory in every container (pilothouse's
  in-cluster loader reads it before /var/run/secrets/kubernetes.io/serviceaccount). A pod
  whose token cannot be made (its ServiceAccount is missing) stays Pending, its containers
  waiting in ContainerCreating saying why, with a FailedMount event, and takes no address
  until it can start (tried again every second);
- volumes: processes see no mounts, so a directory stands for each ``emptyDir`` volume
  (``DIR/pods/NAMESPACE_POD/volumes/NAME``, emptied when a pod of that name starts, kept with
  the logs afterwards) and the token's directory for a projected volume with a
  serviceAccountToken source (what the ServiceAccount admission adds). An argument of
  ``command``/``args``, or ``workingDir``, that is such a volume's ``mountPath`` or a path
  under it (``subPath`` included) is rewritten to that directory, before ``$(VAR)``
  expansion (so a variable whose value is a mountPath is left alone); nothing else (env
  values, paths inside files) is rewritten. Other kinds of volume are not made;
- gives the pod its own address from ``--pod-cidr`` as its pod IP (the processes bind it),
  or the node's address for ``hostNetwork`` pods; a pod that finds no free address stays
  Pending with reason ``NoPodIP``; a pod that ends (Succeeded/Failed) gives its address back;
- reports phase, pod IP, container states (running, waiting with its reason, terminated),
  lastState, restart counts, ``started`` and readiness as the pod status;
- runs probes (httpGet, tcpSocket or exec; exec ones in the container's env and working
  directory) in a small thread pool (one check in flight per probe, each bounded by its
  timeoutSeconds) and takes their results on a later pass: a slow probe holds up no pod. The
  startupProbe runs until it succeeds, and until then the container is not started and its
  readiness and liveness probes do not run; readiness decides the container's readiness; a
  liveness (or startup) probe failing failureThreshold times in a row has the container
  stopped as on deletion (preStop hook, SIGTERM, SIGKILL after the probe's or the pod's
  terminationGracePeriodSeconds, a Killing event) and started again unless restartPolicy is
  Never (restartCount + 1, the exit in lastState);
- restarts exited containers as restartPolicy says (with a back-off);
- when a container's main process exits, kills what it left running in its session (as a
  container runtime kills the container's cgroup): the session is *draining* and gets SIGKILL
  on every pass until nothing of it is left (a process forked between one pass's scan and its
  kill dies on the next); the pod's address goes back to the pool only once all of its
  sessions are drained;
- when the pod is deleted, stops its processes without holding up the other pods: each
  container's preStop hook first (exec and httpGet in a thread pool of their own, or a
  ``sleep``), then SIGTERM to it once its hook is over, and SIGKILL to everything left in the
  containers' sessions once the grace period is over, then completes the deletion. A hook
  still running then is killed (exec) or left to time out (httpGet) — the kubelet's extra
  two seconds after a hook that used the whole grace period are not given; a pod force-deleted
  (grace 0), or stopped because the API says it is over, or stopped when the agent stops, gets
  no hooks;
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
import base64
import concurrent.futures
import contextlib
import ctypes
import datetime as dt
import ipaddress
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
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
#: a pod's ServiceAccount token: asked for this long, renewed at this fraction of its life
TOKEN_SECONDS = 3600
TOKEN_REFRESH_AT = 0.8
#: how soon a pod whose token could not be made, or a container whose env could not be, is
#: tried again
RETRY_EVERY = 1.0
#: where pilothouse's in-cluster loader looks first for the token, ca.crt and namespace
SERVICEACCOUNT_DIR_ENV = "PILOTHOUSE_SERVICEACCOUNT_DIR"
#: the pod's terminationGracePeriodSeconds when it says none (the API defaults it to 30)
DEFAULT_GRACE = 30.0
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


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(.*)")


def quantity(text: Any) -> Decimal:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2e3``) as a number."""
    match = _QUANTITY.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    try:
        number, suffix = Decimal(match.group(1)), match.group(2)
    except InvalidOperation as error:
        raise ValueError(f"not a quantity: {text!r}") from error
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    if re.fullmatch(r"[eE][+-]?[0-9]+", suffix):
        return number.scaleb(int(suffix[1:]))
    raise ValueError(f"not a quantity: {text!r}")


def rewrite_path(arg: str, mounts: dict[str, Path]) -> str:
    """``arg`` with a volume's mountPath (the argument itself, or its leading directories)
    replaced by the directory that stands for the volume here; other arguments as they are.
    The longest mountPath wins; ``/`` is never rewritten."""
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/")
        if base and (arg in (base, mount) or arg.startswith(base + "/")):
            return str(mounts[mount]) + arg[len(base) :]
    return arg


class ConfigError(Exception):
    """What a container's env refers to is not there (the kubelet's CreateContainerConfigError)."""


class Blocked(Exception):
    """The pod cannot start yet (its ServiceAccount token cannot be made): it stays Pending
    with its containers ContainerCreating, as the kubelet keeps a pod whose volumes fail."""


@dataclass
class Probe:
    #: readiness, liveness or startup
    kind: str
    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    #: readiness: ready; startup: started; liveness: unused (``failed`` is what counts)
    ready: bool = False
    next_at: float = 0.0
    #: the check in flight (in the probe pool), and which start of the container it is for
    future: concurrent.futures.Future[bool] | None = None
    for_start: int = 0

    @property
    def failed(self) -> bool:
        return self.failures >= int(self.spec.get("failureThreshold", 3))

    def reset(self) -> None:
        """For a new start of the container: nothing counted, first check after the delay."""
        self.ready = False
        self.successes = self.failures = 0
        self.future = None  # a check of the previous start counts no more
        self.next_at = time.monotonic() + self.spec.get("initialDelaySeconds", 0)


@dataclass
class Stopping:
    """A container being stopped (its pod deleted, or its liveness probe failed): its preStop
    hook first (``hook`` in the hook pool, or a ``sleep`` until ``term_at``), then SIGTERM,
    then SIGKILL at ``kill_at`` (the end of the grace period) whatever the hook is doing."""

    kill_at: float
    term_at: float = 0.0
    hook: concurrent.futures.Future[str | None] | None = None
    term_sent: bool = False


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
    #: how many times a process was started for it (restartCount is one less)
    starts: int = 0
    last_exit: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None
    #: why it is not started (CreateContainerConfigError), tried again at ``retry_at``
    waiting: dict[str, str] | None = None
    retry_at: float = 0.0
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    restart_at: float = 0.0
    #: the env and working directory of the latest start (exec probes and hooks run in them)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    stopping: Stopping | None = None
    #: killed because a probe failed: restarted unless restartPolicy is Never, whatever its
    #: exit code
    probe_killed: bool = False

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def probes(self) -> list[Probe]:
        return [p for p in (self.startup, self.readiness, self.liveness) if p is not None]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def started(self) -> bool:
        """Running, and past its startupProbe if it has one."""
        return self.running and (self.startup is None or self.startup.ready)

    @property
    def ready(self) -> bool:
        """Started, not being stopped, and ready by its readinessProbe if it has one."""
        if not self.started or self.stopping is not None:
            return False
        return self.readiness.ready if self.readiness else True


@dataclass
class TokenMount:
    """A pod's ServiceAccount token, as the kubelet projects it: ``token``, ``ca.crt`` and
    ``namespace`` in ``dir``, renewed at ``refresh_at`` (time.monotonic())."""

    dir: Path
    service_account: str
    refresh_at: float = 0.0
    expires_at: float = 0.0


@dataclass
class Retry:
    """A pod that could not start: when to try again, and what was reported."""

    at: float
    message: str
    reported: bool = False


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
    #: the pod as the API gave it when it started (a plain dict)
    pod: dict[str, Any] = field(default_factory=dict)
    token: TokenMount | None = None
    #: the directory standing for each volume (emptyDirs, the projected token), by name
    volumes: dict[str, Path] = field(default_factory=dict)
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
    phase: str = "Pending"
    transitions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def grace(self) -> float:
        value = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE if value is None else float(value)


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
        # what pods are told of the apiserver (KUBERNETES_SERVICE_HOST/PORT, ca.crt): this
        # kubeconfig's server and CA, which the pods' processes reach as the agent does
        server = urllib.parse.urlsplit(configuration.host)
        self.api_host = server.hostname or "127.0.0.1"
        self.api_port = server.port or 443
        ca = configuration.ssl_ca_cert
        self.ca_pem = Path(ca).read_bytes() if ca else b""
        #: tests: renew tokens this many seconds after they are made, not at 80 % of their life
        self.token_refresh_after = float(args.token_refresh_after or 0)
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
        #: pods that could not start (no token yet), by UID
        self.blocked: dict[str, Retry] = {}
        self.errors: dict[str, str] = {}
        self.escaped_file = self.work / "escaped"
        #: probes' checks run here, never in the sync thread
        self.probe_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="probe")
        #: preStop hooks run here: a slow hook holds up neither the sync thread nor a probe
        self.hook_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="hook")
        #: exec probes' and hooks' PIDs: children of the agent that reap_orphans must leave to
        #: their Popen
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
        for uid in set(self.blocked) - seen:
            del self.blocked[uid]
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
            self.begin_stop(runtime, 0.0, hooks=False)
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
        """Starts the pod's containers once it has what they need: an address (else Pending,
        NoPodIP) and its ServiceAccount token (else Pending, ContainerCreating: tried again
        every RETRY_EVERY). A container whose env cannot be made waits on its own
        (CreateContainerConfigError) while the others run."""
        raw = self.core.api_client.sanitize_for_serialization(pod)
        spec = raw["spec"]
        uid = pod.metadata.uid
        host_network = bool(spec.get("hostNetwork"))
        if not host_network and not self.free_ips:
            self.report_no_ip(pod)
            return None
        retry = self.blocked.get(uid)
        if retry is not None and time.monotonic() < retry.at:
            return None
        pod_dir = self.work / "pods" / f"{pod.metadata.namespace}_{pod.metadata.name}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        try:
            token = self.mount_token(raw, pod_dir / "serviceaccount")
        except Blocked as why:
            self.report_blocked(pod, raw, str(why))
            return None
        self.blocked.pop(uid, None)
        ip = self.node_ip if host_network else self.free_ips[0]
        fields = {
            "status.podIP": ip,
            "status.podIPs": ip,
            "status.hostIP": self.node_ip,
            "status.hostIPs": self.node_ip,
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": self.node,
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        }
        runtime = PodRuntime(
            uid=uid,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            ip=ip,
            host_network=host_network,
            containers=[],
            start_time=now(),
            restart_policy=spec.get("restartPolicy", "Always"),
            env=fields,
            pod=raw,
            token=token,
            ip_released=host_network,  # the node's address is not the pool's
        )
        runtime.volumes = self.make_volumes(runtime, pod_dir / "volumes")
        for c in spec["containers"]:
            container = Container(c["name"], c, pod_dir / f"{c['name']}.log")
            for kind in ("readiness", "liveness", "startup"):
                if probe_spec := c.get(f"{kind}Probe"):
                    setattr(container, kind, Probe(kind, probe_spec))
            runtime.containers.append(container)
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

    def report_blocked(self, pod: Any, raw: dict[str, Any], message: str) -> None:
        """The pod cannot start yet: Pending, its containers waiting in ContainerCreating
        (with the message), and a FailedMount event, as the kubelet says it (once per
        message); it is tried again after RETRY_EVERY."""
        uid = pod.metadata.uid
        before = self.blocked.get(uid)
        retry = Retry(time.monotonic() + RETRY_EVERY, message)
        retry.reported = before is not None and before.reported and before.message == message
        self.blocked[uid] = retry
        if retry.reported:
            return
        log.warning("pod %s: cannot start: %s", self.name(pod), message)
        t = now()
        waiting = {"reason": "ContainerCreating", "message": message}
        body = {
            "metadata": {"uid": uid},
            "status": {
                "phase": "Pending",
                "hostIP": self.node_ip,
                "hostIPs": [{"ip": self.node_ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                    {
                        "type": "PodReadyToStartContainers",
                        "status": "False",
                        "lastTransitionTime": t,
                    },
                    {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": t},
                    {"type": "Ready", "status": "False", "lastTransitionTime": t},
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"waiting": waiting},
                    }
                    for c in raw["spec"]["containers"]
                ],
            },
        }
        if self.patch_status(pod.metadata.namespace, pod.metadata.name, body):
            retry.reported = True
            self.event(pod.metadata.namespace, pod.metadata.name, uid, "FailedMount", message)

    def event(
        self,
        namespace: str,
        pod: str,
        uid: str,
        reason: str,
        message: str,
        *,
        container: str = "",
        type_: str = "Warning",
    ) -> None:
        """A core/v1 Event about the pod, from "kubelet" on this node (best effort: a failure
        is logged, never raised)."""
        t = now()
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace}
        involved |= {"name": pod, "uid": uid}
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body: Any = {
            "metadata": {"generateName": f"{pod}.", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": t,
            "lastTimestamp": t,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:
            log.warning("pod %s/%s: event %s not written: %s", namespace, pod, reason, error)

    # --- the ServiceAccount token -----------------------------------------------------------

    def mount_token(self, raw: dict[str, Any], directory: Path) -> TokenMount | None:
        """The pod's ServiceAccount token in ``directory`` when the pod's
        automountServiceAccountToken (else its ServiceAccount's, else true) says so; None when
        it says not. Raises Blocked when the token cannot be made (the ServiceAccount is
        missing, say)."""
        spec, namespace = raw["spec"], raw["metadata"]["namespace"]
        account = spec.get("serviceAccountName") or "default"
        wanted = spec.get("automountServiceAccountToken")
        try:
            if wanted is None:
                found = self.core.read_namespaced_service_account(
                    account, namespace, _request_timeout=REQUEST_TIMEOUT
                )
                wanted = found.automount_service_account_token is not False
            if not wanted:
                shutil.rmtree(directory, ignore_errors=True)  # a previous pod's, by this name
                return None
            token = TokenMount(directory, account)
            self.write_token(raw, token)
        except ApiException as error:
            raise Blocked(
                f'MountVolume.SetUp failed for volume "kube-api-access": failed to fetch token:'
                f" {api_message(error)}"
            ) from error
        except Exception as error:  # the apiserver away, a file not written
            raise Blocked(f"failed to fetch token: {type(error).__name__}: {error}") from error
        return token

    def write_token(self, raw: dict[str, Any], token: TokenMount) -> None:
        """Asks for a token bound to the pod (TokenRequest: the apiserver's default audience,
        TOKEN_SECONDS) and writes ``token``, ``ca.crt`` and ``namespace`` (each file replaced
        at once, never seen half-written); sets when to renew it."""
        meta = raw["metadata"]
        request: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],  # the apiserver's own (its --api-audiences, or the issuer)
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        asked = time.monotonic()
        wall = dt.datetime.now(dt.UTC)
        answer = self.core.create_namespaced_service_account_token(
            token.service_account, meta["namespace"], request, _request_timeout=REQUEST_TIMEOUT
        )
        status = answer.status
        if status is None or not status.token or status.expiration_timestamp is None:
            raise ValueError("the TokenRequest came back without a token")
        life = max((status.expiration_timestamp - wall).total_seconds(), 1.0)
        token.dir.mkdir(parents=True, exist_ok=True)
        for name, data, mode in (
            ("token", status.token.encode(), 0o600),
            ("ca.crt", self.ca_pem, 0o644),
            ("namespace", meta["namespace"].encode(), 0o644),
        ):
            tmp = token.dir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(mode)
            tmp.replace(token.dir / name)
        token.expires_at = asked + life
        token.refresh_at = asked + (self.token_refresh_after or TOKEN_REFRESH_AT * life)

    def refresh_token(self, runtime: PodRuntime) -> None:
        """Renews the pod's token when it is due; a failure is logged and tried again soon
        (the old token serves until it expires)."""
        token = runtime.token
        if token is None or time.monotonic() < token.refresh_at:
            return
        try:
            self.write_token(runtime.pod, token)
        except Exception as error:
            token.refresh_at = time.monotonic() + 5 * RETRY_EVERY
            left = token.expires_at - time.monotonic()
            log.warning(
                "pod %s: token not renewed (%s: %s); %.0fs of it left, trying again",
                runtime.key,
                type(error).__name__,
                error,
                left,
            )
            return
        log.info("pod %s: token renewed", runtime.key)

    # --- volumes and env --------------------------------------------------------------------

    def make_volumes(self, runtime: PodRuntime, root: Path) -> dict[str, Path]:
        """A directory for each emptyDir volume (made empty), and the token's directory for
        a projected volume with a serviceAccountToken source (what the ServiceAccount
        admission adds); other kinds of volume are not made."""
        volumes: dict[str, Path] = {}
        for volume in runtime.pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume:
                where = root / name
                shutil.rmtree(where, ignore_errors=True)  # a previous pod's, by this name
                where.mkdir(parents=True)
                volumes[name] = where
            elif runtime.token is not None and any(
                "serviceAccountToken" in source
                for source in (volume.get("projected") or {}).get("sources") or []
            ):
                volumes[name] = runtime.token.dir
        return volumes

    def mounts(self, runtime: PodRuntime, spec: dict[str, Any]) -> dict[str, Path]:
        """The container's mountPaths of the volumes made here, with their directories."""
        found: dict[str, Path] = {}
        for mount in spec.get("volumeMounts") or []:
            where = runtime.volumes.get(mount["name"])
            if where is None:
                continue
            if sub := mount.get("subPath"):
                where = where / sub
                where.mkdir(parents=True, exist_ok=True)
            found[mount["mountPath"]] = where
        return found

    def read_data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's (decoded) or a ConfigMap's data; None if there is none by that name."""
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT
                )
                return {
                    k: base64.b64decode(v).decode(errors="replace")
                    for k, v in (secret.data or {}).items()
                }
            config_map = self.core.read_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
            return dict(config_map.data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def container_env(self, runtime: PodRuntime, spec: dict[str, Any]) -> dict[str, str]:
        """The container's environment, as the kubelet makes it: the apiserver's address
        (and the token's directory), then ``envFrom`` (Secrets and ConfigMaps, with prefix),
        then ``env`` (values with $(VAR) expansion, the downward API's fieldRef and
        resourceFieldRef, secretKeyRef, configMapKeyRef), each later one overriding. Raises
        ConfigError when a reference that is not optional finds nothing."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
            "HOSTNAME": runtime.name,
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
        }
        if runtime.token is not None:
            env[SERVICEACCOUNT_DIR_ENV] = str(runtime.token.dir)
        read: dict[tuple[str, str], dict[str, str] | None] = {}

        def data(kind: str, ref: dict[str, Any]) -> dict[str, str] | None:
            """None when missing and optional; ConfigError when missing and not."""
            name = ref.get("name") or ""
            if (kind, name) not in read:
                read[kind, name] = self.read_data(kind, runtime.namespace, name)
            found = read[kind, name]
            if found is None and not ref.get("optional"):
                raise ConfigError(f'{kind.lower()} "{name}" not found')
            return found

        for source in spec.get("envFrom") or []:
            kind = "Secret" if "secretRef" in source else "ConfigMap"
            ref = source.get("secretRef") or source.get("configMapRef")
            if not ref:
                continue
            for key, value in (data(kind, ref) or {}).items():
                name = (source.get("prefix") or "") + key
                if name and "=" not in name:  # the kubelet skips what cannot be a name
                    env[name] = value
        for item in spec.get("env") or []:
            name, source = item["name"], item.get("valueFrom")
            if not source:
                env[name] = expand(item.get("value") or "", env)
            elif ref := source.get("fieldRef"):
                env[name] = self.field(runtime, ref["fieldPath"])
            elif ref := source.get("resourceFieldRef"):
                env[name] = self.resource_field(runtime, spec, ref)
            else:
                kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                found = data(kind, ref)
                if found is None:
                    continue  # optional
                if ref.get("key") in found:
                    env[name] = found[ref["key"]]
                elif not ref.get("optional"):
                    raise ConfigError(
                        f"couldn't find key {ref.get('key')} in {kind}"
                        f" {runtime.namespace}/{ref.get('name')}"
                    )
        return env

    _LABEL_FIELD = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")

    def field(self, runtime: PodRuntime, path: str) -> str:
        """The downward API's fieldRef: the pod's name, namespace, UID, addresses, node,
        ServiceAccount, and one of its labels or annotations."""
        if match := self._LABEL_FIELD.fullmatch(path):
            values = runtime.pod["metadata"].get(match.group(1)) or {}
            return str(values.get(match.group(2), ""))
        return runtime.env.get(path, "")

    def resource_field(self, runtime: PodRuntime, spec: dict[str, Any], ref: dict[str, Any]) -> str:
        """The downward API's resourceFieldRef: a container's request or limit (a limit it
        does not set is the node's allocatable), divided by ``divisor`` and rounded up."""
        name = ref.get("containerName") or spec["name"]
        target = next((c for c in runtime.pod["spec"]["containers"] if c["name"] == name), spec)
        which, _, resource = ref["resource"].partition(".")
        resources = target.get("resources") or {}
        value = (resources.get(which) or {}).get(resource)
        if value is None:
            value = self.capacity.get(resource, "0") if which == "limits" else "0"
        # the API defaults an unset divisor to 0, which means 1
        divisor = quantity(ref.get("divisor") or "1") or Decimal(1)
        return str(math.ceil(quantity(value) / divisor))

    def run(self, runtime: PodRuntime, container: Container) -> None:
        """Starts the container's process: its env made (or the container waits, with
        CreateContainerConfigError, and is tried again after RETRY_EVERY), volume paths in its
        command and args rewritten (``rewrite_path``) before their $(VAR) expansion."""
        spec = container.spec
        try:
            env = self.container_env(runtime, spec)
        except Exception as error:  # ConfigError, or the API answering something else
            message = str(error)
            if isinstance(error, ApiException):
                message = api_message(error)
            elif not isinstance(error, ConfigError):
                message = f"{type(error).__name__}: {error}"
            self.wait(runtime, container, "CreateContainerConfigError", message)
            return
        mounts = self.mounts(runtime, spec)
        raw_argv = (spec.get("command") or []) + (spec.get("args") or [])
        argv = [expand(rewrite_path(a, mounts), env) for a in raw_argv]
        cwd = rewrite_path(spec.get("workingDir") or "", mounts) or str(container.log.parent)
        container.waiting = None
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
        container.starts += 1
        container.terminated = None
        container.env, container.cwd = env, cwd
        container.stopping = None
        container.probe_killed = False
        for probe in container.probes:
            probe.reset()
        self.record_pids()
        log.info(
            "pod %s container %s: pid %d: %s",
            runtime.key,
            container.name,
            container.process.pid,
            argv,
        )

    def wait(self, runtime: PodRuntime, container: Container, reason: str, message: str) -> None:
        """The container is not started: it says why (an event the first time it says so)."""
        waiting = {"reason": reason, "message": message}
        if container.waiting != waiting:
            log.warning("pod %s container %s: %s: %s", runtime.key, container.name, reason, message)
            self.event(
                runtime.namespace,
                runtime.name,
                runtime.uid,
                "Failed",
                f"Error: {message}",
                container=container.name,
            )
        container.waiting = waiting
        container.retry_at = time.monotonic() + RETRY_EVERY

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
        """Renew the token when due, notice exits, drain what they left, restart as the policy
        says, start containers whose env could not be made before, run the probes that are
        due, and kill (then restart) a container whose liveness or startup probe failed."""
        if runtime.kill_at is not None:
            return
        if runtime.phase not in TERMINAL:
            self.refresh_token(runtime)
        self.drain(runtime)  # what earlier exits left: killed again until nothing is left
        for container in runtime.containers:
            self.advance_stop(container)
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
                container.stopping = None
                container.last_exit = state
                container.terminated = state
                restart = runtime.restart_policy == "Always" or (
                    runtime.restart_policy == "OnFailure" and (code != 0 or container.probe_killed)
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
                self.run(runtime, container)
            elif (
                container.process is None
                and container.waiting
                and not container.restart_at
                and time.monotonic() >= container.retry_at
            ):
                self.run(runtime, container)
            if container.running and container.stopping is None:
                self.probes(runtime, container)
        self.drain(runtime)
        if all(
            c.process is None and not c.restart_at and not c.waiting for c in runtime.containers
        ):
            failed = any((c.terminated or {}).get("exitCode", 1) != 0 for c in runtime.containers)
            runtime.phase = "Failed" if failed else "Succeeded"
        elif any(c.starts == 0 and c.waiting for c in runtime.containers):
            runtime.phase = "Pending"  # a container has not started yet (as the kubelet says)
        else:
            runtime.phase = "Running"

    def probes(self, runtime: PodRuntime, container: Container) -> None:
        """The startupProbe until it succeeds; then the readiness and liveness probes. A
        startup or liveness probe that failed failureThreshold times in a row has the
        container killed (its preStop hook first, within the grace period) and restarted
        unless restartPolicy is Never."""
        startup = container.startup
        if startup is not None and not startup.ready:
            self.probe(runtime, container, startup)
            failed = startup if startup.failed else None
        else:
            for probe in (container.readiness, container.liveness):
                if probe is not None:
                    self.probe(runtime, container, probe)
            liveness = container.liveness
            failed = liveness if liveness is not None and liveness.failed else None
        if failed is None:
            return
        message = f"Container {container.name} failed {failed.kind} probe, will be restarted"
        log.info("pod %s: %s", runtime.key, message)
        self.event(
            runtime.namespace,
            runtime.name,
            runtime.uid,
            "Killing",
            message,
            container=container.name,
            type_="Normal",
        )
        container.probe_killed = True
        grace = failed.spec.get("terminationGracePeriodSeconds")
        self.stop_container(runtime, container, runtime.grace if grace is None else float(grace))

    def probe(self, runtime: PodRuntime, container: Container, probe: Probe) -> None:
        """Starts a due check in the probe pool (one in flight per probe) and takes the
        result of one that finished; the sync thread never waits for a check. Each check is
        bounded by timeoutSeconds itself (HTTP, connect and exec timeouts)."""
        spec = probe.spec
        if probe.future is not None:
            if not probe.future.done():
                return
            future, probe.future = probe.future, None
            if probe.for_start == container.starts:
                try:
                    self.count(probe, future.result())
                except Exception:
                    log.exception(
                        "pod %s container %s: %s probe failed",
                        runtime.key,
                        container.name,
                        probe.kind,
                    )
                    self.count(probe, False)
        if time.monotonic() < probe.next_at:
            return
        probe.next_at = time.monotonic() + spec.get("periodSeconds", 10)
        probe.for_start = container.starts
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

    def http_get(
        self, runtime: PodRuntime, container: Container, get: dict[str, Any], timeout: float
    ) -> int:
        """An httpGet probe's or hook's request; its status code."""
        host = get.get("host") or runtime.ip
        scheme = (get.get("scheme") or "HTTP").lower()
        url = f"{scheme}://{host}:{self.port(container, get['port'])}{get.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        return httpx.get(
            url, headers=headers, timeout=timeout, verify=False, trust_env=False
        ).status_code

    def exec_(self, container: Container, command: list[str], timeout: float) -> int | None:
        """An exec probe's or hook's command, in the container's env and working directory,
        in a session of its own (what it forks is killed with it); its exit code, or None
        when it ran past ``timeout`` (then it is killed)."""
        with self.children_lock:  # reap_orphans leaves this child to its Popen
            child = subprocess.Popen(
                command,
                env=container.env,
                cwd=container.cwd or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started = process(child.pid)
            self.probe_pids[child.pid] = started.start if started else 0
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # not reaped yet: the group's ID is still the child's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None
        finally:
            with self.children_lock:
                self.probe_pids.pop(child.pid, None)

    def check(
        self, runtime: PodRuntime, container: Container, spec: dict[str, Any], timeout: float
    ) -> bool:
        try:
            if get := spec.get("httpGet"):
                return 200 <= self.http_get(runtime, container, get, timeout) < 400
            if tcp := spec.get("tcpSocket"):
                address = (tcp.get("host") or runtime.ip, self.port(container, tcp["port"]))
                with socket.create_connection(address, timeout=timeout):
                    return True
            if exec_ := spec.get("exec"):
                return self.exec_(container, exec_["command"], timeout) == 0
        except (httpx.HTTPError, OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return False

    def run_hook(
        self, runtime: PodRuntime, container: Container, hook: dict[str, Any], timeout: float
    ) -> str | None:
        """A preStop hook (exec or httpGet), bounded by ``timeout`` (what is left of the grace
        period); None when it succeeded, else what went wrong (logged, as the kubelet's
        FailedPreStopHook: the container is stopped all the same)."""
        problem: str | None = None
        try:
            if get := hook.get("httpGet"):
                status = self.http_get(runtime, container, get, timeout)
                problem = None if 200 <= status < 400 else f"HTTP {status}"
            elif exec_ := hook.get("exec"):
                code = self.exec_(container, exec_["command"], timeout)
                if code is None:
                    problem = f"still running after {timeout:.0f}s (killed)"
                elif code != 0:
                    problem = f"exit code {code}"
            else:
                problem = f"unsupported handler {sorted(hook)}"
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        if problem:
            log.warning(
                "pod %s container %s: preStop hook failed: %s", runtime.key, container.name, problem
            )
        else:
            log.info("pod %s container %s: preStop hook done", runtime.key, container.name)
        return problem

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
            elif c.waiting:
                state = {"waiting": dict(c.waiting)}
            else:
                state = {"terminated": c.terminated or {"exitCode": 0, "reason": "Completed"}}
            status: dict[str, Any] = {
                "name": c.name,
                "image": c.spec.get("image", ""),
                "imageID": "",
                "containerID": f"process://{c.process.pid}" if c.running and c.process else "",
                "ready": c.ready,
                "started": c.started,
                "restartCount": c.restarts,
                "state": state,
            }
            if c.last_exit and "terminated" not in state:
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
            self.begin_stop(runtime, grace, hooks=True)
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
        self.begin_stop(runtime, 0.0, hooks=False)
        if self.stop_step(runtime):
            self.pods.pop(runtime.uid, None)
            self.release(runtime)
            log.info("pod %s: gone from the API; its processes are stopped", runtime.key)

    def begin_stop(self, runtime: PodRuntime, grace: float, *, hooks: bool) -> None:
        """Stops each running container (``stop_container``: its preStop hook first when
        ``hooks``, then SIGTERM); SIGKILL to what is left once the grace period is over. A
        shorter grace period given later (a second delete) brings the deadline forward."""
        deadline = time.monotonic() + grace
        if runtime.kill_at is not None:
            runtime.kill_at = min(runtime.kill_at, deadline)
            for c in runtime.containers:
                if c.stopping is not None:
                    c.stopping.kill_at = min(c.stopping.kill_at, deadline)
                self.advance_stop(c)
            return
        runtime.kill_at = deadline
        for c in runtime.containers:
            c.restart_at = 0.0
            c.waiting = None
            if c.process is not None and c.process.poll() is None:
                self.stop_container(runtime, c, grace, hooks=hooks)

    def stop_container(
        self, runtime: PodRuntime, container: Container, grace: float, *, hooks: bool = True
    ) -> None:
        """Begins stopping one container: its preStop hook (exec or httpGet in the hook pool,
        or a sleep) when ``hooks`` and there is grace, SIGTERM to its process group once the
        hook is over (``advance_stop``), SIGKILL to its session when the grace period is over.
        A hook still running then is killed (exec) or abandoned (httpGet) with the container."""
        start = time.monotonic()
        if container.stopping is not None:
            container.stopping.kill_at = min(container.stopping.kill_at, start + grace)
            self.advance_stop(container)
            return
        stopping = Stopping(kill_at=start + grace)
        hook = (container.spec.get("lifecycle") or {}).get("preStop") if hooks else None
        if hook and grace > 0:
            if sleep := hook.get("sleep"):
                stopping.term_at = start + min(float(sleep.get("seconds", 0)), grace)
            else:
                log.info("pod %s container %s: preStop hook", runtime.key, container.name)
                stopping.hook = self.hook_pool.submit(
                    self.run_hook, runtime, container, hook, grace
                )
        container.stopping = stopping
        self.advance_stop(container)

    @staticmethod
    def advance_stop(container: Container) -> None:
        """SIGTERM once the preStop hook is over (or the grace period is); SIGKILL to the
        container's session when the grace period is over (on every pass until it exits)."""
        stopping = container.stopping
        if stopping is None or container.process is None or container.process.poll() is not None:
            return
        at = time.monotonic()
        if not stopping.term_sent:
            hook_over = (stopping.hook is None or stopping.hook.done()) and at >= stopping.term_at
            if hook_over or at >= stopping.kill_at:
                stopping.term_sent = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.process.pid, signal.SIGTERM)
        if at >= stopping.kill_at and container.session is not None:
            signal_session(container.session, signal.SIGKILL)

    def stop_step(self, runtime: PodRuntime) -> bool:
        """True once nothing of the pod's containers runs; SIGKILL to all that is left of
        their sessions when the grace period is over."""
        assert runtime.kill_at is not None
        for c in runtime.containers:
            self.advance_stop(c)  # SIGTERM once its preStop hook is over
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
            self.begin_stop(runtime, SHUTDOWN_GRACE, hooks=False)
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
        self.hook_pool.shutdown(wait=False, cancel_futures=True)

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
    parser.add_argument(
        "--token-refresh-after",
        type=float,
        default=0.0,
        help="renew pods' tokens this many seconds after each is made, not at 80%% of its"
        " life (for tests)",
    )
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
