"""The PR comment command grammar (SPEC §8) on a corpus of realistic comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.domain.commands import (
    MAX_COMMANDS,
    STATE_CHANGING,
    VERBS,
    help_text,
    parse_amount,
    parse_commands,
    suggest,
)

CORPUS_PATH = Path(__file__).parent / "fixtures" / "comments" / "corpus.yml"
CORPUS: list[dict[str, Any]] = yaml.safe_load(CORPUS_PATH.read_text(encoding="utf-8"))


def test_corpus_is_large_and_names_are_unique() -> None:
    names = [case["name"] for case in CORPUS]
    assert len(names) >= 50
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CORPUS, ids=[case["name"] for case in CORPUS])
def test_corpus(case: dict[str, Any]) -> None:
    parsed = parse_commands(case["body"])
    expected = case["action"]
    action = parsed.action
    if expected is None:
        assert action is None, f"unexpected action {action}"
    else:
        assert action is not None, f"no action; errors={parsed.errors} unknown={parsed.unknown}"
        assert action.verb == expected["verb"]
        assert action.args == expected.get("args", action.args)
        assert action.sha == expected.get("sha")
        assert list(action.paths) == expected.get("paths", [])
        assert action.revoke is expected.get("revoke", False)
        assert action.amount == expected.get("amount")
        assert action.line_no == expected.get("line_no", action.line_no)
    assert [q.verb for q in parsed.queries] == case.get("queries", [])
    errors = case.get("errors", [])
    assert len(parsed.errors) == len(errors), parsed.errors
    for error, wanted in zip(parsed.errors, errors, strict=True):
        assert wanted in error.message
    assert {u.word: u.suggestion for u in parsed.suggestions} == case.get("suggestions", {})
    assert [u.word for u in parsed.unknown if u.suggestion is None] == case.get("silent", [])
    # Bosun replies exactly when there is something to correct.
    assert (parsed.reply() is not None) == bool(errors or case.get("suggestions"))


def test_reply_names_the_suggestion_and_the_line() -> None:
    reply = parse_commands("Thanks!\n/cancle").reply()
    assert reply is not None
    assert "line 2" in reply
    assert "did you mean `/cancel`?" in reply


def test_reply_for_two_commands_names_both() -> None:
    reply = parse_commands("/approve\n/retry more tests").reply()
    assert reply is not None
    assert "`/approve`" in reply and "`/retry`" in reply


def test_feedback_skips_later_command_lines_but_keeps_prose() -> None:
    parsed = parse_commands("/retry handle the timeout\n/status\nand log it")
    assert parsed.action is not None
    assert parsed.action.args == "handle the timeout\nand log it"
    assert [q.verb for q in parsed.queries] == ["status"]


def test_raw_line_and_line_numbers_are_kept() -> None:
    parsed = parse_commands("Looks good.\r\n\r\n  /Approve  3f9c2e1  ")
    assert parsed.action is not None
    assert parsed.action.raw_line == "/Approve  3f9c2e1"
    assert parsed.action.line_no == 3


@pytest.mark.parametrize(
    ("text", "amount"),
    [("+5", 5.0), ("+ 7", 7.0), ("+$3", 3.0), ("+1.25", 1.25), ("+.5", 0.5), ("+20 dollars", 20.0)],
)
def test_budget_amounts(text: str, amount: float) -> None:
    assert parse_amount(text) == amount


@pytest.mark.parametrize("text", ["-5", "5", "+", "+five", "+1.234", "", "+0.00", "+1e9"])
def test_budget_junk_gets_a_message(text: str) -> None:
    result = parse_amount(text)
    assert isinstance(result, str)
    assert "/budget +" in result or "more than zero" in result


@pytest.mark.parametrize(
    ("word", "verb"),
    [
        ("aprove", "approve"),
        ("approv", "approve"),
        ("approval", "approve"),
        ("retyr", "retry"),
        ("rety", "retry"),
        ("cancle", "cancel"),
        ("cancell", "cancel"),
        ("hodl", "hold"),
        ("unhodl", "unhold"),
        ("statsu", "status"),
        ("hlep", "help"),
        ("budjet", "budget"),
        ("resum", "resume"),
        ("rejct", "reject"),
        ("stop", "cancel"),
        ("Pause", "hold"),
    ],
)
def test_near_misses(word: str, verb: str) -> None:
    assert suggest(word) == verb


@pytest.mark.parametrize("word", ["cc", "assign", "lgtm", "label", "retest", "shrug", "s", "me"])
def test_other_words_get_no_suggestion(word: str) -> None:
    assert suggest(word) is None


def test_every_verb_parses() -> None:
    for verb in VERBS:
        args = {"budget": " +5", "steer": " use httpx"}.get(verb, "")
        parsed = parse_commands(f"/{verb}{args}")
        assert not parsed.errors, verb
        assert [c.verb for c in parsed.commands] == [verb]
        assert parsed.commands[0].changes_state is (verb in STATE_CHANGING)


def test_help_marks_what_the_caller_may_use() -> None:
    def usable(text: str) -> set[str]:
        rows = [line for line in text.splitlines() if line.startswith("| `/")]
        mine = [row for row in rows if row.rstrip().endswith("✅ |")]
        return {row.split("`")[1].replace("/bosun ", "/").split()[0] for row in mine}

    reader = usable(help_text("read", is_requester=False))
    assert reader == {"/status", "/help"}
    requester = usable(help_text("read", is_requester=True))
    assert requester == {"/status", "/help", "/retry", "/cancel", "/resume", "/steer"}
    writer = usable(help_text("write", is_requester=False))
    assert writer == {f"/{verb}" for verb in VERBS}
    listed_out = usable(help_text("admin", is_requester=False, may_approve=False))
    assert "/approve" not in listed_out and "/reject" not in listed_out
    assert "/hold" in listed_out


def test_a_flood_of_commands_is_bounded_and_does_nothing() -> None:
    parsed = parse_commands("/retry again\n" * 5000)
    assert len(parsed.commands) == MAX_COMMANDS
    assert parsed.action is None
    assert any(f"more than {MAX_COMMANDS} commands" in e.message for e in parsed.errors)


def test_the_correction_reply_stays_short_whatever_the_comment_holds() -> None:
    parsed = parse_commands("\n".join("/aprove" for _ in range(8000)))
    reply = parsed.reply()
    assert reply is not None and len(reply) < 2000
    assert reply.count("did you mean `/approve`?") == 10
    assert "- … and 7990 more like these" in reply
    long_word = parse_commands("/aprove" + "e" * 60_000).reply()
    assert long_word is None or len(long_word) < 2000
    budget = parse_commands("/budget " + "9" * 60_000).reply()
    assert budget is not None and len(budget) < 500
