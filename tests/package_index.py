"""A tiny PEP 503 package index and a tiny npm registry on loopback, serving packages built in
the test.

``PackageIndex`` serves ``/simple/`` (the project list), ``/simple/<project>/`` (links with
``sha256`` fragments and the wheel's metadata apart, PEP 658) and ``/files/<wheel>``,
cacheable like PyPI's files, at a throttled rate so a download the cache saves is visible. It
counts each file it sent (``HEAD`` answers the same headers and counts nothing).

``npm_registry`` serves the same way what ``npm`` asks a registry for: ``/<name>`` (the
packument: versions, ``dist.tarball`` and ``dist.integrity``) and ``/<name>/-/<file>.tgz``;
``go_proxy`` what ``go`` asks a module proxy for (``GOPROXY`` protocol); ``cargo_registry``
a cargo registry's git index and ``.crate`` files, and git repositories (git's smart HTTP).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def build_wheel(name: str, version: str, module: str, padding: int = 0) -> tuple[str, bytes]:
    """A pure-Python wheel: ``<module>/__init__.py`` holding ``module_text``, plus ``padding``
    bytes of incompressible data (so downloading it takes a while). Returns its file name and
    bytes."""
    dist = name.replace("-", "_")
    files: dict[str, bytes] = {
        f"{dist}/__init__.py": module.encode(),
        f"{dist}/padding.bin": os.urandom(padding),
        f"{dist}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: bosun-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}-{version}.dist-info/RECORD,,")
    files[f"{dist}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def _wheel_metadata(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name)


@dataclass
class PackageIndex:
    port: int
    wheels: dict[str, tuple[str, bytes]]
    """project name -> (file name, bytes)."""
    sent: Counter[str] = field(default_factory=Counter)
    """File name -> times it was sent."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple/"


Page = tuple[int, bytes, str, str, str | None]
"""What a path answers: status, body, content type, ``Cache-Control`` and the file it counts
as sent (``None`` for pages)."""
NOT_FOUND: Page = (404, b"not found", "text/plain", "no-store", None)


@contextlib.contextmanager
def _serving(
    answer: Any,
    sent: Counter[str],
    bytes_per_second: int,
    address: str = "127.0.0.1",
    git_root: Path | None = None,
) -> Iterator[int]:
    """Serve ``answer(path) -> Page`` on a free port of ``address`` for the block; yields the
    port. With ``git_root``, paths ending in ``.git/…`` are git's smart HTTP protocol for the
    bare repositories there (``git http-backend``, what a git host answers)."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # uv asks before it downloads a wheel
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_POST(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path, _, query = self.path.partition("?")
            if git_root is not None and ".git/" in path:
                self._git(git_root, path, query)
                return
            status, data, kind, cache, counted = answer(path)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", f"public, {cache}")
            self.end_headers()
            if not body:
                return
            if counted is not None:
                sent[counted] += 1
            self._send(data)

        def _send(self, body: bytes) -> None:
            step = 64 * 1024
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                if len(body) > step:
                    time.sleep(step / bytes_per_second)

        def _git(self, root: Path, path: str, query: str) -> None:
            request = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(request)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            done = subprocess.run(
                ["git", "http-backend"], input=request, env=env, capture_output=True, check=False
            )
            head, _, data = done.stdout.partition(b"\r\n\r\n")
            headers = [line.partition(": ")[::2] for line in head.decode().split("\r\n")]
            status = next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)
            self.send_response(status)
            for name, value in headers:
                if name and name != "Status":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def package_index(
    wheels: dict[str, tuple[str, bytes]], bytes_per_second: int = 2_000_000
) -> Iterator[PackageIndex]:
    """Serve ``wheels`` on a free loopback port for the block."""
    by_file = {file: data for file, data in wheels.values()}
    metadata = {f"{file}.metadata": _wheel_metadata(data) for file, data in wheels.values()}

    def answer(path: str) -> Page:
        if path == "/simple/":
            links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in wheels)
            return 200, links.encode(), "text/html", "max-age=0", None
        if path.startswith("/simple/") and path.strip("/").split("/")[-1] in wheels:
            file, data = wheels[path.strip("/").split("/")[-1]]
            digest = hashlib.sha256(data).hexdigest()
            core = hashlib.sha256(metadata[f"{file}.metadata"]).hexdigest()
            page = (  # with its metadata apart (PEP 658), as PyPI serves it
                f'<a href="/files/{file}#sha256={digest}" data-core-metadata="sha256={core}" '
                f'data-dist-info-metadata="sha256={core}">{file}</a>\n'
            )
            return 200, page.encode(), "text/html", "max-age=0", None
        name = path.removeprefix("/files/")
        if path.startswith("/files/") and name in by_file:
            return 200, by_file[name], "application/octet-stream", "max-age=31536000", name
        if path.startswith("/files/") and name in metadata:
            return 200, metadata[name], "text/plain", "max-age=31536000", None
        return NOT_FOUND

    sent: Counter[str] = Counter()
    with _serving(answer, sent, bytes_per_second) as port:
        yield PackageIndex(port, wheels, sent)


def build_npm_package(name: str, version: str, main: str, padding: int = 0) -> bytes:
    """An npm package tarball (``package/package.json``, ``package/index.js`` holding ``main``,
    and ``padding`` bytes of incompressible data)."""
    files = {
        "package/package.json": json.dumps(
            {"name": name, "version": version, "main": "index.js"}
        ).encode(),
        "package/index.js": main.encode(),
        "package/padding.bin": os.urandom(padding),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def npm_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@dataclass
class NpmRegistry:
    port: int
    packages: dict[str, tuple[str, bytes]]
    """name -> (version, tarball)."""
    sent: Counter[str] = field(default_factory=Counter)
    """Tarball file name -> times it was sent."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def tarball_url(self, name: str) -> str:
        version, _ = self.packages[name]
        return f"{self.url}{name}/-/{name}-{version}.tgz"

    def lock_entry(self, name: str) -> dict[str, str]:
        """``name``'s entry in a ``package-lock.json`` (``packages["node_modules/<name>"]``)."""
        version, data = self.packages[name]
        return {
            "version": version,
            "resolved": self.tarball_url(name),
            "integrity": npm_integrity(data),
        }


