"""Your edge network on DigitalOcean: a starting point made by `pulumi new`.

Add edgepoints here; deploy applications onto the network with `edgeshot deploy`
(examples/shop in the edgeshot repository declares a whole one). Check it with
`edgeshot validate policy.py` and `edgeshot plan policy.py --resources`.
"""

from edgeshot.spec import Controller, DigitalOcean, EdgeNetwork, Edgepoint, Pricing

network = EdgeNetwork(
    name="my-edge",
    # Where `edgeshot up` keeps the Pulumi state and how it encrypts secrets (optional; the
    # environment's PULUMI_BACKEND_URL / PULUMI_SECRETS_PROVIDER take precedence), e.g.
    # DigitalOcean(backend="s3://my-state-bucket/edge", secrets_provider="awskms://alias/edge")
    provider=DigitalOcean(),
    edgepoints=(
        Edgepoint(name='fra', region='eu-central', location='fra1', server_type='s-1vcpu-1gb'),
    ),
    controller=Controller(location='fra1', server_type='s-1vcpu-1gb'),
    pricing=Pricing(currency='USD', cpu_second="0.000012", memory_gb_second="0.0000015",
                    network_gb="0.02"),
    # Who may reach the servers over SSH (replace this documentation range with yours).
    operators=("203.0.113.0/24",),
)
