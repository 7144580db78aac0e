"""Verified doors values -> the protected doors of this node (pure).

A door is (address, protocol, Service port) of a Service's load-balancer IP or externalIP; each gets
its Service port's verdict, composed from every policy's part exactly like a NodePort
(`contract/composition.py`). Two Services of one namespace naming the same door (kube-proxy then
sends it to one of them) are intersected: fail closed. A door on one of the node's own addresses is
refused (CVE-2020-8554 must not become ours); the webhook never names one either (docs/semantics.md).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from contract.composition import Part, compose, compose_mode, everything, part_of
from contract.doors import DoorsAnnotation
from contract.intervals import Intervals, intersect, to_prefixes
from enforcer.plan import DoorKey, Family, ProtectedDoor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RejectedDoor:
    """A door the planner refused to program, with the reason."""

    namespace: str
    name: str
    key: DoorKey
    reason: str


@dataclass(frozen=True, slots=True)
class DoorPlan:
    doors: tuple[ProtectedDoor, ...]
    rejected: tuple[RejectedDoor, ...]


def _family(address: str) -> Family:
    return 4 if ipaddress.ip_address(address).version == 4 else 6


def plan_doors(annotations: Iterable[DoorsAnnotation], node_addresses: Collection[str] = ()) -> DoorPlan:
    """Compose every door named by a verified doors value; refuse doors on `node_addresses`
    (canonical text of the node's own addresses)."""
    # door -> (namespace, service) -> the parts of every policy naming it through that Service
    parts: dict[DoorKey, dict[tuple[str, str], list[Part]]] = {}
    rejected: list[RejectedDoor] = []
    for annotation in annotations:
        ref = annotation.policy
        for entry in annotation.entries:
            for door in entry.doors:
                family = _family(door.ip)
                key = DoorKey(family, entry.protocol, door.ip, entry.service_port)
                if door.ip in node_addresses:
                    rejected.append(RejectedDoor(ref.namespace, ref.name, key, (
                        f"door {door.ip} ({door.source} of Service {entry.service}) is an address of this node; "
                        "the enforcer never filters one (remove it from the Service's externalIPs)"
                    )))
                    continue
                by_service = parts.setdefault(key, {})
                by_service.setdefault((ref.namespace, entry.service), []).append(
                    part_of(entry, family, annotation.mode)
                )
    doors: list[ProtectedDoor] = []
    for key in sorted(parts):
        result: Intervals = everything(key.family)
        for service in sorted(parts[key]):
            result = intersect(result, compose(parts[key][service], key.family))
        if result == everything(key.family):
            continue
        mode = compose_mode(p for ps in parts[key].values() for p in ps)
        doors.append(ProtectedDoor(key, tuple(to_prefixes(result, key.family)), mode))
    for r in rejected:
        logger.warning(
            "refused door on a node address",
            extra={"namespace": r.namespace, "policy": r.name, "address": r.key.address, "port": r.key.port},
        )
    return DoorPlan(tuple(doors), tuple(sorted(rejected, key=lambda r: (r.namespace, r.name, r.key))))
