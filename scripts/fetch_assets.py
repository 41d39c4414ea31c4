"""Fetch the dashboard's browser libraries from the npm registry, verified.

Reads ``bot/web/dashboard/assets.json`` (name, pinned version, the registry's sha512
``integrity``, the files to take from the tarball), downloads each package tarball from the
registry (the one ``npm config get registry`` names when npm is installed, else
``$NPM_CONFIG_REGISTRY`` or registry.npmjs.org), checks its sha512 against the pinned integrity
before unpacking anything, and writes only the listed files:

- runtime packages into ``bot/web/dashboard/static/vendor/`` (gitignored; the web app serves them),
- packages marked ``"test": true`` (axe-core) into ``.cache/test-assets/`` with ``--test``.

Idempotent: a ``.stamp`` next to the files records what was fetched; when it matches the pins
nothing is downloaded. No Node build step, nothing executed from the packages.

    python scripts/fetch_assets.py [--test] [--check]

``--check`` only says whether the files are in place (exit 3 if not).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "bot" / "web" / "dashboard" / "assets.json"
VENDOR = ROOT / "bot" / "web" / "dashboard" / "static" / "vendor"
TEST_ASSETS = ROOT / ".cache" / "test-assets"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"


class AssetError(RuntimeError):
    pass


def registry() -> str:
    url = os.environ.get("NPM_CONFIG_REGISTRY", "")
    if not url and shutil.which("npm"):
        try:
            url = subprocess.run(
                ["npm", "config", "get", "registry"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            url = ""
    url = url or DEFAULT_REGISTRY
    return url if url.endswith("/") else url + "/"


def tarball_url(base: str, name: str, version: str) -> str:
    leaf = name.rsplit("/", 1)[-1]
    return f"{base}{name}/-/{leaf}-{version}.tgz"


def verify(data: bytes, integrity: str) -> None:
    algo, _, digest = integrity.partition("-")
    if algo != "sha512":
        raise AssetError(f"only sha512 integrity is accepted, not {algo!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != digest:
        raise AssetError(f"sha512 mismatch: expected {digest}, got {actual}")


def stamp_of(packages: list[dict[str, Any]]) -> str:
    return json.dumps(
        [[p["name"], p["version"], p["integrity"]] for p in packages], separators=(",", ":")
    )


def in_place(target: Path, packages: list[dict[str, Any]]) -> bool:
    stamp = target / ".stamp"
    if not stamp.exists() or stamp.read_text() != stamp_of(packages):
        return False
    return all((target / out).is_file() for p in packages for out in p["files"].values())


def fetch(package: dict[str, Any], base: str, target: Path) -> None:
    url = tarball_url(base, package["name"], package["version"])
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 -- https registry
        data = response.read()
    verify(data, package["integrity"])
    wanted: dict[str, str] = package["files"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            out = wanted.get(member.name)
            if out is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None
            (target / out).write_bytes(source.read())
    missing = [out for out in wanted.values() if not (target / out).is_file()]
    if missing:
        raise AssetError(f"{package['name']}@{package['version']} lacks {', '.join(missing)}")


def sync(packages: list[dict[str, Any]], target: Path, check: bool) -> bool:
    """Whether ``target`` holds ``packages`` (after fetching them unless ``check``)."""
    if in_place(target, packages):
        return True
    if check:
        return False
    target.mkdir(parents=True, exist_ok=True)
    base = registry()
    for package in packages:
        print(f"==> fetching {package['name']}@{package['version']} (sha512 verified)")
        fetch(package, base, target)
    (target / ".stamp").write_text(stamp_of(packages))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="also the test-only packages")
    parser.add_argument("--check", action="store_true", help="only check; exit 3 if missing")
    args = parser.parse_args(argv)
    pins = json.loads(PINS.read_text())["packages"]
    runtime = [p for p in pins if not p.get("test")]
    groups = [(runtime, VENDOR)]
    if args.test:
        groups.append(([p for p in pins if p.get("test")], TEST_ASSETS))
    try:
        ok = all(sync(packages, target, args.check) for packages, target in groups)
    except (AssetError, OSError, tarfile.TarError) as exc:
        print(f"error: dashboard assets: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print("missing: the dashboard's browser assets (scripts/fetch_assets.py)")
        return 3
    print("==> dashboard assets are in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
