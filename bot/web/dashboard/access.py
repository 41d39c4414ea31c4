"""What a signed-in viewer may see and do on a repository: their collaborator permission, read
exactly as the worker reads a commenter's (``bot.github.permissions.cached_permission``: live
from GitHub, cached briefly and signed), and the actions a run's state allows
(``bot.domain.review`` rules, shown before the worker decides them again)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
from githubkit.exception import GitHubException
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bot.appcreds import load_stored, with_stored
from bot.db.models import Repository
from bot.domain.review.model import RETRYABLE, REVIEWABLE
from bot.domain.states import ACTIVE, TERMINAL, RunState
from bot.github.permissions import at_least, cached_permission
from bot.github.repo import GitHubRepo
from bot.github.retry import RetryPolicy
from bot.github.tokens import GitHubApp
from bot.services import Services
from bot.settings import Settings
from bot.web.dashboard.security import Viewer

log = structlog.get_logger("bot.web.dashboard")


class Access:
    """Permission lookups of one web process (the App client is built once, lazily)."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self._app: GitHubApp | None = None

    async def effective(self) -> Settings:
        """The settings with an App registered at ``/setup`` filled in where the environment
        configures none (looked up until there is one)."""
        github = self.settings.github
        if github.app_id is None and not github.private_key_pem():
            with contextlib.suppress(SQLAlchemyError, OSError):
                self.settings = with_stored(
                    self.settings, await load_stored(self.services.sessions)
                )
                self._app = None
        return self.settings

    def github_app(self) -> GitHubApp:
        if self._app is None:
            gh = self.settings.github
            self._app = GitHubApp(gh, RetryPolicy.of(gh, max_retries=2))
        return self._app

    async def permission(self, viewer: Viewer, repository: Repository | None) -> str:
        """``admin``, ``write``, ``read``… or ``none``: what ``viewer`` holds on ``repository``."""
        if viewer.kind == "admin":
            return "admin"
        if repository is None:
            return "none"
        if repository.local_path or repository.installation_id is None:
            return "read"  # local projects: only the admin acts on them from the dashboard
        await self.effective()
        port = GitHubRepo(self.github_app(), repository.installation_id, repository.full_name)
        try:
            return await cached_permission(self.settings, self.services.redis, port, viewer.login)
        except (GitHubException, OSError) as exc:
            log.warning("dashboard_permission_unknown", repo=repository.full_name, error=str(exc))
            return "none"

    async def repository(self, full_name: str) -> Repository | None:
        async with self.services.sessions() as session:
            found: Repository | None = (
                await session.execute(select(Repository).where(Repository.full_name == full_name))
            ).scalar_one_or_none()
            return found

    async def visible(self, viewer: Viewer) -> dict[str, str]:
        """Every repository ``viewer`` may read, with the permission held there."""
        async with self.services.sessions() as session:
            repos = list((await session.execute(select(Repository))).scalars())
        out: dict[str, str] = {}
        for repo in repos:
            permission = await self.permission(viewer, repo)
            if at_least(permission, "read") or (not repo.private and viewer.kind == "github"):
                out[repo.full_name] = permission if permission != "none" else "read"
        return out


@dataclass(frozen=True)
class Allowed:
    """One action button: whether it may be used, and why not."""

    verb: str
    label: str
    enabled: bool
    reason: str = ""


def allowed_actions(
    *, state: str, on_hold: bool, requester: str, viewer: Viewer, permission: str
) -> dict[str, Allowed]:
    """Each action on a run as the dashboard offers it. The worker decides again, with the
    same rules, when the action arrives; this only spares a click that would be refused."""
    run_state = RunState(state)
    writer = at_least(permission, "write")
    mine = viewer.login.lower() == requester.lower()
    need_write = f"needs write permission on the repository (you have {permission})"
    need_mine = f"needs write permission or being the requester (you have {permission})"

    def make(
        verb: str, label: str, state_ok: bool, why_state: str, who_ok: bool, why_who: str
    ) -> Allowed:
        if not state_ok:
            return Allowed(verb, label, False, why_state)
        if not who_ok:
            return Allowed(verb, label, False, why_who)
        return Allowed(verb, label, True)

    ended = "the run has ended"
    actions = [
        make(
            "approve",
            "Approve",
            run_state is RunState.REVIEW_READY,
            "only a review-ready run can be approved",
            writer,
            need_write,
        ),
        make(
            "reject",
            "Reject",
            run_state in REVIEWABLE,
            "only a run in review can be rejected"
            + ("; cancel it instead" if run_state in ACTIVE else ""),
            writer,
            need_write,
        ),
        make(
            "retry",
            "Retry with feedback",
            run_state in RETRYABLE or run_state in ACTIVE,
            "an approved or finished run cannot be retried",
            writer or mine,
            need_mine,
        ),
        make(
            "steer",
            "Steer",
            run_state in ACTIVE,
            "only a queued or working run can be steered; retry with feedback instead",
            writer or mine,
            need_mine,
        ),
        make(
            "cancel",
            "Cancel",
            run_state in ACTIVE,
            "only a queued or working run can be cancelled",
            writer or mine,
            need_mine,
        ),
        make(
            "resume",
            "Resume",
            run_state is RunState.TIMED_OUT,
            "only a timed-out run can be resumed",
            writer or mine,
            need_mine,
        ),
        make(
            "hold",
            "Hold",
            run_state not in TERMINAL and not on_hold,
            ended if run_state in TERMINAL else "the run is already on hold",
            writer,
            need_write,
        ),
        make(
            "unhold",
            "Lift hold",
            run_state not in TERMINAL and on_hold,
            ended if run_state in TERMINAL else "the run is not on hold",
            writer,
            need_write,
        ),
        make(
            "budget",
            "Raise budget",
            run_state not in TERMINAL or run_state is RunState.TIMED_OUT,
            ended,
            writer,
            need_write,
        ),
    ]
    return {a.verb: a for a in actions}


__all__ = ["Access", "Allowed", "allowed_actions"]
