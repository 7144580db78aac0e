# nodeport-guard: `make demo` runs the whole mission on a local two-node cluster; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := iptables ipset iproute2 conntrack kmod \
	containerd runc containernetworking-plugins umoci skopeo debootstrap gcc libc6-dev
PYTEST_ARGS ?=

.PHONY: help install install-system install-python controlplane cluster-binaries tools image cluster-up cluster-down \
	lint test test-faults unit integration demo bench deploy undeploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: install-system install-python controlplane cluster-binaries tools ## everything needed on a fresh machine (root): packages, venv, Kubernetes binaries, helm

install-system: ## Debian packages: dataplane tools, containerd/runc/CNI plugins, image tools (umoci, skopeo, debootstrap, gcc)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "==> Debian packages present"; fi

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing Python dependencies"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install-python: $(VENV)/.installed ## Python venv with runtime and dev dependencies

controlplane: $(VENV)/.installed ## build (or reuse from ~/.cache/nodeport-guard) kube-apiserver, kubectl and etcd
	$(PY) -m localcluster.build

cluster-binaries: $(VENV)/.installed ## also kubelet, kube-proxy, kube-controller-manager, kube-scheduler (same cache)
	$(PY) -m localcluster.build --node

tools: $(VENV)/.installed ## build (or reuse from ~/.cache/nodeport-guard) helm, for the chart (about 3.5 min cold on 2 cores)
	$(PY) -m localcluster.tools_build

image: $(VENV)/.installed ## the product image from ./Dockerfile without a Docker engine (cached by content)
	$(PY) -m localcluster image

cluster-up: install image ## a local two-node cluster in network namespaces, the image loaded; prints how to use it
	$(PY) -m localcluster up

cluster-down: $(VENV)/.installed ## remove the local cluster and everything it made (also after a crash)
	$(PY) -m localcluster down

lint: $(VENV)/.installed ## ruff + mypy --strict + helm lint of the chart
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict
	"$$($(PY) -m localcluster.tools_build --print-helm)" lint --strict charts/nodeport-guard

test: install lint image ## lint, then unit, integration, end-to-end and local-cluster tests (real packets)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-faults: install image ## only the faults tier (its own two-node cluster; `make test` runs it too)
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

unit: $(VENV)/.installed ## only the pure unit tests (fast)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: install image ## the whole mission on a local two-node cluster: up, make deploy, the story, undeploy, down
	$(PY) -m demo

bench: install ## benchmarks; writes bench/results.json and bench/RESULTS.md (ONLY=name for one)
	$(PY) -m bench $(if $(ONLY),--only $(ONLY))

KUBECTL ?= kubectl
CERTS_DIR ?= .deploy/certs
deploy: install-python ## install on the cluster of your kubeconfig (certs, secrets, manifests) and wait for rollout
	@if [ -f $(CERTS_DIR)/ca.crt ]; then echo "==> reusing the CA in $(CERTS_DIR)"; \
	else $(PY) -m certs generate --out $(CERTS_DIR); fi
	$(PY) -m certs signing-key --dir $(CERTS_DIR)
	$(KUBECTL) apply -k manifests/
	$(PY) -m certs install --kubeconfig "$${KUBECONFIG:-$$HOME/.kube/config}" --dir $(CERTS_DIR)
	$(KUBECTL) -n nodeport-guard rollout status deployment/nodeport-guard-webhook --timeout=300s
	$(KUBECTL) -n nodeport-guard rollout status daemonset/nodeport-guard-enforcer --timeout=300s
	$(KUBECTL) apply -f manifests/canary/
	$(KUBECTL) -n nodeport-guard-canary rollout status deployment/nodeport-guard-canary --timeout=300s

undeploy: ## remove every rule from every node (cleanup DaemonSet), then everything the manifests created
	$(KUBECTL) delete -f manifests/canary/ --ignore-not-found --wait=true
	$(KUBECTL) delete mutatingwebhookconfiguration,validatingwebhookconfiguration nodeport-guard --ignore-not-found
	$(KUBECTL) -n nodeport-guard delete daemonset nodeport-guard-enforcer --ignore-not-found --wait=true
	$(KUBECTL) apply -f manifests/cleanup/daemonset.yaml
	$(KUBECTL) -n nodeport-guard rollout status daemonset/nodeport-guard-cleanup --timeout=300s
	$(KUBECTL) delete -f manifests/cleanup/daemonset.yaml --wait=true
	$(KUBECTL) delete -k manifests/ --ignore-not-found

clean: ## remove the venv and caches in the repo (the control plane cache in ~/.cache stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
