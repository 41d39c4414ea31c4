"""The egress proxy and its allowlist: what the setup phase may reach, and how.

The proxy runs for real on a Unix socket, talking to real servers on loopback; names are
resolved by a resolver the test controls (an allowlisted name answering a private address is
how DNS rebinding looks to the proxy).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.agents.egress import EgressProxy, EgressRecord
from bot.domain.egress import (
    BadEntry,
    EgressPolicy,
    IpAddress,
    Rule,
    effective_policy,
    parse_rules,
    public,
)


def test_rules_match_hosts_and_ports() -> None:
    policy = EgressPolicy(parse_rules(["pypi.org", "*.example.com", "mirror.local:8080"]))
    assert policy.decide("pypi.org", 443).allowed
    assert policy.decide("PyPI.org.", 80).allowed  # case and a trailing dot do not matter
    assert not policy.decide("pypi.org", 22).allowed  # no port: 80 and 443 only
    assert not policy.decide("evilpypi.org", 443).allowed
    assert not policy.decide("pypi.org.evil.com", 443).allowed
    assert policy.decide("a.b.example.com", 443).allowed
    assert not policy.decide("example.com", 443).allowed  # *.domain is below it only
    assert policy.decide("mirror.local", 8080).allowed
    assert not policy.decide("mirror.local", 443).allowed
    assert not policy.decide("bad host", 443).allowed
    for entry in ("", "http://pypi.org", "a b", "*", "host:99999", "*foo.com"):
        if entry == "*":
            assert Rule.parse(entry).matches("anything.org", 443)
            continue
        with pytest.raises(BadEntry):
            Rule.parse(entry)


def test_repository_narrows_and_extends_only_within_the_operators_rules() -> None:
    policy = effective_policy(
        defaults=["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"],
        private_hosts=[],
        may_allow=["*.corp.example", "github.com"],
        repo_allow=["pkgs.corp.example", "evil.com", "github.com:22"],
        repo_deny=["registry.npmjs.org"],
    )
    assert policy.decide("pypi.org", 443).allowed
    assert not policy.decide("registry.npmjs.org", 443).allowed
    assert policy.decide("pkgs.corp.example", 443).allowed
    assert not policy.decide("evil.com", 443).allowed
    assert not policy.decide("github.com", 22).allowed  # the operator allowed 80/443 only
    assert len(policy.notes) == 2 and "evil.com" in policy.notes[0]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_not_public(address: str) -> None:
    assert not public(ipaddress.ip_address(address))


def test_public_addresses_are_public() -> None:
    for address in ("151.101.0.223", "2a04:4e42::223", "8.8.8.8"):
        assert public(ipaddress.ip_address(address))


# --- the proxy, for real --------------------------------------------------------------------


upstream_heads: list[bytes] = []
"""Request heads the upstream received (the plain-HTTP test reads them)."""


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        if data.startswith(b"GET "):
            upstream_heads.append(data)
            body = b"first line: " + data.split(b"\r\n", 1)[0]
            head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            writer.write(head + body)
        else:
            writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _resolver(answers: dict[str, list[str]]) -> Callable[[str, int], object]:
    async def resolve(host: str, port: int) -> list[IpAddress]:
        if host not in answers:
            raise socket.gaierror("no such name")
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    server, port = await _echo_server()
    yield port
    server.close()
    await server.wait_closed()


async def _proxy(
    tmp_path: Path, policy: EgressPolicy, answers: dict[str, list[str]]
) -> tuple[EgressProxy, list[EgressRecord]]:
    records: list[EgressRecord] = []
    proxy = EgressProxy(
        "r1",
        tmp_path / "egress",
        policy,
        on_request=records.append,
        sandbox_gid=None,
        resolve=_resolver(answers),  # type: ignore[arg-type]
    )
    await proxy.start()
    return proxy, records


async def _ask(proxy: EgressProxy, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
    writer.write(request)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_connect_to_an_allowed_host_tunnels_and_is_logged(
    tmp_path: Path, upstream: int
) -> None:
    policy = EgressPolicy(parse_rules([f"mirror.test:{upstream}"]), frozenset({"mirror.test"}))
    proxy, records = await _proxy(tmp_path, policy, {"mirror.test": ["127.0.0.1"]})
    try:
        answer = await _ask(proxy, f"CONNECT mirror.test:{upstream} HTTP/1.1\r\n\r\nhello".encode())
        assert answer == b"HTTP/1.1 200 Connection established\r\n\r\necho:hello"
        await asyncio.sleep(0.05)
        (record,) = records
        assert (record.method, record.host, record.port, record.allowed) == (
            "CONNECT",
            "mirror.test",
            upstream,
            True,
        )
        assert (record.bytes_out, record.bytes_in) == (5, 10)
        assert record.address == "127.0.0.1"
    finally:
        await proxy.stop()
    assert not proxy.socket_path.exists()


async def test_plain_http_goes_upstream_in_origin_form(tmp_path: Path, upstream: int) -> None:
    """Origin form, the URL's host as ``Host`` (never another site's), no proxy headers."""
    policy = EgressPolicy(parse_rules([f"mirror.test:{upstream}"]), frozenset({"mirror.test"}))
    proxy, records = await _proxy(tmp_path, policy, {"mirror.test": ["127.0.0.1"]})
    try:
        request = (
            f"GET http://mirror.test:{upstream}/simple/pkg/?x=1 HTTP/1.1\r\n"
            f"Host: fronted.example\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n"
        )
        answer = await _ask(proxy, request.encode())
        assert answer.endswith(b"first line: GET /simple/pkg/?x=1 HTTP/1.1")
        seen = upstream_heads[-1]
        assert f"Host: mirror.test:{upstream}".encode() in seen
        assert b"fronted.example" not in seen and b"Proxy-Authorization" not in seen
        await asyncio.sleep(0.05)
        assert records[0].allowed and records[0].method == "GET"
    finally:
        await proxy.stop()


async def test_hosts_off_the_allowlist_and_rebinding_names_are_refused(
    tmp_path: Path, upstream: int
) -> None:
    policy = EgressPolicy(parse_rules(["pypi.org", f"127.0.0.1:{upstream}"]))
    answers = {"pypi.org": ["151.101.0.223", "127.0.0.1"], "127.0.0.1": ["127.0.0.1"]}
    proxy, records = await _proxy(tmp_path, policy, answers)
    try:
        off_list = await _ask(proxy, b"CONNECT evil.com:443 HTTP/1.1\r\n\r\n")
        assert off_list.startswith(b"HTTP/1.1 403 ") and b"not on the allowlist" in off_list
        # An allowlisted name whose answer includes loopback: refused before any connection.
        rebinding = await _ask(proxy, b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
        assert rebinding.startswith(b"HTTP/1.1 403 ") and b"non-public address" in rebinding
        # Loopback even when listed by address, unless the operator names it a private host.
        literal = await _ask(proxy, f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n\r\n".encode())
        assert literal.startswith(b"HTTP/1.1 403 ")
        https_absolute = await _ask(proxy, b"GET https://pypi.org/ HTTP/1.1\r\n\r\n")
        assert https_absolute.startswith(b"HTTP/1.1 400 ")
        garbage = await _ask(proxy, b"\x16\x03\x01 hello\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        await asyncio.sleep(0.05)
        assert [(r.host, r.allowed) for r in records][:3] == [
            ("evil.com", False),
            ("pypi.org", False),
            ("127.0.0.1", False),
        ]
        assert proxy.denied_hosts()[:2] == [("evil.com", 443, 1), ("pypi.org", 443, 1)]
    finally:
        await proxy.stop()


async def test_a_stopped_proxy_cuts_open_tunnels(tmp_path: Path) -> None:
    hold = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = EgressPolicy(parse_rules([f"m.test:{port}"]), frozenset({"m.test"}))
    proxy, _ = await _proxy(tmp_path, policy, {"m.test": ["127.0.0.1"]})
    reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
    writer.write(f"CONNECT m.test:{port} HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await proxy.stop()
    assert await asyncio.wait_for(reader.read(), 5) in (b"\r\n", b"")
    writer.close()
    hold.set()
    await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()


def test_the_dashboards_live_log_shows_each_egress_request() -> None:
    from bot.web.dashboard.runpage import line_of

    denied = EgressRecord("CONNECT", "evil.example", 443, False, "not on the allowlist")
    allowed = EgressRecord("GET", "pypi.org", 80, True, "allowlisted", "1.2.3.4", 10, 2048)
    lines = [
        line_of({"seq": n, "kind": "egress", "data": r.event_data("setup")})
        for n, r in enumerate((denied, allowed))
    ]
    assert lines[0] is not None and lines[1] is not None
    assert lines[0]["text"] == "egress CONNECT evil.example:443: DENIED (not on the allowlist)"
    assert lines[1]["text"] == "egress GET pypi.org:80: allowed, 2048 B in, 10 B out"
    assert lines[0]["stream"] == "egress"
