"""What the fault tests read from and do to the deployed product: component logs, the Lease, waiting (I/O)."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localcluster.cluster import Cluster

NS = "nodeport-guard"
WEBHOOK = "app.kubernetes.io/name=nodeport-guard-webhook"
ENFORCER = "app.kubernetes.io/name=nodeport-guard-enforcer"
LEASE = "nodeport-guard-reconciler"


@dataclass(frozen=True, slots=True)
class LogLine:
    pod: str
    t: float  # wall time of the entry
    entry: dict[str, Any]

    @property
    def msg(self) -> str:
        return str(self.entry.get("msg", ""))


def _wall(ts: str) -> float:
    """`2026-11-30T00:31:48.123Z` -> seconds since the epoch."""
    base, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "pods", "-n", NS, "-l", selector)["items"]
    return items


def component_logs(cluster: Cluster, selector: str, since: float = 0.0) -> list[LogLine]:
    """Every JSON log entry of the running pods of `selector` written at or after `since` (wall time)."""
    lines: list[LogLine] = []
    for pod in pods(cluster, selector):
        name = pod["metadata"]["name"]
        out = cluster.kubectl("logs", "-n", NS, name, "--tail=-1", check=False).stdout
        for raw in out.splitlines():
            if not raw.startswith("{"):
                continue
            try:
                entry = json.loads(raw)
                t = _wall(str(entry["ts"]))
            except (ValueError, KeyError):
                continue
            if t >= since:
                lines.append(LogLine(name, t, entry))
    return lines


def lease_holder(cluster: Cluster) -> str:
    proc = cluster.kubectl("get", "lease", "-n", NS, LEASE, "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Poll `check` until true; the seconds it took. AssertionError naming `what` after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started


def logs_around(cluster: Cluster, times: list[float], selector: str = ENFORCER, margin: float = 3.0,
                limit: int = 40) -> list[str]:
    """The log entries of `selector`'s pods within `margin` s of any of `times`: what the component did
    when a probe leaked or was lost (for the assertion message)."""
    if not times:
        return []
    lines = component_logs(cluster, selector, min(times) - margin)
    near = [x for x in lines if any(abs(x.t - t) <= margin for t in times)]
    return [f"{x.pod} {x.entry.get('ts')} {json.dumps(x.entry)[:300]}" for x in near[:limit]]
