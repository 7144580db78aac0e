"""Run nodeport-guard's own components against the local control plane, as a cluster would.

`install_manifests` applies `manifests/` for real, installs certs and secrets with the certs
tool, and points both webhook configurations at a local URL (as envtest rewrites `service`
references). `WebhookServer` runs the webhook under gunicorn + TLS with its ServiceAccount
token; `EnforcerProcess` runs the enforcer inside a node network namespace with its own token.
Used by the integration/e2e tests and by `make demo`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from contract.signing import Signer, VerifierKeys, parse_private_key_pem
from tests.controlplane.harness import ControlPlane, ControlPlaneError, free_port, log_tail, write_kubeconfig

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "nodeport-guard"
WEBHOOK_CONFIGS = (("mutatingwebhookconfiguration", "/mutate"), ("validatingwebhookconfiguration", "/validate"))


@dataclass(frozen=True, slots=True)
class Installation:
    certs_dir: Path
    webhook_kubeconfig: Path
    enforcer_kubeconfig: Path

    @property
    def signing_key(self) -> Signer:
        """The webhook's Ed25519 private key (tests sign with it to play the webhook)."""
        path = self.certs_dir / "signing.pem"
        return parse_private_key_pem(path.read_bytes(), str(path))

    @property
    def verifier_keys(self) -> VerifierKeys:
        """What an enforcer trusts after this installation: the public key only."""
        return self.signing_key.verifier()


def run_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"python {' '.join(args)} failed: {proc.stderr or proc.stdout}")
    return proc


