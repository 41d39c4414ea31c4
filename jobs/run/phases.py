"""Workflows (SPEC §4.2): the agent phases a run goes through, and their prompt templates.

``implement`` is one invocation. ``plan`` asks for a plan and changes no code; the plan is
posted on the issue. ``plan_implement`` and ``plan_implement_test`` run one invocation per
phase in the same sandbox, each with its own prompt; the plan is handed to the later phases.

A repository may replace a phase's directive with ``.bosun/commands/<phase>.md``. Templates are
read from the run's base commit (the default branch), never from the run's own branch, so an
agent's earlier commits cannot rewrite the instructions of a later run.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.prompt import sanitize
from sandboxes.base import Sandbox, SandboxBackend
from sandboxes.errors import UnreadableWorkspace
from sandboxes.workspace import Workspace

WORKFLOWS: dict[str, tuple[str, ...]] = {
    "implement": ("implement",),
    "plan": ("plan",),
    "plan_implement": ("plan", "implement"),
    "plan_implement_test": ("plan", "implement", "test"),
}
TEMPLATE_DIR = ".bosun/commands"
MAX_TEMPLATE_BYTES = 20_000
PLAN_MARKER = "<!-- bosun:plan run={run_id} -->"
MAX_PLAN_COMMENT = 60_000


@dataclass(frozen=True)
class Phase:
    """One agent invocation of a workflow. ``label`` names its row in the check run: the
    single phase of ``implement`` keeps the row name ``agent``."""

    name: str
    label: str
    index: int
    total: int

    @property
    def prompt_file(self) -> str:
        return "prompt.md" if self.total == 1 else f"prompt-{self.name}.md"


def phases_for(workflow: str) -> list[Phase]:
    """The phases of ``workflow`` (unknown names run ``implement``)."""
    names = WORKFLOWS.get(workflow, WORKFLOWS["implement"])
    return [
        Phase(name, "agent" if names == ("implement",) else name, index, len(names))
        for index, name in enumerate(names, 1)
    ]


async def load_template(workspace: Workspace, phase: str) -> str | None:
    """The repository's ``.bosun/commands/<phase>.md`` at the run's base commit (read from the
    worker's own repository, never the agent's), or ``None``."""
    raw = await workspace.read_base_file(f"{TEMPLATE_DIR}/{phase}.md", MAX_TEMPLATE_BYTES)
    if raw is None:
        return None
    return raw.decode(errors="replace").strip() or None


def plan_comment(run_id: str, plan: str, *, implementing: bool) -> str:
    """The issue comment carrying a plan phase's result."""
    after = (
        "Bosun goes on to implement it in the same run."
        if implementing
        else "No code was changed. To implement it, label the issue again or comment "
        "`/bosun run` (add instructions after it to adjust the plan)."
    )
    body = sanitize(plan).strip() or "(the agent wrote no plan)"
    if len(body) > MAX_PLAN_COMMENT:
        body = (
            body[:MAX_PLAN_COMMENT] + "\n\n… truncated (the whole plan is in the run's artifacts)"
        )
    return "\n".join(
        [
            PLAN_MARKER.format(run_id=run_id),
            f"**Bosun** · plan for run `{run_id}`",
            "",
            body,
            "",
            f"_{after}_",
        ]
    )


async def discard_changes(workspace: Workspace, backend: SandboxBackend, sandbox: Sandbox) -> bool:
    """Undo what a plan phase wrote (it must change no code); ``True`` when there was any.

    The host only reads the tree (``Workspace.changed``); the undo runs inside the sandbox,
    as the agent, with the agent's own git. Raises ``UnreadableWorkspace`` when the tree still
    differs afterwards."""
    if not await workspace.changed():
        return False
    undo = (
        f"git -c core.hooksPath=/dev/null reset --hard -q {workspace.start_sha} && "
        "git -c core.hooksPath=/dev/null clean -ffdq"
    )
    await backend.exec(sandbox, ["/bin/sh", "-c", undo], workdir="/workspace", timeout=60)
    if await workspace.changed():
        raise UnreadableWorkspace(
            "the plan phase changed files that could not be undone; nothing was pushed",
            detail="the work tree still differs from the run's starting commit after "
            "`git reset --hard` and `git clean` in the sandbox",
        )
    return True


__all__ = [
    "PLAN_MARKER",
    "WORKFLOWS",
    "Phase",
    "discard_changes",
    "load_template",
    "phases_for",
    "plan_comment",
]
