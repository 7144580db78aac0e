"""No fault: policies churn while both clients probe. The harness must see leak 0, loss 0 and converge.

This is the control for every fault test: the prober, the churn driver and the convergence checker
measured on a healthy cluster.
"""

from __future__ import annotations

import time

from contract.signing import Signer
from localcluster.cluster import Cluster
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.convergence import wait_converged
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable


def test_no_fault_churn_leaks_nothing_loses_nothing_and_converges(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    with TrafficProber(cluster) as prober, ChurnDriver(cluster, ops=40, live=8) as churn:
        assert churn.wait(timeout=240), "the churn driver did not finish 40 operations in 240 s"
        stopped = time.time()
        converged = wait_converged(cluster, signer, timeout=120, since=stopped)
        time.sleep(1)  # a few more probes on the converged cluster
    summary = prober.summary()
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    fault_results.add(FaultResult("0 no fault (churn only)", summary.leak, summary.loss, converged.seconds,
                                  {"probes": summary.allowed_attempts + summary.denied_attempts,
                                   "churn ops": churn.done, "plan ports": converged.plan_ports}))
    assert churn.failures() == [], churn.failures()[:3]
    assert summary.denied_attempts > 100 and summary.allowed_answered > 100, summary.describe()
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
    assert converged.plan_ports >= 2, converged  # the probed NodePort is protected (tcp and udp, IPv4 at least)
