"""Build the Kubernetes binaries and etcd from the Go module proxy into a cache outside the repo (I/O).

`k8s.io/kubernetes` cannot be `go install`ed (its go.mod maps the staging modules with
local replaces), so we write a wrapper module that requires the release and pins every
staging module to the matching v0.Y.Z, the way downstream projects do. One wrapper module
serves the control plane (kube-apiserver, kubectl) and the node binaries of the local
cluster (kubelet, kube-proxy, kube-controller-manager, kube-scheduler); each binary is
cached on its own in `<cache>/k8s-<version>/`.

Run: `python -m localcluster.build [--node]` (prints progress; idempotent; cached by version).
`python -m tests.controlplane.build` is the same command without `--node`.
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

from localcluster.versions import ETCD_VERSION, KUBERNETES_GO_LINE, KUBERNETES_VERSION

BUILD_TAGS = "selinux,notest,grpcnotrace"
STAGING_PIN = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+v0\.0\.0\s*$", re.MULTILINE)


class BuildError(RuntimeError):
    """A control-plane binary could not be built; the message says what to do."""


# Every command the wrapper module builds, in build order; tools.go imports all of them so the
# module graph is the same whichever subset a run needs.
KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "kube-controller-manager",
    "kube-scheduler",
)
CONTROL_PLANE_COMMANDS = ("kube-apiserver", "kubectl")
NODE_COMMANDS = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True, slots=True)
class ControlPlaneBinaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path


@dataclass(frozen=True, slots=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    kube_controller_manager: Path
    kube_scheduler: Path


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


def expected_node_binaries(root: Path | None = None) -> NodeBinaries:
    k8s = (root or cache_root()) / f"k8s-{KUBERNETES_VERSION}"
    return NodeBinaries(
        kubelet=k8s / "kubelet",
        kube_proxy=k8s / "kube-proxy",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
    )


def _say(msg: str) -> None:
    print(f"[k8s-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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


def build_kubernetes(root: Path, names: tuple[str, ...], version: str = KUBERNETES_VERSION) -> None:
    """Build the named commands of the release into `<root>/k8s-<version>/`, one atomic rename each."""
    out_dir = root / f"k8s-{version}"
    work = root / "build" / f"k8s-{version}"
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{name}"\n' for name in KUBERNETES_COMMANDS)
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n")
    _say(f"kubernetes {version}: go mod tidy ({len(replaces)} staging modules pinned)")
    _run(["go", "mod", "tidy"], work, "go mod tidy (kubernetes)")
    tmp_out = root / "build" / f"k8s-{version}.out"
    tmp_out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, start=1):
        _say(f"building {name} {version} ({i} of {len(names)}; a cold build takes 3-20 minutes on 2 cores)")
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
                f"k8s.io/kubernetes/cmd/{name}",
            ],
            work,
            name,
        )
        os.replace(tmp_out / name, out_dir / name)


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


def _require_go(missing: list[Path]) -> None:
    if missing and shutil.which("go") is None:
        names = ", ".join(p.name for p in missing)
        raise BuildError(f"Go is not installed and {names} is not cached; run `make install` (needs Go 1.26+)")


def ensure_binaries(root: Path | None = None) -> ControlPlaneBinaries:
    """Return cached control-plane binaries, building whichever is missing. Safe to call on every test run."""
    root = root or cache_root()
    bins = expected_binaries(root)
    _require_go([p for p in (bins.kube_apiserver, bins.kubectl, bins.etcd) if not p.exists()])
    missing = tuple(n for n in CONTROL_PLANE_COMMANDS if not (root / f"k8s-{KUBERNETES_VERSION}" / n).exists())
    if missing:
        build_kubernetes(root, missing)
    if not bins.etcd.exists():
        build_etcd(root)
    return bins


def ensure_node_binaries(root: Path | None = None) -> NodeBinaries:
    """Return cached kubelet, kube-proxy, kube-controller-manager and kube-scheduler, building what is missing."""
    root = root or cache_root()
    k8s = root / f"k8s-{KUBERNETES_VERSION}"
    missing = tuple(n for n in NODE_COMMANDS if not (k8s / n).exists())
    _require_go([k8s / n for n in missing])
    if missing:
        build_kubernetes(root, missing)
    return expected_node_binaries(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print-dir", action="store_true", help="print the cache directory and exit")
    parser.add_argument("--node", action="store_true", help="also the local cluster's node binaries")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cache_root())
        return 0
    try:
        bins = ensure_binaries()
        _say(f"ready: {bins.kube_apiserver} {bins.kubectl} {bins.etcd}")
        if args.node:
            node = ensure_node_binaries()
            _say(f"ready: {node.kubelet} {node.kube_proxy} {node.kube_controller_manager} {node.kube_scheduler}")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
