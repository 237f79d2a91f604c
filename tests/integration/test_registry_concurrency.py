"""Several processes registering into one local registry at once: distinct, complete versions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilothouse.registry.local import LocalRegistry, verify
from tests.integration.servers import register_fraud_model

pytestmark = pytest.mark.integration


def test_concurrent_register_processes(tmp_path: Path) -> None:
    source = register_fraud_model(tmp_path / "source", rows=2000).path
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.joblib", "signature.json"):
        (export / name).write_bytes((source / name).read_bytes())
    env = {**os.environ, "PILOTHOUSE_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pilothouse", "models", "register", "fraud", str(export)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    registry = LocalRegistry(tmp_path / "home" / "models")
    versions = registry.versions("fraud")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    for version in versions:
        verify(version)
    leftovers = [
        p.name
        for p in (tmp_path / "home" / "models" / "fraud").iterdir()
        if p.name.startswith(".incoming")
    ]
    assert leftovers == []
