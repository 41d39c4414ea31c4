"""Read-outs for tests: deliveries with their attempts, and a repository's whole state."""

from __future__ import annotations

from typing import Any

from . import gitrepo
from .state import Issue, Repo, Store, iso


def delivery(d: Any) -> dict[str, Any]:
    return {
        "guid": d.guid,
        "event": d.event,
        "action": d.action,
        "installation_id": d.installation_id,
        "repository_id": d.repository_id,
        "payload": d.payload,
        "headers": d.headers,
        "attempts": [
            {
                "id": a.id,
                "status_code": a.status_code,
                "duration": a.duration,
                "redelivery": a.redelivery,
                "delivered_at": iso(a.delivered),
            }
            for a in d.attempts
        ],
    }


def issue_state(s: Store, r: Repo, i: Issue) -> dict[str, Any]:
    data: dict[str, Any] = {
        "number": i.number,
        "title": i.title,
        "body": i.body,
        "state": i.state,
        "user": i.user.login,
        "labels": list(i.labels),
        "is_pull": i.pull is not None,
        "reactions": [{"content": x.content, "user": x.user.login} for x in i.reactions],
        "comments": [
            {
                "id": c.id,
                "body": c.body,
                "user": c.user.login,
                "user_type": c.user.type,
                "created_at": iso(c.created),
                "updated_at": iso(c.updated),
                "reactions": [{"content": x.content, "user": x.user.login} for x in c.reactions],
            }
            for c in (s.comments[cid] for cid in i.comment_ids)
        ],
    }
    if i.pull is not None:
        p = i.pull
        data["pull"] = {
            "head": p.head,
            "base": p.base,
            "head_sha": p.head_sha,
            "base_sha": p.base_sha,
            "draft": p.draft,
            "merged": p.merged,
            "merge_commit_sha": p.merge_commit_sha,
            "reviews": [
                {
                    "id": v.id,
                    "state": v.state,
                    "body": v.body,
                    "user": v.user.login,
                    "commit_id": v.commit_id,
                }
                for v in p.reviews
            ],
        }
    return data


def repo_state(s: Store, r: Repo) -> dict[str, Any]:
    with s.lock:
        issues = [issue_state(s, r, i) for (rid, _), i in sorted(s.issues.items()) if rid == r.id]
        checks = [
            {
                "id": c.id,
                "name": c.name,
                "head_sha": c.head_sha,
                "status": c.status,
                "conclusion": c.conclusion,
                "output": c.output,
                "actions": c.actions,
                "annotations": c.annotations,
                "updates": c.history,
                "details_url": c.details_url,
                "external_id": c.external_id,
            }
            for c in s.check_runs.values()
            if c.repo_id == r.id
        ]
    return {
        "full_name": r.full_name,
        "default_branch": r.default_branch,
        "git_dir": str(r.path),
        "branches": gitrepo.branches(r.path),
        "issues": [i for i in issues if not i["is_pull"]],
        "pulls": [i for i in issues if i["is_pull"]],
        "check_runs": checks,
        "labels": sorted(r.labels),
        "collaborators": dict(r.collaborators),
    }
