"""Starting the cluster's daemons detached (recorded in the state file) and waiting for them (I/O)."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from localcluster.state import State


class StartError(RuntimeError):
    """A daemon of the cluster did not start; the message carries its log tail."""


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(state: State, argv: Sequence[str], log: Path, what: str) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session (it outlives `up`), output to `log`; record it before returning."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    state.record(proc.pid, what)
    return proc


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None, interval: float = 0.3,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"{what}: exited with {proc.returncode}; log tail:\n{log_tail(log) if log else ''}")
        if check():
            return
        time.sleep(interval)
    raise StartError(f"{what}: not ready after {timeout:.0f}s" + (f"; log tail:\n{log_tail(log)}" if log else ""))


def http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310 - our own URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return False
