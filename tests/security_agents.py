"""Escape attempts, run as the agent through the ``script`` runner (issue 7, SPEC §6).

Each probe is a small Python program. It tries something an attacker inside the sandbox would
try, records what happened as ``name = outcome`` (``ok``, ``ok:<value>`` or ``error:<ERRNO>``),
prints every finding as a log line, writes them all to ``/workspace/security/<probe>.json`` (so
the run's diff and PR show them) and prints one ``FINDINGS <json>`` line the tests parse.

``security_profiles(ports)`` turns them into profiles (``bosun:sec-<name>``); ``ports`` are the
host's loopback services the network probe must fail to reach.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from sandboxes.base import LABEL_MANAGED, owner_run
from tests.emulator.client import EmulatorClient
from tests.emulator.server import EmulatorServer
from tests.emulator.world import WebhookReceiver, World, make_source_repo
from tests.services import REDIS_URL, docker_client, missing
from tests.stack import (
    AGENT_IMAGE,
    PROFILES,
    WORK_ROOT,
    BosunStack,
    free_port,
    make_stack_settings,
    running_stack,
)

# Limits of the security stack: small, so the bombs hit them fast.
MEMORY = "256m"
PIDS = 128
TMPFS = "64m"
OUTPUT_LIMIT = 64 * 1024
LOOP_TIMEOUT = 10  # seconds, for the profiles that never end on their own

PRELUDE = r"""
import errno, json, os, socket, subprocess, sys
FINDINGS = {}

def outcome(fn):
    try:
        value = fn()
    except socket.gaierror as exc:
        return "error:gaierror:" + str(exc)
    except OSError as exc:
        return "error:" + errno.errorcode.get(exc.errno or 0, str(exc.errno))
    except Exception as exc:
        return "error:" + type(exc).__name__
    return "ok" if value is None else "ok:" + str(value)

def record(name, value):
    FINDINGS[name] = value
    print("finding", name, "=", value, flush=True)

