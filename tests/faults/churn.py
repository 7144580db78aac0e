"""The churn driver: NetworkPolicies created and deleted while a fault happens (I/O).

Every churn policy selects every backend pod of the demo namespace and allows one random block that
holds no probing client: it widens the NodePort's allow-list with addresses no probe uses, so every
create and delete changes what the enforcers program (a real update that can be lost) while the
verdict for client-a (allowed by the baseline policy) and client-b (denied) stays the same. Each operation
is recorded with its time, outcome and the API's message; failed operations are retried (when asked)
until they succeed, so the stored state ends as the driver meant it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from localcluster.backends import NAMESPACE
from localcluster.cluster import Cluster

LABEL = "faults.nodeport-guard.io/churn"
Op = Literal["create", "delete"]


@dataclass(frozen=True, slots=True)
class ChurnOp:
    t: float  # wall time the attempt started
    op: Op
    name: str
    ok: bool
    seconds: float
    error: str = ""  # the API's message (or the exception) when not ok


def api_client(cluster: Cluster) -> Any:
    """A Kubernetes API client for the cluster's admin kubeconfig (a new one per caller: not shared)."""
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]


def churn_block(rng: random.Random) -> list[dict[str, Any]]:
    """An ipBlock no probe source is in: a /32 or /28 of 198.51.100.128/25 (cluster-internal, never a
    client) or an IPv6 /64 under 2001:db8:c000::/34 (no client there either)."""
    if rng.random() < 0.5:
        size = rng.choice([28, 32])
        step = 1 << (32 - size)
        base = 128 + rng.randrange(0, 128, step)
        return [{"ipBlock": {"cidr": f"198.51.100.{base}/{size}"}}]
    return [{"ipBlock": {"cidr": f"2001:db8:c{rng.randrange(0x1000):03x}::/64"}}]


def churn_policy(name: str, rng: random.Random, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: "1"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": churn_block(rng)}]},
    }


def _message(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}: {exc.body if isinstance(exc.body, str) else ''}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


@dataclass
class ChurnDriver:
    """Creates and deletes churn policies in a background thread.

    `ops` bounds the operations (None: until `stop()`); `live` is the number of churn policies kept
    around (a create when fewer exist, else a delete of a random one); `retry_for` seconds a failed
    operation is retried (0: give it up and go on). `pause` seconds between operations."""

    cluster: Cluster
    ops: int | None = None
    live: int = 10
    pause: float = 0.2
    retry_for: float = 120.0
    seed: int = 12
    namespace: str = NAMESPACE
    prefix: str = "churn"
    log: list[ChurnOp] = field(default_factory=list)
    existing: set[str] = field(default_factory=set)
    abandoned: list[tuple[Op, str]] = field(default_factory=list)  # operations given up after `retry_for`
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def start(self) -> ChurnDriver:
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> ChurnDriver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the driver to finish its `ops` (or to stop); True when it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> int:
        with self._lock:
            return sum(1 for o in self.log if o.ok)

    def failures(self) -> list[ChurnOp]:
        with self._lock:
            return [o for o in self.log if not o.ok]

    def _run(self) -> None:
        rng = random.Random(self.seed)
        api = k8s.NetworkingV1Api(api_client(self.cluster))
        performed = 0
        while not self._stop.is_set() and (self.ops is None or performed < self.ops):
            if len(self.existing) < self.live or (len(self.existing) < 2 * self.live and rng.random() < 0.5):
                self._counter += 1
                name = f"{self.prefix}-{self.seed}-{self._counter}"
                body = churn_policy(name, rng, self.namespace)
                ok = self._attempt("create", name, partial(self._create, api, body))
                if ok:
                    self.existing.add(name)
            else:
                name = rng.choice(sorted(self.existing))
                ok = self._attempt("delete", name, partial(self._delete, api, name))
                if ok:
                    self.existing.discard(name)
            if not ok:
                with self._lock:
                    self.abandoned.append((self.log[-1].op, name))
            performed += 1
            self._stop.wait(self.pause)

    def _create(self, api: Any, body: dict[str, Any]) -> None:
        api.create_namespaced_network_policy(self.namespace, body, _request_timeout=15)

    def _delete(self, api: Any, name: str) -> None:
        try:
            api.delete_namespaced_network_policy(name, self.namespace, _request_timeout=15)
        except ApiException as exc:
            if exc.status != 404:  # a retried delete whose first attempt went through
                raise

    def _attempt(self, op: Op, name: str, call: Callable[[], object]) -> bool:
        deadline = time.monotonic() + self.retry_for
        while True:
            started, t = time.monotonic(), time.time()
            try:
                call()
            except ApiException as exc:
                if op == "create" and exc.status == 409:  # a retried create whose first attempt went through
                    self._record(ChurnOp(t, op, name, True, time.monotonic() - started, "409 (already created)"))
                    return True
                self._record(ChurnOp(t, op, name, False, time.monotonic() - started, _message(exc)))
            except Exception as exc:  # connection refused/reset while the apiserver restarts
                self._record(ChurnOp(t, op, name, False, time.monotonic() - started, _message(exc)))
            else:
                self._record(ChurnOp(t, op, name, True, time.monotonic() - started))
                return True
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.5)

    def _record(self, op: ChurnOp) -> None:
        with self._lock:
            self.log.append(op)


def delete_churn(cluster: Cluster, namespace: str = NAMESPACE) -> None:
    """Remove every churn policy (whatever driver made it)."""
    cluster.kubectl("-n", namespace, "delete", "networkpolicies", "-l", LABEL, "--wait=true", "--ignore-not-found",
                    timeout=180)
