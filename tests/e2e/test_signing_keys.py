"""Signing keys end to end, with real packets probed throughout: the upgrade from HMAC, and a key rotation.

Both run the documented procedures (docs/operations.md, "Upgrading from HMAC signatures" and
"Signing-key rotation") against the real apiserver, with the real webhook (its reconciler
re-signs) and the real enforcer in a node network namespace. A prober opens a new connection
from a client the policy denies, over and over, for the whole procedure: not one may connect.

The policies live in kube-system, which the session's registered webhook leaves alone (the
webhook configurations exclude it), so an old state can be written as an old webhook wrote
it. The webhooks started here are unregistered and exclude only other namespaces, so their
reconciler (the component that re-signs) covers kube-system.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY, Annotation, NodePortVerdict, PolicyRef, SourceSet, encode
from contract.signing import legacy_hmac_signature
from tests.components import NAMESPACE, REPO, EnforcerProcess, Installation, WebhookServer, run_python
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.netns import CLIENT_A4, NODE_V4, Node, Result, make_node
from webhook.settings import read_signing_key

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
def suffix(control_plane: ControlPlane) -> Iterator[str]:
    """A unique suffix for one test's kube-system objects, which are deleted afterwards."""
    value = secrets.token_hex(3)
    try:
        yield value
    finally:
        control_plane.kubectl(
            "delete",
            "networkpolicy,service,pod",
            "-n",
            "kube-system",
            "-l",
            f"npg-keys={value}",
            "--grace-period=0",
            "--force",
            check=False,
        )


@pytest.fixture
def legacy_hmac_key(control_plane: ControlPlane, installation: Installation) -> Iterator[bytes]:
    """The old shared HMAC key in its Secret, and the transition's read right (manifests/overlays/hmac-transition)."""
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
        yield hmac_key
    finally:
        control_plane.kubectl("delete", "-f", str(LEGACY_RBAC), "--ignore-not-found", check=False)
        control_plane.kubectl("delete", "secret", LEGACY_SECRET, "-n", NAMESPACE, "--ignore-not-found", check=False)


@dataclass(frozen=True)
class App:
    """A pod, its NodePort Service and a deny-all policy selecting it, in kube-system."""

    node_port: int
    service: str
    policy: str
    uid: str

    def _verdict(self) -> NodePortVerdict:
        return NodePortVerdict(self.node_port, "TCP", self.service, 80, ("IPv4",), SourceSet.nobody())

    def verdict_value(self) -> str:
        """The annotation value the webhook computes for the policy (all external sources denied)."""
        return encode(Annotation(PolicyRef("kube-system", self.policy, self.uid), (self._verdict().entry(),)))

    def v1_value(self) -> str:
        """What nodeport-guard 0.1 (contract version 1, HMAC) stored for the same policy."""
        ref = PolicyRef("kube-system", self.policy, self.uid)
        return encode(Annotation(ref, (self._verdict().entry("verdict"),), version=1))


def _deploy(plane: ControlPlane, suffix: str) -> App:
    labels = {"npg-keys": suffix}
    app = {"app": f"keys-{suffix}"}
    svc_name, pol_name = f"web-{suffix}", f"deny-{suffix}"
    objects = [
        pod(f"web-{suffix}", {**app, **labels}, [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]),
        nodeport_service(svc_name, dict(app), [{"name": "http", "port": 80, "targetPort": "http"}]),
        policy(pol_name, {"matchLabels": dict(app)}, []),
    ]
    for obj in objects:
        obj["metadata"]["namespace"] = "kube-system"
        obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), **labels}
    plane.kubectl("apply", "-f", "-", input=as_list(*objects))
    node_port = int(plane.kubectl_json("get", "service", svc_name, "-n", "kube-system")["spec"]["ports"][0]["nodePort"])
    uid = plane.kubectl_json("get", "networkpolicy", pol_name, "-n", "kube-system")["metadata"]["uid"]
    return App(node_port, svc_name, pol_name, uid)


def _stored(plane: ControlPlane, app: App) -> dict[str, str]:
    meta = plane.kubectl_json("get", "networkpolicy", app.policy, "-n", "kube-system")["metadata"]
    return {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("nodeport-guard.io/")}


