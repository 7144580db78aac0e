"""The enforcer's sync path follows what changed: store change tracking, verification of changes only,
and SyncLoop's fast path equal to the full recompute after any sequence of events, relists and key
changes (with a recording dataplane; the real one is tested in tests/dataplane/test_sync_loop.py)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import enforcer.policies
from contract.annotation import Annotation, CidrRule, NodePortVerdict, PolicyRef, SourceSet, render_annotations
from contract.signing import Signer, VerifierKeys
from enforcer.backend import RunResult
from enforcer.dataplane import Dataplane, SyncReport
from enforcer.incremental import PortChange
from enforcer.loop import SyncLoop
from enforcer.plan import DesiredState, PortKey, ProtectedPort, plan_desired_state
from enforcer.policies import Changes, PolicyStore, SigningKeys, StoredPolicy, VerificationCache, verify_policy

OLD, NEW = (Signer.from_seed(bytes([n]) * 32) for n in (11, 12))


def trust(*signers: Signer) -> VerifierKeys:
    """The verifier keys trusting these signers' public keys, in this order."""
    return VerifierKeys(tuple(k for s in signers for k in s.verifier().public_keys))

RANGE = (30000, 30005)
CIDRS = ["198.51.100.0/24", "198.51.100.0/25", "203.0.113.7/32", "2001:db8::/32"]
NAMES = ["p0", "p1", "p2", "p3", "p4"]


def stored(name: str, ports: list[tuple[int, int]], key: Signer = OLD, rv: str = "1") -> StoredPolicy:
    """A policy of namespace "ns" with a signed annotation: (nodePort, index in CIDRS) per entry."""
    unique = dict(ports)
    entries = tuple(
        NodePortVerdict(
            port, "TCP", "web", 80, ("IPv4", "IPv6"), SourceSet(False, (CidrRule(CIDRS[c]),))
        ).entry()
        for port, c in sorted(unique.items())
    )
    uid = f"uid-{name}"
    annotations = render_annotations(Annotation(PolicyRef("ns", name, uid), entries), key)
    return StoredPolicy("ns", name, uid, rv, tuple(sorted(annotations.items())))


def report() -> SyncReport:
    return SyncReport("legacy", 0, 0, 0, 0, 0, 0, 0, False, False, 0, 0.0)


# --- PolicyStore ---------------------------------------------------------------------------------


def test_store_records_only_real_changes() -> None:
    store = PolicyStore()
    a, b = stored("a", [(30000, 0)]), stored("b", [(30001, 1)])
    store.replace("networkpolicies", [a, b], "1")
    first = store.take_changes()
    assert first.relisted and set(first.policies) == {("ns", "a"), ("ns", "b")}
    assert store.take_changes().policies == {} and not store.take_changes().relisted

    store.changed.clear()
    store.apply("networkpolicies", "MODIFIED", StoredPolicy("ns", "a", a.uid, "2", a.annotations))  # spec only
    store.apply("networkpolicies", "DELETED", stored("zzz", []))  # never known
    assert not store.changed.is_set() and store.take_changes().policies == {}

    a2 = stored("a", [(30000, 2)], rv="3")
    store.apply("networkpolicies", "MODIFIED", a2)
    store.apply("networkpolicies", "DELETED", b)
    assert store.changed.is_set()
    assert store.take_changes().policies == {("ns", "a"): a2, ("ns", "b"): None}


def test_relist_is_diffed_against_what_is_known() -> None:
    store = PolicyStore()
    a, b, c = stored("a", [(30000, 0)]), stored("b", [(30001, 1)]), stored("c", [(30002, 0)])
    store.replace("networkpolicies", [a, b], "1")
    store.take_changes()
    # After a 410: b changed only its resourceVersion, a was deleted, c created while we were away.
    store.replace("networkpolicies", [StoredPolicy("ns", "b", b.uid, "9", b.annotations), c], "10")
    changes = store.take_changes()
    assert changes.relisted and changes.policies == {("ns", "a"): None, ("ns", "c"): c}
    assert len(store) == 2


# --- VerificationCache.verify_changes ------------------------------------------------------------


