"""Credentials as GitHub checks them: App JWTs (RS256) and installation tokens."""

from __future__ import annotations

import base64
import secrets
import string
import time
from dataclasses import dataclass

import jwt

from .http import HttpError, Request
from .state import Repo, Store, Token

BAD_CREDENTIALS = "Bad credentials"
JWT_UNDECODABLE = "A JSON web token could not be decoded"
NOT_ACCESSIBLE = "Resource not accessible by integration"
LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}


@dataclass
class Credential:
    kind: str  # "jwt", "token", "anonymous"
    token: Token | None = None
    key: str = "anonymous"  # rate-limit bucket
    repo: Repo | None = None  # the repository a token route was authorized for


def new_token(
    store: Store, installation_id: int, repo_ids: list[int] | None, permissions: dict[str, str]
) -> Token:
    alphabet = string.ascii_letters + string.digits
    value = "ghs_" + "".join(secrets.choice(alphabet) for _ in range(36))
    token = Token(value, installation_id, time.time() + store.token_lifetime, repo_ids, permissions)
    with store.lock:
        store.tokens[value] = token
    return token


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in {"token", "bearer"} and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


def verify_jwt(store: Store, value: str) -> None:
    app = store.app
    if app is None:
        raise HttpError(401, JWT_UNDECODABLE)
    try:
        header = jwt.get_unverified_header(value)
    except jwt.PyJWTError as exc:
        raise HttpError(401, JWT_UNDECODABLE) from exc
    if header.get("alg") != "RS256":
        raise HttpError(401, JWT_UNDECODABLE)
    try:
        claims = jwt.decode(
            value,
            app.public_key_pem,
            algorithms=["RS256"],
            leeway=60,
            options={"require": ["iat", "exp", "iss"], "verify_iss": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise HttpError(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the future "
            "time at which the assertion expires",
        ) from exc
    except jwt.InvalidSignatureError as exc:
        raise HttpError(401, JWT_UNDECODABLE) from exc
    except jwt.PyJWTError as exc:
        raise HttpError(401, JWT_UNDECODABLE) from exc
    if str(claims.get("iss")) not in {str(app.id), f"Iv1.{app.id:016x}"}:
        raise HttpError(401, "'Issuer' claim ('iss') must be an Integer")
    if claims["exp"] - claims["iat"] > 600 + 60:
        raise HttpError(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
        )


def identify(store: Store, request: Request) -> Credential:
    value = _bearer(request)
    if value is None:
        return Credential("anonymous")
    if value.count(".") == 2:
        verify_jwt(store, value)
        return Credential("jwt", key="jwt")
    users = getattr(store, "user_tokens", {})  # OAuth user tokens (routes_oauth)
    if value in users:
        return Credential("user", key=f"user:{users[value][0]}")
    token = store.tokens.get(value)
    if token is None or not token.valid():
        raise HttpError(401, BAD_CREDENTIALS)
    return Credential("token", token, key=f"installation:{token.installation_id}")


def require_jwt(cred: Credential) -> None:
    if cred.kind == "anonymous":
        raise HttpError(401, "Requires authentication")
    if cred.kind != "jwt":
        raise HttpError(401, JWT_UNDECODABLE)


def require_repo(
    store: Store, cred: Credential, repo: Repo | None, permission: tuple[str, str] | None
) -> Repo:
    """The repository, if this credential may use it; 404 hides what it may not see."""
    if cred.kind == "anonymous":
        raise HttpError(401, "Requires authentication")
    if cred.kind == "jwt":
        raise HttpError(403, NOT_ACCESSIBLE)
    token = cred.token
    assert token is not None
    if repo is None or repo.installation_id != token.installation_id:
        raise HttpError(404, "Not Found")
    if token.repo_ids is not None and repo.id not in token.repo_ids:
        raise HttpError(404, "Not Found")
    if permission:
        name, level = permission
        granted = token.permissions.get(name, "none")
        if LEVELS.get(granted, 0) < LEVELS[level]:
            raise HttpError(403, NOT_ACCESSIBLE)
    return repo
