"""The sandbox holds, as the pipeline creates it (issue 7, SPEC §6): the running agent's
container is inspected from outside and inside, then escape attempts run as the agent and the
tests check what a user would see — run state, reason, events — and that nothing escaped."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security_agents import (
    MEMORY,
    PIDS,
    SecurityStack,
    findings,
    run_containers,
    security_stack,
)
from tests.services import docker_client

pytestmark = pytest.mark.docker

VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "devtmpfs"}
HARMLESS_DEVICES = {
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
    "/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/latency_stats", "/proc/sched_debug",
    "/proc/scsi", "/proc/timer_stats", "/sys/firmware",
}  # fmt: skip
TOKEN = re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_|x-access-token|PRIVATE KEY")


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    with security_stack(tmp_path_factory.mktemp("security-sandbox")) as running:
        yield running


def secrets_of(sec: SecurityStack) -> list[str]:
    """Every secret the stack holds: App key, webhook secret, planted host keys and every
    installation token GitHub has minted for it so far."""
    github = sec.stack.settings.github
    assert github.private_key is not None and github.webhook_secret is not None
    key_lines = [
        line
        for line in github.private_key.get_secret_value().splitlines()
        if line and not line.startswith("-----")
    ]
    tokens = [token.token for token in sec.minted_tokens()]
    return [github.webhook_secret.get_secret_value(), *key_lines, *sec.planted.values(), *tokens]


def assert_no_secret(sec: SecurityStack, text: str, where: str) -> None:
    leaked = [secret[:12] for secret in secrets_of(sec) if secret in text]
    assert not leaked, f"{where} holds secrets starting {leaked}"
    assert not TOKEN.search(text), f"{where} holds a token: {TOKEN.search(text)}"


def subuid_start() -> int:
    for line in Path("/etc/subuid").read_text().splitlines():
        name, start, _count = line.split(":")
        if name == "dockremap":
            return int(start)
    raise AssertionError("no dockremap line in /etc/subuid")


# -- 1. hardening of the pipeline's own sandbox ---------------------------------------------


def test_pipeline_sandbox_is_hardened_while_the_agent_runs(sec: SecurityStack) -> None:
    number, run = start_sleeper(sec)
    assert sandbox_kind(sec, run["id"]) == "fresh"
    assert_hardened(sec, run["id"])
    cancel(sec, number, run["id"])


@pytest.fixture(scope="module")
def sec_pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    """The same stack with a warm pool of one sandbox and room for one run at a time."""
    root = tmp_path_factory.mktemp("security-sandbox-pooled")
    with security_stack(root, pool_size=1, worker={"max_concurrent_runs": 1}) as running:
        yield running


def test_pooled_sandbox_is_hardened_and_a_cancelled_pooled_run_gives_back_its_slot(
    sec_pooled: SecurityStack,
) -> None:
    """The first run of a profile teaches the worker's pool its sandbox's shape; the next run
    gets a sandbox started ahead, which holds exactly as a fresh one does. Cancelled by its
    label, that run's sandbox is removed (never returned to the pool), the pool starts a new
    one, and the run's capacity slot is free: with room for one run at a time, the next run
    starts, in the new pooled sandbox."""
    sec = sec_pooled
    first_number, first = start_sleeper(sec)
    assert sandbox_kind(sec, first["id"]) == "fresh"
    cancel(sec, first_number, first["id"])
    ready = pool_ready(sec)

    number, run = start_sleeper(sec)
    assert sandbox_kind(sec, run["id"]) == "pooled"
    assert assert_hardened(sec, run["id"]) == ready
    cancel(sec, number, run["id"])
    refilled = pool_ready(sec)
    assert refilled != ready

    third_number, third = start_sleeper(sec)  # only starts once the slot is free
    assert sandbox_kind(sec, third["id"]) == "pooled"
    assert assert_hardened(sec, third["id"]) == refilled
    cancel(sec, third_number, third["id"])


REPO_IMAGE = "bosun-repotest/agent-as-root:1"
"""A repository image allowed by the operator, built on the default agent image with
``USER root``: the sandbox still runs as the sandbox user."""


@pytest.fixture(scope="module")
def sec_repo_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    """The stack with repository images allowed (one tag, the default agent image as the base of
    a repository Dockerfile) and builds on."""
    client = docker_client()
    try:
        client.images.build(
            fileobj=io.BytesIO(b"FROM bosun-agent:latest\nUSER root\n"),
            tag=REPO_IMAGE,
            network_mode="none",
            rm=True,
        )
        root = tmp_path_factory.mktemp("security-sandbox-images")
        allowed = [REPO_IMAGE, "bosun-agent:latest"]
        with security_stack(root, allowed_images=allowed, repo_dockerfiles=True) as running:
            yield running
    finally:
        for image in client.images.list():
            if any(tag.startswith("bosun-repo/octo-hello:") for tag in image.tags):
                client.images.remove(image.id, force=True)
        client.images.remove(REPO_IMAGE, force=True)
        client.close()


def test_a_repository_image_gets_the_same_hardening(sec_repo_images: SecurityStack) -> None:
    """An allowed image named in `.github/bosun.yml`, then one built from the repository's
    Dockerfile (USER root in both): the running sandbox is inspected as the default one is, and
    runs as the sandbox user; the second run of the Dockerfile builds nothing."""
    sec = sec_repo_images
    stack = sec.stack
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": f"image: {REPO_IMAGE}\n"})
    number, run = start_sleeper(sec)
    assert container_image(run["id"]) == REPO_IMAGE
    assert_hardened(sec, run["id"])
    cancel(sec, number, run["id"])

    mark = uuid.uuid4().hex  # content of this test's own: never found from an earlier run
    dockerfile = f"FROM bosun-agent:latest\nUSER root\nRUN echo {mark} > /opt/repo-image\n"
    config = "image:\n  dockerfile: .bosun/Dockerfile\n"
    stack.emulator.push(
        stack.repo, "main", {".github/bosun.yml": config, ".bosun/Dockerfile": dockerfile}
    )
    decisions = []
    for _ in range(2):
        number, run = start_sleeper(sec)
        image = container_image(run["id"])
        assert image.startswith("bosun-repo/octo-hello:")
        assert_hardened(sec, run["id"])
        (event,) = [
            e for e in stack.events(run["id"], "policy") if e["data"].get("rule") == "image"
        ]
        assert event["data"]["image"] == image
        decisions.append(event["data"]["decision"])
        cancel(sec, number, run["id"])
    assert decisions == ["build", "cached"]


def container_image(run_id: str) -> str:
    client = docker_client()
    try:
        (entry,) = run_containers(client, run_id)
        return str(client.containers.get(entry["Id"]).attrs["Config"]["Image"])
    finally:
        client.close()


def start_sleeper(sec: SecurityStack) -> tuple[int, dict[str, Any]]:
    """Label an issue for the sleeping agent; its run once the agent printed its first line."""
    stack = sec.stack
    number = sec.start("sec-sleep")
    run = sec.run_for(number, {"running"}, timeout=60)
    stack.wait_for(
        lambda: any("sandbox-ready" in e["data"].get("line", "") for e in stack.events(run["id"])),
        30,
        "the agent's first line",
    )
    return number, run


def sandbox_kind(sec: SecurityStack, run_id: str) -> str:
    """``pooled`` or ``fresh``, as the run's prepare event (and its manifest timings) say."""
    (event,) = [e for e in sec.stack.events(run_id, "progress") if "timings" in e["data"]]
    kind = str(event["data"]["sandbox"])
    assert ("sandbox_claim" in event["data"]["timings"]) == (kind == "pooled")
    return kind


