"""The Helm chart renders the kustomize base, object by object, so the two never drift.

Real binaries: `helm template` (helm built from the Go module proxy, localcluster/tools_build.py)
against `kubectl kustomize` (the cached kubectl). Normalized only by what is Helm's own: its
labels, and the hook objects (the certificate Jobs and their RBAC), which the kustomize path
replaces with `python -m certs install` run from a checkout.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, a dependency of the kubernetes client

from localcluster.build import ensure_binaries
from localcluster.tools_build import ensure_helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nodeport-guard"
HELM_LABELS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "helm.sh/chart")
Key = tuple[str, str, str, str]


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def helm_template(*args: str) -> str:
    cmd = [str(ensure_helm()), "template", "nodeport-guard", str(CHART), "--namespace", "nodeport-guard", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _kustomize(path: str) -> dict[Key, dict[str, Any]]:
    kubectl = str(ensure_binaries().kubectl)
    out = subprocess.run([kubectl, "kustomize", str(REPO / path)], capture_output=True, text=True, check=True).stdout
    return {_key(o): o for o in _docs(out)}


def _chart(*args: str) -> tuple[dict[Key, dict[str, Any]], dict[Key, dict[str, Any]]]:
    """(release objects with Helm's labels removed, hook objects)."""
    objects, hooks = {}, {}
    for obj in _docs(helm_template(*args)):
        meta = obj["metadata"]
        if "helm.sh/hook" in (meta.get("annotations") or {}):
            hooks[_key(obj)] = obj
            continue
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in HELM_LABELS}
        meta["labels"] = labels
        objects[_key(obj)] = obj
    return objects, hooks


NAMESPACE_OBJ: Key = ("v1", "Namespace", "", "nodeport-guard")
CANARY_POLICY: Key = (
    "networking.k8s.io/v1", "NetworkPolicy", "nodeport-guard-canary", "nodeport-guard-canary-deny-all"
)


def _canary() -> dict[Key, dict[str, Any]]:
    """manifests/canary/, which `make deploy` applies once the webhook serves (its policy is admitted)."""
    return {_key(o): o for o in _docs((REPO / "manifests" / "canary" / "canary.yaml").read_text())}


@pytest.mark.parametrize(
    ("kustomization", "values"),
    [("manifests", ()), ("manifests/overlays/cert-manager", ("--set", "certs.provider=cert-manager"))],
)
def test_chart_renders_the_kustomize_objects(kustomization: str, values: tuple[str, ...]) -> None:
    want = _kustomize(kustomization)
    # The canary too; its policy is a post-install hook in the chart (admitted once the webhook serves).
    want |= {k: o for k, o in _canary().items() if k != CANARY_POLICY}
    # The release namespace exists before the release (Helm stores the release in it): README's
    # `kubectl create namespace` + Pod Security label, not an object of the chart.
    want.pop(NAMESPACE_OBJ)
    got, _hooks = _chart(*values)
    assert sorted(got) == sorted(want), (
        f"only in chart: {set(got) - set(want)}; only in kustomize: {set(want) - set(got)}"
    )
    for key, obj in want.items():
        assert got[key] == obj, f"{key} differs between `helm template` and `kubectl kustomize {kustomization}`"


