"""The control-plane namespace: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (I/O).

All four run inside the control-plane network namespace; the root namespace reaches the
apiserver only through the relay (localcluster.relay) on a loopback port.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from localcluster.build import ControlPlaneBinaries, NodeBinaries
from localcluster.network import in_netns
from localcluster.plan import (
    APISERVER_PORT,
    CLUSTER_CIDRS,
    CP_V4,
    CP_V6,
    NODEPORT_RANGE,
    SERVICE_CIDRS,
    ClusterPlan,
)
from localcluster.procs import StartError, http_ok, spawn, wait_until
from localcluster.state import State

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of the files localcluster.pki produced, in the cluster's pki/ directory."""

    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_control_plane(
    state: State, plan: ClusterPlan, cp: ControlPlaneBinaries, node: NodeBinaries, pki: Pki
) -> str:
    """Start the four daemons and the relay; return the apiserver URL as seen from the root namespace."""
    logs = state.dir / "logs"
    ns = plan.cp_netns
    etcd_log = logs / "etcd.log"
    etcd = spawn(
        state,
        in_netns(ns, [
            str(cp.etcd), "--data-dir", str(state.dir / "etcd"), "--name", "localcluster",
            "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "localcluster=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level", "warn",
        ]),
        etcd_log,
        "etcd",
    )
    api_log = logs / "kube-apiserver.log"
    apiserver = spawn(
        state,
        in_netns(ns, [
            str(cp.kube_apiserver),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={CP_V4}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--kubelet-client-certificate={pki['admin.crt']}",
            f"--kubelet-client-key={pki['admin.key']}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer=https://{CP_V4}:{APISERVER_PORT}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-cluster-ip-range={','.join(SERVICE_CIDRS)}",
            f"--service-node-port-range={NODEPORT_RANGE}",
            "--allow-privileged=true",
            # The apiserver dials a webhook Service's endpoint pod directly (routes to the pod CIDRs).
            "--enable-aggregator-routing=true",
            "--enable-admission-plugins=NodeRestriction",
            f"--cert-dir={state.dir / 'apiserver-certs'}",
            "--v=1",
        ]),
        api_log,
        "kube-apiserver",
    )
    relay_port = free_port()
    relay = spawn(
        state,
        [sys.executable, "-m", "localcluster.relay", str(relay_port), ns, CP_V4, str(APISERVER_PORT)],
        logs / "relay.log",
        "relay",
    )
    url = f"https://127.0.0.1:{relay_port}"
    ctx = ssl.create_default_context(cafile=pki["ca.crt"])
    ctx.load_cert_chain(pki["admin.crt"], pki["admin.key"])
    wait_until("etcd", lambda: etcd.poll() is None, 1, etcd, etcd_log)
    wait_until("kube-apiserver", lambda: http_ok(f"{url}/readyz", ctx), 120, apiserver, api_log)
    if relay.poll() is not None:
        raise StartError("the apiserver relay exited")
    kcm_log = logs / "kube-controller-manager.log"
    spawn(
        state,
        in_netns(ns, [
            str(node.kube_controller_manager),
            f"--kubeconfig={state.dir / 'kubeconfigs' / 'kube-controller-manager.kubeconfig'}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}",
            f"--cluster-cidr={','.join(CLUSTER_CIDRS)}",
            f"--service-cluster-ip-range={','.join(SERVICE_CIDRS)}",
            # Node pod CIDRs are set by `up` (fixed per node, so routes can be made up front).
            "--allocate-node-cidrs=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--v=1",
        ]),
        kcm_log,
        "kube-controller-manager",
    )
    spawn(
        state,
        in_netns(ns, [
            str(node.kube_scheduler),
            f"--kubeconfig={state.dir / 'kubeconfigs' / 'kube-scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={state.dir / 'kubeconfigs' / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={state.dir / 'kubeconfigs' / 'kube-scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--v=1",
        ]),
        logs / "kube-scheduler.log",
        "kube-scheduler",
    )
    logger.info("control plane of %s ready at %s (in netns %s, %s/%s)", plan.name, url, ns, CP_V4, CP_V6)
    return url


def kubectl_argv(kubectl: Path, kubeconfig: Path, *args: str) -> list[str]:
    return [str(kubectl), "--kubeconfig", str(kubeconfig), *args]


def kubectl(kubectl_bin: Path, kubeconfig: Path, *args: str, stdin: str | None = None,
            check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        kubectl_argv(kubectl_bin, kubeconfig, *args), input=stdin, capture_output=True, text=True, check=False,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise StartError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc
