"""Gate failures become check-run annotations on the PR head, 50 per request (SPEC §3.3)."""

from __future__ import annotations

import json
from typing import Any

from bot.domain.annotations import gate_annotations
from tests.stack import BosunStack

OUTPUT = """\
============================= FAILURES =============================
tests/test_api.py:42: AssertionError: assert 1 == 2
./src/app.py:7:1: F401 'os' imported but unused
/workspace/src/app.py:9: error: Name "x" is not defined  [name-defined]
src/app.py:9: error: Name "x" is not defined  [name-defined]
../../etc/passwd:1: root
/etc/shadow:1: nope
missing.py:3: not in the tree
summary: 3 failed
"""


def test_only_files_in_the_tree_are_annotated() -> None:
    tree = {"tests/test_api.py", "src/app.py", "etc/passwd"}
    found = gate_annotations("tests", OUTPUT, tree.__contains__)
    assert [(a["path"], a["start_line"]) for a in found] == [
        ("tests/test_api.py", 42),
        ("src/app.py", 7),
        ("src/app.py", 9),  # the same finding twice (/workspace/ prefix and not) counts once
    ]
    assert found[0]["message"] == "AssertionError: assert 1 == 2"
    assert {a["annotation_level"] for a in found} == {"failure"}
    assert {a["title"] for a in found} == {"gate tests"}
    many = "\n".join(f"src/app.py:{i}: finding {i}" for i in range(1, 500))
    assert len(gate_annotations("lint", many, tree.__contains__)) == 100  # capped per gate


def test_failing_gate_annotates_the_pr_head_in_batches_of_50(stack: BosunStack) -> None:
    findings = "; ".join(f"echo 'README.md:{i}: finding {i}'" for i in range(1, 61))
    script = f"{findings}; echo '../x:1: out'; echo 'nope.py:1: gone'; exit 1"
    gates = [{"name": "lint", "run": ["sh", "-c", script]}]
    config = json.dumps({"gates": gates})  # YAML is a superset of JSON
    stack.emulator.push(stack.repo, "main", {".github/bosun.yml": config}, user="alice")
    number = stack.emulator.create_issue(stack.repo, "Lint me", "Change it.", "alice")
    stack.label(number)
    (run,) = stack.wait_run({"review_ready", "failed"}, timeout=120)
    assert run["state"] == "review_ready", run  # failing gates: review-ready as a draft

    def annotated() -> dict[str, Any] | None:
        for check in stack.state()["check_runs"]:
            if check["head_sha"] == run["head_sha"] and len(check["annotations"]) >= 60:
                return dict(check)
        return None

    check = stack.wait_for(annotated, 30, "60 annotations on the head's check run")
    paths = {a["path"] for a in check["annotations"]}
    assert paths == {"README.md"}  # nothing outside the tree, nothing that does not exist
    lines = sorted(a["start_line"] for a in check["annotations"])
    assert lines == list(range(1, 61))  # each once, though sent in two requests
    assert check["conclusion"] == "failure"