def test_hooks_are_the_certificate_jobs_the_uninstall_job_and_their_rbac_only() -> None:
    _objects, hooks = _chart()
    assert {(k[1], k[3]) for k in hooks} == {
        ("Job", "nodeport-guard-certs-bootstrap"),
        ("Job", "nodeport-guard-certs-inject"),
        ("ServiceAccount", "nodeport-guard-certs"),
        ("Role", "nodeport-guard-certs"),
        ("RoleBinding", "nodeport-guard-certs"),
        ("ClusterRole", "nodeport-guard-certs"),
        ("ClusterRoleBinding", "nodeport-guard-certs"),
        *((kind, "nodeport-guard-uninstall") for kind in ("Job", "ConfigMap", "ServiceAccount", "Role", "RoleBinding")),
        *((kind, "nodeport-guard-uninstall") for kind in ("ClusterRole", "ClusterRoleBinding")),
        ("NetworkPolicy", "nodeport-guard-canary-deny-all"),
    }
    jobs = {k[3]: o for k, o in hooks.items() if k[1] == "Job" and "certs" in k[3]}
    command = jobs["nodeport-guard-certs-bootstrap"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python3", "-m", "certs", "bootstrap", "--namespace", "nodeport-guard"]
    policy = hooks[CANARY_POLICY]
    assert policy["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    del policy["metadata"]["annotations"]
    policy["metadata"]["labels"] = {k: v for k, v in policy["metadata"]["labels"].items() if k not in HELM_LABELS}
    assert policy == _canary()[CANARY_POLICY]
    phases = {name: o["metadata"]["annotations"]["helm.sh/hook"] for name, o in jobs.items()}
    assert phases == {
        "nodeport-guard-certs-bootstrap": "pre-install,pre-upgrade",
        "nodeport-guard-certs-inject": "post-install,post-upgrade",
    }


def test_no_key_or_certificate_in_values_or_the_rendered_chart() -> None:
    rendered = helm_template() + helm_template("--set", "certs.provider=cert-manager")
    for text, where in ((rendered, "helm template"), ((CHART / "values.yaml").read_text(), "values.yaml")):
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, where
    secrets = [o for o in _docs(rendered) if o["kind"] == "Secret"]
    assert secrets == [], "the chart renders no Secret: the hooks and cert-manager write them in the cluster"


def test_values_reach_the_objects() -> None:
    got, _hooks = _chart(
        "--set",
        "image.tag=0.2.0",
        "--set",
        "enforcer.resyncSeconds=45",
        "--set",
        "enforcer.clearConntrack=true",
        "--set",
        "enforcer.nodePortRange=31000-31999",
        "--set",
        "enforcer.backend=nft",
        "--set",
        "webhook.replicas=3",
        "--set",
        "webhook.resyncSeconds=90",
        "--set",
        "enforcer.nodeSelector.kubernetes\\.io/os=linux",
        "--set",
        "enforcer.priorityClassName=",
    )
    ds = got[("apps/v1", "DaemonSet", "nodeport-guard", "nodeport-guard-enforcer")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in ds["containers"][0]["env"]}
    assert ds["containers"][0]["image"] == "nodeport-guard:0.2.0"
    assert (env["NPG_RESYNC_SECONDS"], env["NPG_CLEAR_CONNTRACK"]) == ("45", "true")
    assert (env["NPG_NODEPORT_RANGE"], env["NPG_BACKEND"]) == ("31000-31999", "nft")
    assert ds["nodeSelector"] == {"kubernetes.io/os": "linux"} and "priorityClassName" not in ds
    deploy = got[("apps/v1", "Deployment", "nodeport-guard", "nodeport-guard-webhook")]["spec"]
    assert deploy["replicas"] == 3
    webhook_env = {e["name"]: e.get("value") for e in deploy["template"]["spec"]["containers"][0]["env"]}
    assert webhook_env["NPG_RESYNC_SECONDS"] == "90"


def test_helm_lint_is_clean() -> None:
    for values in ((), ("--set", "certs.provider=cert-manager"), ("--set", "monitoring.enabled=true")):
        result = subprocess.run(
            [str(ensure_helm()), "lint", "--strict", str(CHART), *values], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_uninstall_hook_runs_the_cleanup_daemonset_of_make_undeploy() -> None:
    """`helm uninstall` runs the same cleanup DaemonSet as `make undeploy` (manifests/cleanup/)."""
    _objects, hooks = _chart()
    configmap = hooks[("v1", "ConfigMap", "nodeport-guard", "nodeport-guard-uninstall")]
    assert configmap["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    carried = json.loads(configmap["data"]["daemonset.json"])
    assert [carried] == _docs((REPO / "manifests" / "cleanup" / "daemonset.yaml").read_text())
    job = hooks[("batch/v1", "Job", "nodeport-guard", "nodeport-guard-uninstall")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python3", "-m", "enforcer.uninstall"]
