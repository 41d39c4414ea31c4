"""State changes on code: repositories, pushes, pull requests, merges and reviews."""

from __future__ import annotations

import time
from typing import Any

from . import gitrepo
from . import payloads as wh
from .actions_issues import body_too_long
from .context import Context
from .http import HttpError, validation_failed
from .state import Installation, Issue, Pull, Repo, Review, ReviewComment, User


def create_repo(
    ctx: Context, owner: str, name: str, source: str, default_branch: str, owner_type: str = "User"
) -> Repo:
    s = ctx.store
    sender = s.user(owner, owner_type)
    if s.repo(owner, name) is not None:
        raise validation_failed(
            "Repository", "name", "already_exists", "name already exists on this account"
        )
    path = s.data_dir / "repos" / owner / f"{name}.git"
    gitrepo.create_from(source, path)
    if gitrepo.resolve(path, f"refs/heads/{default_branch}") is None:
        raise HttpError(422, f"source has no branch {default_branch!r}")
    gitrepo.git(path, "symbolic-ref", "HEAD", f"refs/heads/{default_branch}")
    with s.lock:
        inst = next((x for x in s.installations.values() if x.account.id == sender.id), None)
        repo = Repo(s.ids.next("repo"), sender, name, default_branch, path, 0)
        s.repos[repo.id] = repo
        created = inst is None
        if inst is None:
            inst = Installation(s.ids.next("installation"), sender, [])
            s.installations[inst.id] = inst
        inst.repo_ids.append(repo.id)
        repo.installation_id = inst.id
    mini = {
        "id": repo.id,
        "node_id": wh.render.node_id("Repository", repo.id),
        "name": name,
        "full_name": repo.full_name,
        "private": True,
    }
    if created:
        payload = {
            "action": "created",
            "installation": wh.installation(s, inst),
            "repositories": [mini],
            "sender": wh.user(s, sender),
        }
        ctx.hooks.emit("installation", payload)
    else:
        payload = {
            "action": "added",
            "installation": wh.installation(s, inst),
            "repository_selection": "selected",
            "repositories_added": [mini],
            "repositories_removed": [],
            "requester": None,
            "sender": wh.user(s, sender),
        }
        ctx.hooks.emit("installation_repositories", payload)
    return repo


def refs_changed(ctx: Context, r: Repo, before: dict[str, str], pusher: User) -> None:
    """Announce what a push changed: ``push``, and ``pull_request.synchronize`` for open PRs."""
    s = ctx.store
    after = gitrepo.branches(r.path)
    for branch in sorted(set(before) | set(after)):
        old, new = before.get(branch, gitrepo.ZERO), after.get(branch, gitrepo.ZERO)
        if old == new:
            continue
        r.pushed = time.time()
        ctx.hooks.emit("push", _push_payload(ctx, r, branch, old, new, pusher))
        for i in s.pulls(r):
            p = i.pull
            assert p is not None
            if p.base == branch and new != gitrepo.ZERO and not p.merged:
                p.base_sha = new
            if p.head == branch and i.state == "open" and new != gitrepo.ZERO:
                previous, p.head_sha = p.head_sha, new
                i.updated = time.time()
                payload = wh.envelope(
                    s,
                    r,
                    pusher,
                    action="synchronize",
                    number=i.number,
                    before=previous,
                    after=new,
                    pull_request=wh.pull(s, r, i),
                )
                ctx.hooks.emit("pull_request", payload)


def _push_payload(
    ctx: Context, r: Repo, branch: str, old: str, new: str, pusher: User
) -> dict[str, Any]:
    s = ctx.store
    commits: list[dict[str, Any]] = []
    if new != gitrepo.ZERO:
        span = new if old == gitrepo.ZERO else f"{old}..{new}"
        shas = gitrepo.out(r.path, "rev-list", "--reverse", "--max-count=20", span).split()
        commits = [_commit(ctx, r, sha) for sha in shas]
    forced = (
        old != gitrepo.ZERO and new != gitrepo.ZERO and not gitrepo.is_ancestor(r.path, old, new)
    )
    return wh.envelope(
        s,
        r,
        pusher,
        ref=f"refs/heads/{branch}",
        before=old,
        after=new,
        created=old == gitrepo.ZERO,
        deleted=new == gitrepo.ZERO,
        forced=forced,
        base_ref=None,
        compare=f"{s.base_url}/{r.full_name}/compare/{old[:12]}...{new[:12]}",
        commits=commits,
        head_commit=commits[-1] if commits else None,
        pusher={"name": pusher.login, "email": f"{pusher.id}+{pusher.login}@users.noreply"},
    )


def _commit(ctx: Context, r: Repo, sha: str) -> dict[str, Any]:
    info = gitrepo.commit_info(r.path, sha)
    parent = gitrepo.out(r.path, "rev-list", "--parents", "-n", "1", sha).split()[1:2]
    changes = gitrepo.changed_paths(r.path, parent[0] if parent else gitrepo.EMPTY_TREE, sha)
    return {
        "id": sha,
        "tree_id": info["tree"],
        "distinct": True,
        "message": info["message"].strip(),
        "timestamp": info["committer_date"],
        "url": f"{ctx.store.base_url}/{r.full_name}/commit/{sha}",
        "author": {"name": info["author_name"], "email": info["author_email"]},
        "committer": {"name": info["committer_name"], "email": info["committer_email"]},
        **changes,
    }


def push_files(
    ctx: Context, r: Repo, branch: str, files: dict[str, str | None], user: User, message: str
) -> str:
    before = gitrepo.branches(r.path)
    parent = before.get(branch) or before.get(r.default_branch)
    email = f"{user.id}+{user.login}@users.noreply.github.com"
    sha = gitrepo.commit_files(r.path, parent, files, message, user.login, email)
    gitrepo.update_ref(r.path, branch, sha)
    refs_changed(ctx, r, before, user)
    return sha


