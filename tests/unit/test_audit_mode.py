"""Audit mode, pure parts: the signed mode in the contract, the composition's mode rule, the plan,
the sets it renders, and the webhook (mode carried into the signature, warning, bad values)."""

from __future__ import annotations

import ipaddress
import itertools
import json

import pytest

from contract.annotation import (
    MODE_KEY,
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    CidrRule,
    ContractError,
    NodePortEntry,
    PodGroup,
    PolicyRef,
    SourceSet,
    annotation_for,
    decode,
    encode,
    owned_keys,
    read_mode,
    read_signed,
    render_annotations,
)
from contract.composition import Part, compose, compose_mode, everything, part_of
from enforcer import diff
from enforcer.plan import DesiredState, PortKey, ProtectedPort, decode_state, encode_state, plan_desired_state
from tests.builders import ip_from, policy
from tests.unit.test_admission import CONFIG, KEY, _denied, _warnings, apply_patch, req, view
from webhook.admission import mutate, resolve_all_annotations, validate

REF = PolicyRef("shop", "p", "uid-1")
OFFICE = SourceSet(False, (CidrRule("198.51.100.0/24"),))
ENTRY = NodePortEntry(30080, "TCP", "web", 80, ("IPv4",), "all", OFFICE)


# --- contract --------------------------------------------------------------------------------


def test_enforce_is_written_as_version_2_and_audit_as_version_3_with_a_signed_mode() -> None:
    enforce = encode(annotation_for(REF, (ENTRY,), "enforce"))
    audit = encode(annotation_for(REF, (ENTRY,), "audit"))
    assert json.loads(enforce)["version"] == 2 and "mode" not in json.loads(enforce)
    assert json.loads(audit)["version"] == 3 and json.loads(audit)["mode"] == "audit"
    assert decode(enforce).mode == "enforce"
    assert decode(audit) == annotation_for(REF, (ENTRY,), "audit")
    # The canonical form of a version-2 enforcing annotation is unchanged (no rewrite on upgrade).
    assert enforce == encode(Annotation(REF, (ENTRY,)))


def test_versions_are_closed_and_the_mode_is_checked() -> None:
    v2 = json.loads(encode(annotation_for(REF, (ENTRY,), "enforce")))
    with pytest.raises(ContractError, match=r"\$: unknown key\(s\) \['mode'\]"):
        decode(json.dumps({**v2, "mode": "audit"}))
    v3 = json.loads(encode(annotation_for(REF, (ENTRY,), "audit")))
    with pytest.raises(ContractError, match=r"\$: missing key\(s\) \['mode'\]"):
        decode(json.dumps({k: v for k, v in v3.items() if k != "mode"}))
    with pytest.raises(ContractError, match=r"\$.mode: 'dryrun' is not one of"):
        decode(json.dumps({**v3, "mode": "dryrun"}))
    with pytest.raises(ContractError, match=r"\$.mode: expected str"):
        decode(json.dumps({**v3, "mode": True}))
    with pytest.raises(ContractError, match=r"\$.version: unsupported version 4"):
        decode(json.dumps({**v3, "version": 4}))
    with pytest.raises(ContractError, match=r"\$.mode: version 2 cannot carry mode 'audit'"):
        encode(Annotation(REF, (ENTRY,), version=2, mode="audit"))
    # A version 3 may say enforce (decodable, canonical), though this build writes version 2 for it.
    explicit = Annotation(REF, (ENTRY,), version=3, mode="enforce")
    assert decode(encode(explicit)) == explicit


@pytest.mark.parametrize("forged_mode", ["audit", "enforce"])
def test_a_mode_edited_either_way_does_not_verify(forged_mode: str) -> None:
    mode = "enforce" if forged_mode == "audit" else "audit"
    signed = render_annotations(annotation_for(REF, (ENTRY,), mode), KEY)  # type: ignore[arg-type]
    forged = encode(annotation_for(REF, (ENTRY,), forged_mode))  # type: ignore[arg-type]
    assert forged != signed[NODEPORTS_KEY]
    tampered = {**signed, NODEPORTS_KEY: forged}
    with pytest.raises(ContractError, match="signature"):
        read_signed(tampered, "shop", "p", "uid-1", KEY.verifier())
    assert read_signed(signed, "shop", "p", "uid-1", KEY.verifier()).mode == mode  # type: ignore[union-attr]


