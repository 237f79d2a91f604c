"""Where the embedded control plane keeps its state: ``$PILOTHOUSE_HOME`` (default ~/.pilothouse)."""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_TOKEN_LENGTH = 32
#: the home and every folder of state in it: the owner only
PRIVATE_DIR = 0o700
#: state files (the database, the token, daemon.json, logs): the owner only
PRIVATE_FILE = 0o600
#: log files under logs/ made private at start; a bound, not a walk of any size
MAX_LOG_FILES_SECURED = 10_000


def make_private(path: Path, mode: int) -> None:
    """``chmod`` to ``mode`` when wider; never through a symlink, quietly when gone or not
    ours to change."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) & ~mode == 0:
            return
        os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
    except (FileNotFoundError, PermissionError):
        return


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

    @property
    def logs(self) -> Path:
        """Logs of replicas and training workers."""
        return self.root / "logs"

    def state_files(self) -> list[Path]:
        """The files that must stay private (0600): state.db with its -wal/-shm, the token,
        daemon.json, nodes.yaml and the daemon's own logs."""
        files = [
            self.db,
            self.db.with_name(self.db.name + "-wal"),
            self.db.with_name(self.db.name + "-shm"),
            self.db.with_name(self.db.name + "-journal"),
            self.token_file,
            self.daemon_file,
            self.nodes_file,
            self.daemon_log,
            self.daemon_out,
        ]
        files.extend(sorted(self.root.glob(self.daemon_log.name + ".*")))
        return files

    def ensure(self) -> None:
        """Create the home if needed; make it 0700 and its state files 0600 whatever modes
        they had (a home made by hand, an older version, a copy)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        if stat.S_IMODE(self.root.stat().st_mode) & ~PRIVATE_DIR:
            os.chmod(self.root, PRIVATE_DIR)
        for path in self.state_files():
            make_private(path, PRIVATE_FILE)

    def secure_logs(self) -> int:
        """Make ``logs/`` 0700 and what is in it private (folders 0700, files 0600);
        returns how many entries were looked at (bounded by ``MAX_LOG_FILES_SECURED``)."""
        if not self.logs.is_dir() or self.logs.is_symlink():
            return 0
        make_private(self.logs, PRIVATE_DIR)
        seen = 0
        for folder, dirs, files in os.walk(self.logs):
            for name in dirs:
                make_private(Path(folder, name), PRIVATE_DIR)
            for name in files:
                make_private(Path(folder, name), PRIVATE_FILE)
            seen += len(dirs) + len(files)
            if seen >= MAX_LOG_FILES_SECURED:
                break
        return seen

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
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
        """Write daemon.json atomically, readable by the owner only (mode 0600)."""
        tmp = self.daemon_file.with_name(f".daemon.json.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(info, indent=2))
            os.replace(tmp, self.daemon_file)
        finally:
            tmp.unlink(missing_ok=True)

    def read_daemon_info(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.daemon_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data
