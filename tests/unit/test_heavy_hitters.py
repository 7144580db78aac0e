"""The bounded top-sources structure: Space-Saving's guarantees against a brute-force count, the
bounds whatever is sent, the window (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.node_sources import SourceKey
from enforcer.heavy_hitters import SpaceSaving, TopSources

K = SourceKey(4, "TCP", 30080, "audit")
SOURCES = st.sampled_from([f"198.51.100.{i}" for i in range(1, 40)])


@given(st.lists(SOURCES, max_size=400), st.integers(1, 12))
@settings(max_examples=300, deadline=None)
def test_space_saving_bounds_every_count_and_keeps_every_heavy_source(stream: list[str], capacity: int) -> None:
    s = SpaceSaving(capacity)
    for i, src in enumerate(stream):
        s.add(src, float(i))
    truth = Counter(stream)
    assert len(s.entries) <= capacity
    assert s.total == len(stream)
    assert sum(e.count for e in s.entries.values()) == len(stream)  # Space-Saving's invariant
    for src, e in s.entries.items():
        assert e.count - e.error <= truth[src] <= e.count
    for src, n in truth.items():
        if n > len(stream) / capacity:
            assert src in s.entries  # the guarantee the docs state
        if src not in s.entries:
            assert n <= s.floor()


@given(st.lists(st.tuples(SOURCES, st.booleans()), max_size=300), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_the_report_merges_two_windows_within_the_bounds(events: list[tuple[str, bool]], per_key: int) -> None:
    top = TopSources(per_key=per_key, max_keys=4, window=100.0)
    truth: Counter[str] = Counter()
    now = 1000.0
    moved = early = False
    for src, next_window in events:
        if next_window and not moved:
            now, moved = 1100.0, True  # the following window: the report still holds both
        early = early or not moved
        top.add(K, src, now)
        truth[src] += 1
    report = top.report("n1", now)
    if not events:
        assert report.keys == ()
        return
    (ks,) = report.keys
    assert ks.sampled == len(events)
    assert len(ks.sources) <= per_key
    for s in ks.sources:
        assert s.count - s.error <= truth[s.source] <= s.count
    assert report.since == (1000.0 if early else 1100.0)  # the previous window counts once it holds samples
    assert [s.count for s in ks.sources] == sorted((s.count for s in ks.sources), reverse=True)


def test_a_flood_of_distinct_sources_stays_within_the_bound_and_the_heavy_client_shows() -> None:
    top = TopSources(per_key=16, max_keys=512)
    heavy = "203.0.113.7"
    for i in range(200_000):
        src = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1" if i % 10 else heavy  # 10% from one client
        top.add(SourceKey(6 if i % 10 else 4, "TCP", 30000 + i % 600, "enforce"), src, 5.0)
        top.add(K, src if i % 10 else heavy, 5.0)
    assert top.entries() <= 2 * 512 * 16
    report = top.report("n1", 5.0)
    assert report.unattributed > 0  # keys beyond 512 are counted, not kept
    (audit,) = [k for k in report.keys if k.key == K]
    assert audit.sources[0].source == heavy
    assert audit.sources[0].count - audit.sources[0].error <= 20_000 <= audit.sources[0].count


def test_windows_roll_over_and_expire() -> None:
    top = TopSources(window=600.0)
    top.add(K, "198.51.100.1", 600.0)
    top.add(K, "198.51.100.2", 1300.0)  # the next window: both reported
    r = top.report("n1", 1300.0)
    assert {s.source for s in r.keys[0].sources} == {"198.51.100.1", "198.51.100.2"}
    assert r.since == 600.0
    r = top.report("n1", 1800.0)  # two windows on: only the second source remains
    assert [s.source for s in r.keys[0].sources] == ["198.51.100.2"]
    assert top.report("n1", 3000.0).keys == ()  # long quiet: nothing
    assert top.entries() == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        TopSources(per_key=0)
