"""Scale curve on the real apiserver: reconciler writes per change and time-to-true vs policies in a namespace (I/O).

The real stack of bench/end_to_end.py without the node: local etcd + kube-apiserver, `manifests/`
installed by the certs tool, the webhook under gunicorn + TLS with list+watch and its reconciler.
One namespace per N holds the issue's shape (bench/scale_data.py); after N policies are created and
settled, each change is made through the API and measured: the reconciler's writes (its counter on
the webhook's /metrics) and the time until every stored annotation is true (tests/policy_watch.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import scale_data
from bench.stats import Figure, Floor, JsonScalar, Target, not_measured, ratios, summarize
from contract.signing import Signer
from tests.components import Installation, WebhookServer, install_manifests, remove_webhooks
from tests.controlplane.harness import ControlPlane, running_control_plane
from tests.policy_watch import PolicyRecorder, desired_annotations, recording, wait_quiet, wait_true
from webhook.admission import AnnotationMemo
from webhook.cache import TRIMMERS, ClusterCache
from webhook.reconcile import PATCH_WORKERS, AnnotationPatch, iter_patches, kubernetes_patcher
from webhook.semantics import PolicyMemo

logger = logging.getLogger(__name__)

NAME = "scale-reconciler"
SIZES = (10, 100, 1_000)
REPEAT = 3
PLAN_RUNS = 5
CREATE_THREADS = 4
TRUE_TIMEOUT = 120.0
ONE_WRITE = Target("median", "<=", 1.0, "<= 1 write")
BOUND = Target("median", "<=", 2000.0, "median <= 2 s (the reconciler's bound)")
# A Service change is one write per policy selecting its pods (the contract names the NodePorts each
# policy affects, as decided: docs/architecture.md#alternatives-considered). Its bound is therefore
# the cost of those writes, measured in the same run, and the new NodePort's first naming.
SERVICE_CHANGE_BOUND = Target("ratio", "<=", 1.5, "ratio <= 1.5 (ours / the same writes with none of our work)")
# Where the writes' own time is below the reconciler's 0.1 s debounce and pass (10 or 100 policies) a
# ratio to them measures the debounce, not the work: there the 2 s bound of the other changes holds.
SERVICE_CHANGE_RATIO_FROM = 1_000


def _time_to_true_target(change: str, n: int) -> Target:
    if change in SERVICE_CHANGES and n >= SERVICE_CHANGE_RATIO_FROM:
        return SERVICE_CHANGE_BOUND
    return BOUND
FIRST_NAMING_BOUND = Target("median", "<=", 2000.0, "median <= 2 s (the new NodePort filtered)")
CHANGES = (
    "create one policy",
    "change one policy",
    "delete one policy",
    "add a pod to an existing group",
    "add a Service",
    "delete a Service",
)
SERVICE_CHANGES = ("add a Service", "delete a Service")
FLOOR_KEY = "bench.nodeport-guard.io/floor"  # not ours: nothing plans, signs or guards it
CPU_PARTS = ("webhook", "apiserver and etcd")
# Writes a change must cost: one re-sign for a create (the uid), none for the rest but the Services,
# whose NodePort every policy selecting its pods must name (one write per such policy: N here).
WRITE_TARGETS: dict[str, Target | None] = {c: ONE_WRITE for c in CHANGES[:4]} | {c: None for c in CHANGES[4:]}
NOTES = (
    "The real stack: local etcd + kube-apiserver (tests/controlplane/harness.py), `manifests/` applied and "
    "certificates installed by the certs tool, the webhook under gunicorn + TLS with list+watch and the leader "
    "reconciler (tests/components.py `WebhookServer`), no node. Per N, a fresh namespace of 20 NodePort Services "
    "x 5 pods, then N policies selecting every pod, each allowing its own non-adjacent /32, created through the "
    f"API by {CREATE_THREADS} threads (the burst); then each change, {REPEAT} times, through the API: create one "
    "more policy, change one policy's ipBlock, delete the created policy, add a pod with the labels of an "
    "existing group, add a NodePort Service selecting existing pods, delete it. **Writes**: the reconciler's "
    "successful patches, from its counter `nodeport_guard_reconciler_patches_total` on the webhook's /metrics, "
    "read once the counter has been still for 1 s. **Time to true**: from just before the API call to the "
    "first instant every stored policy of the namespace carries exactly the annotations the pure core "
    "computes from the stored Services, Pods and policies (the policies' events are watched with timestamps "
    "and replayed, tests/policy_watch.py); 0 when they never stopped being true. A create is true once the "
    "reconciler re-signed it with its uid; a Service change once every policy names (or no longer names) its "
    "NodePort. **First naming**: for a new Service, the time until the first policy's annotation names its "
    "NodePort: from then on the enforcers filter it with the parts written so far (narrower, never wider). "
    "**CPU per write**: for the Service changes, the CPU seconds (user + system, /proc) the webhook process "
    "(gunicorn with its worker, where the reconciler runs) and the apiserver with etcd spent from the change "
    "until true, divided by the writes: what a Service change needs on an idle machine, unlike the wall time, "
    "which on this shared 2-core machine depends on the other load (see the load average above). "
    "**Planning per policy**: in process, before the apiserver part, the same namespace shape in a "
    f"`ClusterCache`; per run ({PLAN_RUNS} per N) a NodePort Service is added and the reconciler's plan "
    "(`reconcile.iter_patches`) is timed with its memo, which keeps each policy's entries per Service and "
    "computes, encodes and splices only the new Service's (then signs once), and, back to back, without it "
    "(every policy's entries recomputed for all its Services, as before); the floor is the latter, and the "
    "two plans must be equal. **Floor** (Service changes): right after each change, the same number of "
    "writes with none of our work: one merge PATCH per policy of an annotation nodeport-guard does not own, as "
    "long as a policy's own, sent as the webhook's ServiceAccount, 8 in flight through the reconciler's patcher "
    "(our webhooks' matchConditions skip them as they skip the reconciler's), then removed again (untimed). "
    "History (Service change at 1,000 policies): with the reconciler's writes admitted by both our webhooks "
    "(before their matchConditions) 11.6 s (add) and 11.1 s (delete) to be true; past the webhooks 9.8 and "
    "8.7 s, at 2.1 ms of webhook CPU per write (load average 12-15). Splicing only the changed Service's "
    "entries, encoding from kept entry texts and sending the PATCH pre-serialized on the client's pool "
    "(no generated-client per-call work) brought the webhook's CPU per write from 2.1 ms to 0.9-1.7 ms "
    "(medians of three runs; a delete costs more than an add, not explained yet) and the planning per policy "
    "to about a fifth (its floor above); the apiserver and etcd take 2.0-3.1 ms per write, now about two "
    "thirds of the total. Time to true at 1,000 policies, median of each of three runs: 2.5, 4.2 and 5.9 s "
    "(add), 3.7, 3.9 and 4.3 s (delete), at load average 4-7. Such a change is 1,000 writes, 2.9 to 4.4 CPU "
    "seconds in all; the floor (since 2026-11-30) shows where the time goes: the same 1,000 writes with none "
    "of our work took 1.5-2.4 s (median 2.1 s add, 1.9 s delete), ours 1.19-1.29 times that. As decided "
    "(docs/architecture.md, alternatives considered), the contract keeps naming the NodePorts each policy "
    "affects, so a Service change is judged against that floor (ratio <= 1.5) and by the new NodePort's "
    "first naming (<= 2 s), not by the 2 s of the other changes. "
    "Writing while planning (50 policies at a time) names the new NodePort in about 0.2 s. "
    "tests/integration/test_scale_services.py, whose policies name one NodePort each, measured 2.6 s (add) "
    "and 2.1 s (delete) at 1,000 policies (5.6 and 4.1 s in a run beside other load)."
)


def _label(n: int) -> str:
    return f"{n:,} policies in the namespace"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its live children (gunicorn's worker); 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu_seconds(int(c)) for c in children)


def _cpu(plane: ControlPlane, webhook: WebhookServer) -> dict[str, float]:
    """CPU seconds so far of the webhook (with its reconciler) and of the apiserver with etcd."""
    assert webhook.process is not None
    return {
        "webhook": _cpu_seconds(webhook.process.pid),
        "apiserver and etcd": sum(_cpu_seconds(p.pid) for p in plane.processes),
    }


def expected_figures() -> list[Figure]:
    out = []
    for n in SIZES:
        out.append(
            not_measured(NAME, f"planning per policy (webhook, in process): add a Service, {_label(n)}", "µs", None, "")
        )
        out.append(not_measured(NAME, f"writes per create in a burst of {n:,}", "writes", None, ""))
        for change in CHANGES:
            out.append(not_measured(NAME, f"writes: {change}, {_label(n)}", "writes", WRITE_TARGETS[change], ""))
            out.append(not_measured(NAME, f"time to true: {change}, {_label(n)}", "ms", _time_to_true_target(change, n),
                                    ""))
        out.append(
            not_measured(NAME, f"time to the new NodePort's first naming: add a Service, {_label(n)}", "ms",
                         FIRST_NAMING_BOUND, "")
        )
        for change in SERVICE_CHANGES:
            for part in CPU_PARTS:
                out.append(not_measured(NAME, f"CPU per write ({part}): {change}, {_label(n)}", "CPU ms", None, ""))
    return out


def _clients(plane: ControlPlane) -> tuple[Any, Any, Any]:
    from kubernetes import client

    api = plane.api_client()
    return api, client.CoreV1Api(api), client.NetworkingV1Api(api)


def _create_policies(plane: ControlPlane, namespace: str, indexes: list[int]) -> None:
    """Create policies allow-i through the API from CREATE_THREADS threads (each its own client)."""
    errors: list[str] = []

    def work(part: list[int]) -> None:
        api, _, networking = _clients(plane)
        try:
            for i in part:
                try:
                    networking.create_namespaced_network_policy(namespace, scale_data.policy_object(namespace, i))
                except Exception as exc:  # reported below: the burst must not lose a policy
                    errors.append(f"allow-{i}: {str(exc)[:300]}")
        finally:
            api.close()

    threads = [threading.Thread(target=work, args=(indexes[k::CREATE_THREADS],)) for k in range(CREATE_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} creations failed, first: {errors[0]}")


class Scenario:
    """One namespace holding the shape with N policies, and the changes measured on it."""

    def __init__(self, plane: ControlPlane, install: Installation, webhook: WebhookServer, n: int) -> None:
        self.plane, self.install, self.webhook, self.n = plane, install, webhook, n
        self.namespace = f"scale-{n}"
        self.api, self.core, self.networking = _clients(plane)
        self.protected: list[float] = []  # seconds from creating a Service to its NodePort first named
        self.last_cpu: dict[str, float] = {}  # CPU seconds of the last change until true, per process group

    def setup(self) -> None:
        self.plane.kubectl("create", "namespace", self.namespace)
        services, pods, _ = scale_data.namespace_objects(self.namespace, 0, first_node_port=None)
        for service in services:
            self.core.create_namespaced_service(self.namespace, service)
        for pod in pods:
            self.core.create_namespaced_pod(self.namespace, pod)

    def measure(
        self, recorder: PolicyRecorder, change: Callable[[], Any], new_service: bool = False
    ) -> tuple[int, float]:
        """(reconciler writes, seconds to true) of one change. For a new NodePort Service (the change
        returns it), also records when the first policy named its NodePort (from then on it is
        filtered, fail closed)."""
        before = wait_quiet(self.webhook, quiet=0.5)
        cpu_before = _cpu(self.plane, self.webhook)
        since = time.monotonic()
        made = change()
        desired = desired_annotations(self.plane, self.namespace, self.install.signing_key)
        took = wait_true(recorder, desired, since, TRUE_TIMEOUT)
        cpu_after = _cpu(self.plane, self.webhook)
        self.last_cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
        after = wait_quiet(self.webhook, quiet=1.0, timeout=TRUE_TIMEOUT)
        if new_service:
            first = recorder.first_naming(int(made.spec.ports[0].node_port), since)
            if first is None:
                raise RuntimeError("no policy names the new Service's NodePort although its annotations are true")
            self.protected.append(first - since)
        return after - before, took

    def bare_writes(self) -> float:
        """The floor of a Service change: seconds for the same number of writes with none of our work.

        One merge PATCH per policy of an annotation nodeport-guard does not own, as long as a
        policy's own, sent as the webhook's ServiceAccount (PATCH_WORKERS in flight, the same
        pre-serialized `kubernetes_patcher`), so our webhooks' matchConditions skip them exactly as
        they skip the reconciler's: the apiserver's and etcd's part alone (with the same watchers)."""
        names = [f"allow-{i}" for i in range(self.n)]
        stored = self.networking.read_namespaced_network_policy(names[0], self.namespace)
        size = sum(len(v) for v in (stored.metadata.annotations or {}).values())
        from kubernetes import config

        clients = [config.new_client_from_config(config_file=str(self.install.webhook_kubeconfig))  # type: ignore[no-untyped-call]
                   for _ in range(PATCH_WORKERS)]
        run = time.time_ns()
        local = threading.local()
        free = list(clients)
        lock = threading.Lock()

        def write(name: str, value: str | None) -> None:
            if not hasattr(local, "patch"):
                with lock:
                    local.patch = kubernetes_patcher(free.pop())
            local.patch(AnnotationPatch(self.namespace, name, {FLOOR_KEY: value}))

        try:
            with ThreadPoolExecutor(PATCH_WORKERS) as pool:  # each thread keeps its own client
                started = time.monotonic()  # a new value each run: the apiserver really writes
                list(pool.map(lambda name: write(name, f"{run}-{name}-".ljust(size, "x")), names))
                took = time.monotonic() - started
                list(pool.map(lambda name: write(name, None), names))  # the next changes find them as before
            return took
        finally:
            for c in clients:
                c.close()

    def burst(self, recorder: PolicyRecorder) -> tuple[int, float]:
        return self.measure(recorder, lambda: _create_policies(self.plane, self.namespace, list(range(self.n))))

    def changes(self, k: int) -> dict[str, Callable[[], None]]:
        ns, n = self.namespace, self.n
        extra_policy = n + k  # a new index: its own host
        extra_service = scale_data.service_object(ns, 0)
        extra_service["metadata"]["name"] = f"extra-{k}"
        extra_service["spec"]["selector"] = scale_data.app_labels(k % scale_data.SERVICES)
        extra_pod = scale_data.pod_object(ns, k % scale_data.SERVICES, 100 + k)
        changed = scale_data.policy_object(ns, k)
        changed["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] = f"{scale_data.host(n + 1000 + k)}/32"
        return {
            "create one policy": lambda: self.networking.create_namespaced_network_policy(
                ns, scale_data.policy_object(ns, extra_policy)
            ),
            "change one policy": lambda: self.networking.patch_namespaced_network_policy(
                f"allow-{k}", ns, {"spec": changed["spec"]}
            ),
            "delete one policy": lambda: self.networking.delete_namespaced_network_policy(f"allow-{extra_policy}", ns),
            "add a pod to an existing group": lambda: self.core.create_namespaced_pod(ns, extra_pod),
            "add a Service": lambda: self.core.create_namespaced_service(ns, extra_service),
            "delete a Service": lambda: self.core.delete_namespaced_service(f"extra-{k}", ns),
        }

    def close(self) -> None:
        self.api.close()


def _figures(
    n: int,
    burst: tuple[int, float],
    results: dict[str, list[tuple[int, float]]],
    protected: list[float],
    floors: dict[str, list[float]],
) -> list[Figure]:
    inputs: dict[str, JsonScalar] = {
        "policies_in_namespace": n,
        "services": scale_data.SERVICES,
        "pods": scale_data.SERVICES * scale_data.PODS_PER_SERVICE,
        "repeats": REPEAT,
    }
    writes, took = burst
    out = [
        Figure(
            NAME,
            f"writes per create in a burst of {n:,}",
            "writes",
            summarize([writes / n]),
            None,
            inputs={**inputs, "burst_writes": writes, "burst_seconds_to_true": round(took, 2)},
            note=f"{writes} writes for {n} creates; the namespace-wide contract (v1) needed about n^2/2",
        )
    ]
    for change in CHANGES:
        samples = results[change]
        out.append(
            Figure(
                NAME,
                f"writes: {change}, {_label(n)}",
                "writes",
                summarize([float(w) for w, _ in samples]),
                WRITE_TARGETS[change],
                inputs=inputs,
            )
        )
        rate = sum(w for w, _ in samples) / max(sum(t for _, t in samples), 1e-9)
        ours = [t * 1000 for _, t in samples]
        bare = [t * 1000 for t in floors.get(change, [])]
        out.append(
            Figure(
                NAME,
                f"time to true: {change}, {_label(n)}",
                "ms",
                summarize(ours),
                _time_to_true_target(change, n) if bare else BOUND,
                floor=Floor(f"{n:,} bare annotation writes, no nodeport-guard work", summarize(bare),
                            summarize(ratios(ours, bare))) if bare else None,
                inputs=inputs,
                note=(
                    f"{rate:.0f} reconciler writes/s, past our webhooks (their matchConditions exempt the "
                    "reconciler's annotation writes); one per policy selecting the Service's pods is the "
                    "contract's cost of a Service change"
                    if change in ("add a Service", "delete a Service")
                    else ""
                ),
            )
        )
    out.append(
        Figure(
            NAME,
            f"time to the new NodePort's first naming: add a Service, {_label(n)}",
            "ms",
            summarize([t * 1000 for t in protected]),
            FIRST_NAMING_BOUND,
            inputs=inputs,
            note="from then on the enforcers filter it, allowing only the parts written so far (fail closed)",
        )
    )
    return out


def _cpu_figures(
    n: int, results: dict[str, list[tuple[int, float]]], cpu: dict[str, list[dict[str, float]]]
) -> list[Figure]:
    """CPU per reconciler write of a Service change, by process group: what the wall time needs on an
    idle machine, whatever the other load on this one."""
    inputs: dict[str, JsonScalar] = {"policies_in_namespace": n, "repeats": REPEAT}
    out = []
    for change in SERVICE_CHANGES:
        for part in CPU_PARTS:
            per_write = [c[part] * 1000 / w for (w, _), c in zip(results[change], cpu[change], strict=True) if w]
            total = [c[part] for c in cpu[change]]
            out.append(
                Figure(
                    NAME,
                    f"CPU per write ({part}): {change}, {_label(n)}",
                    "CPU ms",
                    summarize(per_write),
                    None,
                    inputs=inputs,
                    note=f"CPU seconds per change until true (median): {summarize(total).median:.2f}",
                )
            )
    return out


def _plan_figure(n: int) -> Figure:
    """In process, the reconciler's planning of a Service add at n policies: spliced (its memo keeps
    each policy's entries per Service and computes only the new Service's) against a full
    recomputation of every policy's entries (what a Service change cost before), back to back per run."""
    ns = "plan"
    services, pods, policies = scale_data.namespace_objects(ns, n)
    cache = ClusterCache()
    for kind, objs in (("services", services), ("pods", pods), ("networkpolicies", policies)):
        cache.replace(kind, [TRIMMERS[kind](o) for o in objs], "1")
    key, compiled = Signer.generate(), PolicyMemo()
    spliced: list[float] = []
    full: list[float] = []
    for k in range(PLAN_RUNS):
        memo = AnnotationMemo()
        list(iter_patches(ns, cache, key, compiled, None, memo))  # as after the previous change
        service = scale_data.service_object(ns, k % scale_data.SERVICES, 31000 + k)
        service["metadata"]["name"] = f"plan-{k}"
        cache.apply("services", "ADDED", TRIMMERS["services"](service))
        timed: dict[str, float] = {}
        plans: dict[str, list[Any]] = {}
        for way in ("spliced", "full") if k % 2 == 0 else ("full", "spliced"):
            start = time.perf_counter()
            plans[way] = list(iter_patches(ns, cache, key, compiled, None, memo if way == "spliced" else None))
            timed[way] = (time.perf_counter() - start) * 1e6 / n
        if plans["spliced"] != plans["full"]:
            raise AssertionError("the spliced plan differs from the full recomputation")
        spliced.append(timed["spliced"])
        full.append(timed["full"])
    return Figure(
        NAME,
        f"planning per policy (webhook, in process): add a Service, {_label(n)}",
        "µs",
        summarize(spliced),
        None,
        floor=Floor("full recomputation of each policy's entries", summarize(full), summarize(ratios(spliced, full))),
        inputs={"policies_in_namespace": n, "services": scale_data.SERVICES, "runs": PLAN_RUNS},
        note="equal plans checked in every run",
    )


def run(workdir: Path) -> list[Figure]:
    figures: list[Figure] = [_plan_figure(n) for n in SIZES]
    with running_control_plane() as plane:
        install = install_manifests(plane, workdir / "install")
        webhook = WebhookServer(plane, install, workdir / "webhook.log")
        try:
            webhook.start()
            for n in SIZES:
                scenario = Scenario(plane, install, webhook, n)
                try:
                    scenario.setup()
                    with recording(plane, scenario.namespace) as recorder:
                        burst = scenario.burst(recorder)
                        print(f"    N={n}: burst: {burst[0]} writes, true after {burst[1]:.1f} s", flush=True)
                        results: dict[str, list[tuple[int, float]]] = {c: [] for c in CHANGES}
                        floors: dict[str, list[float]] = {c: [] for c in SERVICE_CHANGES}
                        cpu: dict[str, list[dict[str, float]]] = {c: [] for c in CHANGES}
                        for k in range(REPEAT):
                            for change, make in scenario.changes(k).items():
                                measured = scenario.measure(recorder, make, new_service=change == "add a Service")
                                results[change].append(measured)
                                cpu[change].append(scenario.last_cpu)
                                writes, took = results[change][-1]
                                print(f"    N={n} {change}: {writes} writes, true after {took:.2f} s", flush=True)
                                if change in floors:  # its floor right after it, in the same conditions
                                    wait_quiet(scenario.webhook, quiet=0.5)
                                    floors[change].append(scenario.bare_writes())
                                    print(f"    N={n} {change}: floor {floors[change][-1]:.2f} s", flush=True)
                finally:
                    scenario.close()
                figures += _figures(n, burst, results, scenario.protected, floors)
                figures += _cpu_figures(n, results, cpu)
        finally:
            remove_webhooks(plane)
            webhook.stop()
    return figures
