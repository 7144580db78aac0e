"""Exact address sets (IPv4 and IPv6 intervals) and CIDR parsing as Kubernetes validates it (pure)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from contract.annotation import SourceSet
from contract.intervals import Intervals, intersect, merge, of_network, subtract
from webhook.objects import SemanticsError

V4_MAX = 2**32 - 1
V6_MAX = 2**128 - 1



Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Addresses:
    """A set of IPv4 and IPv6 addresses as sorted, disjoint, non-adjacent inclusive intervals."""

    v4: Intervals = ()
    v6: Intervals = ()

    @staticmethod
    def everyone() -> Addresses:
        return _EVERYONE

    @staticmethod
    def nobody() -> Addresses:
        return _NOBODY

    @staticmethod
    def of_networks(networks: Iterable[Network]) -> Addresses:
        nets = list(networks)
        return Addresses(
            v4=merge(of_network(n) for n in nets if n.version == 4),
            v6=merge(of_network(n) for n in nets if n.version == 6),
        )

    def is_empty(self) -> bool:
        return not self.v4 and not self.v6

    def is_everyone(self) -> bool:
        return self.v4 == ((0, V4_MAX),) and self.v6 == ((0, V6_MAX),)

    def union(self, other: Addresses) -> Addresses:
        if other.is_empty() or self.is_everyone():
            return self
        if self.is_empty() or other.is_everyone():
            return other
        return Addresses(v4=merge(self.v4 + other.v4), v6=merge(self.v6 + other.v6))

    def intersection(self, other: Addresses) -> Addresses:
        if self.is_everyone() or other.is_empty():
            return other
        if other.is_everyone() or self.is_empty():
            return self
        return Addresses(v4=intersect(self.v4, other.v4), v6=intersect(self.v6, other.v6))

    def difference(self, other: Addresses) -> Addresses:
        return Addresses(v4=subtract(self.v4, other.v4), v6=subtract(self.v6, other.v6))

    def contains(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        value = int(ip)
        return any(s <= value <= e for s, e in (self.v4 if ip.version == 4 else self.v6))


_EVERYONE = Addresses(v4=((0, V4_MAX),), v6=((0, V6_MAX),))
_NOBODY = Addresses()




def parse_cidr(text: object, path: str, *, strict: bool) -> Network:
    if not isinstance(text, str):
        raise SemanticsError(path, f"expected a CIDR string, got {type(text).__name__}")
    if not text.partition("/")[2].isdigit():
        # ipaddress would accept a bare address or a netmask; Kubernetes wants address/length.
        raise SemanticsError(path, f"{text!r} is not a valid CIDR: write address/prefix-length, e.g. 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text, strict=strict)
    except ValueError as exc:
        if strict and "/" in text:
            try:
                fixed = ipaddress.ip_network(text, strict=False)
            except ValueError:
                pass
            else:
                raise SemanticsError(path, f"{text} has host bits set; did you mean {fixed}?") from exc
        raise SemanticsError(path, f"{text!r} is not a valid CIDR (e.g. 192.0.2.0/24): {exc}") from exc


# (version, first address, last address, prefix length)
NetKey = tuple[int, int, int, int]


def _net_key(net: Network) -> NetKey:
    return net.version, int(net.network_address), int(net.broadcast_address), net.prefixlen


def _fast_net_key(text: object) -> tuple[NetKey, bool] | None:
    """Parse a CIDR without the ipaddress module (it dominates resolution time): the network
    (host bits masked) and whether host bits were set. None when the text is not a plain CIDR;
    the caller then falls back to ipaddress for the verdict and the error message."""
    if not isinstance(text, str):
        return None
    addr, sep, plen = text.partition("/")
    if not sep or not plen.isdigit() or (len(plen) > 1 and plen[0] == "0"):
        return None
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in addr else (4, socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, addr), "big")
    except OSError:
        return None
    prefix = int(plen)
    if prefix > bits:
        return None
    host = (1 << (bits - prefix)) - 1
    start = value & ~host
    return (version, start, start | host, prefix), start != value


def net_text(key: NetKey) -> str:
    """Canonical text of a network (the form written into annotations)."""
    version, start, _, prefix = key
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, start.to_bytes(4, 'big'))}/{prefix}"
    return str(ipaddress.IPv6Network((start, prefix)))


def net_key_of(text: object, path: str, *, strict: bool) -> NetKey:
    fast = _fast_net_key(text)
    if fast is not None:
        key, host_bits = fast
        if strict and host_bits:
            raise SemanticsError(path, f"{text} has host bits set; did you mean {net_text(key)}?")
        return key
    return _net_key(parse_cidr(text, path, strict=strict))


def source_set_contains(sources: SourceSet, address: str) -> bool:
    """Whether a client address is allowed by a contract SourceSet (families never mix)."""
    if sources.all_sources:
        return True
    ip = ipaddress.ip_address(address)
    for rule in sources.cidrs:
        net = ipaddress.ip_network(rule.cidr)
        if ip.version == net.version and ip in net and not any(ip in ipaddress.ip_network(e) for e in rule.excepts):
            return True
    return False
