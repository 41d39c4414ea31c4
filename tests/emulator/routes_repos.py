"""Repository routes: repository, installation, contents, refs, git commits, branches,
collaborators."""

from __future__ import annotations

import base64
import re
from typing import Any

from . import actions_code, gitrepo, render
from .context import Context
from .http import HttpError, Request, Response, Router, not_found
from .state import Repo, Store


def commit_object(s: Store, r: Repo, sha: str) -> dict[str, Any]:
    info = gitrepo.commit_info(r.path, sha)
    api = f"{s.base_url}/repos/{r.full_name}"
    parents = gitrepo.out(r.path, "rev-list", "--parents", "-n", "1", sha).split()[1:]
    return {
        "url": f"{api}/commits/{sha}",
        "sha": sha,
        "node_id": render.node_id("Commit", int(sha[:8], 16)),
        "html_url": f"{s.base_url}/{r.full_name}/commit/{sha}",
        "comments_url": f"{api}/commits/{sha}/comments",
        "commit": {
            "url": f"{api}/git/commits/{sha}",
            "author": {
                "name": info["author_name"],
                "email": info["author_email"],
                "date": info["author_date"],
            },
            "committer": {
                "name": info["committer_name"],
                "email": info["committer_email"],
                "date": info["committer_date"],
            },
            "message": info["message"].strip(),
            "tree": {"sha": info["tree"], "url": f"{api}/git/trees/{info['tree']}"},
            "comment_count": 0,
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        },
        "author": None,
        "committer": None,
        "parents": [
            {
                "sha": p,
                "url": f"{api}/commits/{p}",
                "html_url": f"{s.base_url}/{r.full_name}/commit/{p}",
            }
            for p in parents
        ],
    }


def git_commit(s: Store, r: Repo, sha: str) -> dict[str, Any]:
    """``GET /repos/{o}/{r}/git/commits/{sha}``: the Git data API's commit (``git-commit``)."""
    info = gitrepo.commit_info(r.path, sha)
    api = f"{s.base_url}/repos/{r.full_name}"
    parents = gitrepo.out(r.path, "rev-list", "--parents", "-n", "1", sha).split()[1:]
    return {
        "sha": sha,
        "node_id": render.node_id("Commit", int(sha[:8], 16)),
        "url": f"{api}/git/commits/{sha}",
        "html_url": f"{s.base_url}/{r.full_name}/commit/{sha}",
        "author": {
            "name": info["author_name"],
            "email": info["author_email"],
            "date": info["author_date"],
        },
        "committer": {
            "name": info["committer_name"],
            "email": info["committer_email"],
            "date": info["committer_date"],
        },
        "tree": {"sha": info["tree"], "url": f"{api}/git/trees/{info['tree']}"},
        "message": info["message"].rstrip("\n"),
        "parents": [
            {
                "sha": p,
                "url": f"{api}/git/commits/{p}",
                "html_url": f"{s.base_url}/{r.full_name}/commit/{p}",
            }
            for p in parents
        ],
        "verification": {
            "verified": False,
            "reason": "unsigned",
            "signature": None,
            "payload": None,
            "verified_at": None,
        },
    }


