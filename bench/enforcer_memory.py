"""Benchmark 7: peak RSS of an enforcer process holding and programming 10,000 signed policies (I/O)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bench import data
from bench.enforcer_worker import run_in_node
from bench.stats import Figure, Target, not_measured, summarize
from kube.listwatch import LIST_PAGE_SIZE
from tests.netns import make_node

logger = logging.getLogger(__name__)

NAME = "enforcer-memory"
POLICIES = 10_000
RUNS = 3
NODEPORT_RANGE = (30000, 40999)
TARGET = Target("max", "<=", 150.0, "<= 150 MB")
NOTES = (
    f"A fresh process per run inside a node namespace (`bench/enforcer_worker.py memory`) imports what the "
    f"enforcer imports (enforcer.__main__, the kubernetes client), parses {POLICIES:,} NetworkPolicies "
    f"(full objects as the apiserver lists them, with signed annotations) page by page "
    f"({LIST_PAGE_SIZE} per page, as ListWatch lists), trims them into the PolicyStore, then runs "
    "`SyncLoop.sync_once` twice (verify every HMAC, plan, program 10,000 NodePorts with 3 prefixes each "
    "from empty, then a resync reading everything back). The figure is the process's peak RSS, VmHWM "
    "from /proc/self/status. (Not `getrusage().ru_maxrss`: Linux carries it across exec, so a process "
    "spawned by a large parent reports the parent's peak.) "
    f"{RUNS} runs, legacy backend."
)


def expected_figures() -> list[Figure]:
    return [not_measured(NAME, f"enforcer peak RSS with {POLICIES:,} policies", "MB", TARGET, "")]


def write_pages(directory: Path, policies: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    page = 0
    for i in range(policies):
        ref, annotations = data.signed_policy_annotations(i, NODEPORT_RANGE[0] + i)
        items.append(data.network_policy_with_annotations(ref, annotations, i))
        if len(items) == LIST_PAGE_SIZE or i == policies - 1:
            body = {
                "kind": "NetworkPolicyList",
                "apiVersion": "networking.k8s.io/v1",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
            (directory / f"page-{page:04d}.json").write_text(json.dumps(body), encoding="utf-8")
            items = []
            page += 1


def run(workdir: Path) -> list[Figure]:
    pages = workdir / "pages"
    write_pages(pages, POLICIES)
    key_file = workdir / "signing.pub"
    key_file.write_bytes(data.BENCH_SIGNING_KEY.public.pem())
    peaks: list[float] = []
    answers = []
    with make_node(lock_path=str(workdir / "xtables.lock")) as node:
        for _ in range(RUNS):
            answer = run_in_node(
                node.node_ns,
                node.lock_path,
                "memory",
                "legacy",
                NODEPORT_RANGE,
                "--pages-dir",
                str(pages),
                "--key-file",
                str(key_file),
            )
            if answer is None:
                raise RuntimeError("the memory worker printed no result")
            if answer["ports"] != POLICIES or answer["policies"] != POLICIES:
                raise RuntimeError(
                    f"the worker programmed {answer['ports']} ports from {answer['policies']} policies, "
                    f"expected {POLICIES}"
                )
            peaks.append(float(answer["hwm_mb"]))
            answers.append(answer)
    last = answers[-1]
    return [
        Figure(
            NAME,
            f"enforcer peak RSS with {POLICIES:,} policies",
            "MB",
            summarize(peaks),
            TARGET,
            inputs={
                "policies": POLICIES,
                "cidrs_per_port": 3,
                "list_page_size": LIST_PAGE_SIZE,
                "backend": "legacy",
                "rss_after_imports_mb": round(last["rss_after_imports_mb"], 1),
                "rss_at_end_mb": round(last["rss_mb"], 1),
                "first_sync_seconds": round(last["first_sync_seconds"], 2),
                "resync_seconds": round(last["resync_seconds"], 2),
            },
        )
    ]