def _annotate(plane: ControlPlane, app: App, annotations: dict[str, str]) -> None:
    args = [f"{k}={v}" for k, v in annotations.items()]
    plane.kubectl("annotate", "--overwrite", "-n", "kube-system", "networkpolicy", app.policy, *args)


def test_upgrade_from_hmac_re_signs_every_annotation_and_opens_no_nodeport_at_any_moment(
    control_plane: ControlPlane,
    installation: Installation,
    suffix: str,
    legacy_hmac_key: bytes,
    tmp_path: Path,
) -> None:
    app = _deploy(control_plane, suffix)
    node_port, pol_name = app.node_port, app.policy
    # What the HMAC webhook (contract version 1) stored: the same verdict, signed with the shared key.
    value = app.v1_value()
    legacy_signature = legacy_hmac_signature(legacy_hmac_key, value.encode())
    _annotate(control_plane, app, {NODEPORTS_KEY: value, SIGNATURE_KEY: legacy_signature})

    def stored() -> dict[str, str]:
        return _stored(control_plane, app)

    with make_node(lock_path=str(tmp_path / "xtables.lock")) as node:
        node.listen(node_port)
        assert node.connect(CLIENT_A4, NODE_V4[0], node_port) == "connected"  # nothing enforces yet

        # Steps 1-3 (the installation published the public key): enforcers with the transition on
        # program the HMAC-signed verdict.
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
                # Steps 4-5. The Ed25519 webhook: its reconciler rewrites the stored annotation to
                # contract version 2 and signs it with Ed25519.
                webhook.start()
                _wait(
                    "the annotation re-signed with Ed25519",
                    lambda: stored().get(SIGNATURE_KEY, "").startswith("ed25519:"),
                )
                new_value = app.verdict_value()
                assert stored() == {
                    NODEPORTS_KEY: new_value,
                    SIGNATURE_KEY: installation.signing_key.sign(new_value.encode()),
                }
                time.sleep(1.0)  # the enforcer folds the re-signed annotation in (debounce 0.1 s)
                assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
                # Step 6. Transition off: the enforcer restarts with the defaults (its rules stay in place meanwhile).
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
                f"{NODEPORTS_KEY}={value}",
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


def _trusted(enforcer: EnforcerProcess) -> set[str]:
    """Key ids the enforcer currently accepts (gauge nodeport_guard_trusted_signing_keys)."""
    status, body = enforcer.http_get("/metrics")
    assert status == 200
    prefix = 'nodeport_guard_trusted_signing_keys{key_id="'
    return {
        line[len(prefix) :].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith(prefix) and float(line.rsplit(" ", 1)[1]) == 1
    }


def _certs(*args: str) -> str:
    """`python -m certs ...`; its log (stderr)."""
    return run_python("-m", "certs", *args).stderr


