"""The shop on Hetzner Cloud: edgepoints in Falkenstein, Helsinki and Ashburn.

    edgeshot plan examples/shop/policy_hetzner.py --format markdown
"""

from apps import shop_on

from edgeshot.spec import Controller, EdgeNetwork, Edgepoint, Hetzner, PeakWindow, Pricing

network = EdgeNetwork(
    name="acme-edge",
    provider=Hetzner(),
    edgepoints=(
        Edgepoint(name="fsn", region="eu-central", location="fsn1", server_type="cx32", servers=2),
        Edgepoint(name="hel", region="eu-north", location="hel1", server_type="cx22"),
        Edgepoint(name="ash", region="us-east", location="ash", server_type="cpx21"),
    ),
    controller=Controller(location="nbg1", server_type="cx22"),
    pricing=Pricing(
        currency="EUR",
        cpu_second="0.000012",
        memory_gb_second="0.0000015",
        network_gb="0.02",
        disk_io_gb="0.01",
        storage_gb_hour="0.0001",
        peak=PeakWindow(start="08:00", end="20:00", multiplier="1.5", timezone="Europe/Berlin"),
    ),
    origin="https://origin.shop.example.com",
    operators=("203.0.113.0/24",),
)

apps = [shop_on(network, budget="120 EUR")]