def run(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except OSError as exc:
        return "error:" + errno.errorcode.get(exc.errno or 0, str(exc.errno))
    text = (done.stdout + done.stderr).strip().replace("\n", " | ")[:200]
    return ("ok:" if done.returncode == 0 else f"exit {done.returncode}:") + text

def finish(probe):
    os.makedirs("/workspace/security", exist_ok=True)
    with open(f"/workspace/security/{probe}.json", "w") as handle:
        json.dump(FINDINGS, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print("FINDINGS " + json.dumps(FINDINGS, sort_keys=True), flush=True)
"""

NETWORK = r"""
def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(address)

record("interfaces", sorted(os.listdir("/sys/class/net")))
record("dns", outcome(lambda: socket.getaddrinfo("github.com", 443)))
for port in sorted({int(p) for p in sys.argv[1:]}):
    record(f"tcp:127.0.0.1:{port}", outcome(lambda: connect(socket.AF_INET, ("127.0.0.1", port))))
    record(f"tcp:[::1]:{port}", outcome(lambda: connect(socket.AF_INET6, ("::1", port, 0, 0))))
record("tcp:1.1.1.1:443", outcome(lambda: connect(socket.AF_INET, ("1.1.1.1", 443))))
record("tcp:172.17.0.1:2375", outcome(lambda: connect(socket.AF_INET, ("172.17.0.1", 2375))))
record("udp:9.9.9.9:53", outcome(
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("9.9.9.9", 53))
))
for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
    record(f"socket:{path}", outcome(lambda: os.stat(path)))
finish("network")
"""

SECRETS = r"""
def read(path):
    with open(path, "rb") as handle:
        return handle.read().decode(errors="replace")

record("pid1_environ", outcome(lambda: read("/proc/1/environ").replace("\0", " ")))
record("own_environ", json.dumps(dict(os.environ), sort_keys=True))
others = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        with __import__("contextlib").suppress(OSError):
            others[pid] = read(f"/proc/{pid}/environ").replace("\0", " ")
record("all_environ", " ".join(others.values()))
record("bosun_dir", outcome(lambda: sorted(os.listdir("/bosun"))))
record("bosun_gw", outcome(lambda: sorted(os.listdir("/bosun-gw"))))
record("git_config", outcome(lambda: read("/workspace/.git/config")))
record("git_config_list", run(["git", "-C", "/workspace", "config", "--list", "--show-origin"]))
home = os.path.expanduser("~")
record("home", outcome(lambda: sorted(os.listdir(home))))
for name in (".git-credentials", ".gitconfig", ".netrc", ".docker/config.json"):
    record(f"home:{name}", outcome(lambda: read(os.path.join(home, name))))
git_files = {}
for root, dirs, files in os.walk("/workspace/.git"):
    dirs[:] = [d for d in dirs if d != "objects"]
    for name in files:
        with __import__("contextlib").suppress(OSError):
            git_files[os.path.join(root, name)] = read(os.path.join(root, name))[:100000]
record("git_text", " ".join(git_files.values()))
mounts = []
for line in read("/proc/self/mountinfo").splitlines():
    fields = line.split()
    fstype = fields[fields.index("-") + 1]
    if "rw" in fields[5].split(","):
        mounts.append(f"{fields[4]} {fstype}")
record("writable_mounts", sorted(set(mounts)))
finish("secrets")
"""

WRITES = r"""
marker = sys.argv[1]
def write(path):
    with open(path, "w") as handle:
        handle.write("escaped\n")

for path in ("/etc/" + marker, "/usr/" + marker, "/" + marker, "/workspace/../" + marker,
             "/bosun/" + marker, "/sys/fs/cgroup/" + marker, "/proc/sysrq-trigger",
             "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max",
             "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"):
    record(f"write:{path}", outcome(lambda: write(path)))
record("write:/tmp", outcome(lambda: write("/tmp/" + marker)))
record("read:/tmp", outcome(lambda: open("/tmp/" + marker).read().strip()))
record("chmod:/etc/passwd", outcome(lambda: os.chmod("/etc/passwd", 0o666)))
os.makedirs("/workspace/security", exist_ok=True)
os.symlink("/etc/shadow", "/workspace/security/host-shadow")
os.symlink("/proc/1/root/etc/hostname", "/workspace/security/pid1-root")
finish("writes")
"""

PRIVILEGE = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long

def ptrace_attach(pid):
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.waitpid(pid, 0)
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return "attached"

status = dict(
    line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line
)
for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    record(f"status:{key}", status[key].strip())
record("uid", os.getuid())
record("uid_map", open("/proc/self/uid_map").read().split())
record("mount", run(["mount", "-t", "tmpfs", "none", "/mnt"]))
record("remount_root_rw", run(["mount", "-o", "remount,rw", "/"]))
record("unshare_user", run(["unshare", "-U", "true"]))
record("unshare_map_root", run(["unshare", "-Ur", "id", "-u"]))
record("unshare_mount", run(["unshare", "-m", "true"]))
record("chroot", outcome(lambda: os.chroot("/tmp")))
record("setuid0", outcome(lambda: os.setuid(0)))
record("setpriv_root", run(["setpriv", "--reuid=0", "--regid=0", "--clear-groups", "id", "-u"]))
record("su_root", run(["su", "-c", "id -u", "root"]))
record("nsenter_pid1", run(["nsenter", "-t", "1", "-m", "-u", "-n", "true"]))
record("ptrace_pid1", outcome(lambda: ptrace_attach(1)))

class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def vm_read(pid, address):
    into = ctypes.create_string_buffer(11)
    local, remote = IOVec(ctypes.addressof(into), 11), IOVec(address, 11)
    if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return into.raw.decode()

def mem_read(pid, address):
    with open(f"/proc/{pid}/mem", "rb") as handle:
        handle.seek(address)
        return handle.read(11).decode()

# A process of the same user holding a secret, as a gate would be to a process left behind.
ready, report = os.pipe()
sibling = os.fork()
if sibling == 0:
    held = ctypes.create_string_buffer(b"gate-secret")
    os.write(report, str(ctypes.addressof(held)).encode())
    __import__("time").sleep(60)
    os._exit(0)
address = int(os.read(ready, 64))
record("ptrace_sibling", outcome(lambda: ptrace_attach(sibling)))
record("process_vm_readv_sibling", outcome(lambda: vm_read(sibling, address)))
record("proc_mem_sibling", outcome(lambda: mem_read(sibling, address)))
os.kill(sibling, 9)
os.waitpid(sibling, 0)
record("mknod", outcome(lambda: os.mknod("/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0))))
record("dmesg", run(["dmesg"]))
finish("privilege")
"""

FORK_BOMB = r"""
import signal, time
children, refused, started = [], None, time.monotonic()
while time.monotonic() - started < 20:
    try:
        pid = os.fork()
    except OSError as exc:
        refused = errno.errorcode.get(exc.errno, str(exc.errno))
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
record("forked_before_refusal", len(children))
record("fork_error", refused)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
finish("forkbomb")
sys.stdout.flush()
# A shell fork bomb churns until the run's time limit ends it. The agent itself (this process)
# waits without forking: a shell parent would die of its own refused fork, ending the run early.
if os.fork() == 0:
    os.execvp("sh", ["sh", "-c", "bomb() { bomb | bomb & }; bomb"])
time.sleep(1000)
"""

MEMORY_BOMB = r"""
blocks = []
for i in range(64):
    blocks.append(b"x" * (32 << 20))
    print("allocated", (i + 1) * 32, "MiB", flush=True)
finish("memory")
"""

DISK_FLOOD = r"""
def flood(path, mib):
    written = 0
    try:
        with open(path, "wb") as handle:
            chunk = b"\0" * (1 << 20)
            for _ in range(mib):
                handle.write(chunk)
                written += 1
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return f"error:{errno.errorcode.get(exc.errno, exc.errno)} after {written} MiB"
    return f"ok:{written} MiB"

record("tmp", flood("/tmp/flood.bin", 200))
os.remove("/tmp/flood.bin")
# Into the workspace at about 80 MiB/s, up to 400 MiB, then wait: the quota must stop it first.
with open("/workspace/flood.bin", "wb") as handle:
    for mib in range(8, 401, 8):
        handle.write(b"\1" * (8 << 20))
        handle.flush()
        os.fsync(handle.fileno())
        print("wrote", mib, "MiB", flush=True)
        __import__("time").sleep(0.1)
__import__("time").sleep(60)
finish("disk")
"""

BINARY = r"""
os.makedirs("/workspace/assets", exist_ok=True)
with open("/workspace/assets/model.bin", "wb") as handle:
    handle.write(os.urandom(8 << 20))
open("/workspace/notes.txt", "w").write("a small text change\n")
finish("binary")
"""

TEXT_FLOOD = r"""
with open("/workspace/flood.txt", "w") as handle:
    for i in range(int(sys.argv[1])):
        handle.write(f"flood line {i} of generated text\n")
finish("textflood")
"""

OUTPUT_FLOOD = r"""
line = "y" * 1023 + "\n"
for _ in range(5000):
    sys.stdout.write(line)
sys.stdout.flush()
record("printed_bytes", 5000 * 1024)
finish("output")
"""

ENDLESS_LOOP = r"""
record("step", "wrote partial work, now looping forever")
finish("loop")
while True:
    pass
"""

LINGER = r"""
import os, time
open("/workspace/innocent.txt", "w").write("an innocent change\n")
if os.fork() == 0:  # a detached process that would outlive the agent and write late
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    time.sleep(1)  # long after the agent's turn: by then Bosun reads or has read the tree
    os.makedirs("/workspace/.github/workflows", exist_ok=True)
    with open("/workspace/.github/workflows/late.yml", "w") as handle:
        handle.write("on: push\njobs: {}\n")
    with open("/workspace/late-secret.py", "w") as handle:
        handle.write('TOKEN = "ghp_' + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8" + '"\n')
    os._exit(0)
print("agent: done, one process left behind", flush=True)
"""

SLEEPER = ["sh", "-c", "echo sandbox-ready; sleep 300"]

SECRET_FILES = r"""
import pathlib
key = pathlib.Path("/workspace/deploy/id_rsa")
key.parent.mkdir(parents=True, exist_ok=True)
key.write_text(
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi8pf4+eXMPkdV1+P0vcvbmPCrY\n"
    "-----END RSA PRIVATE KEY-----\n"
)
settings = pathlib.Path("/workspace/src/settings.py")
settings.write_text(
    "DEBUG = False\n"
    "TIMEOUT = 30\n"
    'SIGNING_SECRET = "q8Zr2Lx9Vw4Tn7Kp3Hs6Jd1Fb5Gm0YcR2"\n'
)
print("wrote a key and a settings file")
"""


def _probe(body: str, *args: str, timeout: int | None = None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "runner": "script",
        "command": ["python3", "-c", PRELUDE + body, *args],
    }
    if timeout is not None:
        profile["timeout"] = timeout
    return profile


def security_profiles(ports: list[int], marker: str) -> dict[str, dict[str, Any]]:
    """The escape-attempt profiles; ``ports`` are host loopback services, ``marker`` a unique
    file name the write probe tries to plant outside the workspace."""
    return {
        "sec-sleep": {
            "runner": "script",
            "command": SLEEPER,
            "upstreams": ["https://api.anthropic.com"],  # so the model gateway is mounted too
        },
        "sec-network": _probe(NETWORK, *map(str, ports)),
        "sec-secrets": _probe(SECRETS),
        "sec-writes": _probe(WRITES, marker),
        "sec-privilege": _probe(PRIVILEGE),
        "sec-forkbomb": _probe(FORK_BOMB, timeout=LOOP_TIMEOUT),
        "sec-memory": _probe(MEMORY_BOMB),
        "sec-disk": _probe(DISK_FLOOD),
        "sec-binary": _probe(BINARY),
        "sec-textflood": _probe(TEXT_FLOOD, "60000"),
        "sec-output": _probe(OUTPUT_FLOOD),
        "sec-loop": _probe(ENDLESS_LOOP, timeout=LOOP_TIMEOUT),
        "sec-secret-files": {"runner": "script", "command": ["python3", "-c", SECRET_FILES]},
        "sec-linger": {"runner": "script", "command": ["python3", "-c", LINGER]},
    }


def findings(stack: BosunStack, run_id: str) -> dict[str, Any]:
    """The ``FINDINGS`` a probe printed, from the run's log events."""
    for event in stack.events(run_id, "log"):
        line = str(event["data"].get("line", ""))
        if line.startswith("FINDINGS "):
            result: dict[str, Any] = json.loads(line[len("FINDINGS ") :])
            return result
    lines = [e["data"].get("line") for e in stack.events(run_id)]
    raise AssertionError(f"run {run_id} printed no findings; events: {lines}")


def log_lines(stack: BosunStack, run_id: str) -> list[str]:
    return [str(e["data"].get("line", "")) for e in stack.events(run_id, "log")]


DONE = {"review_ready", "failed", "cancelled", "timed_out"}


@dataclass
class SecurityStack:
    stack: BosunStack
    marker: str
    """File name the write probe tries to plant outside the workspace."""
    ports: list[int]
    """Host loopback ports the network probe must fail to reach."""
    planted: dict[str, str]
    """Secrets placed in the worker's environment; none may reach a sandbox."""
    github: EmulatorServer
    """The in-process GitHub emulator, for what only GitHub sees (the tokens it minted)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Finished probe runs by profile, so two tests can read one run."""

    def start(self, profile: str) -> int:
        """Open an issue and label it ``bosun:<profile>``; returns the issue number."""
        stack = self.stack
        number = stack.emulator.create_issue(stack.repo, f"Probe {profile}", "x", "alice")
        stack.label(number, f"bosun:{profile}")
        return number

    def run_for(self, number: int, states: set[str], timeout: float = 90) -> dict[str, Any]:
        """The run of issue ``number`` once it is in one of ``states``."""

        def find() -> dict[str, Any] | None:
            for run in self.stack.runs():
                if str(run["branch"]).startswith(f"bosun/{number}-") and run["state"] in states:
                    return run
            return None

        return self.stack.wait_for(find, timeout, f"issue #{number}'s run in {states}")

    def probe(self, profile: str, timeout: float = 90) -> dict[str, Any]:
        """Run ``profile`` as the agent to its end (cached per profile)."""
        if profile not in self.cache:
            self.cache[profile] = self.run_for(self.start(profile), DONE, timeout)
        run: dict[str, Any] = self.cache[profile]
        return run

    def minted_tokens(self) -> list[Any]:
        """Every installation token GitHub minted for Bosun so far."""
        store = self.github.app.ctx.store
        with store.lock:
            return list(store.tokens.values())

    def branches(self) -> list[str]:
        return list(self.stack.state()["branches"])

    def settled(self, run_id: str) -> None:
        """Wait until the run's sandbox (fresh or taken from the warm pool) and workspace are
        gone from the host."""
        client = docker_client()
        runs_dir = self.stack.settings.sandbox.workdir / "runs" / run_id
        try:
            self.stack.wait_for(
                lambda: not run_containers(client, run_id) and not runs_dir.exists(),
                30,
                "the run's sandbox and workspace to be removed",
            )
        finally:
            client.close()


def run_containers(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The containers (listing entries) of ``run_id``: labelled with it, or claimed by it from a
    warm pool (``sandboxes.base.owner_run``)."""
    found: list[dict[str, Any]] = client.api.containers(
        all=True, filters={"label": f"{LABEL_MANAGED}=true"}
    )
    return [
        entry
        for entry in found
        if owner_run(entry.get("Labels") or {}, (entry.get("Names") or [""])[0]) == run_id
    ]


def require_agent_image() -> None:
    client = docker_client()
    try:
        client.images.get(AGENT_IMAGE)
    except Exception as exc:  # noqa: BLE001
        missing(AGENT_IMAGE, f"{exc} (build it with sandboxes/images/build.sh)")
    finally:
        client.close()


@contextlib.contextmanager
def emulated_github(root: Path) -> Iterator[tuple[World, EmulatorServer]]:
    """What the ``github_world`` fixture builds, for a module-scoped stack: an emulator with the
    App installed on ``octo/hello``, ``alice`` (write) and ``mallory`` (read)."""
    server = EmulatorServer(root / "emulator").start()
    emulator = EmulatorClient(server.base_url)
    try:
        source = make_source_repo(
            root / "source", {"README.md": "# Hello\n", "src/app.py": "print('hi')\n"}
        )
        app = emulator.create_app("", "webhook-secret")
        repo = emulator.create_repo("octo", "hello", str(source))
        emulator.add_user("alice", "octo/hello", "write")
        emulator.add_user("mallory", "octo/hello", "read")
        yield World(emulator, app, repo, WebhookReceiver(url=""), source), server
    finally:
        emulator.close()
        server.stop()


@contextlib.contextmanager
def redis_namespace() -> Iterator[str]:
    namespace = f"test-sec-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing("Redis", f"{REDIS_URL}: {exc} (run scripts/bootstrap.sh test)")
    try:
        yield namespace
    finally:
        keys = [*client.scan_iter(f"{namespace}:*"), *client.scan_iter(f"arq:*{namespace}*")]
        if keys:
            client.delete(*keys)
        client.close()


@contextlib.contextmanager
def security_stack(
    root: Path,
    profiles: dict[str, dict[str, Any]] | None = None,
    *,
    worker: dict[str, Any] | None = None,
    **sandbox: Any,
) -> Iterator[SecurityStack]:
    """A Bosun stack (own emulator, Redis namespace and workspace root) with the escape-attempt
    profiles (and ``profiles``) and small sandbox limits; ``sandbox`` overrides settings of that
    group.

    Model-API keys and a GitHub token are planted in the worker's environment so the tests can
    show that no value of the host environment reaches a sandbox."""
    require_agent_image()
    WORK_ROOT.mkdir(mode=0o755, exist_ok=True)
    work_root = WORK_ROOT / f"sec-{uuid.uuid4().hex[:8]}"
    work_root.mkdir(mode=0o755)
    planted = {
        "ANTHROPIC_API_KEY": f"sk-ant-hostonly-{uuid.uuid4().hex}",
        "OPENAI_API_KEY": f"sk-proj-hostonly-{uuid.uuid4().hex}",
        "GITHUB_TOKEN": f"ghp_{uuid.uuid4().hex}{uuid.uuid4().hex[:4]}",
    }
    saved = {name: os.environ.get(name) for name in planted}
    try:
        with emulated_github(root) as (world, server), redis_namespace() as namespace:
            port = free_port()
            emulator_port = int(world.emulator.base_url.rsplit(":", 1)[1])
            ports = [6379, 5432, 8000, port, emulator_port]
            marker = f"bosun-escape-{uuid.uuid4().hex[:8]}"
            world.emulator.create_app(f"http://127.0.0.1:{port}/webhooks/github", "webhook-secret")
            limits = {
                "memory": MEMORY,
                "pids": PIDS,
                "tmpfs_size": TMPFS,
                "output_limit_bytes": OUTPUT_LIMIT,
                "timeout_seconds": 120,
                **sandbox,
            }
            settings = make_stack_settings(
                root,
                world,
                REDIS_URL,
                namespace,
                work_root,
                port,
                profiles={**PROFILES, **security_profiles(ports, marker), **(profiles or {})},
                sandbox=limits,
                worker=worker or {},
            )
            os.environ.update(planted)
            with running_stack(settings, world, port) as stack:
                yield SecurityStack(stack, marker, ports, planted, server)
    finally:
        # The stack's shutdown can leave a Redis connection of its closed loop behind (see
        # docs/security.md, "Test harness notes"): collect it here rather than in a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(work_root, ignore_errors=True)