def run_kubectl_plugin(
    plane: ControlPlane, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`kubectl nodeport-guard ...` as a user runs it: kubectl finds our plugin on PATH, KUBECONFIG passes on."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig or plane.kubeconfig),
    }
    return subprocess.run(
        [str(plane.binaries.kubectl), "nodeport-guard", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def delete_namespaced_objects(plane: ControlPlane, namespace: str) -> None:
    """Free what a test namespace holds (Services hold ClusterIPs and nodePorts), then the namespace.

    Without a namespace controller a deleted namespace never finishes terminating: tests use fresh names.
    """
    plane.kubectl(
        "delete",
        "services,networkpolicies,pods",
        "--all",
        "-n",
        namespace,
        "--wait=true",
        "--grace-period=0",
        "--force",
        check=False,
    )
    plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def install_manifests(plane: ControlPlane, workdir: Path) -> Installation:
    certs_dir = workdir / "certs"
    run_python("-m", "certs", "generate", "--out", str(certs_dir), "--ip", "127.0.0.1")
    plane.kubectl("apply", "-k", str(REPO / "manifests"))
    run_python("-m", "certs", "install", "--kubeconfig", str(plane.kubeconfig), "--dir", str(certs_dir))
    return Installation(
        certs_dir=certs_dir,
        webhook_kubeconfig=plane.service_account_kubeconfig(
            NAMESPACE, "nodeport-guard-webhook", workdir / "webhook.kubeconfig"
        ),
        enforcer_kubeconfig=plane.service_account_kubeconfig(
            NAMESPACE, "nodeport-guard-enforcer", workdir / "enforcer.kubeconfig"
        ),
    )


def point_webhooks_at(plane: ControlPlane, base_url: str, ca_bundle: bytes) -> None:
    """Rewrite both webhook configurations' clientConfig from the in-cluster Service to a local URL."""
    for kind, path in WEBHOOK_CONFIGS:
        current = plane.kubectl_json("get", kind, "nodeport-guard")
        patch = [
            {
                "op": "replace",
                "path": f"/webhooks/{i}/clientConfig",
                "value": {"url": base_url + path, "caBundle": base64.b64encode(ca_bundle).decode()},
            }
            for i in range(len(current["webhooks"]))
        ]
        plane.kubectl("patch", kind, "nodeport-guard", "--type=json", "-p", json.dumps(patch))


def remove_webhooks(plane: ControlPlane) -> None:
    # A configuration left behind with failurePolicy Fail would wedge every later policy write.
    for kind, _ in WEBHOOK_CONFIGS:
        plane.kubectl("delete", kind, "nodeport-guard", "--ignore-not-found", check=False)


@dataclass
class WebhookServer:
    plane: ControlPlane
    install: Installation
    log_path: Path
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # False: do not point the webhook configurations at this server (a second webhook whose
    # reconciler alone is wanted, next to the session's registered one).
    register: bool = True

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        c = self.install.certs_dir
        env = {
            **os.environ,
            "NPG_BIND": f"127.0.0.1:{self.port}",
            "NPG_TLS_CERT_FILE": str(c / "tls.crt"),
            "NPG_TLS_KEY_FILE": str(c / "tls.key"),
            "NPG_SIGNING_KEY_FILE": str(c / "signing.pem"),
            "NPG_KUBECONFIG": str(self.install.webhook_kubeconfig),
            "NPG_LEASE_NAMESPACE": NAMESPACE,
            "NPG_POD_NAME": "local-webhook",
            "NPG_CERT_POLL_SECONDS": "1",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webhook", "serve"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        if self.register:
            point_webhooks_at(self.plane, self.url, (c / "ca.crt").read_bytes())

    def wait_ready(self, timeout: float = 30) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.install.certs_dir / "ca.crt"))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ControlPlaneError(f"webhook exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"webhook not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class EnforcerProcess:
    """The enforcer running inside a node network namespace, reaching the apiserver through a relay."""

    plane: ControlPlane
    install: Installation
    netns: str
    log_path: Path
    workdir: Path
    backend: str = "legacy"
    resync_seconds: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[str] | None = None
    metrics_port: int = 0

    def start(self) -> None:
        self._stop_relay()  # a restart (after kill) gets a fresh relay; the old one must not linger
        relay_port = free_port()
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "tests.netns_bridge", self.netns, str(relay_port), str(self.plane.apiserver_port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != "ready":
            raise ControlPlaneError("netns relay did not start")
        token = json.loads(self.install.enforcer_kubeconfig.read_text())["users"][0]["user"]["token"]
        kubeconfig = self.workdir / f"enforcer-{self.netns}.kubeconfig"
        write_kubeconfig(
            kubeconfig, f"https://127.0.0.1:{relay_port}", self.plane.ca_file.read_bytes(), {"token": token}
        )
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "NPG_KUBECONFIG": str(kubeconfig),
            "NPG_NODE_NAME": self.netns,
            "NPG_PUBLIC_KEYS_CONFIGMAP": f"{NAMESPACE}/nodeport-guard-signing-public-keys",
            "NPG_BACKEND": self.backend,
            "NPG_RESYNC_SECONDS": str(self.resync_seconds),
            "NPG_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
            "NPG_XTABLES_LOCK": str(self.xtables_lock),
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "enforcer", "run"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def http_get(self, path: str) -> tuple[int, str]:
        """GET on the enforcer's probe port (inside the node namespace)."""
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                "-c",
                "import sys,urllib.request,urllib.error\n"
                "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=3);print(r.status);print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code);print(e.read().decode())\n"
                "except OSError as e:\n print(0);print(e)\n",
                f"http://127.0.0.1:{self.metrics_port}{path}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
        status, _, body = proc.stdout.partition("\n")
        return int(status or 0), body

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ControlPlaneError(f"enforcer exited ({self.process.returncode}):\n{self.log_tail()}")
            if self.http_get("/readyz")[0] == 200:
                return
            time.sleep(0.3)
        raise ControlPlaneError(f"enforcer not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    @property
    def xtables_lock(self) -> Path:
        # Per node: nothing of ours ever holds the host's /run/xtables.lock.
        return self.workdir / f"xtables-{self.netns}.lock"

    def cleanup_node(self) -> subprocess.CompletedProcess[str]:
        """`nodeport-guard-enforcer cleanup` in the node namespace: the documented uninstall step."""
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "env",
                f"NPG_XTABLES_LOCK={self.xtables_lock}",
                sys.executable,
                "-m",
                "enforcer",
                "cleanup",
                "--backend",
                self.backend,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def kill(self) -> None:
        """kill -9, as a crashed or OOM-killed pod would die."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stop_relay()

    def _stop_relay(self) -> None:
        if self.relay and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait()
        if self.relay and self.relay.stdout:
            self.relay.stdout.close()
        self.relay = None