@pytest.mark.parametrize("webhook_restart", ["after-enforcers-refreshed", "before-enforcers-refreshed"])
def test_signing_key_rotation_opens_no_nodeport(
    control_plane: ControlPlane,
    installation: Installation,
    namespace: str,
    suffix: str,
    tmp_path: Path,
    webhook_restart: str,
) -> None:
    """docs/operations.md, "Signing-key rotation", steps 0-4, with the certs tool, on keys of this test.

    The keys live in this test's namespace (so the session's keys stay as they are); a Role
    there gives the enforcer's ServiceAccount the same single `get` the manifests give it.
    `before-enforcers-refreshed` skips the wait of step 2 (a webhook pod restarted early, e.g.
    by a node drain) with an enforcer that would re-read its keys only after an hour: the
    signature naming an unknown key id makes it re-read them at once, before it plans.
    """
    early = webhook_restart == "before-enforcers-refreshed"
    keys = tmp_path / "keys"
    admin = ("--kubeconfig", str(control_plane.kubeconfig), "--dir", str(keys), "--namespace", namespace)
    _certs("signing-key", "--dir", str(keys))
    _certs("install", *admin, "--signing-key-only")
    first = read_signing_key(keys / "signing.pem")
    control_plane.kubectl(
        "create",
        "role",
        "public-keys",
        "-n",
        namespace,
        "--verb=get",
        "--resource=configmaps",
        "--resource-name=nodeport-guard-signing-public-keys",
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "public-keys",
        "-n",
        namespace,
        "--role=public-keys",
        f"--serviceaccount={NAMESPACE}:nodeport-guard-enforcer",
    )
    app = _deploy(control_plane, suffix)
    others = control_plane.kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    webhook_env = {
        "NPG_SIGNING_KEY_FILE": str(keys / "signing.pem"),  # what the Deployment mounts from the Secret
        "NPG_EXCLUDED_NAMESPACES": ",".join(n for n in others if n != "kube-system"),
        "NPG_LEASE_NAMESPACE": "",
        "NPG_RESYNC_SECONDS": "2",
    }

    with make_node(lock_path=str(tmp_path / "xtables.lock")) as node:
        node.listen(app.node_port)
        enforcer = EnforcerProcess(
            control_plane,
            installation,
            node.node_ns,
            tmp_path / "enforcer.log",
            tmp_path,
            resync_seconds=2.0,
            extra_env={
                "NPG_PUBLIC_KEYS_CONFIGMAP": f"{namespace}/nodeport-guard-signing-public-keys",
                "NPG_KEY_REFRESH_SECONDS": "3600" if early else "1",
            },
        )
        webhook = WebhookServer(
            control_plane, installation, tmp_path / "webhook.log", register=False, extra_env=webhook_env
        )
        try:
            enforcer.start()
            webhook.start()
            enforcer.wait_ready()
            _wait(
                "signed with the first key",
                lambda: first.public.key_id in _stored(control_plane, app).get(SIGNATURE_KEY, ""),
            )
            _wait(
                "the verdict programmed",
                lambda: node.connect(CLIENT_A4, NODE_V4[0], app.node_port, timeout=0.3) == "timeout",
            )
            assert _trusted(enforcer) == {first.public.key_id}
            with Prober(node, app.node_port) as prober:
                # 0-1. A new pair; the ConfigMap gets it as current (the old one as previous), then the Secret.
                log = _certs("signing-key", "--dir", str(keys), "--new")
                second = read_signing_key(keys / "signing.pem")
                assert second.public.key_id in log
                log = _certs("install", *admin, "--signing-key-only", "--replace-signing-key")
                assert f"trusted key ids: {second.public.key_id}, {first.public.key_id}" in log
                both = {first.public.key_id, second.public.key_id}
                # 2. Every enforcer trusts both (here: within NPG_KEY_REFRESH_SECONDS), unless skipped.
                if early:
                    assert _trusted(enforcer) == {first.public.key_id}
                else:
                    _wait("the enforcer trusts both keys", lambda: _trusted(enforcer) == both)
                # 3. The webhook restarts with the new key; its reconciler re-signs.
                webhook.stop()
                webhook.start()
                _wait(
                    "re-signed with the new key",
                    lambda: second.public.key_id in _stored(control_plane, app).get(SIGNATURE_KEY, ""),
                )
                assert _stored(control_plane, app)[SIGNATURE_KEY] == second.sign(app.verdict_value().encode())
                _wait("the enforcer trusts both keys", lambda: _trusted(enforcer) == both, timeout=5.0)
                time.sleep(1.0)
                assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
                if not early:
                    # 4. The previous key is dropped.
                    _certs("install", *admin, "--signing-key-only", "--drop-previous-signing-key")
                    _wait("the enforcer trusts only the new key", lambda: _trusted(enforcer) == {second.public.key_id})
                    time.sleep(1.0)
                    assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 0
            opened = [t for t, r in prober.results if r != "timeout"]
            assert len(prober.results) >= 5 and not opened, prober.results
            if early:
                return
            # The retired key no longer signs anything the enforcer accepts.
            webhook.stop()
            _annotate(control_plane, app, {SIGNATURE_KEY: first.sign(app.verdict_value().encode())})
            _wait(
                "the old key's signature refused", lambda: _metric(enforcer, "nodeport_guard_rejected_annotations") == 1
            )
            events = control_plane.kubectl_json("get", "events", "-n", "kube-system")["items"]
            assert any(
                e["involvedObject"]["name"] == app.policy and first.public.key_id in e["message"] for e in events
            ), [e["message"] for e in events if e["involvedObject"]["name"] == app.policy]
        finally:
            webhook.stop()
            enforcer.stop()
            print(enforcer.log_tail(40))
            print(webhook.log_tail(20))
