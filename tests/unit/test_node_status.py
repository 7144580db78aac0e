"""The per-node status: its Lease format, "in force on every node?" and the publisher's write budget (pure)."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, cast

import pytest

from contract.node_status import (
    MAX_REFUSED,
    NodeStatus,
    PolicyVersion,
    Refused,
    all_in_force,
    decode_lease,
    encode_lease,
    lease_name,
    node_verdict,
    status_by_node,
    verdicts,
)
from contract.path_status import SINGLE_NODE, PathReport, Probe
from enforcer.plan import DesiredState, PortKey, ProtectedPort
from enforcer.policies import RejectedAnnotation
from enforcer.status import Programmed, StatusPublisher, node_status, verdicts_digest

NOW = datetime.datetime(2026, 11, 30, 1, 0, 0, tzinfo=datetime.UTC)
P = PolicyVersion("shop", "deny-all", "120")


def status(rv: str = "150", phase: str = "ready", renewed_ago: float = 1.0, **kw: object) -> NodeStatus:
    base: dict[str, object] = {
        "node": "node1",
        "phase": phase,
        "resource_version": rv,
        "programmed_at": NOW - datetime.timedelta(seconds=30),
        "digest": "sha256:ab",
        "protected_nodeports": 2,
        "refused": (),
        "refused_total": 0,
        "renewed_at": NOW - datetime.timedelta(seconds=renewed_ago),
        "lease_seconds": 180,
    }
    base.update(kw)
    return NodeStatus(**base)  # type: ignore[arg-type]


def probed(statuses: dict[str, NodeStatus], ago: float = 2.0) -> dict[str, NodeStatus]:
    """Every node's Lease says it probed every other node and the canary was dropped (`ago` s ago)."""
    import dataclasses

    at = NOW - datetime.timedelta(seconds=ago)
    return {
        name: dataclasses.replace(
            s, path=PathReport(probes=tuple(Probe(o, "filtering", "timeout", at) for o in statuses if o != name))
        )
        for name, s in statuses.items()
    }


def state(*ports: tuple[int, str]) -> DesiredState:
    return DesiredState(
        tuple(
            ProtectedPort(PortKey(4, "TCP", port), tuple(ipaddress.ip_network(c) for c in cidrs.split() if c))
            for port, cidrs in ports
        )
    )


def test_lease_round_trip_keeps_every_field() -> None:
    s = status(refused=(Refused("shop", "bad", "99"),), refused_total=1)
    body = encode_lease(s, "nodeport-guard", NOW - datetime.timedelta(seconds=1), 180)
    assert body["metadata"]["name"] == lease_name("node1") == "nodeport-guard-node-node1"
    back = decode_lease(body)
    assert back == s


@pytest.mark.parametrize(
    ("node_status_", "state_", "enforcer", "behind"),
    [
        (status(rv="150"), "in-force", "ready", 0),
        (status(rv="120"), "in-force", "ready", 0),  # exactly the policy's version
        (status(rv="119"), "behind", "ready", 1),
        (status(rv=""), "behind", "ready", 1),  # not synced yet
        (status(rv="119", phase="stopped"), "behind", "stopped", 1),
        (status(rv="150", phase="stopped"), "in-force", "stopped", 0),  # rules stay in place when stopped
        (status(rv="119", renewed_ago=400), "behind", "heartbeat lost", 1),
        (status(rv="150", refused=(Refused("shop", "deny-all", "120"),), refused_total=1), "refused", "ready", 0),
        (status(rv="150", refused=(Refused("shop", "x", "1"),), refused_total=MAX_REFUSED + 5), "unknown", "ready", 0),
        (None, "no-enforcer", "none", 1),
    ],
)
def test_node_verdict(node_status_: NodeStatus | None, state_: str, enforcer: str, behind: int) -> None:
    v = node_verdict("node1", node_status_, [P], NOW)
    assert (v.state, v.enforcer, v.behind_by) == (state_, enforcer, behind)


def test_behind_counts_the_newer_versions_and_names_them() -> None:
    wanted = [PolicyVersion("shop", "a", "100"), PolicyVersion("shop", "b", "130"), PolicyVersion("shop", "c", "140")]
    v = node_verdict("node1", status(rv="120"), wanted, NOW)
    assert v.state == "behind" and v.behind_by == 2 and "shop/b, shop/c" in v.detail
    assert v.since_seconds == 30.0


