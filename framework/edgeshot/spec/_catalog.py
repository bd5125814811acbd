"""Built-in facts: regions with coordinates, and each provider's locations and server types.

Prices are list prices per month (730 hours) for estimates and cost ceilings,
not invoices. Users extend regions with `EdgeNetwork(regions=[Region(...)])`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple


class RegionInfo(NamedTuple):
    latitude: float
    longitude: float
    label: str


# Geographic regions the global dispatcher measures distance between.
REGIONS: dict[str, RegionInfo] = {
    "eu-central": RegionInfo(50.11, 8.68, "Frankfurt"),
    "eu-west": RegionInfo(51.51, -0.13, "London"),
    "eu-north": RegionInfo(60.17, 24.94, "Helsinki"),
    "eu-south": RegionInfo(45.46, 9.19, "Milan"),
    "us-east": RegionInfo(39.04, -77.49, "Ashburn"),
    "us-central": RegionInfo(41.88, -87.63, "Chicago"),
    "us-west": RegionInfo(45.52, -122.68, "Portland"),
    "ca-central": RegionInfo(43.65, -79.38, "Toronto"),
    "sa-east": RegionInfo(-23.55, -46.63, "Sao Paulo"),
    "ap-southeast": RegionInfo(1.35, 103.82, "Singapore"),
    "ap-northeast": RegionInfo(35.68, 139.69, "Tokyo"),
    "ap-south": RegionInfo(12.97, 77.59, "Bangalore"),
    "oceania": RegionInfo(-33.87, 151.21, "Sydney"),
    "af-south": RegionInfo(-26.20, 28.05, "Johannesburg"),
}


class ServerType(NamedTuple):
    vcpus: int
    memory_gb: int
    monthly: Decimal


class ProviderCatalog(NamedTuple):
    currency: str
    locations: dict[str, str]  # location -> region
    server_types: dict[str, ServerType]


CATALOGS: dict[str, ProviderCatalog] = {
    "local": ProviderCatalog(
        "EUR",
        {"local": "eu-central"},
        {"local": ServerType(2, 4, Decimal("0"))},
    ),
    "hetzner": ProviderCatalog(
        "EUR",
        {
            "fsn1": "eu-central",
            "nbg1": "eu-central",
            "hel1": "eu-north",
            "ash": "us-east",
            "hil": "us-west",
            "sin": "ap-southeast",
        },
        {
            "cx22": ServerType(2, 4, Decimal("3.79")),
            "cx32": ServerType(4, 8, Decimal("6.80")),
            "cx42": ServerType(8, 16, Decimal("16.40")),
            "cpx11": ServerType(2, 2, Decimal("4.35")),
            "cpx21": ServerType(3, 4, Decimal("7.55")),
            "cpx31": ServerType(4, 8, Decimal("13.10")),
            "ccx13": ServerType(2, 8, Decimal("12.49")),
            "ccx23": ServerType(4, 16, Decimal("24.49")),
        },
    ),
    "aws": ProviderCatalog(
        "USD",
        {
            "eu-central-1": "eu-central",
            "eu-west-2": "eu-west",
            "eu-north-1": "eu-north",
            "eu-south-1": "eu-south",
            "us-east-1": "us-east",
            "us-east-2": "us-central",
            "us-west-2": "us-west",
            "ca-central-1": "ca-central",
            "sa-east-1": "sa-east",
            "ap-southeast-1": "ap-southeast",
            "ap-northeast-1": "ap-northeast",
            "ap-south-1": "ap-south",
            "ap-southeast-2": "oceania",
            "af-south-1": "af-south",
        },
        {
            "t3.micro": ServerType(2, 1, Decimal("7.59")),
            "t3.small": ServerType(2, 2, Decimal("15.18")),
            "t3.medium": ServerType(2, 4, Decimal("30.37")),
            "c6i.large": ServerType(2, 4, Decimal("62.05")),
            "m6i.large": ServerType(2, 8, Decimal("70.08")),
            "c6i.xlarge": ServerType(4, 8, Decimal("124.10")),
        },
    ),
    "digitalocean": ProviderCatalog(
        "USD",
        {
            "fra1": "eu-central",
            "ams3": "eu-central",
            "lon1": "eu-west",
            "nyc3": "us-east",
            "sfo3": "us-west",
            "tor1": "ca-central",
            "sgp1": "ap-southeast",
            "blr1": "ap-south",
            "syd1": "oceania",
        },
        {
            "s-1vcpu-1gb": ServerType(1, 1, Decimal("6")),
            "s-2vcpu-2gb": ServerType(2, 2, Decimal("18")),
            "s-2vcpu-4gb": ServerType(2, 4, Decimal("24")),
            "s-4vcpu-8gb": ServerType(4, 8, Decimal("48")),
            "c-2": ServerType(2, 4, Decimal("42")),
        },
    ),
}

HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
