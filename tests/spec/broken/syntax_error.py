"""A policy file Python cannot parse: the error and its line, nothing else."""

from edgeshot.spec import Distribution, Owner

owner = Owner(id="acme")
distribution = Distribution(min=1,, max=2)  # expect: | syntax error
also_wrong = Distribution(min=2, max=1)