@contextlib.contextmanager
def npm_registry(
    packages: dict[str, tuple[str, bytes]], bytes_per_second: int = 2_000_000
) -> Iterator[NpmRegistry]:
    """Serve ``packages`` (name -> (version, tarball)) as an npm registry on loopback."""
    registry: NpmRegistry

    def answer(path: str) -> Page:
        name, _, file = path.strip("/").partition("/-/")
        if name not in packages:
            return NOT_FOUND
        version, data = packages[name]
        if not file:
            manifest = {
                "name": name,
                "version": version,
                "dist": {
                    "tarball": registry.tarball_url(name),
                    "integrity": npm_integrity(data),
                    "shasum": hashlib.sha1(data).hexdigest(),
                },
            }
            packument = {
                "name": name,
                "dist-tags": {"latest": version},
                "versions": {version: manifest},
            }
            return 200, json.dumps(packument).encode(), "application/json", "max-age=300", None
        if file == f"{name}-{version}.tgz":
            return 200, data, "application/octet-stream", "max-age=31536000", file
        return NOT_FOUND

    sent: Counter[str] = Counter()
    with _serving(answer, sent, bytes_per_second) as port:
        registry = NpmRegistry(port, packages, sent)
        yield registry


def _go_hash(files: dict[str, bytes]) -> str:
    """Go's ``h1:`` hash of a module's files (``golang.org/x/mod/sumdb/dirhash.Hash1``)."""
    summary = "".join(
        f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files)
    )
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


@dataclass
class GoModule:
    """A module version as a Go module proxy serves it: ``go.mod`` and its ``.zip``."""

    path: str
    version: str
    files: dict[str, bytes]
    """File name in the module -> bytes (``go.mod`` among them)."""

    @property
    def zip_name(self) -> str:
        return f"{self.version}.zip"

    def zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in self.files.items():
                archive.writestr(f"{self.path}@{self.version}/{name}", data)
        return buffer.getvalue()

    def go_sum(self) -> str:
        """The module's two lines in a ``go.sum``."""
        prefix = f"{self.path}@{self.version}/"
        content = _go_hash({prefix + name: data for name, data in self.files.items()})
        mod = _go_hash({"go.mod": self.files["go.mod"]})
        return f"{self.path} {self.version} {content}\n{self.path} {self.version}/go.mod {mod}\n"


