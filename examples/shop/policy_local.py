"""The shop on a local edge network: three edgepoints on this machine's loopback.

    edgeshot validate examples/shop/policy_local.py
    edgeshot plan examples/shop/policy_local.py
"""

from apps import shop_on

from edgeshot.spec import Controller, EdgeNetwork, Edgepoint, Local, PeakWindow, Pricing

network = EdgeNetwork(
    name="local",
    provider=Local(http_port=8080),
    edgepoints=(
        Edgepoint(name="eu", region="eu-central", location="local", server_type="local"),
        Edgepoint(name="us", region="us-east", location="local", server_type="local"),
        Edgepoint(name="ap", region="ap-southeast", location="local", server_type="local"),
    ),
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(
        currency="EUR",
        cpu_second="0.000012",
        memory_gb_second="0.0000015",
        network_gb="0.02",
        disk_io_gb="0.01",
        storage_gb_hour="0.0001",
        peak=PeakWindow(start="08:00", end="20:00", multiplier="1.5", timezone="Europe/Berlin"),
    ),
    origin="http://127.0.0.1:9000",
)

apps = [shop_on(network, budget="60 EUR")]
