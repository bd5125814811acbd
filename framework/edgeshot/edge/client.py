"""The async client of the edge API: the controller (and tools) use it; nobody builds URLs.

    async with EdgeClient("http://127.0.1.1:7702", token) as edge:
        await edge.set_placements([PlacementAssignment(placement=p, app=plan.app(p.app))])
        await edge.update_placement("shop/eu", versions=[VersionWeight(version="1.0.0",
                                    weight=90), VersionWeight(version="1.1.0", weight=10)])
        load = await edge.load()          # per placement: instances, concurrency, decision,
                                          # at capacity, per version rps/errors/p50/p95/p99
        page = await edge.usage(after=cursor)

Every call is idempotent (reads, and writes that set a state), so each is retried with
backoff after a connection error or a timeout. Errors are typed (``EdgeError`` and
subclasses, with the edge's ``code``); the token never appears in an error or ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from .._api_client import ApiClient, ApiError
from .models import (
    EdgeHealth,
    EdgeLoad,
    LatencyHistory,
    PlacementAssignment,
    PlacementList,
    PlacementSet,
    PlacementUpdate,
    RegionHistory,
    UsagePage,
    VersionWeight,
)

__all__ = ["EdgeClient", "EdgeError", "EdgeUnavailable", "Unauthorized", "Forbidden",
           "NotFound", "Invalid"]

M = TypeVar("M", bound=BaseModel)


class EdgeError(ApiError):
    """The edge answered with an error (``status``, ``code``) or could not be reached."""


class EdgeUnavailable(EdgeError):
    """No answer (connection refused or broken, timeout) after the retries."""


class Unauthorized(EdgeError):
    """401."""


class Forbidden(EdgeError):
    """403: the token lacks the scope."""


class NotFound(EdgeError):
    """404: no such placement."""


class Invalid(EdgeError):
    """400/422: malformed, or refused (wrong edgepoint, unroutable app)."""


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 400: Invalid, 422: Invalid,
              405: Invalid, 413: Invalid}


class EdgeClient(ApiClient):
    """One edge process's API. Use as ``async with``, or call ``close()``."""

    error = EdgeError
    unavailable = EdgeUnavailable
    by_status = _BY_STATUS

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 connect_timeout: float = 3.0, retries: int = 3, backoff: float = 0.2,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(base_url, token, timeout=timeout, connect_timeout=connect_timeout,
                         retries=retries, backoff=backoff, session=session)

    async def _send(self, method: str, path: str, *, body: BaseModel | None = None,
                    params: dict[str, str] | None = None) -> bytes:
        """Every call of this API is idempotent: retried after any network error."""
        return (await self._call(method, path, json=body, params=params))[1]

    async def _get(self, path: str, model: type[M], params: dict[str, str] | None = None) -> M:
        return model.model_validate_json(await self._send("GET", path, params=params))

    # -- API -------------------------------------------------------------------------------
    async def health(self) -> EdgeHealth:
        return await self._get("/v1/health", EdgeHealth)

    async def placements(self) -> list[PlacementAssignment]:
        return (await self._get("/v1/placements", PlacementList)).placements

    async def set_placements(self, placements: Iterable[PlacementAssignment]
                             ) -> list[PlacementAssignment]:
        """Replace every placement this edgepoint serves (the apps it routes)."""
        raw = await self._send("PUT", "/v1/placements",
                               body=PlacementSet(placements=tuple(placements)))
        return PlacementList.model_validate_json(raw).placements

    async def update_placement(self, placement_id: str, *,
                               versions: Iterable[VersionWeight] | None = None,
                               global_share: int | None = None,
                               cost_ceiling: int | None = None) -> PlacementAssignment:
        """Version weights (canary, promotion, rollback), this edgepoint's share of the
        global maximum, the cost ceiling: applied at once, without a reload."""
        app, _, edgepoint = placement_id.partition("/")
        from urllib.parse import quote
        body = PlacementUpdate(versions=tuple(versions) if versions is not None else None,
                               global_share=global_share, cost_ceiling=cost_ceiling)
        raw = await self._send("PATCH", f"/v1/placements/{quote(app, safe='')}/"
                               f"{quote(edgepoint, safe='')}", body=body)
        return PlacementAssignment.model_validate_json(raw)

    async def load(self) -> EdgeLoad:
        return await self._get("/v1/load", EdgeLoad)

    async def latency_history(self, since: datetime | None = None, until: datetime | None = None,
                              app: str | None = None) -> LatencyHistory:
        """Per-minute HDR histograms per (app, version), stored durably by the edge."""
        return await self._get("/v1/history/latency", LatencyHistory,
                               _window(since, until, app))

    async def region_history(self, since: datetime | None = None, until: datetime | None = None,
                             app: str | None = None) -> RegionHistory:
        """Per-minute request counts per (app, region)."""
        return await self._get("/v1/history/regions", RegionHistory, _window(since, until, app))

    async def usage(self, after: int = 0, limit: int = 1000) -> UsagePage:
        """Data-path usage records with ``seq > after`` (store them and ``last_seq`` in one
        transaction: exactly once)."""
        return await self._get("/v1/usage", UsagePage, {"after": str(after), "limit": str(limit)})
    async def metrics(self) -> str:
        """The edge's Prometheus metrics followed by HAProxy's own exporter."""
        return (await self._send("GET", "/metrics")).decode()

    async def reload(self) -> int:
        """Reload HAProxy now (seamless); the new worker's pid."""
        return json.loads(await self._send("POST", "/v1/reload"))["worker"]


def _window(since: datetime | None, until: datetime | None, app: str | None) -> dict[str, str]:
    q: dict[str, Any] = {}
    if since is not None:
        q["since"] = since.isoformat()
    if until is not None:
        q["until"] = until.isoformat()
    if app:
        q["app"] = app
    return q
