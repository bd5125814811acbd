"""`EdgeLink` over the edge API, through `edgeshot.edge.client` (the edge's own client)."""

from __future__ import annotations

from ._edges import EdgeStatus, PlacementOrder


class HttpEdgeLink:
    def __init__(self, name: str, url: str, token: str, timeout: float = 2.0) -> None:
        self.name = name
        self.url = url
        self._token = token
        self.timeout = timeout

    async def status(self) -> EdgeStatus:
        raise NotImplementedError("edge client not available yet")

    async def set_placements(self, orders: list[PlacementOrder]) -> None:
        raise NotImplementedError("edge client not available yet")

    async def close(self) -> None:
        pass


def write_edge_configs(state, plan, tokens, edges, options) -> str | None:
    """Write one edge process configuration per edgepoint; a note when there is no edge
    process in this tree (then none is started)."""
    from ._localnet import edge_available
    if not edge_available():
        return "the edge process (edgeshot.edge.server) is not in this tree"
    raise NotImplementedError


def edge_argv(python: str, config: str) -> list[str]:
    return [python, "-m", "edgeshot.cli.edge", "--config", config]
