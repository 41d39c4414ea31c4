"""REST representations of the emulated objects, shaped like api.github.com's."""

from __future__ import annotations

import base64
from typing import Any

from .state import App, Comment, Installation, Issue, Reaction, Repo, Store, iso
from .state import User as UserT

REACTIONS = ["+1", "-1", "laugh", "confused", "heart", "hooray", "eyes", "rocket"]


def node_id(kind: str, id_: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{id_}".encode()).decode()


def user(s: Store, u: UserT) -> dict[str, Any]:
    api = f"{s.base_url}/users/{u.login}"
    return {
        "login": u.login,
        "id": u.id,
        "node_id": node_id("Bot" if u.type == "Bot" else u.type, u.id),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": f"{s.base_url}/{u.login.removesuffix('[bot]')}",
        "followers_url": f"{api}/followers",
        "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions",
        "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos",
        "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events",
        "type": u.type,
        "site_admin": False,
        "user_view_type": "public",
    }


def repo(s: Store, r: Repo, *, full: bool = True) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}"
    html = f"{s.base_url}/{r.full_name}"
    open_issues = sum(1 for (rid, _), i in s.issues.items() if rid == r.id and i.state == "open")
    data: dict[str, Any] = {
        "id": r.id,
        "node_id": node_id("Repository", r.id),
        "name": r.name,
        "full_name": r.full_name,
        "private": True,
        "owner": user(s, r.owner),
        "html_url": html,
        "description": None,
        "fork": False,
        "url": api,
        "forks_url": f"{api}/forks",
        "keys_url": f"{api}/keys{{/key_id}}",
        "collaborators_url": f"{api}/collaborators{{/collaborator}}",
        "teams_url": f"{api}/teams",
        "hooks_url": f"{api}/hooks",
        "issue_events_url": f"{api}/issues/events{{/number}}",
        "events_url": f"{api}/events",
        "assignees_url": f"{api}/assignees{{/user}}",
        "branches_url": f"{api}/branches{{/branch}}",
        "tags_url": f"{api}/tags",
        "blobs_url": f"{api}/git/blobs{{/sha}}",
        "git_tags_url": f"{api}/git/tags{{/sha}}",
        "git_refs_url": f"{api}/git/refs{{/sha}}",
        "trees_url": f"{api}/git/trees{{/sha}}",
        "statuses_url": f"{api}/statuses/{{sha}}",
        "languages_url": f"{api}/languages",
        "stargazers_url": f"{api}/stargazers",
        "contributors_url": f"{api}/contributors",
        "subscribers_url": f"{api}/subscribers",
        "subscription_url": f"{api}/subscription",
        "commits_url": f"{api}/commits{{/sha}}",
        "git_commits_url": f"{api}/git/commits{{/sha}}",
        "comments_url": f"{api}/comments{{/number}}",
        "issue_comment_url": f"{api}/issues/comments{{/number}}",
        "contents_url": f"{api}/contents/{{+path}}",
        "compare_url": f"{api}/compare/{{base}}...{{head}}",
        "merges_url": f"{api}/merges",
        "archive_url": f"{api}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{api}/downloads",
        "issues_url": f"{api}/issues{{/number}}",
        "pulls_url": f"{api}/pulls{{/number}}",
        "milestones_url": f"{api}/milestones{{/number}}",
        "notifications_url": f"{api}/notifications{{?since,all,participating}}",
        "labels_url": f"{api}/labels{{/name}}",
        "releases_url": f"{api}/releases{{/id}}",
        "deployments_url": f"{api}/deployments",
        "created_at": iso(r.created),
        "updated_at": iso(r.pushed),
        "pushed_at": iso(r.pushed),
        "git_url": f"git://{s.base_url.split('://', 1)[-1]}/{r.full_name}.git",
        "ssh_url": f"git@{s.base_url.split('://', 1)[-1].split(':')[0]}:{r.full_name}.git",
        "clone_url": f"{html}.git",
        "svn_url": html,
        "homepage": None,
        "size": 1,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": None,
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": False,
        "has_pages": False,
        "has_discussions": False,
        "forks_count": 0,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": open_issues,
        "license": None,
        "allow_forking": True,
        "is_template": False,
        "web_commit_signoff_required": False,
        "topics": [],
        "visibility": "private",
        "forks": 0,
        "open_issues": open_issues,
        "watchers": 0,
        "default_branch": r.default_branch,
    }
    if full:
        data.update(
            network_count=0,
            subscribers_count=0,
            allow_squash_merge=True,
            allow_merge_commit=True,
            allow_rebase_merge=True,
            allow_auto_merge=False,
            delete_branch_on_merge=False,
            allow_update_branch=False,
            use_squash_pr_title_as_default=False,
            squash_merge_commit_message="COMMIT_MESSAGES",
            squash_merge_commit_title="COMMIT_OR_PR_TITLE",
            merge_commit_message="PR_TITLE",
            merge_commit_title="MERGE_MESSAGE",
            custom_properties={},
            permissions={
                "admin": False,
                "maintain": False,
                "push": True,
                "triage": True,
                "pull": True,
            },
        )
    return data