def test_verify_changes_verifies_only_changes_and_defers_key_changes() -> None:
    cache = VerificationCache()
    a, b = stored("a", [(30000, 0)]), stored("b", [(30001, 1)], key=NEW)
    assert cache.verify_changes({("ns", "a"): a}, trust(OLD)) is None  # nothing verified yet: full path first
    good, rejected = cache.verify([a, b], trust(OLD))
    assert list(good) == [("ns", "a")] and [r.name for r in rejected] == ["b"]
    assert cache.rejected is rejected

    # Unchanged fingerprints are left out; a deletion contributes nothing.
    assert cache.verify_changes({("ns", "a"): a}, trust(OLD)) == {}
    assert cache.verify_changes({("ns", "b"): None}, trust(OLD)) == {("ns", "b"): None}
    assert [r.name for r in cache.rejected] == []
    forged = stored("a", [(30000, 0)], key=NEW)
    assert cache.verify_changes({("ns", "a"): forged}, trust(OLD)) == {("ns", "a"): None}
    assert [r.name for r in cache.rejected] == ["a"]
    # A key change cannot be handled from the changes alone.
    assert cache.verify_changes({}, trust(NEW, OLD)) is None


# --- SyncLoop: fast path == full recompute -------------------------------------------------------


@dataclass
class RecordingDataplane:
    """Holds the ports it was told to program; `refuse_fast` makes sync_ports ask for a full sync."""

    ports: dict[PortKey, ProtectedPort] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    refuse_fast: bool = False

    def sync(self, state: Any, full_readback: bool = False) -> SyncReport:
        self.calls.append("full+readback" if full_readback else "full")
        self.ports = {p.key: p for p in state.ports}
        return report()

    def sync_ports(self, changes: Mapping[PortKey, PortChange]) -> SyncReport | None:
        self.calls.append("fast")
        if self.refuse_fast:
            return None
        for key, (before, after) in changes.items():
            assert self.ports.get(key) == before, f"{key}: the planner's 'before' is not what was programmed"
            if after is None:
                del self.ports[key]
            else:
                self.ports[key] = after
        return report()


ports_lists = st.lists(st.tuples(st.integers(29999, 30006), st.integers(0, len(CIDRS) - 1)), max_size=3)
ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(NAMES), ports_lists, st.sampled_from([OLD, NEW])),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("spec"), st.sampled_from(NAMES)),
    st.tuples(st.just("relist"), st.lists(st.tuples(st.sampled_from(NAMES), ports_lists), max_size=3)),
    st.tuples(st.just("keys"), st.sampled_from([trust(OLD), trust(NEW), trust(NEW, OLD)])),
    st.tuples(st.just("sync"), st.booleans(), st.booleans()),
)


@dataclass
class Counter:
    calls: int = 0


@settings(max_examples=200, deadline=None)
@given(sequence=st.lists(ops, min_size=1, max_size=25))
def test_fast_path_equals_full_plan_after_any_sequence(sequence: list[tuple[Any, ...]]) -> None:
    verified = Counter()

    def counting(p: StoredPolicy, keys: SigningKeys) -> object:
        verified.calls += 1
        return verify_policy(p, keys)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enforcer.policies, "verify_policy", counting)
        _run_sequence(sequence, verified)


def _run_sequence(sequence: list[tuple[Any, ...]], verified: Counter) -> None:
    store = PolicyStore()
    model: dict[str, StoredPolicy] = {}
    keys: list[SigningKeys] = [trust(OLD)]
    dp = RecordingDataplane()
    loop = SyncLoop(store, cast(Dataplane, dp), lambda: keys[0], RANGE, threading.Event())
    store.replace("networkpolicies", [], "1")
    touched: set[str] = set()
    keys_changed = relisted = True
    for op in [*sequence, ("sync", False, False)]:
        if op[0] == "put":
            model[op[1]] = stored(op[1], op[2], op[3])
            store.apply("networkpolicies", "MODIFIED", model[op[1]])
            touched.add(op[1])
        elif op[0] == "delete" and op[1] in model:
            store.apply("networkpolicies", "DELETED", model.pop(op[1]))
            touched.add(op[1])
        elif op[0] == "spec" and op[1] in model:
            p = model[op[1]]
            model[op[1]] = StoredPolicy(p.namespace, p.name, p.uid, p.resource_version + "x", p.annotations)
            store.apply("networkpolicies", "MODIFIED", model[op[1]])
        elif op[0] == "relist":
            for name, ports in op[1]:
                model[name] = stored(name, ports)
            store.replace("networkpolicies", list(model.values()), "2")
            relisted = True
        elif op[0] == "keys":
            keys_changed = keys_changed or keys[0] != op[1]
            keys[0] = op[1]
        elif op[0] == "sync":
            full_readback, refuse = op[1], op[2]
            dp.refuse_fast, dp.calls, verified.calls = refuse, [], 0
            loop.sync_once(full_readback=full_readback)
            expected = plan_desired_state(
                [a for p in model.values() if isinstance(a := verify_policy(p, keys[0]), Annotation)], RANGE
            )
            assert {k: p.allowed for k, p in dp.ports.items()} == expected.state.as_dict()
            assert loop.rejected_entries == expected.rejected
            if not (full_readback or relisted or keys_changed):
                # O(changed): only the policies changed since the last sync were verified.
                assert verified.calls <= len(touched)
                assert dp.calls in (["fast"], ["fast", "full"])
            touched, keys_changed, relisted = set(), False, False


