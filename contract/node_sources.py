"""Sampled sources of denied connections: one node's report, its Lease form, and the merge over nodes (pure).

Each enforcer keeps, per (family, protocol, NodePort, mode), the most frequent sources of the new
connections its verdicts deny (mode "enforce": dropped; "audit": would be dropped), sampled by the
kernel at a bounded rate (docs/dataplane.md). It publishes them in its own Lease
`nodeport-guard-sources-<node>` (namespace nodeport-guard), apart from the status Lease, so the
status keeps its size and write budget. `kubectl nodeport-guard audit` merges the nodes' reports.

The payload is bounded: at most MAX_PUBLISHED_SOURCES per key and MAX_PUBLISHED_KEYS keys (the most
sampled), about 30 KB at most.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SOURCES_LEASE_PREFIX = "nodeport-guard-sources-"
SOURCES_LABEL = "nodeport-guard.io/node-sources"
KEY_NODE = "nodeport-guard.io/node"
KEY_SOURCES = "nodeport-guard.io/sources"
FORMAT_VERSION = 1
MAX_PUBLISHED_SOURCES = 8
MAX_PUBLISHED_KEYS = 64

SampledMode = Literal["enforce", "audit"]
SampledProtocol = Literal["TCP", "UDP", "SCTP"]


def sources_lease_name(node: str) -> str:
    return f"{SOURCES_LEASE_PREFIX}{node}"


@dataclass(frozen=True, slots=True, order=True)
class SourceKey:
    """What the sources are counted per: one NodePort of one protocol and family, in one mode."""

    family: Literal[4, 6]
    protocol: SampledProtocol
    port: int
    mode: SampledMode


@dataclass(frozen=True, slots=True)
class SourceCount:
    """One source's sampled count; the true sampled count lies in [count - error, count]."""

    source: str
    count: int
    error: int
    last_seen: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class KeySources:
    key: SourceKey
    sampled: int  # samples of this key in the report's windows (every source, kept or not)
    sources: tuple[SourceCount, ...]  # most counted first


@dataclass(frozen=True, slots=True)
class NodeSources:
    """One node's report: the sources of the window(s) since `since`, up to `at`."""

    node: str
    since: float
    at: float
    keys: tuple[KeySources, ...]
    unattributed: int = 0  # samples of keys beyond the node's key bound
    keys_left_out: int = 0  # keys sampled but not published (beyond MAX_PUBLISHED_KEYS)


def bound_report(report: NodeSources, per_key: int = MAX_PUBLISHED_SOURCES,
                 max_keys: int = MAX_PUBLISHED_KEYS) -> NodeSources:
    """The report cut to what a Lease may carry: the most sampled keys, the most counted sources."""
    ranked = sorted(report.keys, key=lambda k: (-k.sampled, k.key))
    kept = sorted(ranked[:max_keys], key=lambda k: k.key)
    return NodeSources(
        report.node, report.since, report.at,
        tuple(KeySources(k.key, k.sampled, k.sources[:per_key]) for k in kept),
        report.unattributed, report.keys_left_out + max(0, len(ranked) - max_keys),
    )


