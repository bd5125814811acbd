"""edgeshot: infrastructure as code for on-demand application processing at the edge.

Layers (an arrow means "may import"), see docs/architecture.md:
cli -> control -> edge -> agent -> spec;  provision/configure -> plan -> spec.
"""

__version__ = "0.1.0"
