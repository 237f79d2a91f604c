"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (and kwok for simulated nodes), built by hack/k8s-testenv/build.sh.

Everything here is a real process on 127.0.0.1 with real TLS: a CA, a serving certificate for
the apiserver, a client certificate for an admin in ``system:masters``, service-account keys,
RBAC. The control plane is stopped by the PIDs it started, nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
TESTENV = ROOT / "hack" / "k8s-testenv"
BUILD_SCRIPT = TESTENV / "build.sh"
KWOK_STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
SERVICE_CIDR = "10.96.0.0/24"
#: kwok hands its pods IPs from here (nothing listens on them: the pods are simulated)
KWOK_POD_CIDR = "10.244.0.0/16"
T = TypeVar("T")


class BinariesMissing(RuntimeError):
    pass


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (TESTENV / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def bin_dir() -> Path:
    """Where build.sh puts the binaries ($PILOTHOUSE_K8S_BIN_DIR overrides)."""
    if override := os.environ.get("PILOTHOUSE_K8S_BIN_DIR"):
        return Path(override)
    try:
        result = subprocess.run(
            [str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as error:
        raise BinariesMissing(
            f"{BUILD_SCRIPT} --print-bin-dir failed (exit {error.returncode}):\n"
            f"{(error.stderr or '').strip()}\nBuild the Kubernetes test binaries with:\n"
            f"    hack/k8s-testenv/build.sh"
        ) from error
    return Path(result.stdout.strip())


def require_binaries() -> Path:
    where = bin_dir()
    missing = [b for b in BINARIES if not os.access(where / b, os.X_OK)]
    if missing or not (where / ".complete").exists():
        v = versions()
        raise BinariesMissing(
            f"the Kubernetes test binaries are not built: missing {', '.join(missing) or '.complete'}"
            f" in {where}.\nBuild them (6 to 12 min and 5 GiB of Go caches the first time on"
            f" 2 cores, a no-op afterwards) with:\n    hack/k8s-testenv/build.sh\n"
            f"(kubernetes {v.get('KUBE_VERSION')}, etcd {v.get('ETCD_VERSION')},"
            f" kwok {v.get('KWOK_VERSION')}; scripts/check runs it for you)"
        )
    return where


def api_client(kubeconfig: Path) -> Any:
    """A kubernetes ApiClient for ``kubeconfig`` that ignores proxies from the environment
    (HTTPS_PROXY and the like: the apiserver is local) and times requests out."""
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.proxy = None
    configuration.no_proxy = "*"
    return client.ApiClient(configuration)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --- certificates ---------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Pki:
    dir: Path

    ca_crt = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    apiserver_crt = property(lambda self: self.dir / "apiserver.crt")
    apiserver_key = property(lambda self: self.dir / "apiserver.key")
    admin_crt = property(lambda self: self.dir / "admin.crt")
    admin_key = property(lambda self: self.dir / "admin.key")
    sa_key = property(lambda self: self.dir / "sa.key")
    sa_pub = property(lambda self: self.dir / "sa.pub")
    #: etcd's serving and peer certificate (server and client auth, 127.0.0.1/localhost)
    etcd_crt = property(lambda self: self.dir / "etcd.crt")
    etcd_key = property(lambda self: self.dir / "etcd.key")
    #: the apiserver's client certificate for etcd (etcd requires client certificates)
    etcd_client_crt = property(lambda self: self.dir / "apiserver-etcd-client.crt")
    etcd_client_key = property(lambda self: self.dir / "apiserver-etcd-client.key")

    @classmethod
    def create(cls, where: Path) -> Pki:
        """A CA, the apiserver's serving certificate, an admin client certificate, etcd's
        certificate and the apiserver's client certificate for etcd, and the service-account
        signing key pair (ECDSA P-256: fast to generate)."""
        where.mkdir(parents=True, exist_ok=True)
        pki = cls(where)
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        later = now + dt.timedelta(days=2)

        ca_key = _key()
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("pilothouse-test-ca"))
            .issuer_name(_name("pilothouse-test-ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            subject: x509.Name,
            usage: x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier],
            sans: Sequence[x509.GeneralName] = (),
        ) -> tuple[bytes, bytes]:
            usages = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
            key = _key()
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(later)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if sans:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(list(sans)), critical=False
                )
            cert = builder.sign(ca_key, hashes.SHA256())
            return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

        service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
        serving = leaf(
            _name("kube-apiserver"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(service_ip),
            ],
        )
        admin = leaf(_name("pilothouse-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
        etcd = leaf(
            _name("etcd"),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],  # peer too
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        etcd_client = leaf(_name("kube-apiserver-etcd-client"), ExtendedKeyUsageOID.CLIENT_AUTH)
        sa = _key()

        pki.ca_crt.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        pki.ca_key.write_bytes(_pem_key(ca_key))
        pki.apiserver_crt.write_bytes(serving[0])
        pki.apiserver_key.write_bytes(serving[1])
        pki.admin_crt.write_bytes(admin[0])
        pki.admin_key.write_bytes(admin[1])
        pki.etcd_crt.write_bytes(etcd[0])
        pki.etcd_key.write_bytes(etcd[1])
        pki.etcd_client_crt.write_bytes(etcd_client[0])
        pki.etcd_client_key.write_bytes(etcd_client[1])
        pki.sa_key.write_bytes(_pem_key(sa))
        pki.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for key_file in (
            pki.ca_key,
            pki.apiserver_key,
            pki.admin_key,
            pki.etcd_key,
            pki.etcd_client_key,
            pki.sa_key,
        ):
            key_file.chmod(0o600)
        return pki

    def client_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_crt))
        context.load_cert_chain(str(self.admin_crt), str(self.admin_key))
        return context

    def etcd_client_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_crt))
        context.load_cert_chain(str(self.etcd_client_crt), str(self.etcd_client_key))
        return context


