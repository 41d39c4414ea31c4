"""Vendor the parts of GitHub's official API descriptions that the emulator implements.

Fetches ``@octokit/openapi`` and ``@octokit/webhooks-schemas`` with ``npm pack`` (or reads
already unpacked copies given on the command line) and writes two trimmed files:

- ``tests/fixtures/github/openapi-subset.json``: the REST operations in ``OPERATIONS`` with every
  component they reference, transitively.
- ``tests/fixtures/github/webhooks-subset.json``: the webhook event definitions in ``EVENTS``
  with every definition they reference, transitively.

Run: ``python scripts/vendor_github_schemas.py [--openapi FILE] [--webhooks FILE]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "github"

OPERATIONS: list[tuple[str, str]] = [
    ("get", "/app"),
    ("get", "/app/installations"),
    ("get", "/app/installations/{installation_id}"),
    ("post", "/app/installations/{installation_id}/access_tokens"),
    ("get", "/app/hook/deliveries"),
    ("get", "/app/hook/deliveries/{delivery_id}"),
    ("post", "/app/hook/deliveries/{delivery_id}/attempts"),
    ("post", "/app-manifests/{code}/conversions"),
    ("get", "/rate_limit"),
    ("get", "/user"),
    ("get", "/repos/{owner}/{repo}"),
    ("get", "/repos/{owner}/{repo}/installation"),
    ("get", "/repos/{owner}/{repo}/contents/{path}"),
    ("get", "/repos/{owner}/{repo}/git/ref/{ref}"),
    ("post", "/repos/{owner}/{repo}/git/refs"),
    ("get", "/repos/{owner}/{repo}/git/commits/{commit_sha}"),
    ("get", "/repos/{owner}/{repo}/branches"),
    ("get", "/repos/{owner}/{repo}/branches/{branch}"),
    ("get", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("post", "/repos/{owner}/{repo}/issues"),
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}"),
    ("patch", "/repos/{owner}/{repo}/issues/{issue_number}"),
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("get", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("patch", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("delete", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/labels"),
    ("delete", "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/reactions"),
    ("post", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
    ("get", "/repos/{owner}/{repo}/pulls"),
    ("post", "/repos/{owner}/{repo}/pulls"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"),
    ("post", "/repos/{owner}/{repo}/check-runs"),
    ("get", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("patch", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/status"),
    ("post", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("get", "/repos/{owner}/{repo}/branches/{branch}/protection/required_status_checks"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews/{review_id}/comments"),
    ("get", "/repos/{owner}/{repo}/rules/branches/{branch}"),
]

EVENTS: list[str] = [
    "issues$opened",
    "issues$labeled",
    "issues$unlabeled",
    "issues$edited",
    "issues$closed",
    "issue_comment$created",
    "issue_comment$edited",
    "issue_comment$deleted",
    "pull_request$opened",
    "pull_request$synchronize",
    "pull_request$closed",
    "pull_request$edited",
    "pull_request$labeled",
    "pull_request$unlabeled",
    "pull_request$reopened",
    "issues$reopened",
    "issues$assigned",
    "pull_request_review$submitted",
    "pull_request_review_comment$created",
    "check_run$created",
    "check_run$completed",
    "check_run$requested_action",
    "check_run$rerequested",
    "check_suite$completed",
    "status$event",
    "installation$created",
    "installation_repositories$added",
    "push$event",
    "ping$event",
]


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _closure(doc: dict[str, Any], roots: Any) -> set[str]:
    seen: set[str] = set()
    pending: set[str] = set()
    _refs(roots, pending)
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        found: set[str] = set()
        _refs(_resolve(doc, ref), found)
        pending |= found - seen
    return seen


def _strip_examples(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_examples(v) for k, v in node.items() if k not in {"examples", "example"}}
    if isinstance(node, list):
        return [_strip_examples(v) for v in node]
    return node


def _patch_defects(paths: dict[str, Any]) -> None:
    """Known defects of the published description, replaced by the component GitHub serves.

    ``GET /app/installations`` inlines ``account`` as ``allOf: [simple-user, enterprise]``
    (a user account would have to be an enterprise too); the ``installation`` component says
    ``anyOf``, which is what the API returns.
    """
    content = paths["/app/installations"]["get"]["responses"]["200"]["content"]
    items = content["application/json"]["schema"]["items"]
    if "allOf" in json.dumps(items.get("properties", {}).get("account", {}))[:40]:
        content["application/json"]["schema"]["items"] = {
            "$ref": "#/components/schemas/installation"
        }


def openapi_subset(doc: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path in OPERATIONS:
        op = _strip_examples(doc["paths"][path][method])
        paths.setdefault(path, {})[method] = op
    _patch_defects(paths)
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(_closure(doc, paths)):
        _, kind, name = ref.split("/", 2)[0], *ref.removeprefix("#/components/").split("/", 1)
        components.setdefault(kind, {})[name] = _strip_examples(_resolve(doc, ref))
    return {
        "openapi": doc["openapi"],
        "info": {**doc["info"], "description": "Subset vendored for the emulator's tests."},
        "paths": paths,
        "components": components,
    }


def _patch_webhook_lag(definitions: dict[str, Any]) -> None:
    """Fields GitHub sends now that ``@octokit/webhooks-schemas`` (which forbids unknown
    properties) does not list yet. GitHub's own current description, which githubkit's webhook
    models are generated from, requires them, so payloads without them do not parse there.
    """
    status = definitions["status$event"]["properties"]["commit"]["properties"]["commit"]
    status["properties"]["verification"]["properties"]["verified_at"] = {"type": ["string", "null"]}
    label = definitions["label"]
    label["properties"]["archived_at"] = {"type": ["string", "null"], "format": "date-time"}
    label["properties"]["archived_by"] = {
        "oneOf": [{"$ref": "#/definitions/user"}, {"type": "null"}]
    }


def webhooks_subset(doc: dict[str, Any]) -> dict[str, Any]:
    roots = {name: doc["definitions"][name] for name in EVENTS}
    definitions = dict(roots)
    for ref in _closure(doc, roots):
        name = ref.removeprefix("#/definitions/")
        definitions[name] = _resolve(doc, ref)
    _patch_webhook_lag(definitions)
    return {"$schema": doc["$schema"], "definitions": dict(sorted(definitions.items()))}


def _npm_file(package: str, member: str, workdir: Path) -> Path:
    out = subprocess.run(
        ["npm", "pack", package, "--silent"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        tar.extract(f"package/{member}", workdir, filter="data")
    return workdir / "package" / member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--openapi", type=Path, help="an unpacked generated/api.github.com.json")
    parser.add_argument("--webhooks", type=Path, help="an unpacked webhooks-schemas schema.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        openapi_path = args.openapi or _npm_file(
            "@octokit/openapi", "generated/api.github.com.json", work
        )
        openapi = openapi_subset(json.loads(openapi_path.read_text()))
        webhooks_path = args.webhooks or _npm_file("@octokit/webhooks-schemas", "schema.json", work)
        webhooks = webhooks_subset(json.loads(webhooks_path.read_text()))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openapi-subset.json").write_text(json.dumps(openapi, indent=1, sort_keys=True) + "\n")
    (OUT / "webhooks-subset.json").write_text(json.dumps(webhooks, indent=1) + "\n")
    print(f"wrote {OUT / 'openapi-subset.json'} and {OUT / 'webhooks-subset.json'}")


if __name__ == "__main__":
    main()
