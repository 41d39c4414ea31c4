"""End to end: the setup phase installs a Python project's dependency through the egress proxy,
from a package index on loopback, into the run's sandbox; the agent's change passes the test
gate with it; a host off the allowlist is denied and listed on the PR and the check run; the
agent phase has no network at all; the repository's dependency cache makes its next run's
install skip the download, and another repository's run never sees that cache.

Bosun web + worker + real Redis + real Docker + the GitHub emulator over loopback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from tests.agent_probes import PRELUDE
from tests.modelstubs import ModelScript, TextTurn, ToolTurn
from tests.modelstubs.anthropic import AnthropicStub
from tests.modelstubs.server import running
from tests.package_index import (
    GoModule,
    GoProxy,
    NpmRegistry,
    PackageIndex,
    build_npm_package,
    build_wheel,
    go_proxy,
    npm_registry,
    package_index,
)
from tests.stack import BosunStack, StackPlace, open_stack
from tests.test_e2e_agents import KEY_ENV, REAL_KEY, agent_stack
from tests.tool_image import tool_image

WHEEL_PADDING = 3_000_000
"""Bytes of the wheel's incompressible padding: its download takes about 1.5 s at the
index's 2 MB/s, which the cache saves."""

APP = "def answer():\n    raise NotImplementedError\n"
TESTS = (
    "import unittest\n\nimport app\n\n\n"
    "class AnswerTest(unittest.TestCase):\n"
    "    def test_answer(self):\n"
    "        self.assertEqual(app.answer(), 42)\n"
)

# The agent: looks for any way out of the sandbox (none may work), then makes the change.
AGENT = (
    PRELUDE
    + r"""
attempt("proxy_port", lambda: socket.create_connection(("127.0.0.1", 8789), timeout=3))
attempt("proxy_socket", lambda: unix("/bosun-egress/egress.sock"))
attempt("internet", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3))
attempt("index", lambda: urllib.request.urlopen("INDEX_URL", timeout=3))
attempt("cache_write", lambda: open("/bosun-cache/pip/planted", "w"))
results["proxy_env"] = os.environ.get("HTTP_PROXY", "")
results["egress_dir"] = sorted(os.listdir("/bosun-egress"))
print("probes: " + json.dumps(results, sort_keys=True))
pathlib.Path("/workspace/app.py").write_text(
    "import bosun_dep\n\n\ndef answer():\n    return bosun_dep.VALUE\n"
)
"""
)


DENIED_PROBE = (
    "import socket; s = socket.create_connection(('127.0.0.1', 8789)); "
    "s.sendall(b'GET http://denied.example/ HTTP/1.1\\r\\nHost: denied.example\\r\\n\\r\\n'); "
    "print(s.recv(4096).decode()); raise SystemExit(1)"
)
"""A raw proxy request to a host off the allowlist, printing the proxy's answer; it fails, and
it is the last command, so the run goes on without anything left undone."""


def setup_config(index: PackageIndex) -> str:
    # pip caches only what it fetched over https, or from a --trusted-host (a mirror on http).
    install = (
        ".venv/bin/pip install --disable-pip-version-check --trusted-host 127.0.0.1 "
        f"--index-url {index.url} bosun-dep"
    )
    return (
        "setup:\n"
        "  - echo setup-uid=$(id -u) cache-files-before=$(find /bosun-cache -type f | wc -l)\n"
        "  - env | sort\n"
        "  - python3 -m venv .venv\n"
        f"  - {install}\n"
        f"  - {json.dumps(['python3', '-c', DENIED_PROBE])}\n"
        "gates:\n"
        "  - name: test\n"
        '    run: [".venv/bin/python", "-m", "unittest", "-v"]\n'
    )


def seed(stack: BosunStack, repo: str, index: PackageIndex) -> None:
    files = {
        ".github/bosun.yml": setup_config(index),
        ".gitignore": ".venv/\n",
        "app.py": APP,
        "test_app.py": TESTS,
    }
    stack.emulator.push(repo, "main", files, user="alice")


