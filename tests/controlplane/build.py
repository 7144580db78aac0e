"""Build kube-apiserver, kubectl and etcd from the Go module proxy into a cache outside the repo.

`k8s.io/kubernetes` cannot be `go install`ed (its go.mod maps the staging modules with
local replaces), so we write a wrapper module that requires the release and pins every
staging module to the matching v0.Y.Z, the way downstream projects do.

Run: `python -m tests.controlplane.build` (prints progress; idempotent; cached by version).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.controlplane.versions import ETCD_VERSION, KUBERNETES_GO_LINE, KUBERNETES_VERSION

BUILD_TAGS = "selinux,notest,grpcnotrace"
STAGING_PIN = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+v0\.0\.0\s*$", re.MULTILINE)


class BuildError(RuntimeError):
    """A control-plane binary could not be built; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ControlPlaneBinaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path


def cache_root() -> Path:
    env = os.environ.get("NPG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nodeport-guard"


def expected_binaries(root: Path | None = None) -> ControlPlaneBinaries:
    root = root or cache_root()
    k8s = root / f"k8s-{KUBERNETES_VERSION}"
    return ControlPlaneBinaries(
        kube_apiserver=k8s / "kube-apiserver",
        kubectl=k8s / "kubectl",
        etcd=root / f"etcd-{ETCD_VERSION}" / "etcd",
    )


def _say(msg: str) -> None:
    print(f"[controlplane-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
    return env


def _run(args: list[str], cwd: Path, what: str) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: '{args[0]}' not found; install Go 1.26+ (make install)") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
            "If this is a network error, check that the Go module proxy is reachable (GOPROXY)."
        )
    return proc.stdout


def _go_build_with_progress(args: list[str], cwd: Path, what: str) -> None:
    """`go build -v` prints one line per compiled package; report a count so long builds show life."""
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=_go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    last_report = started
    for packages, line in enumerate(proc.stdout, start=1):
        tail = [*tail, line.rstrip()][-40:]
        now = time.monotonic()
        if now - last_report >= 20:
            _say(f"{what}: {packages} packages compiled, {int(now - started)}s elapsed")
            last_report = now
    code = proc.wait()
    if code != 0:
        raise BuildError(f"{what} failed (exit {code}):\n" + "\n".join(tail))
    _say(f"{what}: done in {int(time.monotonic() - started)}s")


def staging_replaces(kubernetes_go_mod: str, version: str) -> list[str]:
    """Every `k8s.io/<m> v0.0.0` the release requires, pinned to the matching v0.Y.Z."""
    staging_version = "v0." + version.removeprefix("v1.")
    modules = sorted(set(STAGING_PIN.findall(kubernetes_go_mod)))
    return [f"{m} => {m} {staging_version}" for m in modules]


def _ldflags(version: str) -> str:
    minor = version.removeprefix("v").split(".")[1]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X '{pkg}.gitVersion={version}'",
            f"-X '{pkg}.gitMajor=1'",
            f"-X '{pkg}.gitMinor={minor}'",
            f"-X '{pkg}.gitTreeState=clean'",
        ]
    return "-s -w " + " ".join(flags)


def _download_go_mod(module: str, version: str, cwd: Path) -> str:
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd, f"fetching {module}@{version}")
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"fetching {module}@{version}: {info['Error']}")
    return Path(info["GoMod"]).read_text()


def build_kubernetes(root: Path, version: str = KUBERNETES_VERSION) -> None:
    out_dir = root / f"k8s-{version}"
    work = root / "build" / f"k8s-{version}"
    work.mkdir(parents=True, exist_ok=True)
    _say(f"kubernetes {version}: resolving modules (wrapper module in {work})")
    upstream_mod = _download_go_mod("k8s.io/kubernetes", version, work)
    replaces = staging_replaces(upstream_mod, version)
    go_line = KUBERNETES_GO_LINE
    godebug = "go" + ".".join(go_line.split(".")[:2])
    (work / "go.mod").write_text(
        "module nodeport-guard.local/controlplane\n\n"
        f"go {go_line}\n\ngodebug default={godebug}\n\n"
        f"require k8s.io/kubernetes {version}\n\n"
        "replace (\n" + "".join(f"\t{r}\n" for r in replaces) + ")\n"
    )
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n'
        '\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )
    _say(f"kubernetes {version}: go mod tidy ({len(replaces)} staging modules pinned)")
    _run(["go", "mod", "tidy"], work, "go mod tidy (kubernetes)")
    tmp_out = root / "build" / f"k8s-{version}.out"
    tmp_out.mkdir(parents=True, exist_ok=True)
    for name, pkg in (
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    ):
        _say(f"building {name} {version} (the first build takes 10-20 minutes on 2 cores)")
        _go_build_with_progress(
            [
                "go",
                "build",
                "-v",
                "-trimpath",
                "-tags",
                BUILD_TAGS,
                "-ldflags",
                _ldflags(version),
                "-o",
                str(tmp_out / name),
                pkg,
            ],
            work,
            name,
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_out.rename(out_dir)


def build_etcd(root: Path, version: str = ETCD_VERSION) -> None:
    out_dir = root / f"etcd-{version}"
    work = root / "build" / f"etcd-{version}"
    work.mkdir(parents=True, exist_ok=True)
    server_mod = _download_go_mod("go.etcd.io/etcd/server/v3", version, work)
    go_line_match = re.search(r"^go (\S+)$", server_mod, re.MULTILINE)
    go_line = go_line_match.group(1) if go_line_match else "1.24.0"
    (work / "go.mod").write_text(
        f"module nodeport-guard.local/etcd\n\ngo {go_line}\n\nrequire go.etcd.io/etcd/server/v3 {version}\n"
    )
    (work / "tools.go").write_text('//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n')
    _say(f"etcd {version}: go mod tidy")
    _run(["go", "mod", "tidy"], work, "go mod tidy (etcd)")
    tmp_out = root / "build" / f"etcd-{version}.out"
    tmp_out.mkdir(parents=True, exist_ok=True)
    _say(f"building etcd {version}")
    _go_build_with_progress(
        [
            "go",
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(tmp_out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        work,
        "etcd",
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_out.rename(out_dir)


def ensure_binaries(root: Path | None = None) -> ControlPlaneBinaries:
    """Return cached binaries, building whichever is missing. Safe to call on every test run."""
    root = root or cache_root()
    bins = expected_binaries(root)
    if shutil.which("go") is None and not (bins.kube_apiserver.exists() and bins.etcd.exists()):
        raise BuildError("Go is not installed; run `make install` (needs Go 1.26+) to build the control plane")
    if not (bins.kube_apiserver.exists() and bins.kubectl.exists()):
        build_kubernetes(root)
    if not bins.etcd.exists():
        build_etcd(root)
    return bins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print-dir", action="store_true", help="print the cache directory and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cache_root())
        return 0
    try:
        bins = ensure_binaries()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _say(f"ready: {bins.kube_apiserver} {bins.kubectl} {bins.etcd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
