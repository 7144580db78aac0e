"""The enforcer's sync loop: debounce policy changes, plan, sync the dataplane, resync on a timer (I/O).

Nothing is written before the initial list of NetworkPolicies has been processed, so a
restart never removes rules for policies it has not seen yet. SIGTERM leaves rules in place.
Syncs after events cost O(changed policies); the first sync, relists, key changes and the
periodic resync recompute everything and read the dataplane back.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from enforcer.dataplane import Dataplane, SyncReport
from enforcer.door_tracker import DoorTracker
from enforcer.drops import DropCollector, DropReader
from enforcer.incremental import IncrementalPlanner
from enforcer.plan import DesiredState, RejectedEntry
from enforcer.policies import PolicyId, PolicyStore, RejectedAnnotation, SigningKeys, VerificationCache
from enforcer.status import Programmed

logger = logging.getLogger(__name__)


class EnforcerMetrics:
    """The enforcer's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.protected_ports = Gauge(
            "nodeport_guard_protected_nodeports",
            "Protected (NodePort, protocol, family) entries programmed",
            registry=registry,
        )
        self.sync_duration = Histogram(
            "nodeport_guard_sync_duration_seconds",
            "Duration of one sync (fast path after events, or full verify + plan + dataplane sync)",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.sync_errors = Counter("nodeport_guard_sync_errors", "Failed dataplane syncs", registry=registry)
        self.drift_repairs = Counter(
            "nodeport_guard_drift_repairs",
            "Syncs that found and repaired changes made by someone else",
            registry=registry,
        )
        self.rejected_annotations = Gauge(
            "nodeport_guard_rejected_annotations",
            "Policies whose annotation was refused (forged, stale, invalid)",
            registry=registry,
        )
        self.rejected_entries = Gauge(
            "nodeport_guard_rejected_entries",
            "Annotation entries refused by the plan (e.g. port outside the range)",
            registry=registry,
        )
        self.backend = Gauge("nodeport_guard_backend_info", "iptables backend in use", ["backend"], registry=registry)
        self.trusted_keys = Gauge(
            "nodeport_guard_trusted_signing_keys",
            "Ed25519 public keys (by key id) whose signatures this enforcer accepts",
            ["key_id"],
            registry=registry,
        )
        self.legacy_hmac = Gauge(
            "nodeport_guard_legacy_hmac_accepted",
            "1 while the HMAC upgrade transition is on (NPG_ACCEPT_LEGACY_HMAC=true), else 0",
            registry=registry,
        )

    def watch_drops(self, read: DropReader) -> None:
        """Expose nodeport_guard_dropped_packets_total, read from the kernel at each scrape."""
        self.registry.register(DropCollector(read))


@dataclass
class SyncLoop:
    store: PolicyStore
    dataplane: Dataplane
    signing_keys: Callable[[], SigningKeys]
    nodeport_range: tuple[int, int]
    stop: threading.Event
    metrics: EnforcerMetrics = field(default_factory=EnforcerMetrics)
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.1
    on_rejected: Callable[[RejectedAnnotation], None] | None = None
    # Re-read the trusted keys now (rate-limited by the source): called when a signature names a
    # key id not trusted yet, as in a rotation whose new key this node has not read yet.
    refresh_keys: Callable[[], SigningKeys] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    # When the first sync had to install our rules (canary probes before it prove nothing); None when it
    # found them in place (a pod restart leaves them).
    ready_since: datetime.datetime | None = None
    # The node's own addresses (canonical text): a door on one is never filtered (enforcer/doors.py).
    node_addresses: Callable[[], frozenset[str]] = frozenset
    _reported: set[tuple[str, str, str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._verification = VerificationCache()
        self._planner = IncrementalPlanner(self.nodeport_range)
        self._doors = DoorTracker()
        self._need_full = True  # the first sync, and the one after a failure, recompute everything
        self._shown: tuple[object, object] = ((), ())  # the rejection tuples last reported
        # Node status (enforcer/status.py): held during each sync, so a reader sees a whole one.
        self.lock = threading.Lock()
        self.generation = 0  # successful syncs so far
        self._programmed_rv = ""  # every watch event up to it is programmed

    @property
    def state(self) -> DesiredState:
        """What the last sync programmed (built on demand: O(ports + doors))."""
        return self._planner.state().with_doors(self._doors.plan.doors)

    @property
    def rejected_entries(self) -> tuple[RejectedEntry, ...]:
        """Annotation entries the plan refuses (e.g. a port outside the range), sorted."""
        return self._planner.rejected

    def _refreshed(self, keys: SigningKeys, among: Mapping[PolicyId, object] | None) -> SigningKeys:
        """The keys to verify with: re-read at once (`refresh_keys`) when a refused signature names a
        key id not trusted yet, among the given policies (None: among all), else `keys`."""
        if self.refresh_keys is None:
            return keys
        if among is None:
            unknown = any(r.unknown_key_id for r in self._verification.rejected)
        else:
            unknown = any((r := self._verification.rejection(pid)) and r.unknown_key_id for pid in among)
        return self.refresh_keys() if unknown else keys

    def sync_once(self, full_readback: bool = False) -> SyncReport:
        """Verify and plan what changed, then bring the dataplane to the plan.

        The fast path (after events) costs O(changed): only the policies changed since the last
        sync are verified and planned, and only the set members of the ports they name are
        written. The full path (the first sync, a relist, a key change, after a failure, and
        the periodic resync with `full_readback`) verifies and plans every policy (unchanged ones
        are cache hits) and diffs the whole state; `full_readback` re-reads every set member
        instead of trusting our last write, so a member edited by hand is repaired within one period.
        """
        started = time.perf_counter()
        changes = self.store.take_changes()
        try:  # any failure below loses these changes: the next sync is then a full one
            keys = self.signing_keys()
            report = None
            if not (full_readback or changes.relisted or self._need_full):
                verified = self._verification.verify_changes(changes.policies, keys)
                fresh = keys if verified is None else self._refreshed(keys, changes.policies)
                if fresh != keys:  # new keys were read: everything is re-verified below with them
                    verified, keys = None, fresh
                if verified is not None:  # None: the keys changed, everything is re-verified below
                    self._doors.update(changes.policies, keys)
                    doors_changed = self._doors.replan(self.node_addresses())
                    port_changes = self._planner.apply(verified)
                    # A door change is a full sync (its sets and the skeleton); NodePorts keep the fast path.
                    report = None if doors_changed else self.dataplane.sync_ports(port_changes)
                    if report is None:  # the dataplane needs a full sync (sets or skeleton change)
                        report = self.dataplane.sync(self.state)
            if report is None:
                snapshot = self.store.snapshot()
                annotations, _ = self._verification.verify(snapshot, keys)
                fresh = self._refreshed(keys, None)
                if fresh != keys:
                    annotations, _ = self._verification.verify(snapshot, fresh)
                self._planner.plan(annotations)
                self._doors.update_all(snapshot, keys)
                self._doors.replan(self.node_addresses())
                report = self.dataplane.sync(self.state, full_readback=full_readback)
        except Exception:
            self._need_full = True
            raise
        self._need_full = False
        self._programmed_rv = changes.resource_version or self._programmed_rv
        self.generation += 1
        rejected, plan_rejected = self._verification.rejected, self._planner.rejected
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        self.metrics.protected_ports.set(self._planner.port_count)
        self.metrics.rejected_annotations.set(len(rejected))
        self.metrics.rejected_entries.set(len(plan_rejected))
        if report.drift_repaired:
            self.metrics.drift_repairs.inc()
            logger.warning("repaired drift in our chains or sets", extra={"report": str(report)})
        if self._shown[0] is not rejected or self._shown[1] is not plan_rejected:
            self._shown = (rejected, plan_rejected)
            self._report_rejections(
                rejected, [f"{r.namespace}/{r.name}: {r.reason}" for r in plan_rejected] + list(self._doors.refused)
            )
        return report

    def programmed(self) -> Programmed | None:
        """What is programmed now, for the node status (None before the first successful sync).
        Builds the state (O(ports)): called only when a status write is due."""
        with self.lock:
            if self.generation == 0:  # ready (/readyz) follows the first successful sync
                return None
            rv = self._programmed_rv
            idle = None if self._need_full else self.store.idle_resource_version()
            return Programmed(True, idle or rv, self._planner.state(), self._verification.rejected)

    def request_repair(self) -> None:
        """The next sync is a full one (reads the skeleton back and repairs it): our jump was seen missing."""
        self._need_full = True
        self.store.changed.set()

    def ports_view(self) -> dict[tuple[int, str, int], tuple[int, str]] | None:
        """(family, protocol, port) -> (allowed prefixes, mode) of what is programmed; None before the first sync."""
        with self.lock:
            if self.generation == 0:
                return None
            state = self._planner.state()
        return {(p.key.family, p.key.protocol, p.key.port): (len(p.allowed), p.mode) for p in state.ports}

    def _report_rejections(self, rejected: tuple[RejectedAnnotation, ...], plan_rejections: list[str]) -> None:
        current = set()
        for r in rejected:
            key = (r.namespace, r.name, r.resource_version, r.reason)
            current.add(key)
            if key in self._reported:
                continue
            logger.warning(
                "annotation rejected; policy contributes nothing",
                extra={"namespace": r.namespace, "policy": r.name, "reason": r.reason},
            )
            if self.on_rejected:
                try:
                    self.on_rejected(r)
                except Exception as exc:  # an Event is best effort; enforcement goes on
                    logger.warning("could not record event", extra={"policy": r.name, "error": str(exc)[:200]})
        for text in plan_rejections:
            key = ("", "", "", text)
            current.add(key)
            if key not in self._reported:
                logger.warning("annotation entry refused", extra={"reason": text})
        self._reported = current

    def run(self) -> None:
        logger.info("waiting for the initial list of NetworkPolicies before touching the dataplane")
        while not self.store.synced.wait(0.5):
            if self.stop.is_set():
                return
        next_resync = 0.0  # the first sync is a full one
        while not self.stop.is_set():
            timeout = max(0.0, next_resync - time.monotonic())
            changed = self.store.changed.wait(timeout)
            if self.stop.is_set():
                break
            # Event-driven syncs never postpone the periodic full one: under constant churn,
            # drift is still repaired within one period.
            due = time.monotonic() >= next_resync
            if changed and not due:
                self.stop.wait(self.debounce_seconds)  # coalesce a burst of events into one sync
            self.store.changed.clear()
            try:
                with self.lock:
                    report = self.sync_once(full_readback=due)
                if not self.ready.is_set() and (report.rules_added or report.sets_created):
                    # Our rules were not in place (a first install, a reboot): canary probes made before
                    # now prove nothing. After a pod restart that found them intact, earlier probes still hold.
                    self.ready_since = datetime.datetime.now(datetime.UTC)
                self.ready.set()
                if due:
                    next_resync = time.monotonic() + self.resync_seconds
            except Exception as exc:
                self.metrics.sync_errors.inc()
                logger.exception("sync failed; retrying", extra={"error": str(exc)[:300]})
                next_resync = time.monotonic() + min(5.0, self.resync_seconds)