def run_once(stack: BosunStack, repo: str, title: str, seen: set[str]) -> dict[str, Any]:
    """Label a new issue of ``repo`` and wait for its run to end (``seen``: earlier runs)."""
    body = "Make answer() return the dependency's value."
    number = stack.emulator.create_issue(repo, title, body, "alice")
    stack.emulator.add_labels(repo, number, ["bosun"], "alice")
    ended = {"review_ready", "failed", "cancelled"}
    runs = stack.wait_run(ended, timeout=180, count=len(seen) + 1)
    run = next(r for r in runs if r["id"] not in seen)
    seen.add(run["id"])
    assert run["state"] == "review_ready", run
    return run


def pip_install(stack: BosunStack, run_id: str) -> tuple[float, int]:
    """The pip command's duration and the bytes the proxy brought in for it (index + files)."""
    (step,) = [
        e["data"]
        for e in stack.events(run_id, "progress")
        if e["data"].get("phase") == "setup" and e["data"].get("command") == 4
    ]
    assert step["exit_code"] == 0, step
    received = sum(
        e["data"]["bytes_in"]
        for e in stack.events(run_id, "egress")
        if e["data"]["allowed"] and e["data"]["host"] == "127.0.0.1"
    )
    return step["duration_s"], received


def check_run_of(stack: BosunStack, repo: str, head_sha: str) -> dict[str, Any]:
    owner, name = repo.split("/")

    def done() -> dict[str, Any] | None:
        checks = [
            c
            for c in stack.emulator.state(owner, name)["check_runs"]
            if c["name"] == "bosun" and c["head_sha"] == head_sha and c["status"] == "completed"
        ]
        return checks[-1] if checks else None

    return stack.wait_for(done, 30, "a completed check run on the PR head")


