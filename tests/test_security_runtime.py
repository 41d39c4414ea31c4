"""The OCI runtime setting reaches Docker (issue 7, SPEC §6): a runtime the engine does not know
fails the run before anything runs, with a reason that names the runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security_agents import SecurityStack, security_stack

pytestmark = pytest.mark.docker

RUNTIME = "bosun-no-such-runtime"


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    with security_stack(tmp_path_factory.mktemp("security-runtime"), runtime=RUNTIME) as running:
        yield running


def test_unknown_runtime_fails_the_run_with_a_clear_reason(sec: SecurityStack) -> None:
    run = sec.probe("default")
    assert run["state"] == "failed", run
    assert run["reason"].startswith("the sandbox did not start"), run["reason"]
    assert RUNTIME in run["reason"]
    assert "registered with dockerd" in run["reason"]
    assert run["branch"] not in sec.branches()
    sec.settled(run["id"])
