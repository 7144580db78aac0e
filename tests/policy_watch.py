"""Watch a namespace's NetworkPolicies with timestamps, and say when their annotations became true (I/O).

Used by the scale test and the reconciler benchmark: `PolicyRecorder` is fed by the webhook's own
`ListWatch` (list, then every event, each stamped with `time.monotonic()`); `desired_annotations`
computes what every stored policy should carry with the pure core; `first_true` replays the events
to find the first instant the stored annotations equal it. `reconciler_patches` reads the webhook's
count of the reconciler's writes from its /metrics.
"""

from __future__ import annotations

import functools
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from contract.annotation import NODEPORTS_KEY, owned_keys
from contract.signing import Signer
from kube.listwatch import EventType, ListWatch, Obj, ObjectSink
from tests.components import WebhookServer
from tests.controlplane.harness import ControlPlane
from webhook.admission import resolve_all_annotations
from webhook.snapshot import StaticClusterView

Annotations = dict[str, str]
PATCHES_METRIC = re.compile(r"^nodeport_guard_reconciler_patches_total ([0-9.e+]+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Recorded:
    at: float  # time.monotonic()
    event: EventType
    name: str
    annotations: Annotations  # ours only


def _owned(obj: Mapping[str, Any]) -> Annotations:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {k: str(annotations[k]) for k in owned_keys(annotations)}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


class PolicyRecorder(ObjectSink[Obj]):
    """The first listing of one namespace's policies, then every event with the time it arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.initial: dict[str, Annotations] = {}
        self.events: list[Recorded] = []
        self._listed = False

    def replace(self, kind: str, objects: list[Obj], resource_version: str) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._listed:
                self.initial = {_name(o): _owned(o) for o in objects}
                self._listed = True
                return
            # A relist (watch expired): record it as deletions of everything, then additions.
            self.events += [Recorded(now, "DELETED", n, {}) for n in self._names_at_end()]
            self.events += [Recorded(now, "ADDED", _name(o), _owned(o)) for o in objects]

    def apply(self, kind: str, event: EventType, obj: Obj) -> None:
        with self._lock:
            self.events.append(Recorded(time.monotonic(), event, _name(obj), _owned(obj)))

    def _names_at_end(self) -> set[str]:
        state = set(self.initial)
        for ev in self.events:
            (state.discard if ev.event == "DELETED" else state.add)(ev.name)
        return state

    def modified_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for ev in self.events if ev.at >= since and ev.event == "MODIFIED")

    def first_naming(self, node_port: int, since: float) -> float | None:
        """The first instant >= `since` at which a policy's annotation names `node_port`; None if not yet."""
        needle = f'"nodePort":{node_port},'
        with self._lock:
            for ev in self.events:
                if ev.at >= since and needle in ev.annotations.get(NODEPORTS_KEY, ""):
                    return ev.at
        return None

    def first_true(self, desired: Mapping[str, Annotations | None], since: float) -> float | None:
        """The first instant >= `since` at which exactly the policies of `desired` are stored, each
        carrying exactly its desired annotations (None: none of ours); None if not yet."""
        want = {name: dict(value or {}) for name, value in desired.items()}
        with self._lock:
            state = dict(self.initial)
            events = list(self.events)
        wrong = {n for n in set(state) | set(want) if state.get(n) != want.get(n)}

        def step(ev: Recorded) -> None:
            if ev.event == "DELETED":
                state.pop(ev.name, None)
            else:
                state[ev.name] = ev.annotations
            if state.get(ev.name) == want.get(ev.name):
                wrong.discard(ev.name)
            else:
                wrong.add(ev.name)

        later = [ev for ev in events if ev.at > since]
        for ev in events[: len(events) - len(later)]:
            step(ev)
        if not wrong:
            return since
        for ev in later:
            step(ev)
            if not wrong:
                return ev.at
        return None


@contextmanager
def recording(plane: ControlPlane, namespace: str) -> Iterator[PolicyRecorder]:
    """A recorder of `namespace`'s policies, listed before the block starts and watched during it."""
    from kubernetes import client

    recorder = PolicyRecorder()
    stop = threading.Event()
    api = plane.api_client()
    networking = client.NetworkingV1Api(api)
    watch = ListWatch(
        "networkpolicies",
        functools.partial(networking.list_namespaced_network_policy, namespace),
        recorder,
        stop,
    )
    watch.start()
    if not watch.synced.wait(60):
        raise TimeoutError(f"could not list the NetworkPolicies of {namespace}")
    try:
        yield recorder
    finally:
        stop.set()  # the watch thread ends at its next event or timeout (a daemon)
        api.close()


def desired_annotations(plane: ControlPlane, namespace: str, key: Signer) -> dict[str, Annotations | None]:
    """What every stored policy of `namespace` should carry now, from the stored Services, Pods and
    policies, computed by the same pure core as the webhook's."""
    objects = {
        kind: plane.kubectl_json("get", kind, "-n", namespace)["items"]
        for kind in ("services", "pods", "networkpolicies")
    }
    view = StaticClusterView(objects["services"], objects["pods"], objects["networkpolicies"])
    return resolve_all_annotations(namespace, view, key)


def wait_true(
    recorder: PolicyRecorder, desired: Mapping[str, Annotations | None], since: float, timeout: float
) -> float:
    """Seconds from `since` until the stored annotations were all true (replayed from the events)."""
    deadline = time.monotonic() + timeout
    while True:
        at = recorder.first_true(desired, since)
        if at is not None:
            return at - since
        if time.monotonic() > deadline:
            raise AssertionError(f"stored annotations not true {timeout:.0f} s after the change")
        time.sleep(0.1)


def reconciler_patches(server: WebhookServer) -> int:
    """The reconciler's successful writes so far (its counter on the webhook's /metrics)."""
    context = ssl.create_default_context(cafile=str(server.install.certs_dir / "ca.crt"))
    with urllib.request.urlopen(f"{server.url}/metrics", context=context, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    found = PATCHES_METRIC.search(text)
    return int(float(found.group(1))) if found else 0


def wait_quiet(server: WebhookServer, quiet: float = 1.0, timeout: float = 120.0) -> int:
    """Wait until the reconciler has written nothing for `quiet` seconds; its write count then."""
    deadline = time.monotonic() + timeout
    last = reconciler_patches(server)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = reconciler_patches(server)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return now
    raise AssertionError(f"the reconciler was still writing after {timeout:.0f} s")