def test_read_mode_and_owned_keys() -> None:
    assert read_mode(None) == "enforce"
    assert read_mode({MODE_KEY: "audit"}) == "audit"
    with pytest.raises(ContractError, match=r'metadata.annotations\["nodeport-guard.io/mode"\]: \'Audit\''):
        read_mode({MODE_KEY: "Audit"})
    # The author's key is not the webhook's: never removed, replaced or refused as a hand edit.
    keys = {MODE_KEY: "audit", NODEPORTS_KEY: "x", SIGNATURE_KEY: "y", "other": "z"}
    assert owned_keys(keys) == [NODEPORTS_KEY, SIGNATURE_KEY]


# --- composition: the mode rule, exhaustively -------------------------------------------------

_SOURCES = {
    "nobody": (),
    "office": ((int(ipaddress.ip_address("198.51.100.0")), int(ipaddress.ip_address("198.51.100.255"))),),
}


def _parts() -> list[Part]:
    """One of each shape: scope all / some (selecting or not) / a version-1 verdict, each in each mode."""
    office = _SOURCES["office"]
    shapes = [
        Part("all", allow=office),
        Part("all", allow=()),
        Part("some", groups=(("a" * 32, office), ("b" * 32, None))),
        Part("some", groups=(("a" * 32, None), ("b" * 32, ()))),
    ]
    out = [Part(s.scope, s.allow, s.groups, mode) for s in shapes for mode in ("enforce", "audit")]
    out.append(Part("verdict", allow=office))  # version 1: always enforce
    return out


@pytest.mark.parametrize("size", [1, 2, 3])
def test_mode_rule_every_combination(size: int) -> None:
    """Audit only when every part audits; one enforcing part (or a v1 verdict) enforces the port.
    The verdict never depends on the modes: it is the composition of every part."""
    parts = _parts()
    for combo in itertools.product(parts, repeat=size):
        modes = [p.mode for p in combo]
        assert compose_mode(combo) == ("audit" if all(m == "audit" for m in modes) else "enforce"), combo
        same_without_modes = [Part(p.scope, p.allow, p.groups) for p in combo]
        assert compose(combo, 4) == compose(same_without_modes, 4)
    assert compose_mode([]) == "enforce"


def test_a_version_1_verdict_is_enforced_whatever_mode_is_asked() -> None:
    v1 = NodePortEntry(30080, "TCP", "web", 80, ("IPv4",), "verdict", OFFICE)
    assert part_of(v1, 4, "audit").mode == "enforce"
    assert part_of(ENTRY, 4, "audit").mode == "audit"


# --- plan -------------------------------------------------------------------------------------


def _annotation(name: str, allow: SourceSet, mode: str, port: int = 30080) -> Annotation:
    entry = NodePortEntry(port, "TCP", "web", 80, ("IPv4", "IPv6"), "all", allow)
    return annotation_for(PolicyRef("shop", name, ""), (entry,), mode)  # type: ignore[arg-type]


def test_plan_one_enforcing_and_one_auditing_policy_enforce_the_composed_verdict() -> None:
    vpn = SourceSet(False, (CidrRule("203.0.113.0/24"),))
    only_audit = plan_desired_state([_annotation("a", OFFICE, "audit"), _annotation("b", vpn, "audit")]).state
    assert {p.mode for p in only_audit.ports} == {"audit"}
    mixed = plan_desired_state([_annotation("a", OFFICE, "audit"), _annotation("b", vpn, "enforce")]).state
    v4 = next(p for p in mixed.ports if p.key == PortKey(4, "TCP", 30080))
    assert v4.mode == "enforce"
    assert [str(n) for n in v4.allowed] == ["198.51.100.0/24", "203.0.113.0/24"]  # both policies' sources
    # Audit everywhere else; an allow-all audit policy leaves nothing to audit (unprotected).
    assert plan_desired_state([_annotation("a", SourceSet.everyone(), "audit")]).state.ports == ()


def test_state_json_carries_the_mode() -> None:
    state = plan_desired_state([_annotation("a", OFFICE, "audit"), _annotation("b", OFFICE, "enforce", 30081)]).state
    assert decode_state(encode_state(state)) == state
    assert {(p.key.port, p.mode) for p in state.ports} == {(30080, "audit"), (30081, "enforce")}


# --- sets -------------------------------------------------------------------------------------


def _port(port: int, mode: str, protocol: str = "TCP") -> ProtectedPort:
    return ProtectedPort(PortKey(4, protocol, port), (ipaddress.ip_network("198.51.100.0/24"),), mode)  # type: ignore[arg-type]


