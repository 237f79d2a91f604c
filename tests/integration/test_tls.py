"""``pilothouse up --tls-cert/--tls-key``: the control API over TLS, the CLI verifying it
against the given certificate; bad flag combinations refused before anything starts."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration


def self_signed(folder: Path, name: str = "pilothouse-test") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_control_api_over_tls(fresh_platform: Platform, tmp_path: Path) -> None:
    p = fresh_platform
    cert, key = self_signed(tmp_path / "pki")
    up = p.cli("up", "--tls-cert", str(cert), "--tls-key", str(key))
    assert up.returncode == 0, up.stderr
    assert "pilothouse is up at https://127.0.0.1:" in up.stdout
    info = p.home.read_daemon_info()
    assert info is not None
    assert info["url"].startswith("https://127.0.0.1:")
    assert info["tlsCert"] == str(cert.resolve())
    # the CLI connects with https, verifying against the certificate
    status = p.cli("status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["url"] == info["url"]
    applied = p.cli(
        "apply",
        "-f",
        "-",
        input_text="apiVersion: pilothouse.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\n"
        "spec: {}\n",
    )
    assert applied.returncode == 0, applied.stderr
    assert [q["metadata"]["name"] for q in p.get_json("queues")["items"]] == ["q"]
    headers = {"Authorization": f"Bearer {p.token()}"}
    trusted = ssl.create_default_context(cafile=str(cert))
    response = httpx.get(f"{info['url']}/status", headers=headers, verify=trusted)
    assert response.status_code == 200
    # verification is real: the system's trust store does not know this certificate
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{info['url']}/healthz", verify=True)
    # and the port speaks TLS only
    plain = info["url"].replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5).raise_for_status()
    # a daemon.json naming another certificate: the CLI refuses to trust the server
    other, _ = self_signed(tmp_path / "other", "someone-else")
    p.home.write_daemon_info({**info, "tlsCert": str(other)})
    refused = p.cli("status")
    assert refused.returncode != 0
    assert "does not answer" in refused.stdout + refused.stderr
    p.home.write_daemon_info(info)
    down = p.cli("down")
    assert down.returncode == 0
    assert "pilothouse stopped" in down.stdout


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "cannot load them"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "cannot load them"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "does not exist"),
    ],
)
def test_bad_tls_flags_are_refused_before_starting(
    fresh_platform: Platform, tmp_path: Path, flags: list[str], says: str
) -> None:
    cert, key = self_signed(tmp_path / "pki")
    _, other_key = self_signed(tmp_path / "other", "other")
    values = {
        "cert": str(cert),
        "key": str(key),
        "other_key": str(other_key),
        "missing": str(tmp_path / "nope.crt"),
    }
    result = fresh_platform.cli("up", *[f.format(**values) for f in flags])
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr, result.stderr
    assert fresh_platform.home.read_daemon_info() is None, "nothing was started"
