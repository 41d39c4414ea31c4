"""The deployment as compose.yaml describes it: one service image, one role per container.

- ``test_compose_file_describes_the_documented_stack`` reads compose.yaml (no Docker needed).
- ``test_compose_stack_comes_up_and_serves_a_delivery``: ``docker compose up`` of the file as the
  operations guide says (PostgreSQL is a stand-in built offline, ``tests/images/postgres``).
- ``test_role_containers_serve_a_delivery`` runs the roles as plain containers, the way
  compose.yaml does, against the host's PostgreSQL and Redis, every secret in a ``*_FILE``.

Both container tests need a built image (``scripts/build_service_image.sh``, about 2-3 minutes),
named by ``BOSUN_TEST_SERVICE_IMAGE``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from bot.envfiles import _file_variables
from bot.settings import Settings
from tests.conftest import _pg_admin
from tests.services import POSTGRES_URL, REDIS_PASSWORD_FILE, docker_client, missing
from tests.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("BOSUN_TEST_SERVICE_IMAGE", "")
UNPRIVILEGED = "10001:10001"
WORKER_CAPS = {"CHOWN", "DAC_READ_SEARCH", "SETUID", "SETGID", "KILL"}


def test_compose_file_describes_the_documented_stack() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker"}
    roles = {name: services[name]["command"][:2] for name in ("migrate", "web", "worker")}
    assert roles == {
        "migrate": ["bosun", "migrate"],
        "web": ["bosun", "web"],
        "worker": ["bosun", "worker"],
    }
    for name in ("redis", "migrate", "web"):
        assert services[name]["user"] == UNPRIVILEGED, name
    for name in ("redis", "migrate", "web", "worker"):
        service = services[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    worker = services["worker"]
    assert set(worker["cap_add"]) == WORKER_CAPS
    assert worker["healthcheck"]["test"] == ["CMD", "bosun", "worker", "--check"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["web"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    # Redis requires a password, which stays off every command line.
    assert "requirepass" in services["redis"]["command"][0]
    assert "$$(cat /run/secrets/redis_password)" in services["redis"]["command"][0]
    # Every secret is a file, and every *_FILE variable names a real setting.
    declared = set(compose["secrets"])
    for name in ("migrate", "web", "worker"):
        environment = services[name]["environment"]
        assert not {k for k in environment if "SECRET" in k and not k.endswith("_FILE")}
        file_vars = {k: v for k, v in environment.items() if k.endswith("_FILE")}
        for variable, path in file_vars.items():
            assert path.startswith("/run/secrets/") and path.rsplit("/", 1)[1] in declared
            named = _file_variables(Settings, {variable: path}, "BOSUN_")
            own_field = variable in {"BOSUN_REDIS__PASSWORD_FILE", "BOSUN_GITHUB__PRIVATE_KEY_FILE"}
            assert named or own_field, f"{variable} names no setting"
        assert set(services[name]["secrets"]) <= declared


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"deploy_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE SCHEMA "{schema}"'))
    yield schema
    asyncio.run(_pg_admin(f'DROP SCHEMA "{schema}" CASCADE'))


def _send_ping(port: int, webhook_secret: str, zen: str) -> str:
    """POST a signed ``ping`` delivery to the deployed web role; its delivery id (202 checked)."""
    delivery = str(uuid.uuid4())
    payload = json.dumps({"zen": zen, "hook_id": 1}).encode()
    signature = hmac.new(webhook_secret.encode(), payload, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/github",
        data=payload,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    return delivery


def _wait(probe: Any, what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.3)


def need_image() -> None:
    """The service image under test (built by the bootstrap under CI, where its absence fails)."""
    if not IMAGE:
        missing(
            "the service image",
            "build it with scripts/build_service_image.sh and set "
            "BOSUN_TEST_SERVICE_IMAGE=bosun:latest",
        )


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.mark.timeout(240)
def test_role_containers_serve_a_delivery(tmp_path: Path, pg_schema: str) -> None:
    need_image()
    engine = docker_client()
    engine.images.get(IMAGE)
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    url = make_url(POSTGRES_URL).update_query_dict({"search_path": pg_schema})
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    webhook_secret = secrets.token_hex(20)
    files = {
        "database_url": url.render_as_string(hide_password=False),
        "redis_password": Path(REDIS_PASSWORD_FILE).read_text().strip(),
        "webhook_secret": webhook_secret,
        "dashboard_key": secrets.token_hex(32),
    }
    for name, value in files.items():
        (secret_dir / name).write_text(value + "\n")
        os.chown(secret_dir / name, 10001, 10001)
        (secret_dir / name).chmod(0o400)
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    environment = {
        "BOSUN_ENV_FILE": "",
        "BOSUN_DATABASE__URL_FILE": "/run/secrets/database_url",
        "BOSUN_REDIS__URL": "redis://127.0.0.1:6379/0",
        "BOSUN_REDIS__PASSWORD_FILE": "/run/secrets/redis_password",
        "BOSUN_REDIS__NAMESPACE": namespace,
        "BOSUN_GITHUB__WEBHOOK_SECRET_FILE": "/run/secrets/webhook_secret",
        "BOSUN_DASHBOARD__SECRET_KEY_FILE": "/run/secrets/dashboard_key",
        "BOSUN_ARTIFACTS__BACKEND": "database",
        "BOSUN_WORKER__NAME": "worker-1",
        "BOSUN_WORKER__HEALTH_CHECK_SECONDS": "1",
    }
    common: dict[str, Any] = {
        "network_mode": "host",  # the host's PostgreSQL and Redis on loopback
        "userns_mode": "host",  # host networking is not allowed with userns-remap
        "environment": environment,
        "volumes": {str(secret_dir): {"bind": "/run/secrets", "mode": "ro"}},
        "read_only": True,
        "tmpfs": {"/tmp": ""},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": {"bosun.test": "deployment"},
    }
    started: list[Any] = []
    try:
        migrate = engine.containers.run(
            IMAGE, ["bosun", "migrate"], user=UNPRIVILEGED, detach=True, **common
        )
        started.append(migrate)
        assert migrate.wait(timeout=120)["StatusCode"] == 0, migrate.logs().decode()
        assert b"database at revision" in migrate.logs()

        web = engine.containers.run(
            IMAGE,
            ["bosun", "web", "--host", "127.0.0.1", "--port", str(port)],
            user=UNPRIVILEGED,
            detach=True,
            **common,
        )
        started.append(web)
        ready_url = f"http://127.0.0.1:{port}/readyz"
        try:
            _, body = _wait(
                lambda: (r := _get(ready_url))[0] == 200 and r, "the web container's readiness"
            )
        except AssertionError:
            raise AssertionError(f"{_get(ready_url)}\n{web.logs().decode()[-3000:]}") from None
        assert set(body["checks"]) == {"database", "redis"}  # a web-only host needs no Docker
        assert web.exec_run(["id", "-u"]).output.strip() == b"10001"

        worker_env = {
            **environment,
            "BOSUN_DATA_DIR": str(state / "var"),
            "BOSUN_SANDBOX__WORKDIR": str(state / "var" / "workspaces"),
        }
        as_worker: dict[str, Any] = {
            **common,
            "user": "0:0",  # root with the five capabilities alone, as in compose.yaml
            "environment": worker_env,
            "cap_add": sorted(WORKER_CAPS),
            "volumes": {
                **common["volumes"],
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                str(state): {"bind": str(state), "mode": "rw"},
            },
        }
        worker = engine.containers.run(IMAGE, ["bosun", "worker"], detach=True, **as_worker)
        started.append(worker)
        check = ["bosun", "worker", "--check"]
        _wait(lambda: worker.exec_run(check).exit_code == 0, "bosun worker --check passing")
        output = worker.exec_run(check).output.decode()
        assert {"worker: ok", "database: ok", "redis: ok", "docker: ok"} <= set(
            output.splitlines()
        ), output

        delivery = _send_ping(port, webhook_secret, "Keep it logically awesome.")

        async def delivery_status() -> str | None:
            import asyncpg

            conn = await asyncpg.connect(
                make_url(POSTGRES_URL)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False),
                server_settings={"search_path": pg_schema},
            )
            try:
                found = await conn.fetchval("SELECT status FROM deliveries WHERE id = $1", delivery)
                return str(found) if found is not None else None
            finally:
                await conn.close()

        final = _wait(
            lambda: (s := asyncio.run(delivery_status())) in ("processed", "ignored") and s,
            "the worker container handling the delivery",
        )
        assert final in ("processed", "ignored")

        worker.stop(timeout=20)
        probe = engine.containers.run(IMAGE, check, detach=True, **as_worker)
        started.append(probe)
        assert probe.wait(timeout=60)["StatusCode"] == 1  # no worker of that name polls now
        assert b"worker: no fresh health-check key" in probe.logs()
    finally:
        for container in started:
            container.remove(force=True)


POSTGRES_STAND_IN = "bosun-test-postgres:15"


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    pytest.fail("no Docker Compose: apt-get install docker-compose (or the compose plugin)")


def _postgres_stand_in(engine: Any) -> str:
    """The official postgres image needs a registry; build Debian's PostgreSQL 15 with the same
    contract offline (tests/images/postgres) when it is not there yet."""
    import docker.errors

    try:
        engine.images.get(POSTGRES_STAND_IN)
        return POSTGRES_STAND_IN
    except docker.errors.ImageNotFound:
        pass
    context = ROOT / "build" / "images" / "postgres"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(ROOT / "tests" / "images" / "postgres", context)
    subprocess.run(
        [str(ROOT / "sandboxes/images/fetch_debs.sh"), str(context / "debs"),
         "debian:bookworm-slim", "postgresql-15"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["docker", "build", "--network", "none", "-q", "-t", POSTGRES_STAND_IN, str(context)],
        check=True, capture_output=True,
    )  # fmt: skip
    return POSTGRES_STAND_IN


@pytest.mark.timeout(420)
def test_compose_stack_comes_up_and_serves_a_delivery(tmp_path: Path) -> None:
    """``docker compose up`` of compose.yaml as the operations guide says: the secrets under
    ./secrets, bosun.env next to the file. Migrate finishes, web is ready, a signed delivery is
    processed by the worker, ``bosun worker --check`` passes in the worker, and Redis refuses a
    client without the password."""
    need_image()
    engine = docker_client()
    compose = _compose_command()
    project = tmp_path / "bosun"
    project.mkdir()
    shutil.copy(ROOT / "compose.yaml", project / "compose.yaml")
    state = tmp_path / "state"
    state.mkdir()
    postgres_password = secrets.token_hex(16)
    webhook_secret = secrets.token_hex(20)
    values = {
        "postgres_password": postgres_password,
        "database_url": f"postgresql+asyncpg://bosun:{postgres_password}@postgres/bosun",
        "redis_password": secrets.token_hex(32),
        "dashboard_key": secrets.token_hex(32),
        "github_app_key": "not used by this test",
        "webhook_secret": webhook_secret,
    }
    # As the operations guide says: readable files in a folder only root may enter. Compose
    # mounts each file itself, so the containers' users read them whatever uid the engine
    # maps them to (userns-remap here), and nobody else on the host can.
    (project / "secrets").mkdir()
    (project / "secrets").chmod(0o700)
    for name, value in values.items():
        path = project / "secrets" / name
        path.write_text(value + "\n")
        path.chmod(0o444)
    (project / "bosun.env").write_text(
        "BOSUN_PUBLIC_URL=http://127.0.0.1\nBOSUN_WORKER__HEALTH_CHECK_SECONDS=2\n"
    )
    port = free_port()
    name = f"bosuntest{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BOSUN_IMAGE": IMAGE,
        "BOSUN_POSTGRES_IMAGE": _postgres_stand_in(engine),
        "BOSUN_PORT": str(port),
        "BOSUN_HOST_STATE": str(state),
        "COMPOSE_PROJECT_NAME": name,
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*compose, "-f", "compose.yaml", *args],
            cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            logs = subprocess.run(
                [*compose, "-f", "compose.yaml", "logs", "--no-color", "--tail", "40"],
                cwd=project, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            raise AssertionError(f"{args}: {done.stdout}{done.stderr}\n{logs.stdout[-6000:]}")
        return done

    try:
        run("up", "-d")
        ready_url = f"http://127.0.0.1:{port}/readyz"
        try:
            _, body = _wait(lambda: (r := _get(ready_url))[0] == 200 and r, "web ready", 120)
        except AssertionError:
            logs = run("logs", "--no-color", "--tail", "40", check=False).stdout
            raise AssertionError(f"{_get(ready_url)}\n{logs[-6000:]}") from None
        assert set(body["checks"]) == {"database", "redis"}
        migrate = run("ps", "-q", "migrate").stdout.strip()
        assert engine.containers.get(migrate).attrs["State"]["ExitCode"] == 0

        _wait(
            lambda: (
                run("exec", "-T", "worker", "bosun", "worker", "--check", check=False).returncode
                == 0
            ),
            "bosun worker --check passing in the worker container",
            90,
        )
        delivery = _send_ping(port, webhook_secret, "Design for failure.")
        query = f"SELECT status FROM deliveries WHERE id = '{delivery}'"
        status = _wait(
            lambda: (
                out := run(
                    "exec", "-T", "postgres", "psql", "-U", "bosun", "-d", "bosun", "-tAc", query,
                    check=False,
                ).stdout.strip()
            ) in ("processed", "ignored") and out,
            "the worker processing the delivery",
            60,
        )  # fmt: skip
        assert status in ("processed", "ignored")

        refused = run("exec", "-T", "redis", "redis-cli", "ping", check=False)
        assert "NOAUTH" in refused.stdout + refused.stderr
        web_user = run("exec", "-T", "web", "id", "-u").stdout.strip()
        assert web_user == "10001"
    finally:
        run("down", "-v", "--remove-orphans", check=False)
