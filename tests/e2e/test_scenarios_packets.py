"""Every expectation of every shared scenario proven by a real packet, on both enforcer backends.

The real kube-apiserver and webhook produce the annotations (`kubectl apply` of each case), the real
enforcer process programs a node namespace per backend (legacy via python-iptables, nft via
iptables-nft-restore), and each expectation (source, NodePort, protocol, allowed) is checked by a
packet from a client namespace holding that source: TCP connect, UDP request/answer, SCTP INIT.
Prints a table case x expectation -> expected / observed per backend, and the count checked.

By hand, one case: `.venv/bin/python -m pytest tests/e2e/test_scenarios_packets.py -s -k NAME`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.components import Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.scenario_oracle import BACKENDS, NODE_ADDRESSES, CaseOutcome, ScenarioBed, render_case, scenario_bed
from tests.scenarios import RESERVED_RANGE_NOTE, Case, load_cases, reserved_count

pytestmark = [pytest.mark.netns, pytest.mark.controlplane]
CASES = load_cases()


@pytest.fixture(scope="module")
def outcomes() -> list[CaseOutcome]:
    """The outcomes of the cases run so far in this module, for the closing summary."""
    return []


@pytest.fixture(scope="module")
def bed(
    control_plane: ControlPlane,
    installation: Installation,
    webhook: WebhookServer,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[ScenarioBed]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with scenario_bed(control_plane, installation, tmp_path_factory.mktemp("scenarios"), CASES) as b:
        with capture.global_and_fixture_disabled() if capture else _nothing():
            print(
                f"\n[packet oracle] {sum(len(c.expectations) for c in CASES)} expectations in {len(CASES)} cases, "
                f"backends {', '.join(BACKENDS)}; node addresses {', '.join(NODE_ADDRESSES)}.\n"
                f"[packet oracle] {reserved_count(CASES)} expectations come from {RESERVED_RANGE_NOTE}."
            )
        yield b


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_proven_by_packets(
    case: Case, bed: ScenarioBed, outcomes: list[CaseOutcome], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = bed.run_case(case)
    outcomes.append(outcome)
    table = render_case(outcome, bed.backends)
    with capsys.disabled():
        print("\n" + table)
    assert outcome.ok, f"{table}\nnote of the case: {case.note}"


def test_every_expectation_was_checked(
    outcomes: list[CaseOutcome], capsys: pytest.CaptureFixture[str]
) -> None:
    total = sum(len(c.expectations) for c in CASES)
    checked = sum(o.checked for o in outcomes)
    rejected = [o for o in outcomes if o.rejected is not None]
    with capsys.disabled():
        print(
            f"\n[packet oracle] {checked} of {total} expectations checked by a real packet on each backend "
            f"({', '.join(BACKENDS)}): {checked * len(BACKENDS)} probes; {len(rejected)} case(s) rejected at "
            f"admission; {sum(not o.ok for o in outcomes)} case(s) differing."
        )
    if len(outcomes) == len(CASES):  # (with -k only some cases run: then there is no total to check)
        assert checked + sum(len(o.case.expectations) for o in rejected if o.case.invalid) == total
