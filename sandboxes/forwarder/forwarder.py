#!/usr/bin/env python3
"""Bosun's in-sandbox forwarder: relays TCP connections on 127.0.0.1 to the model gateway's
Unix socket, byte for byte, in both directions.

    python3 -I forwarder.py --port 8788 --socket /bosun-gw/gateway.sock -- claude -p ...

After ``--`` comes the agent's argv: the forwarder starts listening, then runs the agent as its
child (same stdio, environment and process group), relays SIGTERM, SIGINT, SIGHUP, SIGQUIT,
SIGUSR1 and SIGUSR2 to it, and exits with its status (128 + the signal number when the agent was
killed by a signal; 127 when the command does not exist). Without a command it serves until it
is signalled or its parent goes away.

Standard library only, and only the cheap parts of it (sockets and threads, no asyncio, no
subprocess): it listens within a few tens of milliseconds of starting. Writes nothing to disk,
so it runs as any uid on a read-only root.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time

CHUNK = 64 * 1024
DEFAULT_PORT = 8788
DEFAULT_SOCKET = "/bosun-gw/gateway.sock"
RELAYED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
EXIT_USAGE = 64
EXIT_SETUP_FAILED = 70
USAGE = "usage: forwarder.py [--port N] [--socket PATH] [-- COMMAND [ARG...]]"


def gateway_down(reason: str) -> bytes:
    """An HTTP 502 the agent's SDK can show when the gateway socket cannot be reached."""
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "gateway_unavailable",
                "code": "gateway_unavailable",
                "message": f"the model gateway is not reachable from the sandbox: {reason}",
            },
        }
    ).encode()
    head = (
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until end of stream, then half-close ``sink``."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def relay(client: socket.socket, socket_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            client.sendall(gateway_down(exc.strerror or type(exc).__name__))
        upstream.close()
        client.close()
        return
    back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
    back.start()
    pipe(client, upstream)
    back.join()
    upstream.close()
    client.close()


def serve(listener: socket.socket, socket_path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=relay, args=(client, socket_path), daemon=True).start()


def listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    return listener


def run_child(command: list[str]) -> int:
    child: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        for pid in child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in RELAYED_SIGNALS:
        signal.signal(sig, forward)
    try:
        # Python ignores SIGPIPE; the agent must get the default back (as subprocess does).
        pid = os.posix_spawnp(
            command[0], command, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
        )
    except OSError as exc:
        print(f"bosun-forwarder: cannot start {command[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    child.append(pid)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def leave(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def wait_for_parent() -> int:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    return 0


def parse(argv: list[str]) -> tuple[int, str, list[str]] | None:
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
        if not command:
            return None
    port = int(os.environ.get("BOSUN_GATEWAY_PORT", DEFAULT_PORT))
    path = os.environ.get("BOSUN_GATEWAY_SOCKET", DEFAULT_SOCKET)
    options = iter(argv)
    for option in options:
        value = next(options, None)
        if value is None or option not in ("--port", "--socket"):
            return None
        if option == "--port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                return None
            port = int(value)
        else:
            path = value
    return port, path, command


def main(argv: list[str]) -> int:
    parsed = parse(argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    port, socket_path, command = parsed
    if not command:  # before listening: a client may signal as soon as it can connect
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, leave)
    try:
        listener = listen(port)
    except OSError as exc:
        print(f"bosun-forwarder: cannot listen on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if not os.path.exists(socket_path):
        print(f"bosun-forwarder: warning: {socket_path} does not exist (yet)", file=sys.stderr)
    threading.Thread(target=serve, args=(listener, socket_path), daemon=True).start()
    return run_child(command) if command else wait_for_parent()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
