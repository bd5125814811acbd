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

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

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


class EdgeError(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str = "",
                 detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.detail = message, status, code, detail or []

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}" if self.status else self.message


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
_NETWORK = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class EdgeClient:
    """One edge process's API. Use as ``async with``, or call ``close()``."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 connect_timeout: float = 3.0, retries: int = 3, backoff: float = 0.2,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._own = session is None

    def __repr__(self) -> str:
        return f"EdgeClient({self.base_url!r})"

    async def __aenter__(self) -> EdgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own = True
        return self._session

    async def _call(self, method: str, path: str, *, body: BaseModel | None = None,
                    params: dict[str, str] | None = None) -> bytes:
        data = body.model_dump_json().encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self._token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                async with self._http().request(
                        method, self.base_url + path, data=data, params=params, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.timeout,
                                                      sock_connect=self.connect_timeout)) as r:
                    raw = await r.read()
                    if r.status >= 400:
                        raise _error(r.status, raw)
                    return raw
            except _NETWORK as exc:
                attempt += 1
                if attempt > self.retries:
                    raise EdgeUnavailable(f"{method} {path}: {self.base_url} unreachable after "
                                          f"{attempt} attempts ({type(exc).__name__})") from None
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def _get(self, path: str, model: type[M], params: dict[str, str] | None = None) -> M:
        return model.model_validate_json(await self._call("GET", path, params=params))

    # -- API -------------------------------------------------------------------------------
    async def health(self) -> EdgeHealth:
        return await self._get("/v1/health", EdgeHealth)

    async def placements(self) -> list[PlacementAssignment]:
        return (await self._get("/v1/placements", PlacementList)).placements

    async def set_placements(self, placements: Iterable[PlacementAssignment]
                             ) -> list[PlacementAssignment]:
        """Replace every placement this edgepoint serves (the apps it routes)."""
        raw = await self._call("PUT", "/v1/placements",
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
        raw = await self._call("PATCH", f"/v1/placements/{quote(app, safe='')}/"
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

    async def iter_usage(self, after: int = 0, limit: int = 1000) -> AsyncIterator[UsagePage]:
        while True:
            page = await self.usage(after, limit)
            if not page.records:
                return
            yield page
            after = page.last_seq

    async def metrics(self) -> str:
        """The edge's Prometheus metrics followed by HAProxy's own exporter."""
        return (await self._call("GET", "/metrics")).decode()

    async def reload(self) -> int:
        """Reload HAProxy now (seamless); the new worker's pid."""
        return json.loads(await self._call("POST", "/v1/reload"))["worker"]


def _window(since: datetime | None, until: datetime | None, app: str | None) -> dict[str, str]:
    q: dict[str, Any] = {}
    if since is not None:
        q["since"] = since.isoformat()
    if until is not None:
        q["until"] = until.isoformat()
    if app:
        q["app"] = app
    return q


def _error(status: int, raw: bytes) -> EdgeError:
    code, message, detail = "", raw[:300].decode(errors="replace"), None
    try:
        d = json.loads(raw)
        if isinstance(d, dict):
            code, message, detail = str(d.get("code", "")), str(d.get("error", message)), \
                d.get("detail")
    except ValueError:
        pass
    return _BY_STATUS.get(status, EdgeError)(
        message, status=status, code=code,
        detail=[str(x) for x in detail] if isinstance(detail, list) else None)