def test_setup_installs_through_the_proxy_and_the_cache_stays_per_repository(
    place: StackPlace,
) -> None:
    name, wheel = build_wheel("bosun-dep", "1.0", "VALUE = 42\n", padding=WHEEL_PADDING)
    with package_index({"bosun-dep": (name, wheel)}) as index:
        profiles = {
            "default": {
                "runner": "script",
                "command": ["python3", "-c", AGENT.replace("INDEX_URL", index.url)],
            }
        }
        with open_stack(
            *place,
            profiles=profiles,
            egress={"allow": [f"127.0.0.1:{index.port}"], "private_hosts": ["127.0.0.1"]},
            caches={"dir": place.work_root / "caches"},
            # Later runs usually take a warm pooled sandbox: its binds are the run's folders.
            sandbox={"pool_size": 1},
        ) as stack:
            seen: set[str] = set()
            seed(stack, stack.repo, index)
            first = run_once(stack, stack.repo, "Use the dependency", seen)
            assert index.sent[name] == 1

            # The PR is green: the gate imported what setup installed.
            events = stack.events(first["id"])
            gates = [e["data"] for e in events if e["kind"] == "gate_result"]
            assert gates == [gates[0]] and gates[0]["passed"] is True, gates
            pr = next(p for p in stack.state()["pulls"] if p["pull"]["head"] == first["branch"])
            assert pr["pull"]["draft"] is False
            check = check_run_of(stack, stack.repo, first["head_sha"])
            assert check["conclusion"] == "success"

            # The denied host: refused by the proxy, logged, named on the PR and the check run.
            egress = [e["data"] for e in stack.events(first["id"], "egress")]
            denied = [e for e in egress if not e["allowed"]]
            assert [(e["host"], e["port"], e["phase"]) for e in denied] == [
                ("denied.example", 80, "setup")
            ]
            assert denied[0]["reason"] == "not on the allowlist"
            allowed = [e for e in egress if e["allowed"]]
            assert allowed and all(e["host"] == "127.0.0.1" for e in allowed)
            assert sum(e["bytes_in"] for e in allowed) >= len(wheel)
            assert "`denied.example:80`" in pr["body"] and "Blocked network requests" in pr["body"]
            assert "`denied.example:80`" in check["output"]["summary"]
            assert "| setup | ❌ failed | command 5 of 5 (" in check["output"]["summary"]
            assert "exited 1; the run goes on" in check["output"]["summary"]
            # The failing last command is reported, and the run went on.
            setup_text = stack.artifacts(first["id"])["setup"].read_text()
            assert "refused denied.example:80: not on the allowlist" in setup_text
            assert " cache-files-before=0" in setup_text
            live = [e["data"] for e in events if e["kind"] == "log"]
            assert {"stream": "setup:stdout", "line": "setup-uid=1000 cache-files-before=0"} in live
            # Setup's environment: the proxy and the caches, and nothing of the worker's.
            assert "HTTPS_PROXY=http://127.0.0.1:8789" in setup_text
            assert "PIP_CACHE_DIR=/bosun-cache/pip" in setup_text
            for secret in ("webhook-secret", "PRIVATE KEY", "BOSUN_", "ghs_", "REDIS"):
                assert secret not in setup_text, secret
            assert any(e["kind"] == "log" and "command 5 of 5" in e["data"]["line"] for e in events)

            # The agent phase had no network: neither the proxy nor anything else.
            transcript = stack.artifacts(first["id"])["transcript"].read_text()
            line = next(x for x in transcript.splitlines() if x.startswith("probes: "))
            probes = json.loads(line.removeprefix("probes: "))
            assert probes["proxy_port"] == "ConnectionRefusedError", probes
            assert probes["proxy_socket"] in ("FileNotFoundError", "ConnectionRefusedError")
            assert probes["internet"] == "OSError", probes  # network unreachable
            assert probes["index"] == "URLError", probes
            assert probes["cache_write"] == "PermissionError", probes
            assert probes["proxy_env"] == ""
            assert "egress.sock" not in probes["egress_dir"]

            # The second run of the repository installs from its cache: no second download.
            second = run_once(stack, stack.repo, "Use the dependency again", seen)
            assert index.sent[name] == 1
            cold, cold_bytes = pip_install(stack, first["id"])
            warm, warm_bytes = pip_install(stack, second["id"])
            assert warm_bytes < len(wheel) <= cold_bytes
            print(
                f"pip install: cold {cold:.2f}s ({cold_bytes} B), warm {warm:.2f}s ({warm_bytes} B)"
            )
            assert " cache-files-before=0" not in stack.artifacts(second["id"])["setup"].read_text()

            # Another repository's run starts with an empty cache and downloads again.
            other = place.world.emulator.create_repo("octo", "other", str(place.world.source))
            place.world.emulator.add_user("alice", other.full_name, "write")
            seed(stack, other.full_name, index)
            third = run_once(stack, other.full_name, "Use the dependency elsewhere", seen)
            assert " cache-files-before=0" in stack.artifacts(third["id"])["setup"].read_text()
            assert index.sent[name] == 2
            _, other_bytes = pip_install(stack, third["id"])
            assert other_bytes >= len(wheel)


REGISTRY_AGENT = r"""
import os, pathlib, socket
s = socket.create_connection(("127.0.0.1", 8789), timeout=5)
s.sendall(b"GET INDEX_URL HTTP/1.1\r\nHost: index\r\n\r\n")
print("agent-proxy: " + s.recv(200).split(b"\r\n")[0].decode())
print("agent-env: %s %s" % (os.environ.get("HTTPS_PROXY"), os.environ.get("NO_PROXY")))
pathlib.Path("/workspace/fetched.txt").write_text("fetched\n")
"""
NO_PROXY_GATE = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', 8789), timeout=3)\n"
    "except OSError as exc:\n"
    "    print('gate: no proxy:', type(exc).__name__)\n"
    "else:\n"
    "    raise SystemExit('gate: the proxy answered')\n"
)


