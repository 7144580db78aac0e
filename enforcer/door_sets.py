"""Layout of the door sets: names, types, members and their parsing (pure; docs/dataplane.md, "Doors").

Per family with doors: `npg-<f>-doors` (hash:ip,port: the protected doors, protocol in the element, so
one set serves TCP, UDP and SCTP), `npg-<f>-door-allow` (hash:ip,port,net: allowed (door, proto:port,
source prefix) triples, matched dst,dst,src) and `npg-<f>-door-audit` (hash:ip,port: doors in audit mode).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from contract.annotation import PROTOCOLS, Protocol
from enforcer.plan import DoorKey, Family, Network, ProtectedDoor

SET_PREFIX = "npg-"
# Doors grow with the Services, not with the NodePort range: the same ceiling as the allow set.
DOOR_MAXELEM = 1 << 20
_LOWER: dict[Protocol, str] = {p: p.lower() for p in PROTOCOLS}
_UPPER: dict[str, Protocol] = {p.lower(): p for p in PROTOCOLS}


def doors_set_name(family: Family) -> str:
    return f"{SET_PREFIX}{family}-doors"


def door_allow_set_name(family: Family) -> str:
    return f"{SET_PREFIX}{family}-door-allow"


def door_audit_set_name(family: Family) -> str:
    return f"{SET_PREFIX}{family}-door-audit"


def door_set_names(family: Family) -> tuple[str, ...]:
    return (doors_set_name(family), door_allow_set_name(family), door_audit_set_name(family))


def door_set_options(name: str, family: Family) -> str:
    """The `create` arguments after the name, as `ipset save` prints its type and header prefix."""
    inet = "inet" if family == 4 else "inet6"
    kind = "hash:ip,port,net" if name == door_allow_set_name(family) else "hash:ip,port"
    return f"{kind} family {inet} hashsize 1024 maxelem {DOOR_MAXELEM}"


def _net_text(net: Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def render_door(key: DoorKey) -> str:
    """A member of the doors (and audit) set: `198.51.100.200,tcp:8080`."""
    return f"{key.address},{_LOWER[key.protocol]}:{key.port}"


def render_door_members(doors: Iterable[ProtectedDoor], audit_all: bool) -> dict[str, set[str]]:
    """The door sets of every family with a door, with their members."""
    out: dict[str, set[str]] = {}
    for door in doors:
        family = door.key.family
        for name in door_set_names(family):
            out.setdefault(name, set())
        member = render_door(door.key)
        out[doors_set_name(family)].add(member)
        out[door_allow_set_name(family)].update(f"{member},{_net_text(n)}" for n in door.allowed)
        if audit_all or door.mode == "audit":
            out[door_audit_set_name(family)].add(member)
    return out


def _parse_door(member: str, family: Family) -> DoorKey | None:
    address, _, proto_port = member.partition(",")
    proto, _, port = proto_port.partition(":")
    if proto not in _UPPER or not port.isdigit():
        return None
    return DoorKey(family, _UPPER[proto], str(ipaddress.ip_address(address)), int(port))


def parse_installed_doors(members: Mapping[str, frozenset[str]], family: Family) -> list[ProtectedDoor]:
    """What the installed door sets of one family enforce (as programmed, not re-collapsed)."""
    allowed: dict[DoorKey, list[Network]] = {}
    for member in members.get(doors_set_name(family), frozenset()):
        key = _parse_door(member, family)
        if key is not None:
            allowed[key] = []
    for member in members.get(door_allow_set_name(family), frozenset()):
        head, _, net = member.rpartition(",")
        key = _parse_door(head, family)
        if key is not None and key in allowed:
            allowed[key].append(ipaddress.ip_network(net, strict=False))
    audited = {_parse_door(m, family) for m in members.get(door_audit_set_name(family), frozenset())}
    return [
        ProtectedDoor(k, tuple(sorted(allowed[k], key=lambda n: (int(n.network_address), n.prefixlen))),
                      "audit" if k in audited else "enforce")
        for k in sorted(allowed)
    ]
