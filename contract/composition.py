"""What the annotations of several policies mean together for one NodePort in one family (pure).

Each version-2 annotation carries only its own policy's part (docs/annotation.md): the
NodePort's verdict is composed from the parts of every policy listing it, with the
NetworkPolicy rule "a source passes when every endpoint pod accepts it" (union of the policies
selecting a pod, intersection over pods). The enforcer programs what this returns; the webhook's
tests hold it equal to the namespace-wide resolution in `webhook/semantics.py`.

Version-1 entries (a namespace-wide verdict copied into each policy) are only ever intersected
with the result, so a stale copy left during an upgrade can narrow a NodePort but never open one.

Modes (docs/semantics.md, "Audit mode"): the verdict is composed from every part whatever its
mode; the NodePort is audited only when every part listing it is in audit mode, and enforced as
soon as one is enforcing (`compose_mode`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from contract.annotation import CidrRule, Mode, NodePortEntry, Scope, SourceSet
from contract.intervals import Intervals, intersect, merge, of_networks, subtract, to_prefixes

_BITS = {4: 32, 6: 128}


def everything(family: int) -> Intervals:
    return ((0, (1 << _BITS[family]) - 1),)


def _rule_intervals(rule: CidrRule, family: int) -> Intervals:
    net = ipaddress.ip_network(rule.cidr, strict=False)
    if net.version != family:
        return ()
    excepts = [ipaddress.ip_network(e, strict=False) for e in rule.excepts]
    return subtract(of_networks([net]), of_networks(e for e in excepts if e.version == family))


def source_intervals(allow: SourceSet, family: int) -> Intervals:
    """The addresses of one family that a contract SourceSet allows."""
    if allow.all_sources:
        return everything(family)
    return merge(span for rule in allow.cidrs for span in _rule_intervals(rule, family))


@dataclass(frozen=True, slots=True)
class Part:
    """One entry's part in one (family, protocol, port), as address intervals of that family."""

    scope: Scope
    allow: Intervals = ()  # scope all / verdict
    groups: tuple[tuple[str, Intervals | None], ...] = ()  # scope some: (group id, allowed or None)
    mode: Mode = "enforce"  # the mode of the annotation the entry comes from


def part_of(entry: NodePortEntry, family: int, mode: Mode = "enforce") -> Part:
    # A version-1 verdict predates modes: it is always enforced (it only ever narrows).
    mode = "enforce" if entry.scope == "verdict" else mode
    if entry.scope == "some":
        return Part(
            scope="some",
            groups=tuple(
                (g.id, None if g.allow is None else source_intervals(g.allow, family)) for g in entry.groups
            ),
            mode=mode,
        )
    return Part(scope=entry.scope, allow=source_intervals(entry.allow, family), mode=mode)


def compose_mode(parts: Iterable[Part]) -> Mode:
    """The NodePort's mode: audit only when every part listing it audits; one enforcing part (or a
    version-1 verdict) enforces the whole composed verdict. No part at all: enforce (nothing to audit)."""
    modes = {part.mode for part in parts}
    return "audit" if modes == {"audit"} else "enforce"


def compose(parts: Iterable[Part], family: int) -> Intervals:
    """The sources of `family` allowed on the NodePort; `everything(family)` means unfiltered.

    - Parts of scope "all": their policy selects every endpoint pod, so each pod accepts at
      least their union S.
    - Parts of scope "some" name every endpoint group; a group selected by some policy accepts
      S plus what the policies selecting it allow; a group no policy selects is not isolated and
      accepts everyone (so it does not narrow the result).
    - The result is the intersection over groups (or S when no part names groups).
    - Version-1 verdicts are intersected with it (fail closed while copies are stale).
    """
    whole = everything(family)
    star: list[tuple[int, int]] = []
    has_all = False
    universe: set[str] = set()
    selected: dict[str, list[tuple[int, int]]] = {}
    verdicts: list[Intervals] = []
    for part in parts:
        if part.scope == "verdict":
            verdicts.append(part.allow)
        elif part.scope == "all":
            has_all = True
            star.extend(part.allow)
        else:
            for group_id, allowed in part.groups:
                universe.add(group_id)
                if allowed is not None:
                    selected.setdefault(group_id, []).extend(allowed)
    common = merge(star)
    if universe:
        result = whole
        for group_id in sorted(universe):
            if not has_all and group_id not in selected:
                continue  # not isolated: accepts everyone
            result = intersect(result, merge([*common, *selected.get(group_id, ())]))
            if not result:
                break
    elif has_all:
        result = common
    else:
        result = whole
    for verdict in verdicts:
        result = intersect(result, verdict)
    return result


def render_intervals(by_family: dict[int, Intervals], candidates: Iterable[CidrRule]) -> SourceSet:
    """A composed result back in the contract's SourceSet form, for people to read.

    A family whose result is exactly one of `candidates` (the blocks the entries name) keeps that
    block's cidr/except form; otherwise it is written as disjoint prefixes.
    """
    if all(v == everything(f) for f, v in by_family.items()):
        return SourceSet.everyone()
    known = list(candidates)
    rules: list[CidrRule] = []
    for family, intervals in sorted(by_family.items()):
        if not intervals:
            continue
        same = next((r for r in sorted(known) if _rule_intervals(r, family) == intervals), None)
        if same is not None:
            rules.append(same)
        else:
            rules.extend(CidrRule(cidr=str(n)) for n in to_prefixes(intervals, family))
    return SourceSet(all_sources=False, cidrs=tuple(sorted(rules)))
