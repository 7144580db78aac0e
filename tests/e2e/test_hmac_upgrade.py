"""The upgrade from HMAC-signed annotations to Ed25519, end to end, with real packets probed throughout.

A cluster as the HMAC version left it: a NetworkPolicy whose stored annotation is signed with
the shared HMAC key (Secret nodeport-guard-signing-key), a NodePort it protects. The steps of
docs/operations.md, "Upgrading from HMAC signatures", in order:

1. enforcers with the transition on (manifests/overlays/hmac-transition: the legacy read right
   and NPG_ACCEPT_LEGACY_HMAC=true) program the HMAC-signed verdict;
2. the new webhook (Ed25519 private key) starts; its reconciler re-signs the stored annotation;
3. enforcers restart with the transition off (the default), the legacy Role and Secret go.

A prober opens a new connection from a client the policy denies, over and over, from before
step 1 is programmed until after step 3: not one of them may connect.

The policy lives in kube-system, which the session's registered webhook leaves alone (as
webhook configurations exclude it), so the old state can be written as the old webhook wrote
it. The new webhook of step 2 is started unregistered, with only `nodeport-guard` excluded, so
its reconciler (the component that re-signs) covers kube-system.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import NAMESPACE, REPO, EnforcerProcess, Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.netns import CLIENT_A4, NODE_V4, Node, Result, make_node
from webhook.contract import NODEPORTS_KEY, SIGNATURE_KEY, Annotation, NodePortVerdict, PolicyRef, SourceSet, encode
from webhook.signing import legacy_hmac_signature

LEGACY_SECRET = "nodeport-guard-signing-key"
LEGACY_RBAC = REPO / "manifests" / "overlays" / "hmac-transition" / "legacy-hmac-rbac.yaml"
TRANSITION_ENV = {
    "NPG_ACCEPT_LEGACY_HMAC": "true",
    "NPG_LEGACY_HMAC_SECRET": f"{NAMESPACE}/{LEGACY_SECRET}",
}


class Prober:
    """Opens new connections from a denied client until stopped; remembers every result."""

    def __init__(self, node: Node, port: int) -> None:
        self.node, self.port = node, port
        self.results: list[tuple[float, Result]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append((time.monotonic(), self.node.connect(CLIENT_A4, NODE_V4[0], self.port, timeout=0.3)))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _metric(enforcer: EnforcerProcess, name: str) -> float:
    status, body = enforcer.http_get("/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


def _wait(what: str, check: object, timeout: float = 15.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


@pytest.fixture
def legacy_cluster(control_plane: ControlPlane, installation: Installation) -> Iterator[tuple[str, bytes]]:
    """kube-system objects of one test (unique names), the legacy HMAC Secret and the transition RBAC."""
    suffix = secrets.token_hex(3)
    hmac_key = secrets.token_bytes(32)
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": LEGACY_SECRET, "namespace": NAMESPACE},
                "type": "Opaque",
                "data": {"key": base64.b64encode(hmac_key).decode()},
            }
        ),
    )
    control_plane.kubectl("apply", "-f", str(LEGACY_RBAC))
    try:
        yield suffix, hmac_key
    finally:
        control_plane.kubectl(
            "delete",
            "networkpolicy,service,pod",
            "-n",
            "kube-system",
            "-l",
            f"npg-upgrade={suffix}",
            "--grace-period=0",
            "--force",
            check=False,
        )
        control_plane.kubectl("delete", "-f", str(LEGACY_RBAC), "--ignore-not-found", check=False)
        control_plane.kubectl("delete", "secret", LEGACY_SECRET, "-n", NAMESPACE, "--ignore-not-found", check=False)


def test_upgrade_from_hmac_re_signs_every_annotation_and_opens_no_nodeport_at_any_moment(
    control_plane: ControlPlane,
    installation: Installation,
    legacy_cluster: tuple[str, bytes],
    tmp_path: Path,
) -> None:
    suffix, hmac_key = legacy_cluster
    labels = {"npg-upgrade": suffix}
    app = {"app": f"upgrade-{suffix}"}
    web, svc_name, pol_name = f"web-{suffix}", f"web-{suffix}", f"deny-{suffix}"
    objects = [
        pod(web, {**app, **labels}, [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]),
        nodeport_service(svc_name, dict(app), [{"name": "http", "port": 80, "targetPort": "http"}]),
        policy(pol_name, {"matchLabels": dict(app)}, []),
    ]
    for obj in objects:
        obj["metadata"]["namespace"] = "kube-system"
        obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), **labels}
    control_plane.kubectl("apply", "-f", "-", input=as_list(*objects))
    node_port = int(
        control_plane.kubectl_json("get", "service", svc_name, "-n", "kube-system")["spec"]["ports"][0]["nodePort"]
    )
    uid = control_plane.kubectl_json("get", "networkpolicy", pol_name, "-n", "kube-system")["metadata"]["uid"]
    # What the HMAC webhook stored: the same verdict the new one computes, signed with the shared key.
    verdict = NodePortVerdict(node_port, "TCP", svc_name, 80, ("IPv4",), SourceSet.nobody())
    value = encode(Annotation(PolicyRef("kube-system", pol_name, uid), (verdict,)))
    legacy_signature = legacy_hmac_signature(hmac_key, value.encode())
    control_plane.kubectl(
        "annotate",
        "-n",
        "kube-system",
        "networkpolicy",
        pol_name,
        f"{NODEPORTS_KEY}={value}",
        f"{SIGNATURE_KEY}={legacy_signature}",
    )

    def stored() -> dict[str, str]:
        meta = control_plane.kubectl_json("get", "networkpolicy", pol_name, "-n", "kube-system")["metadata"]
        return {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("nodeport-guard.io/")}

    with make_node(lock_path=str(tmp_path / "xtables.lock")) as node:
        node.listen(node_port)
        assert node.connect(CLIENT_A4, NODE_V4[0], node_port) == "connected"  # nothing enforces yet

        # 1. Enforcer with the transition on: the HMAC-signed verdict is programmed.
        enforcer = EnforcerProcess(
            control_plane,
            installation,
            node.node_ns,
            tmp_path / "enforcer.log",
            tmp_path,
            resync_seconds=2.0,
            extra_env=dict(TRANSITION_ENV),
        )
        webhook = WebhookServer(
            control_plane,
            installation,
            tmp_path / "webhook.log",
            register=False,
            extra_env={"NPG_EXCLUDED_NAMESPACES": NAMESPACE, "NPG_LEASE_NAMESPACE": "", "NPG_RESYNC_SECONDS": "2"},
        )
        try:
            enforcer.start()
            enforcer.wait_ready()
            assert _metric(enforcer, "nodeport_guard_legacy_hmac_accepted") == 1
            _wait(
                "the HMAC verdict programmed",
                lambda: node.connect(CLIENT_A4, NODE_V4[0], node_port, timeout=0.3) == "timeout",
            )
            assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
            with Prober(node, node_port) as prober:
                # 2. The Ed25519 webhook: its reconciler re-signs the stored annotation (value unchanged).
                webhook.start()
                _wait("the annotation re-signed with Ed25519", lambda: stored()[SIGNATURE_KEY].startswith("ed25519:"))
                assert stored() == {
                    NODEPORTS_KEY: value,
                    SIGNATURE_KEY: installation.signing_key.sign(value.encode()),
                }
                time.sleep(1.0)  # the enforcer folds the re-signed annotation in (debounce 0.1 s)
                assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
                # 3. Transition off: the enforcer restarts with the defaults (its rules stay in place meanwhile).
                enforcer.stop()
                control_plane.kubectl("delete", "-f", str(LEGACY_RBAC))
                control_plane.kubectl("delete", "secret", LEGACY_SECRET, "-n", NAMESPACE)
                enforcer.extra_env = {}
                enforcer.start()
                enforcer.wait_ready()
                assert _metric(enforcer, "nodeport_guard_legacy_hmac_accepted") == 0
                assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
                time.sleep(1.0)
            opened = [t for t, r in prober.results if r != "timeout"]
            assert len(prober.results) >= 5 and not opened, prober.results
            # Now the old HMAC key (wherever it leaked) no longer opens anything: a stored HMAC copy is refused.
            webhook.stop()
            control_plane.kubectl(
                "annotate",
                "--overwrite",
                "-n",
                "kube-system",
                "networkpolicy",
                pol_name,
                f"{SIGNATURE_KEY}={legacy_signature}",
            )
            _wait("the HMAC-signed copy refused", lambda: _metric(enforcer, "nodeport_guard_rejected_annotations") == 1)
            events = control_plane.kubectl_json("get", "events", "-n", "kube-system")["items"]
            assert any(
                e["involvedObject"]["name"] == pol_name and "legacy hmac-sha256" in e["message"] for e in events
            ), [e["message"] for e in events if e["involvedObject"]["name"] == pol_name]
        finally:
            webhook.stop()
            enforcer.stop()
            print(enforcer.log_tail(40))
            print(webhook.log_tail(20))
            enforcer.cleanup_node()
