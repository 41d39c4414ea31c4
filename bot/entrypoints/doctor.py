"""``bosun doctor``: check every dependency Bosun needs and say how to fix what fails."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bot.services import Services
from bot.settings import Settings

Status = Literal["ok", "warn", "fail", "skip"]

REQUIRED_DISTRIBUTIONS = (
    "litestar",
    "githubkit",
    "docker",
    "arq",
    "redis",
    "pydantic",
    "pydantic-settings",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "alembic",
    "structlog",
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def check_python_deps() -> Check:
    missing, versions = [], []
    for dist in REQUIRED_DISTRIBUTIONS:
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        return Check(
            "python deps",
            "fail",
            "missing: " + ", ".join(missing),
            "reinstall Bosun into its virtualenv: `uv sync` (or `pip install .`)",
        )
    return Check("python deps", "ok", f"{len(versions)} packages present")


async def check_database(services: Services) -> Check:
    from bot.db.migrate import current_revision, head_revision

    url = services.engine.url.render_as_string(hide_password=True)
    error = await services.check_database()
    if error:
        return Check("database", "fail", f"{url}: {error}", "check BOSUN_DATABASE__URL")
    current, head = await current_revision(services.engine), head_revision()
    if current != head:
        return Check(
            "database",
            "fail",
            f"{url}: schema at {current or 'nothing'}, code expects {head}",
            "run `bosun migrate`",
        )
    return Check("database", "ok", f"{url} (schema {current})")


async def check_redis(services: Services) -> Check:
    redis = services.settings.redis
    error = await services.check_redis()
    if error:
        fix = (
            "give Bosun the password Redis requires (BOSUN_REDIS__PASSWORD_FILE)"
            if "AuthenticationError" in error
            else "start Redis (scripts/bootstrap.sh test starts one with a password), set "
            "BOSUN_REDIS__URL, or use `bosun up`, which starts one"
        )
        return Check("redis", "fail", f"{redis.url}: {error}", fix)
    if redis.password is None and redis.password_file is None:
        return Check(
            "redis",
            "warn",
            f"{redis.url} (no password: whoever reaches it can enqueue jobs and read the queue)",
            "require a password (`requirepass`) and set BOSUN_REDIS__PASSWORD_FILE "
            "(docs/security.md)",
        )
    source = f"password from {redis.password_file}" if redis.password_file else "password set"
    return Check("redis", "ok", f"{redis.url} ({source})")


async def check_docker_and_images(services: Services) -> list[Check]:
    settings = services.settings
    where = (
        settings.sandbox.docker_host
        or os.environ.get("DOCKER_HOST")
        or "unix:///var/run/docker.sock"
    )
    error = await services.check_docker()
    if error:
        skipped = "not checked: the Docker engine is unreachable"
        return [
            Check(
                "docker engine",
                "fail",
                f"{where}: {error}",
                "start the engine (scripts/bootstrap.sh) or fix DOCKER_HOST / "
                "BOSUN_SANDBOX__DOCKER_HOST",
            ),
            Check("base image", "skip", skipped),
            Check("sandbox image", "skip", skipped),
        ]
    version = await asyncio.to_thread(lambda: services.docker.version().get("Version", "?"))
    checks = [Check("docker engine", "ok", f"{where} (engine {version})")]
    for label, image, fix in (
        ("base image", settings.sandbox.base_image, "run scripts/bootstrap.sh (builds it)"),
        ("sandbox image", settings.sandbox.image, "run sandboxes/images/build.sh"),
    ):
        present = await asyncio.to_thread(_image_present, services.docker, image)
        checks.append(
            Check(label, "ok", image)
            if present
            else Check(label, "fail", f"{image} is not in the engine", fix)
        )
    return checks


def _image_present(client: Any, image: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        return False
    return True


def check_github_app(settings: Settings) -> Check:
    gh = settings.github
    missing = [
        name
        for name, value in (
            ("app_id", gh.app_id),
            ("private_key or private_key_file", gh.private_key or gh.private_key_file),
            ("webhook_secret", gh.webhook_secret),
        )
        if not value
    ]
    if missing:
        return Check(
            "github app",
            "fail",
            "not configured: " + ", ".join(missing),
            "register the App at /setup (manifest flow) or set BOSUN_GITHUB__APP_ID, "
            "BOSUN_GITHUB__PRIVATE_KEY_FILE and BOSUN_GITHUB__WEBHOOK_SECRET",
        )
    try:
        pem = gh.private_key_pem() or ""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        load_pem_private_key(pem.encode(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return Check(
            "github app",
            "fail",
            f"private key unusable: {type(exc).__name__}",
            "point BOSUN_GITHUB__PRIVATE_KEY_FILE at the App's .pem file",
        )
    return Check("github app", "ok", f"app {gh.app_id} at {gh.api_url}")


def check_caches(settings: Settings) -> Check:
    """The dependency caches' size per repository, against their caps."""
    from bot.agents.egress.caches import caches_of

    caches = caches_of(settings)
    if caches is None:
        return Check("dependency caches", "skip", "off (caches.enabled is false)")
    sizes = caches.sizes()
    total = sum(size for size, _ in sizes.values())
    biggest = sorted(sizes.items(), key=lambda item: -item[1][0])[:5]
    listed = ", ".join(f"{key} {_human(size)}" for key, (size, _) in biggest)
    detail = (
        f"{len(sizes)} repositor{'y' if len(sizes) == 1 else 'ies'}, {_human(total)} of "
        f"{_human(caches.max_bytes)} at {caches.root}" + (f" ({listed})" if listed else "")
    )
    if total > caches.max_bytes:
        return Check(
            "dependency caches",
            "warn",
            detail,
            "the next setup evicts the least recently used; or raise BOSUN_CACHES__MAX_BYTES",
        )
    return Check("dependency caches", "ok", detail)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


async def run_checks(settings: Settings) -> list[Check]:
    services = Services.build(settings)
    try:
        checks = [check_python_deps()]
        checks.append(await check_database(services))
        checks.append(await check_redis(services))
        checks.extend(await check_docker_and_images(services))
        checks.append(check_github_app(settings))
        checks.append(await asyncio.to_thread(check_caches, settings))
        return checks
    finally:
        await services.close()


def render_table(checks: list[Check]) -> str:
    marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {marks[c.status]:<4}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<{width}}        fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append("")
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.status == "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
    }
