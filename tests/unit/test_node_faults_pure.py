"""The pure parts of localcluster.node_faults (rule counting) and enforcer.apihealth (freshness, recovery)."""

from __future__ import annotations

from enforcer.apihealth import ApiHealth, is_fresh
from localcluster.node_faults import count_save_rules, nft_rule_lines, nodeports_from

SAVE = """*nat
:KUBE-SERVICES - [0:0]
:NPG-INPUT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j NPG-INPUT
-A KUBE-SERVICES -d 198.51.100.140/32 -p tcp -j KUBE-SVC-ABC
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-EXT-ABC
-A NPG-INPUT -m set --match-set npg-v4 src -j RETURN
-A OTHER -j ACCEPT
COMMIT
""".splitlines()

NFT = """table ip kube-proxy {
\tmap service-nodeports {
\t\ttype inet_proto . inet_service : verdict
\t\telements = { tcp . 30080 : goto external-ABC }
\t}
\tchain nodeports {
\t\ttype filter hook prerouting priority dstnat; policy accept;
\t\tip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
\t}
\tchain external-ABC {
\t\tjump mark-for-masquerade
\t\tgoto service-ABC
\t}
}
"""


def test_save_rules_are_counted_by_chain_and_by_jump() -> None:
    assert count_save_rules(SAVE, "KUBE-") == 3
    assert count_save_rules(SAVE, "NPG-") == 2


def test_nft_rules_are_the_lines_inside_chains_without_their_header() -> None:
    assert nft_rule_lines(NFT) == [
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "jump mark-for-masquerade",
        "goto service-ABC",
    ]


def test_nodeports_are_the_dnat_paths_only() -> None:
    save = [*SAVE, '-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/lb:tcp health check node port" '
            "-m tcp --dport 31743 -j ACCEPT"]
    nft = NFT.replace("}\n\tchain nodeports", "}\n\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service"
                      " : verdict\n\t\telements = { 198.51.100.140 . tcp . 443 : goto service-X }\n\t}"
                      "\n\tchain nodeports")
    assert "service-ips" in nft
    assert nodeports_from(save, [nft]) == {("tcp", 30080)}
    assert nodeports_from(save, []) == {("tcp", 30080)}
    assert nodeports_from([], [nft]) == {("tcp", 30080)}


def test_freshness_needs_an_answer_within_the_bound() -> None:
    assert not is_fresh(None, 100.0, 15.0)
    assert is_fresh(90.0, 100.0, 15.0)
    assert not is_fresh(80.0, 100.0, 15.0)


def test_health_goes_stale_without_answers_and_reconnects_once_when_they_return() -> None:
    now = [0.0]
    answering = [True]
    recovered: list[float] = []

    def check() -> None:
        if not answering[0]:
            raise TimeoutError("no route")

    health = ApiHealth(check, stale_after=15.0, on_recover=lambda: recovered.append(now[0]), clock=lambda: now[0])
    assert not health.ok()
    assert health.probe_once() and health.ok() and recovered == []
    answering[0] = False
    for t in (5.0, 10.0, 15.0, 20.0):
        now[0] = t
        assert not health.probe_once()
    assert not health.ok() and health.silence() == 20.0
    answering[0] = True
    now[0] = 25.0
    assert health.probe_once() and health.ok()
    assert recovered == [25.0]
    now[0] = 30.0
    health.probe_once()
    assert recovered == [25.0]
