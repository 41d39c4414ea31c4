"""The dashboard in a real browser (issue 15): Playwright driving Debian's Chromium against Bosun
(web + worker) and the GitHub emulator.

- A maintainer signs in with GitHub, an issue is labelled, the run appears on the fleet page
  without a reload, its page shows log lines while the agent prints them, the Diff tab shows the
  change, and approving two of its three files merges a PR with exactly those two; the audit
  says the approval came from the dashboard.
- A user with read permission sees every action disabled with the reason; a forged POST (no
  CSRF token, or another user's token) is refused and changes nothing.
- axe-core finds no serious or critical violation on any page; the actions and the board's
  Start are reachable by keyboard; every state badge carries words, not only a colour.
- The admin adds a local repository (a refusal shown on the form first) and a task from the
  dashboard, starts it from the board, and the run reaches review_ready on the fleet page.
- Board cards dragged with the pointer: within To do the new order is saved and kept after a
  reload; a card dropped on Running opens the profile picker, and confirming starts a run with
  the chosen profile (audited with the source ``dashboard``).

``BOSUN_SCREENSHOTS=DIR`` saves a screenshot of each page there (docs/dashboard.md's).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.web.dashboard.login import print_admin_link
from tests.emulator.routes_oauth import client_id, client_secret
from tests.services import missing
from tests.stack import PROFILES, BosunStack, StackPlace, open_stack
from tests.test_local_e2e import user_repo

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / ".cache" / "test-assets" / "axe.min.js"
CHROMIUM = os.environ.get("BOSUN_TEST_CHROMIUM") or "/usr/bin/chromium"
SHOTS = os.environ.get("BOSUN_SCREENSHOTS", "")

# Prints for a while (so the page can be watched live), then changes three files.
SLOW_EDIT = r"""
import pathlib, sys, time
for n in range(25):
    print(f"\x1b[32mtick {n}\x1b[0m working on it", flush=True)
    time.sleep(0.2)
pathlib.Path("/workspace/README.md").write_text(
    pathlib.Path("/workspace/README.md").read_text() + "\nEdited by the agent.\n")
pathlib.Path("/workspace/src/feature.py").write_text("def feature():\n    return 42\n")
pathlib.Path("/workspace/NOTES.md").write_text("scratch notes\n")
print("agent: done", flush=True)
"""
AUTO_MERGE = "merge:\n  auto_merge: true\n"
ACTIVE_STATES = ("queued", "preparing", "running", "gates")


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - a dev extra
        missing("playwright", f"{exc} (uv sync --extra dev)")
    if not Path(CHROMIUM).exists():
        missing("Chromium", f"{CHROMIUM} (scripts/bootstrap.sh test installs it)")
    if not AXE.exists():
        missing("axe-core", f"{AXE} (python scripts/fetch_assets.py --test)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def dash_stack(place: StackPlace) -> Iterator[BosunStack]:
    app_id = place.world.app.app_id
    profiles = {
        **PROFILES,
        "slowedit": {"runner": "script", "command": ["python3", "-c", SLOW_EDIT]},
    }
    github = {"client_id": client_id(app_id), "client_secret": client_secret(app_id)}
    with open_stack(
        *place,
        profiles=profiles,
        github=github,
    ) as stack:
        stack.emulator.add_user("bob", stack.repo, "write")
        yield stack


def sign_in(browser: Any, stack: BosunStack, login: str, **options: Any) -> Any:
    """A browser context signed in as ``login`` through "Sign in with GitHub"."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, **options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(stack.url + "/")
    assert "/login" in page.url
    page.get_by_role("link", name="Sign in with GitHub").click()
    page.fill("#login", login)
    page.click("#authorize")
    page.wait_for_url(stack.url + "/")
    assert login in page.inner_text("header")
    return context


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def _git(stack: BosunStack, *args: str) -> str:
    git_dir = Path(stack.state()["git_dir"])
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True, text=True
    ).stdout


