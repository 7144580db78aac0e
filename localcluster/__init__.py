"""A real two-node Kubernetes cluster inside network namespaces on this machine, for trying nodeport-guard.

`python -m localcluster up|down|status|env` (or `make cluster-up` / `make cluster-down`). Nothing in the
root network namespace, no machine-global sysctl and no cgroup mount is changed; `down` removes what
`up` made, also after a crash (the state file records it).
"""