def test_audited_ports_are_in_the_audit_set_and_counter_sets_are_empty_for_us() -> None:
    state = DesiredState((_port(30082, "audit", "SCTP"), _port(30080, "audit"), _port(30081, "enforce")))
    members = diff.render_members(state)
    assert members["npg-4-audit"] == {
        "0.0.0.0/1,tcp:30080", "128.0.0.0/1,tcp:30080", "0.0.0.0/1,sctp:30082", "128.0.0.0/1,sctp:30082"
    }
    assert members["npg-4-dropped"] == members["npg-4-audited"] == frozenset()
    everything_audited = diff.render_members(state, None, audit_all=True)
    assert len(everything_audited["npg-4-audit"]) == 6
    # The memo notices a mode change of an otherwise equal port.
    memo: diff.MembersMemo = {}
    diff.render_members(state, memo)
    flipped = DesiredState((_port(30082, "audit", "SCTP"), _port(30080, "enforce"), _port(30081, "enforce")))
    assert len(diff.render_members(flipped, memo)["npg-4-audit"]) == 2


def test_counter_set_members_are_never_compared_nor_rewritten() -> None:
    saved = (
        "create npg-4-dropped hash:ip,port family inet hashsize 1024 maxelem 262144 counters bucketsize 12 "
        "initval 0x1\nadd npg-4-dropped 198.51.100.11,tcp:30080 packets 3 bytes 180\n"
        "create npg-4-audit hash:net,port family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x2\n"
        "add npg-4-audit 0.0.0.0/1,tcp:30080\nadd npg-4-audit 128.0.0.0/1,tcp:30080\n"
    )
    sets = diff.parse_ipset_save(saved)
    assert sets["npg-4-dropped"].members == frozenset()
    assert diff.header_matches(sets["npg-4-dropped"].header, "npg-4-dropped", (30000, 32767))
    # The same type without counters is not ours: it would be rebuilt.
    assert not diff.header_matches("hash:ip,port family inet hashsize 1024", "npg-4-dropped", (30000, 32767))
    changes = diff.plan_set_changes({"npg-4-dropped": frozenset()}, sets, (30000, 32767))
    assert [c.action for c in changes if c.name == "npg-4-dropped"] == ["none"]
    installed = diff.parse_installed_state({**sets, **diff.parse_ipset_save("create npg-4-tcp bitmap:port range "
                                                                            "30000-32767\nadd npg-4-tcp 30080\n")})
    assert [(p.key.port, p.mode) for p in installed.ports] == [(30080, "audit")]


def test_skeleton_counts_then_drops_or_lets_through() -> None:
    check = [r.spec() for r in diff.build_skeleton(4) if r.chain == diff.CHECK_CHAIN]
    audit = [r.spec() for r in diff.build_skeleton(4) if r.chain == diff.AUDIT_CHAIN]
    assert check == [
        "-m set --match-set npg-4-allow src,dst -j RETURN",
        "-m set --match-set npg-4-audit dst,dst -g NPG-AUDIT",
        "-m set --match-set npg-4-dropped dst,dst -j DROP",
        "-j SET --add-set npg-4-dropped dst,dst",
        "-j DROP",
    ]
    assert audit == [
        "-m set --match-set npg-4-audited dst,dst -j RETURN",
        "-j SET --add-set npg-4-audited dst,dst",
        "-j RETURN",
    ]
    body = next(r for r in diff.build_skeleton(6) if r.target == "SET").body()
    assert body == f"-m comment --comment {next(r for r in diff.build_skeleton(6) if r.target == 'SET').comment} " \
        "-j SET --add-set npg-6-dropped dst,dst"


# --- webhook ----------------------------------------------------------------------------------

