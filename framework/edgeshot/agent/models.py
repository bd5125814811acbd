"""The agent API's data: what goes over the wire between the agent and its callers.

Shared by the server (``agent/server.py``) and its client (``agent/client.py``),
and reused by the edge process and the controller: ``UsageRecord`` is the usage
record of docs/architecture.md ("Contracts between the parts") for every source, agents and
edge processes alike.

Units: CPU in cores, memory and storage sizes in bytes, times in UTC
(timezone-aware) and durations in seconds unless a field name says otherwise.
"GB" in usage fields is 2**30 bytes, as cloud providers bill memory.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    model_validator,
)

from ._models import PodSpec, TierSpec, WarmupRequest

__all__ = [
    "API_VERSION", "GB", "NAME_RE", "Name", "InstanceState", "Health", "Origin",
    "InstanceInfo", "InstanceList", "AppshotInfo", "AppshotList", "Amount", "Capacity",
    "CaptureRequest", "CaptureResult", "CreateInstance", "UsageRecord", "UsagePage",
    "AgentHealth", "UploadStatus", "TrustedKey", "ErrorBody",
    "PodSpec", "TierSpec", "WarmupRequest",
]

API_VERSION = "v1"
GB = 1 << 30
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def _name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid name: 1-128 of letters, digits, '_.+-', "
                         "starting with a letter or digit")
    return v


Name = Annotated[str, AfterValidator(_name)]
"""Appshot and instance ids: safe as one path component and in a URL."""


class _Wire(BaseModel):
    """Requests refuse unknown fields (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    """Responses ignore unknown fields: an older client keeps working with a newer agent."""

    model_config = ConfigDict(extra="ignore", frozen=True)


InstanceState = Literal["starting", "running", "snapshotting", "snapshotted", "stopping",
                        "stopped", "failed"]
Health = Literal["healthy", "unhealthy", "unknown"]
Origin = Literal["cold", "appshot", "snapshot"]


class InstanceInfo(_Out):
    """One instance as the agent reports it.

    An instance keeps its id across snapshot and restore: ``snapshotted`` means it
    holds no resources but its snapshot, and ``create_instance(from_snapshot=id)``
    brings it back (with its state when the agent restores with CRIU).
    """

    id: str
    app: str
    version: str
    owner: str
    vendor: str
    state: InstanceState
    health: Health
    address: str | None = Field(None, description="ip:port of the entry tier while running")
    netns: str | None = Field(None, description="named netns (/run/netns/<name>) of its slot")
    created: datetime
    age_s: NonNegativeFloat
    origin: Origin | None = None
    restored_from: str | None = Field(None, description="appshot name or snapshot id")
    appshot: str | None = Field(None, description="the appshot this instance descends from")
    snapshot: str | None = Field(None, description="its latest snapshot, when it has one")
    state_kept: bool = Field(True, description="False when its snapshot cannot keep memory "
                             "state (no CRIU here: it cold-starts again)")
    cold_reason: str | None = None
    ready_ms: float | None = Field(None, description="create call -> healthy, last time")
    restore_ms: float | None = Field(None, description="`criu restore` alone, last time")
    error: str | None = Field(None, description="why it failed, when state is failed")
    pod: str | None = Field(None, description="the running pod's id (its logs: "
                            "<state>/logs/<pod>/)")

    @property
    def host(self) -> str | None:
        return self.address.rsplit(":", 1)[0] if self.address else None

    @property
    def port(self) -> int | None:
        return int(self.address.rsplit(":", 1)[1]) if self.address else None

    @property
    def url(self) -> str | None:
        return f"http://{self.address}" if self.address else None


class InstanceList(_Out):
    instances: list[InstanceInfo]


class AppshotInfo(_Out):
    """An appshot (or an instance's snapshot) held by the agent."""

    name: str
    kind: Literal["appshot", "snapshot"]
    app: str
    version: str
    owner: str
    vendor: str
    instance: str | None = None
    created: datetime
    size_bytes: NonNegativeInt
    signer: str
    restorable: bool = Field(description="holds CRIU images (False: cold-starts from source)")
    source_included: bool = False


class AppshotList(_Out):
    appshots: list[AppshotInfo]


class Amount(_Out):
    total: float
    used: float
    free: float


class Capacity(_Out):
    """What this server can still take: CPU in cores and memory in bytes are reserved
    amounts (the instances' limits, or their use where they have no limit); slots count
    instances. ``cpu_busy`` and ``memory_available`` are measured, for information."""

    edgepoint: str
    server: str
    cpu: Amount
    memory: Amount
    slots: Amount
    cpu_busy: float = Field(description="cores busy right now, whole server")
    memory_available: int = Field(description="bytes available right now, whole server")
    restores: bool = Field(description="instances are restored with CRIU (else cold-started)")


class CaptureRequest(_Wire):
    """Start an app version from its source on this server, warm it up, dump it into an
    appshot named ``name`` (default ``<app>-<version>``). ``spec.source_dir`` must exist
    on the server. Where CRIU cannot run, the appshot holds the source and the spec only
    (it cold-starts)."""

    spec: PodSpec
    name: Name | None = None
    include_source: bool = True

    @property
    def appshot_name(self) -> str:
        return self.name or _name(f"{self.spec.app}-{self.spec.version}")


class CaptureResult(_Out):
    appshot: AppshotInfo
    cold_start_ms: float | None = None
    dump_ms: float | None = None
    warmup_requests: int = 0


class CreateInstance(_Wire):
    """A new running instance from an appshot, or an instance back from its own snapshot.

    Answered once the instance passes its health check. ``owner``/``vendor`` default to
    the appshot's manifest (they are who is billed). ``request_id`` makes a retried call
    return the instance the first call made instead of a second one.
    """

    appshot: Name | None = None
    from_snapshot: Name | None = None
    owner: str | None = Field(None, max_length=128)
    vendor: str | None = Field(None, max_length=128)
    lazy: bool = True
    request_id: str | None = Field(None, min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")

    @model_validator(mode="after")
    def _exactly_one(self) -> CreateInstance:
        if (self.appshot is None) == (self.from_snapshot is None):
            raise ValueError("give exactly one of appshot (a new instance) or from_snapshot "
                             "(an instance id, back from its snapshot)")
        return self


class UsageRecord(BaseModel):
    """One instance's consumption over one interval, as deltas (docs/architecture.md).

    Agents fill cpu, memory, disk and storage; edge processes fill network bytes and
    requests; each field has exactly one source. ``seq`` increases by one per record of
    a ``source``. Appshots stored on a server are billed to their app with
    ``instance = "appshot/<name>"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    seq: int = Field(ge=1)
    instance: str
    app: str
    version: str
    owner: str
    vendor: str
    edgepoint: str
    start: datetime
    end: datetime
    cpu_seconds: NonNegativeFloat = 0.0
    memory_gb_seconds: NonNegativeFloat = 0.0
    disk_read_bytes: NonNegativeInt = 0
    disk_write_bytes: NonNegativeInt = 0
    storage_gb_hours: NonNegativeFloat = 0.0
    net_in_bytes: NonNegativeInt = 0
    net_out_bytes: NonNegativeInt = 0
    requests: NonNegativeInt = 0

    @model_validator(mode="after")
    def _ordered(self) -> UsageRecord:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


class UsagePage(_Out):
    """Records with ``seq > after``, in order; pull again with ``after=last_seq``."""

    source: str
    records: list[UsageRecord]
    last_seq: int = Field(description="the highest seq in records, or `after` when empty")
    head_seq: int = Field(description="the highest seq this source has written")


class AgentHealth(_Out):
    status: Literal["ok"]
    version: str
    edgepoint: str
    server: str
    source: str
    mode: Literal["restore", "cold"]
    cold_reason: str | None = None
    signer: str = Field(description="key id this agent signs snapshots and captures with")
    uptime_s: float
    instances: int
    adopted: int = Field(0, description="instances taken back from a previous agent process")


class UploadStatus(_Out):
    name: str
    offset: NonNegativeInt
    size: NonNegativeInt | None = None
    complete: bool = False


class TrustedKey(_Wire):
    """An Ed25519 public key (PEM) whose appshots this agent then restores."""

    pem: str = Field(max_length=4096)


class ErrorBody(_Out):
    error: str
    code: str
    detail: list[str] | None = None
