"""The Normal Event `InForce` on a policy, once, when it is first in force on every node (I/O).

Run by the reconciler's leader. It watches the Nodes and the enforcers' status Leases
(contract/node_status.py); the watermark is the resourceVersion every node has programmed. When
it moves from W to W', each annotated policy whose resourceVersion is in (W, W'] and that no node
refuses gets its Event. W is kept in Lease `nodeport-guard-in-force`, so a restart or a new leader
neither repeats nor skips announcements; the Event's name is derived from the policy version, so a
crash between the Event and the marker write repeats nothing either (the create answers 409).
On the very first run the marker starts at the current watermark: policies already in force at
installation are not announced.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from contract import field_managers
from contract.node_status import (
    STATUS_LABEL,
    NodeStatus,
    PolicyVersion,
    decode_lease,
    in_force_watermark,
    newly_in_force,
    resource_version_number,
)
from kube.listwatch import EventType, ListWatch, Obj, ObjectSink

logger = logging.getLogger(__name__)

MARKER_LEASE = "nodeport-guard-in-force"
KEY_WATERMARK = "nodeport-guard.io/in-force-watermark"
PERIOD_SECONDS = 2.0


class _Named(ObjectSink[Obj]):
    """Objects by name (cluster-scoped Nodes, or the Leases of one namespace)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, Obj] = {}
        self.version = 0

    def replace(self, kind: str, objects: list[Obj], resource_version: str) -> None:
        with self._lock:
            self.objects = {o["metadata"]["name"]: o for o in objects}
            self.version += 1

    def apply(self, kind: str, event: EventType, obj: Obj) -> None:
        with self._lock:
            if event == "DELETED":
                self.objects.pop(obj["metadata"]["name"], None)
            else:
                self.objects[obj["metadata"]["name"]] = obj
            self.version += 1

    def values(self) -> list[Obj]:
        with self._lock:
            return list(self.objects.values())


def _node_name_only(obj: Obj) -> Obj:
    return {"metadata": {"name": obj["metadata"]["name"]}}


