"""The Kubernetes client primitives against a real control plane: requests and their errors,
paginated lists, server-side apply and its conflicts, the status subresource of our custom
resources, watches with bookmarks, the informer (events, resync, recovery from 410 Gone
without a missed deletion), leader election on a Lease, aggregated events, and finding the
cluster from a kubeconfig or from inside a pod.

A 410 is made the way production meets it: a watch on events (which the API server does not
cache, so it reads etcd) is cut off by a relay the test controls, etcd is compacted past the
informer's resourceVersion meanwhile, and the relay is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from pilothouse.runtime.kube import client as kube_client
from pilothouse.runtime.kube.client import Kube, KubeConfigError, KubeError, connect
from pilothouse.runtime.kube.events import EventRecorder
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.leader import LeaderElector
from pilothouse.spec.crd import crds
from pilothouse.spec.resources import API_VERSION
from tests.k8s.conftest import Cluster
from tests.k8s.testenv import ROOT

pytestmark = pytest.mark.k8s

LABEL_KEY = "pilothouse.dev/test"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
FIELD_MANAGER = "pilothouse-tests"
#: nothing listens here: connections are refused at once
NOWHERE = "https://127.0.0.1:1"


def run(body: Coroutine[Any, Any, None], timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(body, timeout))


async def until(
    what: str,
    probe: Callable[[], Any],
    timeout: float = 30,  # noqa: ASYNC109
    every: float = 0.05,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


def configmap(
    namespace: str, name: str, data: dict[str, str] | None = None, label: str = "yes"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_KEY: label}},
        "data": data or {},
    }


@contextlib.asynccontextmanager
async def kube_for(cluster: Cluster, namespace: str) -> AsyncIterator[Kube]:
    kube = await connect(str(cluster.kubeconfig), namespace=namespace)
    try:
        yield kube
    finally:
        await kube.close()


# --- requests -----------------------------------------------------------------------------


def test_paths_of_the_kinds_we_use(k8s_cluster: Cluster) -> None:
    async def body() -> None:
        async with kube_for(k8s_cluster, "default") as kube:
            assert kube.path("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
            assert kube.path("v1", "Pod") == "/api/v1/pods"  # all namespaces
            assert kube.path("v1", "Node", "ns", "n") == "/api/v1/nodes/n"  # cluster-scoped
            assert kube.path("v1", "Namespace", None, "x") == "/api/v1/namespaces/x"
            assert (
                kube.path("apps/v1", "Deployment", "ns", "d", "scale")
                == "/apis/apps/v1/namespaces/ns/deployments/d/scale"
            )
            assert (
                kube.path(API_VERSION, "ModelDeployment", "ns", "m", "status")
                == "/apis/pilothouse.dev/v1alpha1/namespaces/ns/modeldeployments/m/status"
            )
            assert kube.path(API_VERSION, "Queue", "ns") == (
                "/apis/pilothouse.dev/v1alpha1/namespaces/ns/queues"
            )
            assert kube.path("rbac.authorization.k8s.io/v1", "ClusterRole", "ns") == (
                "/apis/rbac.authorization.k8s.io/v1/clusterroles"
            )
            with pytest.raises(ValueError, match="unknown kind"):
                kube.path("v1", "Gadget", "ns")
            assert await kube.request("GET", "/readyz") == "ok"  # text, not JSON
            assert (await kube.request("GET", "/version"))["major"] == "1"
            # every path of the table is one the API server serves
            for (api_version, kind), _ in kube_client.KIND_TABLE.items():
                if api_version == API_VERSION:
                    continue  # ours need the CRDs (test_status_subresource...)
                await kube.request(
                    "GET", kube.path(api_version, kind, "default"), query={"limit": "1"}
                )

    run(body())


def test_crud_errors_and_paginated_lists(k8s_cluster: Cluster, namespace: str) -> None:
    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            assert kube.namespace == namespace
            for i in range(23):
                created = await kube.create(configmap(namespace, f"cm-{i:02}", {"i": str(i)}))
                assert created["metadata"]["uid"]
            await kube.create(configmap(namespace, "other", label="no"))
            selector = f"{LABEL_KEY}=yes"

            # one page is a page: the server hands back a continue token
            page = await kube.request(
                "GET",
                kube.path("v1", "ConfigMap", namespace),
                query={"limit": "5", "labelSelector": selector},
            )
            assert len(page["items"]) == 5
            assert page["metadata"]["continue"]

            items = await kube.list("v1", "ConfigMap", namespace, label_selector=selector, limit=5)
            assert sorted(o["metadata"]["name"] for o in items) == [f"cm-{i:02}" for i in range(23)]
            assert {(o["apiVersion"], o["kind"]) for o in items} == {("v1", "ConfigMap")}
            everything, version = await kube.list_with_version(
                "v1", "ConfigMap", namespace, limit=4
            )
            assert len(everything) == 23 + 1 + 1  # and kube-root-ca.crt
            assert int(version) > 0
            by_field = await kube.list(
                "v1", "ConfigMap", namespace, field_selector="metadata.name=cm-07"
            )
            assert [o["data"] for o in by_field] == [{"i": "7"}]

            with pytest.raises(KubeError) as exists:
                await kube.create(configmap(namespace, "cm-00"))
            assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")
            assert "cm-00" in exists.value.message
            assert await kube.get("v1", "ConfigMap", namespace, "missing") is None
            with pytest.raises(KubeError) as missing:
                await kube.patch("v1", "ConfigMap", namespace, "missing", {"data": {"a": "b"}})
            assert (missing.value.status, missing.value.reason) == (404, "NotFound")

            merged = await kube.patch("v1", "ConfigMap", namespace, "cm-01", {"data": {"x": "1"}})
            assert merged["data"] == {"i": "1", "x": "1"}
            ops = [{"op": "replace", "path": "/data/x", "value": "2"}]
            jsoned = await kube.patch("v1", "ConfigMap", namespace, "cm-01", ops, patch_type="json")
            assert jsoned["data"]["x"] == "2"
            strategic = await kube.patch(
                "v1",
                "ConfigMap",
                namespace,
                "cm-01",
                {"metadata": {"labels": {"extra": "1"}}},
                patch_type="strategic",
            )
            assert strategic["metadata"]["labels"] == {LABEL_KEY: "yes", "extra": "1"}
            with pytest.raises(ValueError, match="patch_type"):
                await kube.patch("v1", "ConfigMap", namespace, "cm-01", {}, patch_type="yaml")

            stale = dict(strategic, data={"stale": "1"})
            stale["metadata"] = dict(
                strategic["metadata"], resourceVersion=created["metadata"]["resourceVersion"]
            )
            stale["metadata"]["name"] = "cm-01"
            with pytest.raises(KubeError) as conflict:
                await kube.replace(stale)
            assert conflict.value.status == 409
            replaced = await kube.replace(dict(strategic, data={"fresh": "1"}))
            assert replaced["data"] == {"fresh": "1"}

            assert await kube.delete("v1", "ConfigMap", namespace, "cm-00", grace_seconds=0)
            assert not await kube.delete("v1", "ConfigMap", namespace, "cm-00")
            assert await kube.get("v1", "ConfigMap", namespace, "cm-00") is None

    run(body())


def test_server_side_apply_is_idempotent_and_managers_conflict_unless_forced(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            intent = configmap(namespace, "applied", {"owner": "one", "only-one": "x"})
            first = await kube.apply(intent, field_manager="one")
            again = await kube.apply(intent, field_manager="one")
            assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
            assert again["data"] == {"owner": "one", "only-one": "x"}

            theirs = configmap(namespace, "applied", {"owner": "two"})
            with pytest.raises(KubeError) as conflict:
                await kube.apply(theirs, field_manager="two", force=False)
            assert (conflict.value.status, conflict.value.reason) == (409, "Conflict")
            assert '"one"' in conflict.value.message
            unchanged = await kube.get("v1", "ConfigMap", namespace, "applied")
            assert unchanged is not None
            assert unchanged["data"]["owner"] == "one"

            forced = await kube.apply(theirs, field_manager="two", force=True)
            assert forced["data"] == {"owner": "two", "only-one": "x"}
            owners = {
                entry["manager"]: entry["fieldsV1"].get("f:data", {})
                for entry in forced["metadata"]["managedFields"]
            }
            assert "f:owner" in owners["two"]
            assert "f:owner" not in owners["one"]
            assert "f:only-one" in owners["one"]

            # a manager that leaves out a field it owned gives it up (it is removed)
            dropped = await kube.apply(configmap(namespace, "applied"), field_manager="one")
            assert dropped["data"] == {"owner": "two"}

    run(body())


@pytest.fixture(scope="module")
def crds_installed(k8s_cluster: Cluster) -> Iterator[None]:
    """Our CRDs, server-side applied (after any earlier module's deletion of them ended)."""
    names = [c["metadata"]["name"] for c in crds()]
    crd_api = "apiextensions.k8s.io/v1"

    async def gone(kube: Kube, name: str) -> bool:
        return await kube.get(crd_api, "CustomResourceDefinition", None, name) is None

    async def install() -> None:
        async with kube_for(k8s_cluster, "default") as kube:
            for manifest in crds():
                name = manifest["metadata"]["name"]
                found = await kube.get(crd_api, "CustomResourceDefinition", None, name)
                if found is not None and found["metadata"].get("deletionTimestamp"):
                    await until(f"{name} deleted", functools.partial(gone, kube, name), timeout=60)
                await kube.apply(manifest, field_manager=FIELD_MANAGER)

            async def established() -> bool:
                for name in names:
                    crd = await kube.get(crd_api, "CustomResourceDefinition", None, name)
                    conditions = {
                        c["type"]: c["status"]
                        for c in ((crd or {}).get("status") or {}).get("conditions") or []
                    }
                    if conditions.get("Established") != "True":
                        return False
                try:
                    await kube.list(API_VERSION, "ModelDeployment", "default")
                except KubeError:
                    return False
                return True

            await until("the CRDs established and served", established, timeout=60)

    async def uninstall() -> None:
        async with kube_for(k8s_cluster, "default") as kube:
            for name in names:
                await kube.delete(crd_api, "CustomResourceDefinition", None, name)
            for name in names:
                await until(f"{name} deleted", functools.partial(gone, kube, name), timeout=60)

    run(install())
    yield
    run(uninstall())


def test_status_subresource_of_a_modeldeployment(
    k8s_cluster: Cluster, namespace: str, crds_installed: None
) -> None:
    manifest = yaml.safe_load((ROOT / "examples/fraud-detection/modeldeployment.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    name = manifest["metadata"]["name"]

    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            created = await kube.apply(manifest, field_manager=FIELD_MANAGER)
            generation = created["metadata"]["generation"]
            status = {"observedGeneration": generation, "replicas": 2, "message": "rolling out"}
            patched = await kube.patch(
                API_VERSION,
                "ModelDeployment",
                namespace,
                name,
                {"status": status},
                subresource="status",
            )
            assert patched["status"]["message"] == "rolling out"
            assert patched["status"]["observedGeneration"] == generation
            assert patched["metadata"]["generation"] == generation  # status is not the spec

            # through the main resource, status is ignored; through status, the spec is
            main = await kube.patch(
                API_VERSION,
                "ModelDeployment",
                namespace,
                name,
                {"status": {"message": "ignored"}, "metadata": {"labels": {"x": "1"}}},
            )
            assert main["status"]["message"] == "rolling out"
            assert main["metadata"]["labels"]["x"] == "1"

            applied = await kube.apply(
                {
                    "apiVersion": API_VERSION,
                    "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": namespace},
                    "status": {"message": "applied", "readyReplicas": 1},
                },
                field_manager="pilothouse-status",
                subresource="status",
            )
            assert applied["status"]["message"] == "applied"
            assert applied["status"]["readyReplicas"] == 1
            again = await kube.get(API_VERSION, "ModelDeployment", namespace, name)
            assert again is not None
            assert again["status"]["message"] == "applied"
            assert again["spec"] == created["spec"]

            items = await kube.list(API_VERSION, "ModelDeployment", namespace)
            assert [(o["kind"], o["metadata"]["name"]) for o in items] == [
                ("ModelDeployment", name)
            ]

    run(body())


# --- watches and the informer --------------------------------------------------------------


def test_watches_deliver_bookmarks_and_the_informer_follows_them(
    k8s_cluster: Cluster, namespace: str
) -> None:
    # the API server sends a bookmark 2s before a watch's timeout (and every minute); with
    # timeouts under ~10s it sends none, hence WATCH
    watch = 10

    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            # an informer whose selection never changes still moves its resourceVersion on
            # with the bookmarks it asks for (so a resumed watch starts from a recent point)
            informer = Informer(
                kube,
                "v1",
                "ConfigMap",
                namespace,
                label_selector=f"{LABEL_KEY}=never",
                watch_timeout=watch,
            )
            await informer.start()
            try:
                await informer.wait_synced(30)
                path = kube.path("v1", "ConfigMap", namespace)
                _, version = await kube.list_with_version("v1", "ConfigMap", namespace)
                await kube.create(configmap(namespace, "one"))
                # a bookmark says how far the watch got past what it delivered: here, past
                # a write its selector left out
                unselected = await kube.create(configmap(namespace, "two", label="no"))
                written = int(unselected["metadata"]["resourceVersion"])
                seen: list[tuple[str, dict[str, Any]]] = []
                async with contextlib.aclosing(
                    kube.watch(
                        path,
                        resource_version=version,
                        label_selector=f"{LABEL_KEY}=yes",
                        timeout_seconds=watch,
                    )
                ) as stream:
                    async for type_, obj in stream:
                        seen.append((type_, obj))
                        if type_ == "BOOKMARK":
                            break
                assert [t for t, _ in seen] == ["ADDED", "BOOKMARK"]
                assert seen[0][1]["metadata"]["name"] == "one"
                assert seen[0][1]["kind"] == "ConfigMap"
                assert int(seen[1][1]["metadata"]["resourceVersion"]) >= written

                await until(
                    "the informer's bookmark past the writes",
                    lambda: int(informer.resource_version) >= written,
                    timeout=2 * watch,
                )
                assert informer.list() == []
            finally:
                await informer.stop()

    run(body())


def test_informer_delivers_added_modified_deleted_from_pages_and_hands_out_copies(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            for i in range(5):
                await kube.create(configmap(namespace, f"pre-{i}", {"v": "0"}))
            informer = Informer(
                kube,
                "v1",
                "ConfigMap",
                namespace,
                label_selector=f"{LABEL_KEY}=yes",
                page_size=2,
                resync=0,
            )
            seen: list[tuple[str, str, str]] = []

            def note(type_: str, obj: dict[str, Any]) -> None:
                seen.append((type_, obj["metadata"]["name"], obj["data"].get("v", "")))
                obj["data"]["v"] = "mutated by a handler"  # a copy: the cache does not change

            def broken(type_: str, obj: dict[str, Any]) -> None:
                raise RuntimeError("a handler that fails")

            informer.add_handler(broken)
            informer.add_handler(note)
            await informer.start()
            try:
                await informer.wait_synced(30)
                assert informer.synced
                assert sorted(seen) == [("ADDED", f"pre-{i}", "0") for i in range(5)]
                seen.clear()

                # each change waited for, so that each is seen as what it was even if the
                # informer had to list again in between (it would: level-based)
                await kube.create(configmap(namespace, "unselected", {"v": "1"}, label="no"))
                await kube.create(configmap(namespace, "new", {"v": "1"}))
                await until("ADDED", lambda: seen == [("ADDED", "new", "1")], timeout=15)
                await kube.patch("v1", "ConfigMap", namespace, "new", {"data": {"v": "2"}})
                await until("MODIFIED", lambda: seen[1:] == [("MODIFIED", "new", "2")], timeout=15)
                await kube.delete("v1", "ConfigMap", namespace, "pre-0")
                await until("DELETED", lambda: seen[2:] == [("DELETED", "pre-0", "0")], timeout=15)

                got = informer.get("new")
                assert got is not None
                assert got["data"] == {"v": "2"}
                assert got["kind"] == "ConfigMap"
                got["data"]["v"] = "changed by the caller"
                assert informer.get("new", namespace)["data"] == {"v": "2"}  # type: ignore[index]
                assert informer.get("pre-0") is None
                assert informer.get("unselected") is None
                assert sorted(o["metadata"]["name"] for o in informer.list()) == [
                    "new",
                    "pre-1",
                    "pre-2",
                    "pre-3",
                    "pre-4",
                ]
            finally:
                await informer.stop()

    run(body())


def test_informer_resync_delivers_every_cached_object_again(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with kube_for(k8s_cluster, namespace) as kube:
            for name in ("a", "b"):
                await kube.create(configmap(namespace, name))
            informer = Informer(
                kube, "v1", "ConfigMap", namespace, label_selector=f"{LABEL_KEY}=yes", resync=0.2
            )
            resyncs: list[str] = []
            informer.add_handler(
                lambda t, o: resyncs.append(o["metadata"]["name"]) if t == "RESYNC" else None
            )
            await informer.start()
            try:
                await until(
                    "two resyncs of each",
                    lambda: resyncs.count("a") >= 2 and resyncs.count("b") >= 2,
                    timeout=15,
                )
            finally:
                await informer.stop()

    run(body())


class Relay:
    """A TCP relay to the API server (TLS passes through) that the test can cut: open
    connections are aborted and new ones closed at once, until restored."""

    def __init__(self, server: str) -> None:
        parts = urlsplit(server)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.down = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{port}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        writers = {writer}
        self._open.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            writers.add(up_writer)
            self._open.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:  # ended, cut, or cancelled with the loop: nothing left open
            for each in writers:
                each.transport.abort()
            self._open -= writers

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.transport.abort()

    def cut(self) -> None:
        self.down = True
        for writer in list(self._open):
            writer.transport.abort()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def compact_etcd(cluster: Cluster) -> int:
    """Compact etcd up to its current revision (as the API server does every few minutes)."""
    plane = cluster.plane
    with httpx.Client(
        verify=plane.pki.etcd_client_ssl_context(), trust_env=False, timeout=10
    ) as etcd:
        answer = etcd.post(f"{plane.etcd_url}/v3/kv/range", json={"key": "Lw=="})
        revision = int(answer.json()["header"]["revision"])
        etcd.post(
            f"{plane.etcd_url}/v3/kv/compaction", json={"revision": revision, "physical": True}
        ).raise_for_status()
    return revision


def core_event(namespace: str, name: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_KEY: "yes"}},
        "involvedObject": {"kind": "ConfigMap", "name": "x", "namespace": namespace},
        "reason": "Test",
        "message": message,
        "type": "Normal",
    }


def test_informer_recovers_from_410_gone_and_misses_no_deletion(
    k8s_cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pilothouse.kube.informer")

    async def body() -> None:
        relay = Relay(k8s_cluster.plane.server)
        relayed = await relay.start()
        async with (
            kube_for(k8s_cluster, namespace) as kube,
            kube_for(k8s_cluster, namespace) as watching,
        ):
            watching.api.configuration.host = relayed
            for name in ("e1", "e2", "e3"):
                await kube.create(core_event(namespace, name, "first"))
            informer = Informer(
                watching,
                "v1",
                "Event",
                namespace,
                label_selector=f"{LABEL_KEY}=yes",
                resync=0,
                backoff_base=0.1,
                backoff_max=0.5,
            )
            seen: list[tuple[str, str]] = []
            informer.add_handler(lambda t, o: seen.append((t, o["metadata"]["name"])))
            await informer.start()
            try:
                await informer.wait_synced(30)
                assert sorted(seen) == [("ADDED", "e1"), ("ADDED", "e2"), ("ADDED", "e3")]
                seen.clear()
                before = informer.resource_version

                relay.cut()  # the informer keeps trying to watch from `before`
                await kube.delete("v1", "Event", namespace, "e2")
                await kube.patch("v1", "Event", namespace, "e3", {"message": "second"})
                await kube.create(core_event(namespace, "e4", "first"))
                compacted = await asyncio.to_thread(compact_etcd, k8s_cluster)
                assert compacted > int(before)

                # what the informer will meet: a watch from before the compaction is gone
                async def watch_from_before() -> None:
                    path = kube.path("v1", "Event", namespace)
                    async with contextlib.aclosing(kube.watch(path, resource_version=before)) as s:
                        async for _ in s:
                            pass

                with pytest.raises(KubeError) as gone:
                    await watch_from_before()
                assert gone.value.status == 410

                relay.restore()
                await until(
                    "the changes made while cut off",
                    lambda: (
                        sorted(seen) == [("ADDED", "e4"), ("DELETED", "e2"), ("MODIFIED", "e3")]
                    ),
                    timeout=30,
                )
                assert informer.get("e2") is None
                e3 = informer.get("e3")
                assert e3 is not None
                assert e3["message"] == "second"
                assert any("listing again" in r.getMessage() for r in caplog.records)

                # and it watches again from the new list: later changes still arrive
                seen.clear()
                await kube.delete("v1", "Event", namespace, "e1")
                await until("e1 deleted", lambda: seen == [("DELETED", "e1")], timeout=15)
            finally:
                await informer.stop()
                await relay.close()

    run(body())


# --- leader election -----------------------------------------------------------------------


class Leads:
    """lead() functions that record who leads when, and any overlap."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.overlaps: list[tuple[str, set[str]]] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.cancelled: set[str] = set()

    def lead(self, identity: str) -> Callable[[], Awaitable[None]]:
        async def lead() -> None:
            if self.active:
                self.overlaps.append((identity, set(self.active)))
            self.active.add(identity)
            self.started[identity] = time.monotonic()
            try:
                await asyncio.Event().wait()  # act until cancelled
            except asyncio.CancelledError:
                self.cancelled.add(identity)
                raise
            finally:
                self.active.discard(identity)
                self.ended[identity] = time.monotonic()

        return lead


def elector(kube: Kube, namespace: str, name: str, identity: str) -> LeaderElector:
    return LeaderElector(
        kube, namespace, name, identity, lease_duration=3, renew_deadline=2, retry_period=0.25
    )


def test_one_leader_at_a_time_and_a_cancelled_leader_hands_over_at_once(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with (
            kube_for(k8s_cluster, namespace) as kube,
            kube_for(k8s_cluster, namespace) as kube_a,
            kube_for(k8s_cluster, namespace) as kube_b,
        ):
            leads = Leads()
            electors = {
                "a": elector(kube_a, namespace, "lease", "a"),
                "b": elector(kube_b, namespace, "lease", "b"),
            }
            tasks = {i: asyncio.create_task(e.run(leads.lead(i))) for i, e in electors.items()}
            try:
                first = await until(
                    "a leader", lambda: len(leads.active) == 1 and next(iter(leads.active))
                )
                second = "b" if first == "a" else "a"
                # several renewals: still exactly the one
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    assert leads.active == {first}
                    assert [i for i, e in electors.items() if e.is_leader] == [first]
                    await asyncio.sleep(0.05)
                lease = await kube.get("coordination.k8s.io/v1", "Lease", namespace, "lease")
                assert lease is not None
                spec = lease["spec"]
                assert spec["holderIdentity"] == first
                assert spec["leaseDurationSeconds"] == 3
                assert spec["leaseTransitions"] == 0
                assert MICRO_TIME.match(spec["renewTime"])
                assert MICRO_TIME.match(spec["acquireTime"])
                assert spec["renewTime"] > spec["acquireTime"]  # renewed

                handed = time.monotonic()
                tasks[first].cancel()
                await asyncio.wait({tasks[first]})
                assert first in leads.cancelled
                assert not electors[first].is_leader
                await until(f"{second} leads", lambda: second in leads.active, timeout=10)
                assert time.monotonic() - handed < 3  # sooner than the lease would expire
                lease = await kube.get("coordination.k8s.io/v1", "Lease", namespace, "lease")
                assert lease is not None
                assert lease["spec"]["holderIdentity"] == second
                assert lease["spec"]["leaseTransitions"] == 1  # a new holder (released: kept)
                assert lease["spec"]["leaseDurationSeconds"] == 3

                tasks[second].cancel()
                await asyncio.wait({tasks[second]})
                released = await kube.get("coordination.k8s.io/v1", "Lease", namespace, "lease")
                assert released is not None
                assert not released["spec"].get("holderIdentity")
                assert released["spec"]["leaseDurationSeconds"] == 1
                assert not leads.overlaps
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    run(body())


def test_a_leader_whose_lease_is_taken_over_stops_leading(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with (
            kube_for(k8s_cluster, namespace) as kube,
            kube_for(k8s_cluster, namespace) as kube_a,
        ):
            leads = Leads()
            a = elector(kube_a, namespace, "taken", "a")
            task = asyncio.create_task(a.run(leads.lead("a")))
            try:
                await until("a leads", lambda: "a" in leads.active)
                await kube.delete("coordination.k8s.io/v1", "Lease", namespace, "taken")
                now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
                await kube.create(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": "taken", "namespace": namespace},
                        "spec": {
                            "holderIdentity": "intruder",
                            "leaseDurationSeconds": 30,
                            "acquireTime": now,
                            "renewTime": now,
                        },
                    }
                )
                await asyncio.wait_for(task, 5)  # returns: leadership lost
                assert "a" in leads.cancelled
                assert not a.is_leader
                assert a.holder == "intruder"
                lease = await kube.get("coordination.k8s.io/v1", "Lease", namespace, "taken")
                assert lease is not None
                assert lease["spec"]["holderIdentity"] == "intruder"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_a_leader_that_cannot_renew_stops_before_another_takes_over(
    k8s_cluster: Cluster, namespace: str
) -> None:
    async def body() -> None:
        async with (
            kube_for(k8s_cluster, namespace) as kube_a,
            kube_for(k8s_cluster, namespace) as kube_b,
        ):
            leads = Leads()
            a = elector(kube_a, namespace, "cut", "a")
            b = elector(kube_b, namespace, "cut", "b")
            task_a = asyncio.create_task(a.run(leads.lead("a")))
            await until("a leads", lambda: "a" in leads.active)
            task_b = asyncio.create_task(b.run(leads.lead("b")))
            try:
                kube_a.api.configuration.host = NOWHERE  # a's renewals fail from now on
                cut = time.monotonic()
                await asyncio.wait_for(task_a, 10)  # returns: leadership lost
                stopped = leads.ended["a"] - cut
                assert "a" in leads.cancelled
                assert not a.is_leader
                assert 1.0 < stopped < 3.0, stopped  # after renew_deadline, within the lease
                await until("b leads", lambda: "b" in leads.active, timeout=15)
                assert leads.started["b"] > leads.ended["a"]
                assert not leads.overlaps
            finally:
                for task in (task_a, task_b):
                    task.cancel()
                await asyncio.gather(task_a, task_b, return_exceptions=True)

    run(body())


# --- events ---------------------------------------------------------------------------------


def test_events_repeated_are_aggregated_into_one_series(
    k8s_cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with (
            kube_for(k8s_cluster, namespace) as kube,
            kube_for(k8s_cluster, namespace) as dead,
        ):
            regarding = await kube.create(configmap(namespace, "regarded"))
            recorder = EventRecorder(kube, "test", "pod-0")
            recorder.record(regarding, "Warning", "Broken", "it broke")  # before start: kept
            await recorder.start()
            try:
                await recorder.flush()
                recorder.record(regarding, "Warning", "Broken", "it broke")
                recorder.record(regarding, "Warning", "Broken", "it broke")
                recorder.record(regarding, "Normal", "Fixed", "it works", action="Repair")
                await recorder.flush()
            finally:
                await recorder.stop()
            events = await kube.list("events.k8s.io/v1", "Event", namespace)
            ours = [e for e in events if e["regarding"].get("uid") == regarding["metadata"]["uid"]]
            broken = [e for e in ours if e["reason"] == "Broken"]
            assert len(broken) == 1, broken
            event = broken[0]
            assert event["series"]["count"] == 3
            assert MICRO_TIME.match(event["series"]["lastObservedTime"])
            assert event["series"]["lastObservedTime"] >= event["eventTime"]
            assert event["type"] == "Warning"
            assert event["note"] == "it broke"
            assert event["action"] == "Reconcile"
            assert event["reportingController"] == "pilothouse.dev/test"
            assert event["reportingInstance"] == "pod-0"
            assert event["regarding"]["kind"] == "ConfigMap"
            assert event["regarding"]["name"] == "regarded"
            assert event["regarding"]["namespace"] == namespace
            assert event["metadata"]["name"].startswith("regarded.")
            fixed = [e for e in ours if e["reason"] == "Fixed"]
            assert len(fixed) == 1
            assert "series" not in fixed[0]
            assert fixed[0]["action"] == "Repair"

            # a recorder that cannot write logs and drops; record and flush never raise
            dead.api.configuration.host = NOWHERE
            lost = EventRecorder(dead, "test", "pod-1")
            await lost.start()
            try:
                lost.record(regarding, "Warning", "Lost", "never written")
                await lost.flush(timeout=15)
            finally:
                await lost.stop()
            assert any("could not record event" in r.getMessage() for r in caplog.records)

    run(body())


# --- finding the cluster -------------------------------------------------------------------


def test_connect_without_any_configuration_says_what_it_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    async def body() -> None:
        with pytest.raises(KubeConfigError) as error:
            await connect()
        assert ".kube/config (no such file)" in str(error.value)
        assert "KUBERNETES_SERVICE_HOST" in str(error.value)
        with pytest.raises(KubeConfigError, match="no such file"):
            await connect(str(tmp_path / "missing"))

    run(body())


def test_connect_takes_the_namespace_of_the_kubeconfig_context(
    k8s_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load(k8s_cluster.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = "from-context"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("PILOTHOUSE_SERVICEACCOUNT_DIR", str(tmp_path / "none"))

    async def body() -> None:
        for explicit, expected in ((None, "from-context"), ("given", "given")):
            kube = await connect(namespace=explicit)  # $KUBECONFIG
            try:
                assert kube.namespace == expected
                assert await kube.get("v1", "Namespace", None, "default") is not None
            finally:
                await kube.close()

    run(body())


async def service_account_token(cluster: Cluster, namespace: str, account: str) -> str:
    """A bound token of a new service account (TokenRequest), as the kubelet mounts one."""
    async with kube_for(cluster, namespace) as admin:
        await admin.create(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}
        )
        path = admin.path("v1", "ServiceAccount", namespace, account, "token")
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        answer = await admin.request("POST", path, body=request)
        return str(answer["status"]["token"])


def in_cluster(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, home: Path, directory: Path
) -> None:
    """This process as a pod sees itself: no kubeconfig, the service's address in its
    environment, its service account in ``directory``."""
    server = urlsplit(cluster.plane.server)
    directory.mkdir()
    shutil.copy(cluster.plane.pki.ca_crt, directory / "ca.crt")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))  # no ~/.kube/config
    monkeypatch.setenv("PILOTHOUSE_SERVICEACCOUNT_DIR", str(directory))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname or "")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))


def test_connect_in_cluster_uses_the_service_account_and_rereads_its_token(
    k8s_cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "serviceaccount"

    async def who(kube: Kube) -> str:
        # the account has no rights: the refusal names who asked
        with pytest.raises(KubeError) as refused:
            await kube.list("v1", "ConfigMap", namespace)
        assert refused.value.status == 403
        assert refused.value.reason == "Forbidden"
        return refused.value.message

    async def body() -> None:
        first = await service_account_token(k8s_cluster, namespace, "first")
        second = await service_account_token(k8s_cluster, namespace, "second")
        in_cluster(k8s_cluster, monkeypatch, tmp_path, directory)
        (directory / "token").write_text(first)
        (directory / "namespace").write_text(namespace)
        kube = await connect()
        try:
            assert kube.namespace == namespace  # from the namespace file
            assert f"system:serviceaccount:{namespace}:first" in await who(kube)
            (directory / "token").write_text(second)  # rotated
            assert ":first" in await who(kube)  # not re-read yet
            monkeypatch.setattr(kube_client, "TOKEN_REREAD_SECONDS", 0.0)
            assert f"system:serviceaccount:{namespace}:second" in await who(kube)
        finally:
            await kube.close()
        explicit = await connect(namespace="elsewhere")
        try:
            assert explicit.namespace == "elsewhere"
        finally:
            await explicit.close()

    run(body())


def test_a_rejected_token_is_reread_at_once(
    k8s_cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "serviceaccount"

    async def body() -> None:
        token = await service_account_token(k8s_cluster, namespace, "sa")
        in_cluster(k8s_cluster, monkeypatch, tmp_path, directory)
        (directory / "token").write_text("not-a-valid-token")
        kube = await connect()
        try:
            assert kube.namespace == "default"  # no namespace file
            with pytest.raises(KubeError) as rejected:
                await kube.list("v1", "ConfigMap", namespace)
            assert rejected.value.status == 401
            (directory / "token").write_text(token)
            with pytest.raises(KubeError) as refused:  # 401, re-read, retried: now 403
                await kube.list("v1", "ConfigMap", namespace)
            assert refused.value.status == 403
        finally:
            await kube.close()

    run(body())
