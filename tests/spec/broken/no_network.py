"""Applications without the network they run on. What can be checked without
a network is still checked.
"""
# expect-file: | declares no EdgeNetwork

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Cleave,
    Distribution,
    Owner,
    Routing,
    Source,
    Tier,
)

parts = dict(
    version="1.0",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["a.example.com"]),  # expect: applications[one].routing | routing key already used by app 'one'
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py")],
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="5 EUR"),
)

apps = [
    Application(name="one", distribution=Distribution(max=1), cleave=Cleave(edge=["/x*"], origin=["/x?"]), **parts),  # expect: applications[one].cleave.origin[0] | overlaps edge/origin route * /x*
    Application(name="one", distribution=Distribution(min=4, max=2), **parts),  # expect: applications[one].name | declared twice # expect: distribution | min (4) is more than max (2)
]
