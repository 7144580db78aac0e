"""Keeps policy annotations true after admission: re-resolves what changed and patches (I/O).

A policy's annotation is its own part only (contract v2), so it changes when its own spec,
uid, or the Services and pods it selects change, never when another policy does. The
reconciler watches the cache's change notifications, debounces them, recomputes the changed
policy (a policy event) or the policies of a namespace (a Service or Pod event; Services and
pods are grouped once per pass, and a policy whose object and grouped Services are unchanged
reuses its last result, `AnnotationMemo`), and patches only the policies whose stored
annotations differ. Its own writes are recorded in the cache from the PATCH response, so their
watch echoes cause no further pass, and they skip our webhooks (the configurations'
`matchConditions`). The periodic resync goes one namespace at a time, pending changes first,
so a change never waits for a pass over the whole cluster. With several replicas one leader
does it (a Lease).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from contract import field_managers
from contract.annotation import owned_keys
from contract.signing import Signer
from kube.listwatch import Obj
from webhook.admission import AnnotationMemo, resolve_all_annotations
from webhook.cache import ClusterCache, trim_policy
from webhook.contribution import ServiceEndpoints, namespace_endpoints
from webhook.semantics import PolicyMemo

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.1
# Patches of one pass in flight at once. A Service change rewrites every policy selecting its pods
# (1,000 in a namespace of 1,000 policies), each write a round trip through the apiserver. They
# skip our webhooks (matchConditions), so they take no gunicorn thread from users' admissions; the
# apiserver and etcd are then the limit (bench/RESULTS.md, scale-reconciler).
PATCH_WORKERS = 8
# Policies planned at a time: a chunk's patches are written while the next chunk is computed.
PLAN_CHUNK = 50


@dataclass(frozen=True, slots=True)
class AnnotationPatch:
    namespace: str
    name: str
    # Merge-patch values: a string sets, None removes.
    annotations: dict[str, str | None]
    # The stored object's resourceVersion the patch was planned against ("" unknown): the PATCH
    # response replaces the cached object only if nothing newer arrived meanwhile.
    resource_version: str = ""


def plan_patches(
    namespace: str,
    cache: ClusterCache,
    signing_key: Signer,
    memo: PolicyMemo | None = None,
    names: Collection[str] | None = None,
    annotations: AnnotationMemo | None = None,
    endpoints: tuple[ServiceEndpoints, ...] | None = None,
) -> list[AnnotationPatch]:
    """Pure given a cache snapshot: the patches that make stored annotations (of every policy of
    the namespace, or only `names`) match what the policies contribute now. `annotations` is the
    reconciler's memo of desired annotations (same results, cheaper passes); `endpoints` the
    namespace's Services already grouped."""
    desired_by_policy = resolve_all_annotations(namespace, cache, signing_key, memo, names, annotations, endpoints)
    patches = []
    for name, desired in sorted(desired_by_policy.items()):
        stored_policy = cache.policy(namespace, name)
        if stored_policy is None:
            continue
        stored = stored_policy["metadata"].get("annotations") or {}
        want = desired or {}
        change: dict[str, str | None] = {}
        for key in sorted(set(owned_keys(stored)) | set(want)):
            if stored.get(key) != want.get(key):
                change[key] = want.get(key)
        if change:
            version = str(stored_policy["metadata"].get("resourceVersion", ""))
            patches.append(AnnotationPatch(namespace, name, change, version))
    return patches


def iter_patches(
    namespace: str,
    cache: ClusterCache,
    signing_key: Signer,
    memo: PolicyMemo | None = None,
    names: Collection[str] | None = None,
    annotations: AnnotationMemo | None = None,
    chunk: int = PLAN_CHUNK,
) -> Iterator[AnnotationPatch]:
    """`plan_patches`, `chunk` policies at a time (in name order): the first patches can be written
    while the others are still being computed (a Service change at 1,000 policies rewrites all).
    The Services are grouped once per pass: a Service or Pod event during the pass marks the
    namespace again, and the next pass (memoized: lookups for what did not change) catches up."""
    endpoints = namespace_endpoints(namespace, cache)
    if names is None:
        wanted = sorted(str(o["metadata"].get("name", "")) for o in cache.policies_in(namespace))
        if annotations is not None:
            annotations.keep_only(namespace, set(wanted))
    else:
        wanted = sorted(names)
    for start in range(0, len(wanted), chunk):
        yield from plan_patches(
            namespace, cache, signing_key, memo, wanted[start : start + chunk], annotations, endpoints
        )