def cancel(sec: SecurityStack, number: int, run_id: str) -> None:
    sec.stack.emulator.remove_label(sec.stack.repo, number, "bosun:sec-sleep", "alice")
    done = sec.run_for(number, {"cancelled", "failed", "review_ready"}, timeout=30)
    assert done["state"] == "cancelled", done
    assert "alice" in done["reason"]
    sec.settled(run_id)  # the sandbox and the workspace are gone


def pool_ready(sec: SecurityStack) -> str:
    """The id of the one started sandbox the stack's pool holds, once it holds one."""
    client = docker_client()
    pool_dir = str(sec.stack.settings.sandbox.workdir / "pool")
    try:

        def ready() -> str | None:
            found = client.api.containers(filters={"name": "bosun-pool-", "status": "running"})
            ours = [
                c["Id"]
                for c in found
                if any(m["Source"].startswith(pool_dir) for m in c.get("Mounts") or [])
            ]
            return ours[0] if len(ours) == 1 else None

        found: str = sec.stack.wait_for(ready, 60, "the pool to hold one started sandbox")
        return found
    finally:
        client.close()


def assert_hardened(sec: SecurityStack, run_id: str) -> str:
    """Inspect the run's running sandbox from outside and inside; returns its container id."""
    stack = sec.stack
    client = docker_client()
    try:
        (entry,) = run_containers(client, run_id)
        container = client.containers.get(entry["Id"])
        attrs = container.attrs
        host, config = attrs["HostConfig"], attrs["Config"]
        uid, gid = (int(part) for part in config["User"].split(":"))
        assert uid != 0 and gid != 0
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert not any("unconfined" in opt for opt in host["SecurityOpt"])  # seccomp, apparmor
        seccomp = [opt for opt in host["SecurityOpt"] if opt.startswith("seccomp=")]
        assert len(seccomp) == 1 and '"ptrace"' not in seccomp[0]  # Bosun's profile, not Docker's
        assert json.loads(seccomp[0].removeprefix("seccomp="))["defaultAction"] == "SCMP_ACT_ERRNO"
        assert host["Privileged"] is False
        assert host["ReadonlyRootfs"] is True
        assert host["NetworkMode"] == "none"
        assert host["Memory"] == 256 * 1024 * 1024 and MEMORY == "256m"
        assert host["MemorySwap"] == host["Memory"]
        assert host["NanoCpus"] > 0
        assert host["PidsLimit"] == PIDS
        assert host["PidMode"] == "" and host["IpcMode"] == "private"
        assert not host.get("Devices") and not host.get("Binds")
        assert set(host["Tmpfs"]) == {"/tmp", "/home/agent"}
        mounts = {m["Destination"]: m for m in attrs["Mounts"]}
        assert set(mounts) == {"/workspace", "/bosun", "/bosun-gw"}, mounts
        assert mounts["/workspace"]["RW"] is True
        assert all(m["RW"] is False for dest, m in mounts.items() if dest != "/workspace")
        assert not any(s in m["Source"] for m in attrs["Mounts"] for s in ("docker", ".sock"))
        # A pooled sandbox's binds were made to its slot folder, since renamed to the run's.
        assert Path(mounts["/workspace"]["Source"]).is_relative_to(stack.settings.sandbox.workdir)
        workspace = stack.settings.sandbox.workdir / "runs" / run_id / "workspace"
        assert_no_secret(sec, "\n".join(config["Env"]), "the container's Env")

        info = client.info()
        if any("name=userns" in opt for opt in info.get("SecurityOptions") or []):
            assert host["UsernsMode"] == ""  # the daemon's remapping applies
            assert (workspace / "README.md").stat().st_uid == subuid_start() + uid
            assert workspace.stat().st_uid == subuid_start() + uid

        def inside(*argv: str) -> str:
            code, output = container.exec_run(list(argv))
            assert code == 0, output
            return str(output.decode())

        assert inside("id", "-u").strip() == str(uid)
        status = dict(
            line.split(":\t", 1) for line in inside("cat", "/proc/self/status").splitlines()
        )
        assert status["CapEff"].strip() == "0000000000000000"
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"
        assert inside("ls", "/sys/class/net").split() == ["lo"]
        uid_map = inside("cat", "/proc/self/uid_map").split()
        assert uid_map[:2] == ["0", str(subuid_start())], uid_map  # container root is not host root
        environment = inside("sh", "-c", "env; tr '\\0' '\\n' < /proc/1/environ")
        assert_no_secret(sec, environment, "the sandbox environment")
        assert inside("ls", "-A", "/bosun").split() == ["prompt.md"]
        assert "README.md" in inside("ls", "-A", "/workspace").split()  # the run's checkout
        assert inside("ls", "-A", "/bosun-gw").split() == ["forwarder.py", "gateway.sock"]
        assert sec.planted["ANTHROPIC_API_KEY"] not in inside("env")  # the gateway holds it
        return str(container.id)
    finally:
        client.close()


