"""Enforcer measurements run INSIDE a node network namespace (`ip netns exec NS python -m bench.enforcer_worker`) (I/O).

python-iptables acts on the namespace of the calling process, so everything that touches the
dataplane runs here, never in the benchmark runner. Each command prints one JSON object.

  full        our Dataplane.sync from empty vs `ipset restore` + `iptables-restore` (interleaved)
  curve       N policies programmed, then one added/changed/removed per `op` line: the enforcer's sync_once
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


def _sync_loop(dp: Dataplane, store: Any, keys: Any) -> Any:
    from enforcer.loop import SyncLoop

    return SyncLoop(
        store=store, dataplane=dp, signing_keys=lambda: keys, nodeport_range=dp.nodeport_range, stop=threading.Event()
    )


def _client_policy(index: int, ports: int, first_port: int, variant: int, key: Any) -> Any:
    from bench.data import client_policy_annotations
    from enforcer.policies import StoredPolicy

    ref, annotations = client_policy_annotations(index, first_port + index % ports, variant, key)
    return StoredPolicy(ref.namespace, ref.name, ref.uid, str(1000 + index), tuple(sorted(annotations.items())))


# One operation per sync, in turn: (event, variant of the annotation, (set members added, removed)).
OPERATIONS: tuple[tuple[str, str, int, tuple[int, int]], ...] = (
    ("add", "ADDED", 0, (3, 0)),
    ("change", "MODIFIED", 1, (3, 3)),
    ("remove", "DELETED", 1, (0, 3)),
)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def cmd_curve(dp: Dataplane, policies: int, ports: int) -> dict[str, Any]:
    """`policies` client policies over `ports` NodePorts are programmed (answers `ready`); then each
    `op` line on stdin adds, changes or removes one policy (in turn, on an already protected port)
    and answers the time of `sync_once`; `finish` runs the periodic full resync, checks the installed
    state and answers the summary. The caller interleaves several of these, one per total N."""
    from bench.data import BENCH_SIGNING_KEY
    from enforcer.policies import PolicyStore

    dp.cleanup()
    first = dp.nodeport_range[0]
    start = time.perf_counter()
    store = PolicyStore()
    store.replace(
        "networkpolicies", [_client_policy(i, ports, first, 0, BENCH_SIGNING_KEY) for i in range(policies)], "1"
    )
    generated = time.perf_counter() - start
    loop = _sync_loop(dp, store, BENCH_SIGNING_KEY.verifier())
    start = time.perf_counter()
    loop.sync_once()
    initial = time.perf_counter() - start
    gc.collect()
    _emit({"ready": True, "generate_seconds": generated, "initial_seconds": initial})
    done = 0
    for line in sys.stdin:
        if line.strip() != "op":
            break
        kind, event, variant, expected = OPERATIONS[done % len(OPERATIONS)]
        p = _client_policy(policies + done // len(OPERATIONS), ports, first, variant, BENCH_SIGNING_KEY)
        store.apply("networkpolicies", event, p)  # type: ignore[arg-type]
        start = time.perf_counter()
        report = loop.sync_once()
        seconds = time.perf_counter() - start
        done += 1
        if (report.members_added, report.members_removed) != expected or report.full_readback:
            raise RuntimeError(
                f"{kind} of {p.name}: expected set members +{expected[0]} -{expected[1]} on the fast path, the "
                f"sync added {report.members_added} and removed {report.members_removed} "
                f"(full read-back: {report.full_readback})"
            )
        _emit({"kind": kind, "seconds": seconds, "dataplane_seconds": report.seconds})
    start = time.perf_counter()
    loop.sync_once(full_readback=True)  # the periodic resync: everything verified, planned, read back
    resync = time.perf_counter() - start
    installed = dp.installed()
    if installed != loop.state or len(installed.ports) != min(ports, policies):
        raise RuntimeError(
            f"after {done} operations {len(installed.ports)} ports are installed, not the "
            f"{len(loop.state.ports)} planned"
        )
    members = sum(len(p.allowed) for p in installed.ports)
    dp.cleanup()
    return {"operations": done, "resync_seconds": resync, "allowed_members": members}


def start_in_node(
    node_ns: str, lock_path: str, command: str, backend: str, nodeport_range: tuple[int, int], *args: str,
    stderr: Any = subprocess.DEVNULL,
) -> subprocess.Popen[str]:
    """Caller side: start this module's `command` inside the node namespace, talking by lines."""
    return subprocess.Popen(
        _argv(node_ns, lock_path, command, backend, nodeport_range, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


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
    from contract.signing import VerifierKeys, parse_public_keys_pem

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
    report2 = loop.sync_once(full_readback=True)  # a periodic resync on top (read-back of 10k members)
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
        "policies": len(store),
        "first_sync_seconds": report.seconds,
        "resync_seconds": report2.seconds,
    }


def _argv(
    node_ns: str, lock_path: str, command: str, backend: str, nodeport_range: tuple[int, int], *args: str
) -> list[str]:
    return [
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
    ]


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
        _argv(node_ns, lock_path, command, backend, nodeport_range, *args),
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
    parser.add_argument("command", choices=["full", "curve", "memory", "program", "cleanup"])
    parser.add_argument("--backend", choices=["legacy", "nft"], required=True)
    parser.add_argument("--nodeport-range", required=True, help="LOW-HIGH")
    parser.add_argument("--lock-path", required=True)
    parser.add_argument("--state-json", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--ports", type=int, default=10_000)
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
    elif args.command == "curve":
        out = cmd_curve(dp, args.policies, args.ports)
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
