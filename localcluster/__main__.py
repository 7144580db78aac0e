"""`python -m localcluster up|down|status|env|image|backends|probe`: the local two-node cluster by hand."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from localcluster import cluster as lc
from localcluster.build import BuildError
from localcluster.oci import ImageError
from localcluster.procs import StartError
from localcluster.state import State, alive, is_stale, list_clusters

DEFAULT_NAME = "npg"


def _up(args: argparse.Namespace) -> int:
    from localcluster.image import ensure_product_image

    images = [] if args.no_image else [ensure_product_image()]
    c = lc.up(args.name, images=images)
    print(f"\nThe cluster is up. To use it:\n  eval \"$({sys.executable} -m localcluster env --name {args.name})\"")
    print("  kubectl get nodes -o wide\n  make deploy")
    print(f"Tear it down with: make cluster-down (or {sys.executable} -m localcluster down --name {args.name})")
    del c
    return 0


def _down(args: argparse.Namespace) -> int:
    names = [n for n in list_clusters() if is_stale(n)] if args.stale else [args.name]
    failed = False
    for name in names:
        problems = lc.down(name)
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        failed = failed or bool(problems)
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    names = list_clusters()
    if not names:
        print("no local cluster")
        return 1
    code = 1
    for name in names:
        state = State.load(name)
        if state is None:
            print(f"{name}: leftovers without a state file (run: down --name {name})")
            continue
        dead = [p.what for p in state.procs if not alive(p)]
        print(f"{name}: apiserver {state.apiserver_url or '-'}, {len(state.procs)} processes"
              + (f", NOT running: {', '.join(dead)}" if dead else ", all running")
              + (" (stale: owner gone)" if is_stale(name) else ""))
        if name == args.name and not dead:
            c = lc.attach(name)
            print(c.kubectl("get", "nodes", "-o", "wide", check=False).stdout)
            code = 0
    return code


def _env(args: argparse.Namespace) -> int:
    c = lc.attach(args.name)
    for key, value in c.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _image(args: argparse.Namespace) -> int:
    from localcluster.image import ensure_product_image

    print(ensure_product_image())
    return 0


def _backends(args: argparse.Namespace) -> int:
    from localcluster.backends import NAMESPACE, render_backends

    c = lc.attach(args.name)
    print(c.kubectl("apply", "-f", "-", stdin=render_backends()).stdout, end="")
    c.kubectl("-n", NAMESPACE, "rollout", "status", "daemonset/echo", "--timeout=120s", timeout=150)
    print(c.kubectl("-n", NAMESPACE, "get", "services,pods", "-o", "wide").stdout, end="")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from localcluster.probe import Proto, Target, probe_many

    c = lc.attach(args.name)
    proto: Proto = "udp" if args.udp else "tcp"
    [result] = probe_many(c.plan.client(args.client).netns, [Target(args.address, args.port, proto, 2.0)])
    print(f"{args.client} -> {args.address}:{args.port}/{proto}: {result}")
    return 0 if result.startswith("answer:") else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, helptext in (
        ("up", "bring the cluster up (builds what is not cached) and load the product image"),
        ("down", "remove everything the cluster made (also after a crash)"),
        ("status", "what runs"),
        ("env", "print export lines for KUBECONFIG and PATH (kubectl v1.37)"),
        ("image", "build (or reuse) the product image from the Dockerfile; print the archive path"),
        ("backends", "echo pods (TCP+UDP, answer with their name) behind NodePorts 30080-30083"),
        ("probe", "one new connection from a client namespace; prints the answer (the pod name) or timeout"),
    ):
        p = sub.add_parser(cmd, help=helptext)
        p.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})")
        if cmd == "up":
            p.add_argument("--no-image", action="store_true", help="do not build or load the product image")
        if cmd == "probe":
            p.add_argument("client", choices=["client-a", "client-b"])
            p.add_argument("address")
            p.add_argument("port", type=int)
            p.add_argument("--udp", action="store_true")
        if cmd == "down":
            p.add_argument("--stale", action="store_true", help="remove every cluster whose owner is gone")
    args = parser.parse_args(argv)
    handlers = {
        "up": _up, "down": _down, "status": _status, "env": _env, "image": _image, "backends": _backends,
        "probe": _probe,
    }
    try:
        return handlers[args.command](args)
    except (lc.PrerequisiteError, BuildError, ImageError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
