"""The emulator's shared context: state, webhook sender, faults, and the App's bot user."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .faults import Faults
from .http import HttpError, not_found
from .ratelimit import RateLimits
from .state import Comment, Issue, Repo, Store, User
from .webhooks import Hooks


@dataclass
class Context:
    store: Store
    hooks: Hooks
    faults: Faults
    rate: RateLimits

    @classmethod
    def create(cls, data_dir: Path) -> Context:
        store = Store(data_dir)
        return cls(store, Hooks(store), Faults(), RateLimits())

    def bot(self) -> User:
        app = self.store.app
        if app is None:
            raise HttpError(422, "No app configured: POST /_emulator/app first")
        return app.bot

    def repo(self, owner: str, name: str) -> Repo:
        found = self.store.repo(owner, name)
        if found is None:
            raise not_found()
        return found

    def issue(self, repo: Repo, number: int | str) -> Issue:
        try:
            found = self.store.issue(repo, int(number))
        except ValueError:
            found = None
        if found is None:
            raise not_found()
        return found

    def pull(self, repo: Repo, number: int | str) -> Issue:
        found = self.issue(repo, number)
        if found.pull is None:
            raise not_found()
        return found

    def comment(self, repo: Repo, comment_id: int | str) -> Comment:
        try:
            found = self.store.comments.get(int(comment_id))
        except ValueError:
            found = None
        if found is None or found.repo_id != repo.id:
            raise not_found()
        return found

    def user(self, login: str | None) -> User:
        if not login:
            raise HttpError(422, "'user' is required")
        return self.store.user(login, "Bot" if login.endswith("[bot]") else "User")
