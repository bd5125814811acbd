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

from .._api_client import NETWORK_ERRORS, ApiClient, ApiError, brief
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


class AgentError(ApiError):
    """The agent answered with an error (``status``, ``code``) or could not be reached."""


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


class AgentClient(ApiClient):
    """One agent's API. Use as ``async with``, or call ``close()``."""

    error = AgentError
    unavailable = AgentUnavailable
    by_status = _BY_STATUS
    exclude_none = True

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0,
                 connect_timeout: float = 5.0, retries: int = 3, backoff: float = 0.2,
                 create_timeout: float = 180.0, capture_timeout: float = 900.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(base_url, token, timeout=timeout, connect_timeout=connect_timeout,
                         retries=retries, backoff=backoff, session=session)
        self.create_timeout = create_timeout
        self.capture_timeout = capture_timeout

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
                        raise self._error(resp.status, await resp.read())
                    mode = "ab" if resp.status == 206 else "wb"
                    with open(part, mode) as f:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            f.write(chunk)
                break
            except NETWORK_ERRORS as exc:
                if attempt >= self.retries:
                    raise AgentUnavailable(f"download of {name}: {brief(exc)}") from None
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


def _seg(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


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
