"""Benchmarks 3 and 4: enforcer full sync vs a restore floor, and incremental sync vs total policies (a curve) (I/O)."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data
from bench.enforcer_worker import run_in_node, start_in_node
from bench.stats import Figure, Floor, JsonScalar, Target, not_measured, ratios, summarize
from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY, Annotation
from contract.signing import VerifierKeys, legacy_hmac_signature
from enforcer.plan import encode_state
from enforcer.policies import StoredPolicy, verify_policy
from tests.netns import Node, make_node

logger = logging.getLogger(__name__)

NAME = "enforcer"
PORTS = 10_000
CURVE = (1_000, 10_000, 50_000)  # total policies
CURVE_MAX_PORTS = 10_000  # N policies over min(N, 10,000) NodePorts: 5 policies per NodePort at 50,000
CURVE_ROUNDS = 30  # each round: one policy added, one changed, one removed, at every N in turn
WORKER_TIMEOUT = 300.0
REPEAT = 5
# 10,000 NodePorts do not fit the default range (30000-32767, 2,768 ports per protocol): the node
# and the enforcer are configured with a wider range, as --service-node-port-range allows.
NODEPORT_RANGE = (30000, 40999)
BACKENDS = ("legacy", "nft")
FULL_TARGET = Target("ratio", "<=", 2.0, "ratio <= 2 (ours / floor)")
INCR_MEDIAN = Target("median", "<=", 10.0, "median <= 10 ms")
INCR_P99 = Target("p99", "<=", 200.0, "p99 <= 200 ms")
VERIFY_POLICIES = 2_000
VERIFY_REPEAT = 5
CURVE_RATIO = Target("ratio", "<=", 1.5, "ratio <= 1.5 (50,000 / 1,000 policies)")
NOTES = (
    f"Inside a fresh network namespace (tests/netns.py `make_node`), a worker process "
    f"(`bench/enforcer_worker.py`, run with `ip netns exec`) times with `perf_counter`. **Full sync**: "
    f"{PORTS:,} protected TCP/IPv4 NodePorts with 3 disjoint allowed prefixes each (NodePort range "
    f"{NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]} because 10,000 ports do not fit the default range), from "
    "empty: `Dataplane.sync` (read-back, diff, `ipset restore`, skeleton rules) vs the floor, "
    "`ipset restore` + `iptables-restore --noflush` loading the same final sets and rules; ours and the "
    f"floor alternate {REPEAT} times, everything removed before each load, and the installed state "
    "is read back and compared after each. **Incremental sync vs total policies** (the curve): "
    f"N = {', '.join(f'{n:,}' for n in CURVE)} signed policies are programmed, each one client network's "
    "policy: it selects every pod behind one NodePort and allows its own three IPv4 prefixes (a /30, a "
    "/29 and a /28 of its own block of 10.0.0.0/8, so nothing merges). N policies spread over "
    f"min(N, {CURVE_MAX_PORTS:,}) TCP NodePorts (range {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}), so at "
    "50,000 each NodePort is shared by 5 policies (15 allowed prefixes each; 150,000 in the allow set), the shape "
    "of one policy per allowed client network. Then one policy at a time is added (to an already "
    "protected NodePort), changed (its three prefixes replaced) or removed, in turn, and "
    "`SyncLoop.sync_once` is timed (the fast path: only the changed policy is verified and planned, "
    "only its NodePort's set members are written by one `ipset restore`). One worker per N, each in its "
    f"own node namespace, all alive at once; {CURVE_ROUNDS} rounds x 3 operations, and within each "
    "operation the N take turns (rotating which goes first), so the 50,000 / 1,000 ratio is the median "
    "of ratios of samples taken back to back. Each worker then runs the periodic full resync (verify, "
    "plan, read back everything; its time is in the inputs) and compares the installed sets with the "
    "plan. The legacy backend writes its rules through python-iptables, nft through iptables-nft-restore "
    "(the fast path writes no rule). "
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


def _curve_name(n: int, backend: str) -> str:
    return f"incremental sync, 1 policy changed among {n:,} ({backend})"


def _ratio_name(backend: str) -> str:
    return f"incremental sync, 50,000 / 1,000 policies ({backend})"


def _p99_name(backend: str) -> str:
    return f"incremental sync p99, 10,000 policies ({backend})"


def _curve_target(n: int) -> Target:
    return INCR_MEDIAN if n == 10_000 else INCR_P99


def expected_figures() -> list[Figure]:
    out = [not_measured(NAME, "Ed25519 verification per policy", "µs", None, "")]
    for backend in BACKENDS:
        out.append(not_measured(NAME, f"full sync, 10,000 NodePorts ({backend})", "ms", FULL_TARGET, ""))
        out += [not_measured(NAME, _curve_name(n, backend), "ms", _curve_target(n), "") for n in CURVE]
        out.append(not_measured(NAME, _p99_name(backend), "ms", INCR_P99, ""))
        out.append(not_measured(NAME, _ratio_name(backend), "ms", CURVE_RATIO, ""))
    return out


@dataclass
class _CurveWorker:
    n: int
    proc: subprocess.Popen[str]
    stderr: Path

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = self.stderr.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
            raise RuntimeError(f"curve worker for {self.n:,} policies exited {self.proc.returncode}: {tail}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()


def _measure_curve(backend: str, workdir: Path) -> dict[int, dict[str, Any]]:
    """Per N: samples (ms), dataplane part (ms) and the worker's setup and resync figures."""
    out: dict[int, dict[str, Any]] = {n: {"ms": [], "dataplane_ms": []} for n in CURVE}
    with contextlib.ExitStack() as stack:
        workers: list[_CurveWorker] = []
        for n in CURVE:
            node = stack.enter_context(make_node(lock_path=str(workdir / f"xtables-curve-{backend}-{n}.lock")))
            stderr_path = workdir / f"curve-{backend}-{n}.stderr"
            stderr = stack.enter_context(stderr_path.open("w", encoding="utf-8"))
            args = ("--policies", str(n), "--ports", str(min(n, CURVE_MAX_PORTS)))
            proc = start_in_node(node.node_ns, node.lock_path, "curve", backend, NODEPORT_RANGE, *args, stderr=stderr)
            stack.callback(_stop, proc)
            worker = _CurveWorker(n, proc, stderr_path)
            out[n].update(worker.read())  # started one after the other: setups are not timed side by side
            workers.append(worker)
        for i in range(CURVE_ROUNDS * 3):
            shift = i % len(workers)
            for worker in workers[shift:] + workers[:shift]:
                answer = worker.ask("op")
                out[worker.n]["ms"].append(answer["seconds"] * 1000)
                out[worker.n]["dataplane_ms"].append(answer["dataplane_seconds"] * 1000)
        for worker in workers:
            out[worker.n].update(worker.ask("finish"))
            worker.proc.wait(timeout=60)
    return out


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _curve_figures(backend: str, curve: dict[int, dict[str, Any]], inputs: dict[str, JsonScalar]) -> list[Figure]:
    figures = []
    for n in CURVE:
        point = curve[n]
        ports = min(n, CURVE_MAX_PORTS)
        point_inputs: dict[str, JsonScalar] = {
            "curve": f"incremental sync vs total policies ({backend})",
            "total_policies": n,
            "backend": backend,
            "protected_nodeports": ports,
            "policies_per_nodeport": n // ports,
            "allowed_set_members": int(point["allowed_members"]),
            "nodeport_range": inputs["nodeport_range"],
            "operations": f"{CURVE_ROUNDS} add + {CURVE_ROUNDS} change + {CURVE_ROUNDS} remove",
            "dataplane_median_ms": round(summarize(point["dataplane_ms"]).median, 2),
            "initial_sync_seconds": round(float(point["initial_seconds"]), 2),
            "full_resync_seconds": round(float(point["resync_seconds"]), 2),
        }
        figures.append(
            Figure(
                NAME,
                _curve_name(n, backend),
                "ms",
                summarize(point["ms"]),
                _curve_target(n),
                inputs=point_inputs,
                note="dataplane_median_ms: the one `ipset restore` of the fast path, inside the same syncs",
            )
        )
        if n == 10_000:
            figures.append(
                Figure(
                    NAME,
                    _p99_name(backend),
                    "ms",
                    summarize(point["ms"]),
                    INCR_P99,
                    inputs={k: v for k, v in point_inputs.items() if k != "curve"},
                )
            )
    big, small = curve[CURVE[-1]]["ms"], curve[CURVE[0]]["ms"]
    figures.append(
        Figure(
            NAME,
            _ratio_name(backend),
            "ms",
            summarize(big),
            CURVE_RATIO,
            Floor(
                "the same operations at 1,000 policies, each taken right before or after its 50,000 sample",
                summarize(small),
                summarize(ratios(big, small)),
            ),
            inputs={"backend": backend, "large_total_policies": CURVE[-1], "small_total_policies": CURVE[0]},
        )
    )
    return figures


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
    return [full_fig, *_curve_figures(backend, _measure_curve(backend, workdir), inputs)]


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
