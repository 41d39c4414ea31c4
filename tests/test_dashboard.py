"""The dashboard over HTTP (issue 15), on SQLite and the test Redis: signing in (the one-time
admin link works once; pages need a session), security headers on every page, CSRF refusals
that change nothing, each page and tab rendering seeded runs, lazy per-file diffs, the run
bundle; and the pure parts (ANSI colours, diff splitting, side-by-side rows, allowed actions)."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.db.models import BoardPosition, ControlCommand, Repository, Task
from bot.services import Services
from bot.settings import Settings
from bot.web.app import create_app
from bot.web.dashboard.access import allowed_actions
from bot.web.dashboard.ansi import ansi_html
from bot.web.dashboard.diffs import rows_of, side_by_side, split_files
from bot.web.dashboard.login import issue_admin_link
from bot.web.dashboard.security import Viewer, session_config
from tests.dashboard_seed import Seeded, make_diff, seed
from tests.test_localrepo import git

CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')
FORM_ERROR = re.compile(
    r'<div class="flash flash-error" role="alert" id="form-error"[^>]*>(.*?)</div>', re.S
)


@dataclass
class Dash:
    client: AsyncTestClient[Any]
    settings: Settings
    services: Services
    seeded: Seeded

    async def sign_in(self, client: AsyncTestClient[Any] | None = None) -> str:
        """Sign ``client`` in as the admin through a one-time link; its CSRF token."""
        client = client or self.client
        link = await issue_admin_link(self.settings, self.services.redis)
        path = link.split("127.0.0.1:8000", 1)[1]
        page = await client.get(path)
        token = CSRF.search(page.text)
        assert token, page.text
        once = path.split("token=", 1)[1]
        answer = await client.post(
            "/login/once",
            data={"_csrf": token.group(1), "token": _unquote(once)},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        home = await client.get("/")
        found = CSRF.search(home.text)
        assert home.status_code == 200 and found
        return found.group(1)

    def sign_in_as_github_user(self, login: str) -> str:
        """A session for the GitHub user ``login`` (made as the OAuth callback makes one); its
        CSRF token."""
        config = session_config(self.settings)
        backend = config._backend_class(config=config)
        token = f"csrf-of-{login}-" + "x" * 20
        data = {"login": login, "kind": "github", "csrf": token, "until": 2**40}
        for cookie in backend._create_session_cookies(backend.dump_data(data)):
            self.client.cookies.set(cookie.key, str(cookie.value))
        return token

    async def rows(self) -> tuple[list[str], list[tuple[str, int | None, str]]]:
        """The local repositories and every task (repository, number, title)."""
        async with self.services.sessions() as session:
            repos = list(
                (
                    await session.execute(
                        select(Repository.full_name).where(Repository.local_path.is_not(None))
                    )
                ).scalars()
            )
            tasks = [
                (repo, number, title)
                for repo, number, title in (
                    await session.execute(
                        select(Repository.full_name, Task.issue_number, Task.title).join(
                            Repository, Repository.id == Task.repository_id
                        )
                    )
                ).all()
            ]
        return sorted(repos), sorted(tasks, key=lambda t: (t[0], t[1] or 0))

    async def commands(self) -> int:
        async with self.services.sessions() as session:
            return int((await session.execute(select(func.count(ControlCommand.id)))).scalar_one())


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


@pytest.fixture
async def dash(settings: Settings) -> AsyncIterator[Dash]:
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    files = {"README.md": 3, "src/feature.py": 2, "notes.txt": 1, "big.txt": 4000}
    seeded = await seed(services.sessions, settings, diff_files=files)
    app = create_app(settings)  # its own clients: the test client serves it from another loop
    try:
        async with AsyncTestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield Dash(client, settings, services, seeded)
    finally:
        await services.close()


async def test_pages_need_a_session_and_the_admin_link_works_once(dash: Dash) -> None:
    answer = await dash.client.get("/", follow_redirects=False)
    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"].startswith("/login?next=/")
    login = await dash.client.get("/login")
    assert login.status_code == 200 and "Sign in" in login.text
    link = await issue_admin_link(dash.settings, dash.services.redis)
    path = link.split("127.0.0.1:8000", 1)[1]
    token = _unquote(path.split("token=", 1)[1])
    page = await dash.client.get(path)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    first = await dash.client.post(
        "/login/once", data={"_csrf": csrf.group(1), "token": token}, follow_redirects=False
    )
    assert first.status_code == 303, first.text
    assert (await dash.client.get("/")).status_code == 200
    # The same link again, from another browser: refused.
    dash.client.cookies.clear()
    page = await dash.client.get(path)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    again = await dash.client.post(
        "/login/once", data={"_csrf": csrf.group(1), "token": token}, follow_redirects=False
    )
    assert again.status_code == 403
    assert (await dash.client.get("/", follow_redirects=False)).status_code in (302, 303, 307)


async def test_every_page_renders_with_secure_headers(dash: Dash) -> None:
    await dash.sign_in()
    run = dash.seeded.review_run
    paths = [
        "/",
        "/fleet/body",
        "/board",
        "/repositories",
        f"/runs/{run}",
        f"/runs/{run}?tab=diff",
        f"/runs/{run}?tab=diff&view=split",
        f"/runs/{run}?tab=gates",
        f"/runs/{run}?tab=summary",
        f"/runs/{run}?tab=events",
        f"/runs/{dash.seeded.running_run}",
        "/login",
    ]
    for path in paths:
        answer = await dash.client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in answer.text and " on" + "click=" not in answer.text
    fleet = (await dash.client.get("/")).text
    assert "Needs you" in fleet and "Task number 1" in fleet and "review" in fleet
    log = (await dash.client.get(f"/runs/{dash.seeded.running_run}")).text
    assert '<span class="ansi-fg-green">line 5</span>' in log
    summary = (await dash.client.get(f"/runs/{run}?tab=summary")).text
    assert "<h1>Done</h1>" in summary and "<em>Changed</em>" in summary
    assert "/static/vendor/htmx.min.js" in fleet
    assert (await dash.client.get("/static/vendor/htmx.min.js")).status_code == 200


async def test_the_diff_lists_files_and_loads_each_on_demand(dash: Dash) -> None:
    await dash.sign_in()
    run = dash.seeded.review_run
    page = (await dash.client.get(f"/runs/{run}?tab=diff")).text
    for path in ("README.md", "src/feature.py", "notes.txt"):
        assert f'value="{path}"' in page  # a checkbox per file
    assert "line 0 of README.md" not in page  # bodies are not in the page
    part = await dash.client.get(f"/runs/{run}/diff/file", params={"file": "src/feature.py"})
    assert part.status_code == 200
    assert "line 1 of src/feature.py" in part.text and "README.md" not in part.text
    split = await dash.client.get(
        f"/runs/{run}/diff/file", params={"file": "README.md", "view": "split"}
    )
    assert 'class="diff split"' in split.text
    big = await dash.client.get(f"/runs/{run}/diff/file", params={"file": "big.txt"})
    # 1,500 rows at a time: the mode line and the hunk header, then lines 0-1497
    assert "line 1497 of big.txt" in big.text and "line 1498 of big.txt" not in big.text
    assert "Show the next 1500 of 2502 more lines" in big.text
    rest = await dash.client.get(
        f"/runs/{run}/diff/file", params={"file": "big.txt", "start": 3000}
    )
    assert "line 3999 of big.txt" in rest.text and "Show the next" not in rest.text
    missing = await dash.client.get(f"/runs/{run}/diff/file", params={"file": "nope"})
    assert missing.status_code == 404


async def test_forged_posts_are_refused_and_change_nothing(dash: Dash) -> None:
    token = await dash.sign_in()
    run = dash.seeded.review_run
    before = await dash.commands()
    action = f"/runs/{run}/actions/approve"
    no_token = await dash.client.post(action, data={"sha": "a" * 40}, follow_redirects=False)
    assert no_token.status_code == 403
    wrong = await dash.client.post(
        action, data={"_csrf": "x" + token[1:], "sha": "a" * 40}, follow_redirects=False
    )
    assert wrong.status_code == 403
    # Another user's token with this session, and this token with another session: refused.
    mine = dict(dash.client.cookies)
    dash.client.cookies.clear()
    other_token = await dash.sign_in()
    theirs = dict(dash.client.cookies)
    assert other_token != token
    took = await dash.client.post(action, data={"_csrf": token}, follow_redirects=False)
    assert took.status_code == 403
    dash.client.cookies.clear()
    dash.client.cookies.update(mine)
    mixed = await dash.client.post(
        action, data={"_csrf": other_token, "sha": "a" * 40}, follow_redirects=False
    )
    assert mixed.status_code == 403
    assert theirs != mine
    cross = await dash.client.post(
        action,
        data={"_csrf": token, "sha": "a" * 40},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403
    order = await dash.client.post("/board/order", json={"tasks": dash.seeded.tasks[::-1]})
    assert order.status_code == 403
    assert await dash.commands() == before
    async with dash.services.sessions() as session:
        assert (await session.execute(select(BoardPosition))).first() is None


async def test_board_order_persists(dash: Dash) -> None:
    token = await dash.sign_in()
    order = list(reversed(dash.seeded.tasks))
    saved = await dash.client.post(
        "/board/order", json={"tasks": order}, headers={"X-CSRF-Token": token}
    )
    assert saved.status_code == 201, saved.text
    async with dash.services.sessions() as session:
        rows = {
            p.task_id: p.position for p in (await session.execute(select(BoardPosition))).scalars()
        }
    assert [t for t, _ in sorted(rows.items(), key=lambda kv: kv[1])] == order


async def test_the_run_bundle_holds_events_and_artifacts(dash: Dash) -> None:
    await dash.sign_in()
    run = dash.seeded.review_run
    answer = await dash.client.get(f"/runs/{run}/bundle")
    assert answer.status_code == 200
    assert "attachment" in answer.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as archive:
        names = {m.name.split("/", 1)[1] for m in archive.getmembers()}
        events = archive.extractfile(f"bosun-run-{run}/events.jsonl")
        assert events is not None and b'"kind": "log"' in events.read()
    assert {"run.json", "events.jsonl", "diff.patch", "summary.md", "transcript.txt"} <= names


def test_ansi_colours_become_classes_and_text_is_escaped() -> None:
    html = str(ansi_html("\x1b[1;31mbad <b>\x1b[0m ok \x1b]0;title\x07\x1b[2K"))
    assert html == '<span class="ansi-bold ansi-fg-red">bad &lt;b&gt;</span> ok '


def test_a_diff_splits_into_files_with_rows_and_side_by_side_pairs() -> None:
    text, _ = make_diff({"a.txt": 2, "dir/b.py": 1})
    text += (
        "diff --git a/c.md b/c.md\nindex 1..2 100644\n--- a/c.md\n+++ b/c.md\n"
        "@@ -1,3 +1,3 @@\n keep\n-old\n+new\n keep2\n"
    )
    files = split_files(text)
    assert [f.path for f in files] == ["a.txt", "dir/b.py", "c.md"]
    rows = rows_of(text[files[2].start : files[2].end]).rows
    assert [(r.kind, r.old, r.new) for r in rows] == [
        ("hunk", None, None),
        ("context", 1, 1),
        ("del", 2, None),
        ("add", None, 2),
        ("context", 3, 3),
    ]
    pairs = side_by_side(rows)
    changed = [p for p in pairs if p.left and p.right and p.left.kind == "del"]
    assert len(changed) == 1 and changed[0].right is not None and changed[0].right.text == "new"


def test_actions_are_disabled_with_the_reason() -> None:
    reader = Viewer("mallory", "github", "t")
    actions = allowed_actions(
        state="review_ready", on_hold=False, requester="alice", viewer=reader, permission="read"
    )
    assert not actions["approve"].enabled and "write permission" in actions["approve"].reason
    assert not actions["cancel"].enabled and "queued or working" in actions["cancel"].reason
    writer = Viewer("bob", "github", "t")
    actions = allowed_actions(
        state="review_ready", on_hold=False, requester="alice", viewer=writer, permission="write"
    )
    assert actions["approve"].enabled and actions["reject"].enabled and actions["retry"].enabled
    mine = allowed_actions(
        state="running", on_hold=False, requester="alice", viewer=Viewer("alice", "github", "t"),
        permission="read",
    )  # fmt: skip
    assert mine["cancel"].enabled and not mine["hold"].enabled
    assert mine["steer"].enabled and not actions["steer"].enabled
    assert "retry with feedback instead" in actions["steer"].reason
    stranger = allowed_actions(
        state="running", on_hold=False, requester="alice", viewer=reader, permission="read"
    )
    assert not stranger["steer"].enabled and "requester" in stranger["steer"].reason


def user_repo(parent: Path, name: str = "project") -> Path:
    """A user's git repository on ``main`` with one commit."""
    path = parent / name
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Project\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "start")
    return path


