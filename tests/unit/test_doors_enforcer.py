"""The enforcer's doors, pure: the plan, the set layout, the skeleton, the state codec, and the upgrade."""

from __future__ import annotations

import ipaddress

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    CidrRule,
    ContractError,
    Door,
    NodePortEntry,
    PodGroup,
    PolicyRef,
    SourceSet,
    read_signed,
)
from contract.doors import DOORS_KEY, DoorsAnnotation, encode_doors, render_all
from contract.signing import Signer
from enforcer import diff
from enforcer.door_tracker import DoorTracker
from enforcer.doors import plan_doors
from enforcer.plan import DesiredState, DoorKey, PortKey, ProtectedDoor, decode_state, encode_state, plan_desired_state
from enforcer.policies import StoredPolicy

KEY = Signer.from_seed(b"doors-enforcer-test-key-00000001")
OFFICE = SourceSet(False, (CidrRule("198.51.100.0/24"),))
LB = Door("198.51.100.200", "loadBalancer")


def _entry(allow: SourceSet = OFFICE, service: str = "web", node_port: int = 30080, **kw: object) -> NodePortEntry:
    fields: dict[str, object] = {"node_port": node_port, "protocol": "TCP", "service": service, "service_port": 8080,
                                 "ip_families": ("IPv4",), "scope": "all", "allow": allow, "doors": (LB,)}
    fields.update(kw)
    return NodePortEntry(**fields)  # type: ignore[arg-type]


def _doors(name: str, *entries: NodePortEntry, mode: str = "enforce") -> DoorsAnnotation:
    return DoorsAnnotation(PolicyRef("shop", name, ""), entries, mode)  # type: ignore[arg-type]


KEY4 = DoorKey(4, "TCP", "198.51.100.200", 8080)


def test_parts_compose_like_a_nodeport_and_services_intersect() -> None:
    vpn = SourceSet(False, (CidrRule("203.0.113.0/24"),))
    union = plan_doors([_doors("a", _entry()), _doors("b", _entry(vpn))]).doors
    assert [(d.key, [str(n) for n in d.allowed]) for d in union] == [(KEY4, ["198.51.100.0/24", "203.0.113.0/24"])]
    # Another Service naming the same door: fail closed, the intersection.
    narrow = SourceSet(False, (CidrRule("198.51.100.0/25"),))
    both = plan_doors([_doors("a", _entry()), _doors("c", _entry(narrow, service="other"))]).doors
    assert [str(n) for n in both[0].allowed] == ["198.51.100.0/25"]
    # Allowing everyone: not protected; a group nobody selects does not narrow.
    assert plan_doors([_doors("a", _entry(SourceSet.everyone()))]).doors == ()
    some = _entry(scope="some", allow=SourceSet.nobody(), groups=(PodGroup("0" * 32, OFFICE), PodGroup("1" * 32, None)))
    assert [str(n) for n in plan_doors([_doors("a", some)]).doors[0].allowed] == ["198.51.100.0/24"]


def test_audit_only_when_every_part_audits() -> None:
    assert plan_doors([_doors("a", _entry(), mode="audit")]).doors[0].mode == "audit"
    assert plan_doors([_doors("a", _entry(), mode="audit"), _doors("b", _entry())]).doors[0].mode == "enforce"


def test_a_door_on_a_node_address_is_refused() -> None:
    entry = _entry(doors=(Door("198.51.100.1", "externalIP"), LB))
    plan = plan_doors([_doors("a", entry)], node_addresses={"198.51.100.1"})
    assert [d.key.address for d in plan.doors] == ["198.51.100.200"]
    assert [r.key.address for r in plan.rejected] == ["198.51.100.1"]
    assert "address of this node" in plan.rejected[0].reason


