"""The canary prober's decisions with an injected probe and clock (pure); the probe itself is proven by
packets in tests/dataplane/test_canary_probe.py and on the cluster in tests/cluster/test_5d_canary.py."""

from __future__ import annotations

import datetime
from typing import Any

from contract.path_status import Probe
from enforcer.canary import ROTATION_SECONDS, CanaryProber, canary_armed, node_addresses, trim_node

T0 = datetime.datetime(2026, 12, 6, 0, 0, 0, tzinfo=datetime.UTC)
NODES = {f"node{i}": f"198.51.100.{i + 1}" for i in range(5)}


def test_node_addresses_take_the_first_internal_ip_and_skip_nodes_without_one() -> None:
    nodes: list[dict[str, Any]] = [
        {"metadata": {"name": "a"}, "status": {"addresses": [{"type": "Hostname", "address": "a"},
                                                            {"type": "InternalIP", "address": "198.51.100.1"},
                                                            {"type": "InternalIP", "address": "2001:db8::1"}]}},
        {"metadata": {"name": "b"}, "status": {}},
    ]
    assert node_addresses([trim_node(n) for n in nodes]) == {"a": "198.51.100.1"}


def test_canary_is_armed_only_where_its_port_is_enforced_with_no_source_allowed() -> None:
    assert canary_armed(lambda: None, 32767) == "this node's enforcer has not synced yet"
    assert "not protected" in str(canary_armed(lambda: {}, 32767))
    assert "audit mode" in str(canary_armed(lambda: {(4, "TCP", 32767): (0, "audit")}, 32767))
    assert "allows 2" in str(canary_armed(lambda: {(4, "TCP", 32767): (2, "enforce")}, 32767))
    assert canary_armed(lambda: {(4, "TCP", 32767): (0, "enforce")}, 32767) is None


def test_a_round_probes_this_epochs_peers_and_reports_only_them() -> None:
    now = [T0]
    sent: list[tuple[str, int]] = []
    changes: list[tuple[Probe, Probe | None]] = []

    def probe(address: str, port: int, timeout: float) -> tuple[str, str]:
        sent.append((address, port))
        return ("answered", "SYN-ACK") if address == NODES["node3"] else ("filtering", f"timeout after {timeout:g}s")

    prober = CanaryProber(
        "node0", 32767, lambda: NODES, lambda: None, probe=probe,  # type: ignore[arg-type]
        wall=lambda: now[0], on_result=lambda p, b: changes.append((p, b)),
    )
    first = prober.round()
    assert [p.target for p in first] == list(prober.targets()) and len(first) == 2
    assert {a for a, _ in sent} == {NODES[t] for t in prober.targets()} and {p for _, p in sent} == {32767}
    assert prober.report() == tuple(first)
    assert all(before is None for _, before in changes)
    for p in first:
        assert p.result == ("answered" if p.target == "node3" else "filtering")
    # A later round of the same epoch: same peers, the previous result handed over.
    now[0] = T0 + datetime.timedelta(seconds=10)
    second = prober.round()
    assert [p.target for p in second] == [p.target for p in first]
    assert [b for _, b in changes[2:]] == list(first)
    # Across rotation epochs the peers change, and the report names only the current ones.
    seen = set()
    for e in range(1, 12):
        now[0] = T0 + datetime.timedelta(seconds=e * ROTATION_SECONDS)
        prober.round()
        assert {p.target for p in prober.report()} == set(prober.targets())
        seen.add(prober.targets())
    assert len(seen) > 1


def test_not_armed_or_no_address_is_an_error_never_a_verdict() -> None:
    calls: list[str] = []

    def probe(address: str, port: int, timeout: float) -> tuple[str, str]:
        calls.append(address)
        return "filtering", "timeout"

    unarmed = CanaryProber("node0", 32767, lambda: NODES, lambda: "not synced", probe=probe,  # type: ignore[arg-type]
                           wall=lambda: T0)
    assert {(p.result, p.detail) for p in unarmed.round()} == {("error", "not synced")} and calls == []
    nameless = {n: a for n, a in NODES.items() if n == "node0"} | {n: "" for n in NODES if n != "node0"}
    no_address = CanaryProber("node0", 32767, lambda: {k: v for k, v in nameless.items() if v}, lambda: None,
                              probe=probe, wall=lambda: T0)  # type: ignore[arg-type]
    assert no_address.round() == []  # a node without an address is not a peer at all
    alone = CanaryProber("node0", 32767, lambda: {"node0": NODES["node0"]}, lambda: None, probe=probe,  # type: ignore[arg-type]
                         wall=lambda: T0)
    assert alone.round() == [] and alone.report() == ()
