"""``bosun doctor`` tells an unreachable Docker engine from a missing image, and exits
non-zero on any failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from tests.services import REDIS_URL, docker_client


async def _migrated(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bosun.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    await engine.dispose()
    return url


def _doctor(tmp_path: Path, db: str, **env: str) -> tuple[int, dict[str, dict[str, str]]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOSUN_")}
    environ.update(
        BOSUN_DATABASE__URL=db,
        BOSUN_REDIS__URL=REDIS_URL,
        BOSUN_DATA_DIR=str(tmp_path / "data"),
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bot.entrypoints.cli", "doctor", "--format", "json"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    body = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in body["checks"]}


async def test_doctor_unreachable_engine(tmp_path: Path) -> None:
    db = await _migrated(tmp_path)
    code, checks = _doctor(tmp_path, db, DOCKER_HOST="tcp://127.0.0.1:9")
    assert code == 1
    assert checks["docker engine"]["status"] == "fail"
    assert "127.0.0.1:9" in checks["docker engine"]["detail"]
    assert "DOCKER_HOST" in checks["docker engine"]["fix"]
    assert checks["sandbox image"]["status"] == "skip"
    assert checks["database"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok"


async def test_doctor_missing_image(tmp_path: Path) -> None:
    docker_client()
    db = await _migrated(tmp_path)
    code, checks = _doctor(tmp_path, db, BOSUN_SANDBOX__IMAGE="bosun-test-absent:nope")
    assert code == 1
    assert checks["docker engine"]["status"] == "ok"
    assert checks["base image"]["status"] == "ok"
    assert checks["sandbox image"]["status"] == "fail"
    assert "bosun-test-absent:nope" in checks["sandbox image"]["detail"]
    assert "build" in checks["sandbox image"]["fix"]


async def test_doctor_flags_unmigrated_database_and_missing_credentials(tmp_path: Path) -> None:
    code, checks = _doctor(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert "bosun migrate" in checks["database"]["fix"]
    assert checks["github app"]["status"] == "fail"
    assert "webhook_secret" in checks["github app"]["detail"]


async def test_doctor_shows_the_dependency_caches_size(tmp_path: Path) -> None:
    from sandboxes.caches import Caches, repository_key

    caches = Caches(tmp_path / "data" / "caches", max_bytes=10**6, max_bytes_per_repository=10**6)
    key = repository_key(1, "octo/hello")
    target = tmp_path / "run" / "cache"
    target.parent.mkdir()
    caches.stage(key, target, (os.getuid(), os.getgid()))
    (target / "pip" / "wheel").write_bytes(b"w" * 200_000)
    caches.seal(target)
    caches.publish(key, target, "r1")
    db = await _migrated(tmp_path)
    _, checks = _doctor(tmp_path, db, BOSUN_CACHES__MAX_BYTES="100000")
    check = checks["dependency caches"]
    assert check["status"] == "warn", check  # over the cap: the next setup evicts
    assert "1 repository" in check["detail"] and key in check["detail"]
    assert "KiB" in check["detail"] and "BOSUN_CACHES__MAX_BYTES" in check["fix"]