# -- 2. escape attempts ----------------------------------------------------------------------


def test_agent_cannot_reach_any_network(sec: SecurityStack) -> None:
    run = sec.probe("sec-network")
    assert run["state"] == "review_ready", run
    found = findings(sec.stack, run["id"])
    assert found["interfaces"] == ["lo"]
    assert found["dns"].startswith("error:gaierror"), found["dns"]
    for port in sec.ports:  # Redis, PostgreSQL, :8000, Bosun's web port, the GitHub emulator
        assert found[f"tcp:127.0.0.1:{port}"] == "error:ECONNREFUSED", (port, found)
        assert found[f"tcp:[::1]:{port}"] in {"error:ECONNREFUSED", "error:EADDRNOTAVAIL"}
    assert found["tcp:1.1.1.1:443"] == "error:ENETUNREACH"
    assert found["tcp:172.17.0.1:2375"] == "error:ENETUNREACH"
    assert found["udp:9.9.9.9:53"] == "error:ENETUNREACH"
    for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
        assert found[f"socket:{path}"] == "error:ENOENT"
    assert run["branch"] in sec.branches()  # the findings became a PR like any other work
    assert "security/network.json" in sec.stack.artifacts(run["id"])["diff"].read_text()


def test_agent_finds_no_secret_in_its_sandbox(sec: SecurityStack) -> None:
    run = sec.probe("sec-secrets")
    assert run["state"] == "review_ready", run
    found = findings(sec.stack, run["id"])
    for name in ("pid1_environ", "own_environ", "all_environ", "git_config", "git_text"):
        assert_no_secret(sec, found[name], name)
    assert found["pid1_environ"].startswith("ok:")  # it was readable, and held nothing
    assert "PATH=" in found["all_environ"]
    assert found["bosun_dir"] == "ok:['prompt.md']"
    assert found["bosun_gw"] == "error:ENOENT"  # no model access configured for script profiles
    assert "extraheader" not in found["git_config_list"].lower()
    assert "@127.0.0.1" not in found["git_config"]  # the remote URL carries no credentials
    for name in (".git-credentials", ".gitconfig", ".netrc", ".docker/config.json"):
        assert found[f"home:{name}"] == "error:ENOENT"
    writable = dict(entry.split(" ", 1) for entry in found["writable_mounts"])
    on_disk = {path for path, fstype in writable.items() if fstype not in VIRTUAL_FS}
    assert on_disk == {"/workspace"}, writable  # the only writable path that persists
    devices = {path for path, fstype in writable.items() if fstype == "devtmpfs"}
    assert devices <= HARMLESS_DEVICES, devices  # no host disk or other device node
    diff = sec.stack.artifacts(run["id"])["diff"].read_text()
    assert_no_secret(sec, diff, "the pushed diff")


