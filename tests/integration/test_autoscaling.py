"""Autoscaling, shedding and self-healing through the whole embedded platform, with real
replica processes and real traffic: scale up under a burst and back down, scale from
zero with held requests, 503 at capacity, and no failed request while replicas are killed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Platform, pid_alive, wait_for

pytestmark = pytest.mark.integration

SLOW_MODEL = """
import time


class Model:
    def load(self, path):
        self.delay = float((path / "delay.txt").read_text())

    def predict(self, features):
        time.sleep(self.delay)
        return features[:, 0]
"""

#: answers only once the file named in gate.txt exists: the test decides when requests end
GATED_MODEL = """
import time
from pathlib import Path


class Model:
    def load(self, path):
        self.gate = Path((path / "gate.txt").read_text())

    def predict(self, features):
        while not self.gate.exists():
            time.sleep(0.01)
        return features[:, 0]
"""


def _register_slow_model(p: Platform, tmp: Path, name: str, delay: float) -> None:
    folder = tmp / f"{name}-model"
    folder.mkdir()
    (folder / "model.py").write_text(SLOW_MODEL)
    (folder / "delay.txt").write_text(str(delay))
    result = p.cli("models", "register", name, str(folder), "--framework", "custom")
    assert result.returncode == 0, result.stderr


def _register_gated_model(p: Platform, tmp: Path, name: str, gate: Path) -> None:
    folder = tmp / f"{name}-model"
    folder.mkdir()
    (folder / "model.py").write_text(GATED_MODEL)
    (folder / "gate.txt").write_text(str(gate))
    result = p.cli("models", "register", name, str(folder), "--framework", "custom")
    assert result.returncode == 0, result.stderr


def _apply(p: Platform, tmp: Path, name: str, spec: dict[str, Any]) -> None:
    doc = {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    result = p.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr


def _status(p: Platform, name: str) -> dict[str, Any]:
    status: dict[str, Any] = p.get_json("modeldeployments", name)["status"]
    return status


async def _load(
    url: str,
    model: str,
    clients: int,
    seconds: float,
    max_requests: int,
    stop: asyncio.Event | None = None,
    codes: Counter[int] | None = None,
) -> Counter[int]:
    """Closed-loop load, bounded in time and count, ended early by ``stop``; returns the
    status codes (0: no response), counted into ``codes`` as they come when given."""
    codes = Counter() if codes is None else codes
    deadline = time.monotonic() + seconds
    body = {"instances": [[1.0, 2.0]]}

    def going() -> bool:
        stopped = stop is not None and stop.is_set()
        return not stopped and time.monotonic() < deadline and codes.total() < max_requests

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while going():
                try:
                    response = await http.post(f"/v1/models/{model}:predict", json=body)
                    codes[response.status_code] += 1
                except httpx.HTTPError:
                    codes[0] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return codes


def test_scales_up_under_a_burst_and_back_down(platform: Platform, tmp_path: Path) -> None:
    p = platform
    _register_slow_model(p, tmp_path, "slow", 0.05)
    _apply(
        p,
        tmp_path,
        "burst",
        {
            "model": "slow:1",
            "replicas": {"min": 1, "max": 4},
            "batching": {"maxBatchSize": 1},
            "autoscaling": {
                "metric": "concurrency",
                "target": 2,
                "stableWindow": "6s",
                "panicWindow": "2s",
            },
        },
    )
    assert (
        p.cli("wait", "modeldeployment/burst", "--for=condition=Ready", "--timeout=60s").returncode
        == 0
    )
    url = _status(p, "burst")["url"]

    peak = {"replicas": 1}

    async def burst_until_scaled() -> Counter[int]:
        load = asyncio.create_task(_load(url, "slow", clients=8, seconds=45, max_requests=20000))
        try:
            while not load.done():
                st = await asyncio.to_thread(_status, p, "burst")
                peak["replicas"] = max(peak["replicas"], st["readyReplicas"])
                if st["readyReplicas"] >= 3:
                    break
                await asyncio.sleep(0.5)  # polling interval of the observer, not synchronisation
        finally:
            codes = await load if load.done() else None
            if codes is None:
                load.cancel()
        return codes or Counter()

    asyncio.run(burst_until_scaled())
    assert peak["replicas"] >= 3, (
        f"8 concurrent clients at target 2 should bring >= 3 replicas, saw {peak}"
    )
    described = p.cli("describe", "modeldeployment", "burst").stdout
    assert "stableAverage" in described
    assert "lastDecisions" in described

    def calm() -> bool:
        st = _status(p, "burst")
        return bool(st["desiredReplicas"] == 1 and st["replicas"] == 1)

    wait_for("scale back down to 1 after the burst", calm, timeout=90, every=0.5)
    events = p.cli("describe", "modeldeployment", "burst").stdout
    assert "Scaled" in events


def test_scales_from_zero_and_releases_held_requests(platform: Platform, tmp_path: Path) -> None:
    p = platform
    _register_slow_model(p, tmp_path, "cold", 0.0)
    _apply(
        p,
        tmp_path,
        "cold",
        {
            "model": "cold:1",
            "replicas": {"min": 0, "max": 2},
            "autoscaling": {
                "target": 5,
                "stableWindow": "6s",
                "panicWindow": "2s",
                "scaleToZeroGrace": "1s",
            },
        },
    )
    wait_for(
        "scale to zero without traffic",
        lambda: (
            (st := _status(p, "cold")).get("url")
            and st["replicas"] == 0
            and st["desiredReplicas"] == 0
        ),
        timeout=60,
        every=0.5,
    )
    url = _status(p, "cold")["url"]
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/models/cold:predict", json={"instances": [[7.0, 1.0]]}, timeout=30
    )
    held_for = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [7.0]
    assert held_for > 0.2, "the request waited for a replica to start"
    assert _status(p, "cold")["replicas"] >= 1


def test_beyond_capacity_requests_are_shed_with_retry_after(
    platform: Platform, tmp_path: Path
) -> None:
    p = platform
    gate = tmp_path / "gate"  # the replica answers nothing until this file exists
    _register_gated_model(p, tmp_path, "tight", gate)
    _apply(
        p,
        tmp_path,
        "tight",
        {
            "model": "tight:1",
            "replicas": 1,
            "batching": {"maxBatchSize": 1},
            "traffic": {"maxConcurrency": 1, "queueLimit": 2, "queueTimeout": "60s"},
        },
    )
    assert (
        p.cli("wait", "modeldeployment/tight", "--for=condition=Ready", "--timeout=60s").returncode
        == 0
    )
    url = _status(p, "tight")["url"]

    async def burst() -> tuple[list[httpx.Response], int]:
        async with httpx.AsyncClient(base_url=url, timeout=90) as http:
            sent = [
                asyncio.create_task(
                    http.post("/v1/models/tight:predict", json={"instances": [[1.0]]})
                )
                for _ in range(12)
            ]
            # while the replica holds the first request, 1 in flight + 2 queued is all the
            # capacity there is: the other 9 are answered (shed) without waiting
            answered: set[asyncio.Task[httpx.Response]] = set()
            async with asyncio.timeout(30):
                while len(answered) < 9:
                    done, _ = await asyncio.wait(
                        set(sent) - answered, return_when=asyncio.FIRST_COMPLETED
                    )
                    answered |= done
            held = sum(1 for t in sent if not t.done())
            gate.touch()
            return list(await asyncio.gather(*sent)), held

    responses, held = asyncio.run(burst())
    codes = Counter(r.status_code for r in responses)
    assert held == 3, f"1 in flight + 2 queued were held, the rest shed: {held} held, {codes}"
    assert codes[200] == 3, codes  # 1 in flight + 2 queued
    assert codes[503] == 9, codes
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "1"


def test_no_failed_requests_while_replicas_are_killed(platform: Platform, tmp_path: Path) -> None:
    p = platform
    _register_slow_model(p, tmp_path, "sturdy", 0.005)
    _apply(p, tmp_path, "sturdy", {"model": "sturdy:1", "replicas": 3})
    assert (
        p.cli("wait", "modeldeployment/sturdy", "--for=condition=Ready", "--timeout=90s").returncode
        == 0
    )
    url = _status(p, "sturdy")["url"]
    killed: list[int] = []
    served = 25  # successful requests wanted before each kill and after the last one

    async def chaos() -> Counter[int]:
        codes: Counter[int] = Counter()
        stop = asyncio.Event()
        load = asyncio.create_task(
            _load(url, "sturdy", 4, seconds=300, max_requests=10**6, stop=stop, codes=codes)
        )
        rng = random.Random(7)
        try:
            for round_ in range(4):
                # the chaos schedule, by state: kill once every replica is back (none we
                # killed is counted ready any more) and requests have been served since
                mark = codes[200]

                def full_and_serving(mark: int = mark) -> list[dict[str, Any]] | None:
                    replicas = [
                        r for r in p.replicas("sturdy") if r["ready"] and r["pid"] not in killed
                    ]
                    ok = len(replicas) == 3 and codes[200] >= mark + served
                    return replicas if ok else None

                replicas = await asyncio.to_thread(
                    wait_for, f"kill {round_ + 1}: 3 ready replicas", full_and_serving, 90, 0.2
                )
                victim = rng.choice(replicas)["pid"]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            mark = codes[200]
            await asyncio.to_thread(
                wait_for, "requests served after the last kill", lambda: codes[200] >= mark + served
            )
        finally:
            stop.set()
        return await load

    codes = asyncio.run(chaos())
    assert len(killed) == 4
    assert not any(pid_alive(pid) for pid in killed)
    assert set(codes) == {200}, f"every request must succeed while replicas die: {codes}"
    wait_for(
        "back to 3 ready", lambda: _status(p, "sturdy")["readyReplicas"] == 3, timeout=60, every=0.5
    )
