"""Unit tests are pure: they may not open sockets or start processes."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


class _Forbidden(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise _Forbidden("unit tests must not use sockets or processes; write an integration test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