def label(s: Store, r: Repo, name: str) -> dict[str, Any]:
    if name not in r.labels:
        r.labels[name] = s.ids.next("label")
    label_id = r.labels[name]
    return {
        "id": label_id,
        "node_id": node_id("Label", label_id),
        "url": f"{s.base_url}/repos/{r.full_name}/labels/{name}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
        "archived_at": None,
        "archived_by": None,
    }


def association(s: Store, r: Repo, u: UserT) -> str:
    if u.login.lower() == r.owner.login.lower():
        return "OWNER"
    if u.login.lower() in r.collaborators:
        return "COLLABORATOR"
    return "NONE"


def rollup(s: Store, url: str, reactions: list[Reaction]) -> dict[str, Any]:
    counts: dict[str, Any] = {k: 0 for k in REACTIONS}
    for reaction in reactions:
        counts[reaction.content] += 1
    return {"url": f"{url}/reactions", "total_count": len(reactions), **counts}


def issue(s: Store, r: Repo, i: Issue) -> dict[str, Any]:
    api = f"{s.base_url}/repos/{r.full_name}/issues/{i.number}"
    kind = "pull" if i.pull else "issues"
    data: dict[str, Any] = {
        "url": api,
        "repository_url": f"{s.base_url}/repos/{r.full_name}",
        "labels_url": f"{api}/labels{{/name}}",
        "comments_url": f"{api}/comments",
        "events_url": f"{api}/events",
        "html_url": f"{s.base_url}/{r.full_name}/{kind}/{i.number}",
        "id": i.id,
        "node_id": node_id("PullRequest" if i.pull else "Issue", i.id),
        "number": i.number,
        "title": i.title,
        "user": user(s, i.user),
        "labels": [label(s, r, name) for name in i.labels],
        "state": i.state,
        "locked": False,
        "assignee": user(s, i.assignees[0]) if i.assignees else None,
        "assignees": [user(s, u) for u in i.assignees],
        "milestone": None,
        "comments": len(i.comment_ids),
        "created_at": iso(i.created),
        "updated_at": iso(i.updated),
        "closed_at": iso(i.closed) if i.closed else None,
        "author_association": association(s, r, i.user),
        "active_lock_reason": None,
        "body": i.body,
        "reactions": rollup(s, api, i.reactions),
        "timeline_url": f"{api}/timeline",
        "performed_via_github_app": None,
        "state_reason": i.state_reason,
    }
    if i.pull:
        pulls = f"{s.base_url}/repos/{r.full_name}/pulls/{i.number}"
        html = data["html_url"]
        data["draft"] = i.pull.draft
        data["pull_request"] = {
            "url": pulls,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "merged_at": iso(i.pull.merged_at) if i.pull.merged_at else None,
        }
    return data


def comment(s: Store, r: Repo, c: Comment) -> dict[str, Any]:
    i = s.issues[(r.id, c.number)]
    kind = "pull" if i.pull else "issues"
    url = f"{s.base_url}/repos/{r.full_name}/issues/comments/{c.id}"
    return {
        "url": url,
        "html_url": f"{s.base_url}/{r.full_name}/{kind}/{c.number}#issuecomment-{c.id}",
        "issue_url": f"{s.base_url}/repos/{r.full_name}/issues/{c.number}",
        "id": c.id,
        "node_id": node_id("IssueComment", c.id),
        "user": user(s, c.user),
        "created_at": iso(c.created),
        "updated_at": iso(c.updated),
        "author_association": association(s, r, c.user),
        "body": c.body,
        "reactions": rollup(s, url, c.reactions),
        "performed_via_github_app": app(s, s.app) if c.via_app and s.app else None,
    }


def reaction(s: Store, x: Reaction) -> dict[str, Any]:
    return {
        "id": x.id,
        "node_id": node_id("Reaction", x.id),
        "user": user(s, x.user),
        "content": x.content,
        "created_at": iso(x.created),
    }


def app(s: Store, a: App) -> dict[str, Any]:
    return {
        "id": a.id,
        "slug": a.slug,
        "node_id": node_id("App", a.id),
        "client_id": f"Iv1.{a.id:016x}",
        "owner": user(s, a.owner),
        "name": a.name,
        "description": "An app emulated for tests.",
        "external_url": f"{s.base_url}/apps/{a.slug}",
        "html_url": f"{s.base_url}/apps/{a.slug}",
        "created_at": iso(a.created),
        "updated_at": iso(a.created),
        "permissions": dict(a.permissions),
        "events": list(a.events),
        "installations_count": len(s.installations),
    }


def installation(s: Store, inst: Installation) -> dict[str, Any]:
    a = s.app
    assert a is not None
    return {
        "id": inst.id,
        "client_id": f"Iv1.{a.id:016x}",
        "account": user(s, inst.account),
        "repository_selection": "selected",
        "access_tokens_url": f"{s.base_url}/app/installations/{inst.id}/access_tokens",
        "repositories_url": f"{s.base_url}/installation/repositories",
        "html_url": f"{s.base_url}/settings/installations/{inst.id}",
        "app_id": a.id,
        "app_slug": a.slug,
        "target_id": inst.account.id,
        "target_type": inst.account.type,
        "permissions": dict(a.permissions),
        "events": list(a.events),
        "created_at": iso(inst.created),
        "updated_at": iso(inst.created),
        "single_file_name": None,
        "has_multiple_single_files": False,
        "single_file_paths": [],
        "suspended_by": None,
        "suspended_at": None,
    }
