"""Fault 6: a node cut off from the apiserver for 60 s (both directions of its TCP with the apiserver
blackholed inside the node's namespace) while policies are created and deleted.

Its rules must stay exactly as last programmed, its enforcer must report not ready (it can no longer
know whether its plan is current), and once the route is back it must converge, changes made while it
was cut off included, within one resync period (30 s). Both clients probe both nodes the whole time.
"""

from __future__ import annotations

import time

from contract.signing import Signer
from localcluster.cluster import Cluster
from localcluster.node_faults import cut_off, reconnect, wait_for
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.convergence import installed_state, wait_converged
from tests.faults.node_checks import enforcer_readyz
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable

NODE, OTHER = "node1", "node2"
CUT_SECONDS = 60
RESYNC_SECONDS = 30  # NPG_RESYNC_SECONDS in manifests/base/enforcer.yaml


def test_node_cut_off_keeps_its_rules_is_not_ready_and_converges_after(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    wait_converged(cluster, signer, timeout=120)
    wait_for(f"{NODE} enforcer ready", lambda: enforcer_readyz(cluster, NODE)[0] == 200, 60)
    before = installed_state(cluster, NODE)
    not_ready: tuple[float, str] | None = None
    other_codes: set[int] = set()
    with TrafficProber(cluster) as prober:
        cut_off(cluster, NODE)
        cut_at = time.time()
        try:
            with ChurnDriver(cluster, ops=16, live=4, pause=2.0, seed=6) as churn:
                while time.time() < cut_at + CUT_SECONDS:
                    code, body = enforcer_readyz(cluster, NODE)
                    if code != 200 and not_ready is None:
                        not_ready = (time.time() - cut_at, body)
                    other_codes.add(enforcer_readyz(cluster, OTHER)[0])
                    time.sleep(1)
                during = installed_state(cluster, NODE)
                assert churn.wait(timeout=120), "the churn driver did not finish its 16 operations"
        finally:
            reconnect(cluster, NODE)
        back = time.time()
        converged = wait_converged(cluster, signer, timeout=120, since=back)
        ready_again = wait_for(f"{NODE} enforcer ready again", lambda: enforcer_readyz(cluster, NODE)[0] == 200, 60)
        time.sleep(1)
    summary = prober.summary()
    changes = [o for o in churn.log if o.ok and cut_at <= o.t <= back]
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    fault_results.add(FaultResult(
        "6 node cut off from the apiserver 60 s", summary.leak, summary.loss, converged.seconds,
        {"not ready after s": None if not_ready is None else round(not_ready[0], 1),
         "ready again after s": round(ready_again, 1), "changes while cut off": len(changes),
         "probes": summary.allowed_attempts + summary.denied_attempts}))
    assert during == before, f"{NODE}'s rules changed while it was cut off: {before} -> {during}"
    assert not_ready is not None, f"{NODE}'s enforcer kept reporting ready for the whole {CUT_SECONDS} s cut"
    assert not_ready[0] <= 30, f"{NODE}'s enforcer reported not ready only after {not_ready[0]:.0f} s"
    assert "apiserver" in not_ready[1], f"the not-ready answer does not say why: {not_ready[1]!r}"
    assert other_codes == {200}, f"{OTHER}'s enforcer (not cut off) was not ready at times: {other_codes}"
    assert len(changes) >= 4, f"only {len(changes)} policy changes were made while {NODE} was cut off"
    assert converged.seconds <= RESYNC_SECONDS, (
        f"{NODE} converged {converged.seconds:.1f} s after the route returned (bound: one resync, "
        f"{RESYNC_SECONDS} s)")
    assert summary.denied_attempts > 100 and summary.allowed_answered > 100, summary.describe()
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