def test_state_codec_and_installed_sets_round_trip() -> None:
    doors = (
        ProtectedDoor(KEY4, (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.7/32"))),
        ProtectedDoor(DoorKey(6, "SCTP", "2001:db8:5::1", 9), (), "audit"),
    )
    state = DesiredState.from_mapping({PortKey(4, "TCP", 30080): []}).with_doors(doors)
    assert decode_state(encode_state(state)) == state
    members = diff.render_members(state)
    assert members["npg-4-doors"] == frozenset({"198.51.100.200,tcp:8080"})
    assert members["npg-4-door-allow"] == frozenset({"198.51.100.200,tcp:8080,198.51.100.0/24",
                                                     "198.51.100.200,tcp:8080,203.0.113.7"})
    assert members["npg-6-door-audit"] == frozenset({"2001:db8:5::1,sctp:9"})
    # A family with doors only has the whole skeleton's sets.
    assert {"npg-6-tcp", "npg-6-allow", "npg-6-dropped"} <= members.keys()
    save = "".join(f"create {n} {diff.set_create_options(n, (30000, 32767))}\n" + "".join(
        f"add {n} {m}\n" for m in sorted(ms)) for n, ms in members.items())
    assert diff.parse_installed_state(diff.parse_ipset_save(save)) == state
    assert diff.set_create_options("npg-4-door-allow", (30000, 32767)).startswith("hash:ip,port,net family inet ")


def test_without_doors_the_skeleton_is_unchanged_and_with_doors_it_is_constant() -> None:
    plain = diff.build_skeleton(4)
    assert plain == diff.build_skeleton(4, doors=False)
    assert plain[0].spec() == "-m addrtype --dst-type LOCAL -m conntrack --ctstate NEW -j NPG-INGRESS"
    with_doors = diff.build_skeleton(4, doors=True)
    assert with_doors[0].spec() == "-m conntrack --ctstate NEW -j NPG-INGRESS"
    assert with_doors[1].spec() == "-m set --match-set npg-4-doors dst,dst -g NPG-DOOR"
    assert with_doors[2].spec() == "-m addrtype ! --dst-type LOCAL -j RETURN"
    door_rules = [r.spec() for r in with_doors if r.chain == diff.DOOR_CHAIN]
    assert door_rules[0] == "-m set --match-set npg-4-door-allow dst,dst,src -j RETURN"
    assert door_rules[-1] == "-j DROP"
    # The NodePort rules are the same rules (same hashes) in both.
    assert {r.hash for r in plain if r.chain != diff.HOOK_CHAIN} < {r.hash for r in with_doors}
    state = DesiredState().with_doors((ProtectedDoor(KEY4, ()),))
    fam = diff.plan_family_diff(4, diff.render_members(state), {}, diff.parse_iptables_save(""), (30000, 32767))
    assert fam.doors and fam.rewrite_skeleton


# --- the upgrade: mixed versions never open -------------------------------------------------------


def _stored(name: str, annotations: dict[str, str]) -> StoredPolicy:
    return StoredPolicy("shop", name, "uid", "1", tuple(sorted(annotations.items())))


def test_an_old_enforcer_reads_new_annotations_as_before() -> None:
    """An enforcer without doors reads only the NodePort pair, which is byte for byte the old one."""
    ref = PolicyRef("shop", "deny", "")
    deny = _entry(SourceSet.nobody())
    new = render_all(ref, (deny,), "enforce", KEY)
    old = render_all(ref, (NodePortEntry(**{**{f: getattr(deny, f) for f in deny.__slots__}, "doors": ()}),),
                     "enforce", KEY)
    assert {k: new[k] for k in (NODEPORTS_KEY, SIGNATURE_KEY)} == old
    annotation = read_signed(new, "shop", "deny", "uid", KEY.verifier())
    assert annotation is not None
    assert plan_desired_state([annotation]).state == DesiredState.from_mapping({PortKey(4, "TCP", 30080): []})


def test_a_doors_value_is_never_read_as_a_nodeport_value() -> None:
    value = encode_doors(_doors("deny", _entry()))
    try:
        read_signed({NODEPORTS_KEY: value, SIGNATURE_KEY: KEY.sign(value.encode())}, "shop", "deny", "", KEY.verifier())
    except ContractError as exc:
        assert "unsupported version 4" in str(exc)
    else:
        raise AssertionError("a version-4 value in the NodePort key must be refused")


def test_a_new_enforcer_reading_old_annotations_and_a_bad_doors_pair() -> None:
    tracker = DoorTracker()
    ref = PolicyRef("shop", "allow", "")
    new = render_all(ref, (_entry(),), "enforce", KEY)
    old = {k: new[k] for k in (NODEPORTS_KEY, SIGNATURE_KEY)}
    # Old annotations only: no door, NodePorts as before (the planner reads the same pair).
    tracker.update_all([_stored("allow", old)], KEY.verifier())
    assert not tracker.replan(frozenset()) and tracker.plan.doors == ()
    # Rewritten by the new webhook: the door appears.
    tracker.update({("shop", "allow"): _stored("allow", new)}, KEY.verifier())
    assert tracker.replan(frozenset())
    doors: tuple[ProtectedDoor, ...] = tracker.plan.doors  # mypy narrowed it to () above
    assert [d.key for d in doors] == [KEY4]
    # A tampered doors pair: refused, it takes only its doors with it.
    bad = {**new, DOORS_KEY: new[DOORS_KEY].replace("198.51.100.0/24", "0.0.0.0/0")}
    tracker.update({("shop", "allow"): _stored("allow", bad)}, KEY.verifier())
    assert tracker.replan(frozenset()) and tracker.plan.doors == ()
    assert any("doors refused" in r for r in tracker.refused)
    assert read_signed(bad, "shop", "allow", "uid", KEY.verifier()) is not None
    # A node address learnt later removes the door at the next plan.
    tracker.update({("shop", "allow"): _stored("allow", new)}, KEY.verifier())
    assert tracker.replan(frozenset()) and tracker.replan({"198.51.100.200"}) and tracker.plan.doors == ()
    tracker.update({("shop", "allow"): None}, KEY.verifier())
    assert not tracker.replan({"198.51.100.200"})


# --- the sync loop: doors are a full sync, NodePorts keep the fast path ----------------------------


def test_the_sync_loop_programs_doors_and_keeps_the_fast_path_for_nodeports() -> None:
    import threading
    from typing import Any, cast

    from enforcer.dataplane import Dataplane
    from enforcer.loop import SyncLoop
    from enforcer.policies import PolicyStore
    from tests.unit.test_sync_loop import RecordingDataplane

    class DoorsRecording(RecordingDataplane):
        doors: tuple[ProtectedDoor, ...] = ()

        def sync(self, state: Any, full_readback: bool = False) -> Any:
            self.doors = state.doors
            return super().sync(state, full_readback)

    def policy_with(entry: NodePortEntry, rv: str) -> StoredPolicy:
        annotations = render_all(PolicyRef("ns", "p", "uid-p"), (entry,), "enforce", KEY)
        return StoredPolicy("ns", "p", "uid-p", rv, tuple(sorted(annotations.items())))

    store, dp = PolicyStore(), DoorsRecording()
    addresses = [frozenset[str]()]
    loop = SyncLoop(store, cast(Dataplane, dp), KEY.verifier, (30000, 32767), threading.Event(),
                    node_addresses=lambda: addresses[0])
    store.replace("networkpolicies", [policy_with(_entry(), "1")], "1")
    loop.sync_once()
    assert [d.key for d in dp.doors] == [KEY4] and loop.state.doors == dp.doors
    dp.calls.clear()
    # A NodePort-only change (another NodePort, the same door and verdict): the fast path.
    store.apply("networkpolicies", "MODIFIED", policy_with(_entry(node_port=30081), "2"))
    loop.sync_once()
    assert dp.calls == ["fast"]
    # The door moves: a full sync with the new door.
    moved = _entry(node_port=30081, doors=(Door("198.51.100.210", "loadBalancer"),))
    store.apply("networkpolicies", "MODIFIED", policy_with(moved, "3"))
    loop.sync_once()
    assert dp.calls[-1] == "full" and [d.key.address for d in dp.doors] == ["198.51.100.210"]
    # The node learns it holds that address (its Node object): the door is released at the next full sync.
    addresses[0] = frozenset({"198.51.100.210"})
    loop.sync_once(full_readback=True)
    assert dp.doors == ()
