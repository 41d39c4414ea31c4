"""Credentials as GitHub checks them: App JWTs only on ``/app*`` routes, installation tokens
only on their installation's (and their scope's) repositories, with GitHub's answers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

from tests.emulator import schemas
from tests.emulator.world import World

pytest_plugins = ["tests.emulator.fixtures"]


class client:
    """One-shot requests with one Authorization header (or none)."""

    def __init__(self, world: World, authorization: str | None = None) -> None:
        self.base = world.emulator.base_url
        self.headers = {"Authorization": authorization} if authorization else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.base, headers=self.headers, trust_env=False) as http:
            return http.request(method, path, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def app_jwt(world: World, **claims: object) -> str:
    now = int(time.time())
    body = {"iat": now - 60, "exp": now + 540, "iss": str(world.app.app_id), **claims}
    return jwt.encode(body, world.app.private_key_pem, algorithm="RS256")


def test_app_jwt_is_verified(github_world: World) -> None:
    assert client(github_world, f"Bearer {app_jwt(github_world)}").get("/app").status_code == 200
    expired = client(github_world, f"Bearer {app_jwt(github_world, exp=int(time.time()) - 120)}")
    answer = expired.get("/app")
    assert answer.status_code == 401
    assert "'Expiration time' claim ('exp')" in answer.json()["message"]
    assert schemas.rest_errors("get", "/app", 401, answer.json()) == []
    garbage = client(github_world, "Bearer not.a.jwt").get("/app")
    assert garbage.status_code == 401
    assert garbage.json() == {
        "message": "A JSON web token could not be decoded",
        "documentation_url": "https://docs.github.com/rest",
        "status": "401",
    }
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forged = jwt.encode(
        {
            "iat": int(time.time()) - 60,
            "exp": int(time.time()) + 300,
            "iss": str(github_world.app.app_id),
        },
        other_key,
        algorithm="RS256",
    )
    assert client(github_world, f"Bearer {forged}").get("/app").status_code == 401
    wrong_iss = client(github_world, f"Bearer {app_jwt(github_world, iss='1')}").get("/app")
    assert wrong_iss.status_code == 401
    assert client(github_world).get("/app").status_code == 401


def test_each_credential_only_where_github_accepts_it(github_world: World) -> None:
    bearer = f"Bearer {app_jwt(github_world)}"
    assert client(github_world, bearer).get("/repos/octo/hello").status_code == 403
    token = (
        github_world.app_github()
        .rest.apps.create_installation_access_token(github_world.repo.installation_id)
        .parsed_data.token
    )
    as_token = client(github_world, f"token {token}")
    assert as_token.get("/repos/octo/hello").status_code == 200
    assert as_token.get("/app/installations").status_code == 401
    anonymous = client(github_world).get("/repos/octo/hello")
    assert anonymous.status_code == 401
    assert anonymous.json()["message"] == "Requires authentication"
    unknown = client(github_world, "token ghs_unknown").get("/repos/octo/hello")
    assert (unknown.status_code, unknown.json()["message"]) == (401, "Bad credentials")


def test_token_scoped_to_repo_a_cannot_read_repo_b(github_world: World) -> None:
    em = github_world.emulator
    em.create_repo("octo", "secret", str(github_world.source))
    em.create_issue("octo/secret", "Private", user="alice")
    gh = github_world.app_github()
    scoped = gh.rest.apps.create_installation_access_token(
        github_world.repo.installation_id, repositories=["hello"]
    ).parsed_data.token
    api = client(github_world, f"token {scoped}")
    assert api.get("/repos/octo/hello").status_code == 200
    for path in (
        "/repos/octo/secret",
        "/repos/octo/secret/issues/1",
        "/repos/octo/secret/contents/README.md",
    ):
        hidden = api.get(path)
        assert hidden.status_code == 404, path
        assert hidden.json()["message"] == "Not Found"
    everything = gh.rest.apps.create_installation_access_token(
        github_world.repo.installation_id
    ).parsed_data.token
    assert client(github_world, f"token {everything}").get("/repos/octo/secret").status_code == 200


def test_token_permissions_are_enforced(github_world: World) -> None:
    number = github_world.emulator.create_issue("octo/hello", "Issue", user="alice")
    gh = github_world.app_github()
    read_only = gh.rest.apps.create_installation_access_token(
        github_world.repo.installation_id, permissions={"issues": "read"}
    ).parsed_data.token
    api = client(github_world, f"token {read_only}")
    assert api.get(f"/repos/octo/hello/issues/{number}").status_code == 200
    denied = api.post(f"/repos/octo/hello/issues/{number}/comments", json={"body": "hi"})
    assert denied.status_code == 403
    assert denied.json()["message"] == "Resource not accessible by integration"
    assert api.get("/repos/octo/hello/pulls").status_code == 403
    too_much = client(github_world, f"Bearer {app_jwt(github_world)}").post(
        f"/app/installations/{github_world.repo.installation_id}/access_tokens",
        json={"permissions": {"administration": "write"}},
    )
    assert too_much.status_code == 422
    outside = client(github_world, f"Bearer {app_jwt(github_world)}").post(
        f"/app/installations/{github_world.repo.installation_id}/access_tokens",
        json={"repositories": ["not-installed"]},
    )
    assert outside.status_code == 422


def test_request_log_tells_what_was_called(github_world: World) -> None:
    em = github_world.emulator
    em.clear_requests()
    em.create_issue("octo/hello", "Quiet", user="alice")
    assert em.requests() == []  # scenario calls are not GitHub API calls
    gh = github_world.installation_github()
    gh.rest.repos.get("octo", "hello")
    log = em.requests()
    assert [(r["method"], r["path"], r["status"], r["auth"]) for r in log] == [
        (
            "POST",
            f"/app/installations/{github_world.repo.installation_id}/access_tokens",
            201,
            "jwt",
        ),
        ("GET", "/repos/octo/hello", 200, "token"),
    ]
