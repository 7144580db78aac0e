"""Unit tests of the benchmark inputs: generated cluster, reviews, enforcer states and the floor scripts."""

from __future__ import annotations

import ipaddress

from bench import data
from bench.enforcer_worker import render_floor_scripts
from contract.signing import Signer
from enforcer import diff
from enforcer.plan import plan_desired_state
from enforcer.policies import StoredPolicy, verify_policies
from webhook.admission import AdmissionConfig, mutate
from webhook.review import parse_review
from webhook.snapshot import StaticClusterView


def test_cluster_has_the_requested_shape() -> None:
    cluster = data.build_cluster(namespaces=3, services_per_namespace=4, pods_per_service=2, policies_per_namespace=2)
    assert (len(cluster.services), len(cluster.pods), len(cluster.policies)) == (12, 24, 6)
    ports = [s["spec"]["ports"][0]["nodePort"] for s in cluster.services]
    assert len(set(ports)) == len(ports) and all(30000 <= p <= 32767 for p in ports)
    # Same seed, same cluster: results are comparable from run to run.
    assert data.build_cluster(namespaces=3, services_per_namespace=4, pods_per_service=2) == data.build_cluster(
        namespaces=3, services_per_namespace=4, pods_per_service=2
    )


def test_every_benchmark_review_gets_an_annotation_patch() -> None:
    cluster = data.build_cluster(namespaces=5, services_per_namespace=4, pods_per_service=2)
    view = StaticClusterView(cluster.services, cluster.pods, cluster.policies)
    config = AdmissionConfig(signing_key=data.BENCH_SIGNING_KEY)
    reviews = data.new_policy_reviews(20, namespaces=5, services_per_namespace=4)
    answers = [mutate(parse_review(r), view, config)["response"] for r in reviews]
    assert all(a["allowed"] and "patch" in a for a in answers)


def test_protected_state_has_three_disjoint_prefixes_per_port() -> None:
    state = data.protected_state(1000, extra=(40500,))
    assert len(state.ports) == 1001
    assert all(len(p.allowed) == 3 for p in state.ports)
    assert state.ports[-1].key.port == 40500
    docs = [ipaddress.IPv4Network(d) for d in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    for p in state.ports[:50]:
        nets = [n for n in p.allowed if isinstance(n, ipaddress.IPv4Network)]
        assert len(nets) == 3
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
        # Documentation ranges only, one prefix in each.
        assert sorted(next(i for i, d in enumerate(docs) if n.subnet_of(d)) for n in nets) == [0, 1, 2]


def test_signed_annotations_verify_and_plan_to_the_protected_state() -> None:
    stored = []
    for i in range(200):
        ref, annotations = data.signed_policy_annotations(i, 30000 + i)
        stored.append(StoredPolicy(ref.namespace, ref.name, ref.uid, "1", tuple(sorted(annotations.items()))))
    verified = verify_policies(stored, data.BENCH_SIGNING_KEY.verifier())
    assert len(verified.annotations) == 200 and not verified.rejected
    assert plan_desired_state(verified.annotations, (30000, 40999)).state == data.protected_state(200)
    # A different key: every annotation is refused (the benchmark really verifies Ed25519 signatures).
    assert len(verify_policies(stored, Signer.generate().verifier()).rejected) == 200


def test_floor_scripts_load_exactly_the_state_our_sync_programs() -> None:
    state = data.protected_state(500)
    sets_script, rules_script = render_floor_scripts(state, (30000, 40999))
    # The ipset restore script, read back as `ipset save` output, is the same desired state.
    assert diff.parse_installed_state(diff.parse_ipset_save(sets_script)) == state
    rules = diff.parse_iptables_save(rules_script.replace("-I PREROUTING 1 ", "-A PREROUTING "))
    assert diff.skeleton_matches(rules, diff.build_skeleton(4))


def test_scale_namespace_reviews_are_annotated_by_mutate_and_admitted_by_validate() -> None:
    from bench import scale_core, scale_data
    from contract.annotation import NODEPORTS_KEY, decode
    from webhook.admission import validate
    from webhook.review import parse_review

    cache, config = scale_core.settled_cache(3)
    to_mutate, to_validate = scale_data.review_pairs(scale_core.NAMESPACE, 3, 2, cache, config)
    assert [r["request"]["name"] for r in to_mutate] == ["allow-3", "allow-4"]
    for body in to_validate:
        obj = body["request"]["object"]
        annotation = decode(obj["metadata"]["annotations"][NODEPORTS_KEY])
        assert len(annotation.node_ports) == scale_data.SERVICES  # every Service's NodePort, one host each
        index = int(obj["metadata"]["name"].removeprefix("allow-"))
        hosts = {str(c.cidr) for e in annotation.node_ports for c in e.sources()[0].cidrs}
        assert hosts == {f"{scale_data.host(index)}/32"}
        assert validate(parse_review(body), cache, config)["response"]["allowed"]
