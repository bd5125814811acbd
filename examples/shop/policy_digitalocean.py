"""The shop on DigitalOcean: edgepoints in Frankfurt, London and New York.

    edgeshot plan examples/shop/policy_digitalocean.py
    cd stacks/digitalocean && pulumi up      # see stacks/digitalocean/README.md
"""

from apps import shop_on

from edgeshot.spec import Controller, DigitalOcean, EdgeNetwork, Edgepoint, PeakWindow, Pricing

network = EdgeNetwork(
    name="acme-edge-do",
    provider=DigitalOcean(),
    edgepoints=(
        Edgepoint(name="fra", region="eu-central", location="fra1", server_type="s-2vcpu-4gb",
                  servers=2),
        Edgepoint(name="lon", region="eu-west", location="lon1", server_type="s-2vcpu-2gb"),
        Edgepoint(name="nyc", region="us-east", location="nyc3", server_type="s-2vcpu-2gb"),
    ),
    controller=Controller(location="fra1", server_type="s-2vcpu-2gb"),
    pricing=Pricing(
        currency="USD",
        cpu_second="0.000013",
        memory_gb_second="0.0000016",
        network_gb="0.02",
        disk_io_gb="0.01",
        storage_gb_hour="0.0001",
        peak=PeakWindow(start="08:00", end="20:00", multiplier="1.5", timezone="Europe/Berlin"),
    ),
    origin="https://origin.shop.example.com",
    operators=("203.0.113.0/24",),
)

apps = [shop_on(network, budget="150 USD")]
