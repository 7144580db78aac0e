"""Verified annotations -> the desired per-NodePort source allow-lists of this node (pure)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from contract.annotation import MODES, PROTOCOLS, Annotation, IPFamily, Mode, Protocol
from contract.composition import Part, compose, compose_mode, part_of
from contract.intervals import Intervals, of_networks, to_prefixes

logger = logging.getLogger(__name__)

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_NODEPORT_RANGE: tuple[int, int] = (30000, 32767)

_FAMILY_OF: dict[IPFamily, Family] = {"IPv4": 4, "IPv6": 6}
_BITS: dict[Family, int] = {4: 32, 6: 128}


@dataclass(frozen=True, slots=True, order=True)
class PortKey:
    """One NodePort of one protocol in one IP family."""

    family: Family
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class ProtectedPort:
    """A filtered NodePort: only sources inside `allowed` may open new connections (empty = none).

    In mode "audit" the others are counted and let through instead of dropped.
    """

    key: PortKey
    allowed: tuple[Network, ...]
    mode: Mode = "enforce"


@dataclass(frozen=True, slots=True, order=True)
class DoorKey:
    """One door: new connections to (address, protocol, Service port) in one IP family (docs/dataplane.md)."""

    family: Family
    protocol: Protocol
    address: str  # canonical text (ipaddress), of `family`
    port: int


@dataclass(frozen=True, slots=True)
class ProtectedDoor:
    """A filtered door: only sources inside `allowed` may open new connections (empty = none)."""

    key: DoorKey
    allowed: tuple[Network, ...]
    mode: Mode = "enforce"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Every protected PortKey with its allowed prefixes; sorted by key, prefixes disjoint and sorted.
    `doors`: every protected door (enforcer/doors.py), sorted by key, likewise."""

    ports: tuple[ProtectedPort, ...] = ()
    doors: tuple[ProtectedDoor, ...] = ()

    def __post_init__(self) -> None:
        keys = [p.key for p in self.ports]
        if keys != sorted(set(keys)):
            raise ValueError("DesiredState.ports: keys must be unique and sorted; build it with from_mapping()")
        # Cheap checks only (this runs for every state of 10k+ ports); from_mapping() normalizes.
        for p in self.ports:
            if any(net.version != p.key.family for net in p.allowed):
                raise ValueError(f"DesiredState.ports[{p.key}]: prefix of the wrong IP family in {p.allowed}")
            if any(net.prefixlen == 0 for net in p.allowed):
                raise ValueError(f"DesiredState.ports[{p.key}]: allows every source, so it must not be listed")
        door_keys = [d.key for d in self.doors]
        if door_keys != sorted(set(door_keys)):
            raise ValueError("DesiredState.doors: keys must be unique and sorted")
        for d in self.doors:
            if ipaddress.ip_address(d.key.address).version != d.key.family or not 1 <= d.key.port <= 65535:
                raise ValueError(f"DesiredState.doors[{d.key}]: address of the wrong family or no port number")
            if any(net.version != d.key.family or net.prefixlen == 0 for net in d.allowed):
                raise ValueError(f"DesiredState.doors[{d.key}]: a prefix of the wrong family, or every source")

    @staticmethod
    def from_mapping(
        mapping: Mapping[PortKey, Iterable[Network]], modes: Mapping[PortKey, Mode] | None = None
    ) -> DesiredState:
        """Normalize (collapse, sort) and drop keys whose allow-list covers the whole family.
        `modes` gives the ports in audit mode (absent: enforce)."""
        ports = []
        for key in sorted(mapping):
            allowed = tuple(_collapse(mapping[key], key.family))
            if not _is_everything(allowed, key.family):
                ports.append(ProtectedPort(key=key, allowed=allowed, mode=(modes or {}).get(key, "enforce")))
        return DesiredState(ports=tuple(ports))

    @staticmethod
    def trusted(ports: tuple[ProtectedPort, ...]) -> DesiredState:
        """Skip the checks: for a builder that keeps the invariants by construction (IncrementalPlanner).

        Validating 10,000 ports costs ~30 ms, the whole budget of an incremental sync.
        """
        state = object.__new__(DesiredState)
        object.__setattr__(state, "ports", ports)
        object.__setattr__(state, "doors", ())
        return state

    def with_doors(self, doors: tuple[ProtectedDoor, ...]) -> DesiredState:
        """The same ports with `doors` (checked); the planner builds ports and doors apart."""
        return DesiredState(ports=self.ports, doors=doors) if doors else self

    def as_dict(self) -> dict[PortKey, tuple[Network, ...]]:
        return {p.key: p.allowed for p in self.ports}

    def of_family(self, family: Family) -> tuple[ProtectedPort, ...]:
        return tuple(p for p in self.ports if p.key.family == family)


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """A NodePort verdict the planner refused to program, with the reason."""

    namespace: str
    name: str
    node_port: int
    protocol: Protocol
    reason: str


