"""The edge's fixtures, for the fuzz tests of the API and the socket."""

from tests.edge.conftest import shop

__all__ = ["shop"]