def register(router: Router, ctx: Context) -> None:
    s = ctx.store

    def get_repo(request: Request) -> Response:
        return Response(200, render.repo(s, request.auth.repo))

    def repo_installation(request: Request) -> Response:
        p = request.params
        r = s.repo(p["owner"], p["repo"])
        if r is None:
            raise not_found()
        return Response(200, render.installation(s, s.installations[r.installation_id]))

    def contents(request: Request) -> Response:
        r: Repo = request.auth.repo
        ref = request.arg("ref") or r.default_branch
        sha = gitrepo.resolve(r.path, ref)
        if sha is None:
            raise HttpError(404, f"No commit found for the ref {ref}")
        path = request.params.get("path", "").strip("/")
        found = gitrepo.entry(r.path, sha, path)
        if found is None:
            raise not_found()
        if found.type == "tree":
            items = [_content_item(s, r, e, ref) for e in gitrepo.tree(r.path, sha, path)]
            return Response(200, items)
        data = _content_item(s, r, found, ref)
        raw = gitrepo.blob(r.path, found.sha)
        encoded = base64.b64encode(raw).decode()
        data["content"] = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n"
        data["encoding"] = "base64"
        return Response(200, data)

    def get_ref(request: Request) -> Response:
        r: Repo = request.auth.repo
        ref = request.params["ref"]
        sha = (
            gitrepo.resolve(r.path, f"refs/{ref}") if ref.startswith(("heads/", "tags/")) else None
        )
        if sha is None:
            raise not_found()
        return Response(200, _ref(s, r, f"refs/{ref}", sha))

    def create_ref(request: Request) -> Response:
        r: Repo = request.auth.repo
        body = request.json()
        ref, sha = body.get("ref", ""), body.get("sha", "")
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise HttpError(
                422, "Reference name must start with 'refs/' and have at least two slashes."
            )
        if gitrepo.resolve(r.path, sha) is None:
            raise HttpError(422, "Object does not exist")
        if gitrepo.resolve(r.path, ref) is not None:
            raise HttpError(422, "Reference already exists")
        before = gitrepo.branches(r.path)
        gitrepo.git(r.path, "update-ref", ref, sha)
        actions_code.refs_changed(ctx, r, before, ctx.bot())
        return Response(201, _ref(s, r, ref, sha))

    def get_git_commit(request: Request) -> Response:
        r: Repo = request.auth.repo
        given = request.params["commit_sha"]
        # The Git data API takes a commit SHA (abbreviated or full), never a branch name.
        sha = gitrepo.resolve(r.path, given) if re.fullmatch(r"[0-9a-fA-F]{4,40}", given) else None
        if sha is None or not sha.startswith(given.lower()):
            raise not_found()
        return Response(200, git_commit(s, r, sha))

    def list_branches(request: Request) -> Response:
        r: Repo = request.auth.repo
        api = f"{s.base_url}/repos/{r.full_name}"
        items = [
            {
                "name": name,
                "commit": {"sha": sha, "url": f"{api}/commits/{sha}"},
                "protected": (r.id, name) in s.protections,
            }
            for name, sha in sorted(gitrepo.branches(r.path).items())
        ]
        return Response(200, items)

    def get_branch(request: Request) -> Response:
        r: Repo = request.auth.repo
        name = request.params["branch"]
        sha = gitrepo.branches(r.path).get(name)
        if sha is None:
            raise HttpError(404, "Branch not found")
        api = f"{s.base_url}/repos/{r.full_name}/branches/{name}"
        protected = (r.id, name) in s.protections
        # The protection summary GitHub shows anyone who may read the repository.
        checks: dict[str, Any] = {"enforcement_level": "off", "contexts": [], "checks": []}
        if protected:
            from .routes_statuses import protection_json

            policy = protection_json(s, r, name)
            checks = {k: policy[k] for k in ("enforcement_level", "contexts", "checks")}
        return Response(
            200,
            {
                "name": name,
                "commit": commit_object(s, r, sha),
                "_links": {"self": api, "html": f"{s.base_url}/{r.full_name}/tree/{name}"},
                "protected": protected,
                "protection": {"enabled": protected, "required_status_checks": checks},
                "protection_url": f"{api}/protection",
            },
        )

    def collaborator_permission(request: Request) -> Response:
        r: Repo = request.auth.repo
        login = request.params["username"]
        u = s.users.get(login.lower())
        if u is None:
            raise HttpError(404, f"{login} is not a user")
        role = s.permission(r, login)
        legacy = {"maintain": "write", "triage": "read"}.get(role, role)
        rank = ["none", "read", "triage", "write", "maintain", "admin"]
        level = rank.index(role) if role in rank else 0
        user = render.user(s, u)
        user.pop("user_view_type", None)
        user["permissions"] = {
            "pull": level >= 1,
            "triage": level >= 2,
            "push": level >= 3,
            "maintain": level >= 4,
            "admin": level >= 5,
        }
        user["role_name"] = role
        return Response(200, {"permission": legacy, "role_name": role, "user": user})

    base = "/repos/{owner}/{repo}"
    meta = ("metadata", "read")
    contents_read = ("contents", "read")
    router.add("GET", base, get_repo, "token", meta)
    router.add("GET", f"{base}/installation", repo_installation, "jwt")
    router.add("GET", f"{base}/contents", contents, "token", contents_read)
    router.add("GET", f"{base}/contents/{{path:path}}", contents, "token", contents_read)
    router.add("GET", f"{base}/git/ref/{{ref:path}}", get_ref, "token", contents_read)
    router.add("GET", f"{base}/git/refs/{{ref:path}}", get_ref, "token", contents_read)
    router.add("POST", f"{base}/git/refs", create_ref, "token", ("contents", "write"))
    router.add("GET", f"{base}/git/commits/{{commit_sha}}", get_git_commit, "token", contents_read)
    router.add("GET", f"{base}/branches", list_branches, "token", contents_read)
    router.add("GET", f"{base}/branches/{{branch:path}}", get_branch, "token", contents_read)
    router.add(
        "GET",
        f"{base}/collaborators/{{username}}/permission",
        collaborator_permission,
        "token",
        meta,
    )


def _ref(s: Store, r: Repo, ref: str, sha: str) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}"
    return {
        "ref": ref,
        "node_id": render.node_id("Ref", abs(hash(ref)) % 10**9),
        "url": f"{api}/git/{ref}",
        "object": {"type": "commit", "sha": sha, "url": f"{api}/git/commits/{sha}"},
    }


def _content_item(s: Store, r: Repo, e: gitrepo.Entry, ref: str) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}"
    kind = {"tree": "dir", "commit": "submodule"}.get(e.type, "file")
    if e.mode == "120000":
        kind = "symlink"
    url = f"{api}/contents/{e.path}?ref={ref}"
    git_url = f"{api}/git/{'trees' if kind == 'dir' else 'blobs'}/{e.sha}"
    html = f"{s.base_url}/{r.full_name}/{'tree' if kind == 'dir' else 'blob'}/{ref}/{e.path}"
    return {
        "type": kind,
        "size": e.size,
        "name": e.path.rsplit("/", 1)[-1],
        "path": e.path,
        "sha": e.sha,
        "url": url,
        "git_url": git_url,
        "html_url": html,
        "download_url": None if kind == "dir" else f"{s.base_url}/raw/{r.full_name}/{ref}/{e.path}",
        "_links": {"self": url, "git": git_url, "html": html},
    }
