"""The convergence checker: are the stored annotations true and every node's rules equal to their plan? (I/O)

Computed with the product's own pure modules, from what the apiserver stores right now:
- every NetworkPolicy outside the excluded namespaces must carry exactly the annotations the webhook
  would write now (webhook.admission.resolve_all_annotations over a snapshot of the stored Services,
  Pods and policies, signed with the deployment's own key: Ed25519 signatures are deterministic), and
  each must verify with the public keys the enforcers read and be bound to the policy's uid;
- every node's installed ipsets (read inside the node's namespaces) must enforce exactly
  enforcer.plan.plan_desired_state of those verified annotations, and the node must hold our
  iptables chain for each family the plan protects.
`wait_converged` measures the time until all of that holds.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.store import CertsDir
from contract.annotation import owned_keys
from contract.signing import Signer, VerifierKeys, public_keys_from_data
from enforcer.plan import DesiredState, plan_desired_state
from enforcer.policies import trim_policy as enforcer_trim_policy
from enforcer.policies import verify_policies
from enforcer.sets import parse_installed_state, parse_ipset_save
from localcluster.cluster import Cluster
from webhook.admission import resolve_all_annotations
from webhook.cache import trim_pod, trim_policy, trim_service
from webhook.snapshot import StaticClusterView

EXCLUDED = ("kube-system", "nodeport-guard")
PUBLIC_KEYS = ("nodeport-guard", "nodeport-guard-signing-public-keys")
SAVE_TOOLS = {4: ("iptables-legacy-save", "iptables-nft-save"), 6: ("ip6tables-legacy-save", "ip6tables-nft-save")}


def load_signer(certs_dir: Path) -> Signer:
    signer = CertsDir(certs_dir).read_signing_key()
    if signer is None:
        raise AssertionError(f"{certs_dir}: no signing.pem (make deploy writes it there)")
    return signer


@dataclass(frozen=True, slots=True)
class StoredObjects:
    policies: tuple[dict[str, Any], ...]
    services: tuple[dict[str, Any], ...]
    pods: tuple[dict[str, Any], ...]


def read_stored(cluster: Cluster) -> StoredObjects:
    items = cluster.kubectl_json("get", "networkpolicies,services,pods", "-A")["items"]

    def of(kind: str) -> tuple[dict[str, Any], ...]:
        return tuple(i for i in items if i.get("kind") == kind and i["metadata"]["namespace"] not in EXCLUDED)

    return StoredObjects(of("NetworkPolicy"), of("Service"), of("Pod"))


def annotation_problems(stored: StoredObjects, signer: Signer, keys: VerifierKeys) -> list[str]:
    """Pure: why the stored annotations are not what the webhook would write now (empty: they are)."""
    view = StaticClusterView([trim_service(s) for s in stored.services], [trim_pod(p) for p in stored.pods],
                             [trim_policy(p) for p in stored.policies])
    problems: list[str] = []
    by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in stored.policies}
    for namespace in sorted({ns for ns, _ in by_name}):
        for name, desired in sorted(resolve_all_annotations(namespace, view, signer).items()):
            annotations = by_name[(namespace, name)]["metadata"].get("annotations") or {}
            have = {k: annotations[k] for k in owned_keys(annotations)}
            if have != (desired or {}):
                problems.append(f"{namespace}/{name}: stored annotations {sorted(have)} differ from what the "
                                f"webhook writes now ({sorted(desired or {})})")
    verified = verify_policies([enforcer_trim_policy(p) for p in stored.policies], keys)
    problems += [f"{r.namespace}/{r.name}: annotation refused: {r.reason}" for r in verified.rejected]
    for a in verified.annotations:
        uid = by_name[(a.policy.namespace, a.policy.name)]["metadata"]["uid"]
        if a.policy.uid != uid:
            problems.append(f"{a.policy.namespace}/{a.policy.name}: signed for uid {a.policy.uid!r}, not {uid!r}")
    return problems


def planned_state(stored: StoredObjects, keys: VerifierKeys) -> DesiredState:
    """Pure: what every enforcer must program for the stored annotations."""
    verified = verify_policies([enforcer_trim_policy(p) for p in stored.policies], keys)
    return plan_desired_state(verified.annotations).state


def verifier_keys(cluster: Cluster) -> VerifierKeys:
    namespace, name = PUBLIC_KEYS
    data = cluster.kubectl_json("-n", namespace, "get", "configmap", name).get("data") or {}
    return VerifierKeys(public_keys_from_data(data, f"ConfigMap {namespace}/{name}"))


def installed_state(cluster: Cluster, node: str) -> DesiredState:
    sets = parse_ipset_save(cluster.on_node(node, ["ipset", "save"]).stdout)
    installed = parse_installed_state(sets)
    return DesiredState.from_mapping(installed.as_dict())


def node_problems(cluster: Cluster, plan: DesiredState, nodes: Iterable[str], rules: bool) -> list[str]:
    problems: list[str] = []
    want = plan.as_dict()
    for node in nodes:
        have = installed_state(cluster, node).as_dict()
        if have != want:
            missing = sorted(str(k) for k in set(want) - set(have))
            extra = sorted(str(k) for k in set(have) - set(want))
            differ = sorted(str(k) for k in set(want) & set(have) if want[k] != have[k])
            problems.append(f"{node}: ipsets differ from the plan: missing {missing[:5]}, extra {extra[:5]}, "
                            f"other sources {differ[:5]}")
            continue
        if not rules:
            continue
        for family in {k.family for k in want}:
            lines = [line for tool in SAVE_TOOLS[family]
                     for line in cluster.on_node(node, [tool], check=False).stdout.splitlines()]
            if not any("NPG-INGRESS" in line for line in lines):
                problems.append(f"{node}: the plan protects IPv{family} ports but no NPG-INGRESS chain is installed")
    return problems


def problems(cluster: Cluster, signer: Signer, keys: VerifierKeys | None = None, rules: bool = True) -> list[str]:
    """Why the cluster has not converged (empty: it has)."""
    keys = keys or verifier_keys(cluster)
    stored = read_stored(cluster)
    found = annotation_problems(stored, signer, keys)
    found += node_problems(cluster, planned_state(stored, keys), [n.name for n in cluster.plan.nodes], rules)
    return found


@dataclass(frozen=True, slots=True)
class Convergence:
    seconds: float  # from `since` until the first check that found nothing wrong
    checks: int
    plan_ports: int  # protected (family, protocol, port) keys of the converged plan


def wait_converged(cluster: Cluster, signer: Signer, timeout: float = 120, since: float | None = None,
                   interval: float = 0.5) -> Convergence:
    """Poll until converged; seconds counted from `since` (time.time()), default now. Raises
    AssertionError with the last problems when `timeout` passes first."""
    start = time.time() if since is None else since
    deadline = time.monotonic() + timeout
    checks = 0
    last: list[str] = []
    while True:
        checks += 1
        try:
            keys = verifier_keys(cluster)
            last = problems(cluster, signer, keys, rules=False)
            if not last:
                last = problems(cluster, signer, keys, rules=True)
            if not last:
                done = time.time()
                stored = read_stored(cluster)
                ports = len(planned_state(stored, keys).ports)
                return Convergence(round(done - start, 2), checks, ports)
        except (RuntimeError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            # The apiserver may be down during a fault: keep polling.
            last = [f"could not read the cluster: {exc}"]
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged after {timeout:.0f}s ({checks} checks): " + "; ".join(last[:10]))
        time.sleep(interval)
