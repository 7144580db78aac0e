"""Command-line entry to the dataplane for tests, benchmarks and operators (`ip netns exec` friendly) (I/O)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from enforcer.backend import BACKENDS, Backend, detect_backend
from enforcer.dataplane import Dataplane
from enforcer.drops import DropReader
from enforcer.plan import decode_state, encode_state
from enforcer.xtables_lock import DEFAULT_LOCK_PATH

logger = logging.getLogger(__name__)


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enforcer.dataplane_cli")
    parser.add_argument("command", choices=["sync", "installed", "counters", "cleanup", "detect", "serve"])
    parser.add_argument("--backend", choices=[*BACKENDS, "auto"], default="auto")
    parser.add_argument("--state-json", help="file with a DesiredState as written by plan.encode_state")
    parser.add_argument("--nodeport-range", type=_range, default=(30000, 32767), help="e.g. 30000-32767")
    parser.add_argument("--lock-path", default=DEFAULT_LOCK_PATH)
    parser.add_argument("--clear-conntrack", action="store_true")
    parser.add_argument("--audit-all", action="store_true", help="audit every port (the enforcer's NPG_MODE=audit)")
    parser.add_argument("--repeat", type=int, default=1, help="sync this many times (for tests)")
    parser.add_argument(
        "--announce", action="store_true", help="print `syncing` right before each sync (lets tests kill mid-sync)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    backend: Backend = detect_backend() if args.backend == "auto" else args.backend
    if args.command == "detect":
        print(backend)
        return 0
    dp = Dataplane(
        backend,
        args.nodeport_range,
        lock_path=args.lock_path,
        clear_conntrack=args.clear_conntrack,
        audit_all=args.audit_all,
    )
    drops = DropReader(dp.read_counters)
    if args.command == "serve":
        return _serve(dp, drops)
    if args.command == "sync":
        if not args.state_json:
            parser.error("sync needs --state-json FILE")
        with open(args.state_json, encoding="utf-8") as f:
            state = decode_state(f.read())
        for _ in range(args.repeat):
            if args.announce:
                print("syncing", flush=True)
            report = dp.sync(state)
            print(json.dumps(dataclasses.asdict(report), sort_keys=True), flush=True)
    elif args.command == "installed":
        print(encode_state(dp.installed()))
    elif args.command == "counters":
        print(json.dumps(_counters(drops), sort_keys=True))
    else:
        dp.cleanup()
    return 0


def _counters(drops: DropReader) -> dict[str, object]:
    """The drop counters as JSON: {"counters": [{family, protocol, port, mode, packets}], "seconds": read time}."""
    totals = drops()
    rows = [{"family": k.family, "protocol": k.protocol, "port": k.port, "mode": k.mode, "packets": n}
            for k, n in sorted(totals.items())]
    return {"counters": rows, "seconds": drops.last_seconds}


def _serve(dp: Dataplane, drops: DropReader) -> int:
    """One long-lived Dataplane (as in the enforcer): reads `sync FILE`, `installed`, `counters`,
    `cleanup` lines.

    Answers one JSON line per command: the SyncReport, {"state": ...}, {"counters": ...}, {"ok": true}
    or {"error": ...}.
    """
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        try:
            if command == "sync":
                with open(arg, encoding="utf-8") as f:
                    answer = dataclasses.asdict(dp.sync(decode_state(f.read())))
            elif command == "installed":
                answer = {"state": json.loads(encode_state(dp.installed()))}
            elif command == "counters":
                answer = _counters(drops)
            elif command == "cleanup":
                dp.cleanup()
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {command!r}; use sync FILE, installed, counters or cleanup"}
        except (OSError, ValueError, RuntimeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