def test_a_profile_may_grant_the_agent_the_proxy_but_never_the_gates_and_devcontainers_run(
    place: StackPlace,
) -> None:
    name, wheel = build_wheel("bosun-dep", "1.0", "VALUE = 42\n")
    with package_index({"bosun-dep": (name, wheel)}) as index:
        agent = REGISTRY_AGENT.replace("INDEX_URL", index.url)
        profile = {"runner": "script", "command": ["python3", "-c", agent]}
        with open_stack(
            *place,
            profiles={"default": {**profile, "agent_network": "registries"}},
            egress={"allow": [f"127.0.0.1:{index.port}"], "private_hosts": ["127.0.0.1"]},
        ) as stack:
            config = "gates:\n  - name: offline\n    run: " + json.dumps(
                ["python3", "-c", NO_PROXY_GATE]
            )
            devcontainer = (
                "// no setup: key, so the dev container's create commands run\n"
                '{"image": "ignored", "postCreateCommand": ["sh", "-c", "echo from-$((6*7))"],}\n'
            )
            files = {".github/bosun.yml": config, ".devcontainer/devcontainer.json": devcontainer}
            stack.emulator.push(stack.repo, "main", files, user="alice")
            run = run_once(stack, stack.repo, "Fetch through the proxy", set())
            assert "from-42" in stack.artifacts(run["id"])["setup"].read_text()
            transcript = stack.artifacts(run["id"])["transcript"].read_text()
            assert "agent-proxy: HTTP/1.0 200 OK" in transcript, transcript
            assert "agent-env: http://127.0.0.1:8789 127.0.0.1,localhost,::1" in transcript
            egress = [e["data"] for e in stack.events(run["id"], "egress")]
            assert [(e["phase"], e["host"], e["allowed"]) for e in egress] == [
                ("agent", "127.0.0.1", True)
            ]
            (gate,) = stack.events(run["id"], "gate_result")
            assert gate["data"]["passed"] is True, stack.artifacts(run["id"])["gate:offline"]
            assert b"gate: no proxy" in stack.artifacts(run["id"])["gate:offline"].read_bytes()


GATEWAY_PROBE = (
    "import socket\n"
    "for name, address, family in (\n"
    "    ('socket', '/bosun-gw/gateway.sock', socket.AF_UNIX),\n"
    "    ('port', ('127.0.0.1', 8788), socket.AF_INET),\n"
    "):\n"
    "    s = socket.socket(family)\n"
    "    try:\n"
    "        s.connect(address)\n"
    "        print('setup-gateway', name, 'open')\n"
    "    except OSError as exc:\n"
    "        print('setup-gateway', name, type(exc).__name__)\n"
)


def test_setup_cannot_reach_the_model_gateway_and_the_agent_then_can(
    place: StackPlace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, REAL_KEY)
    script = ModelScript(
        [
            ToolTurn("Write", {"file_path": "/workspace/hello.txt", "content": "hello\n"}),
            TextTurn("I created hello.txt."),
        ]
    )
    with (
        running(AnthropicStub(script)) as stub_url,
        agent_stack(place, stub_url, 5.0) as stack,
    ):
        config = "setup:\n  - " + json.dumps(["python3", "-c", GATEWAY_PROBE]) + "\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        number = stack.emulator.create_issue(stack.repo, "Say hello", "Add hello.txt", "alice")
        stack.label(number, "bosun:agent")
        (run,) = stack.wait_run({"review_ready", "failed"}, timeout=180)
        assert run["state"] == "review_ready", run
        setup_text = stack.artifacts(run["id"])["setup"].read_text()
        assert "setup-gateway socket FileNotFoundError" in setup_text, setup_text
        assert "setup-gateway port ConnectionRefusedError" in setup_text, setup_text
        assert [r for r in script.requests if r["path"] == "/v1/messages"]  # the agent's


def test_a_broken_devcontainer_runs_nothing_and_says_why(stack: BosunStack) -> None:
    broken = '{"postCreateCommand": ["pip", 3]}'
    files = {".devcontainer/devcontainer.json": broken}
    stack.emulator.push(stack.repo, "main", files, user="alice")
    run = run_once(stack, stack.repo, "Edit", set())
    (decision,) = [
        e["data"] for e in stack.events(run["id"], "policy") if e["data"]["rule"] == "setup"
    ]
    assert decision["decision"] == "skip"
    assert "postCreateCommand must be a string or a non-empty array" in decision["message"]
    assert "setup" not in stack.artifacts(run["id"])  # nothing ran
    check = check_run_of(stack, stack.repo, run["head_sha"])
    assert (
        "| setup | ❌ failed | .devcontainer/devcontainer.json postCreateCommand"
        in (check["output"]["summary"])
    )


