"""Build the product image from the repository's own Dockerfile without a Docker engine (I/O).

Each stage starts from a copy of its base root filesystem (the debootstrap stand-in for the
registry's `python:3.11-slim-bookworm`, or an earlier stage); RUN executes `/bin/sh -c` in a
chroot inside private mount and PID namespaces (proc, /dev, resolv.conf and RUN bind mounts
exist only there), COPY honours .dockerignore. A step's result is cached by a chain key
(base, every instruction, the content of every COPY source), like Docker's layer cache.
The image has two layers, the base and the difference to it, and is written as a
docker-archive: `<cache>/images/nodeport-guard-<key>.tar`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import base as base_image
from localcluster import dockerfile as df
from localcluster.layers import diff_layer
from localcluster.oci import ImageError, images_dir, pack, run, say, tar_directory
from localcluster.versions import IMAGE_NAME

REPO = Path(__file__).resolve().parents[1]
# `FROM` references the local builder can satisfy, and with what.
STANDINS = {"python:3.11-slim-bookworm": base_image.ensure_base}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILDER_VERSION = "1"
PRUNE_GRACE_SECONDS = 3600.0  # see _prune


@dataclass
class StageState:
    """A stage while it is built: its chain key, root filesystem and the image config so far."""

    name: str
    key: str
    rootfs: Path
    workdir: str = "/"
    user: str = ""
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"})
    labels: dict[str, str] = field(default_factory=dict)
    exposed: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)


def _sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def context_files(context: Path, sources: list[str], ignore: df.IgnoreRules) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        top = context / src
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file() or p.is_symlink())
        files += [p for p in candidates if not ignore.excluded(p.relative_to(context).as_posix())]
    return files


def content_key(context: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(context).as_posix().encode() + b"\0")
        h.update(oct(f.lstat().st_mode).encode() + b"\0")
        h.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
    return h.hexdigest()


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(src), str(dst)], f"copy {src}")


def _inside(rootfs: Path, path: str) -> Path:
    return rootfs / path.lstrip("/")


def _run_step(stage: StageState, command: str, mounts: list[tuple[Path, str]]) -> None:
    if stage.user not in ("", "0", "root", "0:0"):
        raise ImageError(f"RUN after USER {stage.user} is not supported by the local builder")
    argv = [
        "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--",
        sys.executable, "-m", "localcluster.chroot_run", str(stage.rootfs), stage.workdir,
    ]
    for src, target in mounts:
        argv += ["--bind", f"{src}:{target}"]
    argv += ["--env", *(f"{k}={v}" for k, v in stage.env.items()), "--", "/bin/sh", "-c", command]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise ImageError(f"RUN {command[:80]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    say(f"  done in {time.monotonic() - started:.0f}s")


def _copy_step(stage: StageState, context: Path, words: list[str], files: list[Path]) -> None:
    *sources, dest = words
    target = _inside(stage.rootfs, dest if dest.startswith("/") else f"{stage.workdir.rstrip('/')}/{dest}")
    for src in sources:
        top = context / src
        for f in (p for p in files if p == top or top in p.parents):
            if top.is_file():
                out = target / f.name if dest.endswith("/") or len(sources) > 1 else target
            else:
                out = target / f.relative_to(top)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out, follow_symlinks=False)
            os.chown(out, 0, 0, follow_symlinks=False)


def build_image(context: Path = REPO, dockerfile: Path | None = None) -> Path:
    """Build (or reuse) the final stage as a docker-archive; returns its path."""
    text = (dockerfile or context / "Dockerfile").read_text()
    ignore_file = context / ".dockerignore"
    ignore = df.parse_dockerignore(ignore_file.read_text() if ignore_file.exists() else "")
    _, stages = df.parse(text)
    cache = images_dir()
    steps = cache / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    out = cache / f"nodeport-guard-{final_key(stages, context, ignore)[:16]}.tar"
    if out.exists():
        os.utime(out)  # in use: a parallel build's prune keeps it (see _prune)
        say(f"image {IMAGE_NAME} up to date ({out.name})")
        return out
    base_rootfs = STANDINS[stages[-1].base]() if stages[-1].base in STANDINS else None
    built: dict[str, StageState] = {}
    with tempfile.TemporaryDirectory(prefix="npg-image-", dir=cache) as tmp:
        for stage in stages:
            built[stage.name] = _build_stage(stage, Path(tmp), context, ignore, built, steps)
        final = built[stages[-1].name]
        assert base_rootfs is not None
        base_layer = base_image.base_dir() / "layer.tar"
        if not base_layer.exists():
            say("packing the base layer")
            tar_directory(base_rootfs, base_layer)
        say("computing the image layer (difference to the base)")
        top_layer = Path(tmp) / "top.tar"
        diff_layer(base_rootfs, final.rootfs, top_layer)
        say(f"packing {IMAGE_NAME} into {out}")
        pack(
            [base_layer, top_layer], IMAGE_NAME, out, entrypoint=final.entrypoint, cmd=final.cmd, user=final.user,
            env=[f"{k}={v}" for k, v in final.env.items()], workdir=final.workdir, labels=final.labels,
            exposed=final.exposed,
        )
    _prune(cache, out, {s.key[:24] for s in built.values()} | _used_steps(stages, context, ignore))
    return out


def _used_steps(stages: list[df.Stage], context: Path, ignore: df.IgnoreRules) -> set[str]:
    """The step-cache entries the current Dockerfile and context refer to."""
    keys: dict[str, str] = {}
    used: set[str] = set()
    for stage in stages:
        key = keys[stage.base] if stage.base in keys else _sha(BUILDER_VERSION, "base", base_image.recipe_key())
        for ins in stage.instructions:
            key = _step_key(key, ins, context, ignore, keys)
            if ins.keyword == "RUN":
                used.add(key[:24])
        keys[stage.name] = key
    return used


def _prune(cache: Path, current: Path, used_steps: set[str], now: float | None = None) -> None:
    """Drop older product images and step results nothing refers to any more (each is hundreds of MB).

    Only what has not been written for PRUNE_GRACE_SECONDS: another checkout of the repo (a second
    worktree, a parallel session) may have just built its own image and be about to load it.
    """
    cutoff = (time.time() if now is None else now) - PRUNE_GRACE_SECONDS
    for old in cache.glob("nodeport-guard-*.tar"):
        if old != current and _mtime(old) < cutoff:
            old.unlink(missing_ok=True)
    for step in (cache / "steps").iterdir():
        if step.name not in used_steps and _mtime(step) < cutoff:
            shutil.rmtree(step, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # already gone: nothing to prune


def _start(stage: df.Stage, built: dict[str, StageState]) -> tuple[Path, str]:
    if stage.base in built:
        return built[stage.base].rootfs, built[stage.base].key
    if stage.base in STANDINS:
        return STANDINS[stage.base](), _sha(BUILDER_VERSION, "base", base_image.recipe_key())
    raise ImageError(f"FROM {stage.base}: no registry here and no local stand-in for it")


def _step_key(
    key: str, ins: df.Instruction, context: Path, ignore: df.IgnoreRules, stage_keys: dict[str, str]
) -> str:
    """Chain key after `ins`: COPY adds its files' content, RUN the keys of the stages it mounts."""
    if ins.keyword == "COPY":
        files = context_files(context, ins.args.split()[:-1], ignore)
        return _sha(key, ins.keyword, ins.args, content_key(context, files))
    if ins.keyword == "RUN":
        mounts, _ = df.split_run(ins.args)
        return _sha(key, ins.keyword, ins.args, *(stage_keys[m.source_stage] for m in mounts))
    return _sha(key, ins.keyword, ins.args)


