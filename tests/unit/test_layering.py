"""The module shape holds: pure modules import no I/O library; the enforcer takes little from the webhook."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE = [
    "webhook/contract.py",
    "webhook/signing.py",
    "webhook/intervals.py",
    "webhook/composition.py",
    "webhook/contribution.py",
    "webhook/semantics.py",
    "webhook/services.py",
    "webhook/namespace_resolution.py",
    "webhook/review.py",
    "webhook/admission.py",
    "webhook/snapshot.py",
    "webhook/settings.py",
    "webhook/node_status.py",
    "enforcer/plan.py",
    "enforcer/diff.py",
    "enforcer/sets.py",
    "enforcer/incremental.py",
    "enforcer/settings.py",
]
IO_LIBRARIES = {
    "flask",
    "gunicorn",
    "kubernetes",
    "iptc",
    "subprocess",
    "urllib",
    "http",
    "requests",
    "prometheus_client",
}
# What the enforcer (a separate DaemonSet image entry point) may use from the webhook package.
ENFORCER_MAY_IMPORT = {
    "webhook.contract",
    "webhook.composition",
    "webhook.intervals",
    "webhook.listwatch",
    "webhook.logs",
    "webhook.node_status",
    "webhook.signing",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    bad = {name for name in _imports(REPO / module) if name.split(".")[0] in IO_LIBRARIES}
    assert not bad, f"{module} is pure but imports {sorted(bad)}"


def test_enforcer_uses_only_the_contract_side_of_the_webhook_package() -> None:
    used = set()
    for path in sorted((REPO / "enforcer").glob("*.py")):
        used |= {name for name in _imports(path) if name.split(".")[0] == "webhook"}
    assert used <= ENFORCER_MAY_IMPORT, sorted(used - ENFORCER_MAY_IMPORT)


def test_no_shell_strings_anywhere() -> None:
    for path in sorted(REPO.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"shell=True in {path}"
