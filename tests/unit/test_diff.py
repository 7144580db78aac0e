"""Unit tests of enforcer.diff: set layout, *-save parsing, set and skeleton diffs (pure)."""

from __future__ import annotations

import ipaddress

from enforcer import diff
from enforcer.plan import FAMILIES, DesiredState, PortKey

N = ipaddress.ip_network
RANGE = (30000, 32767)


def state() -> DesiredState:
    return DesiredState.from_mapping(
        {
            PortKey(4, "TCP", 30080): [N("198.51.100.0/24"), N("203.0.113.10/32")],
            PortKey(4, "UDP", 30081): [],
            PortKey(6, "TCP", 30080): [N("2001:db8:1::/64"), N("2001:db8:2::10/128")],
            PortKey(6, "SCTP", 30082): [N("2001:db8:1::/64")],
        }
    )


def save_of(members: dict[str, frozenset[str]]) -> str:
    """What `ipset save` prints for these sets (with a header as the kernel reports it)."""
    lines = []
    for name, ms in members.items():
        header = diff.set_create_options(name, RANGE)
        if "hash" in header:
            # The kernel grows hashsize and adds bucketsize/initval: none of that is identity.
            header = header.replace("hashsize 1024", "hashsize 4096") + " bucketsize 12 initval 0x1"
        lines.append(f"create {name} {header}")
        lines.extend(f"add {name} {m}" for m in sorted(ms))
    return "\n".join(lines) + "\ncreate other hash:ip family inet\nadd other 192.0.2.1\n"


def test_members_use_ipset_save_format() -> None:
    members = diff.render_members(state())
    assert sorted(members) == sorted([*diff.set_names(4), *diff.set_names(6)])
    assert members["npg-4-tcp"] == {"30080"} and members["npg-4-udp"] == {"30081"}
    assert not members["npg-4-sctp-ports"]
    assert members["npg-4-allow"] == {"198.51.100.0/24,tcp:30080", "203.0.113.10,tcp:30080"}
    assert members["npg-6-allow"] == {
        "2001:db8:1::/64,tcp:30080", "2001:db8:2::10,tcp:30080", "2001:db8:1::/64,sctp:30082",
    }
    # SCTP ports: a bitmap:port set never matches SCTP, so they are (every destination, sctp:port) pairs.
    assert members["npg-6-sctp-ports"] == {"::/1,sctp:30082", "8000::/1,sctp:30082"}


def test_sctp_ports_are_in_a_hash_set_matched_on_destination_address_and_port() -> None:
    for family in FAMILIES:
        name = diff.port_set_name(family, "SCTP")
        inet = "inet" if family == 4 else "inet6"
        assert diff.set_create_options(name, RANGE).startswith(f"hash:net,port family {inet} ")
        for proto in ("TCP", "UDP"):
            assert diff.set_create_options(diff.port_set_name(family, proto), RANGE) == "bitmap:port range 30000-32767"
        specs = {r.protocol: r.spec() for r in diff.build_skeleton(family) if r.chain == diff.INGRESS_CHAIN}
        assert specs["sctp"] == f"-p sctp -m set --match-set {name} dst,dst -j NPG-CHECK"
        assert specs["tcp"] == f"-p tcp -m set --match-set npg-{family}-tcp dst -j NPG-CHECK"
    assert diff.render_port_members(4, "SCTP", 30082) == ("0.0.0.0/1,sctp:30082", "128.0.0.0/1,sctp:30082")
    assert diff.parse_port_member("npg-4-sctp-ports", "128.0.0.0/1,sctp:30082") == PortKey(4, "SCTP", 30082)
    assert diff.parse_port_member("npg-4-udp", "30082") == PortKey(4, "UDP", 30082)
    assert diff.parse_port_member("npg-4-sctp-ports", "0.0.0.0/1,tcp:30082") is None


def test_the_retired_sctp_bitmap_set_is_destroyed_after_the_rules_stop_using_it() -> None:
    # A node programmed by an earlier version holds npg-4-sctp (bitmap:port) referenced by the old rule.
    members = diff.render_members(state())
    text = save_of({k: v for k, v in members.items() if k.startswith("npg-4-")})
    text += "create npg-4-sctp bitmap:port range 30000-32767\nadd npg-4-sctp 30082\n"
    installed = diff.parse_ipset_save(text)
    v4 = {k: v for k, v in members.items() if k.startswith("npg-4-")}
    changes = diff.plan_set_changes(v4, installed, RANGE)
    assert {c.name: c.action for c in changes}["npg-4-sctp"] == "destroy"
    assert "npg-4-sctp" not in diff.render_ipset_restore(changes, RANGE, "fill")
    assert diff.render_ipset_restore(changes, RANGE, "destroy") == "destroy npg-4-sctp\n"


