"""Exposes the network-namespace fixtures to the end-to-end tests."""

from tests.netns_fixtures import node

__all__ = ["node"]
