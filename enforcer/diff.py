"""Our skeleton rules in iptables, `*-save` parsing, and the desired vs installed diff per family (pure).

The set layout (names, types, members, `ipset` parsing, set changes) is `enforcer/sets.py`; it is
re-exported here so that `diff.<name>` keeps naming the whole dataplane layout.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from contract.annotation import PROTOCOLS
from enforcer.door_sets import door_allow_set_name, door_audit_set_name, doors_set_name
from enforcer.plan import Family
from enforcer.sets import (
    ALLOW_MAXELEM,
    BITMAP_PROTOCOLS,
    COUNTER_MAXELEM,
    SET_PREFIX,
    TMP_SUFFIX,
    InstalledSet,
    MembersMemo,
    SetAction,
    SetChange,
    allow_set_name,
    audit_set_name,
    counter_set_name,
    counter_set_names,
    family_of_set,
    header_matches,
    is_counter_set,
    parse_installed_state,
    parse_ipset_save,
    parse_ipset_terse,
    parse_port_member,
    plan_set_changes,
    port_match_flags,
    port_set_name,
    render_allow_member,
    render_audit_members,
    render_ipset_restore,
    render_members,
    render_net,
    render_port_members,
    retired_set_names,
    set_create_options,
    set_names,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOW_MAXELEM",
    "AUDIT_CHAIN",
    "BITMAP_PROTOCOLS",
    "CHAIN_PREFIX",
    "CHECK_CHAIN",
    "COMMENT_PREFIX",
    "COUNTER_MAXELEM",
    "HOOK_CHAIN",
    "INGRESS_CHAIN",
    "OUR_CHAINS",
    "SET_PREFIX",
    "TABLE",
    "TMP_SUFFIX",
    "FamilyDiff",
    "InstalledRules",
    "InstalledSet",
    "Match",
    "MembersMemo",
    "SetAction",
    "SetChange",
    "SkeletonRule",
    "allow_set_name",
    "audit_set_name",
    "build_skeleton",
    "counter_set_name",
    "counter_set_names",
    "family_of_set",
    "header_matches",
    "is_absent",
    "is_counter_set",
    "parse_installed_state",
    "parse_ipset_save",
    "parse_ipset_terse",
    "parse_iptables_save",
    "parse_port_member",
    "plan_family_diff",
    "plan_set_changes",
    "port_match_flags",
    "port_set_name",
    "render_allow_member",
    "render_audit_members",
    "render_ipset_restore",
    "render_members",
    "render_net",
    "render_port_members",
    "render_skeleton_restore",
    "retired_set_names",
    "set_create_options",
    "set_names",
    "skeleton_matches",
]

CHAIN_PREFIX = "NPG-"
COMMENT_PREFIX = "npg:"
TABLE = "mangle"
HOOK_CHAIN = "PREROUTING"
INGRESS_CHAIN = "NPG-INGRESS"
CHECK_CHAIN = "NPG-CHECK"
AUDIT_CHAIN = "NPG-AUDIT"
DOOR_CHAIN = "NPG-DOOR"
OUR_CHAINS: tuple[str, ...] = (INGRESS_CHAIN, CHECK_CHAIN, AUDIT_CHAIN, DOOR_CHAIN)


# --- skeleton rules --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    name: str
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SkeletonRule:
    """One rule of our fixed skeleton; `hash` identifies its full content (chain, family, spec)."""

    family: Family
    chain: str
    protocol: str | None
    matches: tuple[Match, ...]
    target: str
    target_options: tuple[tuple[str, str], ...] = ()
    goto: bool = False  # -g: when the target chain ends, return to our caller's caller
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.family}|{TABLE}|{self.chain}|{self.spec()}".encode()).hexdigest()
        object.__setattr__(self, "hash", digest[:16])

    def _matches(self) -> list[str]:
        parts: list[str] = []
        if self.protocol:
            parts += ["-p", self.protocol]
        for m in self.matches:
            parts += ["-m", m.name]
            for opt, value in m.options:
                # A value "!X" is the negated option, as iptables-save prints it ("! --opt X");
                # python-iptables reads the same "!X" as the negation.
                negated = value.startswith("!")
                parts += [*(["!"] if negated else []), f"--{opt}", *value.lstrip("!").split(" ")]
        return parts

    def _jump(self) -> list[str]:
        parts = ["-g" if self.goto else "-j", self.target]
        for opt, value in self.target_options:
            parts += [f"--{opt}", *value.split(" ")]
        return parts

    def spec(self) -> str:
        return " ".join(self._matches() + self._jump())

    @property
    def comment(self) -> str:
        return f"{COMMENT_PREFIX}{self.hash}"

    def body(self) -> str:
        """The rule's arguments with its hash comment placed before the target."""
        return " ".join([*self._matches(), "-m", "comment", "--comment", self.comment, *self._jump()])

    def render(self) -> str:
        """The rule as an iptables-restore line: appended to its chain, or inserted first in the hook."""
        if self.chain == HOOK_CHAIN:
            return f"-I {HOOK_CHAIN} 1 {self.body()}"
        return f"-A {self.chain} {self.body()}"


