"""HTTP client of the control API, used by the CLI (and scripts)."""

from __future__ import annotations

import getpass
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from pilothouse.api.home import Home
from pilothouse.spec.resources import API_VERSION


class NotRunning(Exception):
    """No control plane answers for this $PILOTHOUSE_HOME."""


class ApiClientError(Exception):
    def __init__(self, code: int, body: dict[str, Any]) -> None:
        self.code, self.body = code, body
        super().__init__(body.get("message") or f"HTTP {code}")


def segment(value: str) -> str:
    """One URL path segment: every reserved character percent-encoded (``/ ? # %``), and
    dots too, so that no name can become a ``.``/``..`` segment a URL normaliser removes:
    a name never reaches another object's path."""
    return quote(value, safe="").replace(".", "%2E")


def tls_verify(info: dict[str, Any]) -> ssl.SSLContext | bool:
    """How to verify the control API recorded in ``daemon.json``: against the certificate
    it serves (``tlsCert``, self-signed or not) when it serves TLS."""
    cert = info.get("tlsCert")
    if not cert:
        return True
    try:
        return ssl.create_default_context(cafile=str(cert))
    except (OSError, ssl.SSLError) as exc:
        raise NotRunning(
            f"cannot load the control API's certificate {cert} (from daemon.json): {exc}"
        ) from exc


class Client:
    def __init__(
        self, url: str, token: str, timeout: float = 30.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "X-Pilothouse-User": self._user()},
            timeout=timeout,
            verify=verify,
        )

    @classmethod
    def from_home(cls, home: Home) -> Client:
        info = home.read_daemon_info()
        token = home.read_token()
        if not info or not token:
            raise NotRunning(
                f"pilothouse is not running for {home.root}; start it with `pilothouse up`"
            )
        client = cls(info["url"], token, verify=tls_verify(info))
        try:
            client._http.get("/healthz", timeout=2.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise NotRunning(
                f"pilothouse at {info['url']} does not answer ({type(exc).__name__}); "
                "run `pilothouse up` (or `pilothouse down` to clean up)"
            ) from exc
        return client

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text}
            raise ApiClientError(response.status_code, body)
        return response.json()

    def path(self, plural: str, name: str | None = None, sub: str | None = None) -> str:
        """``/apis/…/{plural}[/{name}[/{sub}]]``, each part one quoted segment."""
        out = f"/apis/{API_VERSION}/{segment(plural)}"
        if name:
            out += f"/{segment(name)}"
        if sub:
            out += f"/{segment(sub)}"
        return out

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._check(self._http.get("/status"))
        return result

    def apply(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = self._check(self._http.post(f"/apis/{API_VERSION}/apply", json={"items": items}))
        results: list[dict[str, Any]] = body["results"]
        return results

    def list_objects(self, plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._check(self._http.get(self.path(plural)))["items"]
        return items

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self._check(self._http.get(self.path(plural, name)))
        return obj

    def delete(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self._check(self._http.delete(self.path(plural, name)))
        return obj

    def rollout_action(self, name: str, action: str, **fields: Any) -> dict[str, Any]:
        """Act on a ModelDeployment's rollout (promote, abort, pause, resume, retry, undo).

        ``fields`` go into the body beside the action (``full=True``, ``toRevision=3``);
        the answer is the updated ModelDeployment.
        """
        body = {"action": action, **fields}
        response = self._http.post(self.path("modeldeployments", name, "rollout"), json=body)
        obj: dict[str, Any] = self._check(response)
        return obj

    def nodes(self) -> dict[str, Any]:
        """``GET /api/v1/nodes``: ``{"items": [node, ...], "pending": [item, ...]}``."""
        body: dict[str, Any] = self._check(self._http.get("/api/v1/nodes"))
        return body

    def node(self, name: str) -> dict[str, Any]:
        """One node with its capacity, allocations, GPUs and the items placed on it."""
        obj: dict[str, Any] = self._check(self._http.get(f"/api/v1/nodes/{segment(name)}"))
        return obj

    def node_action(self, name: str, action: str) -> dict[str, Any]:
        """Cordon, uncordon, drain or fail a node; the answer is ``{"node": ..., "message": ...}``."""
        path = f"/api/v1/nodes/{segment(name)}/{segment(action)}"
        body: dict[str, Any] = self._check(self._http.post(path))
        return body

    @staticmethod
    def _user() -> str:
        """``user@host``: who the server records as having asked (``appliedBy``)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return f"{user}@{socket.gethostname()}"

    def events(self, plural: str, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._check(
            self._http.get(self.path(plural, name, "events"))
        )["items"]
        return items

    def pods(self, plural: str, name: str) -> list[dict[str, Any]]:
        """``GET .../{plural}/{name}/pods``: the object's replicas or workers on this machine
        (node, phase, pid, endpoint, exit code of each), as ``kubectl get pods -o wide``."""
        items: list[dict[str, Any]] = self._check(self._http.get(self.path(plural, name, "pods")))[
            "items"
        ]
        return items

    def logs(self, plural: str, name: str, follow: bool = False, tail: int = -1) -> Iterator[str]:
        params = {"follow": str(follow).lower(), "tail": str(tail)}
        with self._http.stream(
            "GET", self.path(plural, name, "log"), params=params, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            yield from response.iter_lines()
