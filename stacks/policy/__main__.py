"""The edgeshot policy pack (served to the Pulumi engine; see README.md).

The rules live in edgeshot.provision._policy, where tests call them directly.
"""

from pulumi_policy import PolicyPack

from edgeshot.provision import policies

PolicyPack(
    name="edgeshot",
    policies=policies(),
    description="edgeshot guardrails: locations, server cost, firewall ports and sources, labels",
)
