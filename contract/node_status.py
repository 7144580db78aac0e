"""What each enforcer has programmed, as one small Lease per node, and "is policy P in force?" (pure).

The enforcer on node X keeps Lease `nodeport-guard-node-X` (namespace nodeport-guard) whose
annotations say: the highest NetworkPolicy watch resourceVersion up to which every event has
been programmed, a digest of the verdicts it enforces, when, and the few policies whose
annotation it refuses. Policy P (resourceVersion r) is in force on X when X's programmed
resourceVersion is >= r and X does not refuse P. The object does not grow with the number of
policies (only refusals are listed, capped at MAX_REFUSED). See docs/architecture.md.

The Lease's own fields carry the heartbeat: `renewTime` + `leaseDurationSeconds` tell whether
the enforcer is still alive, as the kubelet's node Lease does.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from contract.path_status import PathReport, PathVerdict, decode_path, encode_path, path_verdicts

LEASE_PREFIX = "nodeport-guard-node-"
STATUS_LABEL = "nodeport-guard.io/node-status"
KEY_NODE = "nodeport-guard.io/node"
KEY_RESOURCE_VERSION = "nodeport-guard.io/programmed-resource-version"
KEY_PROGRAMMED_AT = "nodeport-guard.io/programmed-at"
KEY_DIGEST = "nodeport-guard.io/verdicts-digest"
KEY_PORTS = "nodeport-guard.io/protected-nodeports"
KEY_ENFORCER = "nodeport-guard.io/enforcer"
KEY_REFUSED = "nodeport-guard.io/refused"
KEY_REFUSED_TOTAL = "nodeport-guard.io/refused-total"
MAX_REFUSED = 50  # bounds the object (~8 KB at most); beyond it the answer for unlisted policies is "unknown"

EnforcerPhase = Literal["starting", "ready", "stopped"]
# "bypassed" / "unverified": programmed, but the filter is not proven in the packet's path (contract/path_status.py)
NodeState = Literal["in-force", "behind", "refused", "unknown", "no-enforcer", "bypassed", "unverified"]


def lease_name(node: str) -> str:
    return f"{LEASE_PREFIX}{node}"


def _time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def resource_version_number(text: str | None) -> int | None:
    """resourceVersions served from etcd are its revisions, integers that only grow; None if not one."""
    try:
        return int(text or "")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Refused:
    namespace: str
    name: str
    resource_version: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's published status (what its Lease says)."""

    node: str
    phase: EnforcerPhase
    resource_version: str  # "" before the first sync
    programmed_at: datetime.datetime | None  # when the programmed state last changed
    digest: str
    protected_nodeports: int
    refused: tuple[Refused, ...]
    refused_total: int
    renewed_at: datetime.datetime | None = None
    lease_seconds: int = 0
    path: PathReport = PathReport()  # noqa: RUF009 (frozen, immutable)  passive findings, canary probes of peers, ready time

    def alive(self, now: datetime.datetime) -> bool:
        """The heartbeat is fresh (renewTime + leaseDurationSeconds not passed)."""
        if self.renewed_at is None:
            return False
        return now <= self.renewed_at + datetime.timedelta(seconds=self.lease_seconds)


def encode_lease(
    status: NodeStatus, namespace: str, renewed_at: datetime.datetime, lease_seconds: int
) -> dict[str, Any]:
    """The Lease body for a create or a replace (pure)."""
    refused = [[r.namespace, r.name, r.resource_version] for r in status.refused[:MAX_REFUSED]]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(status.node),
            "namespace": namespace,
            "labels": {STATUS_LABEL: "true", "app.kubernetes.io/name": "nodeport-guard-enforcer"},
            "annotations": {
                KEY_NODE: status.node,
                KEY_ENFORCER: status.phase,
                KEY_RESOURCE_VERSION: status.resource_version,
                KEY_PROGRAMMED_AT: _time(status.programmed_at) if status.programmed_at else "",
                KEY_DIGEST: status.digest,
                KEY_PORTS: str(status.protected_nodeports),
                KEY_REFUSED: json.dumps(refused, separators=(",", ":")),
                KEY_REFUSED_TOTAL: str(status.refused_total),
                **encode_path(status.path),
            },
        },
        "spec": {
            "holderIdentity": status.node,
            "leaseDurationSeconds": lease_seconds,
            "renewTime": _time(renewed_at),
        },
    }