def test_families_without_ports_have_no_sets() -> None:
    only_v6 = DesiredState.from_mapping({PortKey(6, "UDP", 30000): []})
    assert sorted(diff.render_members(only_v6)) == sorted(diff.set_names(6))


def test_save_round_trip_gives_no_changes_and_the_same_state() -> None:
    members = diff.render_members(state())
    installed = diff.parse_ipset_save(save_of(members))
    assert "other" not in installed
    assert all(c.action == "none" for c in diff.plan_set_changes(members, installed, RANGE))
    assert diff.parse_installed_state(installed) == state()


def test_small_change_is_incremental_and_large_change_rebuilds() -> None:
    members = diff.render_members(state())
    installed = diff.parse_ipset_save(save_of(members))
    grown = dict(members)
    grown["npg-4-tcp"] = members["npg-4-tcp"] | {"30090"}
    grown["npg-4-allow"] = members["npg-4-allow"] - {"203.0.113.10,tcp:30080"}
    changes = {c.name: c for c in diff.plan_set_changes(grown, installed, RANGE)}
    assert changes["npg-4-tcp"].action == "update" and changes["npg-4-tcp"].adds == ("30090",)
    assert changes["npg-4-allow"].removes == ("203.0.113.10,tcp:30080",)
    script = diff.render_ipset_restore(changes.values(), RANGE, "fill")
    assert script == "del npg-4-allow 203.0.113.10,tcp:30080\nadd npg-4-tcp 30090\n"

    many = dict(members)
    many["npg-4-tcp"] = frozenset(str(p) for p in range(30000, 30100))
    changes = {c.name: c for c in diff.plan_set_changes(many, installed, RANGE, incremental_limit=10)}
    assert changes["npg-4-tcp"].action == "rebuild"
    assert (changes["npg-4-tcp"].added, changes["npg-4-tcp"].removed) == (99, 0)  # 30080 was there
    lines = diff.render_ipset_restore([changes["npg-4-tcp"]], RANGE, "fill").splitlines()
    assert lines[0] == "create npg-4-tcp-t bitmap:port range 30000-32767"
    assert lines[-2:] == ["swap npg-4-tcp-t npg-4-tcp", "destroy npg-4-tcp-t"]


def test_wrong_range_rebuilds_absent_creates_unused_destroys_stray_goes_first() -> None:
    members = diff.render_members(state())
    text = save_of({k: v for k, v in members.items() if k != "npg-4-udp"})
    text = text.replace("range 30000-32767", "range 30000-31000", 1)
    text += "create npg-4-allow-t hash:net,port family inet\ncreate npg-6-sctp bitmap:port range 30000-32767\n"
    installed = diff.parse_ipset_save(text)
    v4_only = {k: v for k, v in members.items() if k.startswith("npg-4-")}
    changes = {c.name: c.action for c in diff.plan_set_changes(v4_only, installed, RANGE)}
    first_bitmap = sorted(n for n in members if "bitmap" in diff.set_create_options(n, RANGE))[0]
    assert changes[first_bitmap] == "rebuild"
    assert changes["npg-4-udp"] == "create"
    assert changes["npg-4-allow-t"] == "stray"
    assert {changes[n] for n in diff.set_names(6)} == {"destroy"}
    plan = diff.plan_set_changes(v4_only, installed, RANGE)
    assert diff.render_ipset_restore(plan, RANGE, "fill").startswith("destroy npg-4-allow-t\n")
    assert "destroy npg-6-allow\n" in diff.render_ipset_restore(plan, RANGE, "destroy")


def test_skeleton_is_fixed_hashed_and_recognized_after_save() -> None:
    for family in FAMILIES:
        rules = diff.build_skeleton(family)
        assert len({r.hash for r in rules}) == len(rules)
        assert rules == diff.build_skeleton(family)
    v4, v6 = diff.build_skeleton(4), diff.build_skeleton(6)
    assert {r.hash for r in v4}.isdisjoint(r.hash for r in v6)
    # What iptables-save prints (quoted comments, chains in table order) for our restore script.
    saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:NPG-AUDIT - [0:0]\n:NPG-CHECK - [0:0]\n:NPG-INGRESS - [0:0]\n"
    quote = '"'
    saved += "".join(f"-A {r.chain} {r.body().replace(r.comment, quote + r.comment + quote)}\n" for r in v4)
    saved += "-A PREROUTING -j KUBE-OTHER\nCOMMIT\n"
    installed = diff.parse_iptables_save(saved)
    assert diff.skeleton_matches(installed, v4)
    assert not diff.skeleton_matches(installed, v6)


