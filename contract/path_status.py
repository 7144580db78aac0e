"""Is a node's filter in the packet's path? Its passive findings, its canary probes, and the verdict (pure).

Each enforcer publishes, in its status Lease (contract/node_status.py), what its passive checks found
on its own node (`Finding`), the time its first sync had to install our rules (a first install, a
reboot; none when a restart found them in place), and the latest result of its canary probes of the
peers it probed (`Probe`). A node's path state is read from every Lease (`path_verdicts`):

1. no Lease, or its enforcer has not synced: `unverified`;
2. a passive finding with verdict `bypass`: `bypassed`;
3. the fresh probes of the node (by a live prober, at most the prober's lease duration old, and
   newer than the node's ready time): the newest decides: `answered` -> `bypassed`, `filtering` ->
   `enforcing` (verified at its time), `error` -> `unverified`; none -> `unverified`.

Only `enforcing` lets anything say "in force" (docs/architecture.md).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

KEY_FINDINGS = "nodeport-guard.io/path-findings"
KEY_PROBES = "nodeport-guard.io/canary-probes"
KEY_READY_SINCE = "nodeport-guard.io/ready-since"
MAX_FINDINGS = 20  # bounds the Lease; the log has them all
MAX_PROBES = 8  # k peers per period, a few more kept across a rotation
MAX_TEXT = 300

FindingVerdict = Literal["bypass", "suspect", "info"]
ProbeResult = Literal["filtering", "answered", "error"]
PathState = Literal["enforcing", "bypassed", "unverified"]
SINGLE_NODE = (
    "single-node cluster: no peer can send the canary (a probe of the node's own address goes through OUTPUT, "
    "never PREROUTING); check from outside the cluster that a denied source times out"
)


def _time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Finding:
    """What a passive check saw on the node: `bypass` (we are skipped for certain), `suspect`, `info`."""

    kind: str  # rule-ahead, jump-missing, nft-chain-ahead, bpf-program, ovs-uplink, kube-proxy
    verdict: FindingVerdict
    reason: str  # for a person: what it means and what to do
    evidence: str  # the rule, the program and device, ...


@dataclass(frozen=True, slots=True)
class Probe:
    """The latest canary probe of `target` by the publishing node, and when it was made."""

    target: str
    result: ProbeResult
    detail: str  # "timeout after 1.0s", "SYN-ACK from 198.51.100.11:32767", "no route to host"
    at: datetime.datetime


@dataclass(frozen=True, slots=True)
class PathReport:
    """The path part of one node's status: its own findings, its probes of peers, its ready time."""

    findings: tuple[Finding, ...] = ()
    probes: tuple[Probe, ...] = ()
    ready_since: datetime.datetime | None = None

    def content(self) -> tuple[object, ...]:
        """What is worth a Lease write (probe times excluded: the heartbeat refreshes them)."""
        return (self.findings, tuple((p.target, p.result) for p in self.probes), self.ready_since)


def encode_path(report: PathReport) -> dict[str, str]:
    """The Lease annotations of a PathReport (pure)."""
    findings = [[f.kind, f.verdict, f.reason[:MAX_TEXT], f.evidence[:MAX_TEXT]] for f in report.findings[:MAX_FINDINGS]]
    probes = [[p.target, p.result, p.detail[:MAX_TEXT], _time(p.at)] for p in report.probes[:MAX_PROBES]]
    return {
        KEY_FINDINGS: json.dumps(findings, separators=(",", ":")),
        KEY_PROBES: json.dumps(probes, separators=(",", ":")),
        KEY_READY_SINCE: _time(report.ready_since) if report.ready_since else "",
    }


def decode_path(annotations: Mapping[str, str]) -> PathReport:
    """A PathReport from Lease annotations (pure); what is unreadable counts as absent, never as proof."""
    findings: list[Finding] = []
    probes: list[Probe] = []
    try:
        for kind, verdict, reason, evidence in json.loads(annotations.get(KEY_FINDINGS) or "[]"):
            if verdict in ("bypass", "suspect", "info"):
                findings.append(Finding(str(kind), verdict, str(reason), str(evidence)))
            else:  # a verdict we do not know is not "harmless"
                findings.append(Finding(str(kind), "suspect", str(reason), str(evidence)))
    except (ValueError, TypeError):
        findings.append(Finding("unreadable", "suspect", "the node's findings could not be read", ""))
    try:
        for target, result, detail, at in json.loads(annotations.get(KEY_PROBES) or "[]"):
            when = _parse_time(at)
            if result in ("filtering", "answered", "error") and when is not None:
                probes.append(Probe(str(target), result, str(detail), when))
    except (ValueError, TypeError):
        probes = []
    return PathReport(tuple(findings), tuple(probes), _parse_time(annotations.get(KEY_READY_SINCE)))


