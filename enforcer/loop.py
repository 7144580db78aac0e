"""The enforcer's sync loop: debounce policy changes, plan, sync the dataplane, resync on a timer (I/O).

Nothing is written before the initial list of NetworkPolicies has been processed, so a
restart never removes rules for policies it has not seen yet. SIGTERM leaves rules in place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from enforcer.dataplane import Dataplane, SyncReport
from enforcer.incremental import IncrementalPlanner
from enforcer.policies import PolicyStore, RejectedAnnotation, SigningKeys, VerificationCache

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
            "Duration of a full plan + dataplane sync",
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
    _reported: set[tuple[str, str, str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._verification = VerificationCache()
        self._planner = IncrementalPlanner(self.nodeport_range)

    def sync_once(self, full_readback: bool = False) -> SyncReport:
        """Verify and plan what changed, then bring the dataplane to the whole plan.

        `full_readback` re-reads every set member instead of trusting our last write: the periodic
        resync does, so a member edited by hand (same count) is repaired within one period.
        """
        started = time.perf_counter()
        snapshot, keys = self.store.snapshot(), self.signing_keys()
        annotations, rejected = self._verification.verify(snapshot, keys)
        if self.refresh_keys is not None and any(r.unknown_key_id for r in rejected):
            fresh = self.refresh_keys()
            if fresh != keys:
                annotations, rejected = self._verification.verify(snapshot, fresh)
        plan = self._planner.plan(annotations)
        report = self.dataplane.sync(plan.state, full_readback=full_readback)
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        self.metrics.protected_ports.set(len(plan.state.ports))
        self.metrics.rejected_annotations.set(len(rejected))
        self.metrics.rejected_entries.set(len(plan.rejected))
        if report.drift_repaired:
            self.metrics.drift_repairs.inc()
            logger.warning("repaired drift in our chains or sets", extra={"report": str(report)})
        self._report_rejections(rejected, [f"{r.namespace}/{r.name}: {r.reason}" for r in plan.rejected])
        return report

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
        next_resync = 0.0
        while not self.stop.is_set():
            timeout = max(0.0, next_resync - time.monotonic())
            changed = self.store.changed.wait(timeout)
            if self.stop.is_set():
                break
            if changed:
                self.stop.wait(self.debounce_seconds)  # coalesce a burst of events into one sync
            self.store.changed.clear()
            try:
                self.sync_once(full_readback=not changed)
                self.ready.set()
                next_resync = time.monotonic() + self.resync_seconds
            except Exception as exc:
                self.metrics.sync_errors.inc()
                logger.exception("sync failed; retrying", extra={"error": str(exc)[:300]})
                next_resync = time.monotonic() + min(5.0, self.resync_seconds)
