"""The shop on AWS: edgepoints in Frankfurt, Stockholm and Northern Virginia.

    edgeshot plan examples/shop/policy_aws.py
    cd stacks/aws && pulumi up      # see stacks/aws/README.md
"""

from apps import shop_on

from edgeshot.spec import AWS, Controller, EdgeNetwork, Edgepoint, PeakWindow, Pricing

network = EdgeNetwork(
    name="acme-edge-aws",
    provider=AWS(),
    edgepoints=(
        Edgepoint(name="fra", region="eu-central", location="eu-central-1", server_type="t3.medium",
                  servers=2),
        Edgepoint(name="sto", region="eu-north", location="eu-north-1", server_type="t3.small"),
        Edgepoint(name="iad", region="us-east", location="us-east-1", server_type="t3.small"),
    ),
    controller=Controller(location="eu-central-1", server_type="t3.small"),
    pricing=Pricing(
        currency="USD",
        cpu_second="0.000013",
        memory_gb_second="0.0000016",
        network_gb="0.05",
        disk_io_gb="0.01",
        storage_gb_hour="0.0001",
        peak=PeakWindow(start="08:00", end="20:00", multiplier="1.5", timezone="Europe/Berlin"),
    ),
    origin="https://origin.shop.example.com",
    operators=("203.0.113.0/24",),
)

apps = [shop_on(network, budget="150 USD")]
