"""Node status Leases written with the enforcer's own token, read by `kubectl nodeport-guard status`,
and the webhook's InForce Event (once), on the real apiserver. The enforcers' side is the publisher
fed by a real list+watch of NetworkPolicies (the dataplane is proven on the cluster tier,
tests/cluster/test_5c_status.py)."""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from contract.node_status import PolicyVersion, decode_lease, lease_name
from contract.path_status import PathReport, Probe
from enforcer.plan import DesiredState
from enforcer.policies import PolicyStore, trim_policy
from enforcer.status import Programmed, StatusPublisher, lease_writer
from kube.listwatch import ListWatch
from tests.components import NAMESPACE, Installation, WebhookServer, run_kubectl_plugin
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from webhook.inforce import KEY_WATERMARK, MARKER_LEASE, InForceAnnouncer

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


@dataclass
class FakeNode:
    """One node's enforcer as far as status goes: a real watch of policies, a real publisher, the
    enforcer's real token. `frozen` stops it from taking new events (a stalled enforcer)."""

    name: str
    api: Any
    store: PolicyStore = field(default_factory=PolicyStore)
    stop: threading.Event = field(default_factory=threading.Event)
    frozen: bool = False
    programmed_rv: str = ""
    thread: threading.Thread | None = None
    peers: tuple[str, ...] = ()

    def path(self) -> PathReport:
        """This tier has no dataplane: each node reports its peers' canary dropped (what the cluster tier,
        tests/cluster/test_5d_canary.py, proves by packets), so the Lease plumbing is what is tested here."""
        now = datetime.datetime.now(datetime.UTC)
        return PathReport(probes=tuple(Probe(p, "filtering", "timeout after 1.0s", now) for p in self.peers))

    def read(self) -> Programmed | None:
        if not self.frozen:
            self.store.take_changes()
            self.programmed_rv = self.store.resource_version
        return Programmed(True, self.programmed_rv, DesiredState(), ()) if self.programmed_rv else None

    def start(self) -> None:
        from kubernetes import client

        watch = ListWatch(
            "networkpolicies",
            client.NetworkingV1Api(self.api).list_network_policy_for_all_namespaces,
            self.store,
            self.stop,
            trim_policy,
        )
        watch.start()
        publisher = StatusPublisher(
            self.name,
            NAMESPACE,
            lease_writer(self.api, NAMESPACE, lease_name(self.name)),
            generation=lambda: (self.frozen, self.store.resource_version),
            read=self.read,
            min_interval=1.0,
            heartbeat=30.0,
            path=self.path,
        )
        self.thread = publisher.start(self.stop)

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


