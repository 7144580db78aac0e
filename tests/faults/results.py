"""The faults tier's result table: fault, leak, loss, convergence time (printed and saved as JSON).

Rows are kept in the session's stash (no module state), printed at the end of the session and
merged into `.faults-results.json` at the repository root (git-ignored) so the docs can quote them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS_FILE = REPO / ".faults-results.json"


@dataclass(frozen=True, slots=True)
class FaultResult:
    fault: str
    leak: int
    loss: int
    convergence_s: float | None  # None: the fault has no convergence to measure
    detail: dict[str, Any] = field(default_factory=dict)  # extra figures (takeover s, windows, ops...)


@dataclass
class ResultTable:
    rows: list[FaultResult] = field(default_factory=list)

    def add(self, row: FaultResult) -> FaultResult:
        self.rows = [r for r in self.rows if r.fault != row.fault] + [row]
        return row

    def render(self) -> str:
        width = max([len("fault"), *(len(r.fault) for r in self.rows)])
        lines = [f"{'fault':<{width}}  {'leak':>5}  {'loss':>5}  {'convergence s':>13}  detail"]
        for r in self.rows:
            conv = "-" if r.convergence_s is None else f"{r.convergence_s:.2f}"
            extra = ", ".join(f"{k}={v}" for k, v in r.detail.items())
            lines.append(f"{r.fault:<{width}}  {r.leak:>5}  {r.loss:>5}  {conv:>13}  {extra}")
        return "\n".join(lines)

    def save(self, path: Path = RESULTS_FILE) -> None:
        """Merge this session's rows into the file (rows of faults not run this time are kept)."""
        try:
            old = {r["fault"]: r for r in json.loads(path.read_text()).get("faults", [])}
        except (OSError, ValueError):
            old = {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for r in self.rows:
            old[r.fault] = {**asdict(r), "measured": now}
        path.write_text(json.dumps({"faults": sorted(old.values(), key=lambda r: r["fault"])}, indent=1) + "\n")


RESULTS = pytest.StashKey[ResultTable]()
