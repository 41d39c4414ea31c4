"""The typed job context: what every job function finds in ``ctx["bosun"]``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bot.appcreds import load_stored, with_stored
from bot.db.artifacts import ArtifactStore, artifact_store
from bot.db.models import Repository
from bot.forge.local import LocalForge
from bot.forge.port import Forge
from bot.github.repo import GitHubRepo
from bot.github.retry import RetryPolicy
from bot.github.tokens import GitHubApp
from bot.services import Services
from bot.settings import Settings
from sandboxes.base import SandboxBackend
from sandboxes.docker import DockerBackend, DockerConfig
from sandboxes.git import GitIdentity
from sandboxes.pool import SandboxPool
from sandboxes.workspace import WorkspaceManager


@dataclass
class JobContext:
    settings: Settings
    services: Services
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _app: GitHubApp | None = field(default=None, repr=False)
    _backend: SandboxBackend | None = field(default=None, repr=False)
    _workspaces: WorkspaceManager | None = field(default=None, repr=False)
    _pool: SandboxPool | None = field(default=None, repr=False)

    def github_app(self) -> GitHubApp:
        if self._app is None:
            gh = self.settings.github
            self._app = GitHubApp(gh, RetryPolicy.of(gh))
        return self._app

    async def adopt_stored_app(self) -> None:
        """Take the App registered at ``/setup`` when the environment configures none (checked
        before each job until there is one; a configured App is never replaced)."""
        github = self.settings.github
        if github.app_id is not None or github.private_key_pem():
            return
        try:
            stored = await load_stored(self.services.sessions)
        except (SQLAlchemyError, OSError):  # unmigrated or unreachable: the job will say so
            return
        if stored is not None:
            self.settings = with_stored(self.settings, stored)
            self.services.settings = self.settings
            self._app = None

    def repo(self, installation_id: int, full_name: str) -> GitHubRepo:
        return GitHubRepo(self.github_app(), installation_id, full_name)

    def forge(self, repository: Repository) -> Forge:
        """The forge ``repository`` lives on: a local git repository, or GitHub."""
        if repository.local_path:
            return LocalForge(
                repository,
                sessions=self.services.sessions,
                workspaces=self.workspaces,
                identity=self.commit_identity(),
                public_url=self.settings.public_url,
            )
        return self.repo(repository.installation_id or 0, repository.full_name)

    @property
    def backend(self) -> SandboxBackend:
        if self._backend is None:
            self._backend = DockerBackend(
                DockerConfig(docker_host=self.settings.sandbox.docker_host)
            )
        return self._backend

    @property
    def pool(self) -> SandboxPool:
        """This worker's warm pool of started sandboxes (``sandbox.pool_size`` 0: none)."""
        if self._pool is None:
            sandbox = self.settings.sandbox
            self._pool = SandboxPool(
                self.backend,
                self.workspaces.root / "pool",
                size=sandbox.pool_size,
                idle_seconds=sandbox.pool_idle_seconds,
            )
        return self._pool

    @property
    def artifacts(self) -> ArtifactStore:
        return artifact_store(self.settings)

    @property
    def workspaces(self) -> WorkspaceManager:
        if self._workspaces is None:
            self._workspaces = WorkspaceManager(
                self.settings.sandbox.workdir.resolve(), identity=self.commit_identity()
            )
        return self._workspaces

    def commit_identity(self) -> GitIdentity:
        gh = self.settings.github
        login = gh.bot_login
        email = f"{gh.app_id or 0}+{login}@users.noreply.github.com"
        return GitIdentity(name=login, email=email)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._workspaces is not None:
            await self._workspaces.mirrors.close()
        if self._backend is not None:
            await self._backend.close()
        await self.services.close()


def job_context(ctx: dict[str, Any]) -> JobContext:
    """The ``JobContext`` that ``on_startup`` put into arq's ``ctx``."""
    value = ctx["bosun"]
    if not isinstance(value, JobContext):
        raise TypeError("ctx['bosun'] is not a JobContext; was the worker started by bosun?")
    return value
