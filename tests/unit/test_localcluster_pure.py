"""The local cluster's pure parts: the layout stays in documentation ranges; the Dockerfile and .dockerignore parse."""

from __future__ import annotations

import ipaddress

import pytest

from localcluster import dockerfile as df
from localcluster.plan import CLUSTER_CIDRS, SERVICE_CIDRS, build_plan
from tests.machine import REPO

DOC_RANGES = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _documentation(address: str) -> bool:
    net = ipaddress.ip_network(address, strict=False)
    return any(net.version == r.version and net.subnet_of(r) for r in DOC_RANGES)  # type: ignore[arg-type]


def test_every_address_of_the_plan_is_in_a_documentation_range() -> None:
    plan = build_plan("npg")
    addresses = [*SERVICE_CIDRS, *CLUSTER_CIDRS]
    for n in plan.nodes:
        addresses += [n.v4, n.v6, n.pod_v4, n.pod_v6]
    for c in plan.clients:
        addresses += [c.v4, c.v6, c.router_v4, c.router_v6]
    assert [a for a in addresses if not _documentation(a)] == []
    assert all(ns.startswith("npgc-npg-") for ns in plan.netns)


def test_cluster_names_are_short_and_safe() -> None:
    with pytest.raises(ValueError):
        build_plan("Not-OK")
    with pytest.raises(ValueError):
        build_plan("muchtoolong")


def test_the_repository_dockerfile_parses_into_its_two_stages() -> None:
    args, stages = df.parse((REPO / "Dockerfile").read_text())
    assert args == {"PYTHON_IMAGE": "python:3.11-slim-bookworm"}
    assert [(s.name, s.base) for s in stages] == [("build", "python:3.11-slim-bookworm"),
                                                    ("1", "python:3.11-slim-bookworm")]
    run_with_mount = [i for i in stages[1].instructions if i.keyword == "RUN" and i.args.startswith("--mount")]
    mounts, command = df.split_run(run_with_mount[0].args)
    assert mounts == [df.BindMount("build", "/wheels", "/wheels")]
    assert command.startswith("python -m pip install")


def test_unsupported_instructions_are_refused() -> None:
    with pytest.raises(df.DockerfileError):
        df.parse("FROM x\nHEALTHCHECK CMD true\n")


def test_dockerignore_allow_list_semantics() -> None:
    rules = df.parse_dockerignore((REPO / ".dockerignore").read_text())
    assert not rules.excluded("webhook/app.py")
    assert not rules.excluded("pyproject.toml")
    assert rules.excluded("tests/conftest.py")
    assert rules.excluded("webhook/__pycache__/app.cpython-311.pyc")
    assert rules.excluded("certs/out/ca.key")
    assert rules.excluded(".venv/bin/python")


def test_env_and_exec_forms() -> None:
    assert df.key_values('A=1 B="x y"') == {"A": "1", "B": "x y"}
    assert df.exec_form('["a", "b"]') == ["a", "b"]
    assert df.exec_form("echo hi") == ["/bin/sh", "-c", "echo hi"]


def test_the_manifests_run_the_image_the_local_builder_makes() -> None:
    from localcluster.versions import IMAGE_NAME

    images = set()
    for path in [*(REPO / "manifests" / "base").glob("*.yaml"), REPO / "manifests" / "cleanup" / "daemonset.yaml"]:
        images |= {line.split("image:", 1)[1].strip() for line in path.read_text().splitlines() if "image:" in line}
    assert images == {IMAGE_NAME}