def encode_sources(report: NodeSources) -> str:
    """Canonical JSON (the same report gives the same text: no spurious Lease writes)."""
    doc = {
        "v": FORMAT_VERSION,
        "since": round(report.since, 3),
        "at": round(report.at, 3),
        "unattributed": report.unattributed,
        "keysLeftOut": report.keys_left_out,
        "keys": [
            [k.key.family, k.key.protocol, k.key.port, k.key.mode, k.sampled,
             [[s.source, s.count, s.error, round(s.last_seen, 3)] for s in k.sources]]
            for k in report.keys
        ],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class SourcesFormatError(ValueError):
    pass


def _source(node: str, text: object) -> str:
    try:
        return str(ipaddress.ip_address(text if isinstance(text, str) else ""))
    except ValueError as exc:
        raise SourcesFormatError(f"node {node}: source {text!r} is not an IP address") from exc


def decode_sources(node: str, text: str) -> NodeSources:
    """Raises SourcesFormatError naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SourcesFormatError(f"annotation {KEY_SOURCES} of node {node} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise SourcesFormatError(f"annotation {KEY_SOURCES} of node {node}: unknown format (want v={FORMAT_VERSION})")
    keys: list[KeySources] = []
    try:
        for family, protocol, port, mode, sampled, sources in doc["keys"]:
            if family not in (4, 6) or protocol not in ("TCP", "UDP", "SCTP") or mode not in ("enforce", "audit"):
                raise SourcesFormatError(f"node {node}: bad key {[family, protocol, port, mode]}")
            key = SourceKey(family, protocol, int(port), mode)
            counts = tuple(SourceCount(_source(node, s), int(c), int(e), float(t)) for s, c, e, t in sources)
            keys.append(KeySources(key, int(sampled), counts))
        return NodeSources(node, float(doc["since"]), float(doc["at"]), tuple(keys),
                           int(doc.get("unattributed", 0)), int(doc.get("keysLeftOut", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SourcesFormatError):
            raise
        raise SourcesFormatError(f"annotation {KEY_SOURCES} of node {node} is malformed: {exc!r}") from exc


def encode_sources_lease(report: NodeSources, namespace: str, renewed_at: datetime.datetime,
                         lease_seconds: int) -> dict[str, Any]:
    """The Lease body for a create or a replace."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": sources_lease_name(report.node),
            "namespace": namespace,
            "labels": {SOURCES_LABEL: "true", "app.kubernetes.io/name": "nodeport-guard-enforcer"},
            "annotations": {KEY_NODE: report.node, KEY_SOURCES: encode_sources(report)},
        },
        "spec": {
            "holderIdentity": report.node,
            "leaseDurationSeconds": lease_seconds,
            "renewTime": renewed_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def decode_sources_lease(obj: Mapping[str, Any]) -> NodeSources | None:
    """None when the Lease is not a sources Lease of ours; SourcesFormatError when it is and is unreadable."""
    meta = obj.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    node = annotations.get(KEY_NODE, "")
    if not node or meta.get("name") != sources_lease_name(node) or KEY_SOURCES not in annotations:
        return None
    return decode_sources(node, annotations[KEY_SOURCES])


# --- the merge over nodes (for the view) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergedSource:
    source: str
    count: int  # sum of the nodes' sampled counts
    error: int  # sum of the nodes' errors
    last_seen: float
    nodes: tuple[str, ...]  # the nodes that reported this source, sorted


@dataclass(frozen=True, slots=True)
class MergedKey:
    key: SourceKey
    sampled: int
    sources: tuple[MergedSource, ...]  # most counted first, then by address
    nodes: tuple[str, ...]  # the nodes that sampled this key at all


def merge_nodes(
    reports: Iterable[NodeSources], ports: Sequence[tuple[str, int]] | None = None
) -> tuple[MergedKey, ...]:
    """Pure: per key, the sources summed over the nodes; `ports` ((protocol, port) pairs) keeps only those."""
    wanted = set(ports) if ports is not None else None
    per_key: dict[SourceKey, dict[str, list[Any]]] = {}
    sampled: dict[SourceKey, int] = {}
    key_nodes: dict[SourceKey, set[str]] = {}
    for report in reports:
        for ks in report.keys:
            if wanted is not None and (ks.key.protocol, ks.key.port) not in wanted:
                continue
            sampled[ks.key] = sampled.get(ks.key, 0) + ks.sampled
            key_nodes.setdefault(ks.key, set()).add(report.node)
            bucket = per_key.setdefault(ks.key, {})
            for s in ks.sources:
                acc = bucket.setdefault(s.source, [0, 0, 0.0, set()])
                acc[0] += s.count
                acc[1] += s.error
                acc[2] = max(acc[2], s.last_seen)
                acc[3].add(report.node)
    merged = []
    for key in sorted(sampled):
        sources = [MergedSource(src, c, e, t, tuple(sorted(n))) for src, (c, e, t, n) in per_key.get(key, {}).items()]
        sources.sort(key=lambda m: (-m.count, _address_order(m.source)))
        merged.append(MergedKey(key, sampled[key], tuple(sources), tuple(sorted(key_nodes[key]))))
    return tuple(merged)


def _address_order(text: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(text)
    return (addr.version, int(addr))
