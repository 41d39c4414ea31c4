"""REST representations of pull requests, reviews and check runs."""

from __future__ import annotations

from typing import Any

from . import gitrepo
from .render import app, association, label, node_id, repo, user
from .state import CheckRun, Issue, Repo, Review, Store, iso


def mergeability(s: Store, r: Repo, i: Issue) -> tuple[bool | None, str]:
    p = i.pull
    assert p is not None
    if p.merged or i.state == "closed":
        return None, "unknown"
    tree, _ = gitrepo.merge_tree(r.path, p.base_sha, p.head_sha)
    if tree is None:
        return False, "dirty"
    return True, "draft" if p.draft else "clean"


def _ref_side(s: Store, r: Repo, branch: str, sha: str) -> dict[str, Any]:
    return {
        "label": f"{r.owner.login}:{branch}",
        "ref": branch,
        "sha": sha,
        "user": user(s, r.owner),
        "repo": repo(s, r, full=False),
    }


def pull(s: Store, r: Repo, i: Issue, *, simple: bool = False) -> dict[str, Any]:
    p = i.pull
    assert p is not None
    api = f"{s.base_url}/repos/{r.full_name}/pulls/{i.number}"
    issue_api = f"{s.base_url}/repos/{r.full_name}/issues/{i.number}"
    html = f"{s.base_url}/{r.full_name}/pull/{i.number}"
    statuses = f"{s.base_url}/repos/{r.full_name}/statuses/{p.head_sha}"
    data: dict[str, Any] = {
        "url": api,
        "id": p.id,
        "node_id": node_id("PullRequest", p.id),
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "issue_url": issue_api,
        "number": i.number,
        "state": i.state,
        "locked": False,
        "title": i.title,
        "user": user(s, i.user),
        "body": i.body,
        "created_at": iso(i.created),
        "updated_at": iso(i.updated),
        "closed_at": iso(i.closed) if i.closed else None,
        "merged_at": iso(p.merged_at) if p.merged_at else None,
        "merge_commit_sha": p.merge_commit_sha,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "labels": [label(s, r, name) for name in i.labels],
        "milestone": None,
        "draft": p.draft,
        "commits_url": f"{api}/commits",
        "review_comments_url": f"{api}/comments",
        "review_comment_url": f"{s.base_url}/repos/{r.full_name}/pulls/comments{{/number}}",
        "comments_url": f"{issue_api}/comments",
        "statuses_url": statuses,
        "head": _ref_side(s, r, p.head, p.head_sha),
        "base": _ref_side(s, r, p.base, p.base_sha),
        "_links": {
            "self": {"href": api},
            "html": {"href": html},
            "issue": {"href": issue_api},
            "comments": {"href": f"{issue_api}/comments"},
            "review_comments": {"href": f"{api}/comments"},
            "review_comment": {
                "href": f"{s.base_url}/repos/{r.full_name}/pulls/comments{{/number}}"
            },
            "commits": {"href": f"{api}/commits"},
            "statuses": {"href": statuses},
        },
        "author_association": association(s, r, i.user),
        "auto_merge": None,
        "active_lock_reason": None,
    }
    if simple:
        return data
    commits, additions, deletions, files = gitrepo.diff_stats(r.path, p.base_sha, p.head_sha)
    mergeable, state = mergeability(s, r, i)
    data.update(
        merged=p.merged,
        mergeable=mergeable,
        rebaseable=mergeable,
        mergeable_state=state,
        merged_by=user(s, p.merged_by) if p.merged_by else None,
        comments=len(i.comment_ids),
        review_comments=len(p.review_comments),
        maintainer_can_modify=p.maintainer_can_modify,
        commits=commits,
        additions=additions,
        deletions=deletions,
        changed_files=files,
    )
    return data


def review(s: Store, r: Repo, i: Issue, v: Review) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}/pulls/{i.number}"
    html = f"{s.base_url}/{r.full_name}/pull/{i.number}#pullrequestreview-{v.id}"
    return {
        "id": v.id,
        "node_id": node_id("PullRequestReview", v.id),
        "user": user(s, v.user),
        "body": v.body,
        "state": v.state,
        "html_url": html,
        "pull_request_url": api,
        "_links": {"html": {"href": html}, "pull_request": {"href": api}},
        "submitted_at": iso(v.submitted),
        "commit_id": v.commit_id,
        "author_association": association(s, r, v.user),
    }


def _check_app(s: Store, c: CheckRun) -> dict[str, Any] | None:
    """The App a check run belongs to: a CI App by slug, else the emulated App."""
    owner = s.ci_apps.get(c.app_slug) if c.app_slug else s.app
    return app(s, owner) if owner else None


def check_run(s: Store, r: Repo, c: CheckRun) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}/check-runs/{c.id}"
    html = f"{s.base_url}/{r.full_name}/runs/{c.id}"
    output = c.output
    prs = []
    for i in s.pulls(r):
        assert i.pull is not None
        if i.state == "open" and i.pull.head_sha == c.head_sha:
            prs.append(
                {
                    "url": f"{s.base_url}/repos/{r.full_name}/pulls/{i.number}",
                    "id": i.pull.id,
                    "number": i.number,
                    "head": {"ref": i.pull.head, "sha": i.pull.head_sha, "repo": _mini(s, r)},
                    "base": {"ref": i.pull.base, "sha": i.pull.base_sha, "repo": _mini(s, r)},
                }
            )
    return {
        "id": c.id,
        "name": c.name,
        "node_id": node_id("CheckRun", c.id),
        "head_sha": c.head_sha,
        "external_id": c.external_id or "",
        "url": api,
        "html_url": html,
        "details_url": c.details_url or html,
        "status": c.status,
        "conclusion": c.conclusion,
        "started_at": iso(c.started),
        "completed_at": iso(c.completed) if c.completed else None,
        "output": {
            "title": output.get("title"),
            "summary": output.get("summary"),
            "text": output.get("text"),
            "annotations_count": len(c.annotations),
            "annotations_url": f"{api}/annotations",
        },
        "check_suite": {"id": c.suite_id},
        "app": _check_app(s, c),
        "pull_requests": prs,
    }


def _mini(s: Store, r: Repo) -> dict[str, Any]:
    return {"id": r.id, "url": f"{s.base_url}/repos/{r.full_name}", "name": r.name}
