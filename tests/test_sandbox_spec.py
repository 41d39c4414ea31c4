"""Spec validation, output capping and the fake backend (no engine needed)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import SandboxSettings
from sandboxes.base import ExecResult, Sandbox, SandboxStatus, open_sandbox
from sandboxes.errors import ExecFailed, OutputLimitExceeded, SandboxNotRunning, SandboxTimeout
from sandboxes.fake import FakeBackend
from sandboxes.output import LineSplitter, OutputCollector
from sandboxes.seccomp import profile_json
from sandboxes.spec import BindMount, SandboxSpec


def spec(tmp_path: Path, **kw: object) -> SandboxSpec:
    return SandboxSpec(run_id="r1", image="img", workspace=tmp_path, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("user", ["0:1000", "1000:0", "root", "0", "1000"])
def test_root_or_named_users_are_refused(tmp_path: Path, user: str) -> None:
    with pytest.raises(ValidationError, match="user"):
        spec(tmp_path, user=user)


@pytest.mark.parametrize("profile", ["unconfined", "Unconfined", "profiles/x.json", ""])
def test_seccomp_off_or_relative_profiles_are_refused(tmp_path: Path, profile: str) -> None:
    with pytest.raises(ValidationError, match="seccomp_profile"):
        spec(tmp_path, seccomp_profile=profile)
    with pytest.raises(ValidationError, match="seccomp_profile"):
        SandboxSettings(seccomp_profile=profile)


def test_bundled_seccomp_profile_is_the_default_and_has_no_ptrace(tmp_path: Path) -> None:
    assert spec(tmp_path).seccomp_profile == SandboxSettings().seccomp_profile == "bosun"
    text = profile_json("bosun")
    assert text is not None
    profile = json.loads(text)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }
    assert {"read", "execve", "clone", "socket", "futex", "arch_prctl"} <= allowed
    cross_process = {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"}
    namespaces = {"unshare", "setns", "mount", "bpf", "keyctl", "userfaultfd"}
    assert not allowed & (cross_process | namespaces | {"io_uring_setup"})
    assert profile_json("default") is None


def test_engine_socket_mounts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="refusing to mount"):
        spec(tmp_path, mounts=[BindMount(source=Path("/var/run/docker.sock"), target="/s")])
    with pytest.raises(ValidationError, match="reserved"):
        BindMount(source=tmp_path, target="/workspace")
    gateway = BindMount(source=tmp_path, target="/run/bosun-gateway")
    assert gateway.read_only


def test_tokens_in_env_and_reserved_labels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="GitHub token"):
        spec(tmp_path, env={"GH": "ghs_" + "a" * 36})
    with pytest.raises(ValidationError, match="reserved"):
        spec(tmp_path, labels={"bosun.run_id": "other"})
    with pytest.raises(ValidationError, match="network"):
        spec(tmp_path, network="bridge")
    with pytest.raises(ValidationError, match="extra"):
        spec(tmp_path, privileged=True)


async def test_collector_caps_output_and_notes_it_once() -> None:
    collector = OutputCollector(limit=5)
    await collector.feed("stdout", b"abc")
    await collector.feed("stderr", b"defgh")
    await collector.feed("stdout", b"ijk")
    kept = b"".join(chunk.data for chunk in collector.chunks)
    assert kept == b"abcde\n[output truncated after 5 bytes]\n"
    assert collector.truncated_bytes == 6


async def test_line_splitter_keeps_streams_apart() -> None:
    lines: list[tuple[str, str]] = []

    async def on_line(stream: str, line: str) -> None:
        lines.append((stream, line))

    splitter = LineSplitter(on_line)  # type: ignore[arg-type]
    collector = OutputCollector(limit=1000, on_output=splitter)
    await collector.feed("stdout", b"a1\na")
    await collector.feed("stderr", b"e1\n")
    await collector.feed("stdout", b"2\ntail")
    await splitter.flush()
    assert lines == [("stdout", "a1"), ("stderr", "e1"), ("stdout", "a2"), ("stdout", "tail")]


def test_exec_result_check_raises_the_matching_error() -> None:
    assert ExecResult(("x",), 0, 0.1).check().ok
    with pytest.raises(ExecFailed) as info:
        ExecResult(("x",), 3, 0.1).check()
    assert info.value.exit_code == 3
    with pytest.raises(SandboxTimeout):
        ExecResult(("x",), None, 5.0, timed_out=True).check()
    with pytest.raises(TimeoutError):
        ExecResult(("x",), None, 5.0, timed_out=True).check()
    with pytest.raises(OutputLimitExceeded):
        ExecResult(("x",), 0, 0.1, truncated_bytes=4).check(allow_truncated=False)


async def test_fake_backend_runs_in_the_workspace_and_records_calls(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with open_sandbox(backend, spec(tmp_path, env={"A": "1"})) as sandbox:
        result = await backend.exec(sandbox, ["sh", "-c", "echo $A > out.txt; env"])
        assert result.check().stdout.decode().count("=") == 4  # PATH, HOME, A, PWD
        assert (tmp_path / "out.txt").read_text() == "1\n"
        slow = await backend.exec(sandbox, ["sleep", "10"], timeout=0.2)
        assert slow.timed_out
        task = asyncio.create_task(backend.exec(sandbox, ["sleep", "10"]))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await backend.stop(sandbox)
        assert (await task).cancelled and time.monotonic() - started < 2
        with pytest.raises(SandboxNotRunning):
            await backend.exec(sandbox, ["true"])
    assert [name for name, _ in backend.calls] == [
        "create", "start", "exec", "exec", "exec", "stop", "exec", "remove", "stop",
    ]  # fmt: skip


async def test_fake_backend_handler_scripts_results_and_reap(tmp_path: Path) -> None:
    async def handler(sandbox: Sandbox, argv: list[str]) -> ExecResult | None:
        return ExecResult(tuple(argv), 0, 0.0) if argv[0] == "claude" else None

    backend = FakeBackend(handler)
    keep = await backend.create(spec(tmp_path))
    orphan = await backend.create(SandboxSpec(run_id="gone", image="i", workspace=tmp_path))
    await backend.start(keep)
    assert (await backend.exec(keep, ["claude", "-p", "hi"])).ok
    assert await backend.reap({"r1"}) == [orphan.id]
    assert await backend.status(orphan) == SandboxStatus.REMOVED
    assert await backend.status(keep) == SandboxStatus.RUNNING
    await backend.remove(keep)
