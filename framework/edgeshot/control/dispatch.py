"""edgeshot.control.dispatch: the global dispatcher.

The decision (pure, per tick): `decide(sites, placements, regions) -> RoutingTable`;
`route(table, app, region, current)` is the per-request rule HAProxy applies.
The data path: `GlobalDispatcher` renders and runs an HAProxy process and pushes
each table into it through the runtime API (maps, server weights), no reloads.
"""

from __future__ import annotations

from ._decide import (
    ANY_REGION,
    DispatchPolicy,
    Geometry,
    Placed,
    RoutingTable,
    Site,
    UserRegion,
    changes,
    decide,
    penalty,
    route,
)
from ._geo import distance_km, rtt_ms

__all__ = [
    "ANY_REGION", "DispatchPolicy", "Geometry", "Placed", "RoutingTable", "Site", "UserRegion",
    "changes", "decide", "distance_km", "penalty", "route", "rtt_ms",
]
