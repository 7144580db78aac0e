"""Passive checks of the netfilter path ahead of our jump: iptables-save and nft JSON judged (pure).

In iptables (either backend) an ACCEPT reached from built-in `mangle PREROUTING` ends that table at
that hook, so a rule ahead of our jump that can ACCEPT a new packet skips us. In nftables an `accept`
in another base chain does not stop ours; only a rewrite (dnat, redirect, tproxy) at a priority ahead
of ours changes what we see (the destination is no longer local, or no longer the NodePort).
Sources: /work/shared/notes/datapath-interop.md, docs/operations.md#supported-platforms.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract.path_status import Finding

OUR_JUMP_TARGET = "NPG-INGRESS"
HOOK = "PREROUTING"
MANGLE_PRIORITY = -150  # iptables' mangle; iptables-nft's mangle PREROUTING base chain has it too
XTABLES_TABLES = {"raw", "mangle", "nat", "filter", "security"}  # iptables-nft's own tables, judged from -save
REWRITES = ("dnat", "redirect", "tproxy")
# A packet left untracked is never NEW to conntrack: our `--ctstate NEW` rule does not see it.
UNTRACK = ("notrack",)
REWRITTEN_FIELDS = ("daddr", "dport")  # a stateless rewrite of these (`ip daddr set ...`) is a DNAT by hand
MAX_DEPTH = 8  # user chains followed from PREROUTING (loops are impossible in iptables; bounded anyway)


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    text: str  # as iptables-save prints it
    args: tuple[str, ...]

    def option(self, name: str) -> str | None:
        """The value after `name` (e.g. -j, --ctstate), or None."""
        for i, a in enumerate(self.args[:-1]):
            if a == name:
                return self.args[i + 1]
        return None

    @property
    def target(self) -> str | None:
        return self.option("-j") or self.option("-g")

    @property
    def goto(self) -> bool:
        return "-g" in self.args


def parse_save_table(text: str, table: str = "mangle") -> dict[str, list[Rule]]:
    """Pure: one table of `iptables-save` output -> chain -> rules in order (chains declared but empty kept)."""
    chains: dict[str, list[Rule]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            current = line[1:]
        elif current == table and line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif current == table and line.startswith("-A "):
            try:
                args = tuple(shlex.split(line))
            except ValueError:
                args = tuple(line.split())
            chains.setdefault(args[1], []).append(Rule(args[1], line, args[2:]))
    return chains


def _new_excluded(rule: Rule) -> bool:
    """The rule cannot match a new connection: conntrack/state restricted to states without NEW."""
    for opt in ("--ctstate", "--state"):
        value = rule.option(opt)
        if value is not None:
            negated = any(rule.args[i] == "!" and rule.args[i + 1] == opt for i in range(len(rule.args) - 1))
            states = set(value.upper().split(","))
            if not negated and "NEW" not in states:
                return True
            if negated and "NEW" in states:
                return True
    return False


def _conditional_on_mark(rule: Rule) -> bool:
    return rule.option("--mark") is not None or rule.option("--connmark") is not None


@dataclass(frozen=True, slots=True)
class _Verdict:
    kind: str  # "bypass" or "suspect"
    rule: Rule
    via: tuple[str, ...]


def _judge_chain(chains: Mapping[str, list[Rule]], name: str, via: tuple[str, ...], builtin: bool) -> list[_Verdict]:
    """What the rules of `name` (reached through `via`) can do to a new packet before we see it."""
    out: list[_Verdict] = []
    if len(via) > MAX_DEPTH:
        return [_Verdict("suspect", Rule(name, f"(chains nested deeper than {MAX_DEPTH})", ()), via)]
    for rule in chains.get(name, []):
        target = rule.target
        if target is None or _new_excluded(rule):
            continue
        if target in ("ACCEPT", "TPROXY") or (builtin and target == "RETURN"):
            # A RETURN from the built-in chain falls to its policy, ACCEPT: the same as an ACCEPT.
            out.append(_Verdict("suspect" if _conditional_on_mark(rule) else "bypass", rule, via))
        elif target in chains and target != OUR_JUMP_TARGET:
            inner = _judge_chain(chains, target, (*via, target), False)
            out.extend(inner)
            if rule.goto and builtin:
                # A goto from the built-in chain: the user chain's end is the built-in policy (ACCEPT).
                out.append(_Verdict("suspect" if _conditional_on_mark(rule) else "bypass", rule, via))
    return out


def judge_mangle_prerouting(save_text: str, family: int, backend: str) -> tuple[Finding, ...]:
    """Pure: findings about `mangle PREROUTING` from `iptables-save -t mangle` of the backend we use."""
    chains = parse_save_table(save_text, "mangle")
    tool = f"{'ip6' if family == 6 else 'ip'}tables-{backend}"
    prerouting = chains.get(HOOK, [])
    ours = [i for i, r in enumerate(prerouting) if r.target == OUR_JUMP_TARGET]
    if not ours:
        return (
            Finding(
                "jump-missing",
                "bypass",
                f"our jump to {OUR_JUMP_TARGET} is missing from {tool} mangle PREROUTING (flushed by a firewall "
                "reload or a cleanup script?): nothing is filtered until the enforcer re-installs it",
                f"{tool}-save -t mangle: {len(prerouting)} rules in PREROUTING, none jumps to {OUR_JUMP_TARGET}",
            ),
        )
    ahead = {HOOK: prerouting[: ours[0]], **{k: v for k, v in chains.items() if k != HOOK}}
    findings = []
    for verdict in _judge_chain(ahead, HOOK, (HOOK,), True):
        path = " -> ".join((*verdict.via, verdict.rule.chain)) if verdict.rule.chain != HOOK else HOOK
        if verdict.kind == "bypass":
            reason = (
                f"a rule ahead of our jump in {tool} mangle PREROUTING ({path}) ACCEPTs new packets: they skip "
                "nodeport-guard (Calico: FelixConfiguration iptablesMangleAllowAction: Return or chainInsertMode: "
                "Append; docs/operations.md#supported-platforms)"
            )
        else:
            reason = (
                f"a rule ahead of our jump in {tool} mangle PREROUTING ({path}) ACCEPTs marked packets: whatever "
                "sets that mark skips nodeport-guard; the canary decides"
            )
        findings.append(Finding("rule-ahead", verdict.kind, reason, verdict.rule.text))  # type: ignore[arg-type]
    return tuple(findings)


def _statements(rule: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for expr in rule.get("expr") or []:
        if isinstance(expr, dict):
            out.extend(expr.items())
    return out


def judge_nft_ruleset(document: Mapping[str, Any]) -> tuple[Finding, ...]:
    """Pure: nft base chains hooked at prerouting ahead of mangle (-150) that rewrite the destination.

    `document` is `nft -j list ruleset` (iptables-nft's own tables are judged from iptables-save instead)."""
    items = [i for i in document.get("nftables") or [] if isinstance(i, dict)]
    chains: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c.get("family", ""), c.get("table", ""), c.get("name", ""))] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r.get("family", ""), r.get("table", ""), r.get("chain", "")), []).append(r)
    findings = []
    # In the order the kernel runs them: by priority.
    for key, chain in sorted(chains.items(), key=lambda kv: (_prio(kv[1]), kv[0])):
        family, table, name = key
        if chain.get("hook") != "prerouting" or family not in ("ip", "ip6", "inet"):
            continue
        if table in XTABLES_TABLES and family in ("ip", "ip6"):
            continue
        prio = chain.get("prio")
        if not isinstance(prio, int) or prio >= MANGLE_PRIORITY:
            continue
        for rule, via in _reachable(rules, key, (name,)):
            for stmt, value in _statements(rule):
                if stmt in REWRITES or stmt in UNTRACK or _rewrites_destination(stmt, value):
                    findings.append(
                        Finding(
                            "nft-rewrite-ahead",
                            "bypass",
                            f"nft chain {family} {table} {' -> '.join(via)} (hook prerouting, priority {prio}, ahead "
                            f"of mangle's {MANGLE_PRIORITY}) rewrites or untracks packets ({stmt}) before "
                            "nodeport-guard sees them",
                            f"{stmt} {value}"[:300],
                        )
                    )
    return tuple(findings)