# --- uv, npm and Go: the caches Python (uv), Node (npm) and Go projects rely on -------------

UV_PROJECT = """[project]
name = "fixture"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["bosun-dep"]

[[tool.uv.index]]
name = "loopback"
url = "INDEX_URL"
default = true
"""
NODE_MAIN = "module.exports = () => require('bosun-npm-dep');\n"
NODE_GATE = "const assert = require('assert'); assert.strictEqual(require('./index.js')(), 42);"
GO_MODULE = "example.com/bosundep"
GO_MAIN = """package main

import (
	"fmt"

	"example.com/bosundep"
)

func main() { fmt.Println(bosundep.Value) }
"""
GO_TEST = """package main

import (
	"testing"

	"example.com/bosundep"
)

func TestValue(t *testing.T) {
	if bosundep.Value != 42 {
		t.Fatal(bosundep.Value)
	}
}
"""

# The agent: reinstalls or builds all three from the (read-only) caches alone, then tries to
# change what the repository's cache holds; uv's folder is this run's to write, nothing in it
# the repository's.
TOOLS_AGENT = (
    PRELUDE
    + r"""
def run(name, *argv):
    env = {**os.environ, "GOPROXY": "off"}
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/workspace", env=env)
    results[name] = done.returncode
    print(name, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
subprocess.run(["rm", "-rf", ".venv", "node_modules"], check=True, cwd="/workspace")
run("uv_sync", "uv", "sync", "--offline")
run("uv_run", "uv", "run", "--offline", "python", "-c", "import bosun_dep; print(bosun_dep.VALUE)")
run("npm_ci", "npm", "ci", "--offline", "--no-audit", "--no-fund")
run("go_build", "go", "build", "-o", "/tmp/fixture", ".")
module = first("/bosun-cache/uv/archive-v*/*/bosun_dep/__init__.py")
attempt("uv_file_write", lambda: open(module, "a").write("VALUE = 666\n"))
def replace():
    os.unlink(module)
    pathlib.Path(module).write_text("VALUE = 666\n")
attempt("uv_file_replace", replace)
blob = first("/bosun-cache/npm/_cacache/content-v2/**")
attempt("npm_file_write", lambda: open(blob, "a").write("x"))
attempt("npm_new_file", lambda: open("/bosun-cache/npm/planted", "w"))
source = first("/bosun-cache/go/mod/example.com/bosundep@*/dep.go")
attempt("go_file_write", lambda: open(source, "a").write("const Evil = 1\n"))
attempt("go_new_file", lambda: open("/bosun-cache/go/mod/planted", "w"))
attempt("pip_new_file", lambda: open("/bosun-cache/pip/planted", "w"))
print("probes: " + json.dumps(results, sort_keys=True))
pathlib.Path("/workspace/app.py").write_text(
    "import bosun_dep\n\n\ndef answer():\n    return bosun_dep.VALUE\n"
)
"""
)


@dataclass
class Registries:
    """What the tools install from: a PEP 503 index (uv), an npm registry, a Go module proxy."""

    index: PackageIndex
    npm: NpmRegistry
    go: GoProxy
    go_module: GoModule

    @property
    def hosts(self) -> list[str]:
        return [
            f"127.0.0.1:{self.index.port}",
            f"127.0.0.1:{self.npm.port}",
            f"{self.go.host}:{self.go.port}",
        ]


