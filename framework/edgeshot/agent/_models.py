"""Plain-data models at the boundary of the appshot library (façade: appshots.py)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class WarmupRequest(BaseModel):
    """A request sent to the entry tier before capture, so the appshot is warm."""

    model_config = ConfigDict(frozen=True)
    method: str = "GET"
    path: str = "/"
    count: int = Field(1, ge=1, le=10_000)
    body: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class TierSpec(BaseModel):
    """One process of a pod. The entry tier listens on 0.0.0.0:$PORT, others on 127.0.0.1."""

    model_config = ConfigDict(frozen=True)
    name: str
    command: tuple[str, ...] = Field(min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    env: dict[str, str] = Field(default_factory=dict)
    entry: bool = False
    health_path: str | None = "/healthz"
    health_timeout_s: float = 2.0
    start_timeout_s: float = 30.0
    cpu: Decimal | None = None
    memory_mb: int | None = None
    # Restored copies share their random state: this signal (e.g. "SIGUSR2") is sent
    # to the tier after every restore so it reseeds. None: the tier has no such hook.
    reseed_signal: str | None = None


class PodSpec(BaseModel):
    """What the agent needs to start an application version as a pod."""

    model_config = ConfigDict(frozen=True)
    app: str
    version: str
    owner: str = ""
    vendor: str = ""
    source_dir: Path
    tiers: tuple[TierSpec, ...] = Field(min_length=1, max_length=6)
    warmup: tuple[WarmupRequest, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> PodSpec:
        if not _NAME.match(self.app):
            raise ValueError(f"app name {self.app!r} must match {_NAME.pattern}")
        if sum(t.entry for t in self.tiers) != 1:
            raise ValueError("exactly one tier must be the entry")
        ports = [t.port for t in self.tiers]
        if len(set(ports)) != len(ports):
            raise ValueError("tiers of one pod need distinct ports")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names) or not all(_NAME.match(n) for n in names):
            raise ValueError("tier names must be distinct and simple")
        return self

    @property
    def entry(self) -> TierSpec:
        return next(t for t in self.tiers if t.entry)

    @property
    def cpu(self) -> Decimal | None:
        vals = [t.cpu for t in self.tiers if t.cpu]
        return sum(vals, Decimal(0)) if vals else None

    @property
    def memory_mb(self) -> int | None:
        vals = [t.memory_mb for t in self.tiers if t.memory_mb]
        return sum(vals) if vals else None


Origin = Literal["cold", "appshot", "snapshot"]


class Instance(BaseModel):
    """A running pod as the agent records it (``<state>/pods/<id>/pod.json``)."""

    id: str
    app: str
    version: str
    owner: str = ""
    vendor: str = ""
    origin: Origin
    address: str
    port: int
    slot: str | None = None
    pid: int  # the pod init's pid on the host
    started: datetime
    ready_ms: float | None = None  # start/restore command -> healthy
    cgroup: str | None = None
    pod_dir: Path
    log_dir: Path
    namespaces: bool = True
    cold_reason: str | None = None  # why this instance was cold-started, when it was
    restore_ms: float | None = None  # `criu restore` alone
    lazy: bool = False
    lazy_pid: int | None = None  # the lazy-pages daemon serving this instance, while it runs
    criu_work: Path | None = None  # CRIU's logs of the restore (lazy-pages.log when lazy)
    pipes: dict[str, str] = {}  # tier -> "pipe:[inode]" its stdout/stderr write to (for dumps)
    timings_ms: dict[str, float] = {}  # wall time of each step of the start or restore
    spec: PodSpec

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"
