"""Passive datapath detection on this node: read the rules ahead of our jump, nft, links and tc (I/O).

Cheap and frequent where it must be: `mangle PREROUTING` (our jump present? what is ahead of it?) is
read every RULES_PERIOD_SECONDS (5 s) once the first sync is done, so a flush is noticed within
seconds and the sync loop is asked for a repair at once (as kube-proxy's canary chains do), not at
the next resync; nft's prerouting base chains, kube-proxy's mode and the uplinks' BPF programs and
OVS masters every resync period. Judging is pure (enforcer/datapath_rules.py, datapath_links.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from contract.path_status import Finding
from enforcer.backend import Backend, CommandRunner, run_command, save_command
from enforcer.datapath_links import judge_links, uplinks
from enforcer.datapath_rules import (
    MANGLE_PRIORITY,
    XTABLES_TABLES,
    judge_kube_proxy,
    judge_mangle_prerouting,
    judge_nft_ruleset,
    judge_raw_prerouting,
)

logger = logging.getLogger(__name__)

RULES_PERIOD_SECONDS = 5.0


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


class DatapathDetector:
    """Holds the latest findings; `check_rules` and `check_full` read the node (I/O) and judge (pure)."""

    def __init__(
        self,
        backend: Backend,
        families: Callable[[], Iterable[Literal[4, 6]]],
        runner: CommandRunner = run_command,
        on_jump_missing: Callable[[], None] | None = None,
    ) -> None:
        """`families`: the families our skeleton is installed in (a family without protected ports has no jump)."""
        self.backend, self._families, self._run = backend, families, runner
        self._on_jump_missing = on_jump_missing
        self._lock = threading.Lock()
        self._rules: tuple[Finding, ...] = ()
        self._full: tuple[Finding, ...] = ()
        self.jump_missing_since: float | None = None

    def findings(self) -> tuple[Finding, ...]:
        with self._lock:
            return self._rules + self._full

    def check_rules(self) -> tuple[Finding, ...]:
        found: list[Finding] = []
        for family in sorted(set(self._families())):
            result = self._run([save_command(self.backend, family), "-t", "mangle"])
            if result.returncode != 0:
                found.append(Finding("unreadable", "suspect", f"{result.argv[0]} failed: {result.stderr.strip()[:200]}",
                                     ""))
                continue
            found.extend(judge_mangle_prerouting(result.stdout, family, self.backend))
            raw = self._run([save_command(self.backend, family), "-t", "raw"])
            if raw.returncode == 0:
                found.extend(judge_raw_prerouting(raw.stdout, family, self.backend))
        missing = any(f.kind == "jump-missing" for f in found)
        if missing and self.jump_missing_since is None:
            self.jump_missing_since = time.monotonic()
        elif not missing:
            self.jump_missing_since = None
        self._publish("rules", tuple(found))
        if missing and self._on_jump_missing is not None:
            self._on_jump_missing()
        return tuple(found)

    def check_full(self) -> tuple[Finding, ...]:
        found: list[Finding] = []
        chains_doc = _json(self._run(["nft", "-j", "list", "chains"]).stdout) or {}
        items = [i for i in chains_doc.get("nftables") or [] if isinstance(i, dict) and "chain" in i]
        tables = set()
        kube_proxy_nft = False
        for item in items:
            c = item["chain"]
            family, table = c.get("family", ""), c.get("table", "")
            kube_proxy_nft |= table == "kube-proxy"
            prio = c.get("prio")
            ahead = isinstance(prio, int) and prio < MANGLE_PRIORITY and c.get("hook") == "prerouting"
            if ahead and not (table in XTABLES_TABLES and family in ("ip", "ip6")):
                tables.add((family, table))
        merged: list[Any] = []
        for family, table in sorted(tables):  # only the tables with a base chain ahead of ours are read
            doc = _json(self._run(["nft", "-j", "list", "table", family, table]).stdout) or {}
            merged.extend(doc.get("nftables") or [])
        found.extend(judge_nft_ruleset({"nftables": merged}))
        nat = self._run([f"iptables-{self.backend}", "-w", "5", "-t", "nat", "-S", "KUBE-NODEPORTS"])
        found.append(judge_kube_proxy(nat.returncode == 0, kube_proxy_nft))
        links = _json(self._run(["ip", "-d", "-j", "addr", "show"]).stdout) or []
        tc = {}
        for link in uplinks(links):
            device = str(link.get("ifname"))
            tc[device] = _json(self._run(["tc", "-j", "filter", "show", "dev", device, "ingress"]).stdout) or []
        found.extend(judge_links(links, tc))
        self._publish("full", tuple(found))
        return tuple(found)

    def _publish(self, part: str, found: tuple[Finding, ...]) -> None:
        with self._lock:
            before = self._rules if part == "rules" else self._full
            if part == "rules":
                self._rules = found
            else:
                self._full = found
        for f in set(found) - set(before):
            log = logger.warning if f.verdict != "info" else logger.info
            log("datapath finding", extra={"kind": f.kind, "verdict": f.verdict, "reason": f.reason,
                                           "evidence": f.evidence})
        for f in set(before) - set(found):
            logger.info("datapath finding cleared", extra={"kind": f.kind, "evidence": f.evidence})

    def run(self, stop: threading.Event, ready: Callable[[], bool], full_period: float) -> None:
        next_full = 0.0
        while not stop.wait(RULES_PERIOD_SECONDS if next_full else 0.5):
            if not ready():  # before the first sync our jump is legitimately absent
                continue
            try:
                self.check_rules()
                if time.monotonic() >= next_full:
                    self.check_full()
                    next_full = time.monotonic() + full_period
            except Exception as exc:  # a check that fails proves nothing either way; the canary still runs
                logger.warning("datapath check failed", extra={"error": str(exc)[:300]})

    def start(self, stop: threading.Event, ready: Callable[[], bool], full_period: float) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop, ready, full_period), name="datapath", daemon=True)
        thread.start()
        return thread
