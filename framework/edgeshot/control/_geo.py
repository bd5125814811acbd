"""Distances between regions and what they cost in round-trip time.

Great-circle distance (haversine, mean Earth radius) and a simple RTT model:
light in fibre covers about 200 km per millisecond, real paths are ~1.5x the
great circle, plus a few milliseconds of last-mile and switching.
"""

from __future__ import annotations

from math import asin, cos, radians, sin, sqrt

EARTH_RADIUS_KM = 6371.0088
FIBRE_KM_PER_MS = 200.0
PATH_STRETCH = 1.5
BASE_RTT_MS = 2.0


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points given in degrees."""
    p1, p2 = radians(lat1), radians(lat2)
    dp, dl = p2 - p1, radians(lon2 - lon1)
    h = sin(dp / 2) ** 2 + cos(p1) * cos(p2) * sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * asin(min(1.0, sqrt(h)))


def rtt_ms(km: float) -> float:
    """Estimated round-trip time over `km` of great-circle distance."""
    return BASE_RTT_MS + 2 * km * PATH_STRETCH / FIBRE_KM_PER_MS