def test_a_failed_sync_is_followed_by_a_full_one() -> None:
    """Changes taken by a sync that fails (here: the key source) are not lost: the next sync recomputes all."""
    store = PolicyStore()
    dp = RecordingDataplane()
    failing = [False]

    def keys() -> SigningKeys:
        if failing[0]:
            raise RuntimeError("key source unavailable")
        return trust(OLD)

    loop = SyncLoop(store, cast(Dataplane, dp), keys, RANGE, threading.Event())
    store.replace("networkpolicies", [stored("a", [(30000, 0)])], "1")
    loop.sync_once()
    store.apply("networkpolicies", "ADDED", stored("b", [(30001, 1)]))
    failing[0] = True
    with pytest.raises(RuntimeError):
        loop.sync_once()
    failing[0] = False
    dp.calls.clear()
    loop.sync_once()
    assert dp.calls == ["full"] and sorted({k.port for k in dp.ports}) == [30000, 30001]


def test_an_unknown_key_id_on_the_fast_path_re_reads_the_keys() -> None:
    """A changed policy signed by a key this node does not trust yet (a rotation in progress) makes
    the loop re-read the keys at once and verify again with them, as the full path does."""
    store = PolicyStore()
    dp = RecordingDataplane()
    trusted = [trust(OLD)]
    refreshes: list[int] = []

    def refresh() -> SigningKeys:
        refreshes.append(1)
        trusted[0] = trust(NEW, OLD)
        return trusted[0]

    loop = SyncLoop(store, cast(Dataplane, dp), lambda: trusted[0], RANGE, threading.Event(), refresh_keys=refresh)
    store.replace("networkpolicies", [stored("a", [(30000, 0)])], "1")
    loop.sync_once()
    assert refreshes == []
    store.apply("networkpolicies", "ADDED", stored("b", [(30001, 1)], key=NEW))
    dp.calls.clear()
    loop.sync_once()
    assert refreshes == [1] and dp.calls == ["full"]
    assert sorted({k.port for k in dp.ports}) == [30000, 30001]
    store.apply("networkpolicies", "MODIFIED", stored("b", [(30002, 1)], key=NEW))
    dp.calls.clear()
    loop.sync_once()  # the new key is trusted now: back on the fast path, no refresh
    assert refreshes == [1] and dp.calls == ["fast"]


def test_events_never_postpone_the_periodic_full_resync() -> None:
    """Under constant churn the loop still runs its full read-back resync every period."""
    store = PolicyStore()
    dp = RecordingDataplane()
    stop = threading.Event()
    keys = trust(OLD)
    loop = SyncLoop(store, cast(Dataplane, dp), lambda: keys, RANGE, stop, resync_seconds=0.2, debounce_seconds=0.01)
    store.replace("networkpolicies", [], "1")
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        for i in range(150):  # an event every ~10 ms for >= 1.5 s: shorter than any resync period
            store.apply("networkpolicies", "MODIFIED", stored("a", [(30000 + i % 5, i % 2)]))
            stop.wait(0.01)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert dp.calls[0] == "full+readback"  # the first sync after the initial list is a full one
    assert dp.calls.count("fast") >= 10  # the events went through the fast path
    assert dp.calls.count("full+readback") >= 3  # and the periodic resync still ran