def tools_config(registries: Registries) -> str:
    gates = [
        ("python", ["uv", "run", "--offline", "python", "-m", "unittest", "-v"]),
        ("node", ["sh", "-c", f'npm ci --offline --no-audit --no-fund && node -e "{NODE_GATE}"']),
        ("go", ["sh", "-c", "GOPROXY=off go test ./..."]),
    ]
    return (
        "setup:\n"
        "  - echo cache-files-before=$(find /bosun-cache -type f | wc -l)\n"
        "  - uv sync\n"
        "  - npm ci --no-audit --no-fund\n"
        f"  - GOPROXY={registries.go.url} GOSUMDB=off go mod download\n"
        "gates:\n"
        + "".join(f"  - name: {name}\n    run: {json.dumps(argv)}\n" for name, argv in gates)
    )


def seed_tools(stack: BosunStack, repo: str, registries: Registries) -> None:
    npm = registries.npm
    dependencies = {"bosun-npm-dep": "1.0.0"}
    lock = {
        "name": "fixture",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "fixture", "version": "1.0.0", "dependencies": dependencies},
            "node_modules/bosun-npm-dep": npm.lock_entry("bosun-npm-dep"),
        },
    }
    package = {"name": "fixture", "version": "1.0.0", "dependencies": dependencies}
    module = registries.go_module
    go_mod = f"module example.com/fixture\n\ngo 1.19\n\nrequire {module.path} {module.version}\n"
    files = {
        ".github/bosun.yml": tools_config(registries),
        ".gitignore": ".venv/\nnode_modules/\nuv.lock\n",
        "pyproject.toml": UV_PROJECT.replace("INDEX_URL", registries.index.url),
        "package.json": json.dumps(package, indent=2) + "\n",
        "package-lock.json": json.dumps(lock, indent=2) + "\n",
        ".npmrc": f"registry={npm.url}\n",
        "index.js": NODE_MAIN,
        "go.mod": go_mod,
        "go.sum": module.go_sum(),
        "main.go": GO_MAIN,
        "main_test.go": GO_TEST,
        "app.py": APP,
        "test_app.py": TESTS,
    }
    stack.emulator.push(repo, "main", files, user="alice")


def setup_step(stack: BosunStack, run_id: str, command: int, port: int) -> tuple[float, int]:
    """Setup command ``command``'s duration, and the bytes the proxy brought in from ``port``."""
    (step,) = [
        e["data"]
        for e in stack.events(run_id, "progress")
        if e["data"].get("phase") == "setup" and e["data"].get("command") == command
    ]
    assert step["exit_code"] == 0, (step, stack.artifacts(run_id)["setup"].read_text())
    received = sum(
        e["data"]["bytes_in"]
        for e in stack.events(run_id, "egress")
        if e["data"]["allowed"] and e["data"]["port"] == port
    )
    return step["duration_s"], received


