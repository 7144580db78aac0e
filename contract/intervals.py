"""Exact address-set arithmetic on sorted, disjoint, non-adjacent inclusive integer intervals (pure).

One implementation for both sides: the webhook's source sets and the enforcer's intersection
of verdicts. Addresses are integers (IPv4 and IPv6 kept apart by the caller).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Intervals = tuple[tuple[int, int], ...]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def merge(intervals: Iterable[tuple[int, int]]) -> Intervals:
    """Sort and merge overlapping or adjacent intervals."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + 1:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


def intersect(a: Intervals, b: Intervals) -> Intervals:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start <= end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def subtract(a: Intervals, b: Intervals) -> Intervals:
    out: list[tuple[int, int]] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] < cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= end:
            if b[k][0] > cur:
                out.append((cur, b[k][0] - 1))
            cur = max(cur, b[k][1] + 1)
            k += 1
        if cur <= end:
            out.append((cur, end))
    return tuple(out)


def of_network(net: Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def of_networks(nets: Iterable[Network]) -> Intervals:
    return merge(of_network(n) for n in nets)


def to_prefixes(intervals: Intervals, version: int) -> list[Network]:
    """The fewest CIDR prefixes covering exactly `intervals` (of one IP version)."""
    make: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    )
    out: list[Network] = []
    for start, end in intervals:
        out.extend(ipaddress.summarize_address_range(make(start), make(end)))
    return out