@dataclass(frozen=True, slots=True)
class PlanResult:
    state: DesiredState
    rejected: tuple[RejectedEntry, ...]


def _collapse(nets: Iterable[Network], family: Family) -> list[Network]:
    return to_prefixes(of_networks(nets), family)


def _everything(family: Family) -> Intervals:
    return ((0, (1 << _BITS[family]) - 1),)


def _is_everything(nets: Iterable[Network], family: Family) -> bool:
    return of_networks(nets) == _everything(family)


def check_nodeport_range(nodeport_range: tuple[int, int]) -> None:
    """Raise ValueError unless the range is 1 <= first <= last <= 65535."""
    lo, hi = nodeport_range
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"nodeport_range {lo}-{hi}: must be 1 <= first <= last <= 65535 (e.g. 30000-32767)")


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one verified annotation says: its part per PortKey, and the entries it may not ask."""

    allowed: dict[PortKey, Part]
    rejected: tuple[RejectedEntry, ...]


def plan_contribution(annotation: Annotation, nodeport_range: tuple[int, int]) -> Contribution:
    """Pure: one annotation's part of the plan (its entries per port and family; out-of-range refusals)."""
    lo, hi = nodeport_range
    ref = annotation.policy
    allowed: dict[PortKey, Part] = {}
    rejected: list[RejectedEntry] = []
    for verdict in annotation.node_ports:
        if not lo <= verdict.node_port <= hi:
            # Never filter outside the NodePort range: that could cut SSH, the kubelet or the apiserver.
            rejected.append(
                RejectedEntry(
                    namespace=ref.namespace,
                    name=ref.name,
                    node_port=verdict.node_port,
                    protocol=verdict.protocol,
                    reason=(
                        f"nodePort {verdict.node_port} is outside the NodePort range {lo}-{hi}; "
                        "the enforcer never filters it (fix the Service's nodePort or the enforcer's "
                        "NodePort range)"
                    ),
                )
            )
            continue
        for ip_family in verdict.ip_families:
            family = _FAMILY_OF[ip_family]
            # (nodePort, protocol) is unique in a decoded annotation, so one part per key.
            key = PortKey(family=family, protocol=verdict.protocol, port=verdict.node_port)
            allowed[key] = part_of(verdict, family, annotation.mode)
    return Contribution(allowed=allowed, rejected=tuple(rejected))


def protected_port(key: PortKey, contributions: Iterable[Contribution]) -> ProtectedPort | None:
    """The NodePort's sources and mode composed from every contribution's part
    (contract/composition.py); None when it allows every source."""
    parts = [c.allowed[key] for c in contributions]
    intervals = compose(parts, key.family)
    if intervals == _everything(key.family):
        return None
    return ProtectedPort(key=key, allowed=tuple(to_prefixes(intervals, key.family)), mode=compose_mode(parts))


def _log_rejected(rejected: Iterable[RejectedEntry]) -> None:
    for r in rejected:
        logger.warning(
            "refused NodePort outside range",
            extra={"namespace": r.namespace, "policy": r.name, "node_port": r.node_port, "protocol": r.protocol},
        )


