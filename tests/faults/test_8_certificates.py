"""Fault 8: the webhook's serving certificate, then its CA, rotated with `python -m certs rotate` under
a steady admission load: not one admission may fail.

The load is the churn driver without retries (every failed create or delete counts), about five
NetworkPolicy writes a second, all admitted by the webhook (failurePolicy Fail). Each step waits
until both webhook pods really serve the new certificate (read with a TLS handshake from the
control plane's namespace, where the apiserver dials them).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from contract.signing import Signer
from localcluster.cluster import Cluster
from tests.cluster.helpers import Deployment, user_env
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.cluster_ops import WEBHOOK, pods, wait_for
from tests.faults.convergence import wait_converged
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable

REPO = Path(__file__).resolve().parents[2]


def _certs(cluster: Cluster, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "certs", *args], cwd=REPO, env=user_env(cluster),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"python -m certs {' '.join(args)}: {proc.stderr}"
    return proc.stderr


def _served(cluster: Cluster) -> dict[str, bytes]:
    """The DER certificate each ready webhook pod presents, by pod name."""
    served: dict[str, bytes] = {}
    for pod in pods(cluster, WEBHOOK):
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        argv = ["nsenter", f"--net=/run/netns/{cluster.plan.cp_netns}", "--", sys.executable, "-m",
                "tests.faults.tls_peek", ip, "8443"]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=30)
        if proc.returncode == 0:
            served[pod["metadata"]["name"]] = _der(proc.stdout.encode())
    return served


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _local_cert(certs_dir: Path) -> bytes:
    return _der((certs_dir / "tls.crt").read_bytes())


def _ca_bundles(cluster: Cluster) -> set[str]:
    kinds = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
    return {h["clientConfig"]["caBundle"] for kind in kinds
            for h in cluster.kubectl_json("get", kind, "nodeport-guard")["webhooks"]}


def _all_serve(cluster: Cluster, cert: bytes) -> bool:
    served = _served(cluster)
    return len(served) >= 2 and set(served.values()) == {cert}


def test_serving_certificate_and_ca_rotated_under_admission_load_fail_no_admission(
    cluster: Cluster, baseline: str, signer: Signer, deployed: Deployment, fault_results: ResultTable
) -> None:
    certs_dir, kubeconfig = str(deployed.certs_dir), str(cluster.kubeconfig)
    before = _local_cert(deployed.certs_dir)
    assert _all_serve(cluster, before)
    with TrafficProber(cluster) as prober, ChurnDriver(cluster, live=10, pause=0.1, retry_for=0, seed=8) as churn:
        wait_for("10 admissions", lambda: churn.done >= 10, 120)
        started = time.time()
        _certs(cluster, "rotate", "--dir", certs_dir, "--kubeconfig", kubeconfig, "--force")
        reissued = _local_cert(deployed.certs_dir)
        assert reissued != before
        serving_s = wait_for("both webhook pods serve the re-issued certificate",
                             lambda: _all_serve(cluster, reissued), 300, interval=1)
        ca_before = (deployed.certs_dir / "ca.crt").read_bytes()
        log = _certs(cluster, "rotate", "--dir", certs_dir, "--kubeconfig", kubeconfig, "--ca")
        assert (deployed.certs_dir / "ca.crt").read_bytes() != ca_before
        assert "--drop-previous-ca" in log
        new_ca_cert = _local_cert(deployed.certs_dir)
        ca_s = wait_for("both webhook pods serve the certificate of the new CA",
                        lambda: _all_serve(cluster, new_ca_cert), 300, interval=1)
        _certs(cluster, "rotate", "--dir", certs_dir, "--kubeconfig", kubeconfig, "--drop-previous-ca")
        done = churn.done
        wait_for("30 admissions after the old CA was dropped", lambda: churn.done >= done + 30, 120)
        churn.stop()
        ended = time.time()
        converged = wait_converged(cluster, signer, timeout=180, since=ended)
    summary = prober.summary()
    during = [o for o in churn.log if o.t >= started]
    delete_churn(cluster)
    fault_results.add(FaultResult(
        "8 serving cert + CA rotated under admission load", summary.leak, summary.loss, converged.seconds,
        {"writes during rotation": len(during), "failed": len(churn.failures()),
         "cert reload s": round(serving_s, 1), "new-CA cert reload s": round(ca_s, 1)}))
    assert churn.failures() == [], churn.failures()[:3]
    assert len(during) > 50, len(during)
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
    # Finished: only the new CA is trusted.
    assert _ca_bundles(cluster) == {base64.b64encode((deployed.certs_dir / "ca.crt").read_bytes()).decode()}
