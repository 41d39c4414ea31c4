"""app-manifest.yml registers an App that receives every event Bosun handles (SPEC §3.1) and
holds the permissions those events and Bosun's writes need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parent.parent / "app-manifest.yml"

# Events Bosun handles (SPEC §3.1). GitHub delivers the installation events and `ping` to every
# App without a subscription (and rejects them in default_events).
HANDLED_EVENTS = {
    "issues",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "check_run",
    "check_suite",
    "status",
    "installation",
    "installation_repositories",
    "ping",
}
ALWAYS_DELIVERED = {"installation", "installation_repositories", "ping"}

# The permission GitHub requires before an App may subscribe to each event.
EVENT_PERMISSION = {
    "issues": "issues",
    "issue_comment": "issues",
    "pull_request": "pull_requests",
    "pull_request_review": "pull_requests",
    "pull_request_review_comment": "pull_requests",
    "check_run": "checks",
    "check_suite": "checks",
    "status": "statuses",
}

# What Bosun itself does: push branches and merge, comment and react, open PRs, run check runs,
# read the checks a merge waits for.
NEEDED_PERMISSIONS = {
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
    "checks": "write",
    "metadata": "read",
    "members": "read",
    "statuses": "read",  # merge when green: the commit statuses a protected branch requires
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(data, dict)
    return data


def render(manifest: dict[str, Any], public_url: str) -> dict[str, Any]:
    """What GET /setup posts to GitHub: `{public_url}` replaced everywhere."""
    rendered = json.loads(json.dumps(manifest).replace("{public_url}", public_url))
    assert isinstance(rendered, dict)
    return rendered


def test_subscribes_to_every_handled_event_github_accepts(manifest: dict[str, Any]) -> None:
    events = manifest["default_events"]
    assert len(events) == len(set(events)), "duplicate events"
    assert set(events) == HANDLED_EVENTS - ALWAYS_DELIVERED


def test_each_subscribed_event_has_its_permission(manifest: dict[str, Any]) -> None:
    permissions = manifest["default_permissions"]
    for event in manifest["default_events"]:
        needed = EVENT_PERMISSION[event]
        assert permissions.get(needed) in {"read", "write"}, f"{event} needs {needed} access"


def test_permissions_are_what_bosun_writes_and_no_more(manifest: dict[str, Any]) -> None:
    assert manifest["default_permissions"] == NEEDED_PERMISSIONS


def test_urls_point_at_this_bosun(manifest: dict[str, Any]) -> None:
    rendered = render(manifest, "https://bosun.example.com")
    assert rendered["hook_attributes"] == {
        "url": "https://bosun.example.com/webhooks/github",
        "active": True,
    }
    assert rendered["redirect_url"] == "https://bosun.example.com/setup/callback"
    assert rendered["redirect_url"] in rendered["callback_urls"]
    for url in [rendered["url"], rendered["setup_url"], *rendered["callback_urls"]]:
        parsed = urlparse(url)
        assert (parsed.scheme, parsed.netloc) == ("https", "bosun.example.com"), url
    assert "public_url" not in json.dumps(rendered), "a placeholder was left unreplaced"


def test_app_is_private_and_named(manifest: dict[str, Any]) -> None:
    assert manifest["public"] is False
    assert manifest["name"] and len(manifest["name"]) <= 34  # GitHub's App name limit
