"""A policy file that raises part-way: what was built before the exception is
still checked and reported, and so is the exception, at the line that raised."""

from edgeshot.spec import SLA, Distribution, Owner, Tier

OWNER = Owner(id="Acme Corp")  # expect: Owner.id | must be a DNS label
TIERS = [Tier(name="web", command="python app.py", entry="maybe")]  # expect: Tier.entry | valid boolean
DIST = Distribution(min=1, max=1, max_edgepoints=0)  # expect: Distribution.max_edgepoints | greater than or equal to 1

PORTS = {"web": 8000, "store": 8001}


def port_of(tier: str) -> int:
    return PORTS[tier]  # expect: | the policy file raised KeyError: 'cache'


SLA_ = SLA(max_response_ms=100, users_per_instance=port_of("web"), percentile=100)  # expect: SLA.percentile | less than 100
CACHE_PORT = port_of("cache")

never = Distribution(min=2, max=1)  # never reached, never reported
