"""`describe` shows what runs of an object: its revisions (from status) and its pods (from
``GET .../{name}/pods``), and never the controller's ``internal`` bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

from pilothouse.cli import render

REVISIONS = [
    {
        "revision": "1-aaaaaa",
        "model": "fraud:1",
        "desired": 2,
        "ready": 1,
        "starting": 0,
        "pending": 0,
        "failed": 1,
        "restarts": 3,
        "crashLooping": False,
        "nodes": ["vm"],
        "reason": "ReplicaFailed",
        "message": "replica fraud-1-aaaaaa-0001 exited with code 1",
    }
]
REPLICAS = [
    {
        "id": "fraud-1-aaaaaa-0000",
        "node": "vm",
        "phase": "Running",
        "message": "ready",
        "revision": "1-aaaaaa",
        "ready": True,
        "pid": 4242,
        "endpoint": "127.0.0.1:8601",
        "exitCode": None,
    },
    {
        "id": "fraud-1-aaaaaa-0001",
        "node": None,
        "phase": "Pending",
        "message": "waiting to be placed: no node has cpu 4",
        "revision": "1-aaaaaa",
        "ready": False,
        "pid": None,
        "endpoint": None,
        "exitCode": None,
    },
]
WORKERS = [
    {
        "id": "train-a2-r0",
        "node": "gpu-0",
        "phase": "Running",
        "message": "",
        "rank": 0,
        "attempt": 2,
        "running": True,
        "pending": False,
        "pid": 5150,
        "exitCode": None,
        "outputDir": "/tmp/home/outputs/train-1234abcd/attempt-2",
    }
]


def _obj(kind: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fraud", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {},
        "status": status,
    }


def _describe(
    monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any], pods: list[dict[str, Any]] | None
) -> str:
    monkeypatch.setattr(render.console, "width", 200)
    with render.console.capture() as captured:
        render.describe(obj, [], pods)
    return captured.get()


def test_deployment_shows_revisions_and_replicas_not_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = {
        "readyReplicas": 1,
        "revisions": REVISIONS,
        "internal": {"version": 2, "rollout": {"phase": "Healthy"}, "templates": {}},
    }
    text = _describe(monkeypatch, _obj("ModelDeployment", status), REPLICAS)
    assert "internal" not in text
    assert "templates" not in text
    status_part = text[text.index("Status:") : text.index("Revisions:")]
    assert "readyReplicas: 1" in status_part
    assert "revisions" not in status_part, "the revisions are their own section"
    revisions = text[text.index("Revisions:") : text.index("Pods:")].splitlines()
    assert revisions[1].split()[:7] == [
        "REVISION",
        "MODEL",
        "READY",
        "STARTING",
        "PENDING",
        "FAILED",
        "RESTARTS",
    ]
    assert revisions[2].split()[:8] == ["1-aaaaaa", "fraud:1", "1/2", "0", "0", "1", "3", "vm"]
    assert "ReplicaFailed: replica fraud-1-aaaaaa-0001 exited with code 1" in revisions[2]
    pods = text[text.index("Pods:") : text.index("Events:")].splitlines()
    assert pods[1].split() == [
        "ID",
        "NODE",
        "PHASE",
        "READY",
        "REVISION",
        "PID",
        "ENDPOINT",
        "MESSAGE",
    ]
    assert pods[2].split() == [
        "fraud-1-aaaaaa-0000",
        "vm",
        "Running",
        "yes",
        "1-aaaaaa",
        "4242",
        "127.0.0.1:8601",
        "ready",
    ]
    assert pods[3].split()[:7] == [
        "fraud-1-aaaaaa-0001",
        "-",
        "Pending",
        "no",
        "1-aaaaaa",
        "-",
        "-",
    ]
    assert pods[3].rstrip().endswith("waiting to be placed: no node has cpu 4")


def test_training_job_shows_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    status = {"phase": "Running", "attempt": 2, "workers": [{"rank": 0, "attempt": 2}]}
    text = _describe(monkeypatch, _obj("TrainingJob", status), WORKERS)
    assert "Revisions:" not in text
    pods = text[text.index("Pods:") : text.index("Events:")].splitlines()
    assert pods[1].split() == ["ID", "NODE", "PHASE", "RANK", "ATTEMPT", "PID", "EXIT", "MESSAGE"]
    assert pods[2].split() == ["train-a2-r0", "gpu-0", "Running", "0", "2", "5150", "-"]


def test_nothing_running_says_none_and_no_pods_fetched_shows_no_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = _describe(monkeypatch, _obj("ModelDeployment", {}), [])
    assert "Pods:  <none>" in text
    text = _describe(monkeypatch, _obj("Queue", {}), None)
    assert "Pods:" not in text