def test_writes_outside_the_workspace_fail_and_tmp_stays_inside(sec: SecurityStack) -> None:
    run = sec.probe("sec-writes")
    assert run["state"] == "review_ready", run
    found = findings(sec.stack, run["id"])
    marker = sec.marker
    for path in (f"/etc/{marker}", f"/usr/{marker}", f"/{marker}", f"/workspace/../{marker}"):
        assert found[f"write:{path}"] in {"error:EROFS", "error:EACCES"}, (path, found)
    assert found[f"write:/bosun/{marker}"] == "error:EROFS"
    assert found[f"write:/sys/fs/cgroup/{marker}"] in {"error:EROFS", "error:EACCES"}
    assert found["write:/proc/sysrq-trigger"] in {"error:EROFS", "error:EACCES", "error:ENOENT"}
    for limit in ("memory/memory.limit_in_bytes", "pids/pids.max", "memory.max", "pids.max"):
        # cgroup v1 hierarchies are mounted rw under userns-remap; ownership still refuses
        assert found[f"write:/sys/fs/cgroup/{limit}"] in {"error:EROFS", "error:EACCES",
                                                          "error:ENOENT"}, limit  # fmt: skip
    assert found["chmod:/etc/passwd"] in {"error:EROFS", "error:EPERM"}
    assert found["write:/tmp"] == "ok" and found["read:/tmp"] == "ok:escaped"
    on_host = [
        p for p in (Path("/tmp"), Path("/"), Path("/etc"), Path("/usr")) if (p / marker).exists()
    ]
    assert on_host == [], "a file written in the sandbox appeared on the host"
    sec.settled(run["id"])  # the run's workspace is being removed: walk only once it is gone
    # os.walk skips folders that vanish mid-walk (other runs' workspaces being removed).
    leftovers = [
        Path(root) / marker
        for root, dirs, files in os.walk(sec.stack.settings.sandbox.workdir)
        if marker in files or marker in dirs
    ]
    assert leftovers == []
    diff = sec.stack.artifacts(run["id"])["diff"].read_text()
    assert "new file mode 120000" in diff  # symlinks are committed as links, never followed
    assert "+/etc/shadow" in diff
    assert "root:" not in diff
    assert os.stat("/etc/passwd").st_mode & 0o777 == 0o644


