"""The faults tier (issue 12): faults injected on a real two-node cluster while clients probe and policies churn.

Harness (stable API, additive changes only):
- fixtures (conftest.py): `cluster` (package), `deployed`, `signer`, `baseline` (backends + policy
  `baseline-allow-a`: client-a allowed, client-b denied on every demo NodePort, programmed on both nodes),
  `fault_results` (a ResultTable: `.add(FaultResult(fault, leak, loss, convergence_s, detail))`);
- prober.py: `with TrafficProber(cluster) as p:` ... `p.summary(windows=[(t0, t1)], since=, until=)`
  -> ProbeSummary(leak, loss, ...); probes every 100 ms, TCP and UDP, NodePort 30080 on both nodes;
- churn.py: `ChurnDriver(cluster, ops=200, live=10, retry_for=120).start()` ... `.wait()` / `.stop()`,
  `.log`, `.failures()`; `delete_churn(cluster)`;
- convergence.py: `wait_converged(cluster, signer, timeout, since)` -> Convergence(seconds, ...),
  `problems(cluster, signer)` -> list of reasons (empty when converged);
- localcluster/faults.py: `restart_apiserver(name, flags, while_down)`, `restart_etcd(name)`, `compact_etcd(name)`.
Rows are printed at the end of the session and merged into .faults-results.json (git-ignored).
"""
