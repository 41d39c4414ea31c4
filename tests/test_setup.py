"""``GET /setup``: register the GitHub App from Bosun's manifest, end to end against the
emulator, starting from a Bosun configured with no App at all (SPEC §3.4)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import httpx
import redis

from tests.stack import StackPlace, free_port, make_stack_settings, running_stack


def test_manifest_flow_registers_the_app_and_runs_start(place: StackPlace) -> None:
    world = place.world
    port = free_port()
    settings = make_stack_settings(
        place.tmp_path,
        world,
        place.redis_url,
        place.namespace,
        place.work_root,
        port,
        github={"app_id": None, "private_key": None, "webhook_secret": None},
    )
    assert settings.github.app_id is None
    with running_stack(settings, world, port) as stack:
        page = httpx.get(f"{stack.url}/setup")
        assert page.status_code == 200 and "Register Bosun's GitHub App" in html.unescape(page.text)
        action = html.unescape(re.search(r"action='([^']+)'", page.text)[1])  # type: ignore[index]
        assert action.startswith(f"{settings.github.web_url}/settings/apps/new?state=")
        flow = action.split("state=", 1)[1]
        manifest = json.loads(html.unescape(re.search(r"value='([^']+)'", page.text)[1]))  # type: ignore[index]
        assert manifest["hook_attributes"]["url"] == f"{stack.url}/webhooks/github"
        assert manifest["redirect_url"] == f"{stack.url}/setup/callback"
        assert manifest["default_permissions"]["checks"] == "write"

        # The user confirms on GitHub, which sends the browser back with a code.
        code = world.emulator.manifest_code(manifest)
        forged = httpx.get(f"{stack.url}/setup/callback", params={"code": code, "state": "x"})
        assert forged.status_code == 400  # a state this Bosun never issued
        done = httpx.get(f"{stack.url}/setup/callback", params={"code": code, "state": flow})
        assert done.status_code == 200, done.text
        assert "is registered" in html.unescape(done.text)
        again = httpx.get(f"{stack.url}/setup/callback", params={"code": code, "state": flow})
        assert again.status_code == 409  # connected: no link replaces the App
        # Not even with a state planted in Redis, as whoever holds its password could.
        planted = "planted-state"
        redis_client = redis.Redis.from_url(
            place.redis_url, password=settings.redis.password_value(), socket_connect_timeout=2
        )
        with redis_client:
            redis_client.set(settings.redis.key("setup-state", planted), "1", ex=60)
        other = world.emulator.manifest_code(manifest)
        replaced = httpx.get(
            f"{stack.url}/setup/callback", params={"code": other, "state": planted}
        )
        assert replaced.status_code == 409 and "already connected" in html.unescape(replaced.text)
        (row,) = stack.db("SELECT app_id, slug, webhook_secret FROM app_credentials")
        assert row[0] == world.app.app_id and row[2]

        # Webhooks signed with the new secret are accepted, and the worker acts as the App.
        number = world.emulator.create_issue(stack.repo, "After setup", "Change it.", "alice")
        stack.label(number)
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
        assert run["state"] == "review_ready", run
        assert "is connected" in html.unescape(httpx.get(f"{stack.url}/setup").text)


def test_stored_app_fills_only_what_the_environment_left_empty(tmp_path: Path) -> None:
    from bot.appcreds import with_stored
    from bot.db.models import AppCredentials
    from tests.conftest import make_settings

    stored = AppCredentials(
        app_id=7, slug="bosun-x", private_key="PEM", webhook_secret="stored-secret"
    )
    bare = make_settings(tmp_path, "sqlite+aiosqlite:///x.db", "redis://127.0.0.1:6379/0")
    filled = with_stored(bare, stored)
    assert filled.github.app_id == 7 and filled.github.slug == "bosun-x"
    assert filled.github.private_key_pem() == "PEM"
    assert filled.github.webhook_secret is not None
    assert filled.github.webhook_secret.get_secret_value() == "stored-secret"
    configured = make_settings(
        tmp_path,
        "sqlite+aiosqlite:///x.db",
        "redis://127.0.0.1:6379/0",
        github={"app_id": 1, "private_key": "ENV-PEM"},
    )
    assert with_stored(configured, stored) is configured  # the environment always wins
