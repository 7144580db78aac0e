"""Publishes what this node has programmed, as one small Lease per node (format: contract/node_status.py).

Cheap by design: one write when something changed, never more often than `min_interval`
(5 s), and a heartbeat every `heartbeat` seconds (60 s) when nothing did; never per policy.
At 1,000 nodes that is at most 200 writes/s while policies change everywhere all the time,
about 17/s when they do not (docs/architecture.md). The digest of the verdicts is computed
only when a write is due.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from contract import field_managers
from contract.node_status import MAX_REFUSED, EnforcerPhase, NodeStatus, Refused, encode_lease
from contract.path_status import PathReport
from enforcer.plan import DesiredState
from enforcer.policies import RejectedAnnotation

logger = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 5.0  # the bound: below one write per node per 5 s
HEARTBEAT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Programmed:
    """What the sync loop has programmed (read under its lock, only when a write is due)."""

    ready: bool
    resource_version: str
    state: DesiredState
    rejected: tuple[RejectedAnnotation, ...]


def verdicts_digest(state: DesiredState) -> str:
    """Pure: a short digest of every (family, protocol, port) verdict and its mode (enforce or audit);
    equal nodes enforce equal verdicts."""
    # Packed addresses, not text (about 4x cheaper); only when a write is due. `make bench ONLY=node_status`.
    h = hashlib.sha256()
    for port in state.ports:
        key = port.key
        head = (key.family, key.protocol.encode(), key.port, port.mode.encode(), len(port.allowed))
        h.update(b"%d|%b|%d|%b|%d:" % head)
        for net in port.allowed:
            h.update(net.network_address.packed + bytes((net.prefixlen,)))
    return "sha256:" + h.hexdigest()[:32]


def node_status(node: str, phase: EnforcerPhase, programmed: Programmed | None, at: datetime.datetime) -> NodeStatus:
    """Pure: the status document for `programmed` (None: nothing synced yet)."""
    if programmed is None:
        return NodeStatus(node, phase, "", None, "", 0, (), 0)
    refused = tuple(Refused(r.namespace, r.name, r.resource_version) for r in programmed.rejected)
    return NodeStatus(
        node=node,
        phase=phase,
        resource_version=programmed.resource_version,
        programmed_at=at,
        digest=verdicts_digest(programmed.state),
        protected_nodeports=len(programmed.state.ports),
        refused=refused[:MAX_REFUSED],
        refused_total=len(refused),
    )


def _content(status: NodeStatus) -> tuple[object, ...]:
    """What a reader cares about (time excluded): a change of it is worth a write."""
    return (status.phase, status.resource_version, status.digest, status.refused, status.refused_total,
            status.path.content())


class StatusPublisher:
    """Writes this node's Lease when its content changed (at most every `min_interval`) or the heartbeat is due.

    `generation` changes when a sync succeeded or an event moved the resourceVersion (read without a lock); `read`
    returns what is programmed (called only when the generation moved and a write may be due).
    """

    def __init__(
        self,
        node: str,
        namespace: str,
        write: Callable[[dict[str, object]], None],
        generation: Callable[[], object],
        read: Callable[[], Programmed | None],
        min_interval: float = MIN_INTERVAL_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        path: Callable[[], PathReport] = PathReport,
    ) -> None:
        """`path` returns the node's findings and canary probes (cheap; read every tick): a changed outcome
        is worth a write, a probe's newer time is not (each write, the heartbeat too, carries the latest)."""
        self.node, self.namespace = node, namespace
        self._write, self._generation, self._read = write, generation, read
        self.min_interval, self.heartbeat = min_interval, heartbeat
        self._clock, self._wall, self._path = clock, wall, path
        self._seen_generation: object = None
        self._published: NodeStatus | None = None
        self._pending: NodeStatus | None = None
        self._last_write = float("-inf")
        self.writes = 0

    @property
    def lease_seconds(self) -> int:
        """The heartbeat is lost after three missed beats (as a node Lease after 40 s of 10 s renewals)."""
        return int(self.heartbeat * 3)

    def tick(self, stopping: bool = False) -> bool:
        """One decision: write now or not. Returns whether it wrote."""
        now = self._clock()
        generation = self._generation()
        path = self._path()
        base = self._pending or self._published
        if base is not None and path.content() != base.path.content():
            self._pending = dataclasses.replace(base, path=path)
        if generation != self._seen_generation or stopping:
            programmed = self._read()
            self._seen_generation = generation
            phase: EnforcerPhase = (
                "stopped" if stopping else ("ready" if programmed and programmed.ready else "starting")
            )
            fresh = dataclasses.replace(node_status(self.node, phase, programmed, self._wall()), path=path)
            base = self._pending or self._published
            if base is None or _content(fresh) != _content(base):
                self._pending = fresh
        due = now - self._last_write >= self.min_interval
        heartbeat = now - self._last_write >= self.heartbeat
        if not (stopping or (self._pending is not None and due) or heartbeat):
            return False
        status = self._pending or self._published or node_status(self.node, "starting", None, self._wall())
        if self._pending is None and self._published is not None:  # heartbeat: keep programmed_at as it was
            status = self._published
        status = dataclasses.replace(status, path=path)  # the probes' latest times
        self._write(encode_lease(status, self.namespace, self._wall(), self.lease_seconds))
        self._last_write = now
        self._published, self._pending = status, None
        self.writes += 1
        return True

    def run(self, stop: threading.Event, period: float = 0.5) -> None:
        while not stop.wait(period):
            try:
                self.tick()
            except Exception as exc:  # status is best effort: enforcement goes on, the next tick retries
                logger.warning("could not publish the node status", extra={"node": self.node, "error": str(exc)[:300]})
                self._last_write = self._clock()  # retry after min_interval, not every tick
        try:
            self.tick(stopping=True)  # rules stay in place; readers see "stopped", not a lost heartbeat
        except Exception as exc:
            logger.warning("could not publish the stopped status", extra={"node": self.node, "error": str(exc)[:300]})

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="node-status", daemon=True)
        thread.start()
        return thread


def lease_writer(api_client: object, namespace: str, name: str) -> Callable[[dict[str, object]], None]:
    """One request per write: a merge patch of our Lease, or its create the first time (I/O)."""
    from kubernetes import client

    api = client.CoordinationV1Api(api_client)

    def write(body: dict[str, object]) -> None:
        try:
            api.patch_namespaced_lease(name, namespace, body, field_manager=field_managers.ENFORCER)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            api.create_namespaced_lease(namespace, body, field_manager=field_managers.ENFORCER)  # type: ignore[arg-type]  # a dict is sent as is

    return write