# --- Dataplane.sync_ports with a scripted runner ---------------------------------------------------


@dataclass
class ScriptedRunner:
    """Answers every command with success and empty output, except `ipset restore` when told to fail."""

    fail_restore: bool = False
    commands: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)

    def __call__(self, argv: Any, stdin: str | None = None) -> RunResult:
        self.commands.append((tuple(argv), stdin))
        failed = self.fail_restore and tuple(argv[:2]) == ("ipset", "restore")
        return RunResult(tuple(argv), 1 if failed else 0, "", "boom" if failed else "")


def _port(port: int, *cidrs: str) -> ProtectedPort:
    return ProtectedPort(PortKey(4, "TCP", port), tuple(ipaddress.ip_network(c) for c in cidrs))


def test_sync_ports_writes_only_the_changed_members_and_hands_over_after_a_failure() -> None:
    runner = ScriptedRunner()
    dp = Dataplane("nft", RANGE, runner=runner)
    first, second = _port(30001, "198.51.100.0/24"), _port(30002)
    assert dp.sync_ports({first.key: (None, first)}) is None  # nothing programmed yet: full sync first
    dp.sync(DesiredState((first, second)))

    runner.commands.clear()
    changed = _port(30002, "203.0.113.7/32")
    report = dp.sync_ports({changed.key: (second, changed)})
    assert report is not None and (report.members_added, report.members_removed) == (1, 0)
    assert runner.commands == [(("ipset", "restore", "-exist"), "add npg-4-allow 203.0.113.7,tcp:30002\n")]

    runner.commands.clear()
    assert dp.sync_ports({}) is not None and runner.commands == []  # nothing changed: no process at all

    runner.fail_restore = True
    assert dp.sync_ports({changed.key: (changed, second)}) is None  # the caller then runs a full sync
    runner.fail_restore = False
    assert dp.sync_ports({changed.key: (changed, second)}) is None  # our record is gone until a full sync


def test_store_tracks_the_resource_version_programmed_with_the_changes() -> None:
    """Node status: every event up to Changes.resource_version is in the changes taken so far;
    with nothing left to take, events that changed nothing to program still move it."""
    store = PolicyStore()
    a = stored("a", [(30000, 0)])
    store.replace("networkpolicies", [a], "10")
    assert store.idle_resource_version() is None  # the list waits to be programmed
    assert store.take_changes().resource_version == "10"
    assert store.idle_resource_version() == "10"
    store.apply("networkpolicies", "MODIFIED", StoredPolicy("ns", "a", a.uid, "11", a.annotations))  # spec only
    assert store.idle_resource_version() == "11"
    a2 = stored("a", [(30000, 2)], rv="12")
    store.apply("networkpolicies", "MODIFIED", a2)
    assert store.idle_resource_version() is None and store.resource_version == "12"
    assert store.take_changes().resource_version == "12"
    store.apply("networkpolicies", "DELETED", stored("a", [(30000, 2)], rv="13"))
    assert store.take_changes() == Changes({("ns", "a"): None}, False, "13")


def test_loop_reports_what_it_programmed_only_after_a_successful_sync() -> None:
    store, dp = PolicyStore(), RecordingDataplane()
    failing = [False]

    def keys() -> SigningKeys:
        if failing[0]:
            raise RuntimeError("key source unavailable")
        return trust(OLD)

    loop = SyncLoop(store, cast(Dataplane, dp), keys, RANGE, threading.Event())
    assert loop.programmed() is None
    store.replace("networkpolicies", [stored("a", [(30000, 0)])], "5")
    loop.sync_once()
    first = loop.programmed()
    assert first is not None and first.resource_version == "5" and len(first.state.ports) == 2
    store.apply("networkpolicies", "ADDED", stored("b", [(30001, 1)], rv="6"))
    assert loop.programmed().resource_version == "5"  # type: ignore[union-attr]  # taken, not programmed
    failing[0] = True
    with pytest.raises(RuntimeError):
        loop.sync_once()
    assert loop.programmed().resource_version == "5"  # type: ignore[union-attr]  # the failed sync proves nothing
    failing[0] = False
    loop.sync_once()
    after = loop.programmed()
    assert after is not None and after.resource_version == "6" and len(after.state.ports) == 4
