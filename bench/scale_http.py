"""Scale curve over HTTPS: /mutate, /validate latency and webhook RSS vs policies in one namespace (I/O).

The real `webhook.app.build_app` under the production gunicorn + TLS config (as bench/admission.py
runs it), its `ClusterCache` preloaded with the issue's namespace (bench/scale_data.py) holding N
stored policies, one server per N. `gunicorn ... 'bench.scale_http:create_app(N)'`.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flask import Flask

from bench import scale_data
from bench.admission import REPO, Server, gunicorn
from bench.scale_core import NAMESPACE, settled_cache
from bench.stats import Figure, JsonScalar, Summary, Target, not_measured, summarize
from webhook.app import Runtime, build_app

logger = logging.getLogger(__name__)

NAME = "scale-http"
SIZES = (1, 10, 100, 1_000, 5_000)
SECONDS = 5.0
WARMUP = 1.0
CONNECTIONS = 1
MIN_SAMPLES = 300
TARGET_AT = 1_000
MEDIAN_TARGET = Target("median", "<=", 5.0, "median <= 5 ms")
P99_TARGET = Target("p99", "<=", 20.0, "p99 <= 20 ms")
RSS_TARGET = Target("max", "<=", 300.0, "<= 300 MB")
NOTES = (
    "The real webhook app (`webhook.app.build_app`) under the production gunicorn config "
    "(`webhook/gunicorn_conf.py`: 1 worker, 8 threads, TLS 1.2+, keep-alive), started as `python -m gunicorn -c "
    "webhook/gunicorn_conf.py 'bench.scale_http:create_app(N)'`, one server per N; its production "
    "`ClusterCache` holds the namespace of the scale-core benchmark (20 NodePort Services x 5 pods, N stored "
    "policies selecting every pod, each allowing its own non-adjacent /32, their annotations true). Load: "
    f"`bench/loadgen.py` closed loop over {CONNECTIONS} keep-alive HTTPS connection (the next request as soon "
    f"as the answer arrived: the latency of one admission, not of a queue), {WARMUP:.0f} s warm-up then "
    f"{SECONDS:.0f} s measured; first /mutate (CREATE reviews of distinct new policies), then /validate (the same "
    "policies with the annotations /mutate wrote). RSS: VmRSS summed over the gunicorn master and worker after "
    "start and after each load run. The client shares the 2 cores with the server (and, on a shared machine, "
    "with whatever else runs: see the load average above)."
)


def _label(n: int) -> str:
    return f"{n:,} {'policy' if n == 1 else 'policies'} in the namespace"


def create_app(policies: int) -> Flask:
    """gunicorn factory: the webhook over a cache holding the scale namespace with `policies` policies."""
    cache, config = settled_cache(policies)
    gc.collect()
    runtime = Runtime(view=cache, config=config, ready=lambda: True, cache_sizes=cache.sizes)
    logger.warning("scale webhook ready", extra={"objects": cache.sizes()})
    return build_app(runtime)


def expected_figures() -> list[Figure]:
    out = []
    for n in SIZES:
        for endpoint in ("mutate", "validate"):
            out.append(not_measured(NAME, f"{endpoint} over HTTPS, {_label(n)}", "ms", MEDIAN_TARGET, ""))
            if n == TARGET_AT:
                out.append(not_measured(NAME, f"{endpoint} over HTTPS p99, {_label(n)}", "ms", P99_TARGET, ""))
        out.append(not_measured(NAME, f"webhook RSS, {_label(n)}", "MB", RSS_TARGET, ""))
    return out


def _load(server: Server, path: str, bodies: Path, cafile: Path) -> list[float]:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "closed",
        "--url",
        f"{server.url}{path}",
        "--cafile",
        str(cafile),
        "--bodies",
        str(bodies),
        "--connections",
        str(CONNECTIONS),
        "--duration",
        str(SECONDS),
        "--warmup",
        str(WARMUP),
    ]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, check=False, timeout=SECONDS + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    if out["errors"]:
        raise RuntimeError(f"{path}: {out['errors']} failed requests, first: {out['first_error']}")
    if out["completed"] < MIN_SAMPLES:
        raise RuntimeError(f"{path}: only {out['completed']} answers in {SECONDS:.0f} s (at least {MIN_SAMPLES})")
    latencies: list[float] = out["latencies_ms"]
    return latencies


def _write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies), encoding="utf-8")
    return path


def _measure(n: int, certs: Path, workdir: Path) -> tuple[Summary, Summary, Summary, float]:
    """(mutate latency, validate latency, RSS samples, VmHWM) for one server holding n policies."""
    cache, config = settled_cache(n)
    count = 1000  # distinct policies, sent in turn
    to_mutate, to_validate = scale_data.review_pairs(NAMESPACE, n, count, cache, config)
    del cache
    mutate_bodies = _write_bodies(workdir / f"mutate-{n}.jsonl", to_mutate)
    validate_bodies = _write_bodies(workdir / f"validate-{n}.jsonl", to_validate)
    cafile = certs / "ca.crt"
    with gunicorn(f"scale-{n}", f"bench.scale_http:create_app({n})", certs, workdir) as server:
        rss = [server.memory_mb()[0]]
        mutated = _load(server, "/mutate", mutate_bodies, cafile)
        rss.append(server.memory_mb()[0])
        validated = _load(server, "/validate", validate_bodies, cafile)
        rss.append(server.memory_mb()[0])
        hwm = server.memory_mb()[1]
    return summarize(mutated), summarize(validated), summarize(rss), hwm


def run(workdir: Path) -> list[Figure]:
    certs = workdir / "certs"
    subprocess.run(
        [sys.executable, "-m", "certs", "generate", "--out", str(certs), "--ip", "127.0.0.1"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    figures = []
    for n in SIZES:
        started = time.monotonic()
        mutated, validated, rss, hwm = _measure(n, certs, workdir)
        inputs: dict[str, JsonScalar] = {
            "policies_in_namespace": n,
            "services": scale_data.SERVICES,
            "pods": scale_data.SERVICES * scale_data.PODS_PER_SERVICE,
            "mode": "closed loop",
            "connections": CONNECTIONS,
            "window_seconds": SECONDS,
            "gunicorn_conf": "webhook/gunicorn_conf.py",
        }
        for endpoint, summary in (("mutate", mutated), ("validate", validated)):
            name = f"{endpoint} over HTTPS, {_label(n)}"
            figures.append(Figure(NAME, name, "ms", summary, MEDIAN_TARGET, inputs=inputs))
            if n == TARGET_AT:
                figures.append(
                    Figure(NAME, f"{endpoint} over HTTPS p99, {_label(n)}", "ms", summary, P99_TARGET, inputs=inputs)
                )
        figures.append(
            Figure(
                NAME,
                f"webhook RSS, {_label(n)}",
                "MB",
                rss,
                RSS_TARGET,
                inputs={
                    "policies_in_namespace": n,
                    "processes": 2,
                    "peak_VmHWM_sum_mb": round(hwm, 1),
                    "samples": "after start, after /mutate load, after /validate load",
                },
            )
        )
        logger.info("scale-http N=%d in %.0f s", n, time.monotonic() - started)
    return figures
