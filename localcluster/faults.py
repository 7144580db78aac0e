"""Control-plane faults on a running local cluster: kill and restart kube-apiserver or etcd, compact etcd (I/O).

For the faults test tier (tests/faults). A daemon is restarted with the very argv it runs with
(read from /proc before the kill), in the control-plane namespace, logging to the same file; its
entry in the cluster's state file is replaced, so `down` still finds and removes it. etcd keeps its
data directory, so nothing stored is lost by a restart of either.

`python -m localcluster.faults compact` runs inside the control-plane namespace (the tests start it
with nsenter): it writes one throw-away key outside /registry a few times, so the revision moves past
every watcher's, then compacts etcd at its current revision and prints `{"revision": N}`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.network import in_netns
from localcluster.plan import build_plan
from localcluster.procs import StartError, http_ok, spawn, wait_until
from localcluster.state import Proc, State, alive

logger = logging.getLogger(__name__)

ETCD_URL = "http://127.0.0.1:2379"
BUMP_KEY = "/localcluster-faults/bump"  # outside /registry: the apiserver never reads it


@dataclass(frozen=True, slots=True)
class Restart:
    what: str
    old_pid: int
    new_pid: int
    down_s: float  # from the kill until the new process was started
    ready_s: float  # from the kill until it answered (readyz for the apiserver, health for etcd)


def _state(name: str) -> State:
    state = State.load(name)
    if state is None:
        raise StartError(f"no local cluster named {name!r} is up (no state file)")
    return state


def _running(state: State, what: str) -> Proc:
    procs = [p for p in state.procs if p.what == what and alive(p)]
    if len(procs) != 1:
        raise StartError(f"cluster {state.name}: expected one running {what}, found {len(procs)}")
    return procs[0]


def _argv_of(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0") if a]


def with_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """Pure: `argv` with each `--name=value` of `flags` replacing a flag of the same name (or added)."""
    names = {f.split("=", 1)[0] for f in flags}
    kept = [a for a in argv if a.split("=", 1)[0] not in names]
    return [*kept, *flags]


def _gone(proc: Proc) -> bool:
    """Exited: no such process, or a zombie (reaped here when it is our child: `up` ran in this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)
    if not alive(proc):
        return True
    try:
        zombie = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        # A Go daemon's main thread turns zombie before its other threads are gone, and its sockets
        # (the port a restart binds again) are only closed with the last thread.
        return zombie and len(os.listdir(f"/proc/{proc.pid}/task")) <= 1
    except OSError:
        return True


def _kill(proc: Proc, timeout: float = 20) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(f"{proc.what} (pid {proc.pid}) to exit", lambda: _gone(proc), timeout)


def _admin_context(state: State) -> ssl.SSLContext:
    pki = state.dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def apiserver_ready(name: str) -> bool:
    state = _state(name)
    return http_ok(f"{state.apiserver_url}/readyz", _admin_context(state))


def _etcd_healthy(cp_netns: str) -> bool:
    argv = in_netns(cp_netns, [sys.executable, "-m", "localcluster.faults", "health"])
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=15).returncode == 0


def restart(name: str, what: str, flags: Sequence[str] = (), while_down: Callable[[], object] | None = None,
            timeout: float = 120) -> Restart:
    """SIGKILL the cluster's `what` ("kube-apiserver" or "etcd") and start it again (with `flags` changed),
    after running `while_down` if given; return once it answers again."""
    if what not in ("kube-apiserver", "etcd"):
        raise ValueError(f"restart: {what!r} is not a control-plane daemon this can restart (kube-apiserver, etcd)")
    state = _state(name)
    plan = build_plan(name)
    old = _running(state, what)
    argv = with_flags(_argv_of(old.pid), flags)
    killed = time.monotonic()
    _kill(old)
    logger.info("killed %s (pid %d) of cluster %s", what, old.pid, name)
    if while_down is not None:
        while_down()
    state = _state(name)
    state.procs = [p for p in state.procs if p != old]
    state.save()
    log = state.dir / "logs" / f"{what}.log"
    for attempt in range(5):
        proc = spawn(state, in_netns(plan.cp_netns, argv), log, what)
        started = time.monotonic()
        try:
            if what == "etcd":
                wait_until("etcd health", lambda: _etcd_healthy(plan.cp_netns), timeout, proc, log)
            else:
                wait_until("kube-apiserver readyz", lambda: apiserver_ready(name), timeout, proc, log)
        except StartError as exc:
            # The killed process's port may still be held for a moment by its dying threads.
            if "address already in use" not in str(exc) or attempt == 4:
                raise
            logger.info("%s: port still in use, starting it again in 1 s", what)
            state = _state(name)
            state.procs = [p for p in state.procs if p.pid != proc.pid]
            state.save()
            time.sleep(1)
            continue
        break
    return Restart(what, old.pid, proc.pid, round(started - killed, 2), round(time.monotonic() - killed, 2))


def restart_apiserver(name: str, flags: Sequence[str] = (), while_down: Callable[[], object] | None = None,
                      timeout: float = 120) -> Restart:
    return restart(name, "kube-apiserver", flags, while_down, timeout)


def restart_etcd(name: str, timeout: float = 60) -> Restart:
    return restart(name, "etcd", (), None, timeout)


def compact_etcd(name: str, bumps: int = 5) -> int:
    """Move etcd's revision on (`bumps` writes of a throw-away key) and compact at it; the revision."""
    plan = build_plan(name)
    argv = in_netns(plan.cp_netns, [sys.executable, "-m", "localcluster.faults", "compact", str(bumps)])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise StartError(f"etcd compaction in {plan.cp_netns} failed: {proc.stderr.strip()[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["revision"])


# Inside the control-plane namespace: etcd's JSON gateway on its client port.

def _etcd(path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(f"{ETCD_URL}{path}", data=json.dumps(body).encode(), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - etcd of our own cluster
        result: dict[str, object] = json.loads(resp.read())
        return result


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _compact(bumps: int) -> int:
    revision = 0
    for i in range(max(1, bumps)):
        reply = _etcd("/v3/kv/put", {"key": _b64(BUMP_KEY), "value": _b64(str(i))})
        header = reply.get("header")
        assert isinstance(header, dict)
        revision = int(header["revision"])
    _etcd("/v3/kv/deleterange", {"key": _b64(BUMP_KEY)})
    _etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    print(json.dumps({"revision": revision}), flush=True)
    return 0


def _health() -> int:
    try:
        with urllib.request.urlopen(f"{ETCD_URL}/health", timeout=3) as resp:  # noqa: S310 - our own etcd
            return 0 if json.loads(resp.read()).get("health") == "true" else 1
    except OSError:
        return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["compact"]:
        return _compact(int(argv[1]) if len(argv) > 1 else 5)
    if argv[:1] == ["health"]:
        return _health()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