@dataclass
class GoProxy:
    host: str
    port: int
    sent: Counter[str] = field(default_factory=Counter)
    """``<module>@<version>.zip`` -> times it was sent."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def go_proxy(modules: list[GoModule], bytes_per_second: int = 2_000_000) -> Iterator[GoProxy]:
    """Serve ``modules`` over the ``GOPROXY`` protocol: ``/<module>/@v/list``, ``.info``,
    ``.mod`` and ``.zip`` (module paths in lower case here, so no ``!`` escapes).

    Go never sends a request for ``localhost`` or a loopback address through ``HTTP_PROXY``
    (``net/http``'s own rule), and a sandbox reaches nothing else, so the proxy is named by this
    machine's host name and listens on the address that name resolves to."""
    zips = {f"/{m.path}/@v/{m.zip_name}": (m, m.zip()) for m in modules}

    def answer(path: str) -> Page:
        for module in modules:
            base = f"/{module.path}/@v/"
            if not path.startswith(base):
                continue
            leaf = path.removeprefix(base)
            if leaf == "list":
                return 200, f"{module.version}\n".encode(), "text/plain", "max-age=0", None
            if leaf == f"{module.version}.info":
                info = {"Version": module.version, "Time": "2026-01-01T00:00:00Z"}
                return 200, json.dumps(info).encode(), "application/json", "max-age=0", None
            if leaf == f"{module.version}.mod":
                return 200, module.files["go.mod"], "text/plain", "max-age=0", None
            if path in zips:
                counted = f"{module.path}@{module.zip_name}"
                return 200, zips[path][1], "application/zip", "max-age=31536000", counted
        return NOT_FOUND

    host = socket.gethostname()
    sent: Counter[str] = Counter()
    with _serving(answer, sent, bytes_per_second, socket.gethostbyname(host)) as port:
        yield GoProxy(host, port, sent)


def build_crate(name: str, version: str, lib: str, padding: int = 0) -> bytes:
    """A ``.crate`` as ``cargo package`` makes it: a gzipped tar of ``<name>-<version>/`` with
    ``Cargo.toml``, ``src/lib.rs`` holding ``lib`` and ``padding`` bytes of incompressible data."""
    manifest = f'[package]\nname = "{name}"\nversion = "{version}"\nedition = "2021"\n'
    files = {"Cargo.toml": manifest.encode(), "src/lib.rs": lib.encode()}
    files["padding.bin"] = os.urandom(padding)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _index_path(name: str) -> str:
    """Where a crate's lines are in a registry index (cargo's layout)."""
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def _git_repository(folder: Path, bare: Path, files: dict[str, bytes]) -> None:
    """``bare``: a bare repository of one commit holding ``files``."""
    git = ["git", "-c", "user.name=index", "-c", "user.email=index@example.com", "-C", str(folder)]
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "index"]):
        subprocess.run([*git, *argv], check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(folder), str(bare)], check=True)


@dataclass
class CargoRegistry:
    host: str
    port: int
    crates: dict[tuple[str, str], bytes]
    """(name, version) -> ``.crate``."""
    sent: Counter[str] = field(default_factory=Counter)
    """``<name>-<version>.crate`` -> times it was sent."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def index_url(self) -> str:
        """The registry's git index (cargo's ``registry = "…"``)."""
        return f"{self.url}/index.git"

    @property
    def sparse_url(self) -> str:
        """The same index over cargo's sparse protocol (plain files; cargo 1.68 and later)."""
        return f"sparse+{self.url}/index/"

    def git_url(self, name: str) -> str:
        """A git repository served beside the index (a git dependency's ``git = "…"``)."""
        return f"{self.url}/{name}.git"


@contextlib.contextmanager
def cargo_registry(
    crates: dict[tuple[str, str], bytes],
    git: dict[str, dict[str, bytes]] | None = None,
    bytes_per_second: int = 2_000_000,
) -> Iterator[CargoRegistry]:
    """A cargo registry: its index (``config.json``, one line per crate version with the
    ``.crate``'s sha256) as a git repository over git's smart HTTP protocol, as crates.io's was
    (what cargo 0.66 reads), and as plain files (the sparse protocol, crates.io's today); the
    ``.crate`` downloads ``config.json``'s ``dl`` names; and the bare repositories ``git``
    (name -> files) for git dependencies. Named by this machine's host name, as ``go_proxy`` is:
    nothing a sandbox reaches is on its loopback."""
    host = socket.gethostname()
    sent: Counter[str] = Counter()
    index: dict[str, bytes] = {}

    def answer(path: str) -> Page:
        if path.startswith("/index/") and path.removeprefix("/index/") in index:
            data = index[path.removeprefix("/index/")]
            return 200, data, "application/json", "max-age=0", None
        parts = path.strip("/").split("/")  # crates/<name>/<version>/download
        if len(parts) == 4 and parts[0] == "crates" and parts[3] == "download":
            data = crates.get((parts[1], parts[2]))
            if data is not None:
                counted = f"{parts[1]}-{parts[2]}.crate"
                return 200, data, "application/gzip", "max-age=31536000", counted
        return NOT_FOUND

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "served"
        root.mkdir()
        with _serving(
            answer, sent, bytes_per_second, socket.gethostbyname(host), git_root=root
        ) as port:
            registry = CargoRegistry(host, port, crates, sent)
            config = {"dl": f"{registry.url}/crates/{{crate}}/{{version}}/download"}
            index["config.json"] = json.dumps(config).encode()
            for (name, version), data in crates.items():
                line = {
                    "name": name,
                    "vers": version,
                    "deps": [],
                    "cksum": hashlib.sha256(data).hexdigest(),
                    "features": {},
                    "yanked": False,
                }
                index[_index_path(name)] = (json.dumps(line) + "\n").encode()
            for name, files in {"index": index, **(git or {})}.items():
                (Path(folder) / name).mkdir()
                _git_repository(Path(folder) / name, root / f"{name}.git", files)
            yield registry
