# syntax=docker/dockerfile:1
# One image for both components (entry points nodeport-guard-webhook and nodeport-guard-enforcer):
#   docker build -t nodeport-guard:0.1.0 .
# The default user is non-root 65532 (the webhook); the enforcer's DaemonSet runs it as root
# with only NET_ADMIN and NET_RAW, which iptables/ipset need.
# Pinned by tag, not by digest: no registry is reachable from where this was written to look the
# digest up. Pin it by digest (python:3.11-slim-bookworm@sha256:...) in your own build.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels for the project and every dependency (python-iptables compiles a small C helper)
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY kube ./kube
COPY webhook ./webhook
COPY enforcer ./enforcer
COPY certs ./certs
COPY kubectl_plugin ./kubectl_plugin
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: no compiler; the dataplane tools the enforcer runs
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nodeport-guard" \
      org.opencontainers.image.description="Make Kubernetes NetworkPolicies protect NodePorts at the host" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# iptables brings both backends (iptables-legacy-* and iptables-nft-*) and the libxtables that
# python-iptables loads; conntrack and iproute2 (the node's local addresses) are used only with
# NPG_CLEAR_CONNTRACK=true.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ipset conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels nodeport-guard
# The root filesystem is read-only in the pods: bytecode was compiled at install time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443 9911
CMD ["nodeport-guard-webhook", "serve"]
