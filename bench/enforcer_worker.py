"""Enforcer measurements run INSIDE a node network namespace (`ip netns exec NS python -m bench.enforcer_worker`) (I/O).

python-iptables acts on the namespace of the calling process, so everything that touches the
dataplane runs here, never in the benchmark runner. Each command prints one JSON object.

  full        our Dataplane.sync from empty vs `ipset restore` + `iptables-restore` (interleaved)
  incremental one policy added at a time while N are programmed: the enforcer's sync_once
  memory      a fresh process listing N signed policies page by page, verify + plan + sync; VmHWM
  program     program a DesiredState file (for the per-packet benchmark) and print the report
  cleanup     remove everything of ours
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enforcer import diff
from enforcer.backend import Backend, restore_command
from enforcer.dataplane import Dataplane
from enforcer.plan import DesiredState, decode_state

TABLES = ("filter", "nat", "mangle", "raw", "security")


def prime_tables(backend: Backend) -> None:
    """Instantiate the tables in this netns, as kubelet and kube-proxy have on any real node."""
    for tool in (f"iptables-{backend}", f"ip6tables-{backend}"):
        for table in TABLES:
            subprocess.run([tool, "-w", "5", "-t", table, "-S"], capture_output=True, check=True)


def render_floor_scripts(state: DesiredState, nodeport_range: tuple[int, int]) -> tuple[str, str]:
    """The same final ruleset as our sync, as one `ipset restore` and one `iptables-restore --noflush` script."""
    lines = []
    for name, members in diff.render_members(state).items():
        lines.append(f"create {name} {diff.set_create_options(name, nodeport_range)}")
        lines.extend(f"add {name} {m}" for m in sorted(members))
    sets = "".join(line + "\n" for line in lines)
    rules = diff.render_skeleton_restore(diff.InstalledRules((), {}, ()), diff.build_skeleton(4))
    return sets, rules


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[:500]}")


def floor_load(backend: Backend, sets: str, rules: str) -> float:
    start = time.perf_counter()
    _run(["ipset", "restore"], sets)
    _run([restore_command(backend, 4), "--noflush", "-w", "5"], rules)
    return time.perf_counter() - start


def _check_installed(dp: Dataplane, state: DesiredState, what: str) -> None:
    installed = dp.installed()
    if installed != state:
        raise RuntimeError(
            f"{what}: the installed sets hold {len(installed.ports)} ports, expected {len(state.ports)} "
            "(the benchmark measured something other than the intended ruleset)"
        )


def cmd_full(dp: Dataplane, backend: Backend, state: DesiredState, repeat: int) -> dict[str, Any]:
    sets, rules = render_floor_scripts(state, dp.nodeport_range)
    dp.cleanup()
    ours: list[float] = []
    floor: list[float] = []
    reports = []
    for i in range(repeat):
        # Alternate which goes first so slow drift on the machine hits both equally.
        for which in ("ours", "floor") if i % 2 == 0 else ("floor", "ours"):
            dp.cleanup()
            gc.collect()
            if which == "ours":
                start = time.perf_counter()
                report = dp.sync(state)
                ours.append(time.perf_counter() - start)
                reports.append(report.sets_created)
            else:
                floor.append(floor_load(backend, sets, rules))
            _check_installed(dp, state, which)
    dp.cleanup()
    return {"ours": ours, "floor": floor, "members": sum(len(p.allowed) for p in state.ports) + len(state.ports)}


def _stored_policies(count: int, first_port: int, key: Any) -> list[Any]:
    from bench.data import signed_policy_annotations
    from enforcer.policies import StoredPolicy

    out = []
    for i in range(count):
        ref, annotations = signed_policy_annotations(i, first_port + i, key)
        out.append(StoredPolicy(ref.namespace, ref.name, ref.uid, str(1000 + i), tuple(sorted(annotations.items()))))
    return out


def _sync_loop(dp: Dataplane, store: Any, keys: Any) -> Any:
    from enforcer.loop import SyncLoop

    return SyncLoop(
        store=store, dataplane=dp, signing_keys=lambda: keys, nodeport_range=dp.nodeport_range, stop=threading.Event()
    )


def cmd_incremental(dp: Dataplane, policies: int, adds: int, budget_seconds: float) -> dict[str, Any]:
    """Add up to `adds` policies one at a time; stop early (after at least 3) when the budget is spent."""
    from bench.data import BENCH_SIGNING_KEY
    from enforcer.policies import PolicyStore

    dp.cleanup()
    all_policies = _stored_policies(policies + adds, dp.nodeport_range[0], BENCH_SIGNING_KEY)
    store = PolicyStore()
    store.replace("networkpolicies", all_policies[:policies], "1")
    loop = _sync_loop(dp, store, BENCH_SIGNING_KEY.verifier())
    start = time.perf_counter()
    loop.sync_once()
    initial = time.perf_counter() - start
    totals: list[float] = []
    dataplane: list[float] = []
    deadline = time.monotonic() + budget_seconds
    for p in all_policies[policies:]:
        if len(totals) >= 3 and time.monotonic() > deadline:
            break
        store.apply("networkpolicies", "ADDED", p)
        start = time.perf_counter()
        report = loop.sync_once()
        totals.append(time.perf_counter() - start)
        dataplane.append(report.seconds)
        if report.members_added != 4:  # one port in the port set + its 3 allowed prefixes
            raise RuntimeError(f"adding {p.name}: expected 4 set members added, the sync added {report.members_added}")
    installed = dp.installed()
    if len(installed.ports) != policies + len(totals):
        raise RuntimeError(
            f"after {len(totals)} adds {len(installed.ports)} ports are installed, expected {policies + len(totals)}"
        )
    dp.cleanup()
    return {"initial_seconds": initial, "sync_once": totals, "dataplane": dataplane}


def _rss_mb() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cmd_memory(dp: Dataplane, pages_dir: Path, key_file: Path) -> dict[str, Any]:
    """What the enforcer process holds with N policies: its imports, a paginated list, the store, a sync."""
    import kubernetes.client  # noqa: F401 - the enforcer lists and watches through it

    import enforcer.__main__  # noqa: F401 - the enforcer's own imports (prometheus, http.server, listwatch)
    from enforcer.policies import PolicyStore, StoredPolicy, trim_policy

    rss_after_imports, _ = _rss_mb()
    from webhook.signing import VerifierKeys, parse_public_keys_pem

    keys = VerifierKeys(parse_public_keys_pem(key_file.read_bytes(), str(key_file)))
    dp.cleanup()
    store = PolicyStore()
    items: list[StoredPolicy] = []
    for page in sorted(pages_dir.glob("page-*.json")):
        body = json.loads(page.read_bytes())  # as ListWatch._list parses each page of the list response
        items.extend(trim_policy(o) for o in body["items"])
        del body
    store.replace("networkpolicies", items, "1")
    del items
    loop = _sync_loop(dp, store, keys)
    report = loop.sync_once()
    report2 = loop.sync_once()  # a periodic resync on top (read-back of 10k members)
    rss, hwm = _rss_mb()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ports = len(dp.installed().ports)
    dp.cleanup()
    return {
        "rss_after_imports_mb": rss_after_imports,
        "rss_mb": rss,
        "hwm_mb": hwm,
        "ru_maxrss_mb": max_rss,  # inherited across exec from the spawning process: informational only
        "ports": ports,
        "policies": len(store.snapshot()),
        "first_sync_seconds": report.seconds,
        "resync_seconds": report2.seconds,
    }


def run_in_node(
    node_ns: str,
    lock_path: str,
    command: str,
    backend: str,
    nodeport_range: tuple[int, int],
    *args: str,
    timeout: float = 300.0,
) -> dict[str, Any] | None:
    """Caller side: run this module's `command` inside the node namespace; its last JSON line, if any."""
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node_ns,
            sys.executable,
            "-m",
            "bench.enforcer_worker",
            command,
            "--backend",
            backend,
            "--nodeport-range",
            f"{nodeport_range[0]}-{nodeport_range[1]}",
            "--lock-path",
            lock_path,
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.enforcer_worker {command} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    answer: dict[str, Any] | None = json.loads(lines[-1]) if lines else None
    return answer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enforcer_worker")
    parser.add_argument("command", choices=["full", "incremental", "memory", "program", "cleanup"])
    parser.add_argument("--backend", choices=["legacy", "nft"], required=True)
    parser.add_argument("--nodeport-range", required=True, help="LOW-HIGH")
    parser.add_argument("--lock-path", required=True)
    parser.add_argument("--state-json", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--adds", type=int, default=30)
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--pages-dir", type=Path)
    parser.add_argument("--key-file", type=Path)
    args = parser.parse_args(argv)
    lo, _, hi = args.nodeport_range.partition("-")
    nodeport_range = (int(lo), int(hi))
    os.environ["XTABLES_LOCKFILE"] = args.lock_path  # iptables tools: never wait on the host's lock
    backend: Backend = args.backend
    if args.command != "memory":
        prime_tables(backend)  # (the memory command primes after its imports, see below)
    dp = Dataplane(backend, nodeport_range, lock_path=args.lock_path)
    if args.command == "full":
        out = cmd_full(dp, backend, decode_state(args.state_json.read_text()), args.repeat)
    elif args.command == "incremental":
        out = cmd_incremental(dp, args.policies, args.adds, args.budget_seconds)
    elif args.command == "memory":
        prime_tables(backend)
        out = cmd_memory(dp, args.pages_dir, args.key_file)
    elif args.command == "program":
        out = dataclasses.asdict(dp.sync(decode_state(args.state_json.read_text())))
    else:
        dp.cleanup()
        out = {"ok": True}
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
