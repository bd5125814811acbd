"""The async client of the agent API: every caller uses it, none builds URLs by hand.

    async with AgentClient("http://10.0.0.5:7440", token) as agent:
        inst = await agent.create_instance("shop-1.0.0", owner="acme")
        ...  # inst.address is "ip:port", inst.netns the slot's netns name
        await agent.snapshot_instance(inst.id)
        inst = await agent.create_instance(from_snapshot=inst.id)

Retries (with backoff) only where repeating cannot do harm: always when the
connection could not be made (nothing was sent); for reads, verify, delete,
stop and snapshot also after a broken connection or a timeout; for
``create_instance`` too, because every call carries a ``request_id`` the agent
remembers (a retry returns the instance the first attempt made). ``capture`` is
not repeated once sent. Uploads resume from the offset the agent holds.

Errors are typed (``AgentError`` and subclasses, with the agent's ``code``);
the token never appears in an error, a log line or ``repr``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from .models import (
    AgentHealth,
    AppshotInfo,
    AppshotList,
    Capacity,
    CaptureRequest,
    CaptureResult,
    CreateInstance,
    InstanceInfo,
    InstanceList,
    PodSpec,
    UploadStatus,
    UsagePage,
)

__all__ = [
    "AgentClient", "AgentError", "AgentUnavailable", "Unauthorized", "Forbidden", "NotFound",
    "Conflict", "Invalid", "AtCapacity", "StartFailed",
]

M = TypeVar("M", bound=BaseModel)


class AgentError(Exception):
    """The agent answered with an error (``status``, ``code``) or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "",
                 detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail or []

    def __str__(self) -> str:
        where = f"{self.status} {self.code}: " if self.status else ""
        return f"{where}{self.message}"


class AgentUnavailable(AgentError):
    """No answer: connection refused or broken, or a timeout (after the retries allowed)."""


class Unauthorized(AgentError):
    """401: no token, or a token the agent does not know."""


class Forbidden(AgentError):
    """403: the token lacks the scope this call needs."""


class NotFound(AgentError):
    """404: no such appshot, instance or upload."""


class Conflict(AgentError):
    """409: the state forbids it (exists, running, not snapshotted, busy, incompatible CPU)."""


class Invalid(AgentError):
    """400/413/422: a malformed request, or an appshot that does not verify."""


class AtCapacity(AgentError):
    """503/507: no free slot, or no disk space, on this server."""


class StartFailed(AgentError):
    """502: the instance did not start, restore or snapshot (message: why, log lines)."""


