"""A small typed client for the scenario API (``/_emulator/``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class AppCredentials:
    app_id: int
    private_key_pem: str
    slug: str
    webhook_secret: str
    bot_login: str


@dataclass(frozen=True)
class RepoInfo:
    full_name: str
    id: int
    installation_id: int
    clone_url: str


class EmulatorError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class EmulatorClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # No keep-alive: a connection idle past the server's keep-alive timeout can be closed
        # just as the next call reuses it ("Server disconnected without sending a response").
        self.http = httpx.Client(
            base_url=base_url,
            timeout=30.0,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        response = self.http.request(
            method,
            f"/_emulator{path}",
            json=json,
            params={k: v for k, v in params.items() if v is not None},
        )
        if response.status_code >= 400:
            raise EmulatorError(response.status_code, response.text)
        return response.json() if response.content else None

    def create_app(
        self, webhook_url: str = "", secret: str | None = None, name: str | None = None
    ) -> AppCredentials:
        data = self._call(
            "POST", "/app", {"webhook_url": webhook_url, "webhook_secret": secret, "name": name}
        )
        return AppCredentials(
            data["app_id"],
            data["private_key_pem"],
            data["slug"],
            data["webhook_secret"],
            data["bot_login"],
        )

    def create_repo(
        self,
        owner: str,
        name: str,
        source: str,
        default_branch: str = "main",
        owner_type: str = "User",
    ) -> RepoInfo:
        data = self._call(
            "POST",
            "/repos",
            {
                "owner": owner,
                "name": name,
                "source": source,
                "default_branch": default_branch,
                "owner_type": owner_type,
            },
        )
        return RepoInfo(data["full_name"], data["id"], data["installation_id"], data["clone_url"])

    def add_user(
        self, login: str, repo: str | None = None, permission: str = "read", type: str = "User"
    ) -> dict[str, Any]:
        return self._call(
            "POST", "/users", {"login": login, "repo": repo, "permission": permission, "type": type}
        )

    def create_issue(
        self,
        repo: str,
        title: str,
        body: str = "",
        user: str = "octocat",
        labels: list[str] | None = None,
    ) -> int:
        data = self._call(
            "POST",
            f"/repos/{repo}/issues",
            {"title": title, "body": body, "user": user, "labels": labels},
        )
        return int(data["number"])

    def edit_issue(self, repo: str, number: int, user: str, **changes: Any) -> None:
        self._call("PATCH", f"/repos/{repo}/issues/{number}", {"user": user, **changes})

    def add_labels(self, repo: str, number: int, labels: list[str], user: str) -> None:
        self._call(
            "POST", f"/repos/{repo}/issues/{number}/labels", {"labels": labels, "user": user}
        )

    def remove_label(self, repo: str, number: int, label: str, user: str) -> None:
        self._call("DELETE", f"/repos/{repo}/issues/{number}/labels/{label}", user=user)

    def comment(self, repo: str, number: int, body: str, user: str) -> int:
        data = self._call(
            "POST", f"/repos/{repo}/issues/{number}/comments", {"body": body, "user": user}
        )
        return int(data["id"])

    def edit_comment(self, repo: str, comment_id: int, body: str, user: str | None = None) -> None:
        self._call(
            "PATCH", f"/repos/{repo}/issues/comments/{comment_id}", {"body": body, "user": user}
        )

    def delete_comment(self, repo: str, comment_id: int, user: str | None = None) -> None:
        self._call("DELETE", f"/repos/{repo}/issues/comments/{comment_id}", user=user)

    def open_pull(
        self,
        repo: str,
        title: str,
        head: str,
        base: str = "main",
        body: str = "",
        user: str = "octocat",
        draft: bool = False,
    ) -> int:
        data = self._call(
            "POST",
            f"/repos/{repo}/pulls",
            {
                "title": title,
                "head": head,
                "base": base,
                "body": body,
                "user": user,
                "draft": draft,
            },
        )
        return int(data["number"])

    def review(
        self,
        repo: str,
        number: int,
        state: str,
        user: str,
        body: str = "",
        comments: list[dict[str, Any]] | None = None,
    ) -> int:
        """Submit a review; ``comments`` (``path``, ``line``, ``body``) go with it."""
        data = self._call(
            "POST",
            f"/repos/{repo}/pulls/{number}/reviews",
            {"state": state, "body": body, "user": user, "comments": comments or []},
        )
        return int(data["id"])

    def assign(self, repo: str, number: int, assignees: list[str], user: str) -> None:
        body = {"assignees": assignees, "user": user}
        self._call("POST", f"/repos/{repo}/issues/{number}/assignees", body)

    def ruleset(
        self, repo: str, branch: str, contexts: list[str], apps: dict[str, str] | None = None
    ) -> None:
        """A repository ruleset on ``branch`` that requires ``contexts`` (``apps``: a
        context's checks must come from that App, by slug)."""
        body = {"branch": branch, "contexts": contexts, "apps": apps or {}}
        self._call("POST", f"/repos/{repo}/rulesets", body)

    def grant(self, permissions: dict[str, str]) -> None:
        """Set what the installation granted the App (e.g. a new permission not accepted)."""
        self._call("PUT", "/app/permissions", permissions)

    def protect(
        self, repo: str, branch: str, contexts: list[str], apps: dict[str, str] | None = None
    ) -> None:
        """Require ``contexts`` (check run names or commit status contexts) on ``branch``;
        ``apps`` binds a context to the check runs of one App (by slug)."""
        body = {"branch": branch, "contexts": contexts, "apps": apps or {}}
        self._call("POST", f"/repos/{repo}/protection", body)

    def commit_status(
        self, repo: str, sha: str, context: str, state: str, user: str, target_url: str = ""
    ) -> int:
        body = {"context": context, "state": state, "user": user}
        if target_url:
            body["target_url"] = target_url
        return int(self._call("POST", f"/repos/{repo}/statuses/{sha}", body)["id"])

    def ci_check(
        self,
        repo: str,
        sha: str,
        name: str,
        conclusion: str | None,
        *,
        status: str = "completed",
        app: str = "ci",
    ) -> int:
        """Another App (a CI) reports check run ``name`` on ``sha``."""
        body: dict[str, Any] = {"name": name, "head_sha": sha, "status": status, "app": app}
        if conclusion:
            body["conclusion"] = conclusion
        return int(self._call("POST", f"/repos/{repo}/ci-check-runs", body)["id"])

    def review_comment(
        self, repo: str, number: int, body: str, user: str, path: str = "README.md", line: int = 1
    ) -> int:
        data = self._call(
            "POST",
            f"/repos/{repo}/pulls/{number}/comments",
            {"body": body, "user": user, "path": path, "line": line},
        )
        return int(data["id"])

    def click_action(self, check_run_id: int, identifier: str, user: str) -> None:
        self._call("POST", f"/check-runs/{check_run_id}/actions/{identifier}", {"user": user})

    def rerequest(self, check_run_id: int, user: str) -> None:
        self._call("POST", f"/check-runs/{check_run_id}/rerequest", {"user": user})

    def push(
        self,
        repo: str,
        branch: str,
        files: dict[str, str | None],
        user: str = "octocat",
        message: str = "Update files",
    ) -> str:
        data = self._call(
            "POST",
            f"/repos/{repo}/push",
            {"branch": branch, "files": files, "user": user, "message": message},
        )
        return str(data["sha"])

    def deliveries(self, wait: bool = True, since: int = 0) -> list[dict[str, Any]]:
        """Every delivery (from the ``since``-th on), oldest first."""
        return list(
            self._call("GET", "/deliveries", wait="1" if wait else "0", since=since or None)
        )

    def redeliver(self, guid: str) -> None:
        self._call("POST", f"/deliveries/{guid}/redeliver")

    def fault(self, kind: str, **spec: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/faults", {"kind": kind, **spec}))

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def hold(self, method: str, path: str, **spec: Any) -> int:
        """Hold the next call matching ``method`` and ``path`` until ``release``; its id."""
        return int(self.fault("hold", method=method, path=path, **spec)["id"])

    def fault_info(self, fault_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/faults/{fault_id}"))

    def wait_held(self, fault_id: int, timeout: float = 10.0) -> None:
        """Wait until a call is being held by hold ``fault_id``."""
        deadline = time.monotonic() + timeout
        while self.fault_info(fault_id)["waiting"] < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no call was held by fault {fault_id} in {timeout}s")
            time.sleep(0.005)

    def release(self, fault_id: int) -> None:
        self._call("POST", f"/faults/{fault_id}/release")

    def state(self, owner: str, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/repos/{owner}/{name}/state"))

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/requests"))

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def manifest_code(self, manifest: dict[str, Any]) -> str:
        return str(self._call("POST", "/app-manifests", {"manifest": manifest})["code"])