def write_kubeconfig(path: Path, server: str, pki: Pki) -> Path:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: pilothouse-test
  cluster:
    server: {server}
    certificate-authority-data: {b64(pki.ca_crt)}
users:
- name: pilothouse-admin
  user:
    client-certificate-data: {b64(pki.admin_crt)}
    client-key-data: {b64(pki.admin_key)}
contexts:
- name: pilothouse-test
  context: {{cluster: pilothouse-test, user: pilothouse-admin, namespace: default}}
current-context: pilothouse-test
"""
    )
    path.chmod(0o600)
    return path


# --- processes ------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: if the test process dies without its
    teardown (kill -9, a crash), the kernel kills the component too."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks after boot)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def group_members(pgid: int, leader_start: int) -> list[int]:
    """Live processes of process group ``pgid`` that started no earlier than its leader did
    (``leader_start``): once the group is empty its number may be another's, so a bare
    killpg after the leader was reaped could hit an unrelated group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid and int(fields[19]) >= leader_start:
            found.append(int(entry.name))
    return found


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: the process's start time (ticks after boot), to tell its group from a later one
    start: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its process group (the group is this PID: start_new_session), then
        SIGKILL after ``grace``; reaps it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # whatever it forked into its group and left behind: it is reaped now, so by
        # identity (group and start time), never a bare killpg of a number that is free
        for pid in group_members(self.pid, self.start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def start_process(
    name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env if env is not None else dict(os.environ),
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only calls prctl
        )
    return Process(name, popen, log, _start_time(popen.pid) or 0)


# --- the control plane ----------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running control plane; ``processes`` are exactly what it started."""

    bin: Path
    work: Path
    pki: Pki
    kubeconfig: Path
    server: str
    #: etcd's client URL (https, client certificates required); set once etcd runs
    etcd_url: str = ""
    processes: list[Process] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.work / "logs"

    def kubectl(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server,
            verify=self.pki.client_ssl_context(),
            timeout=10,
            trust_env=False,  # local: never through a proxy from the environment
        )

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        process = start_process(name, argv, self.log_dir, env)
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise AssertionError(
                    f"{process.name} (pid {process.pid}) exited with {process.popen.returncode};"
                    f" log {process.log}:\n{process.tail()}"
                )

    def stop(self) -> None:
        """Stops what it started, newest first (the apiserver outlives its clients, etcd
        outlives the apiserver)."""
        for process in reversed(self.processes):
            process.stop()

    def keep_logs(self, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        for item in (self.log_dir, self.kubeconfig):
            target = into / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        return into


def start_control_plane(work: Path, bin: Path, *, timeout: float = 120) -> ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler; returns once the
    apiserver is ready, both controllers are healthy and the default ServiceAccount exists.

    Ports are picked free just before each component binds them; if another process takes
    one in between, the start is retried once on fresh ports."""
    pki = Pki.create(work / "pki")
    for attempt in (1, 2):
        (work / "logs").mkdir(parents=True, exist_ok=True)
        api_port = free_port()
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = write_kubeconfig(work / "kubeconfig", server, pki)
        plane = ControlPlane(bin, work, pki, kubeconfig, server)
        try:
            _start(plane, api_port, timeout)
        except AssertionError:
            plane.stop()
            if attempt == 2 or not _port_taken(work / "logs"):
                raise
            (work / "logs").rename(work / "logs.port-taken")
            shutil.rmtree(work / "etcd", ignore_errors=True)
            continue
        except BaseException:
            plane.stop()
            raise
        return plane
    raise AssertionError("unreachable")


def _port_taken(logs: Path) -> bool:
    return any("address already in use" in f.read_text(errors="replace") for f in logs.iterdir())


def _start(plane: ControlPlane, api_port: int, timeout: float) -> None:
    work, pki, b = plane.work, plane.pki, plane.bin
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    # etcd over TLS with client certificates required, peers too: nobody else on this
    # machine can read or write the cluster's state (pods that the process node runs)
    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"https://127.0.0.1:{etcd_port}"
    peer_url = f"https://127.0.0.1:{peer_port}"
    plane.etcd_url = etcd_url
    plane.start(
        "etcd",
        [
            str(b / "etcd"),
            "--name=pilothouse",
            f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--cert-file={pki.etcd_crt}",
            f"--key-file={pki.etcd_key}",
            "--client-cert-auth=true",
            f"--trusted-ca-file={pki.ca_crt}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=pilothouse={peer_url}",
            f"--peer-cert-file={pki.etcd_crt}",
            f"--peer-key-file={pki.etcd_key}",
            "--peer-client-cert-auth=true",
            f"--peer-trusted-ca-file={pki.ca_crt}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
    )
    etcd_tls = pki.etcd_client_ssl_context()

    def etcd_healthy() -> bool:
        plane.check_alive()
        try:
            response = httpx.get(f"{etcd_url}/health", timeout=2, verify=etcd_tls, trust_env=False)
            return response.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    wait_for("etcd /health", etcd_healthy, timeout=left())

    plane.start(
        "kube-apiserver",
        [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--etcd-cafile={pki.ca_crt}",
            f"--etcd-certfile={pki.etcd_client_crt}",
            f"--etcd-keyfile={pki.etcd_client_key}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki.apiserver_crt}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_crt}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # taint-based eviction: pods leave a NotReady/unreachable node after 2 s, not 300 s
            "--default-not-ready-toleration-seconds=2",
            "--default-unreachable-toleration-seconds=2",
            "--profiling=false",
            "--v=1",
        ],
    )

    with plane.http() as http:

        def apiserver_ready() -> bool:
            plane.check_alive()
            try:
                return http.get("/readyz", timeout=5).text == "ok"
            except httpx.HTTPError:
                return False

        wait_for("kube-apiserver /readyz", apiserver_ready, timeout=left())

        component_ports: dict[str, int] = {}
        common = [
            f"--kubeconfig={plane.kubeconfig}",
            f"--authentication-kubeconfig={plane.kubeconfig}",
            f"--authorization-kubeconfig={plane.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ]
        component_ports["kube-controller-manager"] = port = free_port()
        plane.start(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                *common,
                f"--secure-port={port}",
                f"--cert-dir={work / 'controller-manager'}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=true",
                # short node-health timeouts, for self-healing tests
                "--node-monitor-period=1s",
                "--node-monitor-grace-period=20s",
                "--node-startup-grace-period=20s",
                # react at once (the defaults add seconds of batching)
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--endpointslice-updates-batch-period=0s",
            ],
        )
        component_ports["kube-scheduler"] = port = free_port()
        plane.start(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                *common,
                f"--secure-port={port}",
                f"--cert-dir={work / 'scheduler'}",
            ],
        )

        def healthy(name: str) -> Callable[[], bool]:
            url = f"https://127.0.0.1:{component_ports[name]}/healthz"

            def probe() -> bool:
                plane.check_alive()
                try:
                    return httpx.get(url, verify=False, timeout=2, trust_env=False).text == "ok"
                except httpx.HTTPError:
                    return False

            return probe

        for name in component_ports:
            wait_for(f"{name} /healthz", healthy(name), timeout=left())

        def default_service_account() -> bool:
            plane.check_alive()
            path = "/api/v1/namespaces/default/serviceaccounts/default"
            return http.get(path).status_code == 200

        wait_for(
            "the default ServiceAccount (controller-manager at work)",
            default_service_account,
            timeout=left(),
        )


def start_kwok(plane: ControlPlane, *, timeout: float = 60) -> Process:
    """The kwok controller: manages nodes annotated kwok.x-k8s.io/node=fake and the pods
    bound to them, with the stages in tests/k8s/kwok-stages.yaml."""
    port = free_port()
    process = plane.start(
        "kwok",
        [
            str(plane.bin / "kwok"),
            f"--kubeconfig={plane.kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={KWOK_POD_CIDR}",
            "--node-ip=10.244.255.254",
            "--node-lease-duration-seconds=10",
            f"--server-address=127.0.0.1:{port}",
        ],
    )

    def healthy() -> bool:
        plane.check_alive()
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            return httpx.get(url, timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("kwok /healthz", healthy, timeout=timeout)
    return process