def build_skeleton(family: Family, doors: bool = False) -> tuple[SkeletonRule, ...]:
    """The fixed rules of one family, in order: the hook jump first, then our chains' rules.

    New connections to a node-local address whose (protocol, port) is protected go to
    NPG-CHECK, which returns for allowed (source, proto:port) pairs. The rest of an audited port
    goes (goto) to NPG-AUDIT, which counts it in the audited counter set and lets it through; the
    rest of an enforced port is counted in the dropped counter set and dropped. A counter set
    counts a member's first packet when `SET --add-set` creates it, and every later one when the
    match before it finds the member; each denied packet therefore counts exactly once.

    With `doors` (a family with a door, docs/dataplane.md "Doors"), the hook takes every new connection,
    whatever its destination (a MetalLB L2 address is not local): NPG-INGRESS sends a door's to NPG-DOOR
    and returns the others unless their destination is local, then the NodePort rules follow unchanged.
    Without doors the skeleton is exactly what it was before doors existed (same rules, same hashes).
    """
    local = Match("addrtype", (("dst-type", "LOCAL"),))
    new = Match("conntrack", (("ctstate", "NEW"),))
    rules = [SkeletonRule(family, HOOK_CHAIN, None, (new,) if doors else (local, new), INGRESS_CHAIN)]
    if doors:
        door_match = Match("set", (("match-set", f"{doors_set_name(family)} dst,dst"),))
        rules.append(SkeletonRule(family, INGRESS_CHAIN, None, (door_match,), DOOR_CHAIN, goto=True))
        not_local = Match("addrtype", (("dst-type", "!LOCAL"),))
        rules.append(SkeletonRule(family, INGRESS_CHAIN, None, (not_local,), "RETURN"))
    for proto in PROTOCOLS:
        rules.append(
            SkeletonRule(
                family,
                INGRESS_CHAIN,
                proto.lower(),
                (Match("set", (("match-set", f"{port_set_name(family, proto)} {port_match_flags(proto)}"),)),),
                CHECK_CHAIN,
            )
        )
    rules.append(
        SkeletonRule(family, CHECK_CHAIN, None, (Match("set", (("match-set", f"{allow_set_name(family)} src,dst"),)),),
                     "RETURN")
    )
    audited = (("match-set", f"{audit_set_name(family)} dst,dst"),)
    rules.append(SkeletonRule(family, CHECK_CHAIN, None, (Match("set", audited),), AUDIT_CHAIN, goto=True))
    rules.extend(_counting(family, CHECK_CHAIN, counter_set_name(family, "enforce"), "DROP"))
    rules.extend(_counting(family, AUDIT_CHAIN, counter_set_name(family, "audit"), "RETURN"))
    if doors:
        allowed = (("match-set", f"{door_allow_set_name(family)} dst,dst,src"),)
        rules.append(SkeletonRule(family, DOOR_CHAIN, None, (Match("set", allowed),), "RETURN"))
        audited_door = (("match-set", f"{door_audit_set_name(family)} dst,dst"),)
        rules.append(SkeletonRule(family, DOOR_CHAIN, None, (Match("set", audited_door),), AUDIT_CHAIN, goto=True))
        rules.extend(_counting(family, DOOR_CHAIN, counter_set_name(family, "enforce"), "DROP"))
    return tuple(rules)


def _counting(family: Family, chain: str, counter_set: str, verdict: str) -> list[SkeletonRule]:
    """Count the packet in `counter_set` (per node address and proto:port), then `verdict`."""
    key = f"{counter_set} dst,dst"
    return [
        SkeletonRule(family, chain, None, (Match("set", (("match-set", key),)),), verdict),
        SkeletonRule(family, chain, None, (), "SET", (("add-set", key),)),
        SkeletonRule(family, chain, None, (), verdict),
    ]


@dataclass(frozen=True, slots=True)
class InstalledRules:
    """Our footprint in one table, read from `iptables-save -t mangle`."""

    chains: tuple[str, ...]  # our chains that exist
    chain_hashes: Mapping[str, tuple[str, ...]]  # per our chain, hash per rule ("" = rule without our comment)
    hook_rules: tuple[tuple[str, str], ...]  # (hash, rule text after "-A PREROUTING ") of our hook rules


