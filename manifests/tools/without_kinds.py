#!/usr/bin/env python3
"""Drop objects of given kinds or API groups from `kubectl kustomize` output (pure text filter, stdlib only).

Usage:
    kubectl kustomize manifests/overlays/cert-manager \\
      | python3 manifests/tools/without_kinds.py --group cert-manager.io \\
      | kubectl apply --dry-run=server -f -

    python3 manifests/tools/without_kinds.py Certificate Issuer.cert-manager.io < in.yaml > out.yaml

Why text and not YAML: kubectl cannot convert manifests to JSON offline (every `-o json` path
needs the server's REST mapping, which is exactly what lacks the CRDs), and PyYAML is not a
dependency. Kustomize's output is regular enough not to need a parser: documents are
separated by a line `---`, every object is one mapping whose keys start at column 0, and
nested content (including block scalars) is always indented. So a document's own
`apiVersion:` and `kind:` are its column-0 lines. Input that breaks these assumptions is
rejected (exit 2) instead of being filtered wrongly.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SEPARATOR = re.compile(r"^---[ \t]*$")
TOP_LEVEL = re.compile(r"^(apiVersion|kind):[ \t]*(?P<value>.*?)[ \t]*$")


class FilterError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Document:
    index: int
    lines: tuple[str, ...]
    api_version: str
    kind: str

    @property
    def group(self) -> str:
        group, slash, _version = self.api_version.rpartition("/")
        return group if slash else ""  # "v1" is the core group


def split_documents(text: str) -> list[list[str]]:
    docs: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if SEPARATOR.match(line.rstrip("\n")):
            docs.append([])
        else:
            docs[-1].append(line)
    return [d for d in docs if any(_is_content(line) for line in d)]


def parse_document(index: int, lines: Sequence[str]) -> Document:
    found: dict[str, str] = {}
    for line in lines:
        match = TOP_LEVEL.match(line.rstrip("\n"))
        if match is None:
            continue
        key = match.group(1)
        if key in found:
            raise FilterError(f"document {index}: '{key}:' appears twice at column 0; is this kustomize output?")
        found[key] = _unquote(match.group("value"))
    missing = [k for k in ("apiVersion", "kind") if not found.get(k)]
    if missing:
        raise FilterError(
            f"document {index}: no column-0 {' or '.join(missing)}; pipe `kubectl kustomize` output into this filter"
        )
    if found["kind"].endswith("List"):
        raise FilterError(f"document {index}: kind {found['kind']} holds several objects; expand it first")
    return Document(index=index, lines=tuple(lines), api_version=found["apiVersion"], kind=found["kind"])


def should_drop(doc: Document, kinds: Iterable[str], groups: Iterable[str]) -> bool:
    """`kinds` entries are `Kind` (any group) or `Kind.group`; `groups` are API group names."""
    if doc.group in set(groups):
        return True
    return any(k == doc.kind or k == f"{doc.kind}.{doc.group}" for k in kinds)


def filter_text(text: str, kinds: Sequence[str], groups: Sequence[str]) -> tuple[str, list[Document]]:
    """The input without the matching documents, and the documents dropped (in input order)."""
    kept: list[str] = []
    dropped: list[Document] = []
    for index, lines in enumerate(split_documents(text)):
        doc = parse_document(index, lines)
        if should_drop(doc, kinds, groups):
            dropped.append(doc)
            continue
        body = "".join(doc.lines)
        kept.append(body if body.endswith("\n") else body + "\n")
    return "---\n".join(kept), dropped


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _unquote(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", metavar="KIND", help="Kind or Kind.group to drop")
    parser.add_argument("--group", action="append", default=[], help="drop every kind of this API group")
    args = parser.parse_args(argv)
    if not args.kinds and not args.group:
        parser.error("name at least one KIND or --group")
    try:
        out, dropped = filter_text(sys.stdin.read(), args.kinds, args.group)
    except FilterError as exc:
        print(f"without_kinds: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    for doc in dropped:
        print(f"without_kinds: dropped {doc.kind} ({doc.api_version}) document {doc.index}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