def open_pull(
    ctx: Context,
    r: Repo,
    title: str,
    body: str | None,
    head: str,
    base: str,
    user: User,
    draft: bool = False,
) -> Issue:
    s = ctx.store
    head = head.split(":", 1)[-1]
    branches = gitrepo.branches(r.path)
    for field_name, branch in (("head", head), ("base", base)):
        if branch not in branches:
            raise validation_failed("PullRequest", field_name, "invalid", field_name)
    if branches[head] == branches[base] or gitrepo.is_ancestor(
        r.path, branches[head], branches[base]
    ):
        raise HttpError(
            422,
            "Validation Failed",
            errors=[
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"No commits between {base} and {head}",
                }
            ],
        )
    for i in s.pulls(r):
        assert i.pull is not None
        if i.state == "open" and i.pull.head == head and i.pull.base == base:
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {r.owner.login}:{head}.",
                    }
                ],
            )
    if not title:
        raise validation_failed("PullRequest", "title", "missing_field", "title is missing")
    with s.lock:
        number = r.next_number
        r.next_number += 1
        pull = Pull(s.ids.next("pull"), head, base, branches[head], branches[base], draft=draft)
        issue = Issue(s.ids.next("issue"), r.id, number, title, body, user, pull=pull)
        s.issues[(r.id, number)] = issue
    payload = wh.envelope(
        s, r, user, action="opened", number=number, pull_request=wh.pull(s, r, issue)
    )
    ctx.hooks.emit("pull_request", payload)
    return issue


def merge_pull(
    ctx: Context,
    r: Repo,
    i: Issue,
    user: User,
    method: str,
    sha: str | None,
    title: str | None,
    message: str | None,
) -> str:
    p = i.pull
    assert p is not None
    if p.merged or i.state != "open":
        raise HttpError(405, "Pull Request is not mergeable")
    if sha and sha != p.head_sha:
        raise HttpError(409, "Head branch was modified. Review and try the merge again.")
    if method not in {"merge", "squash", "rebase"}:
        raise validation_failed(
            "PullRequest", "merge_method", "invalid", "merge_method must be merge, squash or rebase"
        )
    before = gitrepo.branches(r.path)
    base_sha = before[p.base]
    tree, _conflicts = gitrepo.merge_tree(r.path, base_sha, p.head_sha)
    if tree is None:
        raise HttpError(405, "Pull Request is not mergeable")
    email = f"{user.id}+{user.login}@users.noreply.github.com"
    if method == "merge":
        subject = title or f"Merge pull request #{i.number} from {r.owner.login}/{p.head}"
        text = f"{subject}\n\n{message if message is not None else i.title}"
        parents = [base_sha, p.head_sha]
    else:
        subject = title or f"{i.title} (#{i.number})"
        text = f"{subject}\n\n{message}" if message else subject
        parents = [base_sha]
    merged = gitrepo.commit_tree(r.path, tree, parents, text, user.login, email)
    gitrepo.update_ref(r.path, p.base, merged, base_sha)
    p.merged, p.merged_at, p.merged_by, p.merge_commit_sha = True, time.time(), user, merged
    i.state, i.closed, i.updated = "closed", time.time(), time.time()
    refs_changed(ctx, r, before, user)
    s = ctx.store
    payload = wh.envelope(
        s, r, user, action="closed", number=i.number, pull_request=wh.pull(s, r, i)
    )
    ctx.hooks.emit("pull_request", payload)
    return merged


def submit_review(
    ctx: Context,
    r: Repo,
    i: Issue,
    state: str,
    body: str,
    user: User,
    comments: list[dict[str, Any]] | None = None,
) -> Review:
    p = i.pull
    assert p is not None
    if state not in {"APPROVED", "CHANGES_REQUESTED", "COMMENTED"}:
        raise validation_failed("PullRequestReview", "state", "invalid", state)
    body_too_long(
        "PullRequestReview",
        body,
        "https://docs.github.com/rest/pulls/reviews#create-a-review-for-a-pull-request",
    )
    s = ctx.store
    review = Review(s.ids.next("review"), user, state, body, p.head_sha)
    p.reviews.append(review)
    for item in comments or []:  # line comments submitted with the review, as GitHub's API does
        comment = ReviewComment(
            s.ids.next("review_comment"),
            review.id,
            user,
            str(item.get("body", "")),
            str(item.get("path", "README.md")),
            int(item.get("line", 1)),
            p.head_sha,
        )
        p.review_comments.append(comment)
    payload = wh.envelope(
        s,
        r,
        user,
        action="submitted",
        review=wh.review(s, r, i, review),
        pull_request=wh.simple_pull(s, r, i),
    )
    ctx.hooks.emit("pull_request_review", payload)
    return review


def review_comment(
    ctx: Context, r: Repo, i: Issue, body: str, path: str, line: int, user: User
) -> ReviewComment:
    p = i.pull
    assert p is not None
    s = ctx.store
    review = submit_review(ctx, r, i, "COMMENTED", "", user)
    comment = ReviewComment(
        s.ids.next("review_comment"), review.id, user, body, path, line, p.head_sha
    )
    p.review_comments.append(comment)
    payload = wh.envelope(
        s,
        r,
        user,
        action="created",
        comment=wh.review_comment(s, r, i, comment),
        pull_request=wh.simple_pull(s, r, i),
    )
    ctx.hooks.emit("pull_request_review_comment", payload)
    return comment
