"""Start and stop a real etcd + kube-apiserver on loopback (envtest-style), with real TLS and RBAC.

Used by the pytest session fixture and by `make demo`. Children get PR_SET_PDEATHSIG so that
even a killed test run leaves no control-plane process behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.controlplane.build import ControlPlaneBinaries, ensure_binaries
from tests.controlplane.pki import build_pki

logger = logging.getLogger(__name__)

NODEPORT_RANGE = "30000-32767"
# Documentation ranges only: ClusterIPs are just allocated values here (no kube-proxy).
SERVICE_CIDRS = "192.0.2.0/24,2001:db8:ffff::/112"
PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    pass


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when we die.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, ctx: ssl.SSLContext | None, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlPlaneError(f"{log.stem} exited with {proc.returncode}; log tail:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310 - loopback URL we built
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ControlPlaneError(f"{url} not ready after {timeout}s ({last}); log tail:\n{log_tail(log)}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ControlPlane:
    """A running control plane; `kubeconfig` is an admin (system:masters) kubeconfig."""

    binaries: ControlPlaneBinaries
    workdir: Path
    apiserver_port: int = 0
    etcd_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        pki = build_pki()
        files = {
            "ca.crt": pki.ca.cert,
            "serving.crt": pki.serving.cert,
            "serving.key": pki.serving.key,
            "admin.crt": pki.admin.cert,
            "admin.key": pki.admin.key,
            "sa.key": pki.service_account_key,
            "sa.pub": pki.service_account_pub,
        }
        for name, data in files.items():
            (self.workdir / name).write_bytes(data)
            (self.workdir / name).chmod(0o600)
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig(pki.admin.cert, pki.admin.key, pki.ca.cert)

    def _spawn(self, args: list[str], log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / log_name
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc, log

    def _start_etcd(self) -> None:
        for _attempt in range(3):
            self.etcd_port, peer = free_port(), free_port()
            data = self.workdir / "etcd-data"
            shutil.rmtree(data, ignore_errors=True)
            client = f"http://127.0.0.1:{self.etcd_port}"
            proc, log = self._spawn(
                [
                    str(self.binaries.etcd),
                    "--data-dir",
                    str(data),
                    "--name",
                    "npg",
                    "--listen-client-urls",
                    client,
                    "--advertise-client-urls",
                    client,
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-cluster",
                    f"npg=http://127.0.0.1:{peer}",
                    "--unsafe-no-fsync",
                    "--log-level",
                    "warn",
                    "--quota-backend-bytes",
                    str(4 << 30),
                ],
                "etcd.log",
            )
            try:
                _wait_http(f"{client}/health", None, 30, proc, log)
                return
            except ControlPlaneError:
                self._stop_process(proc)
                if "address already in use" not in log_tail(log):
                    raise
        raise ControlPlaneError("etcd could not get a free port after 3 attempts")

    def _start_apiserver(self) -> None:
        w = self.workdir
        for _attempt in range(3):
            self.apiserver_port = free_port()
            proc, log = self._spawn(
                [
                    str(self.binaries.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--etcd-prefix=/nodeport-guard-test",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.apiserver_port}",
                    "--advertise-address=127.0.0.1",
                    f"--tls-cert-file={w / 'serving.crt'}",
                    f"--tls-private-key-file={w / 'serving.key'}",
                    f"--client-ca-file={w / 'ca.crt'}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer=https://127.0.0.1:{self.apiserver_port}",
                    f"--service-account-signing-key-file={w / 'sa.key'}",
                    f"--service-account-key-file={w / 'sa.pub'}",
                    f"--service-cluster-ip-range={SERVICE_CIDRS}",
                    f"--service-node-port-range={NODEPORT_RANGE}",
                    "--allow-privileged=true",
                    "--endpoint-reconciler-type=none",
                    # No controller-manager creates 'default' ServiceAccounts here (as in envtest).
                    "--disable-admission-plugins=ServiceAccount",
                    "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                    f"--cert-dir={w / 'apiserver-certs'}",
                    "--v=1",
                ],
                "kube-apiserver.log",
            )
            ctx = ssl.create_default_context(cafile=str(w / "ca.crt"))
            ctx.load_cert_chain(str(w / "admin.crt"), str(w / "admin.key"))
            try:
                _wait_http(f"{self.url}/readyz", ctx, 90, proc, log)
                return
            except ControlPlaneError:
                self._stop_process(proc)
                if "address already in use" not in log_tail(log, 200):
                    raise
        raise ControlPlaneError("kube-apiserver could not get a free port after 3 attempts")

    def _write_kubeconfig(self, cert: bytes, key: bytes, ca: bytes) -> None:
        write_kubeconfig(
            self.kubeconfig,
            self.url,
            ca,
            user={
                "client-certificate-data": base64.b64encode(cert).decode(),
                "client-key-data": base64.b64encode(key).decode(),
            },
        )

    @staticmethod
    def _stop_process(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            self._stop_process(proc)
        self.processes.clear()

    # --- clients -----------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        from kubernetes import client, config

        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=client.Configuration()
        )

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, duration: str = "2h") -> Path:
        """Create the ServiceAccount (if needed), mint a token for it and write a kubeconfig using it."""
        self.kubectl("create", "serviceaccount", name, "-n", namespace, check=False)
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        write_kubeconfig(path, self.url, self.ca_file.read_bytes(), user={"token": token})
        return path


def write_kubeconfig(path: Path, server: str, ca: bytes, user: dict[str, str]) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "local",
    }
    # JSON is valid YAML, so kubectl and the Python client read it as a kubeconfig.
    path.write_text(json.dumps(cfg, indent=1))
    path.chmod(0o600)


@contextlib.contextmanager
def running_control_plane(binaries: ControlPlaneBinaries | None = None) -> Iterator[ControlPlane]:
    binaries = binaries or ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="npg-controlplane-"))
    plane = ControlPlane(binaries=binaries, workdir=workdir)
    try:
        started = time.monotonic()
        plane.start()
        logger.info("control plane ready at %s in %.1fs", plane.url, time.monotonic() - started)
        yield plane
    finally:
        plane.stop()
        if os.environ.get("NPG_KEEP_CONTROLPLANE_DIR"):
            logger.warning("kept control plane dir %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
