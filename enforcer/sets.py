"""Layout of our ipsets: names, types, members, `ipset save`/`list -t` parsing, set changes (pure)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from contract.annotation import PROTOCOLS, Mode, Protocol
from enforcer.door_sets import door_set_names, door_set_options, parse_installed_doors, render_door_members
from enforcer.plan import FAMILIES, DesiredState, Family, Network, PortKey, ProtectedPort

logger = logging.getLogger(__name__)

SET_PREFIX = "npg-"
TMP_SUFFIX = "-t"
# hash:net,port grows on demand; maxelem is only a ceiling, set high so 10k ports x many CIDRs fit.
ALLOW_MAXELEM = 1 << 20
# The counter sets hold one member per (node address, proto:port) that saw a denied new connection;
# the ceiling bounds their memory (a full set stops counting new members; packets still drop).
COUNTER_MAXELEM = 1 << 18

_PROTO_LOWER: dict[Protocol, str] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_PROTO_UPPER: dict[str, Protocol] = {v: k for k, v in _PROTO_LOWER.items()}


# Where protected ports live, per protocol. bitmap:port is the cheapest lookup and is bounded by the
# NodePort range, but the kernel's port lookup for that type answers "no port" for anything but TCP
# and UDP, so a bitmap:port set never matches an SCTP packet. SCTP ports therefore live in a
# hash:net,port set, whose members carry the protocol; its "net" half is two /1 prefixes covering
# every destination address (hash:net cannot hold a /0) and is matched with `dst,dst`.
BITMAP_PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP")
_PORT_SET_SUFFIX: dict[Protocol, str] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp-ports"}
_ANY_DESTINATION: dict[Family, tuple[str, ...]] = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}


def port_set_name(family: Family, protocol: Protocol) -> str:
    """The set of protected ports of one protocol: bitmap:port for TCP/UDP, hash:net,port for SCTP."""
    return f"{SET_PREFIX}{family}-{_PORT_SET_SUFFIX[protocol]}"


def allow_set_name(family: Family) -> str:
    """hash:net,port of allowed (source prefix, proto:port) pairs."""
    return f"{SET_PREFIX}{family}-allow"


def audit_set_name(family: Family) -> str:
    """hash:net,port of the protected ports in audit mode (two /1 prefixes per port, like SCTP's)."""
    return f"{SET_PREFIX}{family}-audit"


def counter_set_name(family: Family, mode: Mode) -> str:
    """hash:ip,port with counters, filled by the kernel (`-j SET --add-set`): one member per
    (node address, proto:port) that saw a dropped ("enforce") or would-drop ("audit") new connection."""
    return f"{SET_PREFIX}{family}-{'dropped' if mode == 'enforce' else 'audited'}"


def counter_set_names(family: Family) -> tuple[str, ...]:
    return (counter_set_name(family, "enforce"), counter_set_name(family, "audit"))


def is_counter_set(name: str) -> bool:
    return any(name in counter_set_names(f) for f in FAMILIES)


def set_names(family: Family) -> tuple[str, ...]:
    """Every set of a family with protected ports. The counter sets' members are the kernel's, never
    ours: they are created and destroyed with the family and their members are not compared."""
    return (
        *(port_set_name(family, p) for p in PROTOCOLS),
        allow_set_name(family),
        audit_set_name(family),
        *counter_set_names(family),
    )


def retired_set_names(family: Family) -> tuple[str, ...]:
    """Sets of an earlier layout (the SCTP bitmap:port set that never matched): destroyed once unreferenced."""
    return (f"{SET_PREFIX}{family}-sctp",)


def family_of_set(name: str) -> Family | None:
    for family in FAMILIES:
        if name in set_names(family) or name in retired_set_names(family) or name in door_set_names(family):
            return family
    return None


def _is_hash_set(name: str, family: Family) -> bool:
    return name in (allow_set_name(family), port_set_name(family, "SCTP"), audit_set_name(family))


def set_create_options(name: str, nodeport_range: tuple[int, int]) -> str:
    """The `create` arguments after the name, as `ipset save` prints its type and header prefix."""
    family = family_of_set(name)
    if family is None or name in retired_set_names(family):
        raise ValueError(f"set {name!r}: not one of ours")
    if name in door_set_names(family):
        return door_set_options(name, family)
    if name in counter_set_names(family):
        inet = "inet" if family == 4 else "inet6"
        return f"hash:ip,port family {inet} hashsize 1024 maxelem {COUNTER_MAXELEM} counters"
    if _is_hash_set(name, family):
        inet = "inet" if family == 4 else "inet6"
        return f"hash:net,port family {inet} hashsize 1024 maxelem {ALLOW_MAXELEM}"
    return f"bitmap:port range {nodeport_range[0]}-{nodeport_range[1]}"


def render_port_members(family: Family, protocol: Protocol, port: int) -> tuple[str, ...]:
    """The members of the port set that mark (protocol, port) protected, as `ipset save` prints them."""
    if protocol in BITMAP_PROTOCOLS:
        return (str(port),)
    return render_audit_members(family, protocol, port)


def render_audit_members(family: Family, protocol: Protocol, port: int) -> tuple[str, ...]:
    """The members of the audit set (any destination address, proto:port) for one audited port."""
    return tuple(f"{net},{_PROTO_LOWER[protocol]}:{port}" for net in _ANY_DESTINATION[family])


def parse_port_member(set_name: str, member: str) -> PortKey | None:
    """The PortKey a member of one of our port sets marks protected (None: not a port-set member of ours)."""
    family = family_of_set(set_name)
    if family is None:
        return None
    for protocol in PROTOCOLS:
        if set_name != port_set_name(family, protocol):
            continue
        if protocol in BITMAP_PROTOCOLS:
            return PortKey(family, protocol, int(member))
        proto_text, _, port_text = member.rpartition(",")[2].partition(":")
        if _PROTO_UPPER.get(proto_text) != protocol:
            return None
        return PortKey(family, protocol, int(port_text))
    return None


def render_net(net: Network) -> str:
    """A prefix as `ipset save` prints it: a full-length prefix is printed as a bare address."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def render_allow_member(net: Network, protocol: Protocol, port: int) -> str:
    return f"{render_net(net)},{_PROTO_LOWER[protocol]}:{port}"


# Per port: the ProtectedPort last rendered, its port-set, allow-set and audit-set members.
MembersMemo = dict[PortKey, tuple[ProtectedPort, tuple[str, ...], tuple[str, ...], tuple[str, ...]]]


def render_members(
    state: DesiredState | Iterable[ProtectedPort], memo: MembersMemo | None = None, audit_all: bool = False
) -> dict[str, frozenset[str]]:
    """Every set of ours that must exist (families with protected ports) with its members.

    `memo` (owned by the caller, e.g. one Dataplane) keeps each port's rendered members:
    rendering 10k ports x 3 prefixes through `ipaddress` costs more than the incremental budget.
    A hit is an identity test when the caller reuses ProtectedPort objects of unchanged ports.
    `audit_all` (the node-wide rollout switch) puts every port in the audit set; a memo must be
    used with one value of it only. The counter sets are listed empty: their members are the kernel's.
    """
    memo = {} if memo is None else memo
    members: dict[str, set[str]] = {}
    # Per (family, protocol): (port set, allow set, audit set); avoids formatting names 10k times.
    targets: dict[tuple[Family, Protocol], tuple[set[str], set[str], set[str]]] = {}
    count = 0
    for p in state.ports if isinstance(state, DesiredState) else state:
        key = p.key
        count += 1
        target = targets.get((key.family, key.protocol))
        if target is None:
            for name in set_names(key.family):
                members.setdefault(name, set())
            target = (
                members[port_set_name(key.family, key.protocol)],
                members[allow_set_name(key.family)],
                members[audit_set_name(key.family)],
            )
            targets[(key.family, key.protocol)] = target
        hit = memo.get(key)
        if hit is not None and hit[0] is p:
            _, ported, rendered, audited = hit
        elif hit is not None and hit[0].allowed == p.allowed and hit[0].mode == p.mode:
            _, ported, rendered, audited = hit
            memo[key] = (p, ported, rendered, audited)  # next time, an identity hit
        else:
            ported = render_port_members(key.family, key.protocol, key.port)
            rendered = tuple(render_allow_member(n, key.protocol, key.port) for n in p.allowed)
            audit = audit_all or p.mode == "audit"
            audited = render_audit_members(key.family, key.protocol, key.port) if audit else ()
            memo[key] = (p, ported, rendered, audited)
        target[0].update(ported)
        target[1].update(rendered)
        target[2].update(audited)
    if len(memo) != count:
        # Ports were removed: keep only the current ones, so the memo never outgrows the state.
        current = {p.key for p in (state.ports if isinstance(state, DesiredState) else state)}
        for stale in [k for k in memo if k not in current]:
            del memo[stale]
    if isinstance(state, DesiredState) and state.doors:
        # A family with doors has the whole skeleton (docs/dataplane.md, "Doors"): every set of it exists.
        for name, door_members in render_door_members(state.doors, audit_all).items():
            members[name] = door_members
            for base in set_names(family_of_set(name) or 4):
                members.setdefault(base, set())
    return {k: frozenset(v) for k, v in sorted(members.items())}


@dataclass(frozen=True, slots=True)
class InstalledSet:
    name: str
    header: str  # the `create` line after the name, e.g. "bitmap:port range 30000-32767"
    members: frozenset[str]


def parse_ipset_save(text: str) -> dict[str, InstalledSet]:
    """Our sets (name prefix npg-) from `ipset save` output; other sets are ignored."""
    headers: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("create " + SET_PREFIX):
            _, name, header = line.split(" ", 2)
            headers[name] = header
            members.setdefault(name, set())
        elif line.startswith("add " + SET_PREFIX):
            _, name, member = line.split(" ", 2)
            if is_counter_set(name):
                continue  # the kernel's members: never compared, never rewritten (that would reset them)
            members.setdefault(name, set()).add(_normalize_member(name, member))
    return {n: InstalledSet(n, headers.get(n, ""), frozenset(members[n])) for n in sorted(headers)}


def _normalize_member(set_name: str, member: str) -> str:
    # ipset prints IPv4-mapped IPv6 with a dotted quad; Python renders hex: normalize that rare case.
    if set_name.startswith(f"{SET_PREFIX}6-") and "." in member:
        addr, _, port = member.partition(",")
        return f"{render_net(ipaddress.ip_network(addr, strict=False))},{port}"
    return member


def header_matches(installed_header: str, name: str, nodeport_range: tuple[int, int]) -> bool:
    """True when an existing set has the type, family and range we would create it with."""
    wanted = set_create_options(name, nodeport_range).split()
    have = installed_header.split()
    if not have or wanted[0] != have[0]:
        return False
    # Compare the identity-defining options; hashsize/bucketsize/initval change on their own.
    keys = {"family", "range"}
    want_opts = {wanted[i]: wanted[i + 1] for i in range(1, len(wanted) - 1, 2) if wanted[i] in keys}
    have_opts = {have[i]: have[i + 1] for i in range(1, len(have) - 1) if have[i] in keys}
    return want_opts == have_opts and ("counters" in wanted) == ("counters" in have)


def parse_installed_state(sets: Mapping[str, InstalledSet]) -> DesiredState:
    """What the installed sets enforce: ports in a port set, with their allow-set prefixes."""
    allowed: dict[PortKey, list[Network]] = {}
    audited: set[PortKey] = set()
    for fam in FAMILIES:
        audit = sets.get(audit_set_name(fam))
        for member in audit.members if audit else ():
            proto_text, _, port_text = member.rpartition(",")[2].partition(":")
            if proto_text in _PROTO_UPPER:
                audited.add(PortKey(fam, _PROTO_UPPER[proto_text], int(port_text)))
        for proto in PROTOCOLS:
            name = port_set_name(fam, proto)
            s = sets.get(name)
            for member in s.members if s else ():
                port_key = parse_port_member(name, member)
                if port_key is not None:
                    allowed[port_key] = []
        allow = sets.get(allow_set_name(fam))
        for member in allow.members if allow else ():
            addr, _, proto_port = member.partition(",")
            proto_text, _, port_text = proto_port.partition(":")
            if proto_text not in _PROTO_UPPER:
                continue
            key = PortKey(fam, _PROTO_UPPER[proto_text], int(port_text))
            if key in allowed:
                allowed[key].append(ipaddress.ip_network(addr, strict=False))
    # As programmed, not re-collapsed: what we write is already canonical, and a member added by
    # hand then shows up as a difference instead of being normalized away.
    ports = tuple(
        ProtectedPort(k, tuple(sorted(allowed[k], key=_net_order)), "audit" if k in audited else "enforce")
        for k in sorted(allowed)
    )
    members = {n: s.members for n, s in sets.items()}
    doors = tuple(d for fam in FAMILIES for d in parse_installed_doors(members, fam))
    return DesiredState(ports=ports, doors=tuple(sorted(doors, key=lambda d: d.key)))


def _net_order(net: Network) -> tuple[int, int]:
    return int(net.network_address), net.prefixlen


SetAction = Literal["create", "rebuild", "update", "destroy", "stray", "none"]


@dataclass(frozen=True, slots=True)
class SetChange:
    """How to bring one set to its desired members."""

    name: str
    # "create" (absent), "rebuild" (swap in a fresh copy), "update" (add/del), "destroy" (no longer
    # needed, after our rules are gone), "stray" (unreferenced leftover, destroyed first), "none"
    action: SetAction
    adds: tuple[str, ...] = ()  # members to write (for "rebuild": every member of the fresh copy)
    removes: tuple[str, ...] = ()  # members to delete ("update" only)
    added: int = 0  # net effect, for reports
    removed: int = 0


def plan_set_changes(
    desired: Mapping[str, frozenset[str]],
    installed: Mapping[str, InstalledSet],
    nodeport_range: tuple[int, int],
    incremental_limit: int = 5000,
) -> tuple[SetChange, ...]:
    """Per set: add/del only the difference when small, else rebuild; destroy sets no longer needed."""
    changes: list[SetChange] = []
    for name in sorted(set(desired) | set(installed)):
        if family_of_set(name) is None:
            # A stray set of ours (a temporary left by a killed sync): unreferenced, remove it first.
            changes.append(SetChange(name, "stray"))
            continue
        want = desired.get(name)
        have = installed.get(name)
        if want is None:
            changes.append(SetChange(name, "destroy", removed=len(have.members) if have else 0))
        elif have is None:
            changes.append(SetChange(name, "create", adds=tuple(sorted(want)), added=len(want)))
        else:
            adds = tuple(sorted(want - have.members))
            removes = tuple(sorted(have.members - want))
            if not header_matches(have.header, name, nodeport_range):
                changes.append(SetChange(name, "rebuild", tuple(sorted(want)), (), len(adds), len(removes)))
            elif not adds and not removes:
                changes.append(SetChange(name, "none"))
            elif len(adds) + len(removes) <= max(incremental_limit, len(want) // 4):
                changes.append(SetChange(name, "update", adds, removes, len(adds), len(removes)))
            else:
                changes.append(SetChange(name, "rebuild", tuple(sorted(want)), (), len(adds), len(removes)))
    return tuple(changes)


def render_ipset_restore(
    changes: Iterable[SetChange], nodeport_range: tuple[int, int], phase: Literal["fill", "destroy"]
) -> str:
    """One `ipset restore -exist` script. phase "fill" creates/updates; phase "destroy" removes sets.

    Sets are destroyed only after the rules referencing them are gone, hence two phases.
    """
    lines: list[str] = []
    changes = list(changes)
    if phase == "fill":
        lines.extend(f"destroy {c.name}" for c in changes if c.action == "stray")
    for c in changes:
        if phase == "destroy":
            if c.action == "destroy":
                lines.append(f"destroy {c.name}")
            continue
        if c.action == "create":
            lines.append(f"create {c.name} {set_create_options(c.name, nodeport_range)}")
            lines.extend(f"add {c.name} {m}" for m in c.adds)
        elif c.action == "update":
            lines.extend(f"del {c.name} {m}" for m in c.removes)
            lines.extend(f"add {c.name} {m}" for m in c.adds)
        elif c.action == "rebuild":
            # Fill a fresh copy, then swap it in atomically: the kernel never sees a half-filled set.
            tmp = c.name + TMP_SUFFIX
            lines.append(f"create {tmp} {set_create_options(c.name, nodeport_range)}")
            lines.extend(f"add {tmp} {m}" for m in c.adds)
            lines.append(f"swap {tmp} {c.name}")
            lines.append(f"destroy {tmp}")
    return "".join(line + "\n" for line in lines)


def port_match_flags(protocol: Protocol) -> str:
    """The set-match flags of the port set of `protocol`."""
    # bitmap:port looks at the destination port; hash:net,port at (destination address, destination port).
    return "dst" if protocol in BITMAP_PROTOCOLS else "dst,dst"


def parse_ipset_terse(text: str) -> dict[str, tuple[str, int]]:
    """Our sets from `ipset list -t`: name -> (header as `ipset save` prints it, number of entries)."""
    out: dict[str, tuple[str, int]] = {}
    name = typ = header = ""
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == "Name":
            name, typ, header = value.strip(), "", ""
        elif key == "Type":
            typ = value.strip()
        elif key == "Header":
            header = value.strip()
        elif key == "Number of entries" and name.startswith(SET_PREFIX):
            out[name] = (f"{typ} {header}".strip(), int(value))
    return out
