"""The controller's configuration (TOML; relative paths are relative to the file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .._config_file import ConfigError, load_config, toml_text  # noqa: F401 (ConfigError: re-exported)
from .._logging import LogFormat
from ._grants import OwnerGrant
from ._metering import MeteringSection


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DispatcherSection(_Section):
    enabled: bool = True
    address: str | None = Field(None, description="bind address (default: the plan's controller)")
    http_port: int | None = Field(None, ge=1, le=65535, description="default: the plan's")
    stats_port: int | None = Field(None, ge=0, le=65535, description="0: no stats at all; "
                                   "otherwise HAProxy's stats and /metrics are on the unix "
                                   "socket stats.sock (0600) of the dispatcher's directory, "
                                   "never on an unauthenticated TCP port (a port number, as "
                                   "servers' configurations and older ones give, means the "
                                   "same: the socket)")
    mode: Literal["proxy", "redirect"] = "proxy"
    simulate_latency: bool = Field(False, description="local networks: add each region's RTT")
    haproxy: str = "haproxy"
    check_inter_ms: int = Field(500, ge=50)
    geo_file: Path | None = Field(None, description="CIDR region lines, for clients without "
                                  "an X-Edgeshot-Region header")
    hop_token_file: Path | None = Field(None, description="the token this dispatcher sends to "
                                        "the edges (X-Edgeshot-Hop); they keep the region and "
                                        "forwarding headers only from requests carrying it")


class CanarySection(_Section):
    interval_s: float = Field(10.0, gt=0)
    threshold: int = Field(2, ge=1)
    iterations: int = Field(3, ge=1)
    step_weight: int = Field(0, ge=0, le=100)
    max_weight: int = Field(50, ge=1, le=100)
    min_requests: int = Field(20, ge=1)
    max_error_rate: float = Field(0.01, ge=0, le=1)


class ControllerConfig(_Section):
    state_dir: Path = Field(description="SQLite database, dispatcher files, appshot cache")
    plan: Path = Field(description="the network's plan (JSON, `edgeshot plan --out`)")
    base_dir: Path = Field(description="the policy file's directory: app sources are relative")
    listen: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="default: the plan's controller port")
    tokens_file: Path = Field(description="tokens this controller accepts (hashes)")
    agent_token_file: Path = Field(description="this controller's controller-agent token")
    edge_token_file: Path = Field(description="this controller's controller-edge token")
    edges: dict[str, str] = Field(default_factory=dict, description="edge API URL per edgepoint "
                                  "(default from the plan's addresses)")
    agents: dict[str, str] = Field(default_factory=dict, description="agent URL per server")
    excluded_file: Path | None = Field(None, description="servers the configuration could not "
                                       "set up (edgeshot.control.exclusions): their edgepoints "
                                       "are not routed; re-read when it changes")
    tick_s: float = Field(1.0, gt=0, description="edge reports -> routing table -> dispatcher")
    agent_poll_s: float = Field(5.0, gt=0)
    edge_timeout_s: float = Field(2.0, gt=0)
    deploy_on_start: bool = Field(True, description="capture, distribute and start every app "
                                  "of the plan that has no version running")
    dispatcher: DispatcherSection = DispatcherSection()
    canary: CanarySection = CanarySection()
    metering: MeteringSection = MeteringSection()
    owners: dict[str, OwnerGrant] = Field(default_factory=dict, description="per owner id: "
                                          "routing keys, origins and quota the operator grants "
                                          "beyond the owner's apps in the plan (_grants.py)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = Field("text", description="text, or json: one object a line")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ControllerConfig:
        return load_config(cls, path, paths=(
            "state_dir", "plan", "base_dir", "tokens_file", "agent_token_file",
            "edge_token_file", "excluded_file", "dispatcher.geo_file",
            "dispatcher.hop_token_file"))

    def to_toml(self) -> str:
        """The configuration as TOML (paths absolute)."""
        return toml_text(self.model_dump(mode="json", exclude_none=True))