def form_error(html: str) -> str:
    """The text of the form's error box (the one announced with role=alert)."""
    found = FORM_ERROR.search(html)
    assert found, html[:3000]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


async def test_the_admin_adds_a_local_repository_and_a_task(dash: Dash, tmp_path: Path) -> None:
    token = await dash.sign_in()
    listing = (await dash.client.get("/repositories")).text
    assert 'href="/repositories/add"' in listing
    form = await dash.client.get("/repositories/add")
    assert form.status_code == 200 and '<label for="f-path">' in form.text
    project = user_repo(tmp_path)
    added = await dash.client.post(
        "/repositories/add",
        data={"_csrf": token, "path": str(project), "name": "", "default_branch": ""},
        follow_redirects=False,
    )
    assert added.status_code == 303, added.text
    assert added.headers["location"] == "/board/tasks/add?repository=local/project"
    assert await dash.rows() == (["local/project"], await _seeded_tasks(dash))
    task_form = await dash.client.get(added.headers["location"])
    assert "Added local/project" in task_form.text
    assert "<option selected>local/project</option>" in task_form.text

    created = await dash.client.post(
        "/board/tasks/add",
        data={
            "_csrf": token,
            "repository": "local/project",
            "title": "Add a health route",
            "body": "Return 200.",
            "acceptance": "- [ ] GET /health answers 200\n\nthe version is in the body\n",
            "labels": "api, small",
            "priority": "5",
            "focus": "src/**\ndocs/api.md",
            "profile": "demo",
        },
        follow_redirects=False,
    )
    assert created.status_code == 303 and created.headers["location"] == "/board", created.text
    async with dash.services.sessions() as session:
        (task,) = (
            await session.execute(
                select(Task).join(Repository).where(Repository.full_name == "local/project")
            )
        ).scalars()
    assert (task.issue_number, task.title, task.body) == (1, "Add a health route", "Return 200.")
    assert task.acceptance == ["GET /health answers 200", "the version is in the body"]
    assert (task.labels, task.priority, task.focus) == (
        ["api", "small"],
        5,
        ["src/**", "docs/api.md"],
    )
    assert (task.profile, task.author, task.state) == ("demo", "admin", "open")
    board = (await dash.client.get("/board")).text
    assert "Added task local/project#1" in board
    card = board.split(f'data-task="{task.id}"', 1)[1].split("</li>", 1)[0]
    assert "local/project#1" in card
    assert "<option selected>demo</option>" in card  # the task's profile is preselected
    assert re.search(r'<button type="submit">Start</button>', card), card  # enabled