@pytest.fixture
def nodes(control_plane: ControlPlane, installation: Installation) -> Iterator[list[FakeNode]]:
    names = [f"npg-it-{secrets.token_hex(3)}-{i}" for i in (1, 2)]
    for name in names:
        control_plane.kubectl(
            "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        )
    fakes = [FakeNode(n, control_plane.api_client(installation.enforcer_kubeconfig)) for n in names]
    for fake in fakes:
        fake.peers = tuple(n for n in names if n != fake.name)
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.halt()
            fake.api.close()
        control_plane.kubectl("delete", "node", *names, "--ignore-not-found")
        control_plane.kubectl("delete", "lease", *(lease_name(n) for n in names), "-n", NAMESPACE, "--ignore-not-found")


def status(plane: ControlPlane, *args: str) -> tuple[int, str, str]:
    result = run_kubectl_plugin(plane, "status", *args)
    return result.returncode, result.stdout, result.stderr


def test_status_follows_each_node_from_not_in_force_to_in_force_and_a_stopped_node_falls_behind(
    control_plane: ControlPlane,
    installation: Installation,
    namespace: str,
    webhook: WebhookServer,
    nodes: list[FakeNode],
) -> None:
    one, two = nodes
    one.start()
    two.start()
    workload = [pod("web-1", {"app": "web"}, HTTP), nodeport_service("web", {"app": "web"}, [{"port": 80}])]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*workload))
    # Both leases exist and say what was listed before the policy.
    deadline = time.monotonic() + 20
    while not all((_lease(control_plane, n.name) or {}).get("rv") for n in nodes):
        assert time.monotonic() < deadline, "no status Lease after 20 s"
        time.sleep(0.2)
    two.frozen = True  # node two keeps what it programmed so far and takes nothing new
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(policy("deny-all", {}, [])))

    code, out, _ = status(control_plane, "deny-all", "-n", namespace, "--wait", "--timeout", "5s", "-o", "json")
    report = json.loads(out)
    by_node = {n["node"]: n for n in report["nodes"] if n["node"] in (one.name, two.name)}
    assert code == 1 and not report["inForce"]
    assert by_node[one.name]["state"] == "in-force" and by_node[one.name]["enforcer"] == "ready"
    assert by_node[two.name]["state"] == "behind" and by_node[two.name]["behindBy"] == 1

    two.frozen = False  # node two catches up
    started = time.monotonic()
    code, out, err = status(control_plane, "deny-all", "-n", namespace, "--wait", "--timeout", "30s")
    assert code == 0, out + err
    assert time.monotonic() - started < 15
    assert "in force on 2 of 2 nodes" in out and f"up to date: {', '.join(sorted([one.name, two.name]))}" in out
    # The webhook (the reconciler's leader) says so once, with a Normal Event on the policy.
    deadline = time.monotonic() + 20
    while not (announced := _in_force_events(control_plane, namespace)):
        assert time.monotonic() < deadline, "no InForce Event after 20 s"
        time.sleep(0.5)
    assert len(announced) == 1 and announced[0]["type"] == "Normal", announced
    assert announced[0]["involvedObject"]["name"] == "deny-all"
    assert "in force on all 2 nodes" in announced[0]["message"]

    two.halt()  # its last write says "stopped"; its rules would stay, but it takes nothing new
    deadline = time.monotonic() + 10
    while (_lease(control_plane, two.name) or {}).get("phase") != "stopped":
        assert time.monotonic() < deadline, "the stopped enforcer did not say so"
        time.sleep(0.2)
    # A spec-only change moves the policy's resourceVersion: node one takes it, node two cannot.
    control_plane.kubectl("label", "networkpolicy", "deny-all", "-n", namespace, "team=shop")
    started = time.monotonic()
    code, out, _ = status(control_plane, "deny-all", "-n", namespace, "--wait", "--timeout", "3s")
    waited = time.monotonic() - started
    assert code == 1 and 3 <= waited < 15, (code, waited)
    assert "in force on 1 of 2 nodes" in out
    assert f"behind: {two.name} (behind, 1 version(s) not programmed" in out
    assert f"enforcer not ready: {two.name} (stopped)" in out

    # Every policy of the namespace at once: the same answer, as JSON for scripts.
    code, out, _ = status(control_plane, "-n", namespace, "-o", "json")
    whole = json.loads(out)
    assert code == 1 and [p["name"] for p in whole["policies"]] == ["deny-all"]
    assert {n["node"]: n["state"] for n in whole["nodes"]} == {one.name: "in-force", two.name: "behind"}
    missing = run_kubectl_plugin(control_plane, "status", "nope", "-n", namespace)
    assert missing.returncode == 2 and "not found" in missing.stderr
    # Once: a webhook that restarts after writing the Event but before its marker repeats nothing.
    _announce_again_from_an_old_marker(control_plane, installation, announced[0])
    assert _in_force_events(control_plane, namespace) == announced


def _in_force_events(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    events = plane.kubectl_json("get", "events", "-n", namespace)["items"]
    return [e for e in events if e["reason"] == "InForce"]


def _announce_again_from_an_old_marker(plane: ControlPlane, installation: Installation, event: dict[str, Any]) -> None:
    older = int(event["involvedObject"]["resourceVersion"]) - 1
    plane.kubectl("annotate", "lease", MARKER_LEASE, "-n", NAMESPACE, f"{KEY_WATERMARK}={older}", "--overwrite")
    api = plane.api_client(installation.webhook_kubeconfig)
    stop = threading.Event()
    try:
        policies = [
            (
                PolicyVersion(
                    event["involvedObject"]["namespace"], "deny-all", event["involvedObject"]["resourceVersion"]
                ),
                "",
                True,
            )
        ]
        announcer = InForceAnnouncer(api, NAMESPACE, lambda: policies, lambda: True, stop)
        announcer.watch()
        deadline = time.monotonic() + 10
        while not announcer.synced():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert announcer.step() == 0  # the Event exists: 409, not a second one
    finally:
        stop.set()
        api.close()


def _lease(plane: ControlPlane, node: str) -> dict[str, Any] | None:
    result = plane.kubectl("get", "lease", lease_name(node), "-n", NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    decoded = decode_lease(json.loads(result.stdout))
    assert decoded is not None, result.stdout
    return {"phase": decoded.phase, "rv": decoded.resource_version}