def decode_lease(obj: Mapping[str, Any]) -> NodeStatus | None:
    """A node's status from its Lease (pure); None when the Lease is not one of ours or unreadable."""
    meta = obj.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    node = annotations.get(KEY_NODE, "")
    if not node or meta.get("name") != lease_name(node):
        return None
    spec = obj.get("spec") or {}
    phase = annotations.get(KEY_ENFORCER, "starting")
    try:
        raw = json.loads(annotations.get(KEY_REFUSED) or "[]")
        refused = tuple(Refused(str(ns), str(name), str(rv)) for ns, name, rv in raw)
        total = int(annotations.get(KEY_REFUSED_TOTAL) or len(refused))
        ports = int(annotations.get(KEY_PORTS) or 0)
        lease_seconds = int(spec.get("leaseDurationSeconds") or 0)
    except (ValueError, TypeError):
        return None
    return NodeStatus(
        node=node,
        phase=phase if phase in ("starting", "ready", "stopped") else "starting",  # type: ignore[arg-type]
        resource_version=annotations.get(KEY_RESOURCE_VERSION, ""),
        programmed_at=parse_time(annotations.get(KEY_PROGRAMMED_AT)),
        digest=annotations.get(KEY_DIGEST, ""),
        protected_nodeports=ports,
        refused=refused,
        refused_total=total,
        renewed_at=parse_time(spec.get("renewTime")),
        lease_seconds=lease_seconds,
        path=decode_path(annotations),
    )


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    namespace: str
    name: str
    resource_version: str


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    """Whether one policy (or every listed policy) is in force on one node, and why not."""

    node: str
    state: NodeState
    enforcer: str  # ready | starting | stopped | heartbeat lost | none
    resource_version: str
    behind_by: int  # listed policy versions newer than what the node programmed
    since_seconds: float | None  # since the node last changed what it programs
    detail: str
    path: str = "unverified"  # enforcing | bypassed | unverified (contract/path_status.py)
    path_reason: str = ""
    verified_at: datetime.datetime | None = None


def enforcer_condition(status: NodeStatus | None, now: datetime.datetime) -> str:
    if status is None:
        return "none"
    if status.phase == "stopped":
        return "stopped"
    if not status.alive(now):
        return "heartbeat lost"
    return status.phase


def _not_below(version: int | None, programmed: int) -> bool:
    """A version the node has not programmed yet; one that is not an integer is never assumed programmed."""
    return version is None or version > programmed


def node_verdict(
    node: str, status: NodeStatus | None, wanted: Sequence[PolicyVersion], now: datetime.datetime
) -> NodeVerdict:
    """Pure: are all `wanted` policy versions in force on `node`, given its published status?

    In force = the node programmed every watch event up to each policy's resourceVersion and
    does not refuse it. A stopped enforcer leaves its rules in place, so what it programmed
    stays in force; what came after it stopped is behind.
    """
    condition = enforcer_condition(status, now)
    if status is None:
        return NodeVerdict(node, "no-enforcer", "none", "", len(wanted), None, "no enforcer has reported on this node")
    since = (now - status.programmed_at).total_seconds() if status.programmed_at else None
    programmed = resource_version_number(status.resource_version)
    if programmed is None:
        return NodeVerdict(node, "behind", condition, "", len(wanted), since, "the enforcer has not synced yet")
    newer = [p for p in wanted if _not_below(resource_version_number(p.resource_version), programmed)]
    refused_ids = {(r.namespace, r.name) for r in status.refused}
    refused = [p for p in wanted if (p.namespace, p.name) in refused_ids]
    truncated = status.refused_total > len(status.refused)
    if newer:
        names = ", ".join(f"{p.namespace}/{p.name}" for p in newer[:3]) + (" ..." if len(newer) > 3 else "")
        return NodeVerdict(
            node, "behind", condition, status.resource_version, len(newer), since, f"not yet programmed: {names}"
        )
    if refused:
        names = ", ".join(f"{p.namespace}/{p.name}" for p in refused[:3]) + (" ..." if len(refused) > 3 else "")
        return NodeVerdict(
            node,
            "refused",
            condition,
            status.resource_version,
            0,
            since,
            f"annotation refused by the enforcer: {names}",
        )
    if truncated:
        detail = f"the node refuses {status.refused_total} policies, more than it lists; run explain on the policy"
        return NodeVerdict(node, "unknown", condition, status.resource_version, 0, since, detail)
    return NodeVerdict(node, "in-force", condition, status.resource_version, 0, since, "")