_BY_STATUS: dict[int, type[AgentError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 400: Invalid,
    413: Invalid, 422: Invalid, 405: Invalid, 503: AtCapacity, 507: AtCapacity,
    502: StartFailed,
}
_NETWORK = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class AgentClient:
    """One agent's API. Use as ``async with``, or call ``close()``."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0,
                 connect_timeout: float = 5.0, retries: int = 3, backoff: float = 0.2,
                 create_timeout: float = 180.0, capture_timeout: float = 900.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.create_timeout = create_timeout
        self.capture_timeout = capture_timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:
        return f"AgentClient({self.base_url!r})"

    async def __aenter__(self) -> AgentClient:
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

    def _timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout)

    # ------------------------------------------------------------------ plumbing
    async def _call(self, method: str, path: str, *, json: BaseModel | None = None,
                    params: dict[str, Any] | None = None, safe: bool = True,
                    timeout: float | None = None, data: Any = None,
                    headers: dict[str, str] | None = None,
                    gone_ok: bool = False) -> tuple[int, bytes]:
        """One API call with the retry policy; returns (status, body) of a 2xx answer.

        ``gone_ok``: a 404 after a retry means the first attempt did it (delete, stop):
        returned as (404, body) instead of raised."""
        body = json.model_dump_json(exclude_none=True).encode() if json is not None else data
        hdrs = self._headers(headers)
        if json is not None:
            hdrs["Content-Type"] = "application/json"
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                async with self._http().request(
                        method, url, data=body, params=params, headers=hdrs,
                        timeout=self._timeout(self.timeout if timeout is None else timeout),
                ) as resp:
                    raw = await resp.read()
                    if resp.status == 404 and gone_ok and attempt > 0:
                        return resp.status, raw
                    if resp.status >= 400:
                        raise _error(resp.status, raw)
                    return resp.status, raw
            except aiohttp.ClientConnectorError as exc:
                err = exc  # never sent: always safe to try again
            except _NETWORK as exc:
                if not safe:
                    raise AgentUnavailable(f"{method} {path}: no answer from {self.base_url} "
                                           f"({type(exc).__name__}); not retried: repeating "
                                           "it could do it twice") from None
                err = exc
            attempt += 1
            if attempt > self.retries:
                raise AgentUnavailable(f"{method} {path}: {self.base_url} unreachable after "
                                       f"{attempt} attempts ({type(err).__name__}: "
                                       f"{_brief(err)})") from None
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def _get(self, path: str, model: type[M], **kw: Any) -> M:
        _, raw = await self._call("GET", path, **kw)
        return model.model_validate_json(raw)

    # ------------------------------------------------------------------ server
    async def health(self) -> AgentHealth:
        return await self._get("/v1/health", AgentHealth)

    async def capacity(self) -> Capacity:
        return await self._get("/v1/capacity", Capacity)

    async def metrics(self) -> str:
        _, raw = await self._call("GET", "/metrics")
        return raw.decode()

    async def signing_key(self) -> tuple[str, str]:
        """(key id, PEM) of the key this agent signs its captures and snapshots with."""
        import json
        _, raw = await self._call("GET", "/v1/signing-key")
        d = json.loads(raw)
        return d["key_id"], d["pem"]

    async def trust_key(self, pem: str) -> str:
        """Make the agent restore appshots signed by this Ed25519 public key (PEM)."""
        import json

        from .models import TrustedKey
        _, raw = await self._call("POST", "/v1/trusted-keys", json=TrustedKey(pem=pem))
        return json.loads(raw)["key_id"]

    # ------------------------------------------------------------------ appshots
    async def list_appshots(self, kind: str = "appshot") -> list[AppshotInfo]:
        """kind: "appshot", "snapshot" or "all"."""
        return (await self._get("/v1/appshots", AppshotList, params={"kind": kind})).appshots

    async def get_appshot(self, name: str) -> AppshotInfo:
        return await self._get(f"/v1/appshots/{_seg(name)}", AppshotInfo)

    async def verify_appshot(self, name: str) -> AppshotInfo:
        """Signature, every checksum, modes and CPU, now. Invalid (422) if tampered or
        untrusted, Conflict (409, code incompatible_cpu) on the wrong hardware."""
        _, raw = await self._call("POST", f"/v1/appshots/{_seg(name)}/verify")
        return AppshotInfo.model_validate_json(raw)

    async def delete_appshot(self, name: str) -> None:
        await self._call("DELETE", f"/v1/appshots/{_seg(name)}", gone_ok=True)

    async def capture(self, spec: PodSpec, *, name: str | None = None,
                      include_source: bool = True) -> CaptureResult:
        """Start ``spec`` from its source on the agent's server, warm it up and dump it into
        the appshot ``name`` (default ``<app>-<version>``)."""
        req = CaptureRequest(spec=spec, name=name, include_source=include_source)
        _, raw = await self._call("POST", "/v1/capture", json=req, safe=False,
                                  timeout=self.capture_timeout)
        return CaptureResult.model_validate_json(raw)

    async def upload_status(self, name: str) -> UploadStatus | None:
        try:
            return await self._get(f"/v1/appshots/{_seg(name)}/upload", UploadStatus)
        except NotFound:
            return None

    async def abort_upload(self, name: str) -> None:
        await self._call("DELETE", f"/v1/appshots/{_seg(name)}/upload")

    async def upload_appshot(self, tarball: str | os.PathLike[str], name: str, *,
                             chunk_size: int = 1 << 20, attempts: int = 8,
                             progress: Callable[[int, int], None] | None = None
                             ) -> AppshotInfo:
        """Stream a packed appshot (``appshots.pack``) to the agent as ``name``; after a
        broken connection, resume from the offset the agent holds. The agent verifies it
        (signature, checksums) before it appears. ``progress(offset, size)`` is called when
        each attempt starts."""
        path = Path(tarball)
        size = path.stat().st_size
        digest = await asyncio.to_thread(_sha256, path)
        headers = {"Upload-Length": str(size), "Upload-SHA256": digest,
                   "Content-Type": "application/octet-stream"}
        seg = _seg(name)
        last: Exception | None = None
        for attempt in range(attempts):
            st = await self.upload_status(name)
            if st is not None and st.complete:
                return await self.get_appshot(name)
            offset = st.offset if st is not None and st.size == size else 0
            if progress:
                progress(offset, size)
            try:
                status, raw = await self._call(
                    "PATCH", f"/v1/appshots/{seg}/upload", safe=False, timeout=None,
                    data=_file_chunks(path, offset, chunk_size),
                    headers={**headers, "Upload-Offset": str(offset),
                             "Content-Length": str(size - offset)})
            except Conflict as exc:
                if exc.code in ("offset_mismatch", "upload_busy"):
                    last = exc
                    await asyncio.sleep(self.backoff * (attempt + 1))
                    continue
                raise
            except AgentUnavailable as exc:
                last = exc
                await asyncio.sleep(self.backoff * 2 ** attempt)
                continue
            if status == 201:
                return AppshotInfo.model_validate_json(raw)
            last = AgentError(f"upload of {name} stopped at "
                              f"{UploadStatus.model_validate_json(raw).offset} of {size} bytes")
        raise AgentUnavailable(f"upload of {name} did not complete after {attempts} attempts: "
                               f"{last}")

    async def download_appshot(self, name: str, dest: str | os.PathLike[str]) -> Path:
        """Fetch an appshot's tarball (for another agent); resumes a partial ``dest``."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            hdrs = self._headers({"Range": f"bytes={have}-"} if have else None)
            try:
                async with self._http().get(
                        f"{self.base_url}/v1/appshots/{_seg(name)}/tarball", headers=hdrs,
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                                      sock_read=self.timeout)) as resp:
                    if resp.status == 416:  # we have it all already
                        break
                    if resp.status >= 400:
                        raise _error(resp.status, await resp.read())
                    mode = "ab" if resp.status == 206 else "wb"
                    with open(part, mode) as f:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            f.write(chunk)
                break
            except _NETWORK as exc:
                if attempt >= self.retries:
                    raise AgentUnavailable(f"download of {name}: {_brief(exc)}") from None
                await asyncio.sleep(self.backoff * 2 ** attempt)
        os.replace(part, dest)
        return dest

    # ------------------------------------------------------------------ instances
    async def create_instance(self, appshot: str | None = None, *,
                              from_snapshot: str | None = None, owner: str | None = None,
                              vendor: str | None = None, lazy: bool = True,
                              request_id: str | None = None) -> InstanceInfo:
        """A new instance from ``appshot``, or instance ``from_snapshot`` back from its
        snapshot; returns once it answers its health check (address, netns)."""
        req = CreateInstance(appshot=appshot, from_snapshot=from_snapshot, owner=owner,
                             vendor=vendor, lazy=lazy,
                             request_id=request_id or uuid.uuid4().hex)
        _, raw = await self._call("POST", "/v1/instances", json=req, safe=True,
                                  timeout=self.create_timeout)
        return InstanceInfo.model_validate_json(raw)

    async def get_instance(self, instance_id: str) -> InstanceInfo:
        return await self._get(f"/v1/instances/{_seg(instance_id)}", InstanceInfo)

    async def list_instances(self, *, state: str | None = None, app: str | None = None
                             ) -> list[InstanceInfo]:
        params = {k: v for k, v in (("state", state), ("app", app)) if v}
        return (await self._get("/v1/instances", InstanceList, params=params)).instances

    async def snapshot_instance(self, instance_id: str) -> InstanceInfo:
        """Dump the instance (drain it in HAProxy first) and free its resources; it stays
        listed as ``snapshotted``. Retried safely: a repeat finds it snapshotted."""
        path = f"/v1/instances/{_seg(instance_id)}/snapshot"
        try:
            _, raw = await self._call("POST", path, timeout=self.create_timeout)
        except Conflict as exc:
            if exc.code == "already_snapshotted":
                return await self.get_instance(instance_id)
            raise
        return InstanceInfo.model_validate_json(raw)

    async def stop_instance(self, instance_id: str) -> InstanceInfo | None:
        """Stop it and discard its snapshot; the instance is gone afterwards. None when a
        retried call found it already gone (the first attempt stopped it)."""
        status, raw = await self._call("POST", f"/v1/instances/{_seg(instance_id)}/stop",
                                       timeout=self.create_timeout, gone_ok=True)
        return None if status == 404 else InstanceInfo.model_validate_json(raw)

    # ------------------------------------------------------------------ usage
    async def usage(self, after: int = 0, limit: int = 1000) -> UsagePage:
        """Usage records with ``seq > after`` (store them and ``last_seq`` together)."""
        return await self._get("/v1/usage", UsagePage,
                               params={"after": str(after), "limit": str(limit)})

    async def iter_usage(self, after: int = 0, limit: int = 1000) -> AsyncIterator[UsagePage]:
        """Pages until caught up with the agent's head."""
        while True:
            page = await self.usage(after, limit)
            if not page.records:
                return
            yield page
            after = page.last_seq


def _seg(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def _error(status: int, raw: bytes) -> AgentError:
    import json
    code, message, detail = "", raw[:300].decode(errors="replace"), None
    try:
        d = json.loads(raw)
        if isinstance(d, dict):
            code = str(d.get("code", ""))
            message = str(d.get("error", message))
            detail = d.get("detail")
    except ValueError:
        pass
    cls = _BY_STATUS.get(status, AgentError)
    return cls(message, status=status, code=code,
               detail=[str(x) for x in detail] if isinstance(detail, list) else None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _file_chunks(path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
