"""What an application provider and a network operator declare.

Each model checks what it can see alone (min <= max, contradictory SLA
thresholds, route syntax); checks that need the whole declaration (regions the
network lacks, overlapping cleave routes, budgets) live in `_checks.py`.
"""

from __future__ import annotations

import re
import shlex
import signal
import zoneinfo
from datetime import time
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, HttpUrl, field_validator, model_validator

from ._base import SpecModel, own_check
from ._routes import check_method, check_path, parse_route

# --- small value types -------------------------------------------------------

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_HOST = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', starting with a letter, "
            "at most 63 characters"
        )
    return value


def _version(value: str) -> str:
    if not _VERSION.match(value):
        raise ValueError(
            "must be letters, digits and '.', '_', '+', '-' (e.g. '1.4.2'), at most 64"
        )
    return value


def _currency(value: str) -> str:
    if not _CURRENCY.match(value):
        raise ValueError("must be an ISO 4217 code such as 'EUR' or 'USD'")
    return value


Name = Annotated[str, AfterValidator(_name)]
Version = Annotated[str, AfterValidator(_version)]
Currency = Annotated[str, AfterValidator(_currency)]
Method = Annotated[str, AfterValidator(check_method)]
PathPattern = Annotated[str, AfterValidator(check_path)]
NonNegDecimal = Annotated[Decimal, Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Money(SpecModel):
    """An amount and its currency. Accepts Money(amount=.., currency=..) or '250 EUR'."""

    amount: NonNegDecimal
    currency: Currency = "EUR"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            parts = data.split()
            if len(parts) != 2:
                raise ValueError(f"money {data!r} must be written 'AMOUNT CUR', e.g. '250 EUR'")
            return {"amount": parts[0], "currency": parts[1]}
        return data

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


# --- the network --------------------------------------------------------------


class Region(SpecModel):
    """A geographic region; the built-in table (edgeshot.spec.REGIONS) can be extended."""

    name: Name
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    label: str = ""


class Local(SpecModel):
    """Every process on this machine; each edgepoint on its own loopback address."""

    kind: Literal["local"] = "local"
    http_port: Port = 8080
    state_dir: str = ".state"


# Pulumi state backends (`pulumi login URL`) and secrets providers (`--secrets-provider`).
BACKEND_SCHEMES = ("s3", "azblob", "gs", "file", "https")  # https: Pulumi Cloud or self-hosted
SECRETS_SCHEMES = ("awskms", "azurekeyvault", "gcpkms", "hashivault")
SECRETS_NAMES = ("passphrase", "default")  # default: Pulumi Cloud's own


def check_backend(value: str) -> str:
    """A Pulumi state backend URL (scheme checked; the rest is the backend's business)."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in BACKEND_SCHEMES or not rest.strip("/") and scheme != "file":
        raise ValueError(
            "must be a Pulumi backend URL: s3://BUCKET[/PREFIX], azblob://CONTAINER, "
            "gs://BUCKET, file://DIR, or https://api.pulumi.com (Pulumi Cloud)")
    return value


def check_secrets_provider(value: str) -> str:
    """A Pulumi secrets provider: passphrase, default (Pulumi Cloud) or a KMS URL."""
    scheme, sep, rest = value.partition("://")
    if value in SECRETS_NAMES or (sep and scheme in SECRETS_SCHEMES and rest):
        return value
    raise ValueError(
        "must be 'passphrase', 'default' (Pulumi Cloud) or a key URL: awskms://KEY, "
        "azurekeyvault://VAULT/keys/KEY, gcpkms://projects/…/cryptoKeys/KEY, "
        "hashivault://KEY")


Backend = Annotated[str, AfterValidator(check_backend)]
SecretsProvider = Annotated[str, AfterValidator(check_secrets_provider)]


class _Cloud(SpecModel):
    """Where `edgeshot up` keeps the network's Pulumi state and encrypts its secrets
    (PULUMI_BACKEND_URL / PULUMI_SECRETS_PROVIDER override; default: a file backend next to
    the policy file and a passphrase)."""

    backend: Backend | None = None
    secrets_provider: SecretsProvider | None = None


class Hetzner(_Cloud):
    kind: Literal["hetzner"] = "hetzner"
    image: str = "debian-12"


class AWS(_Cloud):
    kind: Literal["aws"] = "aws"
    image: str = "debian-12"


class DigitalOcean(_Cloud):
    kind: Literal["digitalocean"] = "digitalocean"
    image: str = "debian-12-x64"


Provider = Annotated[Local | Hetzner | AWS | DigitalOcean, Field(discriminator="kind")]


class Edgepoint(SpecModel):
    """A site in a region: one or more servers of one type, each with instance slots."""

    name: Name
    region: Name
    location: str
    servers: int = Field(default=1, ge=1, le=1000)
    server_type: str
    slots_per_server: int = Field(default=8, ge=1, le=1024)


class Controller(SpecModel):
    """Where the controller (global dispatcher, deployment center, dashboards) runs."""

    location: str
    server_type: str


class PeakWindow(SpecModel):
    """Hours at which usage costs `multiplier` times more, in the network's time zone."""

    start: time
    end: time
    multiplier: Decimal = Field(ge=1)
    timezone: str = "UTC"
    weekdays: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = (
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as 'Europe/Berlin'") from None
        return value

    @own_check
    def _window(self) -> None:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")


class Pricing(SpecModel):
    """What the network charges providers for usage (per unit, in `currency`)."""

    currency: Currency = "EUR"
    cpu_second: NonNegDecimal
    memory_gb_second: NonNegDecimal
    network_gb: NonNegDecimal
    disk_io_gb: NonNegDecimal = Decimal(0)
    storage_gb_hour: NonNegDecimal = Decimal(0)
    peak: PeakWindow | None = None


class Ports(SpecModel):
    """Ports of the network's services (public dispatchers, control APIs)."""

    http: Port = 80
    https: Port = 443
    agent: Port = 7701
    edge: Port = 7702
    controller: Port = 7703
    stats: Port = 8404


class EdgeNetwork(SpecModel):
    """The network an operator runs: provider, edgepoints, controller, prices."""

    name: Name
    provider: Provider
    edgepoints: tuple[Edgepoint, ...] = Field(min_length=1)
    controller: Controller
    pricing: Pricing
    origin: HttpUrl | None = None
    regions: tuple[Region, ...] = ()
    operators: tuple[IPv4Network | IPv6Network, ...] = ()
    slot_network: IPv4Network = IPv4Network("10.64.0.0/12")
    ports: Ports = Ports()


# --- an application -----------------------------------------------------------


class Owner(SpecModel):
    """Who deploys and pays. Owners of one organisation are departments (transfer pricing)."""

    id: Name
    name: str = ""
    organisation: str | None = None


class Routing(SpecModel):
    """How requests reach the app: host names and/or a path prefix (the routing key)."""

    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not _HOST.match(host):
                raise ValueError(
                    f"{host!r} is not a lowercase host name (a leading '*.' is allowed)"
                )
        return hosts

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None:
            check_path(prefix)
            if "*" in prefix or "?" in prefix:
                raise ValueError("a routing path prefix takes no wildcards")
        return prefix

    @own_check
    def _something(self) -> None:
        if not self.hosts and self.path_prefix is None:
            raise ValueError(
                "give hosts, a path_prefix, or both: otherwise no request reaches the app"
            )

    def keys(self) -> list[tuple[str, str]]:
        """(host or '*', prefix or '/') pairs, the units that must be unique in a network."""
        return [(h, self.path_prefix or "/") for h in (self.hosts or ("*",))]


class Source(SpecModel):
    """The app's files (a directory or an archive, relative to the policy file) and install step.

    Any path is accepted here, ``..`` included: it is read on the machine that runs
    `validate` or `deploy`, by the user who wrote the file. A network's controller never
    takes a source path from an owner: it uses the source the operator's plan fixes for
    the app (`edgeshot.control._grants`)."""

    path: str
    install: str | None = None
    trusted: bool = True


class HealthCheck(SpecModel):
    path: PathPattern = "/healthz"
    timeout_s: float = Field(default=2.0, gt=0)
    start_timeout_s: float = Field(default=30.0, gt=0)


class Resources(SpecModel):
    """Limits of one tier: CPU in cores, memory in MiB (enforced by the pod's cgroup)."""

    cpu: Decimal = Field(default=Decimal("0.5"), gt=0, le=64)
    memory_mb: int = Field(default=256, ge=16, le=262144)


class Tier(SpecModel):
    """One process of the app. It listens on $PORT; the entry tier receives requests."""

    name: Name
    command: tuple[str, ...] = Field(min_length=1)
    port: Port = 8000
    env: dict[str, str] = {}
    secrets: tuple[str, ...] = Field(
        default=(), description="env vars supplied at run time from the secret store, never in plans"
    )
    entry: bool = False
    reseed_signal: str | None = Field(
        default=None, description="sent to the tier after a restore, so copies stop sharing random state"
    )
    health: HealthCheck | None = HealthCheck()
    resources: Resources = Resources()

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return tuple(shlex.split(value)) if isinstance(value, str) else value

    @field_validator("reseed_signal")
    @classmethod
    def _signal(cls, name: str | None) -> str | None:
        if name is not None and name not in signal.Signals.__members__:
            raise ValueError("must be a signal name such as 'SIGUSR2' or 'SIGHUP'")
        return name

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key == "PORT":
                raise ValueError(
                    "PORT is set by edgeshot from the tier's `port`; do not set it in env"
                )
        return env


class WarmupRequest(SpecModel):
    """A request sent after start-up and before the appshot is taken."""

    method: Method = "GET"
    path: PathPattern
    count: int = Field(default=1, ge=1, le=10000)
    body: str | None = None
    headers: dict[str, str] = {}


class Route(SpecModel):
    """METHOD + path prefix or glob. Written as Route(...) or as text: 'GET /catalog*'."""

    method: Method = "*"
    path: PathPattern
    transactional: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return parse_route(data) if isinstance(data, str) else data

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class Cleave(SpecModel):
    """The split of the app's routes: which run at the edge, which stay at the origin."""

    edge: tuple[Route, ...] = ()
    origin: tuple[Route, ...] = ()
    origin_url: HttpUrl | None = None
    default: Literal["edge", "origin"] = "edge"
    affinity: bool = False

    @field_validator("edge")
    @classmethod
    def _edge_not_transactional(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        for route in routes:
            if route.is_valid and route.transactional:
                raise ValueError(f"{route} is marked transactional: only origin routes can be")
        return routes


class Distribution(SpecModel):
    """Where the app may run and how many instances: per edgepoint min/max, a global max."""

    regions: tuple[Name, ...] = ()
    edgepoints: tuple[Name, ...] = ()
    min: int = Field(default=0, ge=0)
    max: int = Field(default=1, ge=1)
    global_max: int | None = Field(default=None, ge=1)
    max_edgepoints: int | None = Field(default=None, ge=1)

    @own_check
    def _bounds(self) -> None:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        if self.regions and self.edgepoints:
            raise ValueError("give regions or edgepoints, not both")


class SLA(SpecModel):
    """The service level: response time at a percentile, users per instance, scale-down."""

    max_response_ms: int = Field(ge=1)
    percentile: float = Field(default=95.0, ge=50, lt=100)
    users_per_instance: int = Field(ge=1)
    scale_down_below: float = Field(default=0.3, ge=0)
    idle_s: int = Field(default=300, ge=0)
    warm_pool: int = Field(default=0, ge=0)
    panic_factor: float = Field(default=2.0)

    @own_check
    def _thresholds(self) -> None:
        if self.scale_down_below >= 1:
            raise ValueError(
                f"scale_down_below ({self.scale_down_below}) must be below 1: it is the share of "
                "users_per_instance under which instances are removed, and at 1 or more it would "
                "remove instances that are at or above their target load"
            )
        if self.panic_factor <= 1:
            raise ValueError(
                f"panic_factor ({self.panic_factor}) must be above 1 (a multiple of the target)"
            )


class Budget(SpecModel):
    monthly: Money
    warn_at: float = Field(default=0.8, gt=0, lt=1)


class WeightedPath(SpecModel):
    method: Method = "GET"
    path: PathPattern
    weight: int = Field(default=1, ge=1)


class PassCriteria(SpecModel):
    """A load test passes when these hold (defaults come from the SLA)."""

    max_response_ms: int | None = Field(default=None, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    min_users_per_instance: int | None = Field(default=None, ge=1)


class LoadTest(SpecModel):
    users: int = Field(ge=1)
    spawn_rate: float = Field(gt=0)
    duration_s: int = Field(ge=1)
    regions: tuple[Name, ...] = ()
    paths: tuple[WeightedPath, ...] = Field(min_length=1)
    criteria: PassCriteria = PassCriteria()


class Application(SpecModel):
    """An app version as its owner deploys it."""

    name: Name
    version: Version
    owner: Owner
    vendor: str = ""
    priority: int = Field(default=50, ge=0, le=100)
    routing: Routing
    source: Source
    tiers: tuple[Tier, ...] = Field(min_length=1)
    warmup: tuple[WarmupRequest, ...] = ()
    cleave: Cleave = Cleave()
    distribution: Distribution
    sla: SLA
    budget: Budget
    load_test: LoadTest | None = None

    @own_check
    def _tiers(self) -> None:
        if not all(t.is_valid for t in self.tiers):
            return
        names = [t.name for t in self.tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(dupes)}")
        entries = [t.name for t in self.tiers if t.entry]
        if len(self.tiers) > 1 and len(entries) != 1:
            raise ValueError(
                f"exactly one tier must be the entry (entry=True); found {len(entries)}"
                + (f": {', '.join(entries)}" if entries else "")
            )
        ports = [t.port for t in self.tiers]
        clash = sorted({p for p in ports if ports.count(p) > 1})
        if clash:
            raise ValueError(f"tiers share a pod, so their ports must differ; repeated: {clash}")

    @property
    def entry_tier(self) -> Tier:
        return next((t for t in self.tiers if t.entry), self.tiers[0])

    @property
    def vendor_name(self) -> str:
        """The vendor, defaulting to the owner's organisation or the owner itself."""
        return self.vendor or self.owner.organisation or self.owner.id

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"
