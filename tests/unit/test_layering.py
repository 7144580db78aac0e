"""The house holds: three rooms around one contract, and pure modules import no I/O library.

- `contract/` is what the webhook, the enforcers and the plugin agree on: it imports nothing of ours
  but itself, and nothing but the standard library and `cryptography`.
- `webhook/` and `enforcer/` both import `contract/` (and the shared plumbing `kube/`); neither
  imports the other.
- `kubectl_plugin/` imports only `contract/` and the Kubernetes client, so it can be installed alone.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUR_PACKAGES = {"contract", "kube", "webhook", "enforcer", "certs", "kubectl_plugin", "localcluster", "demo", "tests",
                "bench"}
PURE = sorted(
    [str(p.relative_to(REPO)) for p in (REPO / "contract").glob("*.py")]
    + [
        "webhook/objects.py",
        "webhook/addresses.py",
        "webhook/semantics.py",
        "webhook/services.py",
        "webhook/contribution.py",
        "webhook/namespace_resolution.py",
        "webhook/review.py",
        "webhook/admission.py",
        "webhook/cluster_view.py",
        "webhook/snapshot.py",
        "webhook/settings.py",
        "enforcer/plan.py",
        "enforcer/diff.py",
        "enforcer/datapath_rules.py",
        "enforcer/datapath_links.py",
        "enforcer/sets.py",
        "enforcer/incremental.py",
        "enforcer/settings.py",
        "enforcer/heavy_hitters.py",
        "enforcer/nflog.py",
    ]
)
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
# Which of our packages each room may import (besides itself).
MAY_IMPORT = {
    "contract": set(),
    "kube": set(),
    "webhook": {"contract", "kube"},
    "enforcer": {"contract", "kube"},
    "certs": {"contract"},
    "kubectl_plugin": {"contract"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from webhook import admission` imports the module webhook.admission
            names |= {f"{node.module}.{alias.name}" for alias in node.names if "." not in node.module}
    return names


def _tops(package: str) -> set[str]:
    return {name.split(".")[0] for path in (REPO / package).rglob("*.py") for name in _imports(path)}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    bad = {name for name in _imports(REPO / module) if name.split(".")[0] in IO_LIBRARIES}
    assert not bad, f"{module} is pure but imports {sorted(bad)}"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_room_imports_only_the_rooms_it_may(package: str) -> None:
    ours = _tops(package) & OUR_PACKAGES - {package}
    assert ours <= MAY_IMPORT[package], f"{package}/ imports {sorted(ours - MAY_IMPORT[package])}"


def test_the_contract_needs_only_the_standard_library_and_cryptography() -> None:
    outside = {t for t in _tops("contract") if t not in sys.stdlib_module_names} - {"contract", "cryptography"}
    assert not outside, sorted(outside)


def test_the_plugin_needs_only_the_contract_and_the_kubernetes_client() -> None:
    outside = {t for t in _tops("kubectl_plugin") if t not in sys.stdlib_module_names}
    assert outside <= {"contract", "kubectl_plugin", "kubernetes"}, sorted(outside)


def test_no_product_module_passes_about_500_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for package in ("contract", "kube", "webhook", "enforcer", "certs", "kubectl_plugin", "localcluster", "demo")
        for p in (REPO / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 520
    }
    assert not long, long


def test_no_shell_strings_anywhere() -> None:
    for path in sorted(REPO.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"shell=True in {path}"


def test_no_import_cycle_among_product_modules() -> None:
    packages = ("contract", "kube", "webhook", "enforcer", "certs", "kubectl_plugin")
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts): p
        for package in packages
        for p in (REPO / package).glob("*.py")
    }
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, "import cycle: " + " -> ".join((*path, module))
        state[module] = 1
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        state[module] = 2

    for module in sorted(graph):
        visit(module, ())
