"""Benchmark 1: /mutate under the production gunicorn + TLS config vs a constant-'allowed' floor (I/O)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data
from bench.stats import Figure, Floor, JsonScalar, Target, not_measured, percentile, ratios, summarize
from tests.controlplane.harness import free_port

logger = logging.getLogger(__name__)

NAME = "admission"
REPO = Path(__file__).resolve().parents[1]
GUNICORN_CONF = REPO / "webhook" / "gunicorn_conf.py"
RUNS = 3
THROUGHPUT_SECONDS = 8.0
LATENCY_SECONDS = 10.0
WARMUP_SECONDS = 1.5
CLIENT_PROCESSES = 2
CONNECTIONS_PER_CLIENT = 4
RATE = 200.0
REVIEWS = 500
THROUGHPUT_TARGET = Target("ratio", ">=", 0.5, "ratio >= 0.5 (ours / floor)")
LATENCY_TARGET = Target("median", "<=", 10.0, "p99 <= 10 ms (median of the runs' p99)")
RSS_TARGET = Target("max", "<=", 300.0, "<= 300 MB")
NOTES = (
    "Servers: gunicorn with the production config `webhook/gunicorn_conf.py` (1 worker, gthread, "
    "8 threads, TLS 1.2+, keep-alive) started as `python -m gunicorn -c webhook/gunicorn_conf.py "
    "'bench.webhook_app:create_bench_app()'` (`python -m webhook serve` runs exactly this command with "
    "the list+watch app `webhook.app:create_app()`). The benchmark app is the real `webhook.app.build_app` "
    "over the production `ClusterCache` preloaded (through its trimmers) with 500 namespaces, 10,000 "
    "NodePort Services, 50,000 Pods and 2,500 policies instead of filling it from an apiserver. The floor "
    "is a trivial Flask app under the same gunicorn config and certificate that reads the body and "
    "answers 'allowed' with the request's uid. Load: `bench/loadgen.py` in separate processes, "
    f"keep-alive HTTPS connections, {REVIEWS} distinct CREATE AdmissionReviews of new policies "
    "(each selects one Service's pods, so every answer carries a signed-annotation patch). "
    f"Throughput: closed loop, {CLIENT_PROCESSES} client processes x {CONNECTIONS_PER_CLIENT} connections, "
    f"{WARMUP_SECONDS} s warm-up then a {THROUGHPUT_SECONDS:.0f} s window, ours and the floor alternating "
    f"{RUNS} times. Latency: open loop at {RATE:.0f} req/s (latency counted from the scheduled send time), "
    f"{LATENCY_SECONDS:.0f} s per run, {RUNS} runs each. Memory: VmRSS summed over the gunicorn master and "
    "worker after each load run (VmHWM, which includes building the cache, is listed in the inputs). "
    "The client shares the 2 cores with the server, for ours and the floor alike."
)


def expected_figures() -> list[Figure]:
    return [
        not_measured(NAME, "throughput /mutate", "req/s", THROUGHPUT_TARGET, ""),
        not_measured(NAME, f"p99 latency at {RATE:.0f} req/s", "ms", LATENCY_TARGET, ""),
        not_measured(NAME, "RSS of all webhook processes", "MB", RSS_TARGET, ""),
    ]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def memory_mb(self) -> tuple[float, float]:
        """(sum of VmRSS, sum of VmHWM) over all the server's processes, in MB."""
        rss = hwm = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key == "VmRSS":
                        rss += int(value.split()[0]) / 1024
                    elif key == "VmHWM":
                        hwm += int(value.split()[0]) / 1024
        return rss, hwm


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    return ""


@contextlib.contextmanager
def gunicorn(name: str, app: str, certs: Path, workdir: Path) -> Iterator[Server]:
    port = free_port()
    log = workdir / f"{name}.log"
    env = {
        **os.environ,
        "NPG_BIND": f"127.0.0.1:{port}",
        "NPG_TLS_CERT_FILE": str(certs / "tls.crt"),
        "NPG_TLS_KEY_FILE": str(certs / "tls.key"),
        "NPG_LOG_LEVEL": "warning",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), app],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, log)
    try:
        _wait_healthy(server, certs / "ca.crt", timeout=120)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_healthy(server: Server, cafile: Path, timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} gunicorn exited ({server.process.returncode}):\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", context=ctx, timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} gunicorn not healthy after {timeout:.0f} s:\n{_tail(server.log)}")