async def _seeded_tasks(dash: Dash) -> list[tuple[str, int | None, str]]:
    return (await dash.rows())[1]


async def test_each_bad_input_is_shown_on_the_form_and_creates_nothing(
    dash: Dash, tmp_path: Path
) -> None:
    token = await dash.sign_in()
    plain = tmp_path / "plain"
    plain.mkdir()
    dirty = user_repo(tmp_path, "dirty")
    (dirty / "README.md").write_text("changed\n")
    before = await dash.rows()
    cases: list[tuple[dict[str, str], int, str, str]] = [
        ({"path": "project"}, 400, "Path: give the repository's absolute path", "path"),
        ({"path": str(tmp_path / "absent")}, 409, "does not exist", "path"),
        ({"path": str(plain)}, 409, "is not a git repository", "path"),
        ({"path": str(user_repo(tmp_path, "r") / ".git")}, 409, "working copy's folder", "path"),
        (
            {"path": str(tmp_path / "r"), "default_branch": "trunk"},
            409,
            "has no branch `trunk`",
            "default_branch",
        ),
        ({"path": str(dirty)}, 409, "uncommitted changes", "default_branch"),
        ({"path": str(tmp_path / "r"), "name": "no spaces"}, 400, "Name: use letters", "name"),
    ]
    for values, status, words, where in cases:
        answer = await dash.client.post("/repositories/add", data={"_csrf": token, **values})
        assert answer.status_code == status, (values, answer.status_code, answer.text[:2000])
        assert words in form_error(answer.text), (values, form_error(answer.text))
        assert f'id="f-{where}" name="{where}" aria-invalid="true"' in answer.text, values
        assert f'id="err-{where}"' in answer.text
        assert f'value="{values["path"]}"' in answer.text  # what was typed is kept
        assert await dash.rows() == before, values

    # A repository already added, under its path or its name.
    ok = await dash.client.post(
        "/repositories/add", data={"_csrf": token, "path": str(tmp_path / "r")}
    )
    assert ok.status_code == 200 and "Added local/r" in ok.text
    after_one = await dash.rows()
    assert after_one[0] == ["local/r"]
    again = await dash.client.post(
        "/repositories/add", data={"_csrf": token, "path": str(tmp_path / "r")}
    )
    assert again.status_code == 409 and "is already added as local/r" in form_error(again.text)
    taken = await dash.client.post(
        "/repositories/add",
        data={"_csrf": token, "path": str(user_repo(tmp_path, "s")), "name": "r"},
    )
    assert taken.status_code == 409 and "the name local/r is taken" in form_error(taken.text)
    assert await dash.rows() == after_one

    good = {"repository": "local/r", "title": "A task", "priority": "0", "profile": ""}
    task_cases: list[tuple[dict[str, str], int, str, str]] = [
        ({"profile": "nope"}, 409, "no profile 'nope' on this server", "profile"),
        ({"title": "   "}, 400, "Title: a task needs a title", "title"),
        ({"priority": "high"}, 400, "Priority: must be a whole number", "priority"),
        ({"priority": "5000"}, 400, "Priority: must be between -1000 and 1000", "priority"),
        ({"repository": "octo/hello"}, 409, "is a GitHub repository", "repository"),
        ({"repository": "local/absent"}, 404, "choose a local repository", "repository"),
        ({"title": "x" * 501}, 400, "Title: is too long", "title"),
    ]
    for change, status, words, where in task_cases:
        values = {**good, **change}
        answer = await dash.client.post("/board/tasks/add", data={"_csrf": token, **values})
        assert answer.status_code == status, (change, answer.status_code, answer.text[:2000])
        assert words in form_error(answer.text), (change, form_error(answer.text))
        assert f'id="f-{where}" name="{where}" aria-invalid="true"' in answer.text, change
        assert await dash.rows() == after_one, change


