"""Vendor GitHub's webhook examples for the events Bosun handles into tests/fixtures/webhooks/.

    .venv/bin/python scripts/vendor_webhook_examples.py [version]

Runs ``npm pack @octokit/webhooks-examples`` in a temporary folder, reads every variant
(api.github.com and each GHES version), drops duplicates, and writes one file per event:
``{"package": ..., "examples": [{"origin": ..., "payload": {...}}, ...]}``. Tests read these
files, so CI needs no npm.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "fixtures" / "webhooks"
PACKAGE = "@octokit/webhooks-examples"
EVENTS = (
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
)


def fetch(version: str | None, workdir: Path) -> Path:
    spec = f"{PACKAGE}@{version}" if version else PACKAGE
    out = subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as archive:
        archive.extractall(workdir, filter="data")
    return workdir / "package"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        package = fetch(argv[0] if argv else None, Path(tmp))
        version = json.loads((package / "package.json").read_text())["version"]
        origins = sorted(p.parent.name for p in package.glob("*/index.json"))
        # api.github.com first: it is the reference; GHES variants add what differs.
        origins.sort(key=lambda name: (name != "api.github.com", name))
        collected: dict[str, list[dict[str, object]]] = {event: [] for event in EVENTS}
        seen: set[str] = set()
        for origin in origins:
            for definition in json.loads((package / origin / "index.json").read_text()):
                if definition["name"] not in collected:
                    continue
                for example in definition["examples"]:
                    key = json.dumps(example, sort_keys=True)
                    if key in seen:
                        continue
                    seen.add(key)
                    collected[definition["name"]].append({"origin": origin, "payload": example})
    TARGET.mkdir(parents=True, exist_ok=True)
    for event, examples in collected.items():
        # One example per line keeps diffs readable when the package is re-vendored.
        head = json.dumps({"package": f"{PACKAGE}@{version}", "event": event})[:-1]
        lines = ",\n".join(json.dumps(example, sort_keys=True) for example in examples)
        (TARGET / f"{event}.json").write_text(f'{head}, "examples": [\n{lines}\n]}}\n')
        print(f"{event}: {len(examples)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
