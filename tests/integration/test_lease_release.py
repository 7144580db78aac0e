"""The reconciler Lease against the real apiserver: a replica shutting down hands it over at once."""

from __future__ import annotations

import threading
import time

from certs.pki import build_signing_key
from tests.controlplane.harness import ControlPlane
from webhook.app import _keep_lease
from webhook.cache import ClusterCache
from webhook.reconcile import LeaseElector, Reconciler


def test_a_released_lease_is_taken_at_the_next_try_and_a_held_one_is_not(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    first = LeaseElector(api, namespace, "replica-a")
    second = LeaseElector(api, namespace, "replica-b")
    assert first.try_acquire()
    assert not second.try_acquire()  # held, 15 s to go
    assert not second.release()  # not ours to release
    assert first.release()
    assert second.try_acquire()
    assert not first.try_acquire()


def test_resigning_releases_the_lease_while_the_process_keeps_running(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    elector = LeaseElector(api, namespace, "replica-a")
    leader, stop, resign = threading.Event(), threading.Event(), threading.Event()
    cache = ClusterCache()
    reconciler = Reconciler(cache, build_signing_key(), lambda _p: None, stop, is_leader=leader.is_set)
    thread = threading.Thread(target=_keep_lease, args=(elector, leader, reconciler, cache, stop, resign), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not leader.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leader.is_set()
        resign.set()
        thread.join(timeout=20)
        assert not thread.is_alive() and not leader.is_set() and not stop.is_set()
        started = time.monotonic()
        assert LeaseElector(api, namespace, "replica-b").try_acquire()
        assert time.monotonic() - started < 5
    finally:
        stop.set()