class Reporter(Protocol):
    """What path_verdicts needs of a node's status (contract.node_status.NodeStatus has it)."""

    @property
    def resource_version(self) -> str: ...

    @property
    def path(self) -> PathReport: ...

    def alive(self, now: datetime.datetime) -> bool: ...

    @property
    def lease_seconds(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PathVerdict:
    node: str
    state: PathState
    reason: str
    evidence: str = ""
    verified_at: datetime.datetime | None = None  # the probe that proved it enforcing
    prober: str = ""


def _fresh(prober: Reporter, probe: Probe, now: datetime.datetime) -> bool:
    return prober.alive(now) and now - probe.at <= datetime.timedelta(seconds=max(prober.lease_seconds, 1))


def path_verdict(
    node: str, nodes: Sequence[str], statuses: Mapping[str, Reporter], now: datetime.datetime
) -> PathVerdict:
    """Pure: this node's path state, from its own Lease (findings) and its peers' (probes)."""
    own = statuses.get(node)
    if own is None:
        return PathVerdict(node, "unverified", "no enforcer has reported on this node")
    if not own.resource_version:
        return PathVerdict(node, "unverified", "the enforcer has not synced yet")
    bypass = [f for f in own.path.findings if f.verdict == "bypass"]
    if bypass:
        return PathVerdict(node, "bypassed", bypass[0].reason, bypass[0].evidence)
    ready = own.path.ready_since
    seen: list[tuple[datetime.datetime, str, Probe]] = []
    for peer in sorted(nodes):
        prober = statuses.get(peer)
        if peer == node or prober is None:
            continue
        for probe in prober.path.probes:
            if probe.target == node and _fresh(prober, probe, now) and (ready is None or probe.at >= ready):
                seen.append((probe.at, peer, probe))
    if not seen:
        if len(nodes) <= 1:
            return PathVerdict(node, "unverified", SINGLE_NODE)
        return PathVerdict(node, "unverified", "no peer has probed its canary NodePort recently")
    # The newest decides; at equal times an answer beats a timeout (an answer is proof, a timeout is not).
    rank = {"answered": 0, "error": 1, "filtering": 2}
    at, peer, probe = min(seen, key=lambda s: (-s[0].timestamp(), rank[s[2].result], s[1]))
    if probe.result == "answered":
        reason = f"the canary NodePort answered a probe from {peer}: a denied source reaches this node's NodePorts"
        suspects = [f for f in own.path.findings if f.verdict == "suspect"]
        evidence = probe.detail + (f"; suspect: {suspects[0].reason} ({suspects[0].evidence})" if suspects else "")
        return PathVerdict(node, "bypassed", reason, evidence, None, peer)
    if probe.result == "error":
        return PathVerdict(node, "unverified", f"the canary probe from {peer} failed: {probe.detail}", "", None, peer)
    return PathVerdict(node, "enforcing", f"canary dropped by the filter (probe from {peer})", probe.detail, at, peer)


def path_verdicts(
    nodes: Sequence[str], statuses: Mapping[str, Reporter], now: datetime.datetime
) -> dict[str, PathVerdict]:
    return {n: path_verdict(n, nodes, statuses, now) for n in sorted(nodes)}


def canary_targets(me: str, nodes: Sequence[str], epoch: int, k: int = 2) -> tuple[str, ...]:
    """Pure: the peers `me` probes in this rotation epoch.

    The nodes are put on a ring ordered by a hash of (epoch, name); each node probes the `k` nodes
    after it, so every node is probed by exactly `k` others per period (all others when fewer than
    k + 1 nodes), and the probers change with the epoch.
    """
    ring = sorted(set(nodes), key=lambda n: (hashlib.sha256(f"{epoch}|{n}".encode()).digest(), n))
    if me not in ring or len(ring) < 2:
        return ()
    i = ring.index(me)
    return tuple(ring[(i + j) % len(ring)] for j in range(1, min(k, len(ring) - 1) + 1))
