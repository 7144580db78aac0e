"""Command execution port and iptables backend detection (legacy vs nft), like kube's iptables-wrapper (I/O)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

Backend = Literal["legacy", "nft"]
BACKENDS: tuple[Backend, ...] = ("legacy", "nft")
# Chains kubelet/kube-proxy create to tell which iptables backend the node uses.
HINT_CHAINS: tuple[str, ...] = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


@dataclass(frozen=True, slots=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command from an argument list (never a shell string), optionally feeding stdin."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> RunResult: ...


def run_command(argv: Sequence[str], stdin: str | None = None) -> RunResult:
    """The real runner: subprocess with an argument list; never raises on a non-zero exit."""
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=120
    )
    return RunResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def save_command(backend: Backend, family: Literal[4, 6]) -> str:
    return f"{'ip6' if family == 6 else 'ip'}tables-{backend}-save"


def restore_command(backend: Backend, family: Literal[4, 6]) -> str:
    return f"{'ip6' if family == 6 else 'ip'}tables-{backend}-restore"


def _has_hint(runner: CommandRunner, backend: Backend) -> bool:
    for family in (4, 6):
        out = runner([save_command(backend, family), "-t", "mangle"]).stdout
        if any(line.startswith(f":{chain} ") for line in out.splitlines() for chain in HINT_CHAINS):
            return True
    return False


def _rule_count(runner: CommandRunner, backend: Backend) -> int:
    total = 0
    for family in (4, 6):
        out = runner([save_command(backend, family)]).stdout
        total += sum(1 for line in out.splitlines() if line.startswith("-"))
    return total


def detect_backend(runner: CommandRunner = run_command) -> Backend:
    """kubelet's hint chains through the nft tools first, then legacy; else the backend with more rules.

    With no hint and no rules at all (or a tie) the answer is legacy.
    """
    order: tuple[Backend, ...] = ("nft", "legacy")
    for backend in order:
        if _has_hint(runner, backend):
            logger.info("iptables backend chosen by kubelet hint chain", extra={"backend": backend})
            return backend
    legacy = _rule_count(runner, "legacy")
    nft = _rule_count(runner, "nft")
    chosen: Backend = "nft" if nft > legacy else "legacy"
    logger.info(
        "iptables backend chosen by rule count",
        extra={"backend": chosen, "legacy_rules": legacy, "nft_rules": nft},
    )
    return chosen
