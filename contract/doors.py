"""The doors value: a policy's part in its Services' load-balancer IPs and externalIPs (pure).

A door is another address of a Service port that kube-proxy DNATs like the NodePort: each
`status.loadBalancer.ingress[].ip` with ipMode VIP or unset, and each `spec.externalIPs` entry,
on the Service port. It gets the NodePort's verdict: the same part per entry, composed the same
way (`contract/composition.py`). The doors travel in their own signed pair (version 4) beside the
NodePort pair, which stays version 2/3 byte for byte, so an enforcer that does not know doors
keeps every NodePort verdict (docs/annotation.md, "Doors").
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.annotation import (
    ANNOTATION_PREFIX,
    CONTRACT_VERSION,
    DOOR_SOURCES,
    MAX_ANNOTATION_BYTES,
    MODES,
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    ContractError,
    Door,
    Mode,
    NodePortEntry,
    PolicyRef,
    _decode_entry,
    _entry_json,
    _exact_keys,
    _expect,
    annotation_for,
    encode,
    read_signed_pair,
    sign,
)
from contract.signing import Signer, VerifierKeys

DOORS_KEY = ANNOTATION_PREFIX + "doors"
DOORS_SIGNATURE_KEY = ANNOTATION_PREFIX + "doors-signature"
DOORS_VERSION = 4
_FAMILY_NAME = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True, slots=True)
class DoorsAnnotation:
    """The doors value of one policy: its entries that have doors (sorted), bound to the policy."""

    policy: PolicyRef
    entries: tuple[NodePortEntry, ...]
    mode: Mode = "enforce"


def door_entry_key(entry: NodePortEntry) -> tuple[str, int, str]:
    """What identifies a doors entry: the Service port (a door has no NodePort of its own)."""
    return (entry.service, entry.service_port, entry.protocol)


def canonical_ip(text: str) -> str | None:
    """The compressed form of an address, or None when `text` is not one (IPv4-mapped IPv6 kept as is)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _door_json(entry: NodePortEntry) -> dict[str, Any]:
    out = _entry_json(entry, CONTRACT_VERSION)
    out["addresses"] = [{"ip": d.ip, "source": d.source} for d in sorted(entry.doors)]
    return out


def encode_doors(doors: DoorsAnnotation) -> str:
    """Canonical JSON of a doors value: sorted keys and lists, no whitespace."""
    ref = doors.policy
    obj = {
        "version": DOORS_VERSION,
        "mode": doors.mode,
        "policy": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid},
        "doors": [_door_json(e) for e in sorted(doors.entries, key=door_entry_key)],
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _decode_door(obj: Any, field: str) -> Door:
    _expect(obj, dict, field)
    _exact_keys(obj, {"ip", "source"}, field)
    ip = _expect(obj["ip"], str, f"{field}.ip")
    if canonical_ip(ip) != ip:
        raise ContractError(f"{field}.ip", f"{ip!r} is not an IP address in compressed form")
    source = _expect(obj["source"], str, f"{field}.source")
    if source not in DOOR_SOURCES:
        raise ContractError(f"{field}.source", f"{source!r} is not one of {list(DOOR_SOURCES)}")
    return Door(ip=ip, source=source)


def _decode_doors_entry(obj: Any, field: str) -> NodePortEntry:
    _expect(obj, dict, field)
    if "addresses" not in obj:
        raise ContractError(field, "missing key(s) ['addresses']")
    rest = {k: v for k, v in obj.items() if k != "addresses"}
    entry = _decode_entry(rest, field, CONTRACT_VERSION, no_node_port=True)
    raw = _expect(obj["addresses"], list, f"{field}.addresses")
    if not raw:
        raise ContractError(f"{field}.addresses", "must name at least one door")
    doors = tuple(_decode_door(d, f"{field}.addresses[{i}]") for i, d in enumerate(raw))
    if len({d.ip for d in doors}) != len(doors):
        raise ContractError(f"{field}.addresses", "duplicate ip")
    for i, d in enumerate(doors):
        family = _FAMILY_NAME[ipaddress.ip_address(d.ip).version]
        if family not in entry.ip_families:
            raise ContractError(
                f"{field}.addresses[{i}].ip", f"{d.ip} is {family}, not in ipFamilies {list(entry.ip_families)}"
            )
    return NodePortEntry(
        node_port=entry.node_port,
        protocol=entry.protocol,
        service=entry.service,
        service_port=entry.service_port,
        ip_families=entry.ip_families,
        scope=entry.scope,
        allow=entry.allow,
        groups=entry.groups,
        doors=doors,
    )


