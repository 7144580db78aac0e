"""Kubernetes plumbing both server processes share: list + watch (`listwatch`) and JSON-lines logs (`logs`)."""
