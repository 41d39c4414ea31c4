"""The sandbox package's exceptions: one root, ``SandboxError``, and a subclass per failure a
caller may want to tell apart. Messages say what to do next."""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error raised by ``sandboxes``."""


class SandboxConfigError(SandboxError, ValueError):
    """A sandbox spec or backend config is invalid."""


class EngineUnavailable(SandboxError, ConnectionError):
    """The container engine cannot be reached."""


class ImageNotFound(SandboxError, LookupError):
    """The image a spec names does not exist on the engine."""


class SandboxStartError(SandboxError):
    """The container could not be created or started."""


class SandboxNotFound(SandboxError, LookupError):
    """The container is gone (removed, reaped, or never existed)."""


class SandboxNotRunning(SandboxError):
    """An exec was attempted on a container that is not running."""


class SandboxTimeout(SandboxError, TimeoutError):
    """An operation ran past its deadline (raised by ``ExecResult.check``)."""


class OutputLimitExceeded(SandboxError):
    """Output was truncated and the caller asked for complete output (``ExecResult.check``)."""


class ExecFailed(SandboxError):
    """A command exited non-zero (raised by ``ExecResult.check``)."""

    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CopyError(SandboxError):
    """Copying files into or out of a sandbox failed."""


class WorkspaceError(SandboxError):
    """A host-side workspace operation (git, ownership, cleanup) failed."""


class UnreadableWorkspace(WorkspaceError):
    """The agent's work tree could not be read as data. ``str()`` is a fixed message safe to
    publish; ``detail`` may quote what the agent wrote and is for maintainers only."""

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class GitError(WorkspaceError):
    """A git command failed. ``stderr`` has credentials redacted."""

    def __init__(self, message: str, *, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class PushRejected(GitError):
    """The remote refused a push (branch protection, pre-receive hook, non-fast-forward)."""


class MirrorLockTimeout(WorkspaceError, TimeoutError):
    """Another process held a repository mirror's lock for too long."""