async def test_forged_and_read_only_adds_are_refused_and_create_nothing(
    dash: Dash, tmp_path: Path
) -> None:
    token = await dash.sign_in()
    project = user_repo(tmp_path)
    taken = await dash.client.post(
        "/repositories/add", data={"_csrf": token, "path": str(project)}, follow_redirects=False
    )
    assert taken.status_code == 303
    before = await dash.rows()
    other = user_repo(tmp_path, "other")
    task = {"repository": "local/project", "title": "Forged"}
    for path, data in (("/repositories/add", {"path": str(other)}), ("/board/tasks/add", task)):
        no_token = await dash.client.post(path, data=data, follow_redirects=False)
        assert no_token.status_code == 403, path
        wrong = await dash.client.post(
            path, data={"_csrf": "x" + token[1:], **data}, follow_redirects=False
        )
        assert wrong.status_code == 403, path
        cross = await dash.client.post(
            path,
            data={"_csrf": token, **data},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        )
        assert cross.status_code == 403, path
    assert await dash.rows() == before

    # A GitHub user: reads local repositories, adds neither repositories nor tasks.
    dash.client.cookies.clear()
    reader = dash.sign_in_as_github_user("mallory")
    form = await dash.client.get("/repositories/add")
    assert form.status_code == 403 and "for Bosun's admin" in form.text
    assert re.search(r"<button type=\"submit\" class=\"primary\" disabled", form.text)
    refused = await dash.client.post(
        "/repositories/add", data={"_csrf": reader, "path": str(other)}, follow_redirects=False
    )
    assert refused.status_code == 403 and "for Bosun's admin" in form_error(refused.text)
    task_form = await dash.client.get("/board/tasks/add")
    assert "No local repository you may add tasks to" in task_form.text
    refused = await dash.client.post(
        "/board/tasks/add", data={"_csrf": reader, **task}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert "needs write permission (you have read)" in form_error(refused.text)
    assert await dash.rows() == before
