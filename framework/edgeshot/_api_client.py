"""What the clients of our HTTP APIs share: session, bearer token, retries, typed errors.

``agent/client.py`` and ``edge/client.py`` each subclass ``ApiClient`` and add their
API's calls; each has its own ``ApiError`` subclasses (chosen by HTTP status). Both are
usage sources (docs/architecture.md, "Usage records"): ``iter_usage`` pages through either.

Retries (with exponential backoff) only where repeating cannot do harm: always when
the connection could not be made (nothing was sent); after a broken connection or a
timeout only for a call marked ``safe`` (idempotent). The token never appears in an
error, a log line or ``repr``.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

import aiohttp
from pydantic import BaseModel

__all__ = ["ApiError", "ApiClient", "NETWORK_ERRORS", "brief"]

# no answer: connection refused or broken, or a timeout
NETWORK_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                  asyncio.TimeoutError)


class ApiError(Exception):
    """The service answered with an error (``status``, ``code``, ``detail``) or could not
    be reached (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "",
                 detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail or []

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}" if self.status else self.message


class ApiClient:
    """One service's API. Use as ``async with``, or call ``close()``.

    A subclass names its errors: ``error`` (the base), ``unavailable`` (no answer) and
    ``by_status`` (HTTP status -> class)."""

    error: ClassVar[type[ApiError]] = ApiError
    unavailable: ClassVar[type[ApiError]] = ApiError
    by_status: ClassVar[dict[int, type[ApiError]]] = {}
    exclude_none: ClassVar[bool] = False  # JSON bodies leave out fields that are None

    def __init__(self, base_url: str, token: str, *, timeout: float, connect_timeout: float,
                 retries: int = 3, backoff: float = 0.2,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30))
            self._own_session = True
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", **(extra or {})}

    def _error(self, status: int, raw: bytes) -> ApiError:
        """The typed error of an answer with ``status`` >= 400 (its JSON body: ``error``,
        ``code``, ``detail``)."""
        code, message, detail = "", raw[:300].decode(errors="replace"), None
        try:
            d = jsonlib.loads(raw)
            if isinstance(d, dict):
                code = str(d.get("code", ""))
                message = str(d.get("error", message))
                detail = d.get("detail")
        except ValueError:
            pass
        return self.by_status.get(status, self.error)(
            message, status=status, code=code,
            detail=[str(x) for x in detail] if isinstance(detail, list) else None)

    async def usage(self, after: int = 0, limit: int = 1000) -> Any:
        """A page of usage records with ``seq > after`` (for an API that is a usage source:
        its subclass defines this)."""
        raise NotImplementedError

    async def iter_usage(self, after: int = 0, limit: int = 1000) -> AsyncIterator[Any]:
        """``usage`` pages until caught up with the source's head."""
        while True:
            page = await self.usage(after, limit)
            if not page.records:
                return
            yield page
            after = page.last_seq

    async def _call(self, method: str, path: str, *, json: BaseModel | None = None,
                    params: dict[str, Any] | None = None, safe: bool = True,
                    timeout: float | None = None, data: Any = None,
                    headers: dict[str, str] | None = None,
                    gone_ok: bool = False) -> tuple[int, bytes]:
        """One API call with the retry policy; returns (status, body) of a 2xx answer.

        ``gone_ok``: a 404 after a retry means the first attempt did it (delete, stop):
        returned as (404, body) instead of raised."""
        if json is not None:
            data = json.model_dump_json(exclude_none=self.exclude_none).encode()
        hdrs = self._headers(headers)
        if json is not None:
            hdrs["Content-Type"] = "application/json"
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                async with self._http().request(
                        method, url, data=data, params=params, headers=hdrs,
                        timeout=aiohttp.ClientTimeout(
                            total=self.timeout if timeout is None else timeout,
                            sock_connect=self.connect_timeout),
                ) as resp:
                    raw = await resp.read()
                    if resp.status == 404 and gone_ok and attempt > 0:
                        return resp.status, raw
                    if resp.status >= 400:
                        raise self._error(resp.status, raw)
                    return resp.status, raw
            except aiohttp.ClientConnectorError as exc:
                err = exc  # never sent: always safe to try again
            except NETWORK_ERRORS as exc:
                if not safe:
                    raise self.unavailable(
                        f"{method} {path}: no answer from {self.base_url} "
                        f"({type(exc).__name__}); not retried: repeating it could do it "
                        "twice") from None
                err = exc
            attempt += 1
            if attempt > self.retries:
                raise self.unavailable(f"{method} {path}: {self.base_url} unreachable after "
                                       f"{attempt} attempts ({type(err).__name__}: "
                                       f"{brief(err)})") from None
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))


def brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