def status_by_node(leases: Iterable[Mapping[str, Any]]) -> dict[str, NodeStatus]:
    out: dict[str, NodeStatus] = {}
    for lease in leases:
        status = decode_lease(lease)
        if status is not None:
            out[status.node] = status
    return out


def with_path(verdict: NodeVerdict, path: PathVerdict) -> NodeVerdict:
    """Pure: a node is in force only where its filter is verified in the packet's path."""
    state: NodeState = verdict.state
    detail = verdict.detail
    if state == "in-force" and path.state != "enforcing":
        state = path.state
        detail = path.reason + (f" ({path.evidence})" if path.evidence else "")
    return NodeVerdict(
        verdict.node, state, verdict.enforcer, verdict.resource_version, verdict.behind_by, verdict.since_seconds,
        detail, path.state, path.reason, path.verified_at,
    )


def verdicts(
    nodes: Sequence[str], statuses: Mapping[str, NodeStatus], wanted: Sequence[PolicyVersion], now: datetime.datetime
) -> list[NodeVerdict]:
    """Pure: one verdict per node (sorted by name), "in-force" only where the canary proved the filter
    in the path. Leases of nodes that no longer exist are ignored."""
    paths = path_verdicts(nodes, statuses, now)
    return [with_path(node_verdict(n, statuses.get(n), wanted, now), paths[n]) for n in sorted(nodes)]


def all_in_force(results: Sequence[NodeVerdict]) -> bool:
    return bool(results) and all(v.state == "in-force" for v in results)


def in_force_watermark(
    nodes: Sequence[str], statuses: Mapping[str, NodeStatus], now: datetime.datetime
) -> int | None:
    """Pure: the highest resourceVersion every node has programmed (the minimum over nodes);
    None when there is no node, a node has not reported one, or a node's filter is not verified
    in the packet's path (nothing is announced in force then)."""
    paths = path_verdicts(nodes, statuses, now)
    if any(v.state != "enforcing" for v in paths.values()):
        return None
    numbers = [resource_version_number(statuses[n].resource_version) if n in statuses else None for n in nodes]
    if not numbers or any(n is None for n in numbers):
        return None
    return min(n for n in numbers if n is not None)


def newly_in_force(
    policies: Iterable[PolicyVersion],
    nodes: Sequence[str],
    statuses: Mapping[str, NodeStatus],
    since: int,
    upto: int,
) -> list[PolicyVersion]:
    """Pure: the policy versions that came into force on every node when the watermark moved from
    `since` to `upto`: resourceVersion in (since, upto] and refused by no node (a node whose list of
    refusals is truncated cannot vouch, so nothing is announced while it is)."""
    if any(statuses[n].refused_total > len(statuses[n].refused) for n in nodes if n in statuses):
        return []
    refused = {(r.namespace, r.name) for n in nodes if n in statuses for r in statuses[n].refused}
    out = []
    for p in policies:
        rv = resource_version_number(p.resource_version)
        if rv is not None and since < rv <= upto and (p.namespace, p.name) not in refused:
            out.append(p)
    return sorted(out, key=lambda p: (p.namespace, p.name))