def test_every_node_must_be_in_force_and_leases_of_gone_nodes_are_ignored() -> None:
    leases = [
        encode_lease(status(rv="150"), "nodeport-guard", NOW, 180),
        encode_lease(status(rv="100", node="node2"), "nodeport-guard", NOW, 180),
        encode_lease(status(rv="150", node="gone"), "nodeport-guard", NOW, 180),
        {"metadata": {"name": "nodeport-guard-reconciler"}, "spec": {}},  # not a node status
    ]
    statuses = probed(status_by_node(leases))
    assert sorted(statuses) == ["gone", "node1", "node2"]
    results = verdicts(["node2", "node1"], statuses, [P], NOW)
    assert [(v.node, v.state) for v in results] == [("node1", "in-force"), ("node2", "behind")]
    assert not all_in_force(results)
    # One node alone: programmed, but nothing can prove the filter is in the path.
    alone = verdicts(["node1"], statuses, [P], NOW)
    assert not all_in_force(alone) and alone[0].state == "unverified" and alone[0].path_reason == SINGLE_NODE
    assert not all_in_force([])  # no node at all: nothing is in force


def test_a_lease_named_for_another_node_is_not_read() -> None:
    body = encode_lease(status(), "nodeport-guard", NOW, 180)
    body["metadata"]["name"] = lease_name("node2")
    assert decode_lease(body) is None


def test_digest_follows_the_verdicts_only() -> None:
    a = state((30080, "198.51.100.0/24"), (30081, ""))
    assert verdicts_digest(a) == verdicts_digest(state((30080, "198.51.100.0/24"), (30081, "")))
    assert verdicts_digest(a) != verdicts_digest(state((30080, "198.51.100.0/25"), (30081, "")))
    assert verdicts_digest(a) != verdicts_digest(state((30080, "198.51.100.0/24")))
    audited = DesiredState(tuple(ProtectedPort(p.key, p.allowed, "audit") for p in a.ports))
    assert verdicts_digest(a) != verdicts_digest(audited)  # audit and enforce are different verdicts


def test_refusals_are_capped_in_the_object() -> None:
    rejected = tuple(RejectedAnnotation("ns", f"p{i}", str(i), "bad signature") for i in range(MAX_REFUSED + 10))
    s = node_status("node1", "ready", Programmed(True, "5", state(), rejected), NOW)
    assert len(s.refused) == MAX_REFUSED and s.refused_total == MAX_REFUSED + 10
    assert len(str(encode_lease(s, "nodeport-guard", NOW, 180))) < 8192


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_publisher_writes_on_change_at_most_every_min_interval_and_beats_when_idle() -> None:
    clock, writes = Clock(), cast(list[dict[str, Any]], [])
    generation, rv = [0], ["10"]

    def read() -> Programmed | None:
        return None if generation[0] == 0 else Programmed(True, rv[0], state((30080, "")), ())

    pub = StatusPublisher(
        "node1", "nodeport-guard", writes.append, lambda: generation[0], read, min_interval=5, heartbeat=60, clock=clock
    )
    assert pub.tick() and writes[-1]["metadata"]["annotations"]["nodeport-guard.io/enforcer"] == "starting"
    generation[0] = 1
    clock.t = 1.0
    assert not pub.tick()  # changed, but the last write is 1 s old
    clock.t = 5.0
    assert pub.tick() and writes[-1]["metadata"]["annotations"]["nodeport-guard.io/programmed-resource-version"] == "10"
    # A burst of changes every 0.5 s for a minute: at most one write per 5 s.
    before = len(writes)
    for step in range(120):
        clock.t = 5.5 + step * 0.5
        generation[0] += 1
        rv[0] = str(11 + step)
        pub.tick()
    assert len(writes) - before <= 60 / 5
    assert writes[-1]["metadata"]["annotations"]["nodeport-guard.io/programmed-resource-version"] == "130"
    last_write_at = 65.0  # the burst's last tick wrote its last change
    # Nothing changes: syncs that program the same (generation moves, content does not) write nothing ...
    last = len(writes)
    for step in range(1, 119):
        clock.t = last_write_at + step * 0.5
        generation[0] += 1
        pub.tick()
    assert len(writes) == last
    # ... until the heartbeat is due (once per minute).
    clock.t = last_write_at + 60.0
    assert pub.tick() and len(writes) == last + 1
    assert pub.lease_seconds == 180


def test_publisher_says_stopped_on_the_way_out() -> None:
    clock, writes = Clock(), cast(list[dict[str, Any]], [])
    pub = StatusPublisher(
        "node1",
        "nodeport-guard",
        writes.append,
        lambda: 1,
        lambda: Programmed(True, "7", state(), ()),
        clock=clock,
    )
    pub.tick()
    clock.t = 0.1
    assert pub.tick(stopping=True)  # not rate-limited: the last word
    assert decode_lease(writes[-1]) is not None
    assert writes[-1]["metadata"]["annotations"]["nodeport-guard.io/enforcer"] == "stopped"


