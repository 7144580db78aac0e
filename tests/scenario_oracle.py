"""The packet oracle: shared scenarios through apiserver, webhook and enforcers, proven by real packets (I/O).

`scenario_bed(plane, installation, workdir, cases)` starts, per iptables backend, a node namespace
with the real enforcer process (`EnforcerProcess`) and a client namespace holding every source
address of the cases (`tests.probes.probe_pair`). `ScenarioBed.run_case(case)` applies the case as
a user would (`kubectl apply`: Pods and Services, then the policies, through the real webhook),
waits until the annotations have settled and every enforcer has completed a sync that started after
that, then sends one real packet exchange per expectation from the expectation's source address to
the NodePort on each node (TCP connect, UDP request/answer, SCTP INIT), and cleans up (the objects,
then waits for every node to be back to no sets and no chains of ours). The verdict is read from
packets only: the oracle never reads or decodes an annotation, so it holds for any annotation format.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.components import EnforcerProcess, Installation, delete_namespaced_objects
from tests.controlplane.harness import ControlPlane
from tests.netns import run
from tests.probes import PASSED, Observed, Probe, ProbePair, probe_pair
from tests.scenarios import (
    RESERVED_RANGE_NOTE,
    Case,
    Expectation,
    as_list,
    build_objects,
    ports_of,
    reserved_count,
    sources_of,
)

BACKENDS = ("legacy", "nft")
# The node's own addresses: outside every source of the cases (probe_pair refuses an overlap).
NODE_ADDRESSES = ("203.0.113.254", "2001:db8:fe::1")
FIRST_TIMEOUT = 1.0  # a probe that saw nothing within this is "denied" ...
RECHECK_TIMEOUT = 3.0  # ... unless it disagrees with the case: then it is sent again after settling, waiting longer
ENFORCER_RESYNC = 0.5  # short, so "a sync that started after the annotations settled" comes quickly


@dataclass
class EnforcedNode:
    backend: str
    pair: ProbePair
    enforcer: EnforcerProcess

    def syncs(self) -> int:
        """How many syncs the enforcer has completed (its sync-duration histogram's count)."""
        status, body = self.enforcer.http_get("/metrics")
        if status != 200:
            raise RuntimeError(f"enforcer ({self.backend}) metrics: HTTP {status}")
        for line in body.splitlines():
            if line.startswith("nodeport_guard_sync_duration_seconds_count"):
                return int(float(line.rsplit(" ", 1)[1]))
        raise RuntimeError(f"enforcer ({self.backend}) exports no sync count")

    def footprint(self) -> list[str]:
        """Our sets and chains in the node namespace (empty once the enforcer has removed everything)."""
        ours = [n for n in self.pair.run(["ipset", "list", "-n"]).split() if n.startswith("npg-")]
        for tool in (f"iptables-{self.backend}-save", f"ip6tables-{self.backend}-save"):
            saved = self.pair.run([tool, "-t", "mangle"])
            ours += [f"{tool}: {line}" for line in saved.splitlines() if "NPG-" in line]
        return ours


@dataclass(frozen=True, slots=True)
class Row:
    expectation: Expectation
    observed: dict[str, Observed]  # backend -> what the packet saw
    rechecked: bool

    @property
    def ok(self) -> bool:
        return all((o in PASSED) == self.expectation.allowed for o in self.observed.values())


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    case: Case
    rows: tuple[Row, ...]
    rejected: str | None  # the webhook's (or apiserver's) message when the case was not admitted
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        if self.rejected is not None:
            return self.case.invalid
        return not self.case.invalid and all(r.ok for r in self.rows)

    @property
    def checked(self) -> int:
        """Expectations proven by a packet on every backend."""
        return 0 if self.rejected is not None else len(self.rows)


def apply_outcome(returncode: int, stderr: str) -> tuple[str | None, tuple[str, ...]]:
    """What `kubectl apply` said: (the error if it failed, the warnings it printed)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    warnings = tuple(line for line in lines if line.startswith("Warning:"))
    if returncode == 0:
        return None, warnings
    errors = [line for line in lines if not line.startswith("Warning:")]
    return " | ".join(errors) or f"kubectl exited {returncode}", warnings


def wait_quiet(read: Callable[[], object], quiet: float, timeout: float, interval: float) -> None:
    """Until `read()` (the policies' resourceVersions) has returned the same value for `quiet` s."""
    last: object = None
    since = time.monotonic()
    deadline = since + timeout
    while True:
        current = read()
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the NetworkPolicies kept changing for {timeout:.0f} s")
        time.sleep(interval)


def _until(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)


class ScenarioBed:
    """Enforced nodes (one per backend) sharing one control plane and webhook; runs cases one at a time."""

    def __init__(self, plane: ControlPlane, nodes: Sequence[EnforcedNode]) -> None:
        self.plane = plane
        self.nodes = list(nodes)
        self.backends = tuple(n.backend for n in self.nodes)
        self._api: Any = plane.api_client()

    # --- waiting -------------------------------------------------------------------------

    def _policy_versions(self, namespaces: Sequence[str]) -> list[tuple[str, str, str]]:
        from kubernetes import client

        api = client.NetworkingV1Api(self._api)
        versions = []
        for ns in namespaces:
            response: Any = api.list_namespaced_network_policy(ns, _preload_content=False)
            listing = json.loads(response.data)
            versions += [(ns, p["metadata"]["name"], p["metadata"]["resourceVersion"]) for p in listing["items"]]
        return sorted(versions)

    def wait_settled(self, namespaces: Sequence[str], quiet: float) -> None:
        """Annotations unchanged for `quiet` seconds, then a whole enforcer sync started after that, everywhere."""
        wait_quiet(lambda: self._policy_versions(namespaces), quiet, timeout=30, interval=0.1)
        # The first sync counted may have begun before the quiet point; the second began after it.
        start = {n.backend: n.syncs() for n in self.nodes}
        for node in self.nodes:
            wanted = start[node.backend] + 2
            _until(f"two enforcer syncs on {node.backend}", lambda: node.syncs() >= wanted,  # noqa: B023
                   timeout=10 + 4 * ENFORCER_RESYNC, interval=0.05)

    def wait_clean(self, timeout: float = 20) -> None:
        """Every node back to nothing of ours (no protected port anywhere in the cluster)."""
        for node in self.nodes:
            try:
                _until(f"node {node.backend} clean", lambda: not node.footprint(), timeout)  # noqa: B023
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}: still {node.footprint()}\n{node.enforcer.log_tail(20)}") from exc

    # --- probing -------------------------------------------------------------------------

    def _probe(self, expectations: Sequence[Expectation], timeout: float) -> dict[str, list[Observed]]:
        results: dict[str, list[Observed]] = {}
        errors: list[BaseException] = []

        def one(node: EnforcedNode) -> None:
            try:
                node.pair.flush_conntrack()  # every probe opens a NEW flow, whatever came before
                probes = [
                    Probe(e.probe_protocol, e.source, node.pair.node_address(e.family), e.node_port)
                    for e in expectations
                ]
                results[node.backend] = node.pair.probe_all(probes, timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    # --- one case ------------------------------------------------------------------------

    def _apply(self, text: str) -> tuple[str | None, tuple[str, ...]]:
        """`kubectl apply` as a user runs it: (the error if it failed, the warnings it printed)."""
        result = self.plane.kubectl("apply", "-f", "-", input=text, check=False)
        return apply_outcome(result.returncode, result.stderr)

    def run_case(self, case: Case) -> CaseOutcome:
        self.wait_clean()
        tag = secrets.token_hex(3)
        mapping = {ns: f"pk-{tag}-{ns}"[:63] for ns in case.namespaces}
        objects = build_objects(case, mapping)
        try:
            for real in mapping.values():
                self.plane.kubectl("create", "namespace", real)
            failure, _ = self._apply(as_list(objects.workloads))
            if failure is not None:
                raise RuntimeError(f"{case.name}: the case's Pods/Services were not created: {failure}")
            rejected, warnings = self._apply(as_list(objects.policies)) if objects.policies else (None, ())
            notes = (*objects.notes, *(f"kubectl apply printed {w}" for w in warnings))
            if rejected is not None:
                return CaseOutcome(case, (), rejected, notes)
            self.wait_settled(list(mapping.values()), quiet=0.6)
            first = self._probe(case.expectations, FIRST_TIMEOUT)
            rows = [
                Row(e, {b: first[b][i] for b in self.backends}, False) for i, e in enumerate(case.expectations)
            ]
            wrong = [i for i, r in enumerate(rows) if not r.ok]
            if wrong:
                # Disagreement: settle longer, then send those probes again, waiting longer for an answer.
                self.wait_settled(list(mapping.values()), quiet=2.0)
                again = self._probe([case.expectations[i] for i in wrong], RECHECK_TIMEOUT)
                for k, i in enumerate(wrong):
                    rows[i] = Row(case.expectations[i], {b: again[b][k] for b in self.backends}, True)
            return CaseOutcome(case, tuple(rows), None, notes)
        finally:
            for real in mapping.values():
                delete_namespaced_objects(self.plane, real)
            self.wait_clean()


def _root_namespace_view() -> str:
    """Addresses and routes of the root namespace (read only): the suite must leave them as they were."""
    return "\n".join(run(argv).stdout for argv in (["ip", "-br", "addr"], ["ip", "route"], ["ip", "-6", "route"]))


@contextlib.contextmanager
def scenario_bed(
    plane: ControlPlane,
    installation: Installation,
    workdir: Path,
    cases: list[Case],
    backends: Sequence[str] = BACKENDS,
) -> Iterator[ScenarioBed]:
    """One node per backend with the real enforcer; everything (namespaces, processes, rules) removed on exit."""
    root_before = _root_namespace_view()
    with contextlib.ExitStack() as stack:
        nodes = []
        for backend in backends:
            pair = stack.enter_context(probe_pair(NODE_ADDRESSES, sources_of(cases), ports_of(cases), backend[:3]))
            enforcer = EnforcerProcess(
                plane, installation, pair.node_ns, workdir / f"enforcer-{backend}.log", workdir,
                backend=backend, resync_seconds=ENFORCER_RESYNC,
            )
            stack.callback(_stop_and_clean, enforcer)
            enforcer.start()
            enforcer.wait_ready()
            nodes.append(EnforcedNode(backend, pair, enforcer))
        yield ScenarioBed(plane, nodes)
    root_after = _root_namespace_view()
    if root_after != root_before:
        raise AssertionError(f"the root namespace changed during the suite:\n{root_before}\n---\n{root_after}")


def _stop_and_clean(enforcer: EnforcerProcess) -> None:
    enforcer.stop()
    result = enforcer.cleanup_node()
    if result.returncode != 0:
        raise RuntimeError(f"enforcer cleanup in {enforcer.netns} failed: {result.stderr}")


# --- the report ---------------------------------------------------------------------------


def _verdict(observed: Observed) -> str:
    return f"{'allowed' if observed in PASSED else 'denied'} ({observed})"


def render_case(outcome: CaseOutcome, backends: Sequence[str]) -> str:
    """The case's lines of the table: case x expectation -> expected / observed per backend."""
    name = outcome.case.name
    lines = []
    if outcome.rejected is not None:
        verdict = "expected" if outcome.case.invalid else "NOT EXPECTED"
        lines.append(f"{name}: rejected at admission: {outcome.rejected} [{verdict}]")
    for row in outcome.rows:
        e = row.expectation
        cells = "  ".join(f"{b}={_verdict(row.observed[b]):<20}" for b in backends)
        flag = "" if row.ok else "   <-- DIFFERS"
        again = " (re-probed after settling)" if row.rechecked else ""
        lines.append(
            f"{name:<62} #{e.index:<2} {e.describe():<36} expected {'allowed' if e.allowed else 'denied ':<8} "
            f"{cells}{again}{flag}"
        )
    lines.extend(f"{name}: note: {n}" for n in outcome.notes)
    return "\n".join(lines)


def header(cases: Sequence[Case], backends: Sequence[str]) -> str:
    return (
        f"[packet oracle] {sum(len(c.expectations) for c in cases)} expectations in {len(cases)} cases, "
        f"backends {', '.join(backends)}; node addresses {', '.join(NODE_ADDRESSES)}.\n"
        f"[packet oracle] {reserved_count(list(cases))} expectations come from {RESERVED_RANGE_NOTE}."
    )


def summary(outcomes: Sequence[CaseOutcome], backends: Sequence[str]) -> str:
    checked = sum(o.checked for o in outcomes)
    total = sum(len(o.case.expectations) for o in outcomes)
    rejected = sum(o.rejected is not None for o in outcomes)
    differing = sum(not o.ok for o in outcomes)
    return (
        f"[packet oracle] {checked} of {total} expectations checked by a real packet on each backend "
        f"({', '.join(backends)}): {checked * len(backends)} probes; {rejected} case(s) rejected at admission; "
        f"{differing} case(s) differing."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.scenario_oracle [--case NAME]... [--backend legacy|nft]...`: the oracle without pytest.

    Starts its own kube-apiserver + etcd, applies the manifests, runs the webhook, then the cases.
    """
    import argparse
    import tempfile

    from tests.components import WebhookServer, install_manifests, remove_webhooks
    from tests.controlplane.harness import running_control_plane
    from tests.scenarios import load_cases

    parser = argparse.ArgumentParser(prog="python -m tests.scenario_oracle", description=main.__doc__)
    parser.add_argument("--case", action="append", default=[], help="a case name (repeatable); default: all")
    parser.add_argument("--backend", action="append", choices=BACKENDS, default=[], help="default: both")
    args = parser.parse_args(argv)
    cases = load_cases()
    unknown = sorted(set(args.case) - {c.name for c in cases})
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    selected = [c for c in cases if not args.case or c.name in args.case]
    backends = tuple(args.backend) or BACKENDS
    outcomes: list[CaseOutcome] = []
    print(header(selected, backends), flush=True)
    with tempfile.TemporaryDirectory(prefix="npg-oracle-") as tmp, running_control_plane() as plane:
        workdir = Path(tmp)
        installation = install_manifests(plane, workdir)
        webhook = WebhookServer(plane, installation, workdir / "webhook.log")
        try:
            webhook.start()
            # The node answers on every port and holds every source of *all* cases: one bed fits any selection.
            with scenario_bed(plane, installation, workdir, cases, backends) as bed:
                for case in selected:
                    outcome = bed.run_case(case)
                    outcomes.append(outcome)
                    print(render_case(outcome, backends), flush=True)
        finally:
            remove_webhooks(plane)
            webhook.stop()
    print(summary(outcomes, backends))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
