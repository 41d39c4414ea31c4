"""Which hosts the setup phase may reach: pure decisions, no I/O.

An allowlist entry is ``host``, ``*.domain`` (any name below ``domain``, not ``domain``
itself) or either with ``:port``. Without a port an entry allows 80 and 443. The operator's
defaults (``egress.allow``) apply to every repository; a repository may remove entries
(``egress.deny`` in ``.github/bosun.yml``) and add hosts that match the operator's
``egress.repository_may_allow`` patterns, nothing else.

A name that resolves to an address outside the public internet (loopback, private ranges,
link-local, carrier-grade NAT, multicast, reserved, unspecified; IPv4-mapped IPv6 checked as
IPv4) is refused unless the operator named that exact host in ``egress.private_hosts``: an
allowlisted name whose DNS answer is changed to ``127.0.0.1`` or ``169.254.169.254`` (DNS
rebinding) gets nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_PORTS = frozenset({80, 443})
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ENTRY = re.compile(
    r"^(?P<host>\*|\*\.[^:\s]+|[^:\s*]+|\[[0-9a-fA-F:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadEntry(ValueError):
    """An allowlist entry that is not ``host``, ``*.domain`` or either with ``:port``."""


def normal_host(host: str) -> str | None:
    """``host`` lower-cased without a trailing dot or IPv6 brackets, or ``None`` when it is
    neither a DNS name nor an IP address."""
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not _HOST.match(text):
        return None
    return text


@dataclass(frozen=True, slots=True)
class Rule:
    """One allowlist entry, parsed."""

    host: str
    """A host name or address, ``*.domain``, or ``*`` (any host)."""
    port: int | None = None
    """The one port allowed; ``None`` allows 80 and 443."""

    @classmethod
    def parse(cls, entry: str) -> Rule:
        match = _ENTRY.match(entry.strip())
        if match is None:
            raise BadEntry(f"{entry!r} is not `host`, `*.domain` or either with `:port`")
        raw, port_text = match.group("host"), match.group("port")
        port = int(port_text) if port_text else None
        if port is not None and not 0 < port < 65536:
            raise BadEntry(f"{entry!r}: port {port} is out of range")
        if raw == "*":
            return cls("*", port)
        wildcard = raw.startswith("*.")
        host = normal_host(raw[2:] if wildcard else raw)
        if host is None:
            raise BadEntry(f"{entry!r}: {raw!r} is not a host name or IP address")
        return cls(f"*.{host}" if wildcard else host, port)

    def matches_host(self, host: str) -> bool:
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    @property
    def ports(self) -> frozenset[int]:
        return DEFAULT_PORTS if self.port is None else frozenset({self.port})

    def matches(self, host: str, port: int) -> bool:
        return port in self.ports and self.matches_host(host)

    def covers(self, other: Rule) -> bool:
        """Whether every host and port ``other`` allows is allowed by this rule."""
        if not other.ports <= self.ports:
            return False
        if self.host == "*":
            return True
        if other.host == "*":
            return False
        if other.host.startswith("*."):
            return self.host.startswith("*.") and other.host[1:].endswith(self.host[1:])
        return self.matches_host(other.host)

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_rules(entries: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(Rule.parse(entry) for entry in entries)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    """Why, in a few words (``allowlisted: pypi.org``, ``not on the allowlist``)."""


@dataclass(frozen=True)
class EgressPolicy:
    """The effective allowlist of one run."""

    rules: tuple[Rule, ...]
    private_hosts: frozenset[str] = frozenset()
    """Exact hosts the operator lets resolve to non-public addresses."""
    notes: tuple[str, ...] = field(default=())
    """What the repository asked for that the operator does not permit (ignored)."""

    def decide(self, host: str, port: int) -> Decision:
        """Whether ``host:port`` is on the allowlist (before its name is resolved)."""
        name = normal_host(host)
        if name is None:
            return Decision(False, "not a host name")
        for rule in self.rules:
            if rule.matches(name, port):
                return Decision(True, f"allowlisted: {rule}")
        return Decision(False, "not on the allowlist")

    def address_allowed(self, host: str, address: IpAddress) -> Decision:
        """Whether ``host`` may be reached at ``address`` (what its name resolved to)."""
        if public(address):
            return Decision(True, "public address")
        if normal_host(host) in self.private_hosts:
            return Decision(True, "private address allowed for this host by the operator")
        return Decision(False, f"resolves to a non-public address ({address})")

    def describe(self) -> list[str]:
        return [str(rule) for rule in self.rules]


def public(address: IpAddress) -> bool:
    """Whether ``address`` is on the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return public(mapped)
        if address.teredo is not None:
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def effective_policy(
    defaults: Iterable[str],
    private_hosts: Iterable[str],
    may_allow: Iterable[str],
    repo_allow: Iterable[str],
    repo_deny: Iterable[str],
) -> EgressPolicy:
    """The operator's ``defaults`` without what the repository denies, plus what it allows
    within ``may_allow``. Entries are checked already (settings and repository config)."""
    denied = parse_rules(repo_deny)
    permitted = parse_rules(may_allow)
    rules = [rule for rule in parse_rules(defaults) if not any(d.covers(rule) for d in denied)]
    notes: list[str] = []
    for rule in parse_rules(repo_allow):
        if any(p.covers(rule) for p in permitted):
            if rule not in rules:
                rules.append(rule)
        else:
            notes.append(
                f"egress.allow: {rule} is not among the hosts the operator lets repositories add "
                "(egress.repository_may_allow); ignored"
            )
    private = frozenset(h for h in (normal_host(x) for x in private_hosts) if h is not None)
    return EgressPolicy(tuple(rules), private, tuple(notes))
