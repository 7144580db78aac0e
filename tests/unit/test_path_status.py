"""Is a node's filter in the packet's path: findings, canary probes, the verdict and its Lease form (pure).

The property test drives random sequences of canary results, passive findings and Lease states and
checks that neither `kubectl nodeport-guard status` (table and JSON) nor the InForce watermark ever
says in force on a node that an independent reading of the rules does not call verified enforcing.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.node_status import NodeStatus, PolicyVersion, decode_lease, encode_lease, in_force_watermark, verdicts
from contract.path_status import (
    SINGLE_NODE,
    Finding,
    PathReport,
    Probe,
    canary_targets,
    decode_path,
    encode_path,
    path_verdict,
)
from kubectl_plugin.status import Snapshot, render, to_json

T0 = datetime.datetime(2026, 12, 6, 0, 0, 0, tzinfo=datetime.UTC)
P = PolicyVersion("shop", "deny-all", "100")
NODES = ("node1", "node2", "node3")


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def lease(node: str, path: PathReport, rv: str = "150", renewed: float = 0.0) -> NodeStatus:
    return NodeStatus(node, "ready", rv, at(0), "sha256:x", 1, (), 0, at(renewed), 180, path)


def test_path_annotations_round_trip_and_survive_a_lease_round_trip() -> None:
    report = PathReport(
        (Finding("rule-ahead", "bypass", "ACCEPTs before our jump", "-A PREROUTING -j ACCEPT"),),
        (Probe("node2", "filtering", "timeout after 1.0s", at(5)), Probe("node3", "answered", "SYN-ACK", at(6))),
        at(1),
    )
    assert decode_path(encode_path(report)) == report
    s = lease("node1", report)
    assert decode_lease(encode_lease(s, "nodeport-guard", at(0), 180)) == s
    assert decode_path({}) == PathReport()


def test_unreadable_or_unknown_findings_are_suspect_never_harmless_and_bad_probes_are_dropped() -> None:
    assert decode_path({"nodeport-guard.io/path-findings": "{"}).findings[0].verdict == "suspect"
    odd = decode_path({"nodeport-guard.io/path-findings": '[["x","fine","r","e"]]'})
    assert odd.findings == (Finding("x", "suspect", "r", "e"),)
    probes = decode_path({"nodeport-guard.io/canary-probes": '[["n","filtering","d","not a time"],["n","won","d",""]]'})
    assert probes.probes == ()


def test_the_content_ignores_probe_times_so_the_heartbeat_carries_them() -> None:
    a = PathReport(probes=(Probe("node2", "filtering", "timeout", at(5)),))
    b = PathReport(probes=(Probe("node2", "filtering", "timeout", at(50)),))
    c = PathReport(probes=(Probe("node2", "answered", "SYN-ACK", at(50)),))
    assert a.content() == b.content() != c.content()


def probe(target: str, result: str, t: float) -> Probe:
    return Probe(target, result, f"{result} detail", at(t))  # type: ignore[arg-type]


def test_the_verdict_of_each_case() -> None:
    nodes = ["node1", "node2"]
    now = at(20)

    def verdict(own: PathReport, peer: PathReport, own_rv: str = "150", peer_renewed: float = 10) -> tuple[str, str]:
        statuses = {"node1": lease("node1", own, own_rv), "node2": lease("node2", peer, renewed=peer_renewed)}
        v = path_verdict("node1", nodes, statuses, now)
        return v.state, v.reason

    dropped = PathReport(probes=(probe("node1", "filtering", 15),))
    assert verdict(PathReport(), dropped)[0] == "enforcing"
    assert verdict(PathReport(), dropped, own_rv="") == ("unverified", "the enforcer has not synced yet")
    assert path_verdict("node1", nodes, {}, now).state == "unverified"
    bypass = PathReport(findings=(Finding("rule-ahead", "bypass", "an ACCEPT ahead of our jump", "-j ACCEPT"),))
    assert verdict(bypass, dropped) == ("bypassed", "an ACCEPT ahead of our jump")
    suspect = PathReport(findings=(Finding("bpf-program", "suspect", "cil_from_netdev on eth0", "tc ingress"),))
    assert verdict(suspect, dropped)[0] == "enforcing"  # a suspect is for the canary to decide
    assert verdict(suspect, PathReport())[0] == "unverified"  # ... and never enforcing without it
    state, reason = verdict(PathReport(), PathReport(probes=(probe("node1", "answered", 15),)))
    assert state == "bypassed" and "answered a probe from node2" in reason
    assert verdict(PathReport(), PathReport(probes=(probe("node1", "error", 15),)))[0] == "unverified"
    # Stale: the prober's heartbeat is lost, or the probe is older than its lease duration.
    assert verdict(PathReport(), dropped, peer_renewed=-500)[0] == "unverified"
    old = PathReport(probes=(probe("node1", "filtering", -400),))
    assert verdict(PathReport(), old, peer_renewed=15)[0] == "unverified"
    # A probe made before the node's enforcer was ready proves nothing about what it programs.
    assert verdict(PathReport(ready_since=at(16)), dropped)[0] == "unverified"
    # A probe of another node proves nothing about this one.
    assert verdict(PathReport(), PathReport(probes=(probe("node3", "filtering", 15),)))[0] == "unverified"
    assert path_verdict("node1", ["node1"], {"node1": lease("node1", PathReport())}, now).reason == SINGLE_NODE


def test_the_newest_probe_decides_and_an_answer_wins_a_tie() -> None:
    nodes = ["node1", "node2", "node3"]
    now = at(30)

    def state(p2: Probe, p3: Probe) -> str:
        statuses = {
            "node1": lease("node1", PathReport()),
            "node2": lease("node2", PathReport(probes=(p2,)), renewed=25),
            "node3": lease("node3", PathReport(probes=(p3,)), renewed=25),
        }
        return path_verdict("node1", nodes, statuses, now).state

    assert state(probe("node1", "answered", 10), probe("node1", "filtering", 20)) == "enforcing"  # rule removed
    assert state(probe("node1", "filtering", 10), probe("node1", "answered", 20)) == "bypassed"
    assert state(probe("node1", "filtering", 20), probe("node1", "answered", 20)) == "bypassed"


def test_canary_targets_every_node_is_probed_by_k_others_and_the_probers_rotate() -> None:
    for n in (1, 2, 3, 10, 100, 1000):
        nodes = [f"node{i}" for i in range(n)]
        probed_by: Counter[str] = Counter()
        for me in nodes:
            targets = canary_targets(me, nodes, epoch=7)
            assert me not in targets and len(set(targets)) == len(targets) == min(2, n - 1)
            probed_by.update(targets)
        assert all(probed_by[x] == min(2, n - 1) for x in nodes)
    nodes = [f"node{i}" for i in range(10)]
    assert len({canary_targets("node0", nodes, epoch=e) for e in range(10)}) > 1
    assert canary_targets("stranger", nodes, 1) == ()


# --- property: nothing says in force on a node that is not verified enforcing -------------------

step = st.one_of(
    st.tuples(st.just("probe"), st.sampled_from(NODES), st.sampled_from(NODES),
              st.sampled_from(["filtering", "answered", "error"])),
    st.tuples(st.just("finding"), st.sampled_from(NODES), st.sampled_from(["bypass", "suspect", "info", None])),
    st.tuples(st.just("lease"), st.sampled_from(NODES),
              st.sampled_from(["renew", "unsynced", "synced", "restart", "gone", "stopped"])),
    st.tuples(st.just("time"), st.integers(min_value=1, max_value=200)),
)


def oracle_enforcing(node: str, statuses: dict[str, NodeStatus], now: datetime.datetime) -> bool:
    """The rules of contract/path_status.py read independently, by brute force."""
    own = statuses.get(node)
    if own is None or not own.resource_version or any(f.verdict == "bypass" for f in own.path.findings):
        return False
    fresh = []
    for peer, s in statuses.items():
        alive = s.renewed_at is not None and now <= s.renewed_at + datetime.timedelta(seconds=s.lease_seconds)
        for p in s.path.probes:
            recent = alive and (now - p.at).total_seconds() <= s.lease_seconds
            after_ready = own.path.ready_since is None or p.at >= own.path.ready_since
            if peer != node and p.target == node and recent and after_ready:
                fresh.append(p)
    if not fresh:
        return False
    newest = max(p.at for p in fresh)
    return all(p.result == "filtering" for p in fresh if p.at == newest)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=40))
def test_no_sequence_makes_status_or_in_force_say_in_force_on_a_node_not_verified_enforcing(
    steps: list[tuple[object, ...]],
) -> None:
    now = T0
    statuses: dict[str, NodeStatus] = {}
    for s in steps:
        kind = s[0]
        if kind == "time":
            now += datetime.timedelta(seconds=int(s[1]))  # type: ignore[call-overload]
        elif kind == "probe":
            prober, target, result = str(s[1]), str(s[2]), str(s[3])
            if prober in statuses and prober != target:
                old = statuses[prober]
                probes = tuple(p for p in old.path.probes if p.target != target)
                new = Probe(target, result, "d", now)  # type: ignore[arg-type]
                statuses[prober] = dataclasses.replace(
                    old, renewed_at=now, path=dataclasses.replace(old.path, probes=(*probes, new))
                )
        elif kind == "finding":
            node, verdict = str(s[1]), s[2]
            if node in statuses:
                findings = () if verdict is None else (Finding("k", verdict, "r", "e"),)  # type: ignore[arg-type]
                old = statuses[node]
                statuses[node] = dataclasses.replace(old, path=dataclasses.replace(old.path, findings=findings))
        else:
            node, what = str(s[1]), s[2]
            old_or_new = statuses.get(node) or NodeStatus(node, "starting", "", None, "", 0, (), 0, now, 180)
            if what == "gone":
                statuses.pop(node, None)
            elif what == "renew":
                statuses[node] = dataclasses.replace(old_or_new, renewed_at=now)
            elif what == "unsynced":
                statuses[node] = dataclasses.replace(old_or_new, resource_version="", renewed_at=now)
            elif what == "synced":
                statuses[node] = dataclasses.replace(old_or_new, phase="ready", resource_version="150", renewed_at=now)
            elif what == "restart":
                path = dataclasses.replace(old_or_new.path, ready_since=now, probes=())
                statuses[node] = dataclasses.replace(old_or_new, renewed_at=now, path=path)
            else:
                statuses[node] = dataclasses.replace(old_or_new, phase="stopped", renewed_at=now)
        results = verdicts(list(NODES), statuses, [P], now)
        truth = {n: oracle_enforcing(n, statuses, now) for n in NODES}
        snap = Snapshot("p", (P,), tuple(results))
        doc = to_json(snap)
        for v, j in zip(results, doc["nodes"], strict=True):
            if v.state == "in-force" or j["inForce"]:
                assert truth[v.node], (v, statuses)
            if truth[v.node]:  # and the converse: a verified, programmed node is in force
                assert v.state == "in-force" and v.path == "enforcing", (v, statuses)
            assert v.path == ("enforcing" if truth[v.node] else v.path)
        in_force_count = sum(truth.values())
        assert render(snap).splitlines()[0].endswith(f"in force on {in_force_count} of {len(NODES)} nodes")
        assert doc["inForce"] == all(truth.values())
        if in_force_watermark(list(NODES), statuses, now) is not None:
            assert all(truth.values())  # an InForce Event is possible only when every node is verified


def test_the_publisher_writes_a_changed_outcome_within_5_s_and_probe_times_only_with_the_heartbeat() -> None:
    from enforcer.plan import DesiredState
    from enforcer.status import Programmed, StatusPublisher

    t = [0.0]
    writes: list[dict[str, object]] = []
    current = [PathReport(probes=(probe("node2", "filtering", 0),))]
    pub = StatusPublisher(
        "node1", "nodeport-guard", writes.append, lambda: 1, lambda: Programmed(True, "5", DesiredState(), ()),
        min_interval=5, heartbeat=60, clock=lambda: t[0], wall=lambda: at(t[0]), path=lambda: current[0],
    )
    assert pub.tick()
    for i in range(1, 100):  # a probe every 0.5 s, same outcome: no write
        t[0] = i * 0.5
        current[0] = PathReport(probes=(probe("node2", "filtering", t[0]),))
        assert not pub.tick()
    t[0] = 50.0
    current[0] = PathReport(probes=(probe("node2", "answered", t[0]),))
    assert pub.tick() and len(writes) == 2  # the outcome changed: written at once (last write 50 s ago)
    decoded = decode_lease(writes[-1])
    assert decoded is not None and decoded.path.probes[0].result == "answered"
    t[0] = 51.0
    current[0] = PathReport(probes=(probe("node2", "filtering", t[0]),))
    assert not pub.tick()  # changed back, but within 5 s of the last write
    t[0] = 55.0
    assert pub.tick() and len(writes) == 3
    t[0] = 114.0
    current[0] = PathReport(probes=(probe("node2", "filtering", 114.0),))
    assert not pub.tick()
    t[0] = 115.0
    assert pub.tick()  # the heartbeat carries the newest probe time
    decoded = decode_lease(writes[-1])
    assert decoded is not None and decoded.path.probes[0].at == at(114.0)


def test_accept_unverified_passes_a_programmed_single_node_but_never_a_bypassed_one() -> None:
    alone = {"node1": lease("node1", PathReport())}
    snap = Snapshot("p", (P,), tuple(verdicts(["node1"], alone, [P], at(10))))
    assert not snap.in_force and snap.programmed_everywhere_unverified
    assert SINGLE_NODE in render(snap)
    bypassed = {"node1": lease("node1", PathReport(findings=(Finding("rule-ahead", "bypass", "r", "e"),)))}
    snap = Snapshot("p", (P,), tuple(verdicts(["node1"], bypassed, [P], at(10))))
    assert not snap.in_force and not snap.programmed_everywhere_unverified
    behind = {"node1": lease("node1", PathReport(), rv="50")}
    snap = Snapshot("p", (P,), tuple(verdicts(["node1"], behind, [P], at(10))))
    assert not snap.programmed_everywhere_unverified  # not programmed: no flag makes it pass