def decode_doors(value: str) -> DoorsAnnotation:
    """Parse and schema-check a doors value (untrusted input); raises ContractError naming the field."""
    if len(value) > MAX_ANNOTATION_BYTES:
        raise ContractError("$", f"annotation is {len(value)} bytes, more than {MAX_ANNOTATION_BYTES}")
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ContractError("$", f"not JSON: {exc}") from exc
    _expect(obj, dict, "$")
    version = _expect(obj.get("version"), int, "$.version")
    if version != DOORS_VERSION:
        raise ContractError("$.version", f"unsupported doors version {version}; this build reads {DOORS_VERSION}")
    _exact_keys(obj, {"version", "mode", "policy", "doors"}, "$")
    mode = _expect(obj["mode"], str, "$.mode")
    if mode not in MODES:
        raise ContractError("$.mode", f"{mode!r} is not one of {list(MODES)}")
    policy = _expect(obj["policy"], dict, "$.policy")
    _exact_keys(policy, {"namespace", "name", "uid"}, "$.policy")
    ref = PolicyRef(
        namespace=_expect(policy["namespace"], str, "$.policy.namespace"),
        name=_expect(policy["name"], str, "$.policy.name"),
        uid=_expect(policy["uid"], str, "$.policy.uid"),
    )
    raw = _expect(obj["doors"], list, "$.doors")
    entries = tuple(_decode_doors_entry(e, f"$.doors[{i}]") for i, e in enumerate(raw))
    seen: set[tuple[str, int, str]] = set()
    for i, e in enumerate(entries):
        if door_entry_key(e) in seen:
            raise ContractError(f"$.doors[{i}]", f"duplicate Service port {e.service}:{e.service_port}/{e.protocol}")
        seen.add(door_entry_key(e))
    return DoorsAnnotation(policy=ref, entries=entries, mode=mode)


def read_signed_doors(
    annotations: Mapping[str, str] | None, namespace: str, name: str, uid: str, keys: VerifierKeys
) -> DoorsAnnotation | None:
    """The verified doors value of a stored policy, or None when it carries none.

    The same checks as `read_signed` for the NodePort pair: both keys, the signature, the schema,
    the binding to namespace, name and uid, the canonical form."""
    return read_signed_pair(
        annotations, (DOORS_KEY, DOORS_SIGNATURE_KEY), (namespace, name, uid), keys, decode_doors, encode_doors
    )


def count_doors(entries: tuple[NodePortEntry, ...]) -> int:
    return sum(len(e.doors) for e in entries)


def render_doors(ref: PolicyRef, entries: tuple[NodePortEntry, ...], mode: Mode, signer: Signer) -> dict[str, str]:
    """The doors pair for a policy's entries: none when no entry has a door."""
    doors = tuple(e for e in entries if e.doors)
    if not doors:
        return {}
    value = encode_doors(DoorsAnnotation(ref, doors, mode))
    return {DOORS_KEY: value, DOORS_SIGNATURE_KEY: sign(value, signer)}


def node_port_entries(entries: tuple[NodePortEntry, ...]) -> tuple[NodePortEntry, ...]:
    """The entries the NodePort value lists: those with a NodePort (doors are not in it)."""
    return tuple(e for e in entries if e.node_port)


def render_all(ref: PolicyRef, entries: tuple[NodePortEntry, ...], mode: Mode, signer: Signer) -> dict[str, str]:
    """Both pairs the webhook writes for a policy (each only when it has something to say)."""
    out: dict[str, str] = {}
    ports = node_port_entries(entries)
    if ports:
        value = encode(annotation_for(ref, ports, mode))
        out = {NODEPORTS_KEY: value, SIGNATURE_KEY: sign(value, signer)}
    out.update(render_doors(ref, entries, mode, signer))
    return out