ALLOW = {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.0/24")}]}


def _audited(name: str = "p") -> dict[str, object]:
    obj = policy(name, ALLOW)
    obj["metadata"]["annotations"] = {MODE_KEY: "audit"}
    return obj


def test_webhook_signs_the_authors_mode_and_warns() -> None:
    obj = _audited()
    answer = mutate(req("CREATE", obj), view(), CONFIG)
    (warning,) = [w for w in _warnings(answer) if "audit mode" in w]
    assert warning.startswith('metadata.annotations["nodeport-guard.io/mode"]: audit mode') and "TCP 30080" in warning
    result = apply_patch(obj, answer)
    assert result["metadata"]["annotations"][MODE_KEY] == "audit"  # the author's key stays
    signed = read_signed(result["metadata"]["annotations"], "default", "p", "", KEY.verifier())
    assert signed is not None and signed.mode == "audit" and signed.version == 3
    assert validate(req("CREATE", result), view(), CONFIG)["response"]["allowed"]
    # The reconciler computes the same.
    stored = {**result, "metadata": {**result["metadata"], "uid": "u1"}}
    desired = resolve_all_annotations("default", view(stored), KEY)["p"]
    assert desired is not None and decode(desired[NODEPORTS_KEY]).mode == "audit"
    # No warning without the annotation, and the enforcing annotation is version 2.
    plain = mutate(req("CREATE", policy("p", ALLOW)), view(), CONFIG)
    assert not [w for w in _warnings(plain) if "audit mode" in w]


def test_switching_to_enforce_rewrites_and_a_kept_audit_signature_is_refused() -> None:
    audited = apply_patch(_audited(), mutate(req("CREATE", _audited()), view(), CONFIG))
    switched = json.loads(json.dumps(audited))
    del switched["metadata"]["annotations"][MODE_KEY]
    answer = mutate(req("UPDATE", switched, audited), view(), CONFIG)
    enforced = apply_patch(switched, answer)
    signed = read_signed(enforced["metadata"]["annotations"], "default", "p", "", KEY.verifier())
    assert signed is not None and signed.mode == "enforce" and signed.version == 2
    # A later mutating webhook putting the old (validly signed) audit value back is refused.
    code, message = _denied(validate(req("UPDATE", switched, audited), view(), CONFIG))
    assert code == 403 and "nodeport-guard.io/nodeports" in message


def test_an_invalid_mode_is_rejected_with_the_field_and_the_fix() -> None:
    obj = policy("p", ALLOW)
    obj["metadata"]["annotations"] = {MODE_KEY: "warn"}
    for handler in (mutate, validate):
        code, message = _denied(handler(req("CREATE", obj), view(), CONFIG))
        assert code == 422
        assert message.startswith('metadata.annotations["nodeport-guard.io/mode"]: \'warn\' is not one of')
        assert "remove it (enforce)" in message


def test_everything_is_still_composed_from_every_part() -> None:
    # Sanity: a deny-all in audit and an allow in enforce compose to the allow (the intersection
    # over groups does not care about modes).
    deny = Part("all", allow=(), mode="audit")
    allow = Part("all", allow=everything(4), mode="enforce")
    assert compose([deny, allow], 4) == everything(4) and compose_mode([deny, allow]) == "enforce"
    groups = Part("some", groups=(("a" * 32, ()),), mode="audit")
    assert compose([groups], 4) == () and compose_mode([groups]) == "audit"
    assert PodGroup("a" * 32, None).allow is None


def test_leaving_audit_mode_counts_as_newly_restricted_for_conntrack() -> None:
    from enforcer.delta import fast_set_changes, newly_restricted

    audited, enforced = _port(30080, "audit"), _port(30080, "enforce")
    key = audited.key
    assert newly_restricted({key: (audited, enforced)}) == {key: enforced.allowed}  # its denied flows now drop
    assert newly_restricted({key: (enforced, audited)}) == {}  # audit drops nothing
    assert newly_restricted({key: (None, audited)}) == {}
    assert newly_restricted({key: (audited, enforced)}, audit_all=True) == {}
    # The fast path writes the mode change as audit-set member changes only.
    last = {name: set(m) for name, m in diff.render_members([audited]).items()}
    (change,) = fast_set_changes(last, {key: (audited, enforced)}) or ()
    assert change.name == "npg-4-audit" and change.removes == ("0.0.0.0/1,tcp:30080", "128.0.0.0/1,tcp:30080")


def test_enforcer_mode_setting() -> None:
    from enforcer.settings import EnforcerSettings, SettingsError

    public = {"NPG_PUBLIC_KEYS_CONFIGMAP": "nodeport-guard/nodeport-guard-signing-public-keys"}
    assert EnforcerSettings.from_env(public).audit_all is False
    assert EnforcerSettings.from_env({**public, "NPG_MODE": "audit"}).audit_all is True
    assert EnforcerSettings.from_env({**public, "NPG_AUDIT_LOG_SECONDS": "2.5"}).audit_log_seconds == 2.5
    with pytest.raises(SettingsError, match=r"NPG_MODE='dryrun': expected enforce"):
        EnforcerSettings.from_env({**public, "NPG_MODE": "dryrun"})
    with pytest.raises(SettingsError, match=r"NPG_AUDIT_LOG_SECONDS=0\.0: must be > 0"):
        EnforcerSettings.from_env({**public, "NPG_AUDIT_LOG_SECONDS": "0"})
