"""Webhook payload shapes: the REST objects trimmed to what GitHub sends in webhooks.

The key sets follow ``@octokit/webhooks-schemas`` (which forbids extra properties).
"""

from __future__ import annotations

from typing import Any

from . import render, render_pulls
from .state import (
    App,
    CheckRun,
    Comment,
    Installation,
    Issue,
    Repo,
    Review,
    ReviewComment,
    Store,
    User,
)

USER_KEYS = {
    "login",
    "id",
    "node_id",
    "avatar_url",
    "gravatar_id",
    "url",
    "html_url",
    "followers_url",
    "following_url",
    "gists_url",
    "starred_url",
    "subscriptions_url",
    "organizations_url",
    "repos_url",
    "events_url",
    "received_events_url",
    "type",
    "site_admin",
}
REPO_DROP = {"network_count", "subscribers_count", "temp_clone_token"}
APP_KEYS = {
    "id",
    "slug",
    "node_id",
    "owner",
    "name",
    "description",
    "external_url",
    "html_url",
    "created_at",
    "updated_at",
    "permissions",
    "events",
}
PULL_SIMPLE_DROP = {
    "merged",
    "mergeable",
    "rebaseable",
    "mergeable_state",
    "merged_by",
    "comments",
    "review_comments",
    "maintainer_can_modify",
    "commits",
    "additions",
    "deletions",
    "changed_files",
}


def _users(value: Any) -> Any:
    """Trim every user object in ``value`` to the webhook user shape."""
    if isinstance(value, dict):
        if "login" in value and "gravatar_id" in value:
            return {k: v for k, v in value.items() if k in USER_KEYS}
        return {k: _users(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_users(v) for v in value]
    return value


def user(s: Store, u: User) -> dict[str, Any]:
    return _users(render.user(s, u))


def repository(s: Store, r: Repo) -> dict[str, Any]:
    data = {k: v for k, v in render.repo(s, r).items() if k not in REPO_DROP}
    return _users(data)


def app(s: Store, other: App | None = None) -> dict[str, Any]:
    """The App (or ``other``, e.g. a CI App) as webhooks show it."""
    chosen = other or s.app
    assert chosen is not None
    return _users({k: v for k, v in render.app(s, chosen).items() if k in APP_KEYS})


def _via_app(s: Store, data: dict[str, Any]) -> dict[str, Any]:
    if data.get("performed_via_github_app"):
        data["performed_via_github_app"] = app(s)
    return data


def issue(s: Store, r: Repo, i: Issue) -> dict[str, Any]:
    return _users(_via_app(s, render.issue(s, r, i)))


def comment(s: Store, r: Repo, c: Comment) -> dict[str, Any]:
    return _users(_via_app(s, render.comment(s, r, c)))


def _pull_repo_sides(s: Store, data: dict[str, Any], r: Repo) -> dict[str, Any]:
    for side in ("head", "base"):
        data[side]["repo"] = repository(s, r)
    return data


def pull(s: Store, r: Repo, i: Issue) -> dict[str, Any]:
    return _users(_pull_repo_sides(s, render_pulls.pull(s, r, i), r))


def simple_pull(s: Store, r: Repo, i: Issue) -> dict[str, Any]:
    data = render_pulls.pull(s, r, i, simple=True)
    return _users(_pull_repo_sides(s, data, r))


def review(s: Store, r: Repo, i: Issue, v: Review) -> dict[str, Any]:
    data = render_pulls.review(s, r, i, v)
    data["state"] = v.state.lower()
    return _users(data)


def installation_lite(inst_id: int) -> dict[str, Any]:
    return {"id": inst_id, "node_id": render.node_id("Installation", inst_id)}


def installation(s: Store, inst: Installation) -> dict[str, Any]:
    data = render.installation(s, inst)
    data.pop("client_id", None)
    return _users(data)


def check_run(s: Store, r: Repo, c: CheckRun) -> dict[str, Any]:
    data = render_pulls.check_run(s, r, c)
    data["app"] = app(s, s.ci_apps[c.app_slug] if c.app_slug else None)
    branch = next((b for b, sha in _branches(r).items() if sha == c.head_sha), None)
    all_done = c.status == "completed"
    data["check_suite"] = {
        "id": c.suite_id,
        "node_id": render.node_id("CheckSuite", c.suite_id),
        "head_branch": branch,
        "head_sha": c.head_sha,
        "status": "completed" if all_done else c.status,
        "conclusion": c.conclusion if all_done else None,
        "url": f"{s.base_url}/repos/{r.full_name}/check-suites/{c.suite_id}",
        "before": None,
        "after": c.head_sha,
        "pull_requests": data["pull_requests"],
        "app": data["app"],
        "created_at": render.iso(c.started),
        "updated_at": render.iso(c.completed or c.started),
    }
    return _users(data)


def _branches(r: Repo) -> dict[str, str]:
    from . import gitrepo

    return gitrepo.branches(r.path)


def envelope(s: Store, r: Repo | None, sender: User, **fields: Any) -> dict[str, Any]:
    """A payload with the ``repository``/``organization``/``installation``/``sender`` keys."""
    payload = dict(fields)
    if r is not None:
        payload["repository"] = repository(s, r)
        if r.owner.type == "Organization":
            payload["organization"] = organization(s, r.owner)
        payload["installation"] = installation_lite(r.installation_id)
    payload["sender"] = user(s, sender)
    return payload


def organization(s: Store, u: User) -> dict[str, Any]:
    api = f"{s.base_url}/orgs/{u.login}"
    return {
        "login": u.login,
        "id": u.id,
        "node_id": render.node_id("Organization", u.id),
        "url": api,
        "repos_url": f"{api}/repos",
        "events_url": f"{api}/events",
        "hooks_url": f"{api}/hooks",
        "issues_url": f"{api}/issues",
        "members_url": f"{api}/members{{/member}}",
        "public_members_url": f"{api}/public_members{{/member}}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4",
        "description": None,
    }


def review_comment(s: Store, r: Repo, i: Issue, c: ReviewComment) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}/pulls/comments/{c.id}"
    html = f"{s.base_url}/{r.full_name}/pull/{i.number}#discussion_r{c.id}"
    pull_api = f"{s.base_url}/repos/{r.full_name}/pulls/{i.number}"
    return {
        "url": api,
        "pull_request_review_id": c.review_id,
        "id": c.id,
        "node_id": render.node_id("PullRequestReviewComment", c.id),
        "diff_hunk": f"@@ -{c.line},1 +{c.line},1 @@",
        "path": c.path,
        "position": 1,
        "original_position": 1,
        "commit_id": c.commit_id,
        "original_commit_id": c.commit_id,
        "user": user(s, c.user),
        "body": c.body,
        "created_at": render.iso(c.created),
        "updated_at": render.iso(c.created),
        "html_url": html,
        "pull_request_url": pull_api,
        "author_association": render.association(s, r, c.user),
        "_links": {
            "self": {"href": api},
            "html": {"href": html},
            "pull_request": {"href": pull_api},
        },
        "start_line": None,
        "original_start_line": None,
        "original_line": c.line,
        "line": c.line,
        "start_side": None,
        "side": "RIGHT",
        "subject_type": "line",
        "reactions": render.rollup(s, api, []),
    }


def label(s: Store, r: Repo, name: str) -> dict[str, Any]:
    return dict(_users(render.label(s, r, name)))
