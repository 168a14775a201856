"""The SSRF guard: a webhook URL may only make the service call hosts on the public
internet, unless the operator allows private addresses (LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE,
for closed networks).

A URL is checked on the addresses its host resolves to, at registration and again at every
delivery, and the sender then connects to the address it checked (sender.py), so a name
that resolves to something else a moment later (DNS rebinding) cannot slip past. Every
address a name resolves to must pass: one private record among public ones is refused.
IPv6 forms that carry an IPv4 address (mapped, compatible, 6to4, NAT64) are judged by that
address. Cloud metadata endpoints, unspecified, multicast and reserved addresses are
refused even when private addresses are allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
# Instance metadata services (AWS, GCP, Azure: 169.254.169.254; AWS over IPv6; Alibaba;
# Azure's wire server): credentials live there.
_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not the internet
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL is not one the service will call; the message says why."""


class Unresolvable(UnsafeURL):
    """The URL's host does not resolve (now): a retry may find it."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str  # as written (the Host header and TLS name), without brackets
    port: int
    path: str  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse(url: str) -> Target:
    """The URL's parts, or UnsafeURL: http(s) only, a host, no credentials."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeURL("The URL must not contain whitespace or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"Invalid URL: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("The URL must start with http:// or https://.")
    if not parts.hostname:
        raise UnsafeURL("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("The URL must not carry credentials (user:password@).")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https"
                                                         else 80), path)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it carries one."""
    if ip.version != 6:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or int(ip) >> 32 == 0 and int(ip) > 1:  # NAT64, IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why the service will not call `ip`, or None when it may."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = refusal(inner, allow_private=allow_private)
        return None if reason is None else f"{reason} (as {ip})"
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:  # before `is_reserved`, which ::1 also is
        kind = "a loopback"
    elif ip.is_unspecified or ip.is_multicast or ip.is_reserved or (
            ip.version == 4 and ip in _THIS_NETWORK):
        return f"{ip} is not a unicast host address"
    elif ip.is_link_local:
        kind = "a link-local"
    elif ip.is_private or (ip.version == 4 and ip in _SHARED) or not ip.is_global:
        kind = "a private"
    else:
        return None
    if allow_private:
        return None
    return (f"{ip} is {kind} address (set LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE=true to allow "
            "private addresses on a closed network)")


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"The host {host!r} does not resolve: {exc}.") from None
    found = dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos)
    if not found:
        raise Unresolvable(f"The host {host!r} does not resolve.")
    return list(found)


def check(url: str, *, allow_private: bool) -> tuple[Target, list[IPAddress]]:
    """The URL's target and the addresses to connect to; UnsafeURL when any is refused."""
    target = parse(url)
    addresses = resolve(target.host, target.port)
    for ip in addresses:
        reason = refusal(ip, allow_private=allow_private)
        if reason is not None:
            raise UnsafeURL(f"The URL's host {target.host!r} resolves to {reason}.")
    return target, addresses
