"""Build the operator tools the chart tests need (helm) from the Go module proxy into the cache (I/O).

`helm.sh/helm/v4`'s go.mod has no replace directive, so a wrapper module that only requires the
release builds `cmd/helm` with the release's own ldflags (the version stamp). Cached by version in
`<cache>/helm-<version>/helm`, next to the Kubernetes binaries (see localcluster/build.py).

Run: `python -m localcluster.tools_build` (prints progress; idempotent; cached by version).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

from localcluster.build import BuildError, _download_go_mod, _go_build_with_progress, _run, cache_root
from localcluster.versions import HELM_VERSION


def expected_helm(root: Path | None = None) -> Path:
    return (root or cache_root()) / f"helm-{HELM_VERSION}" / "helm"


def _say(msg: str) -> None:
    print(f"[tools-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_helm(root: Path, version: str = HELM_VERSION) -> Path:
    out = root / f"helm-{version}" / "helm"
    work = root / "build" / f"helm-{version}"
    work.mkdir(parents=True, exist_ok=True)
    helm_mod = _download_go_mod("helm.sh/helm/v4", version, work)
    go_line_match = re.search(r"^go (\S+)$", helm_mod, re.MULTILINE)
    go_line = go_line_match.group(1) if go_line_match else "1.26.0"
    go_mod = f"module nodeport-guard.local/helm\n\ngo {go_line}\n\nrequire helm.sh/helm/v4 {version}\n"
    (work / "go.mod").write_text(go_mod)
    (work / "tools.go").write_text('//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v4/cmd/helm"\n')
    _say(f"helm {version}: go mod tidy")
    _run(["go", "mod", "tidy"], work, "go mod tidy (helm)")
    tmp = root / "build" / f"helm-{version}.out"
    tmp.mkdir(parents=True, exist_ok=True)
    # The release Makefile's stamp: without it `helm version` says v4.3 and the user agent lies.
    ldflags = (
        f"-s -w -X helm.sh/helm/v4/internal/version.version={version}"
        " -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
    )
    _say(f"building helm {version} (a cold build takes a few minutes on 2 cores)")
    started = time.monotonic()
    _go_build_with_progress(
        ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / "helm"), "helm.sh/helm/v4/cmd/helm"],
        work,
        "helm",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp / "helm", out)
    _say(f"helm {version}: built in {int(time.monotonic() - started)}s -> {out}")
    return out


def ensure_helm(root: Path | None = None) -> Path:
    """Return the cached helm binary, building it if missing. Safe to call on every test run."""
    root = root or cache_root()
    out = expected_helm(root)
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise BuildError(f"Go is not installed and {out} is not cached; run `make install` (needs Go 1.26+)")
    return build_helm(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print-helm", action="store_true", help="print only the helm binary's path")
    args = parser.parse_args(argv)
    try:
        helm = ensure_helm()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(helm if args.print_helm else f"ready: {helm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
