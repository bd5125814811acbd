"""An edgeshot network on DigitalOcean: load the policy file, build the network, export.

Config (Pulumi.<stack>.yaml and secrets): see README.md next to this file.
"""

import pulumi

from edgeshot.provision import EdgeNetwork, export_outputs, load_plan, settings_from_config

config = pulumi.Config("edgeshot")
plan = load_plan(config.require("policyFile"), provider="digitalocean")
network = EdgeNetwork(plan.network, plan, settings_from_config(plan))
export_outputs(network)