def final_key(stages: list[df.Stage], context: Path, ignore: df.IgnoreRules) -> str:
    """The chain key of the last stage, computed without building anything."""
    keys: dict[str, str] = {}
    key = ""
    for stage in stages:
        key = keys[stage.base] if stage.base in keys else _sha(BUILDER_VERSION, "base", base_image.recipe_key())
        for ins in stage.instructions:
            key = _step_key(key, ins, context, ignore, keys)
        keys[stage.name] = key
    return key


def _build_stage(
    stage: df.Stage, tmp: Path, context: Path, ignore: df.IgnoreRules, built: dict[str, StageState], steps: Path
) -> StageState:
    start_rootfs, key = _start(stage, built)
    state = StageState(stage.name, key, tmp / stage.name / "rootfs")
    materialized: Path | None = start_rootfs  # where the current state lives until it is copied
    pending: list[tuple[df.Instruction, str]] = []  # COPY/WORKDIR not applied yet, with their workdir

    def materialize() -> None:
        nonlocal materialized
        if materialized is not None:
            _copy_tree(materialized, state.rootfs)
            materialized = None
        current = state.workdir
        for ins, workdir in pending:
            state.workdir = workdir
            _apply(state, ins, context, ignore, built)
        state.workdir = current
        pending.clear()

    for ins in stage.instructions:
        state.key = _step_key(state.key, ins, context, ignore, {n: b.key for n, b in built.items()})
        _apply_config(state, ins)
        if ins.keyword in ("COPY", "WORKDIR"):
            pending.append((ins, state.workdir))
        if ins.keyword != "RUN":
            continue
        snapshot = steps / state.key[:24]
        if (snapshot / "done").exists():
            say(f"{stage.name}: RUN {ins.args[:70]}... (cached)")
            materialized = snapshot / "rootfs"
            pending.clear()
            continue
        materialize()
        say(f"{stage.name}: RUN {ins.args[:70]}...")
        _apply(state, ins, context, ignore, built)
        _copy_tree(state.rootfs, snapshot / "rootfs")
        (snapshot / "done").write_text(state.key)
    materialize()
    return state