def plan_desired_state(
    annotations: Iterable[Annotation], nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE
) -> PlanResult:
    """Compose the entries of every annotation per (family, protocol, port); refuse out-of-range ports.

    A port is protected in a family when any annotation lists it for that family and the
    composition (contract/composition.py) does not allow every source.
    """
    check_nodeport_range(nodeport_range)
    contributions = [plan_contribution(a, nodeport_range) for a in annotations]
    holders: dict[PortKey, list[Contribution]] = {}
    for c in contributions:
        for key in c.allowed:
            holders.setdefault(key, []).append(c)
    ports = [p for key in sorted(holders) if (p := protected_port(key, holders[key])) is not None]
    rejected = sorted((r for c in contributions for r in c.rejected), key=_rejected_order)
    _log_rejected(rejected)
    return PlanResult(state=DesiredState(ports=tuple(ports)), rejected=tuple(rejected))


def _rejected_order(r: RejectedEntry) -> tuple[str, str, int, str]:
    return (r.namespace, r.name, r.node_port, r.protocol)


def encode_state(state: DesiredState) -> str:
    """Canonical JSON of a DesiredState (for the dataplane CLI, tests and benchmarks)."""
    ports = [
        {
            "family": p.key.family,
            "protocol": p.key.protocol,
            "port": p.key.port,
            "allowed": [str(n) for n in p.allowed],
            "mode": p.mode,
        }
        for p in state.ports
    ]
    doors = [
        {
            "family": d.key.family,
            "protocol": d.key.protocol,
            "address": d.key.address,
            "port": d.key.port,
            "allowed": [str(n) for n in d.allowed],
            "mode": d.mode,
        }
        for d in state.doors
    ]
    out: dict[str, object] = {"ports": ports}
    if doors:
        out["doors"] = doors
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def decode_state(text: str) -> DesiredState:
    """Inverse of encode_state; raises ValueError naming the entry and field at fault."""
    obj = json.loads(text)
    mapping: dict[PortKey, list[Network]] = {}
    modes: dict[PortKey, Mode] = {}
    for i, entry in enumerate(obj.get("ports", [])):
        family = entry.get("family")
        protocol = entry.get("protocol")
        port = entry.get("port")
        if family not in FAMILIES or protocol not in PROTOCOLS or not isinstance(port, int):
            raise ValueError(f"ports[{i}]: need family 4|6, protocol {list(PROTOCOLS)} and an integer port")
        nets = [ipaddress.ip_network(a, strict=True) for a in entry.get("allowed", [])]
        if any(n.version != family for n in nets):
            raise ValueError(f"ports[{i}].allowed: prefixes must be IPv{family}")
        mode = entry.get("mode", "enforce")
        if mode not in MODES:
            raise ValueError(f"ports[{i}].mode: {mode!r} is not one of {list(MODES)}")
        mapping[PortKey(family, protocol, port)] = nets
        modes[PortKey(family, protocol, port)] = mode
    doors: list[ProtectedDoor] = []
    for i, entry in enumerate(obj.get("doors", [])):
        family, protocol, port = entry.get("family"), entry.get("protocol"), entry.get("port")
        address = str(ipaddress.ip_address(entry.get("address", "")))
        if family not in FAMILIES or protocol not in PROTOCOLS or not isinstance(port, int):
            raise ValueError(f"doors[{i}]: need family 4|6, protocol {list(PROTOCOLS)}, an address and a port")
        nets = to_prefixes(of_networks(ipaddress.ip_network(a, strict=True) for a in entry.get("allowed", [])), family)
        mode = entry.get("mode", "enforce")
        if mode not in MODES:
            raise ValueError(f"doors[{i}].mode: {mode!r} is not one of {list(MODES)}")
        if not _is_everything(nets, family):
            doors.append(ProtectedDoor(DoorKey(family, protocol, address, port), tuple(nets), mode))
    return DesiredState.from_mapping(mapping, modes).with_doors(tuple(sorted(doors, key=lambda d: d.key)))