def test_uv_npm_and_go_install_through_the_proxy_and_work_offline_from_the_cache_afterwards(
    place: StackPlace,
) -> None:
    image = tool_image()
    padding = WHEEL_PADDING // 2
    name, wheel = build_wheel("bosun-dep", "1.0", "VALUE = 42\n", padding=padding)
    tarball = build_npm_package("bosun-npm-dep", "1.0.0", "module.exports = 42;\n", padding)
    module = GoModule(
        GO_MODULE,
        "v1.0.0",
        {
            "go.mod": f"module {GO_MODULE}\n\ngo 1.19\n".encode(),
            "dep.go": b"package bosundep\n\nconst Value = 42\n",
            "padding.bin": os.urandom(padding),
        },
    )
    tgz, zip_name = "bosun-npm-dep-1.0.0.tgz", f"{GO_MODULE}@v1.0.0.zip"
    with (
        package_index({"bosun-dep": (name, wheel)}) as index,
        npm_registry({"bosun-npm-dep": ("1.0.0", tarball)}) as npm,
        go_proxy([module]) as go,
    ):
        registries = Registries(index, npm, go, module)

        def downloads() -> tuple[int, int, int]:
            return index.sent[name], npm.sent[tgz], go.sent[zip_name]

        command = ["python3", "-c", TOOLS_AGENT]
        profiles = {"default": {"runner": "script", "command": command, "image": image}}
        private = ["127.0.0.1", go.host]
        caches = place.work_root / "caches"
        with open_stack(
            *place,
            profiles=profiles,
            egress={"allow": registries.hosts, "private_hosts": private},
            caches={"dir": caches},
        ) as stack:
            seen: set[str] = set()
            seed_tools(stack, stack.repo, registries)
            first = run_once(stack, stack.repo, "Use the dependency", seen)
            setup_text = stack.artifacts(first["id"])["setup"].read_text()
            assert "cache-files-before=0" in setup_text, setup_text
            assert downloads() == (1, 1, 1)
            ports = {"uv": (2, index.port), "npm": (3, npm.port), "go": (4, go.port)}
            cold = {tool: setup_step(stack, first["id"], *where) for tool, where in ports.items()}
            assert all(size >= padding for _, size in cold.values()), cold

            # The gates ran uv, npm and go offline on the read-only caches and passed.
            gates = {e["data"]["name"]: e["data"] for e in stack.events(first["id"], "gate_result")}
            assert set(gates) == {"python", "node", "go"}, gates
            for gate in gates:
                log = stack.artifacts(first["id"])[f"gate:{gate}"].read_text()
                assert gates[gate]["passed"] is True, log

            # The agent reinstalled and built from the caches alone; it could not change a
            # cached file, and what it replaced in uv's folder stayed in its own run.
            transcript = stack.artifacts(first["id"])["transcript"].read_text()
            line = next(x for x in transcript.splitlines() if x.startswith("probes: "))
            probes = json.loads(line.removeprefix("probes: "))
            assert probes == {
                "uv_sync": 0,
                "uv_run": 0,
                "npm_ci": 0,
                "go_build": 0,
                "uv_file_write": "PermissionError",
                "uv_file_replace": "open",
                "npm_file_write": "PermissionError",
                "npm_new_file": "PermissionError",
                "go_file_write": "PermissionError",
                "go_new_file": "PermissionError",
                "pip_new_file": "PermissionError",
            }, transcript
            (key,) = [p for p in caches.iterdir() if p.is_dir()]
            (published,) = (key / "current" / "uv").glob("archive-v*/*/bosun_dep/__init__.py")
            assert published.read_text() == "VALUE = 42\n"
            assert published.stat().st_uid == 0 and not published.stat().st_mode & 0o022

            # The second run: all three install from the cache (uv, whose lock files the first
            # run left, is not stopped by them).
            second = run_once(stack, stack.repo, "Use the dependency again", seen)
            assert downloads() == (1, 1, 1)
            warm = {tool: setup_step(stack, second["id"], *where) for tool, where in ports.items()}
            assert all(size < 10_000 for _, size in warm.values()), warm
            gates = {
                e["data"]["name"]: e["data"] for e in stack.events(second["id"], "gate_result")
            }
            assert len(gates) == 3 and all(gate["passed"] for gate in gates.values()), gates
            print(
                "; ".join(
                    f"{tool}: cold {cold[tool][0]:.2f}s ({cold[tool][1]} B), "
                    f"warm {warm[tool][0]:.2f}s ({warm[tool][1]} B)"
                    for tool in ports
                )
            )

            # Another repository's run sees none of it and downloads all three again.
            other = place.world.emulator.create_repo("octo", "other", str(place.world.source))
            place.world.emulator.add_user("alice", other.full_name, "write")
            seed_tools(stack, other.full_name, registries)
            third = run_once(stack, other.full_name, "Use the dependency elsewhere", seen)
            assert "cache-files-before=0" in stack.artifacts(third["id"])["setup"].read_text()
            assert downloads() == (2, 2, 2)


FLOOD_AGENT = r"""
import os, time
written = 0
with open("/bosun-cache/uv/flood.bin", "wb") as out:
    while written < 64:
        out.write(os.urandom(1 << 20))
        out.flush()
        written += 1
        print("wrote", written, flush=True)
        time.sleep(0.1)
print("flood: finished", flush=True)
"""


