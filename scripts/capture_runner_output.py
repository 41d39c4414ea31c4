"""Capture real agent CLI output for the runner parser fixtures (tests/fixtures/runners/).

    .venv/bin/python scripts/capture_runner_output.py [claude-code] [codex] [gemini] [opencode]

Each scenario runs the real CLI in the agent image (bosun-agent:latest) with the full sandbox
hardening, against a model stub from tests/modelstubs that runs inside the same sandbox on
127.0.0.1:8788 (the sandbox has no network; the stub is what the gateway's forwarder will be).
The prompt is mounted read-only at /bosun/prompt.md, as in a real run, and the command is the
adapter's own ``Invocation.command()``. stdout is written to
tests/fixtures/runners/<runner>/<scenario>.jsonl and captured.json records argv, environment,
exit codes and versions (COMMAND.md, written by hand, describes the scenarios). Every request
the stub received is printed to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.agents.runners import get_runner  # noqa: E402
from bot.profiles import ProfileConfig  # noqa: E402
from sandboxes.base import Sandbox, open_sandbox  # noqa: E402
from sandboxes.docker import DockerBackend  # noqa: E402
from sandboxes.spec import BindMount, SandboxSpec  # noqa: E402

IMAGE = os.environ.get("BOSUN_AGENT_IMAGE", "bosun-agent:latest")
PORT = 8788
GATEWAY = f"http://127.0.0.1:{PORT}"
PROMPT = "Create hello.txt containing the line 'hello', check it, then fix the greeting.\n"

WRITE = {"file_path": "/workspace/hello.txt", "content": "hello\n"}
EDIT = {"file_path": "/workspace/hello.txt", "old_string": "hello", "new_string": "hello, world"}
SCENARIOS: dict[str, dict[str, tuple[str, list[dict[str, object]], dict[str, object]]]] = {
    # scenario: (stub API, turns, profile overrides)
    "claude-code": {
        "edit_file": (
            "anthropic",
            [
                {"text": "I'll create the file.", "tool": "Write", "arguments": WRITE},
                {"tool": "Bash", "arguments": {"command": "cat hello.txt", "description": "Show"}},
                {"tool": "Edit", "arguments": EDIT},
                {"text": "Created hello.txt and changed the greeting to 'hello, world'."},
            ],
            {"model": "claude-sonnet-4-5", "max_turns": 10},
        ),
        "max_turns": (
            "anthropic",
            [
                {"tool": "Bash", "arguments": {"command": "ls", "description": "List"}},
                {"tool": "Bash", "arguments": {"command": "ls -a", "description": "List all"}},
                {"text": "never reached"},
            ],
            {"model": "claude-sonnet-4-5", "max_turns": 1},
        ),
    },
    "codex": {
        "shell_edit": (
            "openai",
            [
                {
                    "text": "Creating the file.",
                    "tool": "exec_command",
                    "arguments": {"cmd": "printf 'hello\\n' > hello.txt && cat hello.txt"},
                },
                {
                    "tool": "exec_command",
                    "arguments": {"cmd": "sed -i 's/hello/hello, world/' hello.txt && false"},
                },
                {"text": "Created hello.txt and changed the greeting to 'hello, world'."},
            ],
            {"model": "gpt-5-codex"},
        ),
        "api_error": (
            "openai",
            [{"error": 400, "message": "stub: model not allowed"}],
            {"model": "gpt-5-codex"},
        ),
    },
    "gemini": {
        "edit_file": (
            "gemini",
            [
                {
                    "text": "I'll create the file.",
                    "tool": "write_file",
                    "arguments": {"file_path": "/workspace/hello.txt", "content": "hello\n"},
                },
                {
                    "tool": "run_shell_command",
                    "arguments": {"command": "cat hello.txt", "description": "Show the file"},
                },
                {"tool": "read_file", "arguments": {"file_path": "/workspace/missing.txt"}},
                {
                    "tool": "replace",
                    "arguments": {
                        "file_path": "/workspace/hello.txt",
                        "old_string": "hello",
                        "new_string": "hello, world",
                        "instruction": "Change the greeting.",
                    },
                },
                {"text": "Created hello.txt and changed the greeting to 'hello, world'."},
            ],
            {"model": "gemini-2.5-pro"},
        ),
        "api_error": (
            "gemini",
            [{"error": 400, "message": "stub: model not allowed"}],
            {"model": "gemini-2.5-pro"},
        ),
    },
    "opencode": {
        "edit_file": (
            "anthropic",
            [
                {
                    "text": "I'll create the file.",
                    "tool": "write",
                    "arguments": {"filePath": "/workspace/hello.txt", "content": "hello\n"},
                },
                {"tool": "bash", "arguments": {"command": "cat hello.txt", "description": "Show"}},
                {"tool": "read", "arguments": {"filePath": "/workspace/missing.txt"}},
                {
                    "tool": "edit",
                    "arguments": {
                        "filePath": "/workspace/hello.txt",
                        "oldString": "hello",
                        "newString": "hello, world",
                    },
                },
                {"text": "Created hello.txt and changed the greeting to 'hello, world'."},
            ],
            {"model": "anthropic/claude-sonnet-4-5"},
        ),
        "api_error": (
            "anthropic",
            [{"error": 400, "message": "stub: model not allowed"}],
            {"model": "anthropic/claude-sonnet-4-5"},
        ),
    },
}


async def wait_for_stub(backend: DockerBackend, sandbox: Sandbox) -> None:
    probe = (
        "import socket,time\n"
        "for _ in range(100):\n"
        f"    try: socket.create_connection(('127.0.0.1', {PORT}), 1).close(); break\n"
        "    except OSError: time.sleep(0.1)\n"
        "else: raise SystemExit('stub did not start')\n"
    )
    (await backend.exec(sandbox, ["python3", "-c", probe], timeout=30)).check()


def stage(turns: list[dict[str, object]]) -> Path:
    """A scratch dir with ``workspace/`` and ``bosun/`` (stubs, turns, prompt)."""
    base = Path(tempfile.mkdtemp(prefix="bosun-capture-"))
    base.chmod(0o755)
    workspace, inputs = base / "workspace", base / "bosun"
    workspace.mkdir()
    inputs.mkdir()
    shutil.copytree(
        ROOT / "tests" / "modelstubs",
        inputs / "modelstubs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (inputs / "turns.json").write_text(json.dumps(turns))
    (inputs / "prompt.md").write_text(PROMPT)
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return base


async def capture(runner_name: str, scenario: str) -> tuple[list[str], str]:
    api, turns, overrides = SCENARIOS[runner_name][scenario]
    base = stage(turns)
    workspace, inputs = base / "workspace", base / "bosun"
    backend = DockerBackend()
    spec = SandboxSpec(
        run_id=f"capture-{uuid.uuid4().hex[:8]}",
        image=IMAGE,
        workspace=workspace,
        timeout_seconds=180,
        mounts=(BindMount(source=inputs, target="/bosun"),),
    )
    uid, gid = await backend.host_ids(spec)
    os.chown(workspace, uid, gid)
    runner = get_runner(runner_name)
    invocation = runner.invocation(
        ProfileConfig(runner=runner_name, **overrides), gateway_url=GATEWAY
    )  # type: ignore[arg-type]
    try:
        async with open_sandbox(backend, spec) as sandbox:
            serve = f"python3 -m modelstubs {api} --port {PORT} --script /bosun/turns.json"
            if runner_name == "opencode":  # it names the gateway's route: /anthropic/v1/...
                serve += f" --prefix /{api}"
            if api == "gemini":  # usage with cached and thinking tokens, as Gemini 2.5 reports
                serve += " --cached 50 --thoughts 25"
            stub = asyncio.create_task(
                backend.exec(
                    sandbox,
                    ["/bin/sh", "-c", f"exec {serve} 2>/tmp/stub.log"],
                    env={"PYTHONPATH": "/bosun", "PYTHONDONTWRITEBYTECODE": "1"},
                    timeout=170,
                )
            )
            await wait_for_stub(backend, sandbox)
            result = await backend.exec(
                sandbox, invocation.command(), env=invocation.env, workdir="/workspace"
            )
            version = await backend.exec(sandbox, [invocation.argv[0], "--version"])
            stub_log = (await backend.exec(sandbox, ["cat", "/tmp/stub.log"])).text()  # noqa: S108
            stub.cancel()
            await asyncio.gather(stub, return_exceptions=True)
    finally:
        await backend.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{runner_name}/{scenario}: exit {result.exit_code}", file=sys.stderr)
    print(result.stderr.decode(errors="replace")[-1500:], file=sys.stderr)
    print(f"requests the stub received:\n{stub_log}", file=sys.stderr)
    lines = result.stdout.decode().splitlines()
    meta = json.dumps(
        {"argv": invocation.command(), "env": invocation.env, "exit_code": result.exit_code}
    )
    return lines, meta + "\n" + version.text().strip().splitlines()[-1]


async def main(names: list[str]) -> None:
    for name in names or list(SCENARIOS):
        out = ROOT / "tests" / "fixtures" / "runners" / name
        out.mkdir(parents=True, exist_ok=True)
        notes = []
        for scenario in SCENARIOS[name]:
            lines, meta = await capture(name, scenario)
            (out / f"{scenario}.jsonl").write_text("".join(line + "\n" for line in lines))
            notes.append((scenario, meta))
        (out / "captured.json").write_text(
            json.dumps(
                {s: json.loads(m.split("\n")[0]) | {"version": m.split("\n")[1]} for s, m in notes},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
