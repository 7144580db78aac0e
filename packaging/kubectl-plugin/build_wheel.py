"""Build the standalone `kubectl-nodeport-guard` wheel: `python packaging/kubectl-plugin/build_wheel.py --out DIR`.

Stages this directory's pyproject.toml with copies of `contract/` and `kubectl_plugin/` (the only
packages the plugin imports: tests/unit/test_layering.py holds that) and runs `pip wheel` on the
stage (setuptools from the pip cache or PyPI, as `make install-python` gets it). Prints
the wheel's path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGES = ("contract", "kubectl_plugin")


def build_wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npg-plugin-stage-") as tmp:
        stage = Path(tmp)
        shutil.copy2(HERE / "pyproject.toml", stage / "pyproject.toml")
        for package in PACKAGES:
            shutil.copytree(REPO / package, stage / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        before = set(out.glob("*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(out),
                str(stage),
            ],
            check=True,
        )
    built = sorted(set(out.glob("kubectl_nodeport_guard-*.whl")) - before) or sorted(
        out.glob("kubectl_nodeport_guard-*.whl")
    )
    return built[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    print(build_wheel(parser.parse_args().out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
