"""`make demo`: the whole mission, end to end, on the local control plane, told as a story.

A real kube-apiserver + etcd, the manifests applied for real, the webhook under gunicorn/TLS
and the enforcer inside a node network namespace (each with its own ServiceAccount token),
real packets from a client namespace. Exits 0 only if every step behaved as expected.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.components import (
    REPO,
    EnforcerProcess,
    WebhookServer,
    install_manifests,
    remove_webhooks,
    run_kubectl_plugin,
)
from tests.controlplane.harness import ControlPlane, running_control_plane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.netns import CLIENT_A4, CLIENT_B4, NODE_V4, Node, make_node

NS = "shop"
BOLD, GREEN, RED, DIM, RESET = (
    ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "", "", "")
)


class Story:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checks = 0
        self.step = 0
        self.started = time.monotonic()

    def heading(self, text: str) -> None:
        self.step += 1
        print(f"\n{BOLD}== {self.step}. {text}{RESET}", flush=True)

    def say(self, text: str) -> None:
        print(textwrap.fill(text, 100), flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"{DIM}    {line}{RESET}")

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks += 1
        mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
        print(f"  [{mark}] {what}" + (f"  ({detail})" if detail and not ok else ""), flush=True)
        if not ok:
            self.failures.append(what)


def wait_for(check: Callable[[], bool], timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.15)
    return check()


def kubectl_apply(plane: ControlPlane, story: Story, *objects: dict[str, Any]) -> Any:
    result = plane.kubectl("apply", "-n", NS, "-f", "-", input=as_list(*objects), check=False)
    story.show("$ kubectl apply -f policy.yaml\n" + (result.stdout + result.stderr).strip())
    return result


def client_sees(node: Node, src: str, port: int, expected: str) -> bool:
    return wait_for(lambda: node.connect(src, NODE_V4[0], port, timeout=0.5) == expected)


def our_rules(node: Node, backend: str) -> str:
    rules = [line for line in node.iptables_save(backend).splitlines() if "NPG" in line]
    sets = node.run(["ipset", "list", "-t"]).stdout
    set_lines = [line for line in sets.splitlines() if line.startswith(("Name: npg-", "Number of entries"))]
    return "\n".join(rules + set_lines)


def run_story(plane: ControlPlane, workdir: Path, story: Story) -> None:
    story.heading("Install nodeport-guard from manifests/ (certs and signing key by the certs tool)")
    install = install_manifests(plane, workdir)
    story.show(plane.kubectl("get", "serviceaccounts,secrets", "-n", "nodeport-guard").stdout)

    story.heading("Start the webhook (gunicorn, TLS) and the enforcer (inside node namespace), own tokens")
    webhook = WebhookServer(plane, install, workdir / "webhook.log")
    with make_node(lock_path=str(workdir / "xtables.lock")) as node:
        enforcer = EnforcerProcess(plane, install, node.node_ns, workdir / "enforcer.log", workdir, backend="legacy")
        try:
            webhook.start()
            enforcer.start()
            enforcer.wait_ready()
            story.say(f"webhook at {webhook.url}; enforcer in netns {node.node_ns} (node address {NODE_V4[0]})")
            tell(plane, node, enforcer, story)
        finally:
            remove_webhooks(plane)
            enforcer.stop()
            webhook.stop()
            if story.failures:
                print("\n--- webhook log (tail) ---\n" + webhook.log_tail())
                print("\n--- enforcer log (tail) ---\n" + enforcer.log_tail())


def tell(plane: ControlPlane, node: Node, enforcer: EnforcerProcess, story: Story) -> None:
    plane.kubectl("create", "namespace", NS)
    story.heading("An app behind a NodePort Service")
    ports = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    plane.kubectl(
        "apply",
        "-n",
        NS,
        "-f",
        "-",
        input=as_list(
            pod("shop-1", {"app": "shop"}, ports),
            pod("shop-2", {"app": "shop"}, ports),
            nodeport_service("shop", {"app": "shop"}, [{"name": "http", "port": 80, "targetPort": "http"}]),
        ),
    )
    svc = plane.kubectl_json("get", "service", "shop", "-n", NS)
    node_port = int(svc["spec"]["ports"][0]["nodePort"])
    story.show(plane.kubectl("get", "service", "shop", "-n", NS).stdout)
    node.listen(node_port)
    story.say(f"The apiserver allocated NodePort {node_port}; a listener answers on the node at that port.")
    story.expect(
        f"client {CLIENT_A4} reaches {NODE_V4[0]}:{node_port}", client_sees(node, CLIENT_A4, node_port, "connected")
    )
    story.expect(
        f"client {CLIENT_B4} reaches {NODE_V4[0]}:{node_port}", client_sees(node, CLIENT_B4, node_port, "connected")
    )

    story.heading("kubectl apply a deny-all NetworkPolicy")
    result = kubectl_apply(plane, story, policy("deny-all", {}, [], policyTypes=["Ingress"]))
    story.expect("kubectl apply succeeded", result.returncode == 0, result.stderr)
    stored = plane.kubectl_json("get", "networkpolicy", "deny-all", "-n", NS)
    value = stored["metadata"].get("annotations", {}).get("nodeport-guard.io/nodeports", "{}")
    story.say("The webhook stored the verdict in a signed annotation:")
    story.show(json.dumps(json.loads(value), indent=2))
    story.expect("annotation names the NodePort", f'"nodePort":{node_port}' in value)
    explain = run_kubectl_plugin(plane, "explain", "-n", NS, "deny-all")
    story.show("$ kubectl nodeport-guard explain -n shop deny-all\n" + explain.stdout + explain.stderr)
    story.expect("kubectl nodeport-guard explain verifies it", "verified" in explain.stdout, explain.stderr)

    story.heading("Both clients are now blocked; the enforcer's rules on the node")
    story.expect(f"client {CLIENT_A4} blocked", client_sees(node, CLIENT_A4, node_port, "timeout"))
    story.expect(f"client {CLIENT_B4} blocked", client_sees(node, CLIENT_B4, node_port, "timeout"))
    story.show(our_rules(node, enforcer.backend))

    story.heading("Allow one documentation network: 198.51.100.0/24")
    allow = policy(
        "allow-office", {"matchLabels": {"app": "shop"}}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}]
    )
    result = kubectl_apply(plane, story, allow)
    story.expect("kubectl apply succeeded", result.returncode == 0, result.stderr)
    story.expect(f"client {CLIENT_A4} (inside) allowed", client_sees(node, CLIENT_A4, node_port, "connected"))
    story.expect(f"client {CLIENT_B4} (outside) still blocked", client_sees(node, CLIENT_B4, node_port, "timeout"))

    story.heading("A bad policy is rejected with the field and the fix; a doubtful one passes with a warning")
    sloppy = policy("sloppy", {}, [{"from": [{"ipBlock": {"cidr": "203.0.113.7/24"}}]}])
    result = kubectl_apply(plane, story, sloppy)
    story.expect("kubectl apply refused it", result.returncode != 0 and "host bits" in result.stderr, result.stderr)
    doubtful = policy("from-pods", {}, [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}])
    result = kubectl_apply(plane, story, doubtful)
    story.expect("kubectl printed a warning", result.returncode == 0 and "Warning:" in result.stderr, result.stderr)

    story.heading("Delete the policies: traffic restored, rules gone")
    story.show(plane.kubectl("delete", "networkpolicies", "--all", "-n", NS).stdout)
    story.expect(f"client {CLIENT_A4} reaches the NodePort", client_sees(node, CLIENT_A4, node_port, "connected"))
    story.expect(f"client {CLIENT_B4} reaches the NodePort", client_sees(node, CLIENT_B4, node_port, "connected"))
    story.expect(
        "no chain, rule or set of ours is left",
        wait_for(lambda: our_rules(node, enforcer.backend) == ""),
        our_rules(node, enforcer.backend),
    )


def main() -> int:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # kubectl plugin
    story = Story()
    story.heading("Start a local control plane (kube-apiserver + etcd, built from source and cached)")
    with tempfile.TemporaryDirectory(prefix="npg-demo-") as tmp, running_control_plane() as plane:
        story.say(f"kube-apiserver ready at {plane.url}")
        try:
            run_story(plane, Path(tmp), story)
        except Exception as exc:  # report the story so far, then fail
            story.failures.append(f"demo aborted: {exc}")
            print(f"{RED}demo aborted: {exc}{RESET}", file=sys.stderr)
    elapsed = time.monotonic() - story.started
    print()
    if story.failures:
        print(f"{RED}{BOLD}{len(story.failures)} of {story.checks} checks failed{RESET} in {elapsed:.0f}s:")
        for f in story.failures:
            print(f"  - {f}")
        return 1
    print(f"{GREEN}{BOLD}all {story.checks} checks passed{RESET} in {elapsed:.0f}s; everything was cleaned up.")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