class InForceAnnouncer:
    def __init__(
        self,
        api_client: Any,
        namespace: str,
        policies: Callable[[], Iterable[tuple[PolicyVersion, str, bool]]],
        is_leader: Callable[[], bool],
        stop: threading.Event,
        period: float = PERIOD_SECONDS,
    ) -> None:
        """`policies` yields each policy's version, uid and whether it carries our annotation (the webhook's cache)."""
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._leases_api = client.CoordinationV1Api(api_client)
        self._namespace, self._policies, self._is_leader = namespace, policies, is_leader
        self._stop, self._period = stop, period
        self._nodes, self._leases = _Named(), _Named()
        self._watches = [
            ListWatch("nodes", self._core.list_node, self._nodes, stop, _node_name_only),
            ListWatch(
                "leases",
                functools.partial(
                    self._leases_api.list_namespaced_lease, namespace, label_selector=f"{STATUS_LABEL}=true"
                ),
                self._leases,
                stop,
            ),
        ]
        self._seen: tuple[int, int] = (-1, -1)
        self.announced = 0

    def _statuses(self) -> dict[str, NodeStatus]:
        out = {}
        for lease in self._leases.values():
            status = decode_lease(lease)
            if status is not None:
                out[status.node] = status
        return out

    def _marker(self) -> int | None:
        from kubernetes import client

        try:
            lease = self._leases_api.read_namespaced_lease(MARKER_LEASE, self._namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        meta = lease.metadata
        text = ((meta.annotations if meta is not None else None) or {}).get(KEY_WATERMARK, "")
        return int(text) if text.isdigit() else None

    def _write_marker(self, watermark: int, exists: bool) -> None:
        body: Any = {
            "metadata": {"name": MARKER_LEASE, "annotations": {KEY_WATERMARK: str(watermark)}},
            "spec": {"holderIdentity": "nodeport-guard-webhook"},
        }
        if exists:
            self._leases_api.patch_namespaced_lease(
                MARKER_LEASE, self._namespace, body, field_manager=field_managers.RECONCILER
            )
        else:
            self._leases_api.create_namespaced_lease(self._namespace, body, field_manager=field_managers.RECONCILER)

    def _event(self, policy: PolicyVersion, uid: str, nodes: int) -> bool:
        """Create the Event; False when it exists already."""
        from kubernetes import client

        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{policy.name}.in-force.{policy.resource_version}"[:253]),
            involved_object=client.V1ObjectReference(
                api_version="networking.k8s.io/v1",
                kind="NetworkPolicy",
                name=policy.name,
                namespace=policy.namespace,
                uid=uid or None,
                resource_version=policy.resource_version,
            ),
            reason="InForce",
            message=(
                f"nodeport-guard: in force on all {nodes} nodes, each verified by the canary "
                f"(resourceVersion {policy.resource_version})"
            ),
            type="Normal",
            source=client.V1EventSource(component="nodeport-guard-webhook"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="nodeport-guard-webhook",
            reporting_instance="reconciler-leader",
        )
        try:
            self._core.create_namespaced_event(policy.namespace, event, field_manager=field_managers.RECONCILER)
        except client.ApiException as exc:
            if exc.status != 409:  # 409: announced already (before a restart or by the previous leader)
                raise
            return False
        return True

    def step(self) -> int:
        """One pass (leader only): announce what came into force since the marker. Returns the Event count."""
        seen = (self._nodes.version, self._leases.version)
        if seen == self._seen or not self.synced():
            return 0
        nodes = sorted(n["metadata"]["name"] for n in self._nodes.values())
        statuses = self._statuses()
        # None also while some node's filter is not verified in the packet's path (contract/path_status.py)
        upto = in_force_watermark(nodes, statuses, datetime.datetime.now(datetime.UTC))
        if upto is None:
            self._seen = seen
            return 0
        since = self._marker()
        if since is None:  # first run: start from now, do not announce every existing policy
            self._write_marker(upto, exists=False)
            self._seen = seen
            logger.info("in-force announcements start", extra={"watermark": upto})
            return 0
        count = 0
        if upto > since:
            uids, versions, cached_upto = {}, [], since
            for version, uid, annotated in self._policies():
                cached_upto = max(cached_upto, resource_version_number(version.resource_version) or 0)
                if annotated:
                    versions.append(version)
                    uids[(version.namespace, version.name)] = uid
            # The cache may lag behind the enforcers: never move past what it has seen, or a policy
            # version it has not received yet would be skipped for good.
            upto = min(upto, cached_upto)
            for p in newly_in_force(versions, nodes, statuses, since, upto):
                count += self._event(p, uids.get((p.namespace, p.name), ""), len(nodes))
            if upto > since:
                self._write_marker(upto, exists=True)
        self._seen = seen
        self.announced += count
        return count

    def watch(self) -> None:
        """Start the Node and status Lease watches (every replica keeps them; only the leader acts)."""
        for w in self._watches:
            w.start()

    def synced(self) -> bool:
        return all(w.synced.is_set() for w in self._watches)

    def run(self) -> None:
        self.watch()
        while not self._stop.wait(self._period):
            if not self._is_leader():
                self._seen = (-1, -1)  # a new leader re-reads the marker at once
                continue
            try:
                count = self.step()
                if count:
                    logger.info("announced policies in force on every node", extra={"events": count})
            except Exception as exc:  # best effort: the next pass retries from the marker
                self._seen = (-1, -1)
                logger.warning("in-force announcement failed", extra={"error": str(exc)[:300]})

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="in-force", daemon=True)
        thread.start()
        return thread


def cached_policies(cache: Any) -> Callable[[], Iterable[tuple[PolicyVersion, str, bool]]]:
    """The webhook cache's policies as (version, uid, carries our annotation)."""
    from contract.annotation import NODEPORTS_KEY

    def policies() -> Iterable[tuple[PolicyVersion, str, bool]]:
        for ns in cache.namespaces():
            for obj in cache.policies_in(ns):
                meta = obj.get("metadata") or {}
                version = PolicyVersion(ns, meta.get("name", ""), str(meta.get("resourceVersion", "")))
                yield version, str(meta.get("uid", "")), NODEPORTS_KEY in (meta.get("annotations") or {})

    return policies
