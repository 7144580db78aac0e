"""Every expectation of every shared scenario proven by a real packet, on both enforcer backends.

The real kube-apiserver and webhook produce the annotations (`kubectl apply` of each case), the real
enforcer process programs a node namespace per backend (legacy via python-iptables, nft via
iptables-nft-restore), and each expectation (source, NodePort, protocol, allowed) is checked by a
packet from a client namespace holding that source: TCP connect, UDP request/answer, SCTP INIT.
Prints a table case x expectation -> expected / observed per backend, and the count checked.

By hand, one case: `.venv/bin/python -m pytest tests/e2e/test_scenarios_packets.py -s -k NAME`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.components import Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.scenario_oracle import (
    BACKENDS,
    CaseOutcome,
    ScenarioBed,
    header,
    render_case,
    scenario_bed,
    summary,
)
from tests.scenarios import SYNTHETIC_INVALID, Case, load_cases, parse_case

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
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print("\n" + header(CASES, BACKENDS))
        yield b


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
    with capsys.disabled():
        print("\n" + summary(outcomes, BACKENDS))
    if len(outcomes) == len(CASES):  # (with -k only some cases run: then there is no total to check)
        invalid = sum(len(o.case.expectations) for o in outcomes if o.rejected is not None and o.case.invalid)
        assert sum(o.checked for o in outcomes) + invalid == total


def test_a_case_the_webhook_rejects_is_reported_as_rejected_at_admission(bed: ScenarioBed) -> None:
    """The reporting path for invalid cases, through the real webhook (no shared case is invalid today)."""
    outcome = bed.run_case(parse_case(SYNTHETIC_INVALID))
    rendered = render_case(outcome, bed.backends)
    assert outcome.ok and outcome.checked == 0, rendered
    assert outcome.rejected is not None and "host bits set" in outcome.rejected, rendered
    assert rendered.startswith("synthetic-host-bits-set: rejected at admission: ")
    # Had the case not been marked invalid, the same rejection would fail it.
    unmarked = CaseOutcome(parse_case({**SYNTHETIC_INVALID, "invalid": False}), (), outcome.rejected, ())
    assert not unmarked.ok and "[NOT EXPECTED]" in render_case(unmarked, bed.backends)