def test_the_agent_filling_uvs_writable_cache_is_stopped_like_a_full_workspace(
    place: StackPlace,
) -> None:
    """uv's folder of the run's copy is writable after setup, on the host's disk: the agent
    writing into it is stopped at the repository's cache cap, and nothing of it is kept."""
    profile = {"runner": "script", "command": ["python3", "-c", FLOOD_AGENT]}
    caches = place.work_root / "caches"
    with open_stack(
        *place,
        profiles={"default": profile},
        caches={"dir": caches, "max_bytes_per_repository": 8_000_000},
    ) as stack:
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": "setup:\n  - 'true'\n"})
        number = stack.emulator.create_issue(stack.repo, "Flood", "Fill the disk.", "alice")
        stack.emulator.add_labels(stack.repo, number, ["bosun"], "alice")
        (run,) = stack.wait_run({"review_ready", "failed", "cancelled"}, timeout=120)
        assert run["state"] == "failed", run
        reason = run["reason"]
        assert reason.startswith(
            "the dependency cache (uv, cargo/registry/index, cargo/git) grew past 8 MB (disk limit"
        ), reason
        assert "caches.max_bytes_per_repository" in reason and "nothing was pushed" in reason
        transcript = stack.artifacts(run["id"])["transcript"].read_text()
        assert "wrote 8" in transcript and "flood: finished" not in transcript, transcript
        (key,) = [p for p in caches.iterdir() if p.is_dir()]
        assert not list((key / "current").rglob("flood.bin"))  # published before the agent


PLANTING_AGENT = r"""
import os, pathlib, time
print("seen-planted=" + ("yes" if os.path.exists("/bosun-cache/pip/planted") else "no"))
pathlib.Path("/workspace/planted.txt").write_text(f"from the agent {time.time()}\n")
"""


def next_review_ready(stack: BosunStack, seen: set[str], what: str) -> dict[str, Any]:
    """The first review-ready run not in ``seen`` (added to it), waiting up to 180 s."""
    run = stack.wait_for(
        lambda: [r for r in stack.runs() if r["id"] not in seen and r["state"] == "review_ready"],
        180,
        what,
    )[0]
    seen.add(run["id"])
    return run


def test_setup_on_the_agents_branch_never_publishes_the_cache(
    place: StackPlace,
) -> None:
    """A retry continues the agent's branch, and setup runs that checkout's code (a build
    script, install hooks): what it leaves in the dependency cache stays in that run, never
    reaching the repository's later runs. Here setup copies a file the agent committed into
    the cache; a later run from the base branch must not see it."""
    setup = "if [ -f planted.txt ]; then cp planted.txt /bosun-cache/pip/planted; fi; echo ok"
    with (
        package_index({}) as index,
        open_stack(
            *place,
            profiles={
                "default": {"runner": "script", "command": ["python3", "-c", PLANTING_AGENT]}
            },
            egress={"allow": [f"127.0.0.1:{index.port}"], "private_hosts": ["127.0.0.1"]},
            caches={"dir": place.work_root / "caches"},
        ) as stack,
    ):
        config = f"setup:\n  - {json.dumps(setup)}\n"
        stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
        seen: set[str] = set()
        first = run_once(stack, stack.repo, "Plant", seen)
        pr = next(p for p in stack.state()["pulls"] if p["pull"]["head"] == first["branch"])
        stack.emulator.comment(stack.repo, pr["number"], "/retry once more", "alice")
        retried = next_review_ready(stack, seen, "the retried run review-ready")
        assert retried["branch"] == first["branch"]

        def planted_seen(run_id: str) -> str:
            transcript = stack.artifacts(run_id)["transcript"].read_text()
            return next(x for x in transcript.splitlines() if x.startswith("seen-planted="))

        assert planted_seen(retried["id"]) == "seen-planted=yes"  # its own copy only

        number = stack.emulator.create_issue(stack.repo, "Another issue", "Go on.", "alice")
        stack.emulator.add_labels(stack.repo, number, ["bosun"], "alice")
        later = next_review_ready(stack, seen, "the later run review-ready")
        assert planted_seen(later["id"]) == "seen-planted=no"
        logs = [e["data"]["line"] for e in stack.events(retried["id"], "log")]
        assert any("kept for this run only" in line for line in logs), logs