def _apply_config(state: StageState, ins: df.Instruction) -> None:
    if ins.keyword == "ENV":
        state.env.update({k: df.expand(v, state.env) for k, v in df.key_values(ins.args).items()})
    elif ins.keyword == "LABEL":
        state.labels.update(df.key_values(ins.args))
    elif ins.keyword == "USER":
        state.user = ins.args.strip()
    elif ins.keyword == "EXPOSE":
        state.exposed += [p if "/" in p else f"{p}/tcp" for p in ins.args.split()]
    elif ins.keyword == "CMD":
        state.cmd = df.exec_form(ins.args)
    elif ins.keyword == "ENTRYPOINT":
        state.entrypoint = df.exec_form(ins.args)
    elif ins.keyword == "WORKDIR":
        state.workdir = ins.args if ins.args.startswith("/") else f"{state.workdir.rstrip('/')}/{ins.args}"


def _apply(
    state: StageState, ins: df.Instruction, context: Path, ignore: df.IgnoreRules, built: dict[str, StageState]
) -> None:
    if ins.keyword == "WORKDIR":
        _inside(state.rootfs, state.workdir).mkdir(parents=True, exist_ok=True)
    elif ins.keyword == "COPY":
        words = ins.args.split()
        if any(w.startswith("--") for w in words):
            raise ImageError(f"Dockerfile line {ins.line}: COPY flags are not supported")
        _copy_step(state, context, words, context_files(context, words[:-1], ignore))
    elif ins.keyword == "RUN":
        mounts, command = df.split_run(ins.args)
        binds = []
        for m in mounts:
            if m.source_stage not in built:
                raise ImageError(f"Dockerfile line {ins.line}: no stage named {m.source_stage}")
            binds.append((_inside(built[m.source_stage].rootfs, m.source), m.target))
        _run_step(state, command, binds)


def ensure_product_image() -> Path:
    started = time.monotonic()
    out = build_image()
    say(f"{IMAGE_NAME}: {out} ({out.stat().st_size >> 20} MiB) in {time.monotonic() - started:.0f}s")
    return out
