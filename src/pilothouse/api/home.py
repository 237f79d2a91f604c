"""Where the embedded control plane keeps its state: ``$PILOTHOUSE_HOME`` (default ~/.pilothouse)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_TOKEN_LENGTH = 32


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        raw = os.environ.get("PILOTHOUSE_HOME")
        return cls(Path(raw).expanduser() if raw else Path.home() / ".pilothouse")

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def nodes_file(self) -> Path:
        """Virtual nodes to run on (``pilothouse up --nodes FILE`` puts it here); without
        it the machine itself is the one node."""
        return self.root / "nodes.yaml"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def registry_uri(self) -> str:
        """$PILOTHOUSE_REGISTRY (a path, file://, s3://bucket/prefix, ...) or the home's models/."""
        return os.environ.get("PILOTHOUSE_REGISTRY") or str(self.models)

    @property
    def model_cache(self) -> Path:
        """Local copies of versions fetched from a remote registry."""
        return self.root / "cache" / "models"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def daemon_file(self) -> Path:
        return self.root / "daemon.json"

    @property
    def daemon_log(self) -> Path:
        """The daemon's log, rotated (daemon.log.1, …)."""
        return self.root / "daemon.log"

    @property
    def daemon_out(self) -> Path:
        """What the background daemon prints outside logging (a crash before logging starts)."""
        return self.root / "daemon.out"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def ensure_token(self) -> str:
        """Create the API token once, readable by the owner only (mode 0600).

        An empty or truncated token file (a crash mid-write, a stray ``touch``)
        is replaced: a short token must never become the key to the API.
        """
        self.ensure()
        existing = self.read_token()
        if existing is not None:
            return existing
        token = secrets.token_urlsafe(32)
        tmp = self.token_file.with_name(f".token.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.replace(tmp, self.token_file)
        return token

    def read_token(self) -> str | None:
        """The token, or None if there is none worth the name (missing, empty, too short)."""
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            return None
        return token if len(token) >= MIN_TOKEN_LENGTH else None

    def write_daemon_info(self, info: dict[str, Any]) -> None:
        tmp = self.daemon_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, self.daemon_file)

    def read_daemon_info(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.daemon_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data
