"""Certificates and the signing key for nodeport-guard: generate, install into a cluster, rotate."""
