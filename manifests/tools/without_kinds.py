#!/usr/bin/env python3
"""Drop objects of given kinds or API groups from kubectl's JSON output (stdlib only; pure but for stdin/stdout).

Typical use, a server-side dry run of the cert-manager overlay on a cluster without cert-manager's CRDs:

    kubectl kustomize manifests/overlays/cert-manager \\
      | kubectl annotate --local -f - -o json nodeport-guard.io/none- \\
      | python3 manifests/tools/without_kinds.py --group cert-manager.io \\
      | kubectl apply --dry-run=server -f -

`kubectl kustomize` prints YAML only and PyYAML is not a dependency, so kubectl itself does the
YAML -> JSON conversion: `annotate --local` works offline without the server's REST mapping
(unlike `create/apply --dry-run=client -o json`, which need discovery and so fail on the very
kinds we want to drop), and removing an annotation nobody sets changes nothing but adding an
empty `annotations: {}`. Input: a stream of JSON objects, or kubectl `List`s of them.
Output: one `v1 List` with the kept objects in input order (apply order matters: Namespace first).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

Obj = dict[str, Any]


class FilterError(ValueError):
    pass


def read_objects(text: str) -> Iterator[Obj]:
    """Every object in a stream of concatenated JSON values, `List`s expanded."""
    decoder = json.JSONDecoder()
    pos, count = 0, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise FilterError(
                f"input is not a stream of JSON objects ({exc.msg} at char {exc.pos}); convert YAML with "
                "`kubectl annotate --local -f - -o json nodeport-guard.io/none-` first"
            ) from exc
        count += 1
        if not isinstance(value, dict) or not value.get("kind") or not value.get("apiVersion"):
            raise FilterError(f"JSON value {count} is not a Kubernetes object (needs apiVersion and kind)")
        if str(value["kind"]).endswith("List") and isinstance(value.get("items"), list):
            yield from value["items"]
        else:
            yield value


def group_of(obj: Obj) -> str:
    group, slash, _version = str(obj["apiVersion"]).rpartition("/")
    return group if slash else ""  # "v1" is the core group


def should_drop(obj: Obj, kinds: Sequence[str], groups: Sequence[str]) -> bool:
    """`kinds` entries are `Kind` (any group) or `Kind.group`; `groups` are API group names."""
    kind, group = str(obj["kind"]), group_of(obj)
    return group in groups or any(k in (kind, f"{kind}.{group}") for k in kinds)


def filter_objects(text: str, kinds: Sequence[str], groups: Sequence[str]) -> tuple[Obj, list[Obj]]:
    """A `v1 List` of the objects to keep, and the dropped objects (both in input order)."""
    kept: list[Obj] = []
    dropped: list[Obj] = []
    for obj in read_objects(text):
        (dropped if should_drop(obj, kinds, groups) else kept).append(obj)
    return {"apiVersion": "v1", "kind": "List", "items": kept}, dropped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", metavar="KIND", help="Kind or Kind.group to drop")
    parser.add_argument("--group", action="append", default=[], help="drop every kind of this API group")
    args = parser.parse_args(argv)
    if not args.kinds and not args.group:
        parser.error("name at least one KIND or --group")
    try:
        kept, dropped = filter_objects(sys.stdin.read(), args.kinds, args.group)
    except FilterError as exc:
        print(f"without_kinds: {exc}", file=sys.stderr)
        return 2
    json.dump(kept, sys.stdout, indent=1)
    sys.stdout.write("\n")
    for obj in dropped:
        meta = obj.get("metadata") or {}
        where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
        print(f"without_kinds: dropped {obj['kind']} {where}{meta.get('name')} ({obj['apiVersion']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
