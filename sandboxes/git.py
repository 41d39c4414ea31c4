"""Running host-side git safely: argv only, a scrubbed environment, credentials passed per command
through the environment (never argv, never disk), and redaction of anything secret from errors.

The workspace's ``.git`` is writable by the agent, so host-side git must not honour anything the
agent could plant there: hooks are disabled, fsmonitor off, replace refs ignored, the ``ext::``
transport refused, and system/global config ignored. (``Workspace`` also restores a trusted
``.git/config`` before each host-side command.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.domain.secrets import redact_text
from sandboxes.errors import GitError, PushRejected

_SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("protocol.ext.allow", "never"),
    ("protocol.file.allow", "always"),
    ("credential.helper", ""),
    ("gc.auto", "0"),
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_REJECTED = ("[rejected]", "[remote rejected]", "pre-receive hook declined")


@dataclass(frozen=True, slots=True)
class GitIdentity:
    """A commit author or committer."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


def basic_auth_header(token: str, username: str = "x-access-token") -> str:
    """The ``http.extraHeader`` value that authenticates git over HTTPS with a GitHub token."""
    raw = base64.b64encode(f"{username}:{token}".encode()).decode()
    return f"Authorization: Basic {raw}"


def strip_credentials(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    return _URL_USERINFO.sub(r"\g<scheme>", url)


class Redactor:
    """Replaces known secrets with ``***``, then anything else the shared rules take for a
    credential (``bot.domain.secrets``: URL credentials, tokens, private keys)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        self._secrets.add(secret)
        if secret.startswith("Authorization: "):
            credential = secret.split(" ", 2)[-1]
            self._secrets.add(credential)
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except ValueError:
                return
            self._secrets.add(decoded)
            self._secrets.add(decoded.partition(":")[2])

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return redact_text(text, "***")


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@functools.cache
def _global_config() -> Path:
    """A private global config trusting every directory: workspaces belong to the sandbox's
    remapped uid, mirrors to the worker. It is global (not ``-c``) because git drops command-line
    config when it spawns the other end of a local-path fetch or push."""
    folder = Path(tempfile.mkdtemp(prefix="bosun-git-"))
    folder.chmod(0o755)
    path = folder / "gitconfig"
    path.write_text("[safe]\n\tdirectory = *\n")
    path.chmod(0o644)
    return path


def git_env(
    extra_config: Sequence[tuple[str, str]] = (), env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A scrubbed environment; config entries go in as ``GIT_CONFIG_*`` (command scope)."""
    config = [*_SAFE_CONFIG, *extra_config]
    result = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(_global_config()),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for index, (key, value) in enumerate(config):
        result[f"GIT_CONFIG_KEY_{index}"] = key
        result[f"GIT_CONFIG_VALUE_{index}"] = value
    result.update(env or {})
    return result


def as_user_argv(uid: int, gid: int) -> list[str]:
    """A prefix running a program as ``uid:gid`` with no supplementary group and no capability:
    a worker that is not root keeps its ambient capabilities across a change between two
    non-zero uids, so they are cleared before ``execve`` (util-linux ``setpriv``)."""
    return [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "--inh-caps=-all", "--ambient-caps=-all", "--",
    ]  # fmt: skip


async def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    auth_header: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
    timeout: float = 600.0,
    as_user: tuple[int, int] | None = None,
) -> GitResult:
    """Run ``git <args>``. ``auth_header`` (see ``basic_auth_header``) is sent on HTTP requests
    and is redacted from every error. ``as_user`` runs git as that host ``(uid, gid)``."""
    argv = ["git", *args]
    redact = Redactor([auth_header] if auth_header else [])
    extra = [("http.extraHeader", auth_header)] if auth_header else []
    command = argv
    if as_user is not None and as_user != (os.geteuid(), os.getegid()):
        command = [*as_user_argv(*as_user), *argv]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=git_env(extra, env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    shown = redact(" ".join(argv))
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            process.kill()
        await process.wait()
        raise GitError(
            f"`{shown}` timed out after {timeout:.0f}s", argv=argv, returncode=-9, stderr=""
        ) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):  # else it would replace the cancellation
            process.kill()
        raise
    stderr = redact(err.decode("utf-8", "replace"))
    returncode = process.returncode if process.returncode is not None else -1
    if check and returncode != 0:
        kind = GitError
        if args[:1] == ["push"]:  # with --porcelain the per-ref verdicts are on stdout
            stderr = redact(out.decode("utf-8", "replace")) + stderr
            kind = PushRejected if _rejected(stderr) else GitError
        raise kind(
            f"`{shown}` failed ({returncode}): {stderr.strip()[-2000:]}",
            argv=[redact(a) for a in argv],
            returncode=returncode,
            stderr=stderr,
        )
    return GitResult(returncode, out, stderr)


_GH_CODE = re.compile(r"\bGH\d{3}\b[^\n]{0,160}")
_REFUSAL = re.compile(r"\[(?:remote )?rejected\][^\n(]*\(([^)\n]{1,160})\)")


def push_refusal_summary(error: str) -> str:
    """A short, printable digest of why a remote refused a push: GitHub's ``GHnnn`` lines
    and git's ``[rejected] … (reason)`` reasons, never the raw output."""
    found = [m.group(0).strip() for m in _GH_CODE.finditer(error)]
    found += [m.group(1).strip() for m in _REFUSAL.finditer(error)]
    text = "; ".join(dict.fromkeys(found)) or "no reason given"
    return "".join(c for c in text if c.isprintable())[:400]


def _rejected(stderr: str) -> bool:
    return any(marker in stderr for marker in _REJECTED)