def test_drift_is_seen_and_rewrite_touches_only_our_chains() -> None:
    v4 = diff.build_skeleton(4)
    body = "".join(f"-A {r.chain} {r.body()}\n" for r in v4 if r.chain != "NPG-CHECK")
    saved = "*filter\n:NPG-CHECK - [0:0]\nCOMMIT\n*mangle\n:NPG-AUDIT - [0:0]\n:NPG-CHECK - [0:0]\n"
    saved += f":NPG-INGRESS - [0:0]\n{body}"
    saved += "-A NPG-INGRESS -j ACCEPT\nCOMMIT\n"
    installed = diff.parse_iptables_save(saved)
    assert installed.chain_hashes["NPG-CHECK"] == ()  # emptied by hand
    assert installed.chain_hashes["NPG-INGRESS"][-1] == ""  # a stranger rule in our chain
    assert not diff.skeleton_matches(installed, v4)
    script = diff.render_skeleton_restore(installed, v4).splitlines()
    assert script[:4] == ["*mangle", ":NPG-AUDIT - [0:0]", ":NPG-CHECK - [0:0]", ":NPG-INGRESS - [0:0]"]
    hook = next(r for r in v4 if r.chain == "PREROUTING")
    assert f"-D PREROUTING {hook.body()}" in script
    assert f"-I PREROUTING 1 {hook.body()}" in script
    assert script[-1] == "COMMIT" and not any("KUBE" in line or "-F" in line for line in script)

    removal = diff.render_skeleton_restore(installed, None).splitlines()
    assert removal[-4:] == ["-X NPG-AUDIT", "-X NPG-CHECK", "-X NPG-INGRESS", "COMMIT"]
    assert not any(line.startswith(("-A", "-I")) for line in removal)


def test_family_diff() -> None:
    empty = diff.parse_iptables_save("")
    d = diff.plan_family_diff(4, diff.render_members(state()), {}, empty, RANGE)
    assert d.rewrite_skeleton and not d.remove_skeleton and not d.skeleton_drift
    assert {c.action for c in d.set_changes} == {"create"}
    unused = diff.plan_family_diff(4, {}, {}, empty, RANGE)
    assert not unused.rewrite_skeleton and not unused.remove_skeleton and unused.set_changes == ()


def test_render_members_memo_gives_the_same_result_and_tracks_the_state() -> None:
    memo: diff.MembersMemo = {}
    assert diff.render_members(state(), memo) == diff.render_members(state())
    assert diff.render_members(state(), memo) == diff.render_members(state())
    assert set(memo) == {p.key for p in state().ports}
    key = PortKey(4, "TCP", 30080)
    changed = DesiredState.from_mapping({**state().as_dict(), key: [N("192.0.2.0/24")]})
    assert diff.render_members(changed, memo)["npg-4-allow"] == {"192.0.2.0/24,tcp:30080"}
    smaller = DesiredState(state().ports[:1])
    assert diff.render_members(smaller, memo) == diff.render_members(smaller)
    assert set(memo) == {smaller.ports[0].key}


def test_parse_ipset_terse() -> None:
    text = (
        "Name: npg-4-tcp\nType: bitmap:port\nRevision: 3\nHeader: range 30000-32767\n"
        "Size in memory: 528\nReferences: 1\nNumber of entries: 2\n"
        "Name: other\nType: hash:ip\nHeader: family inet\nNumber of entries: 5\n"
        "Name: npg-4-allow\nType: hash:net,port\nRevision: 8\n"
        "Header: family inet hashsize 4096 maxelem 1048576 bucketsize 12 initval 0x1\nNumber of entries: 7\n"
    )
    terse = diff.parse_ipset_terse(text)
    assert terse == {
        "npg-4-tcp": ("bitmap:port range 30000-32767", 2),
        "npg-4-allow": ("hash:net,port family inet hashsize 4096 maxelem 1048576 bucketsize 12 initval 0x1", 7),
    }
    assert all(diff.header_matches(h, n, RANGE) for n, (h, _) in terse.items())
    assert not diff.header_matches(terse["npg-4-tcp"][0], "npg-4-tcp", (30000, 31000))
    assert not diff.header_matches(terse["npg-4-allow"][0], "npg-6-allow", RANGE)