def test_privilege_escalation_attempts_fail(sec: SecurityStack) -> None:
    run = sec.probe("sec-privilege")
    assert run["state"] == "review_ready", run
    found = findings(sec.stack, run["id"])
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert found[f"status:{key}"] == "0000000000000000", key
    assert found["status:NoNewPrivs"] == "1" and found["status:Seccomp"] == "2"
    assert found["uid"] != 0
    assert found["uid_map"][1] != "0"  # uid 0 inside maps to an unprivileged host uid
    attempts = ("mount", "remount_root_rw", "unshare_user", "unshare_map_root", "unshare_mount",
                "setpriv_root", "su_root", "nsenter_pid1", "dmesg")  # fmt: skip
    for attempt in attempts:
        assert not found[attempt].startswith("ok"), (attempt, found[attempt])
    assert "permission denied" in found["mount"].lower() or "must be superuser" in found["mount"]
    assert found["chroot"] == "error:EPERM"
    assert found["setuid0"] == "error:EPERM"
    assert found["mknod"] == "error:EPERM"


def test_ptrace_of_other_sandbox_processes_is_refused(sec: SecurityStack) -> None:
    """Bosun's seccomp profile (``sandboxes/seccomp/sandbox.json``) has no ``ptrace`` and no
    ``process_vm_readv``: the agent cannot attach to the sandbox's init or to a process of its
    own user (as a gate would be to a process the agent left behind), nor read its memory."""
    run = sec.probe("sec-privilege")  # the same run as the test above
    assert run["state"] == "review_ready", run
    found = findings(sec.stack, run["id"])
    assert found["ptrace_pid1"] == "error:EPERM"
    assert found["ptrace_sibling"] == "error:EPERM"
    assert found["process_vm_readv_sibling"] == "error:EPERM"


@pytest.mark.xfail(
    strict=True,
    reason="finding: /proc/<pid>/mem of a process of the same uid is read with open/read, which "
    "no seccomp profile can tell apart from any file read; the kernel allows it (same uid, "
    "dumpable, no Yama on this host). See docs/security.md, Limits",
)
def test_proc_mem_of_a_sibling_is_unreadable(sec: SecurityStack) -> None:
    run = sec.probe("sec-privilege")
    assert findings(sec.stack, run["id"])["proc_mem_sibling"].startswith("error:")
