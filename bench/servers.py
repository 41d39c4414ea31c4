"""Webhook receivers under test as child processes on 127.0.0.1: ``bosun serve`` (the real
CLI) and a no-op Probot 14 app (``bench/probot``), each with its CPU time readable from /proc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.stack import free_port

BOSUN = Path(sys.executable).with_name("bosun")
PROBOT_DIR = Path(__file__).parent / "probot"


class Receiver:
    """A child process answering ``GET /healthz`` once ready."""

    name = "receiver"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, cwd: Path | None = None) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(), env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=cwd
            )
        deadline = time.monotonic() + 120  # a loaded host imports the app slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer on :{self.port}; see {self.log}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process and its live child processes (``bosun
        serve --workers N`` runs N of them)."""
        assert self.proc is not None
        return _tree_cpu_ticks(self.proc.pid) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _tree_cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # the process ended between two reads
        return 0
    return int(fields[11]) + int(fields[12]) + sum(_tree_cpu_ticks(int(c)) for c in children)


class BosunServe(Receiver):
    """``bosun migrate`` then ``bosun serve`` on a fresh database (a temporary SQLite file by
    default) and a Redis namespace."""

    name = "bosun-serve"
    ok_status = 202

    def __init__(
        self,
        root: Path,
        secret: str,
        redis_url: str,
        namespace: str,
        log_level: str,
        database_url: str | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(root)
        self.workers = workers
        self.database_url = database_url or f"sqlite+aiosqlite:///{root / 'bosun.db'}"
        self.settings_env = {
            "BOSUN_GITHUB__WEBHOOK_SECRET": secret,
            "BOSUN_DATABASE__URL": self.database_url,
            "BOSUN_REDIS__URL": redis_url,
            "BOSUN_REDIS__NAMESPACE": namespace,
            "BOSUN_DATA_DIR": str(root / "data"),
            "BOSUN_LOG_FORMAT": "json",
            "BOSUN_LOG_LEVEL": log_level,
        }

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings_env}

    def argv(self) -> list[str]:
        return [
            str(BOSUN),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def start(self, cwd: Path | None = None) -> None:
        subprocess.run([str(BOSUN), "migrate"], env=self.env(), check=True, capture_output=True)
        super().start(cwd)


class ProbotApp(Receiver):
    """``node bench/probot/app.mjs``: Probot 14, an empty ``issues`` handler, nothing stored."""

    name = "probot"
    ok_status = 200

    def __init__(self, root: Path, secret: str) -> None:
        super().__init__(root)
        self.secret = secret
        self.key = root / "probot-key.pem"

    def argv(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        return [node, str(PROBOT_DIR / "app.mjs")]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PORT": str(self.port),
            "WEBHOOK_SECRET": self.secret,
            "PRIVATE_KEY_PATH": str(self.key),
            "NODE_ENV": "production",
        }

    def start(self, cwd: Path | None = None) -> None:
        if not (PROBOT_DIR / "node_modules" / "probot").is_dir():
            raise RuntimeError(f"run `npm ci` (or `npm install`) in {PROBOT_DIR} first")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        super().start(PROBOT_DIR)
