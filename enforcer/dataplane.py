"""Programs ipsets and the fixed NPG- skeleton in iptables mangle; the only module using iptc or ipset (I/O)."""

from __future__ import annotations

import importlib
import ipaddress
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enforcer import delta, diff
from enforcer.backend import Backend, CommandRunner, RunResult, restore_command, run_command, save_command
from enforcer.incremental import PortChange
from enforcer.plan import (
    DEFAULT_NODEPORT_RANGE,
    FAMILIES,
    DesiredState,
    Family,
    Network,
    PortKey,
    check_nodeport_range,
)
from enforcer.xtables_lock import DEFAULT_LOCK_PATH, xtables_lock

logger = logging.getLogger(__name__)

_ATTEMPTS = 3


class DataplaneError(RuntimeError):
    """A dataplane command failed; the message names the command, its exit code and its error output."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    backend: Backend
    rules_added: int
    rules_removed: int
    members_added: int
    members_removed: int
    sets_created: int
    sets_rebuilt: int
    sets_destroyed: int
    drift_repaired: bool
    full_readback: bool  # set members were dumped, not taken from our last write (see _read_sets_cheaply)
    conntrack_deleted: int
    seconds: float


def _check(result: RunResult) -> RunResult:
    if result.returncode != 0:
        raise DataplaneError(
            f"`{' '.join(result.argv[:3])}` exited {result.returncode}: {result.stderr.strip()[:2000]}"
        )
    return result


class Dataplane:
    """Reconciles the node's ipsets and NPG- chains with a DesiredState (see docs/dataplane.md)."""

    def __init__(
        self,
        backend: Backend,
        nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE,
        lock_path: str = DEFAULT_LOCK_PATH,
        clear_conntrack: bool = False,
        runner: CommandRunner = run_command,
        full_readback_interval: float = 60.0,
        audit_all: bool = False,
    ) -> None:
        if backend not in ("legacy", "nft"):
            raise ValueError(f"backend {backend!r}: must be 'legacy' or 'nft' (see enforcer.backend.detect_backend)")
        check_nodeport_range(nodeport_range)
        self.backend: Backend = backend
        self.nodeport_range = nodeport_range
        self.lock_path = lock_path
        self.clear_conntrack = clear_conntrack
        self._run = runner
        self.full_readback_interval = full_readback_interval
        # The node-wide rollout switch (NPG_MODE=audit): every protected port is audited, none dropped.
        self.audit_all = audit_all
        # What our last successful sync programmed: a difference at the next read-back is drift.
        self._last_members: dict[str, set[str]] | None = None
        self._last_full_read = float("-inf")
        self._memo: diff.MembersMemo = {}
        # python-iptables loads libiptc and every extension (~0.2 s): once here, not inside a sync.
        self._iptc: Any = importlib.import_module("iptc") if backend == "legacy" else None
        logger.info(
            "dataplane backend",
            extra={"backend": backend, "nodeport_range": nodeport_range, "audit_all": audit_all},
        )

    # --- reading back --------------------------------------------------------------------

    def _read_sets(self) -> dict[str, diff.InstalledSet]:
        # One `ipset save` of everything, filtered: one process instead of one per set.
        return diff.parse_ipset_save(_check(self._run(["ipset", "save"])).stdout)

    def _read_sets_cheaply(self, full: bool) -> tuple[dict[str, diff.InstalledSet], bool]:
        """Installed sets, and whether their members were really read back.

        Dumping 30k members costs more than the incremental budget, so between full read-backs
        (every `full_readback_interval` seconds) we trust our last write when `ipset list -t`
        shows exactly our sets, with our headers and member counts; any difference forces a dump.
        """
        last = self._last_members
        stale = time.monotonic() - self._last_full_read >= self.full_readback_interval
        if last is not None and not full and not stale:
            terse = diff.parse_ipset_terse(_check(self._run(["ipset", "list", "-t"])).stdout)
            if set(terse) == set(last) and all(
                (diff.is_counter_set(n) or terse[n][1] == len(last[n]))
                and diff.header_matches(terse[n][0], n, self.nodeport_range)
                for n in last
            ):
                return {n: diff.InstalledSet(n, terse[n][0], frozenset(last[n])) for n in sorted(last)}, False
        self._last_full_read = time.monotonic()
        return self._read_sets(), True

    def _read_rules(self, family: Family) -> diff.InstalledRules:
        out = _check(self._run([save_command(self.backend, family), "-t", diff.TABLE])).stdout
        return diff.parse_iptables_save(out)

    def installed(self) -> DesiredState:
        """What the installed sets enforce (ports in our port sets with their allowed prefixes)."""
        return diff.parse_installed_state(self._read_sets())

    def read_counters(self) -> str:
        """`ipset save` of our counter sets only (sparse: a member per node address and port that saw
        a denied new connection), in one `ipset restore` process.

        Never the allow or port sets: their dump grows with the protected ports (~120 ms at 20k
        members). Safe from any thread: it reads, and writes nothing.
        """
        # Our last write names the counter sets that exist (one process); else, or when one has
        # vanished since (the restore fails), ask the kernel.
        last = self._last_members
        for attempt in range(2):
            if last is None or attempt:
                names: Iterable[str] = _check(self._run(["ipset", "list", "-n"])).stdout.split()
            else:
                names = last.keys()
            wanted = [n for n in names if diff.is_counter_set(n)]
            if not wanted:
                return ""
            result = self._run(["ipset", "restore"], "".join(f"save {n}\n" for n in sorted(wanted)))
            if result.returncode == 0 or attempt:
                return _check(result).stdout
        return ""

    # --- writing ---------------------------------------------------------------------------

    def _ipset_restore(self, script: str) -> None:
        if script:
            _check(self._run(["ipset", "restore", "-exist"], script))

    def _write_skeleton(
        self, family: Family, installed: diff.InstalledRules, skeleton: tuple[diff.SkeletonRule, ...] | None
    ) -> None:
        if self.backend == "nft":
            script = diff.render_skeleton_restore(installed, skeleton)
            _check(self._run([restore_command("nft", family), "--noflush", "-w", "5"], script))
        else:
            _write_skeleton_iptc(self._iptc, family, skeleton, self.lock_path)

    def sync(self, state: DesiredState, full_readback: bool = False) -> SyncReport:
        """Read what is installed, diff, apply only the difference; idempotent and crash-safe.

        The rules are always read back; set members are dumped on the first sync, when counts or
        headers differ from our last write, every `full_readback_interval` seconds, or when asked.
        """
        start = time.monotonic()
        lo, hi = self.nodeport_range
        for p in state.ports:
            if not lo <= p.key.port <= hi:
                # Defense in depth: the planner already refuses these.
                raise ValueError(f"state port {p.key}: outside the NodePort range {lo}-{hi}; refusing to program it")
        last_error: DataplaneError | None = None
        for attempt in range(_ATTEMPTS):
            try:
                report = self._sync_once(state, start, full_readback or attempt > 0)
                return report
            except DataplaneError as exc:
                # Another writer may have changed a rule between our read and our write: re-read and retry.
                last_error = exc
                logger.warning("sync attempt failed; retrying", extra={"attempt": attempt + 1, "error": str(exc)})
        assert last_error is not None
        raise last_error

    def sync_ports(self, changes: Mapping[PortKey, PortChange]) -> SyncReport | None:
        """The fast path after an event: write only the set members of the changed ports.

        Reads nothing back and runs at most one `ipset restore`, whatever the number of ports.
        None when the caller must run a full `sync` instead: no successful sync to build on, a
        set to create or a family to remove (skeleton changes), our record disagreeing with the
        change, or a failed write (then the next full sync reads everything back). Drift made by
        others is repaired by the periodic full sync, not here.
        """
        start = time.monotonic()
        last = self._last_members
        if last is None:
            return None
        lo, hi = self.nodeport_range
        for key, (_, after) in changes.items():
            if after is not None and not lo <= key.port <= hi:
                raise ValueError(f"state port {key}: outside the NodePort range {lo}-{hi}; refusing to program it")
        set_changes = delta.fast_set_changes(last, changes, self.audit_all)
        if set_changes is None:
            return None
        if set_changes:
            # Forget our record until the write completes: a failure part-way forces a full read.
            self._last_members = None
            try:
                self._ipset_restore(diff.render_ipset_restore(set_changes, self.nodeport_range, "fill"))
            except DataplaneError as exc:
                logger.warning("fast sync failed; a full sync follows", extra={"error": str(exc)})
                return None
            delta.apply_to(last, set_changes)
            self._last_members = last
        restricted = delta.newly_restricted(changes, self.audit_all) if self.clear_conntrack else {}
        report = SyncReport(
            backend=self.backend,
            rules_added=0,
            rules_removed=0,
            members_added=sum(c.added for c in set_changes),
            members_removed=sum(c.removed for c in set_changes),
            sets_created=0,
            sets_rebuilt=0,
            sets_destroyed=0,
            drift_repaired=False,
            full_readback=False,
            conntrack_deleted=self._clear_conntrack(restricted) if restricted else 0,
            seconds=time.monotonic() - start,
        )
        if set_changes:
            logger.debug("dataplane ports synced", extra={"report": report})
        return report

    def _sync_once(self, state: DesiredState, start: float, full: bool) -> SyncReport:
        sets, dumped = self._read_sets_cheaply(full)
        rules = {f: self._read_rules(f) for f in FAMILIES}
        desired_members = diff.render_members(state, self._memo, self.audit_all)
        diffs = [diff.plan_family_diff(f, desired_members, sets, rules[f], self.nodeport_range) for f in FAMILIES]
        changes = [c for d in diffs for c in d.set_changes]
        drift = any(d.skeleton_drift for d in diffs)
        if self._last_members is not None:
            have = {n: s.members for n, s in sets.items() if diff.family_of_set(n) is not None}
            drift = drift or have != self._last_members

        # Forget our last write until this one completes: a failure part-way must force a full read.
        self._last_members = None
        # Data first, so a brand-new skeleton never matches against missing sets (fail closed).
        self._ipset_restore(diff.render_ipset_restore(changes, self.nodeport_range, "fill"))
        rules_added = rules_removed = 0
        for d in diffs:
            installed = rules[d.family]
            ours = sum(len(v) for v in installed.chain_hashes.values()) + len(installed.hook_rules)
            if d.rewrite_skeleton:
                skeleton = diff.build_skeleton(d.family, d.doors)
                self._write_skeleton(d.family, installed, skeleton)
                rules_added += len(skeleton)
                rules_removed += ours
            elif d.remove_skeleton:
                self._write_skeleton(d.family, installed, None)
                rules_removed += ours
        # Sets referenced by rules cannot be destroyed: only after the rules are gone.
        self._ipset_restore(diff.render_ipset_restore(changes, self.nodeport_range, "destroy"))
        self._last_members = {n: set(m) for n, m in desired_members.items()}

        restricted = _newly_restricted(changes, state, self.audit_all) if self.clear_conntrack else {}
        deleted = self._clear_conntrack(restricted)
        report = SyncReport(
            backend=self.backend,
            rules_added=rules_added,
            rules_removed=rules_removed,
            members_added=sum(c.added for c in changes),
            members_removed=sum(c.removed for c in changes),
            sets_created=sum(1 for c in changes if c.action == "create"),
            sets_rebuilt=sum(1 for c in changes if c.action == "rebuild"),
            sets_destroyed=sum(1 for c in changes if c.action in ("destroy", "stray")),
            drift_repaired=drift,
            full_readback=dumped,
            conntrack_deleted=deleted,
            seconds=time.monotonic() - start,
        )
        logger.info("dataplane synced", extra={"report": report})
        return report

    def cleanup(self) -> None:
        """Remove every chain, rule and set we own; other chains, rules and sets are untouched."""
        self.remove_rules()
        self.destroy_sets()

    def remove_rules(self) -> None:
        """Remove our chains and rules of this backend (sets stay: rules of another backend may use them)."""
        for family in FAMILIES:
            installed = self._read_rules(family)
            if not diff.is_absent(installed):
                self._write_skeleton(family, installed, None)

    def destroy_sets(self) -> None:
        """Destroy every set we own; the rules of every backend referencing them must be gone first."""
        names = [n for n in self._read_sets() if n.startswith(diff.SET_PREFIX)]
        self._ipset_restore("".join(f"destroy {n}\n" for n in names))
        self._last_members = None
        self._memo.clear()

    # --- conntrack -------------------------------------------------------------------------

    def _local_addresses(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out = _check(self._run(["ip", "-o", "addr", "show"])).stdout
        addrs: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for line in out.splitlines():
            fields = line.split()
            for i, f in enumerate(fields[:-1]):
                if f in ("inet", "inet6"):
                    addrs.add(ipaddress.ip_interface(fields[i + 1]).ip)
        return addrs

    def _clear_conntrack(self, newly_denied: dict[PortKey, tuple[Network, ...]]) -> int:
        """Delete conntrack entries of flows to local NodePorts whose source is now denied.

        Established flows never pass our NEW-only rules again; deleting their entries makes the
        next packet NEW, so it meets the filter (TCP peers then see their connection stall).
        """
        if not newly_denied:
            return 0
        local = self._local_addresses()
        deleted = 0
        for key, allowed in sorted(newly_denied.items()):
            proto = key.protocol.lower()
            fam = "ipv4" if key.family == 4 else "ipv6"
            listing = self._run(["conntrack", "-L", "-f", fam, "-p", proto, "--orig-port-dst", str(key.port)])
            for flow in _parse_conntrack(listing.stdout):
                src, dst, sport = flow
                if dst not in local or any(src in net for net in allowed):
                    continue
                result = self._run(
                    [
                        "conntrack", "-D", "-f", fam, "-p", proto,
                        "--orig-src", str(src), "--orig-dst", str(dst),
                        "--orig-port-src", str(sport), "--orig-port-dst", str(key.port),
                    ]
                )
                deleted += result.returncode == 0
        return deleted


def _newly_restricted(
    changes: Iterable[diff.SetChange], state: DesiredState, audit_all: bool
) -> dict[PortKey, tuple[Network, ...]]:
    """Ports that became protected, lost allowed members or left audit mode in this sync, with their
    allow-lists now; audited ports drop nothing."""
    touched: set[tuple[int, str, int]] = set()
    for c in changes:
        family = diff.family_of_set(c.name)
        if family is None or c.action in ("none", "destroy"):
            continue
        if c.name in (diff.allow_set_name(family), diff.audit_set_name(family)):
            # Fewer allowed sources, or a port that leaves audit mode (its denied flows now drop).
            for member in c.removes:
                proto, _, port = member.rpartition(",")[2].partition(":")
                touched.add((family, proto.upper(), int(port)))
        else:
            for member in c.adds:
                key = diff.parse_port_member(c.name, member)
                if key is not None:
                    touched.add((key.family, key.protocol, key.port))
    if audit_all:
        return {}
    return {
        p.key: p.allowed
        for p in state.ports
        if p.mode == "enforce" and (p.key.family, p.key.protocol, p.key.port) in touched
    }


def _parse_conntrack(text: str) -> list[tuple[Any, Any, int]]:
    """(original source, original destination, original source port) of each listed flow."""
    flows = []
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            k, sep, v = token.partition("=")
            if sep and k not in fields:  # the first occurrence is the original direction
                fields[k] = v
        if {"src", "dst", "sport"} <= fields.keys():
            src, dst = ipaddress.ip_address(fields["src"]), ipaddress.ip_address(fields["dst"])
            flows.append((src, dst, int(fields["sport"])))
    return flows


# --- python-iptables (legacy backend) ------------------------------------------------------------


def _iptc_rule(iptc: Any, family: Family, rule: diff.SkeletonRule) -> Any:
    r = iptc.Rule() if family == 4 else iptc.Rule6()
    if rule.protocol:
        r.protocol = rule.protocol
    for m in rule.matches:
        match = r.create_match(m.name)
        for opt, value in m.options:
            match.parse(opt, value.split(" ") if " " in value else value)
    comment = r.create_match("comment")
    comment.comment = rule.comment
    target = r.create_target(rule.target, goto=rule.goto)
    for opt, value in rule.target_options:
        target.parse(opt, value.split(" ") if " " in value else value)
    return r


def _is_ours(rule: Any) -> bool:
    for m in rule.matches:
        if m.name == "comment" and str(m.get_all_parameters().get("comment", [""])[0]).strip('"').startswith(
            diff.COMMENT_PREFIX
        ):
            return True
    return False


def _write_skeleton_iptc(
    iptc: Any, family: Family, skeleton: Iterable[diff.SkeletonRule] | None, lock_path: str
) -> None:
    """Replace our footprint in mangle with `skeleton` (None = remove it) in ONE commit, under the lock."""
    rules = list(skeleton or ())
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        try:
            with xtables_lock(lock_path):
                table = iptc.Table(iptc.Table.MANGLE) if family == 4 else iptc.Table6(iptc.Table6.MANGLE)
                table.autocommit = False
                table.refresh()
                hook = iptc.Chain(table, diff.HOOK_CHAIN)
                for r in [r for r in hook.rules if _is_ours(r)]:
                    hook.delete_rule(r)
                existing = {c.name for c in table.chains}
                wanted = {r.chain for r in rules if r.chain != diff.HOOK_CHAIN}
                for name in diff.OUR_CHAINS:
                    if name in existing:
                        table.flush_entries(name)
                    elif name in wanted:
                        table.create_chain(name)
                if rules:
                    for rule in rules:
                        ipr = _iptc_rule(iptc, family, rule)
                        if rule.chain == diff.HOOK_CHAIN:
                            hook.insert_rule(ipr, 0)
                        else:
                            iptc.Chain(table, rule.chain).append_rule(ipr)
                # Our chains the skeleton does not use (NPG-DOOR once the last door is gone; all of them
                # on removal): flushed above, so nothing references them any more.
                for name in diff.OUR_CHAINS:
                    if name in existing and name not in wanted:
                        table.delete_chain(name)
                table.commit()
            return
        except iptc.IPTCError as exc:
            # EAGAIN: the table changed under a writer that ignored the lock; re-read and redo.
            last = exc
            logger.warning("iptc commit failed; retrying", extra={"attempt": attempt + 1, "error": str(exc)})
    raise DataplaneError(f"python-iptables commit of table mangle (IPv{family}) failed: {last}")
