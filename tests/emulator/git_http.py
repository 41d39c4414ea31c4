"""Git smart HTTP through ``git http-backend`` (CGI), with GitHub's token checks and GH006."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re

from . import actions_code, auth, gitrepo
from .context import Context
from .http import Request, Response

GIT_PATH = re.compile(r"^/(?P<owner>[^/]+)/(?P<name>[^/]+?)\.git/(?P<rest>.+)$")
SERVICES = {"info/refs", "git-upload-pack", "git-receive-pack", "HEAD"}


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        (message + "\n").encode(),
        {"content-type": "text/plain; charset=utf-8", **(headers or {})},
    )


def _commands(body: bytes) -> list[str]:
    """Ref names a receive-pack request updates (its pkt-line command list)."""
    refs, pos = [], 0
    while pos + 4 <= len(body):
        try:
            size = int(body[pos : pos + 4], 16)
        except ValueError:
            break
        if size == 0:
            break
        line = body[pos + 4 : pos + size].split(b"\0", 1)[0].decode(errors="replace").strip()
        parts = line.split(" ")
        if len(parts) == 3:
            refs.append(parts[2])
        pos += size
    return refs


def _password(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return password or None


async def handle(ctx: Context, request: Request) -> Response | None:
    match = GIT_PATH.match(request.path)
    if not match or match["rest"] not in SERVICES:
        return None
    s = ctx.store
    repo = s.repo(match["owner"], match["name"])
    service = request.arg("service") if match["rest"] == "info/refs" else match["rest"]
    writing = service == "git-receive-pack"
    password = _password(request)
    if password is None:
        return _text(401, "Authentication required", {"www-authenticate": 'Basic realm="GitHub"'})
    token = s.tokens.get(password)
    if token is None or not token.valid():
        return _text(
            403,
            "Invalid username or token. Password authentication is not supported "
            "for Git operations.",
        )
    if repo is None:
        return _text(404, "Repository not found.")
    if repo.installation_id != token.installation_id or (
        token.repo_ids is not None and repo.id not in token.repo_ids
    ):
        return _text(403, f"Permission to {repo.full_name}.git denied to {ctx.bot().login}.")
    needed = "write" if writing else "read"
    if auth.LEVELS.get(token.permissions.get("contents", "none"), 0) < auth.LEVELS[needed]:
        return _text(403, f"Permission to {repo.full_name}.git denied to {ctx.bot().login}.")

    body = request.body
    env = {
        "GIT_PROJECT_ROOT": str(s.data_dir / "repos"),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": f"/{repo.owner.login}/{repo.name}.git/{match['rest']}",
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": "&".join(f"{k}={v[0]}" for k, v in request.query.items()),
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": "x-access-token",
        "REMOTE_ADDR": "127.0.0.1",
        "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
    }
    if "content-encoding" in request.headers:
        env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
    if "git-protocol" in request.headers:
        env["GIT_PROTOCOL"] = request.headers["git-protocol"]
    before: dict[str, str] = {}
    if writing and request.method == "POST":
        plain = gzip.decompress(body) if env.get("HTTP_CONTENT_ENCODING") == "gzip" else body
        protected = ctx.faults.protected(repo.full_name, _commands(plain))
        if protected:
            env["EMULATOR_PROTECTED"] = " ".join(protected)
        before = gitrepo.branches(repo.path)
    proc = await asyncio.create_subprocess_exec(
        "git",
        "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**gitrepo._env(), **env},
    )
    out, err = await proc.communicate(body)
    head, _, payload = out.partition(b"\r\n\r\n")
    if not _:
        head, _, payload = out.partition(b"\n\n")
    status, headers = 200, {}
    for line in head.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.strip().split()[0])
        elif key:
            headers[key.strip().lower()] = value.strip()
    if writing and request.method == "POST":
        repo_now = s.repo(repo.owner.login, repo.name)
        if repo_now is not None:
            await asyncio.to_thread(actions_code.refs_changed, ctx, repo_now, before, ctx.bot())
    if proc.returncode and not payload:
        return _text(500, err.decode(errors="replace"))
    return Response(status, payload, headers)
