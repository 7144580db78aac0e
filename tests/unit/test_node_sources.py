"""The sources report: its Lease form round-trips, its size is bounded, the merge over nodes (pure)."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.node_sources import (
    MAX_PUBLISHED_KEYS,
    MAX_PUBLISHED_SOURCES,
    KeySources,
    NodeSources,
    SourceCount,
    SourceKey,
    SourcesFormatError,
    bound_report,
    decode_sources,
    decode_sources_lease,
    encode_sources,
    encode_sources_lease,
    merge_nodes,
    sources_lease_name,
)

KEYS = st.builds(SourceKey, st.sampled_from([4, 6]), st.sampled_from(["TCP", "UDP", "SCTP"]),
                 st.integers(30000, 32767), st.sampled_from(["enforce", "audit"]))
COUNTS = st.builds(SourceCount, st.ip_addresses().map(str), st.integers(1, 10**6), st.integers(0, 10),
                   st.integers(0, 2 * 10**9).map(float))
REPORTS = st.builds(
    NodeSources, st.just("node-a"), st.just(1000.0), st.just(1600.0),
    st.lists(st.builds(KeySources, KEYS, st.integers(0, 10**6), st.lists(COUNTS, max_size=20).map(tuple)),
             max_size=80, unique_by=lambda k: k.key).map(lambda ks: tuple(sorted(ks, key=lambda k: k.key))),
    st.integers(0, 100), st.integers(0, 100),
)
NOW = datetime.datetime(2026, 12, 6, 23, 0, tzinfo=datetime.UTC)


@given(REPORTS)
@settings(max_examples=100, deadline=None)
def test_round_trip_and_the_published_size_is_bounded(report: NodeSources) -> None:
    bounded = bound_report(report)
    assert len(bounded.keys) <= MAX_PUBLISHED_KEYS
    assert all(len(k.sources) <= MAX_PUBLISHED_SOURCES for k in bounded.keys)
    assert bounded.keys_left_out == report.keys_left_out + max(0, len(report.keys) - MAX_PUBLISHED_KEYS)
    lease = encode_sources_lease(bounded, "nodeport-guard", NOW, 90)
    decoded = decode_sources_lease(lease)
    assert decoded is not None
    assert encode_sources(decoded) == encode_sources(bounded)  # canonical: same report, same text
    # The worst case (64 keys x 8 IPv6 sources) stays well under a Lease's 256 KB of annotations.
    assert len(lease["metadata"]["annotations"]["nodeport-guard.io/sources"]) < 48_000


def test_worst_case_payload_size() -> None:
    src = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
    keys = tuple(KeySources(SourceKey(6, "SCTP", 30000 + i, "enforce"), 10**9,
                            tuple(SourceCount(src, 10**9, 10**9, 2e9 + 0.123) for _ in range(8))) for i in range(64))
    text = encode_sources(NodeSources("n", 2e9, 2e9, keys, 10**9, 10**9))
    assert len(text) < 48_000


def test_merge_over_nodes_sums_counts_keeps_last_seen_and_names_the_nodes() -> None:
    key = SourceKey(4, "TCP", 30080, "audit")
    other = SourceKey(4, "UDP", 30081, "enforce")
    a = NodeSources("a", 0, 10, (KeySources(key, 5, (SourceCount("198.51.100.10", 3, 0, 7.0),
                                                     SourceCount("203.0.113.10", 2, 0, 9.0))),
                                 KeySources(other, 1, (SourceCount("198.51.100.10", 1, 0, 1.0),))))
    b = NodeSources("b", 0, 10, (KeySources(key, 2, (SourceCount("203.0.113.10", 2, 1, 8.0),)),))
    (merged,) = merge_nodes([a, b], ports=[("TCP", 30080)])
    assert merged.key == key and merged.sampled == 7 and merged.nodes == ("a", "b")
    assert [(s.source, s.count, s.error, s.last_seen, s.nodes) for s in merged.sources] == [
        ("203.0.113.10", 4, 1, 9.0, ("a", "b")),
        ("198.51.100.10", 3, 0, 7.0, ("a",)),
    ]
    assert [m.key for m in merge_nodes([a, b])] == [key, other]
    assert merge_nodes([]) == ()


BAD = ['{"v":1,"since":0,"at":0,"keys":[[5,"TCP",1,"audit",0,[]]]}',
       '{"v":1,"since":0,"at":0,"keys":[[4,"TCP",1,"audit",0,[["nope",1,0,0]]]]}']


@pytest.mark.parametrize("text", ["not json", "{}", '{"v":1}', *BAD])
def test_unreadable_reports_name_the_node_and_the_field(text: str) -> None:
    with pytest.raises(SourcesFormatError, match="node n1"):
        decode_sources("n1", text)


def test_a_foreign_lease_is_not_a_report() -> None:
    assert decode_sources_lease({"metadata": {"name": "x", "annotations": {}}}) is None
    lease = encode_sources_lease(NodeSources("n1", 0, 0, ()), "ns", NOW, 90)
    assert lease["metadata"]["name"] == sources_lease_name("n1")
    lease["metadata"]["name"] = "nodeport-guard-sources-other"
    assert decode_sources_lease(lease) is None
    assert json.loads(encode_sources(NodeSources("n1", 0, 0, ())))["keys"] == []
