"""A tiny PEP 503 package index on loopback, serving wheels built in the test.

``PackageIndex`` serves ``/simple/`` (the project list), ``/simple/<project>/`` (links with
``sha256`` fragments) and ``/files/<wheel>``, cacheable like PyPI's files, at a throttled rate
so a download the cache saves is visible. It counts each file it sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextlib.contextmanager
def package_index(
    wheels: dict[str, tuple[str, bytes]], bytes_per_second: int = 2_000_000
) -> Iterator[PackageIndex]:
    """Serve ``wheels`` on a free loopback port for the block."""
    by_file = {file: data for file, data in wheels.values()}
    index: PackageIndex

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/simple/":
                links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in wheels)
                self._send(200, links.encode(), "text/html", "max-age=0")
            elif path.startswith("/simple/") and path.strip("/").split("/")[-1] in wheels:
                file, data = wheels[path.strip("/").split("/")[-1]]
                digest = hashlib.sha256(data).hexdigest()
                page = f'<a href="/files/{file}#sha256={digest}">{file}</a>\n'
                self._send(200, page.encode(), "text/html", "max-age=0")
            elif path.startswith("/files/") and path[len("/files/") :] in by_file:
                name = path[len("/files/") :]
                index.sent[name] += 1
                self._send(200, by_file[name], "application/octet-stream", "max-age=31536000")
            else:
                self._send(404, b"not found", "text/plain", "no-store")

        def _send(self, status: int, body: bytes, kind: str, cache: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", f"public, {cache}")
            self.end_headers()
            step = 64 * 1024
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                if len(body) > step:
                    time.sleep(step / bytes_per_second)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    index = PackageIndex(server.server_address[1], wheels)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
