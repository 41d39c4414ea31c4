"""GitHub's size limits, as the emulator enforces them: an issue comment or a review body over
65,536 characters is refused with 422 and GitHub's error shape, for the App and for people
alike; exactly 65,536 is accepted. (Check runs: 65,535 on summary and text, in
``test_emulator_rest``.)"""

from __future__ import annotations

from typing import Any

import pytest
from githubkit.exception import RequestFailed

from tests.emulator import schemas
from tests.emulator.client import EmulatorError
from tests.emulator.world import World

pytest_plugins = ["tests.emulator.fixtures"]

LIMIT = 65_536
COMMENTS = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
COMMENT = "/repos/{owner}/{repo}/issues/comments/{comment_id}"


def _refused(call: Any, method: str, template: str) -> dict[str, Any]:
    with pytest.raises(RequestFailed) as caught:
        call()
    response = caught.value.response
    assert response.status_code == 422
    body: dict[str, Any] = response.raw_response.json()
    assert schemas.rest_errors(method, template, 422, body) == []
    return body


def test_comment_bodies_over_65536_characters_are_refused(github_world: World) -> None:
    em, gh = github_world.emulator, github_world.installation_github()
    number = em.create_issue("octo/hello", "Limits", user="alice")
    at_limit = gh.rest.issues.create_comment("octo", "hello", number, body="x" * LIMIT)
    assert len(at_limit.parsed_data.body or "") == LIMIT

    body = _refused(
        lambda: gh.rest.issues.create_comment("octo", "hello", number, body="é" * (LIMIT + 1)),
        "post",
        COMMENTS,
    )
    assert body["message"] == "Validation Failed"
    assert body["errors"] == [
        {
            "resource": "IssueComment",
            "code": "unprocessable",
            "field": "data",
            "message": "Body is too long (maximum is 65536 characters)",
        }
    ]
    comment_id = at_limit.parsed_data.id
    _refused(
        lambda: gh.rest.issues.update_comment("octo", "hello", comment_id, body="y" * (LIMIT + 1)),
        "patch",
        COMMENT,
    )
    assert gh.rest.issues.get_comment("octo", "hello", comment_id).parsed_data.body == "x" * LIMIT
    comments = em.state("octo", "hello")["issues"][0]["comments"]
    assert len(comments) == 1  # the refused ones left nothing


def test_people_cannot_post_over_the_limit_either(github_world: World) -> None:
    em = github_world.emulator
    number = em.create_issue("octo/hello", "Limits", user="alice")
    with pytest.raises(EmulatorError, match="Body is too long"):
        em.comment("octo/hello", number, "/approve " + "a" * LIMIT, "alice")
    em.push("octo/hello", "feature", {"f.txt": "f\n"}, user="alice")
    pr = em.open_pull("octo/hello", "Feature", "feature", "main", user="alice")
    with pytest.raises(EmulatorError, match="Body is too long"):
        em.review("octo/hello", pr, "COMMENTED", user="alice", body="b" * (LIMIT + 1))
    em.review("octo/hello", pr, "COMMENTED", user="alice", body="b" * LIMIT)