def test_status_table_names_nodes_up_to_date_behind_and_not_ready() -> None:
    from kubectl_plugin.status import Snapshot, render, to_json

    statuses = probed({"node1": status(rv="150"), "node2": status(rv="100", node="node2", phase="stopped")})
    snap = Snapshot(
        "NetworkPolicy shop/deny-all (resourceVersion 120)",
        (P,),
        tuple(verdicts(["node1", "node2"], statuses, [P], NOW)),
    )
    text = render(snap)
    assert text.splitlines()[0] == "NetworkPolicy shop/deny-all (resourceVersion 120): in force on 1 of 2 nodes"
    assert "up to date: node1" in text
    assert "behind: node2 (behind, 1 version(s) not programmed, last change 30s ago)" in text
    assert "enforcer not ready: node2 (stopped)" in text
    doc = to_json(snap)
    assert doc["inForce"] is False
    assert [(n["node"], n["inForce"], n["enforcer"]) for n in doc["nodes"]] == [
        ("node1", True, "ready"),
        ("node2", False, "stopped"),
    ]


def test_wait_reads_until_in_force_or_the_timeout() -> None:
    from kubectl_plugin.status import Snapshot, parse_duration, wait_for

    behind = Snapshot("p", (P,), (node_verdict("node1", status(rv="100"), [P], NOW),))
    done = Snapshot("p", (P,), (node_verdict("node1", status(rv="150"), [P], NOW),))
    answers = [behind, behind, done]
    assert wait_for(lambda: answers.pop(0), wait=True, timeout=30).in_force and answers == []
    reads = [0]

    def never() -> Snapshot:
        reads[0] += 1
        return behind

    assert not wait_for(never, wait=True, timeout=0).in_force and reads == [1]
    assert not wait_for(never, wait=False, timeout=30).in_force and reads == [2]
    assert [parse_duration(t) for t in ("90", "90s", "2m", "1h")] == [90, 90, 120, 3600]


def test_the_in_force_watermark_is_the_minimum_over_every_node() -> None:
    from contract.node_status import in_force_watermark

    statuses = probed({"node1": status(rv="150"), "node2": status(rv="130", node="node2")})
    assert in_force_watermark(["node1", "node2"], statuses, NOW) == 130
    assert in_force_watermark(["node1", "node2", "node3"], statuses, NOW) is None  # node3 never reported
    assert in_force_watermark(["node1"], {"node1": status(rv="")}, NOW) is None
    assert in_force_watermark([], statuses, NOW) is None
    # Programmed everywhere but not verified in the path: nothing is in force.
    assert in_force_watermark(["node1", "node2"], probed(statuses, ago=400), NOW) is None


def test_newly_in_force_takes_the_versions_the_watermark_passed_and_no_refused_one() -> None:
    from contract.node_status import newly_in_force

    policies = [
        PolicyVersion("shop", "old", "100"),
        PolicyVersion("shop", "a", "125"),
        PolicyVersion("shop", "bad", "126"),
        PolicyVersion("shop", "b", "130"),
        PolicyVersion("shop", "later", "131"),
    ]
    statuses = {
        "node1": status(rv="150"),
        "node2": status(rv="130", node="node2", refused=(Refused("shop", "bad", "126"),), refused_total=1),
    }
    got = newly_in_force(policies, ["node1", "node2"], statuses, since=120, upto=130)
    assert [p.name for p in got] == ["a", "b"]
    truncated = {**statuses, "node1": status(rv="150", refused_total=MAX_REFUSED + 1)}
    assert newly_in_force(policies, ["node1", "node2"], truncated, since=120, upto=130) == []


def test_a_resource_version_that_is_not_a_number_is_never_taken_as_programmed() -> None:
    v = node_verdict("node1", status(rv="150"), [PolicyVersion("shop", "odd", "opaque-token")], NOW)
    assert v.state == "behind"


def test_status_settings_default_to_the_write_budget_and_refuse_a_faster_one() -> None:
    from enforcer.settings import EnforcerSettings, SettingsError

    base = {"NPG_PUBLIC_KEYS_FILE": "/dev/null"}
    settings = EnforcerSettings.from_env(base)
    assert (settings.status_min_interval_seconds, settings.status_heartbeat_seconds) == (5.0, 60.0)
    assert settings.status_namespace == "nodeport-guard"
    for bad in ({"NPG_STATUS_MIN_INTERVAL_SECONDS": "0.5"}, {"NPG_STATUS_HEARTBEAT_SECONDS": "2"}):
        with pytest.raises(SettingsError, match="NPG_STATUS_MIN_INTERVAL_SECONDS"):
            EnforcerSettings.from_env({**base, **bad})
