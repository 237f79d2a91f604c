"""The control plane's own state is not open to other local users: etcd speaks only TLS and
only to clients with a certificate from the test CA (the apiserver has one)."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.k8s.conftest import Cluster

pytestmark = pytest.mark.k8s


def test_etcd_serves_only_tls_clients_with_a_certificate_of_the_test_ca(
    k8s_cluster: Cluster,
) -> None:
    plane = k8s_cluster.plane
    assert plane.etcd_url.startswith("https://127.0.0.1:")
    health = f"{plane.etcd_url}/health"
    keys = f"{plane.etcd_url}/v3/kv/range"

    # the apiserver's client certificate: in
    with httpx.Client(verify=plane.pki.etcd_client_ssl_context(), trust_env=False) as ok:
        assert ok.get(health, timeout=5).json()["health"] == "true"
        assert ok.post(keys, json={"key": "Lw=="}, timeout=5).status_code == 200

    # TLS but no client certificate: the handshake is refused, nothing is read or written
    anonymous = ssl.create_default_context(cafile=str(plane.pki.ca_crt))
    with httpx.Client(verify=anonymous, trust_env=False) as client, pytest.raises(httpx.HTTPError):
        client.post(keys, json={"key": "Lw=="}, timeout=5).raise_for_status()

    # plain HTTP on the same port: no answer, or Go's "HTTP request to an HTTPS server" (400)
    plain = plane.etcd_url.replace("https://", "http://")
    try:
        response = httpx.post(
            f"{plain}/v3/kv/range", json={"key": "Lw=="}, timeout=5, trust_env=False
        )
    except httpx.HTTPError:
        pass
    else:
        assert response.status_code == 400, response.text
