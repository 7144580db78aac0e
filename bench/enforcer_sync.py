"""Benchmarks 3 and 4: enforcer full sync vs a restore floor, and incremental sync, in a node netns (I/O)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench import data
from bench.enforcer_worker import run_in_node
from bench.stats import Figure, Floor, JsonScalar, Target, not_measured, ratios, summarize
from enforcer.plan import encode_state
from enforcer.policies import StoredPolicy, verify_policy
from tests.netns import Node, make_node
from webhook.contract import NODEPORTS_KEY, SIGNATURE_KEY, Annotation
from webhook.signing import VerifierKeys, legacy_hmac_signature

logger = logging.getLogger(__name__)

NAME = "enforcer"
PORTS = 10_000
ADDS = 30
ADD_BUDGET_SECONDS = 30.0  # each add re-verifies all 10,000 annotations: bound the count by time
WORKER_TIMEOUT = 300.0
REPEAT = 5
# 10,000 NodePorts do not fit the default range (30000-32767, 2,768 ports per protocol): the node
# and the enforcer are configured with a wider range, as --service-node-port-range allows.
NODEPORT_RANGE = (30000, 40999)
BACKENDS = ("legacy", "nft")
FULL_TARGET = Target("ratio", "<=", 2.0, "ratio <= 2 (ours / floor)")
INCR_MEDIAN = Target("median", "<=", 50.0, "median <= 50 ms")
INCR_P99 = Target("p99", "<=", 200.0, "p99 <= 200 ms")
VERIFY_POLICIES = 2_000
VERIFY_REPEAT = 5
NOTES = (
    f"Inside a fresh network namespace (tests/netns.py `make_node`), a worker process "
    f"(`bench/enforcer_worker.py`, run with `ip netns exec`) times with `perf_counter`. **Full sync**: "
    f"{PORTS:,} protected TCP/IPv4 NodePorts with 3 disjoint allowed prefixes each (NodePort range "
    f"{NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]} because 10,000 ports do not fit the default range), from "
    "empty: `Dataplane.sync` (read-back, diff, `ipset restore`, skeleton rules) vs the floor, "
    "`ipset restore` + `iptables-restore --noflush` loading the same final sets and rules; ours and the "
    f"floor alternate {REPEAT} times, everything removed before each load, and the installed state "
    "is read back and compared after each. **Incremental**: with 10,000 policies programmed, one "
    f"signed policy is added to the enforcer's PolicyStore at a time (up to {ADDS} times, at least 3, "
    f"stopping after {ADD_BUDGET_SECONDS:.0f} s) and "
    "`SyncLoop.sync_once` (verify the changed annotation's Ed25519 signature — the VerificationCache "
    "skips the unchanged ones —, plan, Dataplane.sync) is timed; the dataplane part alone is reported "
    "too. The legacy backend writes its rules through python-iptables, nft through iptables-nft-restore. "
    f"**Verification per policy**: `verify_policy` (Ed25519 signature, schema, binding, canonical form) "
    f"over {VERIFY_POLICIES:,} signed one-NodePort policies, {VERIFY_REPEAT} runs, in the benchmark "
    "process; the same annotations signed with the legacy HMAC are timed alongside (inputs), as is the "
    "implied full re-verification of 10,000 policies after a key change."
)


def _worker(node: Node, command: str, backend: str, *args: str) -> dict[str, Any]:
    answer = run_in_node(node.node_ns, node.lock_path, command, backend, NODEPORT_RANGE, *args, timeout=WORKER_TIMEOUT)
    if answer is None:
        raise RuntimeError(f"bench.enforcer_worker {command} printed no result")
    return answer


def expected_figures() -> list[Figure]:
    out = [not_measured(NAME, "Ed25519 verification per policy", "µs", None, "")]
    for backend in BACKENDS:
        out += [
            not_measured(NAME, f"full sync, 10,000 NodePorts ({backend})", "ms", FULL_TARGET, ""),
            not_measured(NAME, f"incremental sync_once, +1 policy on 10,000 ({backend})", "ms", INCR_MEDIAN, ""),
            not_measured(NAME, f"incremental sync_once p99 ({backend})", "ms", INCR_P99, ""),
            not_measured(NAME, f"incremental Dataplane.sync only ({backend})", "ms", INCR_MEDIAN, ""),
            not_measured(NAME, f"incremental verify + plan only ({backend})", "ms", INCR_MEDIAN, ""),
        ]
    return out


def _measure_backend(backend: str, workdir: Path) -> list[Figure]:
    state = data.protected_state(PORTS)
    state_file = workdir / f"state-{backend}.json"
    state_file.write_text(encode_state(state), encoding="utf-8")
    inputs: dict[str, JsonScalar] = {
        "backend": backend,
        "protected_nodeports": PORTS,
        "cidrs_per_port": 3,
        "nodeport_range": f"{NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}",
    }
    with make_node(lock_path=str(workdir / f"xtables-{backend}.lock")) as node:
        full = _worker(node, "full", backend, "--state-json", str(state_file), "--repeat", str(REPEAT))
        incr = _worker(
            node,
            "incremental",
            backend,
            "--policies",
            str(PORTS),
            "--adds",
            str(ADDS),
            "--budget-seconds",
            str(ADD_BUDGET_SECONDS),
        )
    ours_ms = [x * 1000 for x in full["ours"]]
    floor_ms = [x * 1000 for x in full["floor"]]
    full_fig = Figure(
        NAME,
        f"full sync, 10,000 NodePorts ({backend})",
        "ms",
        summarize(ours_ms),
        FULL_TARGET,
        Floor(
            f"`ipset restore` of the same {full['members']:,} set members + `iptables-{backend}-restore "
            "--noflush` of the same skeleton",
            summarize(floor_ms),
            summarize(ratios(ours_ms, floor_ms)),
        ),
        inputs={**inputs, "repeats": REPEAT},
    )
    incr_inputs: dict[str, JsonScalar] = {
        **inputs,
        "programmed_policies": PORTS,
        "policies_added": len(incr["sync_once"]),
        "initial_sync_once_seconds": round(float(incr["initial_seconds"]), 2),
    }
    totals = [x * 1000 for x in incr["sync_once"]]
    dataplane = [x * 1000 for x in incr["dataplane"]]
    return [
        full_fig,
        Figure(
            NAME,
            f"incremental sync_once, +1 policy on 10,000 ({backend})",
            "ms",
            summarize(totals),
            INCR_MEDIAN,
            inputs=incr_inputs,
        ),
        Figure(NAME, f"incremental sync_once p99 ({backend})", "ms", summarize(totals), INCR_P99, inputs=incr_inputs),
        Figure(
            NAME,
            f"incremental Dataplane.sync only ({backend})",
            "ms",
            summarize(dataplane),
            INCR_MEDIAN,
            inputs=incr_inputs,
            note="the dataplane part of the same syncs (read-back, diff, ipset add)",
        ),
        Figure(
            NAME,
            f"incremental verify + plan only ({backend})",
            "ms",
            summarize([t - d for t, d in zip(totals, dataplane, strict=True)]),
            INCR_MEDIAN,
            inputs=incr_inputs,
            note="sync_once minus Dataplane.sync: verification of the changed annotation, planning",
        ),
    ]


def _time_verification(policies: list[StoredPolicy], keys: VerifierKeys) -> list[float]:
    """Microseconds per policy of `verify_policy`, one sample per run; every policy must verify."""
    samples = []
    for _ in range(VERIFY_REPEAT):
        start = time.perf_counter()
        verified = sum(1 for p in policies if isinstance(verify_policy(p, keys), Annotation))
        samples.append((time.perf_counter() - start) / len(policies) * 1e6)
        if verified != len(policies):
            raise RuntimeError("verification benchmark: a policy did not verify")
    return samples


def verification_figure() -> Figure:
    """Ed25519 `verify_policy` per policy, with the legacy HMAC on the same values for comparison."""
    ed25519: list[StoredPolicy] = []
    hmac: list[StoredPolicy] = []
    hmac_key = b"bench-legacy-hmac-key-0123456789"
    for i in range(VERIFY_POLICIES):
        ref, annotations = data.signed_policy_annotations(i, NODEPORT_RANGE[0] + i)
        ed25519.append(StoredPolicy(ref.namespace, ref.name, ref.uid, "1", tuple(sorted(annotations.items()))))
        legacy = {**annotations, SIGNATURE_KEY: legacy_hmac_signature(hmac_key, annotations[NODEPORTS_KEY].encode())}
        hmac.append(StoredPolicy(ref.namespace, ref.name, ref.uid, "1", tuple(sorted(legacy.items()))))
    keys = data.BENCH_SIGNING_KEY.verifier()
    ours = _time_verification(ed25519, keys)
    legacy_us = summarize(_time_verification(hmac, VerifierKeys(keys.public_keys, (hmac_key,)))).median
    median = summarize(ours).median
    return Figure(
        NAME,
        "Ed25519 verification per policy",
        "µs",
        summarize(ours),
        None,
        inputs={
            "policies": VERIFY_POLICIES,
            "legacy_hmac_us_per_policy": round(legacy_us, 1),
            "full_reverify_10000_policies_ms": round(median * 10_000 / 1000, 1),
        },
        note="only changed annotations are verified (VerificationCache); all of them after a key change",
    )


def run(workdir: Path) -> list[Figure]:
    figures: list[Figure] = [verification_figure()]
    for backend in BACKENDS:
        figures += _measure_backend(backend, workdir)
    return figures