def _rewrites_destination(stmt: str, value: Any) -> bool:
    if stmt != "mangle" or not isinstance(value, dict):
        return False
    payload = (value.get("key") or {}).get("payload") if isinstance(value.get("key"), dict) else None
    return isinstance(payload, dict) and payload.get("field") in REWRITTEN_FIELDS


def judge_raw_prerouting(save_text: str, family: int, backend: str) -> tuple[Finding, ...]:
    """Pure: `raw PREROUTING` rules (ahead of conntrack and of us) that leave new packets untracked."""
    tool = f"{'ip6' if family == 6 else 'ip'}tables-{backend}"
    out = []
    for rule in parse_save_table(save_text, "raw").get(HOOK, []):
        if rule.target == "NOTRACK" or (rule.target == "CT" and "--notrack" in rule.args):
            out.append(Finding(
                "untracked-ahead", "bypass",
                f"a rule in {tool} raw PREROUTING leaves packets untracked: they are never NEW to conntrack, so "
                "nodeport-guard's filter does not see them", rule.text))
    return tuple(out)


def _prio(chain: Mapping[str, Any]) -> int:
    prio = chain.get("prio")
    return prio if isinstance(prio, int) else 0


def _reachable(
    rules: Mapping[tuple[str, str, str], Sequence[Mapping[str, Any]]], key: tuple[str, str, str], via: tuple[str, ...]
) -> list[tuple[Mapping[str, Any], tuple[str, ...]]]:
    out: list[tuple[Mapping[str, Any], tuple[str, ...]]] = []
    if len(via) > MAX_DEPTH:
        return out
    family, table, _ = key
    for rule in rules.get(key, []):
        out.append((rule, via))
        for stmt, value in _statements(rule):
            if stmt in ("jump", "goto") and isinstance(value, dict) and value.get("target"):
                target = str(value["target"])
                out.extend(_reachable(rules, (family, table, target), (*via, target)))
    return out


def judge_kube_proxy(nat_nodeports_chain: bool, nft_kube_proxy_table: bool) -> Finding:
    """Pure: which kube-proxy mode the node shows (info), or none seen (suspect: another proxy may serve NodePorts)."""
    if nft_kube_proxy_table:
        return Finding("kube-proxy", "info", "kube-proxy in nftables mode (table ip kube-proxy)", "kube-proxy")
    if nat_nodeports_chain:
        return Finding("kube-proxy", "info", "kube-proxy in iptables mode (nat KUBE-NODEPORTS)", "KUBE-NODEPORTS")
    return Finding(
        "kube-proxy",
        "suspect",
        "no kube-proxy rules seen (no nat KUBE-NODEPORTS, no nft table kube-proxy): NodePorts may be served by a "
        "kube-proxy replacement (Cilium, Calico eBPF) before netfilter; the canary decides",
        "",
    )