_COMMENT_RE = re.compile(r'--comment "?' + re.escape(COMMENT_PREFIX) + r'([0-9a-f]+)"?')


def parse_iptables_save(text: str) -> InstalledRules:
    chains: list[str] = []
    hashes: dict[str, list[str]] = {}
    hook: list[tuple[str, str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_table = line[1:].strip() == TABLE
            continue
        if not in_table:
            continue
        if line.startswith(":" + CHAIN_PREFIX):
            name = line[1:].split(" ", 1)[0]
            chains.append(name)
            hashes.setdefault(name, [])
        elif line.startswith("-A "):
            chain, _, rest = line[3:].partition(" ")
            m = _COMMENT_RE.search(rest)
            if chain.startswith(CHAIN_PREFIX):
                hashes.setdefault(chain, []).append(m.group(1) if m else "")
            elif chain == HOOK_CHAIN and m:
                hook.append((m.group(1), rest))
    return InstalledRules(
        chains=tuple(sorted(chains)),
        chain_hashes={k: tuple(v) for k, v in sorted(hashes.items())},
        hook_rules=tuple(hook),
    )


def skeleton_matches(installed: InstalledRules, skeleton: Iterable[SkeletonRule]) -> bool:
    """True when our chains hold exactly the skeleton and the hook holds exactly our one jump."""
    rules = list(skeleton)
    want_chains: dict[str, list[str]] = {}
    for r in rules:
        if r.chain != HOOK_CHAIN:
            want_chains.setdefault(r.chain, []).append(r.hash)
    hook = [r.hash for r in rules if r.chain == HOOK_CHAIN]
    return (
        installed.chains == tuple(sorted(want_chains))
        and {k: list(v) for k, v in installed.chain_hashes.items()} == want_chains
        and [h for h, _ in installed.hook_rules] == hook
    )


def is_absent(installed: InstalledRules) -> bool:
    return not installed.chains and not installed.hook_rules


def render_skeleton_restore(installed: InstalledRules, skeleton: Iterable[SkeletonRule] | None) -> str:
    """An `iptables-restore --noflush` script replacing our footprint by `skeleton` (None = remove all).

    Declaring our chains flushes them under --noflush; other chains are never mentioned, so
    nothing of other writers is touched. Old hook rules are deleted by their exact text.
    """
    rules = list(skeleton or ())
    out = [f"*{TABLE}"]
    keep_chains = sorted({r.chain for r in rules if r.chain != HOOK_CHAIN})
    for chain in sorted(set(keep_chains) | set(installed.chains)):
        out.append(f":{chain} - [0:0]")
    out.extend(f"-D {HOOK_CHAIN} {text}" for _, text in installed.hook_rules)
    out.extend(r.render() for r in rules)
    for chain in sorted(set(installed.chains) - set(keep_chains)):
        out.append(f"-X {chain}")
    out.append("COMMIT")
    return "".join(line + "\n" for line in out)


# --- whole diff -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FamilyDiff:
    family: Family
    set_changes: tuple[SetChange, ...]
    rewrite_skeleton: bool  # install or repair our rules
    remove_skeleton: bool  # family no longer used: remove our rules (then destroy its sets)
    skeleton_drift: bool  # a partial or altered skeleton of ours was found
    doors: bool = False  # the family has doors: the skeleton with the door rules


def plan_family_diff(
    family: Family,
    desired_members: Mapping[str, frozenset[str]],
    installed_sets: Mapping[str, InstalledSet],
    installed_rules: InstalledRules,
    nodeport_range: tuple[int, int],
) -> FamilyDiff:
    """The changes for one family, given every desired set (render_members) and what is installed."""
    prefix = f"{SET_PREFIX}{family}-"
    want = {n: m for n, m in desired_members.items() if n.startswith(prefix)}
    have = {n: s for n, s in installed_sets.items() if n.startswith(prefix)}
    set_changes = plan_set_changes(want, have, nodeport_range)
    used = bool(want)
    doors = doors_set_name(family) in want
    skeleton = build_skeleton(family, doors)
    present = not is_absent(installed_rules)
    matches = skeleton_matches(installed_rules, skeleton)
    return FamilyDiff(
        family=family,
        set_changes=set_changes,
        rewrite_skeleton=used and not matches,
        remove_skeleton=not used and present,
        skeleton_drift=present and not matches and used,
        doors=doors,
    )
