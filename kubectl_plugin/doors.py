"""`explain` and `ports` for doors: each policy's doors pair, the composed verdict of each door, and
kube-proxy's `loadBalancerSourceRanges` beside it (pure; docs/semantics.md, "Doors")."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract.annotation import ContractError, SourceSet
from contract.composition import Part, compose, everything, part_of, render_intervals
from contract.doors import DOORS_KEY, DOORS_SIGNATURE_KEY, DoorsAnnotation, decode_doors, read_signed_doors
from contract.intervals import Intervals, intersect
from contract.signing import VerifierKeys

DoorId = tuple[str, str, int]  # (address, protocol, Service port)


@dataclass(frozen=True, slots=True)
class DoorsReport:
    namespace: str
    name: str
    status: str  # verified | unverified | rejected | none
    detail: str
    doors: DoorsAnnotation | None


def inspect_doors(obj: Mapping[str, Any], keys: VerifierKeys | None) -> DoorsReport:
    """Classify one stored policy's doors pair (as the enforcers read it)."""
    meta = obj.get("metadata") or {}
    ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
    annotations = meta.get("annotations") or {}
    if DOORS_KEY not in annotations and DOORS_SIGNATURE_KEY not in annotations:
        return DoorsReport(ns, name, "none", "affects no door", None)
    try:
        if keys is None or not keys.public_keys:
            return DoorsReport(ns, name, "unverified", "signature not checked", decode_doors(annotations[DOORS_KEY]))
        return DoorsReport(ns, name, "verified", "signature valid", read_signed_doors(annotations, ns, name, uid, keys))
    except (ContractError, KeyError) as exc:
        return DoorsReport(ns, name, "rejected", f"enforcers ignore its doors: {exc}", None)


def door_verdicts(reports: Sequence[DoorsReport]) -> dict[DoorId, SourceSet]:
    """Each door's allowed sources as the enforcers compose them: per Service, intersected over Services."""
    parts: dict[DoorId, dict[str, list[Part]]] = {}
    rules: dict[DoorId, list[Any]] = {}
    for report in reports:
        if report.doors is None:
            continue
        for entry in report.doors.entries:
            for door in entry.doors:
                family = ipaddress.ip_address(door.ip).version
                did: DoorId = (door.ip, entry.protocol, entry.service_port)
                parts.setdefault(did, {}).setdefault(entry.service, []).append(
                    part_of(entry, family, report.doors.mode)
                )
                rules.setdefault(did, []).extend(r for allow in entry.sources() for r in allow.cidrs)
    out: dict[DoorId, SourceSet] = {}
    for key, by_service in parts.items():
        family = ipaddress.ip_address(key[0]).version
        result: Intervals = everything(family)
        for service_parts in by_service.values():
            result = intersect(result, compose(service_parts, family))
        out[key] = render_intervals({family: result}, rules[key])
    return out


def source_ranges(services: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Service name -> its `loadBalancerSourceRanges` (kube-proxy's own filter on the LB IPs)."""
    out: dict[str, list[str]] = {}
    for s in services:
        ranges = (s.get("spec") or {}).get("loadBalancerSourceRanges") or []
        if ranges:
            out[(s.get("metadata") or {}).get("name", "")] = [str(r) for r in ranges]
    return out


def door_rows(
    report: DoorsReport,
    verdicts: Mapping[DoorId, SourceSet],
    ranges: Mapping[str, list[str]],
    describe: Any,
) -> list[list[str]]:
    """DOOR, PROTOCOL, SERVICE, KIND, NODEPORT, ALLOWED SOURCES, KUBE-PROXY RANGES for explain."""
    rows = []
    for entry in report.doors.entries if report.doors else ():
        for door in entry.doors:
            address = f"[{door.ip}]" if ":" in door.ip else door.ip
            kube_proxy = ", ".join(ranges.get(entry.service, [])) if door.source == "loadBalancer" else ""
            rows.append([
                f"{address}:{entry.service_port}",
                entry.protocol,
                entry.service,
                door.source,
                str(entry.node_port) if entry.node_port else "-",
                describe(verdicts[(door.ip, entry.protocol, entry.service_port)]),
                f"{kube_proxy} (a client needs both)" if kube_proxy else "-",
            ])
    return rows


DOOR_HEADER = ["DOOR", "PROTOCOL", "SERVICE", "KIND", "NODEPORT", "ALLOWED SOURCES", "KUBE-PROXY SOURCE RANGES"]


def doors_json(report: DoorsReport, verdicts: Mapping[DoorId, SourceSet], ranges: Mapping[str, list[str]],
               allow_json: Any) -> list[dict[str, Any]]:
    return [
        {
            "address": door.ip,
            "source": door.source,
            "protocol": entry.protocol,
            "servicePort": entry.service_port,
            "service": entry.service,
            "nodePort": entry.node_port,
            "allow": allow_json(verdicts[(door.ip, entry.protocol, entry.service_port)]),
            "loadBalancerSourceRanges": ranges.get(entry.service, []) if door.source == "loadBalancer" else [],
        }
        for entry in (report.doors.entries if report.doors else ())
        for door in entry.doors
    ]