class LeaseElector:
    """Minimal coordination.k8s.io/v1 Lease leader election (optimistic concurrency on update)."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        identity: str,
        name: str = "nodeport-guard-reconciler",
        duration_seconds: int = 15,
    ) -> None:
        from kubernetes import client

        self._api = client.CoordinationV1Api(api_client)
        self._client = client
        self.namespace, self.identity, self.name, self.duration = namespace, identity, name, duration_seconds

    def try_acquire(self) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        client = self._client
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.duration,
                    acquire_time=now,
                    renew_time=now,
                ),
            )
            try:
                self._api.create_namespaced_lease(self.namespace, body, field_manager=field_managers.RECONCILER)
                return True
            except client.ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = spec
        renew = spec.renew_time or spec.acquire_time
        expired = (
            renew is None or renew + datetime.timedelta(seconds=spec.lease_duration_seconds or self.duration) < now
        )
        if spec.holder_identity != self.identity and not expired:
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = self.duration
        try:
            self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, field_manager=field_managers.RECONCILER
            )
            return True
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise


    def release(self) -> bool:
        """Give the Lease up when we hold it (on shutdown), so another replica takes over at its next
        try instead of after the lease duration. True when released."""
        client = self._client
        lease = self._api.read_namespaced_lease(self.name, self.namespace)
        spec = lease.spec
        if spec is None or spec.holder_identity != self.identity:
            return False
        # Like client-go's ReleaseOnCancel: no holder, a 1 s duration that has already started.
        spec.holder_identity = None
        spec.lease_duration_seconds = 1
        spec.renew_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        try:
            self._api.replace_namespaced_lease(
                self.name, self.namespace, lease, field_manager=field_managers.RECONCILER
            )
        except client.ApiException as exc:
            if exc.status == 409:  # someone else wrote it meanwhile: nothing of ours to release
                return False
            raise
        return True


class Reconciler:
    """Debounced loop: dirty namespaces -> patches; full pass every `resync_seconds`."""

    def __init__(
        self,
        cache: ClusterCache,
        signing_key: Signer,
        patch_policy: Callable[[AnnotationPatch], Obj | None],
        stop: threading.Event,
        is_leader: Callable[[], bool] = lambda: True,
        resync_seconds: float = 60.0,
        on_patched: Callable[[AnnotationPatch], None] | None = None,
        excluded_namespaces: tuple[str, ...] = (),
        memo: PolicyMemo | None = None,
        patch_workers: int = PATCH_WORKERS,
    ) -> None:
        self._cache = cache
        self._key = signing_key
        self._patch_policy = patch_policy
        self._stop = stop
        self._is_leader = is_leader
        self._resync = resync_seconds
        self._on_patched = on_patched
        self._excluded = frozenset(excluded_namespaces)
        self._memo = memo
        # Desired annotations per policy, reused while its object and its namespace's grouped
        # Services are the same: a Pod event in a namespace of 1,000 policies then costs lookups.
        self._annotations = AnnotationMemo()
        self._patchers = ThreadPoolExecutor(max_workers=max(1, patch_workers), thread_name_prefix="reconciler-patch")
        # namespace -> names of the policies to recompute, or None for every policy there.
        self._dirty: dict[str, set[str] | None] = {}
        # Namespaces the periodic resync has still to visit, one per turn after pending changes.
        self._resync_queue: list[str] = []
        self._wake = threading.Condition()

    def mark_dirty(self, kind: str, namespace: str, name: str | None = None) -> None:
        """A change in `namespace`: only policy `name` for a policy event, else every policy there."""
        if namespace in self._excluded:
            return
        with self._wake:
            if kind == "networkpolicies" and name is not None:
                names = self._dirty.get(namespace, set())
                if names is not None:
                    names.add(name)
                    self._dirty[namespace] = names
            else:
                self._dirty[namespace] = None
            self._wake.notify()

    def _take_dirty(self, timeout: float) -> dict[str, set[str] | None]:
        with self._wake:
            if not self._dirty:
                self._wake.wait(timeout)
            if not self._dirty:
                return {}
        time.sleep(DEBOUNCE_SECONDS)  # let a burst of events land before recomputing
        with self._wake:
            dirty, self._dirty = self._dirty, {}
        return dirty

    def reconcile_namespace(self, namespace: str, names: Collection[str] | None = None) -> int:
        """Patch the policies of `namespace` (all, or only `names`) whose annotations are not true."""
        patches = iter_patches(namespace, self._cache, self._key, self._memo, names, self._annotations)
        # map() submits each patch as the planner yields it: writing starts after the first chunk.
        applied = list(self._patchers.map(self._apply, patches))
        failed = applied.count(False)
        if applied:
            # One line per pass, not per write: a Service change is up to one write per policy.
            logger.info(
                "annotations updated",
                extra={"namespace": namespace, "updated": len(applied) - failed, "failed": failed},
            )
        return failed

    def _apply(self, patch: AnnotationPatch) -> bool:
        """Write one patch; False when it failed (logged; the pass is retried)."""
        try:
            written = self._patch_policy(patch)
        except Exception as exc:  # a conflict or a transient API error: retried on the next pass
            logger.warning(
                "annotation update failed; will retry",
                extra={"namespace": patch.namespace, "policy": patch.name, "error": str(exc)[:300]},
            )
            return False
        logger.debug("annotation updated", extra={"namespace": patch.namespace, "policy": patch.name})
        if written is not None and patch.resource_version:
            # Known now, not at the watch echo: the echo then changes nothing and wakes no pass.
            self._cache.record_write("networkpolicies", trim_policy(written), patch.resource_version)
        if self._on_patched:
            self._on_patched(patch)
        return True

    def run(self) -> None:
        next_resync = time.monotonic() + self._resync
        while not self._stop.is_set():
            dirty = self._take_dirty(timeout=0.0 if self._resync_queue else 1.0)
            if time.monotonic() >= next_resync:
                self.queue_resync(self._cache.namespaces())
                next_resync = time.monotonic() + self._resync
            if not self._is_leader():
                self._resync_queue.clear()  # the leader resyncs; and no busy loop on a queue left here
                continue
            dirty = self.next_batch(dirty)
            if not dirty:
                continue
            retry = [ns for ns in sorted(dirty) if self.reconcile_namespace(ns, dirty[ns])]
            if retry:
                self._stop.wait(0.5)
                for ns in retry:
                    self.mark_dirty("retry", ns)

    def queue_resync(self, namespaces: Collection[str]) -> None:
        """Queue `namespaces` for a full pass each (those not already queued, in order)."""
        queued = set(self._resync_queue)
        self._resync_queue += [ns for ns in namespaces if ns not in self._excluded and ns not in queued]

    def next_batch(self, dirty: dict[str, set[str] | None]) -> dict[str, set[str] | None]:
        """What to reconcile this turn: the pending changes, else one namespace of the resync. A
        change arriving during a resync then waits for one namespace, not for the whole cluster."""
        if dirty or not self._resync_queue:
            return dirty
        return {self._resync_queue.pop(0): None}

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="reconciler", daemon=True)
        thread.start()
        return thread


def kubernetes_patcher(api_client: Any) -> Callable[[AnnotationPatch], Obj | None]:
    """Merge-patch one policy's annotations; returns the stored object as JSON.

    A Service change makes up to one write per policy, so this skips the generated client's
    per-call work (parameter validation, serializing the body through its models, building the
    request, ~0.3 ms a call: bench/RESULTS.md, scale-reconciler): the body is serialized once with
    `json.dumps` and sent on the client's own connection pool, with its default headers and its
    authentication (`update_params_for_auth`, which refreshes a rotated token as the client does)."""
    from kubernetes import client

    base = str(api_client.configuration.host).rstrip("/")
    pool = api_client.rest_client.pool_manager

    def patch(p: AnnotationPatch) -> Obj | None:
        path = (
            f"/apis/networking.k8s.io/v1/namespaces/{urllib.parse.quote(p.namespace, safe='')}"
            f"/networkpolicies/{urllib.parse.quote(p.name, safe='')}"
            f"?fieldManager={field_managers.RECONCILER}"
        )
        body = json.dumps({"metadata": {"annotations": p.annotations}}, separators=(",", ":")).encode()
        headers = {
            **api_client.default_headers,
            "Accept": "application/json",
            "Content-Type": "application/merge-patch+json",
        }
        api_client.update_params_for_auth(headers, [], ["BearerToken"], path, "PATCH", None)
        response = pool.request("PATCH", base + path, body=body, headers=headers, preload_content=True)
        if not 200 <= response.status < 300:
            raise client.ApiException(http_resp=response)
        written = json.loads(response.data)
        return written if isinstance(written, dict) else None

    return patch
