"""Exposes the network-namespace fixtures to the dataplane tests."""

from tests.netns_fixtures import node

__all__ = ["node"]
