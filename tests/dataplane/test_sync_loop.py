"""The enforcer's SyncLoop on a real dataplane (nft backend, driven from the test process through
`ip netns exec`): event syncs take the fast path and write only the changed ports' members, set
creation and family removal fall back to a full sync, the periodic resync repairs drift the fast
path does not look at, a relist recomputes everything, and a restart rewrites nothing."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from contract.annotation import (
    Annotation,
    CidrRule,
    IPFamily,
    NodePortVerdict,
    PolicyRef,
    SourceSet,
    render_annotations,
)
from contract.signing import Signer
from enforcer.dataplane import Dataplane, SyncReport
from enforcer.incremental import PortChange
from enforcer.loop import SyncLoop
from enforcer.plan import PortKey, plan_desired_state
from enforcer.policies import PolicyStore, StoredPolicy, verify_policy
from tests.netns import CLIENT_A4, CLIENT_A6, CLIENT_B4, NODE_V4, NODE_V6, Node

pytestmark = pytest.mark.netns
KEY = Signer.from_seed(b"sync-loop-test-seed-0123456789ab")
TRUSTED = KEY.verifier()
RANGE = (30000, 32767)
PORT = 30080


def policy(name: str, port: int, cidrs: list[str], families: tuple[IPFamily, ...] = ("IPv4",)) -> StoredPolicy:
    allow = SourceSet(False, tuple(sorted(CidrRule(c) for c in cidrs)))
    ref = PolicyRef("default", name, f"uid-{name}")
    entry = NodePortVerdict(port, "TCP", "web", 80, families, allow).entry()
    annotations = render_annotations(Annotation(ref, (entry,)), KEY)
    return StoredPolicy(ref.namespace, ref.name, ref.uid, "1", tuple(sorted(annotations.items())))


class RecordingDataplane(Dataplane):
    """The real Dataplane, recording which path each sync took."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paths: list[str] = []

    def sync(self, state: Any, full_readback: bool = False) -> SyncReport:
        self.paths.append("full")
        return super().sync(state, full_readback)

    def sync_ports(self, changes: Mapping[PortKey, PortChange]) -> SyncReport | None:
        report = super().sync_ports(changes)
        self.paths.append("fast" if report is not None else "refused")
        return report


class Harness:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.dp = RecordingDataplane("nft", RANGE, lock_path=node.lock_path, runner=node.runner)
        self.store = PolicyStore()
        self.loop = SyncLoop(self.store, self.dp, lambda: TRUSTED, RANGE, threading.Event())
        self.model: dict[str, StoredPolicy] = {}

    def put(self, p: StoredPolicy) -> None:
        self.store.apply("networkpolicies", "MODIFIED" if p.name in self.model else "ADDED", p)
        self.model[p.name] = p

    def delete(self, name: str) -> None:
        self.store.apply("networkpolicies", "DELETED", self.model.pop(name))

    def sync(self, paths: list[str], full_readback: bool = False) -> SyncReport:
        self.dp.paths.clear()
        report = self.loop.sync_once(full_readback=full_readback)
        assert self.dp.paths == paths
        expected = plan_desired_state(
            [a for p in self.model.values() if isinstance(a := verify_policy(p, TRUSTED), Annotation)], RANGE
        )
        assert self.dp.installed() == expected.state == self.loop.state
        return report


def test_sync_loop_paths_on_a_real_dataplane(node: Node) -> None:
    node.listen(PORT)
    h = Harness(node)
    a4, b4, a6 = CLIENT_A4, CLIENT_B4, CLIENT_A6
    h.model = {"a": policy("a", PORT, [f"{a4}/32"])}
    h.store.replace("networkpolicies", list(h.model.values()), "1")
    h.sync(["full"])  # the first sync after the initial list
    assert node.connect(a4, NODE_V4[0], PORT) == "connected"
    assert node.connect(b4, NODE_V4[0], PORT) == "timeout"

    # Events on an existing family: one `ipset restore` of the changed members, nothing read back.
    h.put(policy("b", PORT, [f"{b4}/32"]))
    report = h.sync(["fast"])
    assert (report.members_added, report.members_removed, report.full_readback) == (1, 0, False)
    assert node.connect(b4, NODE_V4[0], PORT) == "connected"
    h.put(policy("a", PORT + 1, [f"{a4}/32"]))  # a moves to another NodePort
    report = h.sync(["fast"])
    assert (report.members_added, report.members_removed) == (2, 1)  # port 30081 + its member; a's old member
    assert node.connect(a4, NODE_V4[0], PORT) == "timeout"

    # A first IPv6 port needs sets and a skeleton: the fast path hands over to a full sync, and back.
    h.put(policy("c", PORT, [f"{a6}/128"], ("IPv6",)))
    h.sync(["refused", "full"])
    assert node.connect(a6, NODE_V6[0], PORT) == "connected"
    h.delete("c")
    h.sync(["refused", "full"])
    assert not [n for n in node.run(["ipset", "list", "-n"]).stdout.split() if n.startswith("npg-6-")]

    # Drift: the fast path trusts its record; the periodic resync reads back and repairs.
    node.run(["ipset", "del", "npg-4-allow", f"{b4},tcp:{PORT}"])
    h.put(policy("d", PORT + 2, []))
    h.dp.paths.clear()
    h.loop.sync_once()
    assert h.dp.paths == ["fast"] and node.connect(b4, NODE_V4[0], PORT) == "timeout"
    report = h.sync(["full"], full_readback=True)
    assert report.drift_repaired and report.members_added == 1
    assert node.connect(b4, NODE_V4[0], PORT) == "connected"

    # A relist (after 410 Gone) is diffed against what is known, and recomputed in full.
    del h.model["b"]
    h.model["e"] = policy("e", PORT, [f"{a4}/32"])
    h.store.replace("networkpolicies", list(h.model.values()), "2")
    h.sync(["full"])
    assert node.connect(b4, NODE_V4[0], PORT) == "timeout"
    assert node.connect(a4, NODE_V4[0], PORT) == "connected"

    # A restarted enforcer (new store, loop and dataplane) rewrites nothing.
    restarted = Harness(node)
    restarted.model = dict(h.model)
    restarted.store.replace("networkpolicies", list(h.model.values()), "3")
    report = restarted.sync(["full"])
    assert (report.members_added, report.members_removed, report.rules_added) == (0, 0, 0)
    restarted.dp.cleanup()