def test_label_to_partial_merge_in_the_browser(browser: Any, dash_stack: BosunStack) -> None:
    stack = dash_stack
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": AUTO_MERGE}, user="alice")
    base = _git(stack, "rev-parse", "main").strip()
    context = sign_in(browser, stack, "bob")
    page = context.pages[0]
    page.wait_for_selector("#needs-you-h")
    page.wait_for_function("() => window.htmx !== undefined")

    number = stack.emulator.create_issue(stack.repo, "Make the feature answer", "Please.", "alice")
    stack.label(number, "bosun:slowedit")
    # Appears without a reload (the fleet stream refreshes the page's body).
    link = page.get_by_role("link", name="Make the feature answer").first
    link.wait_for(timeout=30_000)
    (run,) = stack.runs()
    run_id = str(run["id"])
    shot(page, "fleet-live")
    link.click()
    page.wait_for_url(f"{stack.url}/runs/{run_id}")
    page.wait_for_selector("#log .line:has-text('tick 3')", timeout=60_000)
    state_then = stack.db("SELECT state FROM runs WHERE id=?", run_id)[0][0]
    assert state_then in ("preparing", "running"), state_then  # seen live, not afterwards
    assert page.locator("#log .ansi-fg-green").count() > 0  # colours, not escape codes
    shot(page, "run-log")

    stack.wait_run({"review_ready"}, timeout=120)
    page.goto(f"{stack.url}/runs/{run_id}?tab=diff")
    files = page.locator(".filetree input[name=paths]")
    assert sorted(files.evaluate_all("els => els.map(e => e.value)")) == [
        "NOTES.md",
        "README.md",
        "src/feature.py",
    ]
    page.locator("details.file summary", has_text="src/feature.py").click()
    page.wait_for_selector("details.file[open] .filebody:has-text('return 42')")
    shot(page, "run-diff")
    page.uncheck(".filetree input[value='NOTES.md']")
    page.get_by_role("button", name="Approve checked files").click()
    page.wait_for_selector(".flash")
    stack.wait_run({"merged"}, timeout=90)
    main = _git(stack, "rev-parse", "main").strip()
    assert sorted(_git(stack, "diff", "--name-only", base, main).split()) == [
        "README.md",
        "src/feature.py",
    ]
    audit = stack.db("SELECT actor, command, outcome, source FROM command_audit")
    assert ("bob", "approve", "accepted", "dashboard") in audit, audit
    page.goto(f"{stack.url}/runs/{run_id}")
    assert "merged" in page.locator("#run-header .badge").first.inner_text()
    context.close()


AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target)}));
}"""


def test_read_users_forged_posts_and_accessibility(browser: Any, dash_stack: BosunStack) -> None:
    stack = dash_stack
    number = stack.emulator.create_issue(stack.repo, "Reviewable change", "Please.", "alice")
    stack.label(number)
    failing = stack.emulator.create_issue(stack.repo, "Try this again", "Please.", "alice")
    stack.label(failing, "bosun:fail")  # ends failed: its task goes back to To do
    (run,) = stack.wait_run({"review_ready"}, timeout=120)
    stack.wait_run({"failed"}, timeout=120)
    run_id = str(run["id"])

    reader = sign_in(browser, stack, "mallory", bypass_csp=True)  # axe is injected
    page = reader.pages[0]
    page.goto(f"{stack.url}/runs/{run_id}")
    for verb in ("approve", "reject", "retry", "hold", "budget"):
        button = page.locator(f"form[action$='/actions/{verb}'] button[type=submit]")
        assert button.is_disabled(), verb
        reason = page.locator(f"#why-{verb}").inner_text()
        assert "write permission" in reason and "read" in reason, (verb, reason)
    assert page.locator("form[action$='/actions/cancel'] button").is_disabled()

    # Forged POSTs with the reader's cookies: no token, then the maintainer's token.
    writer = sign_in(browser, stack, "bob")
    writer_page = writer.pages[0]
    writer_page.goto(f"{stack.url}/runs/{run_id}")
    bob_token = writer_page.locator('meta[name="csrf-token"]').get_attribute("content")
    before = stack.db("SELECT count(*) FROM control_commands")[0][0]
    target = f"{stack.url}/runs/{run_id}/actions/approve"
    no_token = page.request.post(target, form={"sha": run["head_sha"]}, max_redirects=0)
    assert no_token.status == 403
    borrowed = page.request.post(
        target, form={"_csrf": bob_token, "sha": run["head_sha"]}, max_redirects=0
    )
    assert borrowed.status == 403
    anonymous = browser.new_context()
    forged = anonymous.request.post(
        target, form={"_csrf": bob_token, "sha": run["head_sha"]}, max_redirects=0
    )
    assert forged.status in (302, 303, 307, 401, 403)
    anonymous.close()
    assert stack.db("SELECT count(*) FROM control_commands")[0][0] == before
    assert stack.db("SELECT state FROM runs WHERE id=?", run_id)[0][0] == "review_ready"

    # Accessibility on every page, as the maintainer sees it (actions enabled).
    writer.close()
    maintainer = sign_in(browser, stack, "bob", bypass_csp=True)
    page = maintainer.pages[0]
    pages = {
        "fleet": "/",
        "run-log": f"/runs/{run_id}",
        "run-diff": f"/runs/{run_id}?tab=diff",
        "run-gates": f"/runs/{run_id}?tab=gates",
        "run-summary": f"/runs/{run_id}?tab=summary",
        "run-events": f"/runs/{run_id}?tab=events",
        "board": "/board",
        "repositories": "/repositories",
    }
    for name, path in pages.items():
        page.goto(stack.url + path)
        page.add_script_tag(path=str(AXE))
        violations = page.evaluate(AXE_RUN)
        assert violations == [], (name, violations)
        badges = page.locator(".badge").all_inner_texts()
        assert all(text.strip() for text in badges), (name, badges)  # words, not colour
        if name in ("fleet", "board", "repositories", "run-summary", "run-gates"):
            shot(page, name)
    page.goto(stack.url + "/login")  # signed in: still renders
    page.add_script_tag(path=str(AXE))
    assert page.evaluate(AXE_RUN) == []

    # Keyboard: Tab reaches every enabled action on the run page, and Start on the board.
    page.goto(f"{stack.url}/runs/{run_id}")
    reached = tab_through(page, 80)
    for label in ("Approve", "Reject", "Retry with feedback", "Hold", "Raise budget"):
        assert label in reached, (label, reached)
    assert "Download run bundle" in reached
    page.goto(f"{stack.url}/board")
    reached = tab_through(page, 60, stop_at="Start")
    assert reached[-1] == "Start", reached
    page.keyboard.press("Enter")  # confirmed (dialogs are accepted), sent as source dashboard
    page.wait_for_selector(".flash-ok:has-text('Started run')", timeout=30_000)
    starts = stack.db("SELECT actor, outcome, source FROM control_commands WHERE verb='start'")
    assert starts == [("bob", "accepted", "dashboard")], starts
    maintainer.close()
    reader.close()


def tab_through(page: Any, presses: int, stop_at: str = "") -> list[str]:
    """The accessible text of each element focused by pressing Tab ``presses`` times (or until
    one reads ``stop_at``)."""
    seen: list[str] = []
    page.locator("body").focus()
    for _ in range(presses):
        page.keyboard.press("Tab")
        seen.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return (e.innerText || e.value || e.getAttribute('aria-label') || '').trim(); }"
            )
        )
        if stop_at and seen[-1] == stop_at:
            break
    return seen


def axe_clean(page: Any, name: str) -> None:
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(AXE_RUN)
    assert violations == [], (name, violations)


def test_a_local_repository_and_task_added_and_started_from_the_dashboard(
    browser: Any, dash_stack: BosunStack, tmp_path: Path
) -> None:
    stack = dash_stack
    project = user_repo(tmp_path, "project")
    plain = tmp_path / "plain"
    plain.mkdir()
    link = stack.call(print_admin_link(stack.settings))  # what `bosun up` prints
    assert link is not None
    context = browser.new_context(viewport={"width": 1360, "height": 900}, bypass_csp=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.url + "/")

    page.goto(stack.url + "/repositories")
    page.get_by_role("link", name="Add a local repository").click()
    page.wait_for_url(stack.url + "/repositories/add")
    axe_clean(page, "add-repository")
    page.get_by_label("Path").fill(str(plain))
    page.get_by_role("button", name="Add repository").click()
    alert = page.get_by_role("alert")
    assert "is not a git repository" in alert.inner_text()
    field = page.get_by_label("Path")
    assert field.get_attribute("aria-invalid") == "true"
    assert field.input_value() == str(plain)  # what was typed is kept
    assert "Error:" in page.locator("#err-path").inner_text()  # words, not only red
    axe_clean(page, "add-repository-error")
    shot(page, "add-repository-error")
    assert stack.db("SELECT count(*) FROM repositories WHERE local_path IS NOT NULL") == [(0,)]

    field.fill(str(project))
    page.get_by_role("button", name="Add repository").click()
    page.wait_for_url("**/board/tasks/add?repository=local/project")
    assert "Added local/project" in page.locator(".flash-ok").inner_text()
    axe_clean(page, "add-task")
    page.get_by_label("Title").fill("Make the feature answer")
    page.get_by_label("Description").fill("Add src/feature.py.")
    page.get_by_label("Acceptance checklist").fill("feature() returns 42\nREADME says so")
    page.get_by_label("Focus paths").fill("src/**\nREADME.md")
    page.get_by_label("Profile").select_option("default")
    shot(page, "add-task")
    page.get_by_role("button", name="Add task").click()
    page.wait_for_url(stack.url + "/board")
    assert "Added task local/project#1" in page.locator(".flash-ok").inner_text()
    rows = stack.db("SELECT title, acceptance, focus, profile FROM tasks")
    assert [(r[0], r[3]) for r in rows] == [("Make the feature answer", "default")], rows

    card = page.locator("li.card.task", has_text="Make the feature answer")
    assert "local/project#1" in card.inner_text()
    axe_clean(page, "board-local")
    shot(page, "board-local")
    card.get_by_role("button", name="Start").click()  # confirmed (dialogs are accepted)
    page.wait_for_selector(".flash-ok:has-text('Started run')", timeout=30_000)
    starts = stack.db("SELECT actor, outcome, source FROM control_commands WHERE verb='start'")
    assert starts == [("admin", "accepted", "dashboard")], starts
    (run,) = stack.wait_run({"review_ready"}, timeout=120)
    assert run["branch"] and run["branch"].startswith("bosun/1-")
    page.goto(stack.url + "/")
    needs_you = page.locator("section", has=page.locator("#needs-you-h"))
    needs_you.get_by_role("link", name="Make the feature answer").wait_for()
    assert "local/project#1" in needs_you.inner_text()
    context.close()


def drag(page: Any, source: Any, target: Any, *, upper: bool = True) -> None:
    """Press on ``source``, move in steps onto ``target`` (its upper or lower part) and let go:
    the pointer moves SortableJS needs (Chromium turns them into native drag events)."""
    start, end = source.bounding_box(), target.bounding_box()
    x, y = start["x"] + start["width"] / 2, start["y"] + start["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 4, y + 6, steps=4)  # the drag starts
    page.wait_for_timeout(100)
    fraction = 0.25 if upper else 0.75
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] * fraction, steps=20)
    page.wait_for_timeout(300)  # Sortable's animation
    page.mouse.up()


def todo_titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("ol[data-column=todo] li.card h3").all_inner_texts()]


def test_board_cards_dragged_to_order_and_to_running(
    browser: Any, dash_stack: BosunStack, tmp_path: Path
) -> None:
    from bot.control.local import TaskFields, add_repository, add_task
    from bot.db.engine import create_engine, session_factory

    stack = dash_stack
    project = user_repo(tmp_path, "project")

    async def tasks() -> list[int]:
        engine = create_engine(stack.settings.database.url)
        try:
            sessions = session_factory(engine)
            await add_repository(sessions, str(project), name=None, default_branch=None)
            return [
                (
                    await add_task(
                        sessions,
                        "local/project",
                        TaskFields(title=title),
                        author="admin",
                        profiles=stack.settings.agent_profiles(),
                    )
                ).id
                for title in ("First task", "Second task", "Third task")
            ]
        finally:
            await engine.dispose()

    first, second, third = stack.call(tasks())
    link = stack.call(print_admin_link(stack.settings))
    assert link is not None
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.url + "/")
    page.goto(stack.url + "/board")
    page.wait_for_function("() => window.Sortable !== undefined")
    assert todo_titles(page) == ["First task", "Second task", "Third task"]

    # Third above First: the column's new order is saved and kept after a reload.
    card = page.locator("ol[data-column=todo] li.card", has_text="Third task")
    onto = page.locator("ol[data-column=todo] li.card", has_text="First task")
    with page.expect_response("**/board/order") as saved:
        drag(page, card.locator("p").first, onto)
    assert saved.value.ok, saved.value.text()
    page.reload()
    page.wait_for_function("() => window.Sortable !== undefined")
    assert todo_titles(page) == ["Third task", "First task", "Second task"]
    positions = stack.db("SELECT task_id, updated_by FROM board_positions ORDER BY position")
    assert positions == [(third, "admin"), (first, "admin"), (second, "admin")], positions

    # Second into Running: the profile picker opens for it; confirming starts the run.
    assert not page.locator("#start-dialog").is_visible()
    card = page.locator("ol[data-column=todo] li.card", has_text="Second task")
    drag(page, card.locator("p").first, page.locator("ol[data-column=running]"))
    dialog = page.locator("#start-dialog")
    dialog.wait_for(state="visible")
    assert dialog.locator("#start-what").inner_text() == "Second task"
    assert dialog.locator("input[name=task_id]").input_value() == str(second)
    assert stack.db("SELECT count(*) FROM control_commands") == [(0,)]  # nothing yet
    dialog.get_by_label("Profile").select_option("noop")
    dialog.get_by_role("button", name="Start run").click()
    page.wait_for_selector(".flash-ok:has-text('Started run')", timeout=30_000)
    starts = stack.db("SELECT actor, outcome, source FROM control_commands WHERE verb='start'")
    assert starts == [("admin", "accepted", "dashboard")], starts
    runs = stack.db("SELECT task_id, profile FROM runs")
    assert runs == [(second, "noop")], runs
    stack.wait_for(
        lambda: stack.db("SELECT state FROM runs")[0][0] not in ACTIVE_STATES,
        120,
        "the started run to end",
    )
    context.close()
