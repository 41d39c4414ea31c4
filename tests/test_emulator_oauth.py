"""The emulator's OAuth user flow (Sign in with GitHub) as GitHub runs it: the consent page
refuses a foreign client or redirect, a code is traded once for a ``ghu_`` token with the App's
client secret only, GitHub's error bodies for bad codes and secrets, and ``GET /user`` answers
that token (validated against ``@octokit/openapi``) and nothing else."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.emulator import schemas
from tests.emulator.routes_oauth import client_id, client_secret
from tests.emulator.world import World


def _app(world: World) -> tuple[str, str, str]:
    app = world.emulator.create_app("http://127.0.0.1:9/webhooks/github", "secret")
    callback = "http://127.0.0.1:9/login/github/callback"
    return client_id(app.app_id), client_secret(app.app_id), callback


def test_sign_in_trades_a_code_once_for_a_user_token(github_world: World) -> None:
    cid, secret, redirect = _app(github_world)
    base = github_world.emulator.base_url
    with httpx.Client(base_url=base, timeout=10) as client:
        page = client.get(
            "/login/oauth/authorize",
            params={"client_id": cid, "redirect_uri": redirect, "state": "s1"},
        )
        assert page.status_code == 200 and 'name="login"' in page.text
        foreign = client.get(
            "/login/oauth/authorize",
            params={"client_id": cid, "redirect_uri": "https://evil.example/cb", "state": "x"},
        )
        assert foreign.status_code == 400
        granted = client.post(
            "/login/oauth/authorize",
            data={"client_id": cid, "redirect_uri": redirect, "state": "s1", "login": "bob"},
        )
        assert granted.status_code == 302
        target = urlsplit(granted.headers["location"])
        query = parse_qs(target.query)
        assert target.path == "/login/github/callback" and query["state"] == ["s1"]
        code = query["code"][0]

        def trade(**overrides: str) -> dict[str, str]:
            form = {"client_id": cid, "client_secret": secret, "code": code, **overrides}
            answer = client.post(
                "/login/oauth/access_token", data=form, headers={"Accept": "application/json"}
            )
            assert answer.status_code == 200
            return dict(answer.json())

        assert trade(client_secret="0" * 40)["error"] == "incorrect_client_credentials"
        token = trade()
        assert token["token_type"] == "bearer" and token["access_token"].startswith("ghu_")
        assert trade()["error"] == "bad_verification_code"  # used once

        user = client.get("/user", headers={"Authorization": f"Bearer {token['access_token']}"})
        assert user.status_code == 200
        assert user.json()["login"] == "bob"
        assert schemas.rest_errors("get", "/user", 200, user.json()) == []
        anonymous = client.get("/user")
        assert anonymous.status_code == 401
        assert schemas.rest_errors("get", "/user", 401, anonymous.json()) == []
        forged = client.get("/user", headers={"Authorization": "Bearer ghu_" + "x" * 36})
        assert forged.status_code == 401
