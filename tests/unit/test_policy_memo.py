"""The compiled-policy memo is a pure cache: admissions give the same answers with it warm, cold or absent."""

from __future__ import annotations

from bench import data
from tests.builders import policy
from webhook.admission import AdmissionConfig, mutate, resolve_all_annotations
from webhook.review import parse_review
from webhook.semantics import PolicyMemo, compile_policy
from webhook.snapshot import StaticClusterView


def test_memo_returns_the_compiled_policy_of_that_very_object() -> None:
    memo = PolicyMemo(capacity=2)
    a = policy("a", {"podSelector": {}, "ingress": []})
    b = policy("a", {"podSelector": {}, "ingress": [{}]})  # same name, another object: another result
    assert memo.compile(a, True) is memo.compile(a, True)
    assert memo.compile(a, True) == compile_policy(a)
    assert memo.compile(b, True) == compile_policy(b) != compile_policy(a)
    for i in range(5):  # beyond capacity: older entries go, answers stay right
        memo.compile(policy(f"p{i}", {"podSelector": {}}), False)
    assert memo.compile(a, True) == compile_policy(a)


def test_admission_answers_do_not_depend_on_the_memo() -> None:
    cluster = data.build_cluster(namespaces=20, services_per_namespace=5)
    view = StaticClusterView(cluster.services, cluster.pods, cluster.policies)
    requests = [parse_review(r) for r in data.new_policy_reviews(60, namespaces=20, services_per_namespace=5)]
    warm = AdmissionConfig(signing_key=data.BENCH_SIGNING_KEY)
    for _ in range(2):  # the second round runs with every stored policy remembered
        for request in requests:
            fresh = AdmissionConfig(signing_key=data.BENCH_SIGNING_KEY)
            assert mutate(request, view, warm) == mutate(request, view, fresh)


def test_reconciler_answers_do_not_depend_on_the_memo() -> None:
    cluster = data.build_cluster(namespaces=10, services_per_namespace=5)
    view = StaticClusterView(cluster.services, cluster.pods, cluster.policies)
    memo = PolicyMemo()
    for _ in range(2):
        for i in range(10):
            namespace = f"ns-{i}"
            expected = resolve_all_annotations(namespace, view, data.BENCH_SIGNING_KEY)
            assert any(expected.values()), namespace  # real verdicts are compared
            assert resolve_all_annotations(namespace, view, data.BENCH_SIGNING_KEY, memo) == expected