def _load(
    server: Server, mode: str, bodies: Path, cafile: Path, seconds: float, clients: int, connections: int
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        mode,
        "--url",
        f"{server.url}/mutate",
        "--cafile",
        str(cafile),
        "--bodies",
        str(bodies),
        "--connections",
        str(connections),
        "--duration",
        str(seconds),
        "--warmup",
        str(WARMUP_SECONDS),
        "--rate",
        str(RATE / clients),
    ]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError(f"load client exited {p.returncode}: {stderr.decode(errors='replace')[-500:]}")
        outs.append(json.loads(stdout))
    errors = sum(o["errors"] for o in outs)
    if errors:
        first = next(o["first_error"] for o in outs if o["errors"])
        raise RuntimeError(f"{server.name}: {errors} failed requests under load, first: {first}")
    return {
        "completed": sum(o["completed"] for o in outs),
        "throughput": sum(o["completed"] for o in outs) / seconds,
        "latencies_ms": [x for o in outs for x in o["latencies_ms"]],
    }


def run(workdir: Path) -> list[Figure]:
    certs = workdir / "certs"
    subprocess.run(
        [sys.executable, "-m", "certs", "generate", "--out", str(certs), "--ip", "127.0.0.1"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    cafile = certs / "ca.crt"
    bodies = workdir / "reviews.jsonl"
    bodies.write_text("".join(json.dumps(r) + "\n" for r in data.new_policy_reviews(REVIEWS)), encoding="utf-8")
    ours_tp: list[float] = []
    floor_tp: list[float] = []
    ours_p99: list[float] = []
    floor_p99: list[float] = []
    rss: list[float] = []
    hwm = 0.0
    closed_p50: list[float] = []
    with (
        gunicorn("floor", "bench.webhook_app:create_floor_app()", certs, workdir) as floor,
        gunicorn("ours", "bench.webhook_app:create_bench_app()", certs, workdir) as ours,
    ):
        for i in range(RUNS):
            order = (ours, floor) if i % 2 == 0 else (floor, ours)
            for server in order:
                result = _load(
                    server, "closed", bodies, cafile, THROUGHPUT_SECONDS, CLIENT_PROCESSES, CONNECTIONS_PER_CLIENT
                )
                (ours_tp if server is ours else floor_tp).append(result["throughput"])
                if server is ours:
                    closed_p50.append(percentile(result["latencies_ms"], 50))
                    rss.append(ours.memory_mb()[0])
        for i in range(RUNS):
            order = (ours, floor) if i % 2 == 0 else (floor, ours)
            for server in order:
                result = _load(server, "open", bodies, cafile, LATENCY_SECONDS, 1, CONNECTIONS_PER_CLIENT * 2)
                expected = RATE * LATENCY_SECONDS
                if result["completed"] < 0.95 * expected:
                    raise RuntimeError(
                        f"{server.name}: only {result['completed']} of {expected:.0f} paced requests completed "
                        "in the window; the client could not hold the rate"
                    )
                (ours_p99 if server is ours else floor_p99).append(percentile(result["latencies_ms"], 99))
                if server is ours:
                    rss.append(ours.memory_mb()[0])
        hwm = ours.memory_mb()[1]
        processes = len(ours.pids())
    common: dict[str, JsonScalar] = {
        "namespaces": data.NAMESPACES,
        "services": 10_000,
        "pods": 50_000,
        "stored_policies": 2_500,
        "distinct_reviews": REVIEWS,
        "gunicorn_conf": "webhook/gunicorn_conf.py",
    }
    return [
        Figure(
            NAME,
            "throughput /mutate",
            "req/s",
            summarize(ours_tp),
            THROUGHPUT_TARGET,
            Floor(
                "the same gunicorn + TLS config answering a constant 'allowed'",
                summarize(floor_tp),
                summarize(ratios(ours_tp, floor_tp)),
            ),
            inputs={
                **common,
                "mode": "closed loop",
                "client_processes": CLIENT_PROCESSES,
                "connections": CLIENT_PROCESSES * CONNECTIONS_PER_CLIENT,
                "window_seconds": THROUGHPUT_SECONDS,
                "runs": RUNS,
                "ours_median_latency_ms_closed_loop": round(summarize(closed_p50).median, 2),
            },
        ),
        Figure(
            NAME,
            f"p99 latency at {RATE:.0f} req/s",
            "ms",
            summarize(ours_p99),
            LATENCY_TARGET,
            Floor(
                f"the floor app at the same {RATE:.0f} req/s",
                summarize(floor_p99),
                summarize(ratios(ours_p99, floor_p99)),
            ),
            inputs={
                **common,
                "mode": "open loop (paced)",
                "rate": RATE,
                "connections": CONNECTIONS_PER_CLIENT * 2,
                "window_seconds": LATENCY_SECONDS,
                "runs": RUNS,
            },
            note="each sample is one run's p99",
        ),
        Figure(
            NAME,
            "RSS of all webhook processes",
            "MB",
            summarize(rss),
            RSS_TARGET,
            inputs={
                **common,
                "processes": processes,
                "peak_VmHWM_sum_mb": round(hwm, 1),
                "samples": "after each load run",
            },
        ),
    ]
